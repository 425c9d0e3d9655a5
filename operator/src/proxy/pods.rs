//! Credential proxies under the pod launcher: per proxied, approved Permit a confidential
//! sandbox Pod running `oauth3-sandbox-runner serve` over HTTPS on [`PROXY_PORT`], a bundle
//! Secret (the serve bundle, with the callback token, and the proxy's TLS key and certificate),
//! a ClusterIP Service in front of the Pod and a NetworkPolicy walling it in. All four are
//! named [`proxy_object_name`], labelled [`LABEL_PROXY`] and owned by the Permit (deleting the
//! Permit deletes them).
//!
//! State is read back from the API objects, never remembered: the Pod carries the digest of
//! its callback token ([`ANNOTATION_LAUNCH`]), the spec digest it enforces
//! ([`ANNOTATION_PROXY_SPEC_DIGEST`]) and its certificate ([`ANNOTATION_PROXY_CERTIFICATE`]),
//! so an operator restarted (or a new leader) adopts a running proxy instead of starting a
//! second one. A Pod whose token digest is not `status.proxy.tokenDigest`, or that enforces
//! another spec digest, is a leftover and is deleted before a new one is made.
//!
//! Order kept for safety: `status.proxy` names the new token digest (so the operator's token
//! review accepts the proxy) before anything is created; the Pod is created last, after its
//! bundle Secret, Service and NetworkPolicy are stored (a proxy Pod never runs without its
//! policy).
//!
//! The TLS key is made by the operator (fresh per start, with `rcgen`), not inside the TEE: a
//! limitation (the operator, and whoever can read Secrets in the Permit's namespace, could
//! impersonate the proxy to its clients; no credential is exposed by it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Client, Resource, ResourceExt};
use oauth3_crds::constants::{
    ANNOTATION_LAUNCH, ANNOTATION_PROXY_CERTIFICATE, ANNOTATION_PROXY_SPEC_DIGEST, FIELD_MANAGER,
    LABEL_PERMIT, LABEL_PROXY, MANAGED_BY, proxy_object_name,
};
use oauth3_crds::{Permit, ProxyPhase, ProxyStatus};
use oauth3_protocol::callback::token_digest;
use oauth3_protocol::runner_args::serve_args;
use serde_json::json;
use zeroize::Zeroizing;

use super::{
    EVENT_FAILED, Proxied, ProxyContext, ProxyError, RETRY_SOON, Want, exit_reason, reason,
    requeue_at_expiry, serve_bundle,
};
use crate::egress::{self, EgressMode};
use crate::launcher::pod::{
    BUNDLE_DIR, BUNDLE_FILE, CONTAINER_NAME, DesiredError, EgressRules, PodLaunchConfig,
    SEALED_DIR, SandboxPod, UPSTREAM_CA_FILE, label_value, network_policy, pod_waiting,
    sandbox_egress, sandbox_pod,
};
use crate::launcher::resolve_targets;
use crate::status_write::{Guarded, is_not_found};

/// The port the proxy serves HTTPS on, in the Pod and on its Service.
pub const PROXY_PORT: i32 = 8443;
/// File name of the proxy's certificate in the bundle Secret and directory.
pub const TLS_CERT_FILE: &str = "tls.crt";
/// File name of the proxy's private key in the bundle Secret and directory.
pub const TLS_KEY_FILE: &str = "tls.key";
/// The label (key, value) of the gateway's Pods, which may reach proxies from the operator's
/// namespace (the chart's gateway Deployment).
pub const GATEWAY_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "oauth3-gateway");
/// Seconds the kubelet waits after SIGTERM: more than `serve`'s default stop grace (5 s, for
/// calls in flight), so streams are cut by the proxy, not by the kill.
pub const TERMINATION_GRACE_SECONDS: i64 = 10;

/// The URL clients call a Permit's proxy at: `https://<service>.<namespace>.svc:8443`.
pub fn proxy_endpoint(permit: &str, namespace: &str) -> String {
    format!(
        "https://{}.{namespace}.svc:{PROXY_PORT}",
        proxy_object_name(permit)
    )
}

/// The names a proxy's certificate is valid for: the Service's short and qualified names.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A proxy's TLS identity: a fresh key and a self-signed certificate for its Service names.
pub struct ProxyTls {
    /// PEM certificate (public: in `status.proxy.certificate`).
    pub certificate: String,
    /// PEM private key (only in the bundle Secret).
    pub key: Zeroizing<String>,
}

/// Makes a fresh key and a self-signed certificate for the Service `service` in `namespace`.
///
/// # Errors
/// When `rcgen` refuses the names or cannot sign (in words).
pub fn proxy_tls(service: &str, namespace: &str) -> Result<ProxyTls, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("making the TLS key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(service_names(service, namespace))
        .map_err(|e| format!("the proxy's certificate names: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{service}.{namespace}.svc"),
    );
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("signing the proxy's certificate: {e}"))?;
    Ok(ProxyTls {
        certificate: cert.pem(),
        key: Zeroizing::new(key.serialize_pem()),
    })
}

/// The objects of one proxy start (pure data, built before anything is written).
#[derive(Debug)]
pub struct ProxyObjects {
    /// The Pod.
    pub pod: Pod,
    /// The bundle Secret.
    pub secret: Secret,
    /// The Service.
    pub service: Service,
    /// The NetworkPolicy.
    pub policy: NetworkPolicy,
}

/// What a proxy start is made of besides the Permit and the cluster settings.
pub struct ProxyStart<'a> {
    /// The serve bundle, serialised (it holds the callback token).
    pub bundle_json: Zeroizing<String>,
    /// The TLS identity.
    pub tls: &'a ProxyTls,
    /// Digest of the bundle's callback token.
    pub token_digest: &'a str,
    /// The approved spec digest the proxy enforces.
    pub spec_digest: &'a str,
    /// Where it may connect besides DNS and the callback.
    pub rules: &'a EgressRules,
}

fn permit_meta(permit: &Permit) -> Result<(String, String), DesiredError> {
    let name = permit
        .metadata
        .name
        .clone()
        .ok_or(DesiredError::MissingPermitMetadata("name"))?;
    let ns = permit
        .namespace()
        .ok_or(DesiredError::MissingPermitMetadata("namespace"))?;
    Ok((name, ns))
}

/// The desired Pod, bundle Secret, Service and NetworkPolicy of `permit`'s proxy (pure).
///
/// # Errors
/// [`DesiredError`] for a Permit that was never stored.
pub fn proxy_objects(
    permit: &Permit,
    config: &PodLaunchConfig,
    start: &ProxyStart<'_>,
) -> Result<ProxyObjects, DesiredError> {
    let (permit_name, ns) = permit_meta(permit)?;
    let name = proxy_object_name(&permit_name);
    let owner = permit
        .controller_owner_ref(&())
        .ok_or(DesiredError::MissingPermitMetadata("uid"))?;
    let owner = serde_json::to_value(owner).map_err(|source| DesiredError::Build {
        what: "owner reference",
        source,
    })?;
    let labels = json!({
        "app.kubernetes.io/name": "oauth3-sandbox",
        "app.kubernetes.io/component": "proxy",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_PROXY: name,
        LABEL_PERMIT: label_value(&permit_name),
    });
    let selector = json!({LABEL_PROXY: name});
    let metadata = json!({
        "name": name,
        "namespace": ns,
        "labels": labels,
        "ownerReferences": [owner],
    });
    let args = serve_args(
        &format!("{BUNDLE_DIR}/{BUNDLE_FILE}"),
        SEALED_DIR,
        &config.key_provider,
        &format!("0.0.0.0:{PROXY_PORT}"),
        (
            &format!("{BUNDLE_DIR}/{TLS_CERT_FILE}"),
            &format!("{BUNDLE_DIR}/{TLS_KEY_FILE}"),
        ),
    );
    let pod = sandbox_pod(
        SandboxPod {
            name: name.clone(),
            namespace: ns.clone(),
            labels: labels.clone(),
            annotations: json!({
                ANNOTATION_LAUNCH: start.token_digest,
                ANNOTATION_PROXY_SPEC_DIGEST: start.spec_digest,
                ANNOTATION_PROXY_CERTIFICATE: start.tls.certificate,
            }),
            owner: owner.clone(),
            args,
            secrets: &permit.effective_spec().secrets,
            bundle_file: crate::launcher::pod::BUNDLE_FILE,
            bundle_files: &[TLS_CERT_FILE, TLS_KEY_FILE],
            active_deadline_seconds: None,
            termination_grace_seconds: TERMINATION_GRACE_SECONDS,
            serves_port: Some(PROXY_PORT),
        },
        config,
    )?;
    let mut data: BTreeMap<String, String> = [
        (BUNDLE_FILE.to_owned(), start.bundle_json.to_string()),
        (TLS_CERT_FILE.to_owned(), start.tls.certificate.clone()),
        (TLS_KEY_FILE.to_owned(), start.tls.key.to_string()),
    ]
    .into();
    if let Some(pem) = &config.upstream_ca_pem {
        data.insert(UPSTREAM_CA_FILE.to_owned(), pem.clone());
    }
    let secret = Secret {
        metadata: build(metadata.clone(), "bundle Secret metadata")?,
        type_: Some("Opaque".into()),
        string_data: Some(data),
        ..Default::default()
    };
    let service = build(
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "https", "protocol": "TCP", "port": PROXY_PORT,
                           "targetPort": PROXY_PORT}],
            }
        }),
        "Service",
    )?;
    let (gateway_key, gateway_value) = GATEWAY_POD_LABEL;
    let ingress = vec![json!({
        "from": [
            {"namespaceSelector": {"matchLabels":
                {"kubernetes.io/metadata.name": config.operator_namespace}},
             "podSelector": {"matchLabels": {gateway_key: gateway_value}}},
            {"podSelector": {}},
        ],
        "ports": [{"protocol": "TCP", "port": PROXY_PORT}],
    })];
    let policy = network_policy(
        metadata,
        selector,
        ingress,
        sandbox_egress(config, start.rules),
    )?;
    Ok(ProxyObjects {
        pod,
        secret,
        service,
        policy,
    })
}

fn build<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    what: &'static str,
) -> Result<T, DesiredError> {
    serde_json::from_value(value).map_err(|source| DesiredError::Build { what, source })
}

/// What the proxy's Pod shows, against `status.proxy` and the approved digest (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// No Pod.
    Absent,
    /// Being deleted.
    Terminating,
    /// Not the proxy `status.proxy` names, or enforcing another spec digest: delete it.
    Leftover,
    /// Created, not yet ready; with why it does not run, if the node says.
    Starting(Option<String>),
    /// Running and ready.
    Ready,
    /// The container ended: its exit code (`None`: unknown) and last words.
    Ended(Option<i32>, String),
}

/// What `pod` shows (see [`Seen`]) for a proxy that should enforce `digest` with `status`.
pub fn seen(pod: Option<&Pod>, status: Option<&ProxyStatus>, digest: &str) -> Seen {
    let Some(pod) = pod else {
        return Seen::Absent;
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return Seen::Terminating;
    }
    let annotation = |key: &str| pod.annotations().get(key).map(String::as_str);
    let ours = status
        .and_then(|s| s.token_digest.as_deref())
        .is_some_and(|t| annotation(ANNOTATION_LAUNCH) == Some(t));
    if !ours || annotation(ANNOTATION_PROXY_SPEC_DIGEST) != Some(digest) {
        return Seen::Leftover;
    }
    let st = pod.status.as_ref();
    let phase = st.and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Failed" | "Succeeded")) {
        let terminated = st
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER_NAME))
            .and_then(|c| c.state.as_ref()?.terminated.as_ref());
        let code = terminated.map(|t| t.exit_code);
        let last = terminated
            .and_then(|t| t.message.as_deref())
            .and_then(|m| m.lines().rev().find(|l| !l.trim().is_empty()))
            .map(str::to_owned)
            .or_else(|| {
                terminated
                    .and_then(|t| t.reason.clone())
                    .or_else(|| st.and_then(|s| s.reason.clone()))
            })
            .unwrap_or_default();
        return Seen::Ended(code, last);
    }
    let ready = st
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if phase == Some("Running") && ready {
        Seen::Ready
    } else {
        Seen::Starting(pod_waiting(pod))
    }
}

/// `status.proxy` of a proxy Pod that is starting (`Starting`, with why it waits) or ready,
/// from the Pod and the status as read (pure).
fn shown(
    pod: &Pod,
    status: Option<&ProxyStatus>,
    phase: ProxyPhase,
    waiting: Option<String>,
) -> ProxyStatus {
    let annotation = |key: &str| pod.annotations().get(key).cloned();
    let name = pod.name_any();
    ProxyStatus {
        phase,
        endpoint: status.and_then(|s| s.endpoint.clone()),
        certificate: annotation(ANNOTATION_PROXY_CERTIFICATE),
        handle: Some(format!("pod/{name}")),
        spec_digest: annotation(ANNOTATION_PROXY_SPEC_DIGEST),
        token_digest: annotation(ANNOTATION_LAUNCH),
        started_at: status
            .and_then(|s| s.started_at.clone())
            .or_else(|| pod.metadata.creation_timestamp.clone()),
        stopped_at: None,
        reason: Some(
            if phase == ProxyPhase::Ready {
                reason::SERVING
            } else {
                reason::STARTING
            }
            .to_owned(),
        ),
        message: waiting,
    }
}

/// Reconciles a proxy under the pod launcher: `want` decided, the Pod read, then start, adopt,
/// show or stop.
pub(super) async fn reconcile(
    pctx: &ProxyContext,
    p: &Proxied<'_>,
    config: &PodLaunchConfig,
    want: Want,
    now: Timestamp,
) -> Result<Action, ProxyError> {
    let client = &pctx.ectx.ctx.client;
    let namespace = p.permit.namespace().unwrap_or_default();
    let name = proxy_object_name(&p.permit.name_any());
    let api_error = |step: &'static str| {
        let key = p.label.clone();
        move |source| ProxyError::Api { step, key, source }
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod = pods
        .get_opt(&name)
        .await
        .map_err(api_error("reading the proxy's Pod"))?;
    let digest = match want {
        Want::Nothing => return Ok(Action::await_change()),
        Want::Stop {
            reason: why,
            message,
        } => {
            let stopped = p
                .current
                .as_ref()
                .is_some_and(|c| c.phase == ProxyPhase::Stopped);
            if pod.is_some() || !stopped {
                delete_objects(client, &namespace, &name)
                    .await
                    .map_err(api_error("deleting the proxy's objects"))?;
                tracing::info!(permit = %p.label, reason = why, "stopping the proxy");
            }
            return p.stopped(why, &message, now).await;
        }
        Want::Run { digest } => digest,
    };
    match (
        seen(pod.as_ref(), p.current.as_ref(), &digest),
        pod.as_ref(),
    ) {
        (Seen::Terminating, _) => Ok(Action::requeue(std::time::Duration::from_secs(1))),
        (Seen::Leftover, _) => {
            tracing::info!(permit = %p.label, "deleting a proxy Pod that is not the one status.proxy names");
            delete_objects(client, &namespace, &name)
                .await
                .map_err(api_error("deleting the proxy's objects"))?;
            Ok(RETRY_SOON)
        }
        (Seen::Starting(waiting), Some(pod)) => {
            let status = shown(pod, p.current.as_ref(), ProxyPhase::Starting, waiting);
            if p.current.as_ref() != Some(&status) && !p.write(status).await?.written() {
                return Ok(RETRY_SOON);
            }
            Ok(requeue_at_expiry(p.permit, now))
        }
        (Seen::Ready, Some(pod)) => {
            let status = shown(pod, p.current.as_ref(), ProxyPhase::Ready, None);
            if p.current.as_ref() != Some(&status) {
                let was_ready = p
                    .current
                    .as_ref()
                    .is_some_and(|c| c.phase == ProxyPhase::Ready);
                match p.write(status.clone()).await? {
                    Guarded::Written if !was_ready => {
                        p.started(
                            status.endpoint.as_deref().unwrap_or_default(),
                            status.handle.as_deref().unwrap_or_default(),
                        )
                        .await;
                    }
                    Guarded::Written => {}
                    Guarded::Conflict | Guarded::Gone => return Ok(RETRY_SOON),
                }
            }
            Ok(requeue_at_expiry(p.permit, now))
        }
        (Seen::Ended(code, last), _) => {
            let (why, message) = exit_reason(code, &last);
            p.ended(why, message, now).await?;
            delete_objects(client, &namespace, &name)
                .await
                .map_err(api_error("deleting the proxy's objects"))?;
            Ok(RETRY_SOON)
        }
        // No Pod (a dead one is replaced the same way).
        (Seen::Absent | Seen::Starting(_) | Seen::Ready, _) => {
            start(pctx, p, config, &digest, now).await
        }
    }
}

/// Starts a proxy for `digest`: `status.proxy` `Starting` with the new token digest,
/// endpoint and certificate first, then the bundle Secret, Service and NetworkPolicy, then
/// the Pod.
async fn start(
    pctx: &ProxyContext,
    p: &Proxied<'_>,
    config: &PodLaunchConfig,
    digest: &str,
    now: Timestamp,
) -> Result<Action, ProxyError> {
    let ectx = &pctx.ectx;
    let permit = p.permit;
    let namespace = permit.namespace().unwrap_or_default();
    let name = proxy_object_name(&permit.name_any());
    let rules = match config.egress {
        EgressMode::Open => EgressRules::Open,
        EgressMode::Kubernetes | EgressMode::Cilium => {
            match resolve_targets(&egress::targets(&permit.effective_spec())).await {
                Ok(resolved) => EgressRules::Addresses(resolved),
                Err(e) => return p.failed_to_start(digest, &e.to_string(), now).await,
            }
        }
    };
    let tls = match proxy_tls(&name, &namespace) {
        Ok(tls) => tls,
        Err(message) => return p.failed_to_start(digest, &message, now).await,
    };
    let mut overlaid = permit.clone();
    ectx.ctx.usage.overlay(&mut overlaid);
    let token = Zeroizing::new(hex::encode(rand::random::<[u8; 32]>()));
    let token_digest = token_digest(&token);
    let bundle = serve_bundle(
        &overlaid,
        digest,
        Vec::new(),
        &ectx.config.callback_base_url,
        ectx.config.callback_ca_pem.clone(),
        token,
        now,
    );
    let bundle_json = match serde_json::to_string(&bundle) {
        Ok(json) => Zeroizing::new(json),
        Err(e) => {
            let message = format!("serialising the serve bundle: {e}");
            return p.failed_to_start(digest, &message, now).await;
        }
    };
    let objects = match proxy_objects(
        permit,
        config,
        &ProxyStart {
            bundle_json,
            tls: &tls,
            token_digest: &token_digest,
            spec_digest: digest,
            rules: &rules,
        },
    ) {
        Ok(objects) => objects,
        Err(e) => return p.failed_to_start(digest, &e.to_string(), now).await,
    };
    let status = ProxyStatus {
        phase: ProxyPhase::Starting,
        endpoint: Some(proxy_endpoint(&permit.name_any(), &namespace)),
        certificate: Some(tls.certificate.clone()),
        handle: Some(format!("pod/{name}")),
        spec_digest: Some(digest.to_owned()),
        token_digest: Some(token_digest),
        started_at: Some(Time(now)),
        stopped_at: None,
        reason: Some(reason::STARTING.to_owned()),
        message: Some("creating the proxy's Pod".to_owned()),
    };
    if !p.write(status).await?.written() {
        return Ok(RETRY_SOON);
    }
    if let Err(e) = apply_objects(&ectx.ctx.client, &namespace, &objects).await {
        p.event(
            EventType::Warning,
            EVENT_FAILED,
            format!("the proxy's objects could not be created: {e}"),
        )
        .await;
        return Err(ProxyError::Api {
            step: "creating the proxy's objects",
            key: p.label.clone(),
            source: e,
        });
    }
    tracing::info!(permit = %p.label, pod = %name, "proxy Pod created");
    Ok(RETRY_SOON)
}

/// Applies the bundle Secret, Service and NetworkPolicy (server-side, forced, one field
/// manager: a leftover of an earlier start is overwritten), then creates the Pod.
async fn apply_objects(
    client: &Client,
    namespace: &str,
    objects: &ProxyObjects,
) -> Result<(), kube::Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let name = objects.pod.name_any();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let (secret, service, policy) = (
        Patch::Apply(&objects.secret),
        Patch::Apply(&objects.service),
        Patch::Apply(&objects.policy),
    );
    tokio::try_join!(
        secrets.patch(&name, &pp, &secret),
        services.patch(&name, &pp, &service),
        policies.patch(&name, &pp, &policy),
    )?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    pods.create(&params, &objects.pod).await.map(drop)
}

/// Deletes the proxy's Pod, Service, bundle Secret and NetworkPolicy (what is already gone is
/// done).
async fn delete_objects(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let dp = DeleteParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let gone = |r: Result<(), kube::Error>| match r {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    };
    let (pod, secret, service, policy) = tokio::join!(
        pods.delete(name, &dp),
        secrets.delete(name, &dp),
        services.delete(name, &dp),
        policies.delete(name, &dp),
    );
    gone(pod.map(drop))?;
    gone(secret.map(drop))?;
    gone(service.map(drop))?;
    gone(policy.map(drop))
}

#[cfg(test)]
mod tests {
    use super::super::stopped_status;
    use super::*;
    use oauth3_crds::PermitSpec;

    fn permit() -> Permit {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "d",
            "capabilities": [{"name": "api", "baseUrl": "https://api.example", "paths": ["/x"],
                "methods": ["GET"]}],
            "secrets": ["API_TOKEN"],
            "proxy": {"enabled": true, "callers": ["u"]}
        }))
        .expect("spec");
        let mut p = Permit::new("issues", spec);
        p.metadata.namespace = Some("team-a".into());
        p.metadata.uid = Some("permit-uid".into());
        p
    }

    fn objects() -> (ProxyObjects, ProxyTls) {
        let tls = proxy_tls("oauth3-proxy-issues", "team-a").expect("tls");
        let objects = proxy_objects(
            &permit(),
            &PodLaunchConfig::default(),
            &ProxyStart {
                bundle_json: Zeroizing::new("{\"bundle\":1}".into()),
                tls: &tls,
                token_digest: "sha256:t",
                spec_digest: "sha256:s",
                rules: &EgressRules::Open,
            },
        )
        .expect("objects");
        (objects, tls)
    }

    #[test]
    fn a_proxy_pod_is_the_hardened_sandbox_running_serve_over_https_without_a_deadline() {
        let (o, _) = objects();
        let spec = o.pod.spec.clone().expect("spec");
        assert_eq!(spec.runtime_class_name.as_deref(), Some("kata-qemu-tdx"));
        assert_eq!(
            spec.active_deadline_seconds, None,
            "a proxy runs until stopped"
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.termination_grace_period_seconds,
            Some(TERMINATION_GRACE_SECONDS)
        );
        let c = &spec.containers[0];
        let args = c.args.clone().expect("args");
        assert_eq!(args[0], "serve");
        for pair in [
            ["--listen", "0.0.0.0:8443"],
            ["--tls-cert", "/var/run/oauth3/bundle/tls.crt"],
            ["--tls-key", "/var/run/oauth3/bundle/tls.key"],
            ["--sealed-dir", "/var/run/oauth3/sealed"],
            ["--bundle", "/var/run/oauth3/bundle/bundle.json"],
        ] {
            assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
        }
        assert!(
            !args
                .iter()
                .any(|a| a == "--attestation" || a == "--insecure-plain-http"),
            "{args:?}"
        );
        let sc = c.security_context.clone().expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let probe = c.readiness_probe.clone().expect("readiness probe");
        assert!(probe.tcp_socket.is_some());
        let v = serde_json::to_value(&o.pod).expect("json");
        let items = v["spec"]["volumes"][0]["secret"]["items"].clone();
        assert_eq!(
            items,
            json!([{"key": "bundle.json", "path": "bundle.json"},
                   {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}])
        );
        assert_eq!(
            v["spec"]["volumes"][1]["projected"]["sources"][0]["secret"]["name"],
            "api-token"
        );
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Permit");
        assert_eq!(v["metadata"]["annotations"][ANNOTATION_LAUNCH], "sha256:t");
    }

    #[test]
    fn the_service_selects_the_pod_and_the_policy_admits_only_the_gateway_and_the_namespace() {
        let (o, _) = objects();
        let pod_labels = o.pod.metadata.labels.clone().expect("labels");
        let selector = o
            .service
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .expect("selector");
        for (k, v) in &selector {
            assert_eq!(pod_labels.get(k), Some(v), "the Service selects the Pod");
        }
        let v = serde_json::to_value(&o.policy).expect("json");
        assert_eq!(v["spec"]["podSelector"]["matchLabels"], json!(selector));
        assert_eq!(
            v["spec"]["ingress"],
            json!([{"from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "oauth3-system"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "oauth3-gateway"}}},
                {"podSelector": {}}],
                "ports": [{"protocol": "TCP", "port": 8443}]}])
        );
        assert_eq!(
            v["spec"]["egress"].as_array().map(Vec::len),
            Some(3),
            "DNS, callback, public 443 as a run's"
        );
    }

    #[test]
    fn the_certificate_names_the_service_and_the_key_stays_in_the_secret() {
        let (o, tls) = objects();
        let data = o.secret.string_data.clone().expect("data");
        assert_eq!(
            data.get(TLS_KEY_FILE).map(String::as_str),
            Some(tls.key.as_str())
        );
        assert!(tls.key.contains("PRIVATE KEY"));
        let annotations = o.pod.metadata.annotations.clone().expect("annotations");
        assert!(
            !annotations.values().any(|v| v.contains("PRIVATE KEY")),
            "the key is never in an annotation"
        );
        assert_eq!(
            annotations.get(ANNOTATION_PROXY_CERTIFICATE),
            Some(&tls.certificate)
        );
        assert_eq!(
            proxy_endpoint("issues", "team-a"),
            "https://oauth3-proxy-issues.team-a.svc:8443"
        );
        assert!(service_names("s", "n").contains(&"s.n.svc.cluster.local".to_owned()));
    }

    fn pod(annotations: serde_json::Value, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "oauth3-proxy-issues", "annotations": annotations},
            "status": status,
        }))
        .expect("pod")
    }

    fn status(token: &str) -> ProxyStatus {
        let mut s = stopped_status(None, reason::STARTING, "m", Timestamp::UNIX_EPOCH);
        s.phase = ProxyPhase::Starting;
        s.token_digest = Some(token.into());
        s
    }

    #[test]
    fn a_pod_is_adopted_only_when_status_names_its_token_and_it_enforces_the_digest() {
        let ours = json!({ANNOTATION_LAUNCH: "sha256:t", ANNOTATION_PROXY_SPEC_DIGEST: "sha256:s"});
        let ready = json!({"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(seen(None, None, "sha256:s"), Seen::Absent);
        let p = pod(ours.clone(), ready.clone());
        assert_eq!(
            seen(Some(&p), Some(&status("sha256:t")), "sha256:s"),
            Seen::Ready
        );
        assert_eq!(
            seen(Some(&p), Some(&status("sha256:other")), "sha256:s"),
            Seen::Leftover
        );
        assert_eq!(seen(Some(&p), None, "sha256:s"), Seen::Leftover);
        assert_eq!(
            seen(Some(&p), Some(&status("sha256:t")), "sha256:new"),
            Seen::Leftover,
            "approved again under another spec"
        );
        let running = pod(ours.clone(), json!({"phase": "Running"}));
        assert_eq!(
            seen(Some(&running), Some(&status("sha256:t")), "sha256:s"),
            Seen::Starting(None),
            "running but not ready"
        );
        let idle = pod(
            ours,
            json!({"phase": "Succeeded", "containerStatuses": [{"name": CONTAINER_NAME,
                "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": i32::from(oauth3_protocol::proxy::EXIT_IDLE),
                    "message": "serving on https://0.0.0.0:8443\nstopped: idle"}}}]}),
        );
        assert_eq!(
            seen(Some(&idle), Some(&status("sha256:t")), "sha256:s"),
            Seen::Ended(
                Some(i32::from(oauth3_protocol::proxy::EXIT_IDLE)),
                "stopped: idle".into()
            )
        );
    }
}
