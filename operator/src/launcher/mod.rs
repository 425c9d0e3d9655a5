//! Launchers start the sandbox runner for an Execution, observe it, and clean up after it.
//! `pod` runs it in a confidential container (Kata on Intel TDX); `process` runs the same
//! binary locally with the same bundle (development and tests). All sandbox IO lives here; the
//! Execution driver decides, the launcher does.

pub mod pod;
pub mod process;

use k8s_openapi::api::core::v1::{Pod, Secret};
use std::net::IpAddr;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use oauth3_crds::constants::{
    ANNOTATION_LAUNCH, FIELD_MANAGER, SEALED_SECRET_KEY, SEALED_SECRET_TYPE, secret_object_name,
};
use oauth3_crds::{Execution, LauncherKind, Permit};
use oauth3_protocol::{Bundle, SealedSecretRef};

use crate::egress::{self, EgressMode, Target};
use crate::status_write::{is_conflict, is_not_found};
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
    /// kubelet fails the Pod, and so the run, if one is missing) or, for a pool member, handed
    /// over with its bundle on the standby endpoint ([`read_sealed_envelopes`]).
    pub(crate) async fn sealed_envelopes(
        &self,
        client: &Client,
        namespace: &str,
        permit: &Permit,
    ) -> Result<SealedEnvelopes, kube::Error> {
        match self {
            Self::Pod(_) => Ok(SealedEnvelopes::Found(Vec::new())),
            Self::Process(_) => {
                read_sealed_envelopes(client, namespace, &permit.spec.secrets).await
            }
        }
    }
}

/// Reads the envelopes (ciphertext) of the sealed Secrets of the secret names `names`, all at
/// once.
pub(crate) async fn read_sealed_envelopes(
    client: &Client,
    namespace: &str,
    names: &[String],
) -> Result<SealedEnvelopes, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let objects: Vec<String> = names.iter().map(|n| secret_object_name(n)).collect();
    let read =
        futures::future::try_join_all(objects.iter().map(|object| secrets.get_opt(object))).await?;
    let mut out = Vec::new();
    for (name, secret) in names.iter().zip(read) {
        let object = secret_object_name(name);
        let unusable = |e| Ok(SealedEnvelopes::Unusable(e));
        let Some(secret) = secret else {
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

/// The objects of one pod launch, built (and the Permit's hosts resolved) before anything is
/// written: the bundle Secret, the egress policy and the Pod, all named
/// [`run_object_name`], labelled with the Execution's uid and owned by it.
///
/// Order that matters for safety, and is kept: the Pod is created last, and only after the
/// launch lock is written and both the bundle Secret and its egress policy are stored (a Pod
/// never exists without its policy). Order that does not: the Secret and the policy are
/// written together, and together with the launch lock ([`PodLaunch::stage`]); only the lock's
/// winner finishes ([`PodLaunch::start`]), a loser takes back what it created
/// ([`PodLaunch::withdraw`]).
#[derive(Debug)]
pub struct PodLaunch {
    namespace: String,
    name: String,
    secret: Secret,
    policy: EgressPolicy,
    pod: Pod,
    /// The claimed pool member that runs it (no Pod is created), if any.
    member: Option<String>,
}

/// The egress wall of a sandbox Pod.
#[derive(Debug)]
enum EgressPolicy {
    /// `--egress-policy open` or `kubernetes`.
    Kubernetes(k8s_openapi::api::networking::v1::NetworkPolicy),
    /// `--egress-policy cilium`.
    Cilium(DynamicObject),
}

/// What staging did to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Staged {
    /// This launch created it, at this resourceVersion.
    Created(String),
    /// One of that name was there already (a launch racing this one for the lock, or the
    /// leftover of an earlier Execution of the same name): only the lock's winner overwrites
    /// it, with its own content.
    Existed,
}

/// What [`PodLaunch::stage`] left: the bundle Secret and the egress policy.
#[derive(Debug)]
pub struct Staging {
    secret: Staged,
    policy: Staged,
}

/// Builds the sandbox objects of `exec` under `permit` with `bundle` (pod launcher); the
/// Secret and the policy carry [`ANNOTATION_LAUNCH`] = `token_digest`, the launch's own mark.
///
/// # Errors
/// [`LaunchError::Egress`] when a Permit host resolves inside the cluster or to the metadata
/// address (decided before anything is created: such a Permit gets no Pod at all), or a
/// desired object could not be built.
pub async fn pod_launch(
    exec: &Execution,
    permit: &Permit,
    config: &PodLaunchConfig,
    bundle: &Bundle,
    token_digest: &str,
    member: Option<&str>,
) -> Result<PodLaunch, LaunchError> {
    let namespace = exec.namespace().unwrap_or_default();
    let name = run_object_name(&exec.name_any());
    let pod = desired_pod(exec, permit, config)?;
    let targets = egress::targets(&permit.effective_spec());
    let rules = match config.egress {
        EgressMode::Open => EgressRules::Open,
        EgressMode::Kubernetes | EgressMode::Cilium => {
            EgressRules::Addresses(resolve_targets(&targets).await?)
        }
    };
    let mark = || Some([(ANNOTATION_LAUNCH.to_owned(), token_digest.to_owned())].into());
    let policy = if config.egress == EgressMode::Cilium {
        let policy = desired_cilium_policy(exec, config, &targets)?;
        let mut policy: DynamicObject =
            serde_json::from_value(policy).map_err(|source| pod::DesiredError::Build {
                what: "CiliumNetworkPolicy",
                source,
            })?;
        policy.metadata.annotations = mark();
        EgressPolicy::Cilium(policy)
    } else {
        let mut policy = desired_network_policy(exec, config, &rules)?;
        policy.metadata.annotations = mark();
        EgressPolicy::Kubernetes(policy)
    };
    let body = serde_json::to_string(bundle).map_err(LaunchError::Bundle)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            owner_references: pod.metadata.owner_references.clone(),
            labels: pod.metadata.labels.clone(),
            annotations: mark(),
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
    Ok(PodLaunch {
        namespace,
        name,
        secret,
        policy,
        pod,
        member: member.map(str::to_owned),
    })
}

impl PodLaunch {
    fn secrets(&self, client: &Client) -> Api<Secret> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    fn network_policies(
        &self,
        client: &Client,
    ) -> Api<k8s_openapi::api::networking::v1::NetworkPolicy> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    fn cilium_policies(&self, client: &Client) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), &self.namespace, &cilium_policy_resource())
    }

    fn apply_error(&self, what: &'static str) -> impl FnOnce(kube::Error) -> LaunchError {
        let name = self.name.clone();
        move |source| LaunchError::Apply { what, name, source }
    }

    /// Creates the bundle Secret and the egress policy, concurrently (and concurrently with
    /// the launch lock: nothing runs until [`PodLaunch::start`]). Creates, never overwrites:
    /// an object of the same name is left as it is and noted [`Staged::Existed`].
    pub async fn stage(&self, client: &Client) -> Result<Staging, LaunchError> {
        let secret = async {
            create(&self.secrets(client), &self.secret)
                .await
                .map_err(self.apply_error("bundle Secret"))
        };
        let policy = async {
            match &self.policy {
                EgressPolicy::Kubernetes(np) => create(&self.network_policies(client), np)
                    .await
                    .map_err(self.apply_error("NetworkPolicy")),
                EgressPolicy::Cilium(cnp) => create(&self.cilium_policies(client), cnp)
                    .await
                    .map_err(self.apply_error("CiliumNetworkPolicy")),
            }
        };
        let (secret, policy) = tokio::try_join!(secret, policy)?;
        Ok(Staging { secret, policy })
    }

    /// The run bundle (JSON) in the bundle Secret.
    pub fn bundle_json(&self) -> Option<String> {
        self.secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(pod::BUNDLE_FILE))
            .cloned()
    }

    /// The claimed pool member that runs this launch, if any.
    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// The launch on a Pod of its own after all (the member's claim did not take).
    pub fn without_member(&mut self) {
        self.member = None;
    }

    /// Finishes the launch of the lock's winner: what staging found already there is
    /// overwritten with this launch's content (server-side apply, one field manager), then the
    /// Pod is created (none for a claimed pool member: it is running already, and is handed
    /// its bundle when it asks).
    pub async fn start(&self, client: &Client, staging: &Staging) -> Result<Launched, LaunchError> {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let secret = async {
            if staging.secret != Staged::Existed {
                return Ok(());
            }
            self.secrets(client)
                .patch(&self.name, &pp, &Patch::Apply(&self.secret))
                .await
                .map(drop)
                .map_err(self.apply_error("bundle Secret"))
        };
        let policy = async {
            if staging.policy != Staged::Existed {
                return Ok(());
            }
            match &self.policy {
                EgressPolicy::Kubernetes(np) => self
                    .network_policies(client)
                    .patch(&self.name, &pp, &Patch::Apply(np))
                    .await
                    .map(drop)
                    .map_err(self.apply_error("NetworkPolicy")),
                EgressPolicy::Cilium(cnp) => self
                    .cilium_policies(client)
                    .patch(&self.name, &pp, &Patch::Apply(cnp))
                    .await
                    .map(drop)
                    .map_err(self.apply_error("CiliumNetworkPolicy")),
            }
        };
        tokio::try_join!(secret, policy)?;
        if let Some(member) = &self.member {
            return Ok(Launched {
                handle: format!("pod/{member}"),
            });
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        pods.create(&post_params(), &self.pod)
            .await
            .map_err(self.apply_error("Pod"))?;
        Ok(Launched {
            handle: format!("pod/{}", self.name),
        })
    }

    /// Takes back what staging created, for a launch that lost the lock: each object is
    /// deleted only if it is still as this launch created it (its resourceVersion), so the
    /// winner's overwrite is never deleted. Best effort: the owner reference collects what
    /// is left with the Execution.
    pub async fn withdraw(&self, client: &Client, staging: &Staging) {
        let dp = |staged: &Staged| match staged {
            Staged::Created(rv) => Some(DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    resource_version: Some(rv.clone()),
                    uid: None,
                }),
                ..DeleteParams::default()
            }),
            Staged::Existed => None,
        };
        let secret = async {
            match dp(&staging.secret) {
                Some(dp) => self.secrets(client).delete(&self.name, &dp).await.map(drop),
                None => Ok(()),
            }
        };
        let policy = async {
            let Some(dp) = dp(&staging.policy) else {
                return Ok(());
            };
            match &self.policy {
                EgressPolicy::Kubernetes(_) => self
                    .network_policies(client)
                    .delete(&self.name, &dp)
                    .await
                    .map(drop),
                EgressPolicy::Cilium(_) => self
                    .cilium_policies(client)
                    .delete(&self.name, &dp)
                    .await
                    .map(drop),
            }
        };
        let (secret, policy) = tokio::join!(secret, policy);
        for result in [secret, policy] {
            match result {
                Ok(()) => {}
                Err(e) if is_not_found(&e) || is_conflict(&e) => {}
                Err(e) => {
                    tracing::warn!(object = %format!("{}/{}", self.namespace, self.name), error = %e, "withdrawing a launch that lost the lock");
                }
            }
        }
    }
}

/// Creates made by the launcher, under its field manager.
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// Creates `object`: [`Staged::Created`] at its resourceVersion, or [`Staged::Existed`] when
/// one of that name is there.
async fn create<K>(api: &Api<K>, object: &K) -> Result<Staged, kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&post_params(), object).await {
        Ok(created) => Ok(Staged::Created(
            created.resource_version().unwrap_or_default(),
        )),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(Staged::Existed),
        Err(e) => Err(e),
    }
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
pub(crate) async fn resolve_targets(
    targets: &[Target],
) -> Result<Vec<(Target, Vec<IpAddr>)>, LaunchError> {
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

/// The sandbox Pod of a pod-launched `exec`: the one its status names (a claimed pool member,
/// or its own), else [`run_object_name`].
pub(crate) fn sandbox_pod_name(exec: &Execution) -> String {
    exec.status
        .as_ref()
        .and_then(|s| s.pod_name.as_deref())
        .and_then(|p| p.strip_prefix("pod/"))
        .map_or_else(|| run_object_name(&exec.name_any()), str::to_owned)
}

/// The launcher that started `exec`, from its launch record.
fn launched_by(exec: &Execution) -> Option<LauncherKind> {
    Some(exec.status.as_ref()?.launch.as_ref()?.launcher)
}

/// What the sandbox Pod of a pod-launched `exec` shows, as the controller's watch of sandbox
/// Pods has it (`pods`: no API request; a change of the Pod wakes the Execution again once
/// the store has it); [`Sandbox::Unobserved`] for a process runner or without a store.
pub(crate) fn observe(pods: Option<&Store<Pod>>, exec: &Execution) -> Sandbox {
    let Some(pods) = pods.filter(|_| launched_by(exec) == Some(LauncherKind::Pod)) else {
        return Sandbox::Unobserved;
    };
    let key = ObjectRef::new(&sandbox_pod_name(exec)).within(&exec.namespace().unwrap_or_default());
    match pods.get(&key) {
        Some(pod) => pod::observe(&pod),
        // Not seen yet (just created) or already gone: a result may still come, and the
        // deadline applies either way.
        None => Sandbox::Alive,
    }
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
        pods.delete(&sandbox_pod_name(exec), &dp).await.map(|_| ()),
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
