//! Launchers start the sandbox runner for an Execution, observe it, and clean up after it.
//! `pod` runs it in a confidential container (Kata on Intel TDX); `process` runs the same
//! binary locally with the same bundle (development and tests). All sandbox IO lives here; the
//! Execution driver decides, the launcher does.

pub mod pod;
pub mod process;

use k8s_openapi::api::core::v1::{Pod, Secret};
use std::net::IpAddr;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use oauth3_crds::constants::{
    FIELD_MANAGER, SEALED_SECRET_KEY, SEALED_SECRET_TYPE, secret_object_name,
};
use oauth3_crds::{Execution, LauncherKind, Permit};
use oauth3_protocol::{Bundle, SealedSecretRef};

use crate::egress::{self, EgressMode, Target};
use crate::status_write::is_not_found;
use pod::{
    EgressRules, PodLaunchConfig, desired_cilium_policy, desired_network_policy, desired_pod,
    run_object_name,
};
use process::ProcessLauncher;

/// Which launcher runs the sandboxes, with its settings.
#[derive(Debug, Clone)]
pub enum Launcher {
    /// A local child process (development, tests, `make demo`).
    Process(ProcessLauncher),
    /// A confidential-container Pod per Execution (see [`pod`]).
    Pod(Box<PodLaunchConfig>),
}

/// A started runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// `pod/<name>` (also in `status.podName`) or `process/<pid>`; logged and named in the
    /// `Launched` Event.
    pub handle: String,
}

/// Tells, for a process runner, how it ended once it has (e.g. `exit status: 3`).
pub(crate) type ExitWatch = tokio::sync::oneshot::Receiver<String>;

/// Why a runner could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The child process could not be started or given its bundle.
    #[error("launching the runner process: {0}")]
    Spawn(String),
    /// Building the sandbox objects failed.
    #[error("launching the sandbox pod: {0}")]
    Desired(#[from] pod::DesiredError),
    /// Applying a sandbox object failed.
    #[error("launching the sandbox pod: applying the {what} {name}: {source}")]
    Apply {
        /// `bundle Secret`, `NetworkPolicy` or `Pod`.
        what: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The bundle could not be serialised.
    #[error("launching the sandbox pod: serialising the bundle: {0}")]
    Bundle(#[source] serde_json::Error),
    /// The Permit's hosts cannot be walled in: one does not resolve, or resolves to an
    /// address a sandbox may never reach.
    #[error("the sandbox's egress cannot be limited to the Permit's hosts: {0}")]
    Egress(String),
}

/// Why the sealed Secrets of a Permit could not be handed to a process runner.
#[derive(Debug, thiserror::Error)]
pub enum SealedSecretError {
    /// No such Secret.
    #[error(
        "sealed Secret {object} (for {name}) not found in namespace {namespace}; create it with `kubectl oauth3 seal {name}`"
    )]
    Missing {
        /// The Secret's name.
        object: String,
        /// The secret's name in the Permit.
        name: String,
        /// The namespace.
        namespace: String,
    },
    /// The Secret is not of the sealed type.
    #[error("Secret {object} is not of type {SEALED_SECRET_TYPE}; refusing to use it")]
    WrongType {
        /// The Secret's name.
        object: String,
    },
    /// The Secret has no envelope.
    #[error("Secret {object} has no `{SEALED_SECRET_KEY}` key")]
    NoEnvelope {
        /// The Secret's name.
        object: String,
    },
}

/// The sealed envelopes a bundle gets, or why they cannot be had.
#[derive(Debug)]
pub(crate) enum SealedEnvelopes {
    /// Every secret the Permit names, sealed.
    Found(Vec<SealedSecretRef>),
    /// A Secret is missing or unusable: the run is refused.
    Unusable(SealedSecretError),
}

/// What the launcher sees of a running sandbox (pure data; see [`pod::pod_outcome`] and
/// [`pod::pod_waiting`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// Not observed (process launcher, or the Pod could not be read).
    Unobserved,
    /// Running, or being set up: a result may still come.
    Alive,
    /// Exists but does not run yet, with why (not scheduled, image not pulled).
    Waiting(String),
    /// Ended without a result: the node enforced the deadline, or it failed.
    Ended {
        /// The node ended it at `activeDeadlineSeconds`.
        deadline: bool,
        /// What the node reported.
        message: String,
    },
}

impl Launcher {
    /// The kind recorded in the launch record.
    pub fn kind(&self) -> LauncherKind {
        match self {
            Self::Process(_) => LauncherKind::Process,
            Self::Pod(_) => LauncherKind::Pod,
        }
    }

    /// `pod/<name>` of the sandbox Pod of Execution `name` (pod launcher only).
    pub(crate) fn pod_name(&self, name: &str) -> Option<String> {
        matches!(self, Self::Pod(_)).then(|| format!("pod/{}", run_object_name(name)))
    }

    /// The envelopes (ciphertext) of `permit`'s sealed Secrets that go in the bundle: read by
    /// the operator for a process runner; none for a Pod, which gets them projected (the
    /// kubelet fails the Pod, and so the run, if one is missing).
    pub(crate) async fn sealed_envelopes(
        &self,
        client: &Client,
        namespace: &str,
        permit: &Permit,
    ) -> Result<SealedEnvelopes, kube::Error> {
        match self {
            Self::Pod(_) => Ok(SealedEnvelopes::Found(Vec::new())),
            Self::Process(_) => read_sealed_envelopes(client, namespace, permit).await,
        }
    }

    /// Starts the runner of `exec` under `permit` with `bundle`. A process runner also comes
    /// with a watch on its exit.
    pub(crate) async fn launch(
        &self,
        client: &Client,
        exec: &Execution,
        permit: &Permit,
        bundle: &Bundle,
    ) -> Result<(Launched, Option<ExitWatch>), LaunchError> {
        match self {
            Self::Process(p) => p
                .launch_watched(bundle)
                .await
                .map(|(launched, exited)| (launched, Some(exited))),
            Self::Pod(config) => launch_pod(client, exec, permit, config, bundle)
                .await
                .map(|l| (l, None)),
        }
    }
}

/// Reads the envelopes (ciphertext) of the Permit's sealed Secrets.
async fn read_sealed_envelopes(
    client: &Client,
    namespace: &str,
    permit: &Permit,
) -> Result<SealedEnvelopes, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for name in &permit.spec.secrets {
        let object = secret_object_name(name);
        let unusable = |e| Ok(SealedEnvelopes::Unusable(e));
        let Some(secret) = secrets.get_opt(&object).await? else {
            return unusable(SealedSecretError::Missing {
                object,
                name: name.clone(),
                namespace: namespace.to_owned(),
            });
        };
        if secret.type_.as_deref() != Some(SEALED_SECRET_TYPE) {
            return unusable(SealedSecretError::WrongType { object });
        }
        let envelope = secret
            .data
            .as_ref()
            .and_then(|d| d.get(SEALED_SECRET_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned());
        let Some(envelope) = envelope else {
            return unusable(SealedSecretError::NoEnvelope { object });
        };
        out.push(SealedSecretRef {
            name: name.clone(),
            envelope,
        });
    }
    Ok(SealedEnvelopes::Found(out))
}

/// Applies the bundle Secret, the NetworkPolicy and the Pod of an Execution (server-side
/// apply, one field manager; all owned by the Execution).
async fn launch_pod(
    client: &Client,
    exec: &Execution,
    permit: &Permit,
    config: &PodLaunchConfig,
    bundle: &Bundle,
) -> Result<Launched, LaunchError> {
    let namespace = exec.namespace().unwrap_or_default();
    let name = run_object_name(&exec.name_any());
    let pod = desired_pod(exec, permit, config)?;
    let targets = egress::targets(&permit.effective_spec());
    // Decided before anything is created: a Permit whose hosts point inside the cluster or at
    // the metadata service gets no Pod at all.
    let rules = match config.egress {
        EgressMode::Open => EgressRules::Open,
        EgressMode::Kubernetes | EgressMode::Cilium => {
            EgressRules::Addresses(resolve_targets(&targets).await?)
        }
    };
    let body = serde_json::to_string(bundle).map_err(LaunchError::Bundle)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            owner_references: pod.metadata.owner_references.clone(),
            labels: pod.metadata.labels.clone(),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some(
            [(pod::BUNDLE_FILE.to_owned(), body)]
                .into_iter()
                .chain(
                    config
                        .upstream_ca_pem
                        .clone()
                        .map(|pem| (pod::UPSTREAM_CA_FILE.to_owned(), pem)),
                )
                .collect(),
        ),
        ..Default::default()
    };
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let apply_error = |what: &'static str| {
        let name = name.clone();
        move |source| LaunchError::Apply { what, name, source }
    };
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .patch(&name, &pp, &Patch::Apply(&secret))
        .await
        .map_err(apply_error("bundle Secret"))?;
    if config.egress == EgressMode::Cilium {
        let policy = desired_cilium_policy(exec, config, &targets)?;
        let policy: DynamicObject =
            serde_json::from_value(policy).map_err(|source| pod::DesiredError::Build {
                what: "CiliumNetworkPolicy",
                source,
            })?;
        Api::<DynamicObject>::namespaced_with(
            client.clone(),
            &namespace,
            &cilium_policy_resource(),
        )
        .patch(&name, &pp, &Patch::Apply(&policy))
        .await
        .map_err(apply_error("CiliumNetworkPolicy"))?;
    } else {
        let policy = desired_network_policy(exec, config, &rules)?;
        Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
            client.clone(),
            &namespace,
        )
        .patch(&name, &pp, &Patch::Apply(&policy))
        .await
        .map_err(apply_error("NetworkPolicy"))?;
    }
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .patch(&name, &pp, &Patch::Apply(&pod))
        .await
        .map_err(apply_error("Pod"))?;
    Ok(Launched {
        handle: format!("pod/{name}"),
    })
}

/// The API resource of Cilium's `CiliumNetworkPolicy` (`cilium.io/v2`).
pub fn cilium_policy_resource() -> ApiResource {
    ApiResource {
        group: "cilium.io".into(),
        version: "v2".into(),
        api_version: "cilium.io/v2".into(),
        kind: "CiliumNetworkPolicy".into(),
        plural: "ciliumnetworkpolicies".into(),
    }
}

/// The addresses each target resolves to now, public ones only; a target on the sandbox's own
/// loopback (`localhost`, `127.0.0.1`: the development case) needs no rule and gets none.
///
/// # Errors
/// [`LaunchError::Egress`] naming the host and the address when a host does not resolve or
/// resolves to a private, loopback, link-local (metadata) or otherwise non-public address.
async fn resolve_targets(targets: &[Target]) -> Result<Vec<(Target, Vec<IpAddr>)>, LaunchError> {
    resolve_targets_with(targets, |host, port| {
        Box::pin(async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(|found| found.map(|a| a.ip()).collect())
        })
    })
    .await
}

/// How a host name is looked up (the system resolver in production).
type Lookup = Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send>;

/// [`resolve_targets`] with `lookup` for host names.
async fn resolve_targets_with(
    targets: &[Target],
    lookup: impl Fn(String, u16) -> std::pin::Pin<Lookup>,
) -> Result<Vec<(Target, Vec<IpAddr>)>, LaunchError> {
    let mut out = Vec::new();
    for target in targets {
        let literal = target.host.parse::<IpAddr>().ok();
        let local_name = target.host == "localhost" || target.host.ends_with(".localhost");
        if local_name || literal.is_some_and(|ip| ip.is_loopback()) {
            continue;
        }
        let addresses: Vec<IpAddr> = match literal {
            Some(ip) => vec![ip],
            None => lookup(target.host.clone(), target.port)
                .await
                .map_err(|e| LaunchError::Egress(format!("resolving {target}: {e}")))?,
        };
        let allowed = egress::allowed_addresses(target, &addresses).map_err(LaunchError::Egress)?;
        out.push((target.clone(), allowed));
    }
    Ok(out)
}

/// The launcher that started `exec`, from its launch record.
fn launched_by(exec: &Execution) -> Option<LauncherKind> {
    Some(exec.status.as_ref()?.launch.as_ref()?.launcher)
}

/// What the sandbox Pod of a pod-launched `exec` shows; [`Sandbox::Unobserved`] for a process
/// runner.
///
/// # Errors
/// Reading the Pod failed.
pub(crate) async fn observe(client: &Client, exec: &Execution) -> Result<Sandbox, kube::Error> {
    if launched_by(exec) != Some(LauncherKind::Pod) {
        return Ok(Sandbox::Unobserved);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &exec.namespace().unwrap_or_default());
    let Some(pod) = pods.get_opt(&run_object_name(&exec.name_any())).await? else {
        return Ok(Sandbox::Alive);
    };
    Ok(pod::observe(&pod))
}

/// Deletes the Pod and the bundle Secret (which holds the spent callback token) of a finished
/// pod-launched Execution, and its NetworkPolicy or CiliumNetworkPolicy: the sandbox's walls go
/// with it (all are owned by the Execution too, so deleting it collects what is left).
/// Best effort: failures are logged (the owner reference collects them with the Execution).
pub(crate) async fn cleanup(client: &Client, exec: &Execution) {
    if launched_by(exec) != Some(LauncherKind::Pod) {
        return;
    }
    let namespace = exec.namespace().unwrap_or_default();
    let name = run_object_name(&exec.name_any());
    let dp = DeleteParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), &namespace);
    let cilium: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &cilium_policy_resource());
    let cilium_deleted = match cilium.delete(&name, &dp).await {
        // Clusters without Cilium serve no such resource: nothing to delete.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other.map(|_| ()),
    };
    for result in [
        pods.delete(&name, &dp).await.map(|_| ()),
        secrets.delete(&name, &dp).await.map(|_| ()),
        policies.delete(&name, &dp).await.map(|_| ()),
        cilium_deleted,
    ] {
        match result {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(execution = %format!("{namespace}/{}", exec.name_any()), error = %e, "cleaning up the sandbox");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver stand-in: fixed answers, no network.
    fn stand_in(host: String, _port: u16) -> std::pin::Pin<Lookup> {
        let answer = match host.as_str() {
            "api.example" => Ok(vec!["140.82.112.6".parse().expect("ip")]),
            "internal.example" => Ok(vec!["10.0.0.5".parse().expect("ip")]),
            "metadata.example" => Ok(vec![
                "140.82.112.6".parse().expect("ip"),
                "169.254.169.254".parse().expect("ip"),
            ]),
            "loop.example" => Ok(vec!["::1".parse().expect("ip")]),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such host",
            )),
        };
        Box::pin(async move { answer })
    }

    fn target(host: &str) -> Target {
        Target {
            host: host.into(),
            port: 443,
        }
    }

    #[tokio::test]
    async fn names_resolving_inside_the_cluster_or_to_the_metadata_address_are_refused() {
        let ok = resolve_targets_with(&[target("api.example"), target("localhost")], stand_in)
            .await
            .expect("public");
        assert_eq!(
            ok,
            vec![(
                target("api.example"),
                vec!["140.82.112.6".parse().expect("ip")]
            )]
        );
        for (host, says) in [
            (
                "internal.example",
                "internal.example:443 resolves to 10.0.0.5, which is private",
            ),
            (
                "metadata.example",
                "resolves to 169.254.169.254, which is link-local",
            ),
            ("loop.example", "resolves to ::1, which is loopback"),
            ("gone.example", "resolving gone.example:443: no such host"),
        ] {
            let err = resolve_targets_with(&[target("api.example"), target(host)], stand_in)
                .await
                .expect_err(host);
            assert!(
                matches!(&err, LaunchError::Egress(m) if m.contains(says)),
                "{host}: {err}"
            );
        }
    }
}
