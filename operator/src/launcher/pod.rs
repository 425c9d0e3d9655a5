//! Desired state of the `pod` launcher (pure): the sandbox Pod that runs one Execution in a
//! confidential container, and the per-Execution NetworkPolicy that walls it in. The Pod's
//! spec and the egress rules are built by [`sandbox_pod`] and [`sandbox_egress`], which a
//! credential proxy's Pod and policy (`crate::proxy::pods`) share.
//!
//! Invariants enforced here (and pinned by the tests below):
//! - the Pod runs under the configured `runtimeClassName` (default `kata-qemu-tdx`);
//! - no service-account token, no service links, no host namespaces, non-root, read-only root
//!   filesystem, all capabilities dropped, no privilege escalation, RuntimeDefault seccomp;
//! - `activeDeadlineSeconds` = the Execution's timeout plus a grace period, so the kubelet ends
//!   a runner that never calls back;
//! - only the Permit's sealed Secrets are projected (by name, key `sealed`), under
//!   `/var/run/oauth3/sealed` (never `/sealed`, which Confidential Containers' agent would try
//!   to unseal itself); the run bundle (which carries the callback token) comes from a
//!   per-Execution Secret;
//! - both objects are owned by the Execution (so deleting it deletes them) and labelled with
//!   the Execution's uid;
//! - the NetworkPolicy denies all ingress and allows egress only to DNS, the operator's result
//!   callback, and TCP 443 outside private, loopback, link-local and CGNAT ranges.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Resource, ResourceExt};
use oauth3_crds::constants::{
    LABEL_EXECUTION, LABEL_PERMIT, MANAGED_BY, SEALED_SECRET_KEY, secret_object_name,
};
use oauth3_crds::{Execution, ExecutionPhase, Permit};
use oauth3_protocol::runner_args::run_args;

use crate::egress::{EgressMode, Target};
use serde_json::json;

/// Where the runner finds its bundle inside the Pod.
pub const BUNDLE_DIR: &str = "/var/run/oauth3/bundle";
/// File name of the bundle in the bundle Secret and directory.
pub const BUNDLE_FILE: &str = "bundle.json";
/// File name, in the bundle Secret and directory, of the CA certificates runners trust for
/// upstream TLS besides the web PKI (`--sandbox-ca-file`; absent without it).
pub const UPSTREAM_CA_FILE: &str = "upstream-ca.pem";
/// Where the projected sealed Secrets appear inside the Pod, one file per secret name.
pub const SEALED_DIR: &str = "/var/run/oauth3/sealed";
/// Name of the runner container.
pub const CONTAINER_NAME: &str = "runner";
/// UID/GID the runner runs as (the conventional "nonroot" user of distroless images).
pub const RUNNER_UID: i64 = 65_532;

/// Where a sandbox's runner gets the key that opens sealed secrets (the run contract's type).
pub use oauth3_protocol::runner_args::KeyProviderEndpoint as PodKeyProvider;
/// Where a sandbox's runner gets the quote that attests its result (the run contract's type).
pub use oauth3_protocol::runner_args::QuoteProviderEndpoint as PodQuoteProvider;

/// Cluster-level settings of the pod launcher (Helm values / operator flags).
#[derive(Debug, Clone, PartialEq)]
pub struct PodLaunchConfig {
    /// RuntimeClass of sandbox Pods.
    pub runtime_class_name: String,
    /// Runner image.
    pub image: String,
    /// Image pull policy.
    pub image_pull_policy: String,
    /// Key provider of the runner.
    pub key_provider: PodKeyProvider,
    /// Quote provider of the runner (`--attestation`).
    pub quote_provider: PodQuoteProvider,
    /// CPU limit (and request) of the runner container.
    pub cpu: String,
    /// Memory limit (and request) of the runner container.
    pub memory: String,
    /// Seconds added to the Execution's timeout for `activeDeadlineSeconds`.
    pub deadline_grace_seconds: i64,
    /// Namespace the operator (and its result callback) runs in.
    pub operator_namespace: String,
    /// Labels selecting the operator's Pods, for the callback egress rule.
    pub operator_pod_labels: BTreeMap<String, String>,
    /// TCP port of the result callback.
    pub callback_port: i32,
    /// Addresses (CIDRs) at which sandbox Pods reach the callback, instead of the operator's
    /// Pods (`--callback-egress-cidr`: an operator outside the Pod network).
    pub callback_cidrs: Vec<String>,
    /// CA certificates runners trust for upstream TLS besides the web PKI
    /// (`--sandbox-ca-file`), delivered in the bundle Secret.
    pub upstream_ca_pem: Option<String>,
    /// How the sandbox's egress is walled in (`--egress-policy`, resolved).
    pub egress: EgressMode,
}

impl Default for PodLaunchConfig {
    fn default() -> Self {
        Self {
            runtime_class_name: "kata-qemu-tdx".into(),
            image: "ghcr.io/oauth3/sandbox-runner:latest".into(),
            image_pull_policy: "IfNotPresent".into(),
            key_provider: PodKeyProvider::Kbs {
                url: oauth3_protocol::runner_args::DEFAULT_KBS_URL.into(),
            },
            quote_provider: PodQuoteProvider::Coco {
                url: oauth3_protocol::runner_args::DEFAULT_AA_URL.into(),
            },
            cpu: "500m".into(),
            memory: "256Mi".into(),
            deadline_grace_seconds: 30,
            operator_namespace: "oauth3-system".into(),
            operator_pod_labels: [(
                "app.kubernetes.io/name".to_owned(),
                "oauth3-operator".to_owned(),
            )]
            .into(),
            callback_port: 8443,
            callback_cidrs: Vec::new(),
            upstream_ca_pem: None,
            egress: EgressMode::Open,
        }
    }
}

/// Why desired objects could not be built (only for objects the API server would never have
/// stored, e.g. missing metadata).
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// The Execution has no name, namespace or uid.
    #[error("building sandbox objects: the Execution has no {0}")]
    MissingMetadata(&'static str),
    /// The Permit of a credential proxy has no name, namespace or uid.
    #[error("building the credential proxy's objects: the Permit has no {0}")]
    MissingPermitMetadata(&'static str),
    /// The object did not deserialise into its Kubernetes type (a bug in this module).
    #[error("building the sandbox {what}: {source}")]
    Build {
        /// Which object.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
}

/// Name of the sandbox Pod, the bundle Secret and the NetworkPolicy of an Execution.
pub fn run_object_name(execution_name: &str) -> String {
    oauth3_crds::constants::short_object_name("oauth3-run-", execution_name)
}

fn labels(execution: &Execution, uid: &str) -> serde_json::Value {
    json!({
        "app.kubernetes.io/name": "oauth3-sandbox",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_EXECUTION: uid,
        LABEL_PERMIT: label_value(&execution.spec.permit_ref),
    })
}

/// Label values are at most 63 characters; longer names are cut (the uid label is the
/// selector; this one is for people).
pub(crate) fn label_value(s: &str) -> String {
    s.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_owned()
}

fn meta(execution: &Execution) -> Result<(String, String, String), DesiredError> {
    let name = execution
        .metadata
        .name
        .clone()
        .ok_or(DesiredError::MissingMetadata("name"))?;
    let ns = execution
        .namespace()
        .ok_or(DesiredError::MissingMetadata("namespace"))?;
    let uid = execution
        .metadata
        .uid
        .clone()
        .ok_or(DesiredError::MissingMetadata("uid"))?;
    Ok((name, ns, uid))
}

fn owner(execution: &Execution) -> Result<serde_json::Value, DesiredError> {
    let oref = execution
        .controller_owner_ref(&())
        .ok_or(DesiredError::MissingMetadata("name or uid"))?;
    serde_json::to_value(oref).map_err(|source| DesiredError::Build {
        what: "owner reference",
        source,
    })
}

/// The sandbox Pod of an Execution running under `permit`.
///
/// # Errors
/// [`DesiredError::MissingMetadata`] for an Execution that was never stored.
pub fn desired_pod(
    execution: &Execution,
    permit: &Permit,
    config: &PodLaunchConfig,
) -> Result<Pod, DesiredError> {
    let (name, ns, uid) = meta(execution)?;
    let args = run_args(
        &format!("{BUNDLE_DIR}/{BUNDLE_FILE}"),
        SEALED_DIR,
        &config.key_provider,
        &config.quote_provider,
    );
    sandbox_pod(
        SandboxPod {
            name: run_object_name(&name),
            namespace: ns,
            labels: labels(execution, &uid),
            annotations: json!({oauth3_crds::constants::ANNOTATION_EXECUTION_NAME: name}),
            owner: owner(execution)?,
            args,
            secrets: &permit.spec.secrets,
            bundle_file: BUNDLE_FILE,
            bundle_files: &[],
            active_deadline_seconds: Some(
                i64::from(execution.spec.timeout_seconds) + config.deadline_grace_seconds,
            ),
            termination_grace_seconds: 5,
            serves_port: None,
        },
        config,
    )
}

/// What the sandbox Pods of a run and of a credential proxy differ in; everything else (the
/// runtime class, image, hardening, sealed-secret projection, key and quote provider mounts,
/// resources) is [`sandbox_pod`]'s, the same for both.
pub(crate) struct SandboxPod<'a> {
    /// Name of the Pod and of its bundle Secret.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels (a JSON object).
    pub labels: serde_json::Value,
    /// Annotations (a JSON object).
    pub annotations: serde_json::Value,
    /// The controller owner reference.
    pub owner: serde_json::Value,
    /// The runner's arguments (`--ca-file` is added here when there is a sandbox CA).
    pub args: Vec<String>,
    /// The Permit's secret names, each projected from its sealed Secret.
    pub secrets: &'a [String],
    /// The main file of the bundle Secret: [`BUNDLE_FILE`] (a run's or a proxy's bundle) or
    /// the standby file of a pool member.
    pub bundle_file: &'a str,
    /// Files of the bundle Secret mounted besides the bundle (and the sandbox CA).
    pub bundle_files: &'a [&'a str],
    /// `activeDeadlineSeconds`, if the node should end the Pod.
    pub active_deadline_seconds: Option<i64>,
    /// `terminationGracePeriodSeconds`.
    pub termination_grace_seconds: i64,
    /// The TCP port the runner serves on, probed for readiness.
    pub serves_port: Option<i32>,
}

/// The hardened confidential sandbox Pod runs and proxies share (pure).
///
/// # Errors
/// [`DesiredError::Build`] if the object does not deserialise (a bug in this module).
pub(crate) fn sandbox_pod(
    p: SandboxPod<'_>,
    config: &PodLaunchConfig,
) -> Result<Pod, DesiredError> {
    let sealed_sources: Vec<_> = p
        .secrets
        .iter()
        .map(|s| {
            json!({"secret": {
                "name": secret_object_name(s),
                "items": [{"key": SEALED_SECRET_KEY, "path": s}],
                "optional": false
            }})
        })
        .collect();
    let mut args = p.args;
    let mut bundle_items = vec![json!({"key": p.bundle_file, "path": p.bundle_file})];
    if config.upstream_ca_pem.is_some() {
        bundle_items.push(json!({"key": UPSTREAM_CA_FILE, "path": UPSTREAM_CA_FILE}));
        args.extend([
            "--ca-file".to_owned(),
            format!("{BUNDLE_DIR}/{UPSTREAM_CA_FILE}"),
        ]);
    }
    bundle_items.extend(p.bundle_files.iter().map(|f| json!({"key": f, "path": f})));
    let mut volumes = vec![
        json!({"name": "bundle", "secret": {"secretName": p.name, "defaultMode": 0o440,
            "items": bundle_items}}),
        json!({"name": "sealed", "projected": {"defaultMode": 0o440, "sources": sealed_sources}}),
        json!({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
    ];
    let mut mounts = vec![
        json!({"name": "bundle", "mountPath": BUNDLE_DIR, "readOnly": true}),
        json!({"name": "sealed", "mountPath": SEALED_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let dstack_socket = match (&config.key_provider, &config.quote_provider) {
        (PodKeyProvider::Dstack { socket }, _) | (_, PodQuoteProvider::Dstack { socket }) => {
            Some(socket)
        }
        _ => None,
    };
    if let Some(socket) = dstack_socket {
        volumes.push(json!({"name": "dstack", "hostPath": {"path": socket, "type": "Socket"}}));
        mounts.push(json!({"name": "dstack", "mountPath": socket}));
    }
    let resources = json!({"cpu": config.cpu, "memory": config.memory});
    let mut container = json!({
        "name": CONTAINER_NAME,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": args,
        "env": [{"name": "RUST_LOG", "value": "warn"}],
        "resources": {"limits": resources, "requests": resources},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let (Some(port), Some(c)) = (p.serves_port, container.as_object_mut()) {
        c.insert(
            "ports".into(),
            json!([{"name": "https", "containerPort": port, "protocol": "TCP"}]),
        );
        c.insert(
            "readinessProbe".into(),
            json!({"tcpSocket": {"port": port}, "periodSeconds": 2, "failureThreshold": 3}),
        );
    }
    let mut spec = json!({
        "runtimeClassName": config.runtime_class_name,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": p.termination_grace_seconds,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "hostNetwork": false,
        "hostPID": false,
        "hostIPC": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    });
    if let (Some(deadline), Some(s)) = (p.active_deadline_seconds, spec.as_object_mut()) {
        s.insert("activeDeadlineSeconds".into(), json!(deadline));
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "labels": p.labels,
            "annotations": p.annotations,
            "ownerReferences": [p.owner],
        },
        "spec": spec,
    });
    serde_json::from_value(pod).map_err(|source| DesiredError::Build {
        what: "Pod",
        source,
    })
}

/// Private, loopback, link-local (cloud metadata) and CGNAT ranges the sandbox may never reach
/// on port 443, even if a DNS answer points there.
pub const DENIED_EGRESS_V4: [&str; 6] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
];
/// IPv6 counterparts of [`DENIED_EGRESS_V4`].
pub const DENIED_EGRESS_V6: [&str; 3] = ["fc00::/7", "fe80::/10", "::1/128"];

/// Where a sandbox Pod may connect besides DNS and the callback, as the launcher decided it at
/// launch (see [`crate::egress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRules {
    /// Any public address on TCP 443 (`--egress-policy open`).
    Open,
    /// These addresses, each on its target's port (`kubernetes`: resolved at launch).
    Addresses(Vec<(Target, Vec<IpAddr>)>),
}

/// The egress rules every sandbox Pod gets: DNS (to the cluster DNS, and only there) and the
/// operator's result callback (its Pods, or the `callback_cidrs`).
pub(crate) fn base_egress(config: &PodLaunchConfig) -> Vec<serde_json::Value> {
    let callback: Vec<serde_json::Value> = if config.callback_cidrs.is_empty() {
        vec![json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.operator_namespace}},
            "podSelector": {"matchLabels": config.operator_pod_labels},
        })]
    } else {
        config
            .callback_cidrs
            .iter()
            .map(|cidr| json!({"ipBlock": {"cidr": cidr}}))
            .collect()
    };
    vec![
        json!({
            "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }),
        json!({
            "to": callback,
            "ports": [{"protocol": "TCP", "port": config.callback_port}],
        }),
    ]
}

/// The NetworkPolicy of an Execution's sandbox Pod: no ingress; egress to DNS, the operator's
/// callback, and what `rules` allow: the Permit's hosts' addresses on their ports, or (open)
/// public addresses on TCP 443.
///
/// # Errors
/// [`DesiredError::MissingMetadata`] for an Execution that was never stored.
pub fn desired_network_policy(
    execution: &Execution,
    config: &PodLaunchConfig,
    rules: &EgressRules,
) -> Result<NetworkPolicy, DesiredError> {
    let (name, ns, uid) = meta(execution)?;
    network_policy(
        json!({
            "name": run_object_name(&name),
            "namespace": ns,
            "labels": labels(execution, &uid),
            "ownerReferences": [owner(execution)?],
        }),
        json!({LABEL_EXECUTION: uid}),
        Vec::new(),
        sandbox_egress(config, rules),
    )
}

/// The egress rules of a sandbox Pod (a run's or a proxy's): DNS, the operator's callback, and
/// what `rules` allow (pure).
pub(crate) fn sandbox_egress(
    config: &PodLaunchConfig,
    rules: &EgressRules,
) -> Vec<serde_json::Value> {
    let mut egress = base_egress(config);
    match rules {
        EgressRules::Open => egress.push(json!({
            "to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": DENIED_EGRESS_V4}},
                {"ipBlock": {"cidr": "::/0", "except": DENIED_EGRESS_V6}},
            ],
            "ports": [{"protocol": "TCP", "port": 443}],
        })),
        EgressRules::Addresses(targets) => {
            for (target, addresses) in targets {
                let to: Vec<serde_json::Value> = addresses
                    .iter()
                    .map(|ip| json!({"ipBlock": {"cidr": crate::egress::cidr(*ip)}}))
                    .collect();
                if to.is_empty() {
                    continue;
                }
                egress.push(json!({"to": to, "ports": [{"protocol": "TCP", "port": target.port}]}));
            }
        }
    }
    egress
}

/// A NetworkPolicy with `metadata`, over the Pods labelled `selector`, with both policy types
/// and exactly these `ingress` and `egress` rules (pure).
///
/// # Errors
/// [`DesiredError::Build`] if the object does not deserialise (a bug in this module).
pub(crate) fn network_policy(
    metadata: serde_json::Value,
    selector: serde_json::Value,
    ingress: Vec<serde_json::Value>,
    egress: Vec<serde_json::Value>,
) -> Result<NetworkPolicy, DesiredError> {
    let policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        }
    });
    serde_json::from_value(policy).map_err(|source| DesiredError::Build {
        what: "NetworkPolicy",
        source,
    })
}

/// The `CiliumNetworkPolicy` of an Execution's sandbox Pod (`--egress-policy cilium`): egress
/// only to the Permit's hosts by name (`toFQDNs` `matchName`) on their ports, DNS to the cluster
/// DNS with the `rules.dns` that lets Cilium's DNS proxy see (and only allow) lookups of those
/// names, and the operator's callback; no ingress (an empty ingress rule list with the
/// ingress default-deny enabled).
///
/// # Errors
/// [`DesiredError::MissingMetadata`] for an Execution that was never stored.
pub fn desired_cilium_policy(
    execution: &Execution,
    config: &PodLaunchConfig,
    targets: &[Target],
) -> Result<serde_json::Value, DesiredError> {
    let (name, ns, uid) = meta(execution)?;
    let names: Vec<serde_json::Value> = targets
        .iter()
        .filter(|t| t.host.parse::<IpAddr>().is_err())
        .map(|t| json!({"matchName": t.host}))
        .collect();
    let mut egress = vec![json!({
        "toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}}],
        "toPorts": [{
            "ports": [{"port": "53", "protocol": "ANY"}],
            "rules": {"dns": names.clone()},
        }],
    })];
    let callback_ports =
        json!([{"ports": [{"port": config.callback_port.to_string(), "protocol": "TCP"}]}]);
    if config.callback_cidrs.is_empty() {
        egress.push(json!({
            "toEndpoints": [{"matchLabels": {
                "k8s:io.kubernetes.pod.namespace": config.operator_namespace,
                "app.kubernetes.io/name": config.operator_pod_labels.get("app.kubernetes.io/name").cloned().unwrap_or_default(),
            }}],
            "toPorts": callback_ports,
        }));
    } else {
        egress.push(json!({"toCIDR": config.callback_cidrs, "toPorts": callback_ports}));
    }
    for target in targets {
        let ports = json!([{"ports": [{"port": target.port.to_string(), "protocol": "TCP"}]}]);
        match target.host.parse::<IpAddr>() {
            Ok(ip) => egress.push(json!({"toCIDR": [crate::egress::cidr(ip)], "toPorts": ports})),
            Err(_) => {
                egress.push(json!({"toFQDNs": [{"matchName": target.host}], "toPorts": ports}))
            }
        }
    }
    Ok(json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {
            "name": run_object_name(&name),
            "namespace": ns,
            "labels": labels(execution, &uid),
            "ownerReferences": [owner(execution)?],
        },
        "spec": {
            "endpointSelector": {"matchLabels": {LABEL_EXECUTION: uid}},
            "ingressDeny": [{"fromEntities": ["all"]}],
            "egress": egress,
        }
    }))
}

/// How an Execution ends whose sandbox Pod finished without a result: `TimedOut`
/// (`DeadlineExceeded`) when the node enforced `activeDeadlineSeconds`, otherwise `Failed`
/// (`SandboxFailed`), with a message for `status.message` naming what the node reported;
/// `None` while the Pod may still report (pending, running, or unknown).
///
/// A runner posts its result and waits for the answer before it exits, so a Pod that has
/// finished (`Failed`, or even `Succeeded`) while its Execution is still `Running` will never
/// report: the node killed it (out of memory, `activeDeadlineSeconds`, eviction), the image or
/// its mounts failed, or the runner could not reach the callback.
pub fn pod_outcome(pod: &Pod) -> Option<(ExecutionPhase, &'static str, String)> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref()?;
    if phase != "Failed" && phase != "Succeeded" {
        return None;
    }
    let name = pod.metadata.name.as_deref().unwrap_or("(unnamed)");
    let mut message = format!("sandbox Pod {name} ended {phase} without reporting a result");
    let pod_reason = [status.reason.as_deref(), status.message.as_deref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    if !pod_reason.is_empty() {
        message.push_str(&format!(" ({pod_reason})"));
    }
    let runner = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER_NAME)
        .and_then(|c| c.state.as_ref()?.terminated.as_ref());
    if let Some(t) = runner {
        message.push_str(&format!(
            "; container {CONTAINER_NAME}: {} (exit code {})",
            t.reason.as_deref().unwrap_or("terminated"),
            t.exit_code
        ));
    }
    if status.reason.as_deref() == Some("DeadlineExceeded") {
        Some((ExecutionPhase::TimedOut, "DeadlineExceeded", message))
    } else {
        Some((ExecutionPhase::Failed, "SandboxFailed", message))
    }
}

/// What `pod` shows of its sandbox, for the Execution driver: why it does not run yet (see
/// [`pod_waiting`]), how it ended without a result (see [`pod_outcome`]), or alive.
pub(crate) fn observe(pod: &Pod) -> super::Sandbox {
    if let Some(waiting) = pod_waiting(pod) {
        return super::Sandbox::Waiting(waiting);
    }
    match pod_outcome(pod) {
        Some((phase, _, message)) => super::Sandbox::Ended {
            deadline: phase == ExecutionPhase::TimedOut,
            message,
        },
        None => super::Sandbox::Alive,
    }
}

/// Why a sandbox Pod that has not finished is not running the runner yet, in words for
/// `status.message` (not scheduled, image not pulled, container not creatable); `None` when it
/// runs, has finished, or is only being set up.
pub fn pod_waiting(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Pending") {
        return None;
    }
    let name = pod.metadata.name.as_deref().unwrap_or("(unnamed)");
    let words = |reason: Option<&str>, message: Option<&str>| {
        [reason, message]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": ")
    };
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        return Some(format!(
            "sandbox Pod {name} is not scheduled: {}",
            words(c.reason.as_deref(), c.message.as_deref())
        ));
    }
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| {
            !matches!(
                w.reason.as_deref(),
                None | Some("" | "ContainerCreating" | "PodInitializing")
            )
        })
        .map(|w| {
            format!(
                "sandbox Pod {name} is waiting: {}",
                words(w.reason.as_deref(), w.message.as_deref())
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Volume;
    use oauth3_crds::{ExecutionSpec, PermitSpec};

    fn permit(secrets: &[&str]) -> Permit {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "d",
            "capabilities": [{"name": "gh", "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"]}],
            "secrets": secrets,
        }))
        .expect("spec");
        Permit::new("github-issues", spec)
    }

    fn execution(name: &str) -> Execution {
        let spec: ExecutionSpec = serde_json::from_value(json!({
            "permitRef": "github-issues", "code": "return 1", "timeoutSeconds": 45
        }))
        .expect("spec");
        let mut e = Execution::new(name, spec);
        e.metadata.namespace = Some("team-a".into());
        e.metadata.uid = Some("0b6c1f4e-uid".into());
        e
    }

    fn pod() -> Pod {
        desired_pod(
            &execution("count"),
            &permit(&["GITHUB_TOKEN", "OTHER_KEY"]),
            &PodLaunchConfig::default(),
        )
        .expect("pod")
    }

    fn volume<'a>(pod: &'a Pod, name: &str) -> &'a Volume {
        pod.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == name))
            .unwrap_or_else(|| panic!("volume {name}"))
    }

    #[test]
    fn pod_runs_in_the_configured_confidential_runtime_with_a_deadline() {
        let pod = pod();
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.runtime_class_name.as_deref(), Some("kata-qemu-tdx"));
        assert_eq!(spec.active_deadline_seconds, Some(45 + 30));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let custom = PodLaunchConfig {
            runtime_class_name: "kata-qemu".into(),
            ..Default::default()
        };
        let pod = desired_pod(&execution("count"), &permit(&[]), &custom).expect("pod");
        assert_eq!(
            pod.spec.and_then(|s| s.runtime_class_name).as_deref(),
            Some("kata-qemu")
        );
    }

    #[test]
    fn pod_is_hardened_and_gets_no_service_account_token() {
        let pod = pod();
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.host_network, Some(false));
        let psc = spec
            .security_context
            .as_ref()
            .expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(RUNNER_UID));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(spec.containers.len(), 1);
        let c = &spec.containers[0];
        let sc = c
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        let res = c.resources.as_ref().expect("resources");
        assert!(
            res.limits
                .as_ref()
                .is_some_and(|l| l.contains_key("cpu") && l.contains_key("memory"))
        );
    }

    #[test]
    fn only_the_permits_sealed_secrets_are_projected_outside_the_coco_sealed_path() {
        let pod = pod();
        let sources = volume(&pod, "sealed")
            .projected
            .as_ref()
            .expect("projected")
            .sources
            .clone()
            .expect("sources");
        let projected: Vec<_> = sources
            .iter()
            .map(|s| {
                let secret = s.secret.as_ref().expect("secret source");
                let item = &secret.items.as_ref().expect("items")[0];
                (
                    secret.name.clone(),
                    item.key.clone(),
                    item.path.clone(),
                    secret.optional,
                )
            })
            .collect();
        assert_eq!(
            projected,
            [
                (
                    "github-token".to_owned(),
                    "sealed".to_owned(),
                    "GITHUB_TOKEN".to_owned(),
                    Some(false)
                ),
                (
                    "other-key".to_owned(),
                    "sealed".to_owned(),
                    "OTHER_KEY".to_owned(),
                    Some(false)
                ),
            ]
        );
        let mounts = pod.spec.as_ref().expect("spec").containers[0]
            .volume_mounts
            .clone()
            .expect("mounts");
        assert!(mounts.iter().all(|m| !m.mount_path.starts_with("/sealed")));
        assert!(
            mounts
                .iter()
                .filter(|m| m.name != "tmp")
                .all(|m| m.read_only == Some(true))
        );
        let bundle = volume(&pod, "bundle")
            .secret
            .as_ref()
            .expect("bundle secret");
        assert_eq!(bundle.secret_name.as_deref(), Some("oauth3-run-count"));
    }

    #[test]
    fn pod_and_policy_are_owned_by_the_execution_and_selected_by_its_uid() {
        let e = execution("count");
        let pod = pod();
        let policy = desired_network_policy(&e, &PodLaunchConfig::default(), &EgressRules::Open)
            .expect("policy");
        for meta in [&pod.metadata, &policy.metadata] {
            let owners = meta.owner_references.as_ref().expect("owners");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "Execution");
            assert_eq!(owners[0].uid, "0b6c1f4e-uid");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("team-a"));
            assert_eq!(
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_EXECUTION))
                    .map(String::as_str),
                Some("0b6c1f4e-uid")
            );
        }
        let selector = policy
            .spec
            .as_ref()
            .expect("spec")
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .expect("labels");
        assert_eq!(
            selector.get(LABEL_EXECUTION).map(String::as_str),
            Some("0b6c1f4e-uid")
        );
    }

    #[test]
    fn network_policy_denies_ingress_and_allows_only_dns_callback_and_public_443() {
        let policy = desired_network_policy(
            &execution("count"),
            &PodLaunchConfig::default(),
            &EgressRules::Open,
        )
        .expect("policy");
        let spec = policy.spec.expect("spec");
        assert_eq!(
            spec.policy_types,
            Some(vec!["Ingress".to_owned(), "Egress".to_owned()])
        );
        assert_eq!(spec.ingress, Some(vec![]));
        let egress = spec.egress.expect("egress");
        assert_eq!(egress.len(), 3);
        let ports: Vec<Vec<String>> = egress
            .iter()
            .map(|r| {
                r.ports
                    .iter()
                    .flatten()
                    .map(|p| {
                        let port = match &p.port {
                            Some(
                                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i),
                            ) => i.to_string(),
                            other => format!("{other:?}"),
                        };
                        format!("{}/{port}", p.protocol.clone().unwrap_or_default())
                    })
                    .collect()
            })
            .collect();
        assert_eq!(
            ports,
            [vec!["UDP/53", "TCP/53"], vec!["TCP/8443"], vec!["TCP/443"]]
        );
        let public = egress[2].to.as_ref().expect("peers");
        let v4 = public[0].ip_block.as_ref().expect("ipBlock");
        assert_eq!(v4.cidr, "0.0.0.0/0");
        let except = v4.except.clone().expect("except");
        for private in [
            "10.0.0.0/8",
            "169.254.0.0/16",
            "127.0.0.0/8",
            "192.168.0.0/16",
        ] {
            assert!(
                except.iter().any(|e| e == private),
                "{private} must be excluded"
            );
        }
    }

    #[test]
    fn a_kubernetes_policy_allows_exactly_the_resolved_addresses_on_their_ports() {
        let t = |h: &str, p: u16| Target {
            host: h.into(),
            port: p,
        };
        let rules = EgressRules::Addresses(vec![
            (
                t("api.github.com", 443),
                vec![
                    "140.82.112.6".parse().expect("ip"),
                    "2606:50c0::1".parse().expect("ip"),
                ],
            ),
            (
                t("uploads.example.com", 8443),
                vec!["93.184.216.34".parse().expect("ip")],
            ),
        ]);
        let policy = desired_network_policy(&execution("k"), &PodLaunchConfig::default(), &rules)
            .expect("policy");
        let v = serde_json::to_value(&policy).expect("json");
        let egress = v["spec"]["egress"].as_array().expect("egress");
        assert_eq!(egress.len(), 4, "DNS, callback, two targets: {egress:?}");
        assert_eq!(
            egress[2],
            json!({"to": [{"ipBlock": {"cidr": "140.82.112.6/32"}}, {"ipBlock": {"cidr": "2606:50c0::1/128"}}],
                   "ports": [{"protocol": "TCP", "port": 443}]})
        );
        assert_eq!(
            egress[3],
            json!({"to": [{"ipBlock": {"cidr": "93.184.216.34/32"}}], "ports": [{"protocol": "TCP", "port": 8443}]})
        );
        assert!(!v.to_string().contains("0.0.0.0/0"), "no open rule");
    }

    #[test]
    fn callback_cidrs_replace_the_operator_pods_in_the_callback_rule() {
        let config = PodLaunchConfig {
            callback_cidrs: vec!["10.88.0.1/32".into()],
            callback_port: 41_234,
            ..PodLaunchConfig::default()
        };
        let policy =
            desired_network_policy(&execution("c"), &config, &EgressRules::Open).expect("policy");
        let v = serde_json::to_value(&policy).expect("json");
        assert_eq!(
            v["spec"]["egress"][1],
            json!({"to": [{"ipBlock": {"cidr": "10.88.0.1/32"}}],
                   "ports": [{"protocol": "TCP", "port": 41_234}]})
        );
        let cilium = desired_cilium_policy(&execution("c"), &config, &[]).expect("cilium");
        assert_eq!(
            cilium["spec"]["egress"][1],
            json!({"toCIDR": ["10.88.0.1/32"],
                   "toPorts": [{"ports": [{"port": "41234", "protocol": "TCP"}]}]})
        );
        let default = desired_network_policy(
            &execution("c"),
            &PodLaunchConfig::default(),
            &EgressRules::Open,
        )
        .expect("policy");
        let v = serde_json::to_value(&default).expect("json");
        assert!(
            v["spec"]["egress"][1]["to"][0]["podSelector"].is_object(),
            "by default the operator's Pods: {v}"
        );
    }

    #[test]
    fn a_sandbox_ca_travels_in_the_bundle_secret_and_is_passed_to_the_runner() {
        let with = PodLaunchConfig {
            upstream_ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            ..PodLaunchConfig::default()
        };
        let pod = desired_pod(&execution("ca"), &permit(&[]), &with).expect("pod");
        let v = serde_json::to_value(&pod).expect("json");
        let args = v["spec"]["containers"][0]["args"].as_array().expect("args");
        let at = args
            .iter()
            .position(|a| a == "--ca-file")
            .expect("--ca-file passed");
        assert_eq!(args[at + 1], format!("{BUNDLE_DIR}/{UPSTREAM_CA_FILE}"));
        let bundle = v["spec"]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|vol| vol["name"] == "bundle")
            .expect("bundle volume")
            .clone();
        assert_eq!(
            bundle["secret"]["items"][1],
            json!({"key": UPSTREAM_CA_FILE, "path": UPSTREAM_CA_FILE})
        );
        let without =
            desired_pod(&execution("ca"), &permit(&[]), &PodLaunchConfig::default()).expect("pod");
        assert!(
            !serde_json::to_string(&without)
                .expect("json")
                .contains("--ca-file"),
            "no CA, no flag"
        );
    }

    #[test]
    fn a_cilium_policy_allows_the_hosts_by_name_and_lets_the_dns_proxy_see_them() {
        let targets = vec![
            Target {
                host: "api.github.com".into(),
                port: 443,
            },
            Target {
                host: "140.82.112.6".into(),
                port: 8443,
            },
        ];
        let v = desired_cilium_policy(&execution("c"), &PodLaunchConfig::default(), &targets)
            .expect("policy");
        assert_eq!(v["kind"], "CiliumNetworkPolicy");
        assert_eq!(
            v["spec"]["endpointSelector"]["matchLabels"][LABEL_EXECUTION],
            "0b6c1f4e-uid"
        );
        let egress = v["spec"]["egress"].as_array().expect("egress");
        assert_eq!(
            egress[0]["toPorts"][0]["rules"]["dns"],
            json!([{"matchName": "api.github.com"}])
        );
        assert_eq!(egress[1]["toPorts"][0]["ports"][0]["port"], "8443");
        assert_eq!(
            egress[2],
            json!({"toFQDNs": [{"matchName": "api.github.com"}], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]})
        );
        assert_eq!(egress[3]["toCIDR"], json!(["140.82.112.6/32"]));
        assert_eq!(v["spec"]["ingressDeny"], json!([{"fromEntities": ["all"]}]));
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Execution");
    }

    #[test]
    fn kbs_and_dstack_key_providers_are_passed_to_the_runner() {
        let pod = pod();
        let args = pod.spec.as_ref().expect("spec").containers[0]
            .args
            .clone()
            .expect("args");
        assert!(
            args.windows(2).any(|w| w == ["--key-provider", "kbs"]),
            "{args:?}"
        );
        let cfg = PodLaunchConfig {
            key_provider: PodKeyProvider::Dstack {
                socket: "/var/run/dstack.sock".into(),
            },
            ..Default::default()
        };
        let pod = desired_pod(&execution("count"), &permit(&[]), &cfg).expect("pod");
        let args = pod.spec.as_ref().expect("spec").containers[0]
            .args
            .clone()
            .expect("args");
        assert!(
            args.windows(2)
                .any(|w| w == ["--dstack-endpoint", "/var/run/dstack.sock"]),
            "{args:?}"
        );
        assert_eq!(
            volume(&pod, "dstack")
                .host_path
                .as_ref()
                .and_then(|h| h.type_.as_deref()),
            Some("Socket")
        );
    }

    #[test]
    fn the_quote_provider_is_named_explicitly_and_a_dstack_one_gets_the_socket() {
        let args = |pod: &Pod| {
            pod.spec.as_ref().expect("spec").containers[0]
                .args
                .clone()
                .expect("args")
        };
        let a = args(&pod());
        assert!(
            a.windows(4)
                .any(|w| w == ["--attestation", "coco", "--aa-url", "http://127.0.0.1:8006"]),
            "{a:?}"
        );
        let cfg = PodLaunchConfig {
            quote_provider: PodQuoteProvider::Dstack {
                socket: "/var/run/dstack.sock".into(),
            },
            ..Default::default()
        };
        let pod = desired_pod(&execution("count"), &permit(&[]), &cfg).expect("pod");
        let a = args(&pod);
        assert!(
            a.windows(4).any(|w| w
                == [
                    "--attestation",
                    "dstack",
                    "--dstack-endpoint",
                    "/var/run/dstack.sock"
                ]),
            "{a:?}"
        );
        assert!(
            volume(&pod, "dstack").host_path.is_some(),
            "the socket is mounted for quotes too"
        );
    }

    #[test]
    fn long_execution_names_give_short_unique_object_names() {
        let a = run_object_name(&"a".repeat(200));
        let b = run_object_name(&format!("{}b", "a".repeat(199)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(run_object_name("count"), "oauth3-run-count");
    }

    #[test]
    fn an_execution_that_was_never_stored_is_an_error_not_a_panic() {
        let mut e = execution("x");
        e.metadata.uid = None;
        assert!(matches!(
            desired_pod(&e, &permit(&[]), &PodLaunchConfig::default()),
            Err(DesiredError::MissingMetadata(_))
        ));
    }

    fn pod_in(phase: &str, extra: serde_json::Value) -> Pod {
        let mut status = json!({"phase": phase});
        if let (Some(status), Some(extra)) = (status.as_object_mut(), extra.as_object()) {
            status.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "metadata": {"name": "oauth3-run-x"}, "status": status
        }))
        .expect("pod")
    }

    #[test]
    fn a_pod_still_pending_or_running_has_no_outcome_yet() {
        for phase in ["Pending", "Running", "Unknown"] {
            assert_eq!(pod_outcome(&pod_in(phase, json!({}))), None, "{phase}");
        }
        assert_eq!(
            pod_outcome(&serde_json::from_value(json!({"metadata": {"name": "p"}})).expect("pod")),
            None
        );
    }

    #[test]
    fn a_finished_pod_names_what_the_node_said_and_how_the_runner_ended() {
        let oom = pod_in(
            "Failed",
            json!({"containerStatuses": [{
                "name": CONTAINER_NAME, "image": "i", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
            }]}),
        );
        assert_eq!(
            pod_outcome(&oom),
            Some((
                ExecutionPhase::Failed,
                "SandboxFailed",
                "sandbox Pod oauth3-run-x ended Failed without reporting a result; container \
                 runner: OOMKilled (exit code 137)"
                    .to_owned()
            ))
        );
        let deadline = pod_in(
            "Failed",
            json!({"reason": "DeadlineExceeded",
                   "message": "Pod was active on the node longer than the specified deadline"}),
        );
        assert_eq!(
            pod_outcome(&deadline),
            Some((
                ExecutionPhase::TimedOut,
                "DeadlineExceeded",
                "sandbox Pod oauth3-run-x ended Failed without reporting a result \
                 (DeadlineExceeded: Pod was active on the node longer than the specified deadline)"
                    .to_owned()
            ))
        );
        let exited = pod_in("Succeeded", json!({}));
        assert!(
            pod_outcome(&exited).is_some_and(|(phase, _, m)| phase == ExecutionPhase::Failed
                && m.contains("ended Succeeded without reporting a result"))
        );
    }

    #[test]
    fn a_pod_stuck_before_running_says_why_and_a_normal_start_says_nothing() {
        let pulling = pod_in(
            "Pending",
            json!({"containerStatuses": [{
                "name": CONTAINER_NAME, "image": "i", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                                      "message": "Back-off pulling image \"r/x:1\""}}
            }]}),
        );
        assert_eq!(
            pod_waiting(&pulling).as_deref(),
            Some(
                "sandbox Pod oauth3-run-x is waiting: ImagePullBackOff: Back-off pulling image \"r/x:1\""
            )
        );
        let unscheduled = pod_in(
            "Pending",
            json!({"conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 node(s) didn't match RuntimeClass"}]}),
        );
        assert_eq!(
            pod_waiting(&unscheduled).as_deref(),
            Some(
                "sandbox Pod oauth3-run-x is not scheduled: Unschedulable: 0/3 nodes are \
                 available: 3 node(s) didn't match RuntimeClass"
            )
        );
        let creating = pod_in(
            "Pending",
            json!({"containerStatuses": [{
                "name": CONTAINER_NAME, "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}
            }]}),
        );
        assert_eq!(pod_waiting(&creating), None);
        assert_eq!(pod_waiting(&pod_in("Pending", json!({}))), None);
        assert_eq!(pod_waiting(&pod_in("Running", json!({}))), None);
    }
}
