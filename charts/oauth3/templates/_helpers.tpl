{{/* Names, labels and computed settings shared by the oauth3 templates. */}}

{{- define "oauth3.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "oauth3.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "oauth3.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: oauth3
{{- end -}}

{{- define "oauth3.labels" -}}
{{ include "oauth3.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's Pod labels. app.kubernetes.io/name=oauth3-operator is what the sandbox
NetworkPolicy the operator creates allows callback traffic to; do not change it. */}}
{{- define "oauth3.selectorLabels" -}}
app.kubernetes.io/name: oauth3-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "oauth3.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "oauth3.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "oauth3.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "oauth3.runnerImage" -}}
{{- $r := .Values.sandbox.runnerImage -}}
{{- printf "%s:%s" $r.repository (default .Chart.AppVersion $r.tag) -}}
{{- end -}}

{{- define "oauth3.callbackServiceName" -}}
{{- printf "%s-callback" (include "oauth3.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "oauth3.callbackTLSSecret" -}}
{{- default (printf "%s-callback-tls" (include "oauth3.fullname" .)) .Values.callback.tls.secretName -}}
{{- end -}}

{{- define "oauth3.callbackURL" -}}
{{- default (printf "https://%s.%s.svc:%d" (include "oauth3.callbackServiceName" .) .Release.Namespace (int .Values.callback.port)) .Values.callback.url -}}
{{- end -}}

{{/* Checks on values that the schema cannot express. */}}
{{- define "oauth3.validate" -}}
{{- if not (has .Values.launcher (list "pod" "process")) -}}
{{- fail (printf "launcher: must be pod or process, got %q" .Values.launcher) -}}
{{- end -}}
{{- if not (has .Values.sandbox.egressPolicy (list "auto" "cilium" "kubernetes" "open")) -}}
{{- fail (printf "sandbox.egressPolicy: must be auto, cilium, kubernetes or open, got %q" .Values.sandbox.egressPolicy) -}}
{{- end -}}
{{- if not (has .Values.sandbox.keyProvider (list "kbs" "dstack")) -}}
{{- fail (printf "sandbox.keyProvider: must be kbs or dstack, got %q" .Values.sandbox.keyProvider) -}}
{{- end -}}
{{- if not (has .Values.sandbox.attestation (list "" "none" "dstack" "coco" "tsm")) -}}
{{- fail (printf "sandbox.attestation: must be empty, none, dstack, coco or tsm, got %q" .Values.sandbox.attestation) -}}
{{- end -}}
{{- if and .Values.telegram.enabled (not .Values.telegram.existingSecret) -}}
{{- fail "telegram.existingSecret: required when telegram.enabled is true (a Secret with the bot token under the key `token`)" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "leaderElection.enabled: must be true when replicaCount is more than 1" -}}
{{- end -}}
{{- end -}}
