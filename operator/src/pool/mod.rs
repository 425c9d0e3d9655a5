//! SandboxPools: booted, idle sandbox runners (standby members) that Executions claim instead
//! of waiting for a fresh confidential Pod to boot.
//!
//! - The **pool controller** (leader only, pod launcher) keeps `spec.replicas` idle members per
//!   SandboxPool: each a hardened sandbox Pod ([`crate::launcher::pod::sandbox_pod`]) running
//!   `oauth3-sandbox-runner run --standby`, with no bundle, no secrets and no Permit, plus a
//!   Secret (owned by the Pod) holding only its standby file (where to ask, its token). The
//!   pool's standby NetworkPolicy lets members reach the cluster DNS and the operator's
//!   callback, nothing else. Status: ready, starting and claimed counts, claims and misses,
//!   the last claim latency, a `Ready` condition; Events when the pool runs dry or fills up,
//!   and when a member fails.
//! - A **claim** ([`claim`], from the Execution launch): the member Pod is relabelled for the
//!   Execution (its uid label is what the Execution's egress policy selects), owned by it, and
//!   given the run's `activeDeadlineSeconds`, in one write guarded by the resourceVersion the
//!   pick saw, so no member is ever claimed twice. The Execution's bundle Secret and egress
//!   policy are created, the launch lock names the member, and only then is the bundle offered
//!   ([`Pools::offer`]) for the member to take when it asks ([`standby`]).
//! - A claimed member never goes back: it runs one Execution and its Pod is deleted with the
//!   Execution's other sandbox objects; the pool starts a new member at once.

pub mod standby;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use oauth3_crds::constants::{
    ANNOTATION_EXECUTION_NAME, ANNOTATION_STANDBY_CHECKED_IN, ANNOTATION_STANDBY_TOKEN,
    FIELD_MANAGER, LABEL_EXECUTION, LABEL_PERMIT, LABEL_POOL, LABEL_POOL_MEMBER, MANAGED_BY,
    POOL_MEMBER_CLAIMED, POOL_MEMBER_IDLE, pool_member_prefix, pool_policy_name,
};
use oauth3_crds::{Execution, SandboxPool, SandboxPoolStatus};
use oauth3_protocol::callback::token_digest;
use oauth3_protocol::runner_args::standby_args;
use oauth3_protocol::standby::{STANDBY_FILE, Standby, standby_url};
use serde_json::json;
use zeroize::Zeroizing;

use crate::Context;
use crate::conditions::{NewCondition, set_condition};
use crate::launcher::pod::{
    BUNDLE_DIR, DesiredError, PodLaunchConfig, SandboxPod, UPSTREAM_CA_FILE, base_egress,
    label_value, network_policy, sandbox_pod,
};
use crate::metrics::Metrics;
use crate::status_write::{is_conflict, is_not_found, publish};

/// How often a pool is looked at again without any change.
pub const RESYNC: Duration = Duration::from_secs(30);

/// How long a claimed member has to ask for its bundle: one that has not asked by then is
/// deleted and its Execution ends `Failed` (`SandboxFailed`), instead of waiting for its
/// deadline.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(15);

/// While a pool still has a ready member, a refill waits this long after the last claim, so
/// the claim's own writes (its launch lock, bundle Secret and policy) are not slowed by the
/// refill's; an empty pool is refilled at once.
pub const REFILL_AFTER_CLAIM: Duration = Duration::from_millis(100);

/// A pool's status is written at most this often: a burst of claims and refills becomes one
/// write (the status may lag the members by this much).
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// What the operator shares about pools between the pool controller, the Execution launch and
/// the standby endpoint.
pub struct Pools {
    members: RwLock<Option<Store<Pod>>>,
    pools: RwLock<Option<Store<SandboxPool>>>,
    /// `namespace/member` picked by a launch of this operator: never picked again.
    reserved: Mutex<HashSet<String>>,
    /// Bundles offered to claimed members, by `namespace/member`, until they take them.
    offers: Mutex<HashMap<String, Offer>>,
    offered: tokio::sync::Notify,
    counters: Mutex<HashMap<String, Counters>>,
    metrics: Arc<Metrics>,
}

/// A bundle offered to a claimed member.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The Execution it runs.
    pub execution: String,
    /// When it was offered.
    pub offered_at: std::time::Instant,
    /// The run bundle (JSON).
    pub bundle: Arc<String>,
    /// The SandboxPool.
    pub pool: String,
    /// When the Execution was created (for the claim latency).
    pub created: Option<Timestamp>,
}

/// What this operator counted of one pool since it started leading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Launches an idle member took.
    pub claims: i64,
    /// Launches that found no idle member.
    pub misses: i64,
    /// Creation → bundle handed over, of the last claim.
    pub last_latency_ms: Option<i64>,
    /// When this operator last claimed a member of the pool.
    pub last_claim: Option<std::time::Instant>,
}

/// An idle member picked for a launch (reserved in this operator until it is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its SandboxPool.
    pub pool: String,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The resourceVersion the pick saw: the claim is guarded by it.
    pub resource_version: String,
    /// When its Pod started (for `activeDeadlineSeconds`).
    pub started: Option<Timestamp>,
}

/// What a launch finds in its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// No SandboxPool there: the launch gets a Pod of its own, as always.
    NoPool,
    /// Pools, but no idle ready member: a fresh Pod, and the Execution says so.
    Miss {
        /// The pool (the first by name) that had nothing.
        pool: String,
    },
    /// This member.
    Member(Member),
}

impl Pools {
    /// Nothing known yet (the pool controller fills the stores when it starts).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            members: RwLock::new(None),
            pools: RwLock::new(None),
            reserved: Mutex::new(HashSet::new()),
            offers: Mutex::new(HashMap::new()),
            offered: tokio::sync::Notify::new(),
            counters: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn set_stores(&self, pools: Store<SandboxPool>, members: Store<Pod>) {
        *write(&self.pools) = Some(pools);
        *write(&self.members) = Some(members);
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        guard(&self.reserved)
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counters>> {
        guard(&self.counters)
    }

    /// Picks (and reserves) an idle, ready member of a pool in `namespace`; see [`pick`].
    pub fn pick(&self, namespace: &str) -> Pick {
        let pools: Vec<String> = match &*read(&self.pools) {
            Some(store) => {
                let mut names: Vec<String> = store
                    .state()
                    .iter()
                    .filter(|p| p.namespace().as_deref() == Some(namespace))
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| p.name_any())
                    .collect();
                names.sort();
                names
            }
            None => return Pick::NoPool,
        };
        let members: Vec<Arc<Pod>> = match &*read(&self.members) {
            Some(store) => store.state(),
            None => Vec::new(),
        };
        let mut reserved = self.reserved();
        let picked = pick(namespace, &pools, &members, &reserved);
        if let Pick::Member(m) = &picked {
            reserved.insert(format!("{}/{}", m.namespace, m.name));
        }
        picked
    }

    /// Counts a launch of `namespace/pool`: a hit (claimed) or a miss (fresh Pod).
    pub fn count_launch(&self, namespace: &str, pool: &str, hit: bool) {
        let key = format!("{namespace}/{pool}");
        let mut counters = self.counters();
        let c = counters.entry(key.clone()).or_default();
        if hit {
            c.claims += 1;
            c.last_claim = Some(std::time::Instant::now());
        } else {
            c.misses += 1;
        }
        self.metrics.count_pool_launch(&key, hit);
    }

    /// What this operator counted of `namespace/pool`.
    pub fn counted(&self, namespace: &str, pool: &str) -> Counters {
        self.counters()
            .get(&format!("{namespace}/{pool}"))
            .cloned()
            .unwrap_or_default()
    }

    /// Offers `bundle` to the claimed member `namespace/member` (it takes it when it asks).
    pub fn offer(&self, namespace: &str, member: &str, offer: Offer) {
        guard(&self.offers).insert(format!("{namespace}/{member}"), offer);
        self.offered.notify_waiters();
    }

    /// Takes the bundle offered to `namespace/member`, if any, and records the claim latency.
    pub fn take(&self, namespace: &str, member: &str, now: Timestamp) -> Option<Arc<String>> {
        let offer = guard(&self.offers).remove(&format!("{namespace}/{member}"))?;
        if let Some(created) = offer.created {
            let latency = now.duration_since(created).as_secs_f64().max(0.0);
            let key = format!("{namespace}/{}", offer.pool);
            self.counters()
                .entry(key.clone())
                .or_default()
                .last_latency_ms = Some((latency * 1000.0).round() as i64);
            self.metrics
                .observe_pool_claim_latency(&key, Duration::from_secs_f64(latency));
        }
        Some(offer.bundle)
    }

    /// Forgets what was offered to or reserved of `namespace/member` (it is gone, or its
    /// launch lost).
    pub fn forget(&self, namespace: &str, member: &str) {
        let key = format!("{namespace}/{member}");
        guard(&self.offers).remove(&key);
        self.reserved().remove(&key);
    }

    /// The offers older than `older` that no member took, as `(namespace, member, offer)`.
    fn stale(&self, older: Duration) -> Vec<(String, String, Offer)> {
        guard(&self.offers)
            .iter()
            .filter(|(_, o)| o.offered_at.elapsed() >= older)
            .filter_map(|(key, o)| {
                let (ns, member) = key.split_once('/')?;
                Some((ns.to_owned(), member.to_owned(), o.clone()))
            })
            .collect()
    }

    /// Resolves at the next [`Pools::offer`] (create it before looking, so none is missed).
    pub fn offered(&self) -> tokio::sync::futures::Notified<'_> {
        self.offered.notified()
    }

    /// Drops reservations of `namespace`'s members that no longer exist (`alive`).
    fn prune(&self, namespace: &str, alive: &HashSet<String>) {
        let prefix = format!("{namespace}/");
        self.reserved()
            .retain(|key| match key.strip_prefix(&prefix) {
                Some(name) => alive.contains(name),
                None => true,
            });
    }
}

/// `mutex` locked; a lock a panicking holder poisoned is still used (the data stays valid).
fn guard<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `lock` read, as [`guard`] does.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// `lock` written, as [`guard`] does.
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Whether `pod` is a pool member that may be claimed now: idle, not being deleted, running,
/// ready, and its runner checked in (asked for a run with its token, so a claim's bundle goes
/// to a runner that is there to take it) (pure).
pub fn claimable(pod: &Pod) -> bool {
    let idle = pod.labels().get(LABEL_POOL_MEMBER).map(String::as_str) == Some(POOL_MEMBER_IDLE)
        && !pod.labels().contains_key(LABEL_EXECUTION);
    idle && pod.metadata.deletion_timestamp.is_none() && is_ready(pod) && checked_in(pod)
}

/// Whether the runner of member `pod` has asked for a run with its token (pure).
pub fn checked_in(pod: &Pod) -> bool {
    pod.annotations()
        .contains_key(ANNOTATION_STANDBY_CHECKED_IN)
}

/// Whether `pod` runs and is ready (pure).
fn is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The member a launch in `namespace` takes: of the first pool by name (`pools`, sorted) that
/// has one, its oldest claimable member not in `reserved` (pure).
pub fn pick(
    namespace: &str,
    pools: &[String],
    members: &[Arc<Pod>],
    reserved: &HashSet<String>,
) -> Pick {
    let Some(first) = pools.first() else {
        return Pick::NoPool;
    };
    for pool in pools {
        let mut candidates: Vec<&Arc<Pod>> = members
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .filter(|p| p.labels().get(LABEL_POOL) == Some(pool))
            .filter(|p| claimable(p))
            .filter(|p| !reserved.contains(&format!("{namespace}/{}", p.name_any())))
            .collect();
        candidates.sort_by_key(|p| (p.creation_timestamp().map(|t| t.0), p.name_any()));
        if let Some(pod) = candidates.first() {
            return Pick::Member(Member {
                pool: pool.clone(),
                namespace: namespace.to_owned(),
                name: pod.name_any(),
                resource_version: pod.resource_version().unwrap_or_default(),
                started: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .or(pod.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0),
            });
        }
    }
    Pick::Miss {
        pool: first.clone(),
    }
}

/// Why a claim did not take the member.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The member changed since it was picked (another claim, or it is ending).
    #[error("pool member {0} changed since it was picked")]
    Lost(String),
    /// The API server failed.
    #[error("claiming pool member {name}: {source}")]
    Api {
        /// The member.
        name: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

impl ClaimError {
    /// Why, in a few words for a status message: the member, and what the API server said
    /// (its message only, not the whole response).
    pub fn reason(&self) -> String {
        match self {
            Self::Lost(name) => format!("{name} changed since it was picked"),
            Self::Api {
                name,
                source: kube::Error::Api(response),
            } => format!("claiming {name}: {}", response.message),
            Self::Api { name, source } => format!("claiming {name}: {source}"),
        }
    }
}

/// The claim of `member` for `exec` (pure): a merge patch guarded by the resourceVersion the
/// pick saw that relabels the member for the Execution (its egress policy selects the uid
/// label), makes the Execution its owner (so the member goes with it, and a deleted pool no
/// longer collects it mid-run), and sets `activeDeadlineSeconds` so the node ends it at the
/// run's deadline (counted from the Pod's start).
pub fn claim_patch(
    member: &Member,
    exec: &Execution,
    deadline_after_start: i64,
) -> Result<serde_json::Value, DesiredError> {
    let uid = exec
        .metadata
        .uid
        .clone()
        .ok_or(DesiredError::MissingMetadata("uid"))?;
    let owner = exec
        .controller_owner_ref(&())
        .ok_or(DesiredError::MissingMetadata("name or uid"))?;
    Ok(json!({
        "metadata": {
            "resourceVersion": member.resource_version,
            "labels": {
                LABEL_POOL_MEMBER: POOL_MEMBER_CLAIMED,
                LABEL_EXECUTION: uid,
                LABEL_PERMIT: label_value(&exec.spec.permit_ref),
            },
            "annotations": {ANNOTATION_EXECUTION_NAME: exec.name_any()},
            "ownerReferences": [owner],
        },
        "spec": {"activeDeadlineSeconds": deadline_after_start.max(1)},
    }))
}

/// Claims `member` for `exec`, whose run may last `run_for` (its timeout plus the grace).
///
/// # Errors
/// [`ClaimError::Lost`] when the member changed since the pick (nothing was written);
/// [`ClaimError::Api`] otherwise.
pub async fn claim(
    ctx: &Context,
    member: &Member,
    exec: &Execution,
    run_for: Duration,
    now: Timestamp,
) -> Result<(), ClaimError> {
    let since_start = member
        .started
        .map(|s| now.duration_since(s).as_secs().max(0))
        .unwrap_or(0);
    let deadline = since_start + i64::try_from(run_for.as_secs()).unwrap_or(i64::MAX / 2) + 1;
    let patch = claim_patch(member, exec, deadline).map_err(|e| ClaimError::Api {
        name: member.name.clone(),
        source: kube::Error::Service(e.to_string().into()),
    })?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &member.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match pods
        .patch(&member.name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) || is_not_found(&e) => Err(ClaimError::Lost(member.name.clone())),
        Err(source) => Err(ClaimError::Api {
            name: member.name.clone(),
            source,
        }),
    }
}

/// The bundle JSON `bundle` with the sealed envelopes `envelopes` (ciphertext) of a member's
/// run: they travel only over the standby endpoint, never in a Secret.
pub fn with_envelopes(
    bundle: &str,
    envelopes: Vec<oauth3_protocol::SealedSecretRef>,
) -> Option<String> {
    let mut parsed: oauth3_protocol::Bundle = serde_json::from_str(bundle).ok()?;
    parsed.sealed_secrets = envelopes;
    serde_json::to_string(&parsed).ok()
}

/// Deletes member `namespace/name` (a claim whose launch did not go ahead: it never runs
/// anything). Best effort.
pub async fn retire(ctx: &Context, namespace: &str, name: &str) {
    ctx.pools.forget(namespace, name);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    if let Err(e) = pods.delete(name, &DeleteParams::default()).await
        && !is_not_found(&e)
    {
        tracing::warn!(member = %format!("{namespace}/{name}"), error = %e, "retiring a pool member");
    }
}

/// How a pool's members stand (pure, from the member Pods of one pool).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Idle, running, ready and checked in: claimable.
    pub ready: Vec<String>,
    /// Idle, not ready or not checked in yet (newest last).
    pub starting: Vec<String>,
    /// Claimed (running an Execution).
    pub claimed: Vec<String>,
    /// Idle members that ended (failed, or exited): deleted and replaced, with why.
    pub ended: Vec<(String, String)>,
    /// Idle members that did not check in within the check-in time of their creation: deleted
    /// and replaced, with what they were doing.
    pub silent: Vec<(String, String)>,
    /// The soonest a starting member's check-in time runs out (when to look again).
    pub next_deadline: Option<Timestamp>,
}

/// The census of `pool`'s members among `pods` at `now`, where a member has `check_in` from
/// its creation to check in (pure).
pub fn census(
    namespace: &str,
    pool: &str,
    pods: &[Arc<Pod>],
    now: Timestamp,
    check_in: Duration,
) -> Census {
    let mut mine: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .filter(|p| p.labels().get(LABEL_POOL).map(String::as_str) == Some(pool))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    mine.sort_by_key(|p| (p.creation_timestamp().map(|t| t.0), p.name_any()));
    let mut out = Census::default();
    for pod in mine {
        let name = pod.name_any();
        let claimed = pod.labels().get(LABEL_POOL_MEMBER).map(String::as_str)
            == Some(POOL_MEMBER_CLAIMED)
            || pod.labels().contains_key(LABEL_EXECUTION);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if claimed {
            out.claimed.push(name);
        } else if matches!(phase, Some("Failed" | "Succeeded")) {
            let why = crate::launcher::pod::pod_outcome(pod)
                .map(|(_, _, m)| m)
                .or_else(|| pod.status.as_ref().and_then(|s| s.message.clone()))
                .unwrap_or_else(|| format!("it ended ({})", phase.unwrap_or_default()));
            out.ended.push((name, why));
        } else if is_ready(pod) && checked_in(pod) {
            out.ready.push(name);
        } else {
            let deadline = pod
                .creation_timestamp()
                .and_then(|t| t.0.checked_add(check_in).ok());
            match deadline {
                Some(d) if d <= now => {
                    let doing = if is_ready(pod) {
                        "it runs and is ready but its runner never asked for a run: look at its \
                         log, and whether the callback URL and CA the operator gives members \
                         are reachable from the pool's namespace"
                            .to_owned()
                    } else {
                        format!(
                            "it is still {}",
                            match phase {
                                Some("Running") => "running but not ready",
                                Some("Pending") | None if not_scheduled(pod) =>
                                    "unscheduled (Pending)",
                                _ => "booting (Pending)",
                            }
                        )
                    };
                    out.silent.push((name, doing));
                }
                Some(d) => {
                    out.next_deadline = Some(out.next_deadline.map_or(d, |n: Timestamp| n.min(d)));
                    out.starting.push(name);
                }
                None => out.starting.push(name),
            }
        }
    }
    out
}

/// Whether `pod` has no node yet (pure).
fn not_scheduled(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_none()
}

/// What a pool reconcile does to its members (pure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Members to start now.
    pub create: usize,
    /// Idle members to delete (over `replicas`, or ended).
    pub delete: Vec<String>,
}

/// The plan for a pool with `replicas` and `max_surge` whose members stand as `census`:
/// ended and silent members go; idle members over `replicas` go (starting ones first, then the
/// newest); missing ones are started, at most `max_surge` starting at once (pure).
pub fn plan(replicas: i32, max_surge: i32, census: &Census) -> Plan {
    let replicas = usize::try_from(replicas.max(0)).unwrap_or(0);
    let max_surge = usize::try_from(max_surge.max(1)).unwrap_or(1);
    let mut delete: Vec<String> = census
        .ended
        .iter()
        .chain(&census.silent)
        .map(|(n, _)| n.clone())
        .collect();
    let idle = census.ready.len() + census.starting.len();
    let mut create = 0;
    if idle > replicas {
        let mut excess = idle - replicas;
        for name in census
            .starting
            .iter()
            .rev()
            .chain(census.ready.iter().rev())
        {
            if excess == 0 {
                break;
            }
            delete.push(name.clone());
            excess -= 1;
        }
    } else {
        let missing = replicas - idle;
        create = missing.min(max_surge.saturating_sub(census.starting.len()));
    }
    Plan { create, delete }
}

/// Settings of the pool controller: the pod launcher's, and where members ask for their runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The pod launcher's settings (a pool's spec overrides runtime class, image, resources).
    pub pod: PodLaunchConfig,
    /// The callback's base URL.
    pub callback_base_url: String,
    /// The callback's CA (PEM), when it is not in the web PKI.
    pub callback_ca_pem: Option<String>,
    /// How long a member has, from its creation, to check in (`--pool-check-in`).
    pub check_in_within: Duration,
}

/// The namespace of a stored `pool` and the owner reference its objects carry.
fn pool_meta(
    pool: &SandboxPool,
) -> Result<
    (
        String,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ),
    DesiredError,
> {
    let namespace = pool
        .namespace()
        .ok_or(DesiredError::MissingMetadata("namespace"))?;
    let owner = pool
        .controller_owner_ref(&())
        .ok_or(DesiredError::MissingMetadata("name or uid"))?;
    Ok((namespace, owner))
}

/// The member Pod `name` of `pool` whose token hashes to `token_digest` (pure).
///
/// # Errors
/// [`DesiredError`] for a pool that was never stored.
pub fn desired_member(
    pool: &SandboxPool,
    config: &PoolConfig,
    name: &str,
    token_digest: &str,
) -> Result<Pod, DesiredError> {
    let (namespace, owner) = pool_meta(pool)?;
    let mut pod = config.pod.clone();
    if let Some(class) = &pool.spec.runtime_class_name {
        pod.runtime_class_name = class.clone();
    }
    if let Some(image) = &pool.spec.image {
        pod.image = image.clone();
    }
    if let Some(resources) = &pool.spec.resources {
        if let Some(cpu) = &resources.cpu {
            pod.cpu = cpu.clone();
        }
        if let Some(memory) = &resources.memory {
            pod.memory = memory.clone();
        }
    }
    let args = standby_args(
        &format!("{BUNDLE_DIR}/{STANDBY_FILE}"),
        &pod.key_provider,
        &pod.quote_provider,
    );
    sandbox_pod(
        SandboxPod {
            name: name.to_owned(),
            namespace,
            labels: json!({
                "app.kubernetes.io/name": "oauth3-sandbox",
                "app.kubernetes.io/managed-by": MANAGED_BY,
                LABEL_POOL: pool.name_any(),
                LABEL_POOL_MEMBER: POOL_MEMBER_IDLE,
            }),
            annotations: json!({ANNOTATION_STANDBY_TOKEN: token_digest}),
            owner: serde_json::to_value(owner).map_err(|source| DesiredError::Build {
                what: "owner reference",
                source,
            })?,
            args,
            secrets: &[],
            bundle_file: STANDBY_FILE,
            bundle_files: &[],
            active_deadline_seconds: None,
            termination_grace_seconds: 5,
            serves_port: None,
        },
        &pod,
    )
}

/// The Secret of member `pod` (owned by it, so it goes with it): its standby file, with
/// `token`, and the sandbox CA when there is one (pure).
pub fn desired_member_secret(
    pod: &Pod,
    config: &PoolConfig,
    token: &str,
) -> Result<Secret, DesiredError> {
    let namespace = pod
        .namespace()
        .ok_or(DesiredError::MissingMetadata("namespace"))?;
    let name = pod.name_any();
    let owner = pod
        .controller_owner_ref(&())
        .ok_or(DesiredError::MissingMetadata("name or uid"))?;
    let standby = Standby {
        url: standby_url(&config.callback_base_url, &namespace, &name),
        token: Zeroizing::new(token.to_owned()),
        ca_pem: config.callback_ca_pem.clone(),
        deadline_unix_ms: None,
    };
    let file = serde_json::to_string(&standby).map_err(|source| DesiredError::Build {
        what: "standby file",
        source,
    })?;
    let mut data = BTreeMap::from([(STANDBY_FILE.to_owned(), file)]);
    if let Some(pem) = &config.pod.upstream_ca_pem {
        data.insert(UPSTREAM_CA_FILE.to_owned(), pem.clone());
    }
    Ok(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: pod.metadata.labels.clone().map(|mut l| {
                l.remove(LABEL_POOL_MEMBER);
                l
            }),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some(data),
        ..Default::default()
    })
}

/// The standby egress policy of `pool`: its members (by the pool label) get no ingress and
/// reach only the cluster DNS and the operator's callback (pure). A claimed member keeps it
/// and also gets its Execution's policy (egress rules of several policies add up).
pub fn desired_pool_policy(
    pool: &SandboxPool,
    config: &PodLaunchConfig,
) -> Result<NetworkPolicy, DesiredError> {
    let (namespace, owner) = pool_meta(pool)?;
    network_policy(
        json!({
            "name": pool_policy_name(&pool.name_any()),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGED_BY,
                LABEL_POOL: pool.name_any(),
            },
            "ownerReferences": [owner],
        }),
        json!({LABEL_POOL: pool.name_any()}),
        Vec::new(),
        base_egress(config),
    )
}

/// A fresh member name of `pool`: its prefix and five random lower-case letters and digits.
fn member_name(pool: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rand::Rng::gen_range(&mut rand::thread_rng(), 0..ALPHABET.len())] as char)
        .collect();
    format!("{}{suffix}", pool_member_prefix(pool))
}

/// The pool controller's context.
pub struct PoolContext {
    /// The shared operator context (its [`Pools`]).
    pub ctx: Arc<Context>,
    /// Settings.
    pub config: PoolConfig,
    /// Pools whose standby policy this operator applied, with the generation.
    policies: Mutex<HashMap<String, i64>>,
    /// Whether each pool had `minReady` ready members at its last reconcile.
    was_ready: Mutex<HashMap<String, bool>>,
    /// When each pool's status was last written.
    written: Mutex<HashMap<String, std::time::Instant>>,
}

impl PoolContext {
    /// A context over `ctx` with `config`.
    pub fn new(ctx: Arc<Context>, config: PoolConfig) -> Self {
        Self {
            ctx,
            config,
            policies: Mutex::new(HashMap::new()),
            was_ready: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }
    }
}

/// Why a pool reconcile failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A Kubernetes API call failed.
    #[error("{step} for SandboxPool {key}: {source}")]
    Api {
        /// What was being done.
        step: &'static str,
        /// namespace/name.
        key: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// A desired object could not be built.
    #[error("SandboxPool {key}: {source}")]
    Desired {
        /// namespace/name.
        key: String,
        /// Why.
        #[source]
        source: DesiredError,
    },
}

/// Reconciles one SandboxPool: its standby policy, its members (see [`plan`]) and its status.
pub async fn reconcile(
    pool: Arc<SandboxPool>,
    pctx: Arc<PoolContext>,
) -> Result<Action, PoolError> {
    let ctx = &pctx.ctx;
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let key = format!("{namespace}/{name}");
    let api_error = |step: &'static str| {
        let key = key.clone();
        move |source| PoolError::Api { step, key, source }
    };
    let desired_error = |source| PoolError::Desired {
        key: key.clone(),
        source,
    };
    if pool.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // The standby policy first: no member exists without it.
    let generation = pool.metadata.generation.unwrap_or_default();
    let applied = guard(&pctx.policies).get(&key).copied();
    if applied != Some(generation) {
        let policy = desired_pool_policy(&pool, &pctx.config.pod).map_err(desired_error)?;
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
        policies
            .patch(
                &pool_policy_name(&name),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&policy),
            )
            .await
            .map_err(api_error("applying the standby NetworkPolicy"))?;
        guard(&pctx.policies).insert(key.clone(), generation);
    }
    let members: Vec<Arc<Pod>> = read(&ctx.pools.members)
        .as_ref()
        .map(Store::state)
        .unwrap_or_default();
    let alive: HashSet<String> = members
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(|p| p.name_any())
        .collect();
    ctx.pools.prune(&namespace, &alive);
    let census = census(
        &namespace,
        &name,
        &members,
        ctx.now(),
        pctx.config.check_in_within,
    );
    let plan = plan(pool.spec.replicas, pool.spec.effective_max_surge(), &census);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for (member, why) in &census.ended {
        publish(
            &ctx.recorder,
            pool.as_ref(),
            EventType::Warning,
            "MemberFailed",
            format!("pool member pod/{member} ended before any run ({why}); it is replaced"),
        )
        .await;
    }
    for (member, doing) in &census.silent {
        publish(
            &ctx.recorder,
            pool.as_ref(),
            EventType::Warning,
            "MemberSilent",
            format!(
                "pool member pod/{member} did not check in (ask for a run) within {}s of its \
                 creation and is replaced: {doing}",
                pctx.config.check_in_within.as_secs()
            ),
        )
        .await;
    }
    for member in &plan.delete {
        match pods.delete(member, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(api_error("deleting a pool member")(e)),
        }
    }
    let counted = ctx.pools.counted(&namespace, &name);
    let since_claim = counted.last_claim.map(|t| t.elapsed());
    if let Some(since) = since_claim.filter(|s| *s < REFILL_AFTER_CLAIM)
        && plan.create > 0
        && !census.ready.is_empty()
    {
        return Ok(Action::requeue(REFILL_AFTER_CLAIM - since));
    }
    let mut started = Vec::new();
    for _ in 0..plan.create {
        started.push(start_member(&pool, &pctx).await?);
    }
    let starting = census.starting.len() + started.len();
    let status = pool_status(&pool, &census, starting, &counted, ctx.now());
    let ready_now =
        census.ready.len() >= usize::try_from(pool.spec.effective_min_ready()).unwrap_or(0);
    let was = guard(&pctx.was_ready).insert(key.clone(), ready_now);
    if was.is_some_and(|was| was != ready_now) {
        let (type_, reason, note) = if ready_now {
            (
                EventType::Normal,
                "PoolReady",
                format!("{} idle members are ready", census.ready.len()),
            )
        } else {
            (
                EventType::Warning,
                "PoolDepleted",
                format!(
                    "{} idle members are ready, fewer than minReady {}: Executions start on fresh Pods until members boot",
                    census.ready.len(),
                    pool.spec.effective_min_ready()
                ),
            )
        };
        publish(&ctx.recorder, pool.as_ref(), type_, reason, note).await;
    }
    let metrics = &ctx.pools.metrics;
    metrics.set_pool_members(&key, "ready", census.ready.len() as i64);
    metrics.set_pool_members(&key, "starting", starting as i64);
    metrics.set_pool_members(&key, "claimed", census.claimed.len() as i64);
    if pool.status.as_ref() != Some(&status) {
        let since = guard(&pctx.written)
            .get(&key)
            .map(std::time::Instant::elapsed);
        if let Some(since) = since.filter(|s| *s < STATUS_EVERY) {
            return Ok(Action::requeue(STATUS_EVERY - since));
        }
        guard(&pctx.written).insert(key.clone(), std::time::Instant::now());
        let api: Api<SandboxPool> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({"status": status});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
            Err(e) => return Err(api_error("writing the status")(e)),
        }
    }
    // Look again when the next starting member's check-in time runs out.
    let next = census
        .next_deadline
        .map(|d| {
            let left = d.duration_since(ctx.now()).as_secs_f64().max(0.0);
            Duration::from_secs_f64(left) + Duration::from_millis(200)
        })
        .map_or(RESYNC, |left| left.min(RESYNC));
    Ok(Action::requeue(next))
}

/// Starts one member of `pool`: its Pod, then its Secret (owned by the Pod; the kubelet waits
/// for it before the runner starts). Returns its name.
async fn start_member(pool: &SandboxPool, pctx: &PoolContext) -> Result<String, PoolError> {
    let ctx = &pctx.ctx;
    let namespace = pool.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", pool.name_any());
    let token = Zeroizing::new(hex::encode(rand::random::<[u8; 32]>()));
    let name = member_name(&pool.name_any());
    let desired =
        desired_member(pool, &pctx.config, &name, &token_digest(&token)).map_err(|source| {
            PoolError::Desired {
                key: key.clone(),
                source,
            }
        })?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod = pods
        .create(&params, &desired)
        .await
        .map_err(|source| PoolError::Api {
            step: "creating a pool member",
            key: key.clone(),
            source,
        })?;
    let secret =
        desired_member_secret(&pod, &pctx.config, &token).map_err(|source| PoolError::Desired {
            key: key.clone(),
            source,
        })?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(source) = secrets.create(&params, &secret).await {
        // A member without its standby file never runs: take it back.
        let _ = pods.delete(&name, &DeleteParams::default()).await;
        return Err(PoolError::Api {
            step: "creating a pool member's Secret",
            key,
            source,
        });
    }
    tracing::debug!(pool = %key, member = %name, "pool member started");
    Ok(name)
}

/// The status of `pool` (pure).
pub fn pool_status(
    pool: &SandboxPool,
    census: &Census,
    starting: usize,
    counted: &Counters,
    now: Timestamp,
) -> SandboxPoolStatus {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let min_ready = pool.spec.effective_min_ready();
    let ready = count(census.ready.len());
    let mut conditions = pool
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let (holds, reason, message) = if ready >= min_ready {
        (
            true,
            "MembersReady",
            format!("{ready} idle members are ready (minReady {min_ready})"),
        )
    } else {
        (
            false,
            "MembersStarting",
            format!(
                "{ready} of minReady {min_ready} idle members are ready, {starting} starting; Executions start on fresh Pods meanwhile"
            ),
        )
    };
    set_condition(
        &mut conditions,
        NewCondition::new("Ready", holds, reason, message),
        pool.metadata.generation,
        Time(now),
    );
    SandboxPoolStatus {
        ready,
        starting: count(starting),
        claimed: count(census.claimed.len()),
        claims: (counted.claims > 0).then_some(counted.claims),
        misses: (counted.misses > 0).then_some(counted.misses),
        last_claim_latency_ms: counted.last_latency_ms,
        observed_generation: pool.metadata.generation,
        conditions,
    }
}

/// Runs the pool controller over `api` (SandboxPools) and the member Pods in `pods` until
/// `shutdown`; its stores are what launches pick members from.
pub async fn run_pool_controller(
    api: Api<SandboxPool>,
    pods: Api<Pod>,
    pctx: Arc<PoolContext>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (store, stream) = crate::cache::lean_watch(api);
    let (members, trigger) =
        crate::cache::lean_watch_with(pods, watcher::Config::default().labels(LABEL_POOL));
    pctx.ctx.pools.set_stores(store.clone(), members);
    let sweeper = tokio::spawn(sweep_unasked(pctx.ctx.clone()));
    // A member's change wakes its pool (by the pool label: a claimed member is owned by its
    // Execution, not by the pool).
    let mapped = trigger.filter_map(|pod| async move {
        let pod = pod.ok()?;
        let pool = pod.labels().get(LABEL_POOL)?.clone();
        Some(ObjectRef::<SandboxPool>::new(&pool).within(&pod.namespace().unwrap_or_default()))
    });
    Controller::for_stream(stream, store)
        .reconcile_on(mapped)
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            |pool, error, pctx: Arc<PoolContext>| {
                let delay = pctx.ctx.failure_backoff(&format!(
                    "pool/{}/{}",
                    pool.namespace().unwrap_or_default(),
                    pool.name_any()
                ));
                tracing::warn!(error = %error, retry_in = ?delay, "pool reconcile failed");
                Action::requeue(delay)
            },
            pctx,
        )
        .for_each(|_| async {})
        .await;
    sweeper.abort();
}

/// Every 2 s: a claimed member that has not asked for the bundle offered to it within
/// [`CLAIM_TIMEOUT`] (neither here nor, as its annotation tells, at another replica) is deleted
/// and its Execution ends `Failed`, naming it; the pool replaces it.
async fn sweep_unasked(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (namespace, member, offer) in ctx.pools.stale(CLAIM_TIMEOUT) {
            if let Err(e) = end_unasked(&ctx, &namespace, &member, &offer).await {
                tracing::warn!(member = %format!("{namespace}/{member}"), error = %e, "ending the run of a member that never asked");
                continue;
            }
            ctx.pools.forget(&namespace, &member);
        }
    }
}

/// Ends the run offered to `namespace/member` if the member never took it.
async fn end_unasked(
    ctx: &Context,
    namespace: &str,
    member: &str,
    offer: &Offer,
) -> Result<(), crate::execution::ExecutionError> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let taken = match pods.get_opt(member).await {
        Ok(Some(pod)) => pod
            .annotations()
            .contains_key(oauth3_crds::constants::ANNOTATION_BUNDLE_TAKEN),
        Ok(None) => false,
        Err(_) => return Ok(()),
    };
    if taken {
        return Ok(());
    }
    let api: Api<Execution> = Api::namespaced(ctx.client.clone(), namespace);
    let Ok(Some(exec)) = api.get_opt(&offer.execution).await else {
        return Ok(());
    };
    let status = exec.status.clone().unwrap_or_default();
    if status.phase != Some(oauth3_crds::ExecutionPhase::Running)
        || status.pod_name.as_deref() != Some(format!("pod/{member}").as_str())
    {
        return Ok(());
    }
    let ending = crate::execution::status::Ending::failed(
        crate::execution::status::Reason::SandboxFailed,
        format!(
            "pool member pod/{member} never asked for its run within {}s; it was deleted and the pool replaces it",
            CLAIM_TIMEOUT.as_secs()
        ),
    );
    crate::execution::end(
        ctx,
        &api,
        &exec,
        &ending,
        "ending a run whose member never asked",
        None,
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn member(name: &str, pool: &str, state: &str, phase: &str, ready: bool, age: i64) -> Arc<Pod> {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some("team".into());
        pod.metadata.resource_version = Some(format!("rv-{name}"));
        pod.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_800_000_000 + age).expect("time"),
        ));
        pod.metadata.labels = Some(
            [
                (LABEL_POOL.to_owned(), pool.to_owned()),
                (LABEL_POOL_MEMBER.to_owned(), state.to_owned()),
            ]
            .into(),
        );
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        if ready {
            pod.metadata.annotations =
                Some([(ANNOTATION_STANDBY_CHECKED_IN.to_owned(), "t".to_owned())].into());
        }
        Arc::new(pod)
    }

    /// `pod` as it is before its runner asked for a run.
    fn not_checked_in(pod: Arc<Pod>) -> Arc<Pod> {
        let mut pod = (*pod).clone();
        pod.metadata.annotations = None;
        Arc::new(pod)
    }

    fn at(offset: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + offset).expect("time")
    }

    #[test]
    fn a_launch_takes_the_oldest_ready_idle_member_never_a_reserved_claimed_or_starting_one() {
        let pods = vec![
            member("p-new", "a", POOL_MEMBER_IDLE, "Running", true, 20),
            member("p-old", "a", POOL_MEMBER_IDLE, "Running", true, 10),
            member("p-claimed", "a", POOL_MEMBER_CLAIMED, "Running", true, 1),
            member("p-starting", "a", POOL_MEMBER_IDLE, "Pending", false, 2),
            not_checked_in(member(
                "p-silent",
                "a",
                POOL_MEMBER_IDLE,
                "Running",
                true,
                0,
            )),
        ];
        let pools = vec!["a".to_owned()];
        let none = HashSet::new();
        let Pick::Member(m) = pick("team", &pools, &pods, &none) else {
            panic!("a member")
        };
        assert_eq!(
            (m.name.as_str(), m.resource_version.as_str()),
            ("p-old", "rv-p-old")
        );
        let reserved: HashSet<String> = ["team/p-old".to_owned()].into();
        let Pick::Member(m) = pick("team", &pools, &pods, &reserved) else {
            panic!("a member")
        };
        assert_eq!(m.name, "p-new");
        let both: HashSet<String> = ["team/p-old".to_owned(), "team/p-new".to_owned()].into();
        assert_eq!(
            pick("team", &pools, &pods, &both),
            Pick::Miss { pool: "a".into() }
        );
        assert_eq!(pick("other", &[], &pods, &none), Pick::NoPool);
        // Another namespace's members are never picked.
        assert_eq!(
            pick("other", &pools, &pods, &none),
            Pick::Miss { pool: "a".into() }
        );
    }

    #[test]
    fn the_census_sorts_members_by_state_and_the_plan_refills_within_max_surge() {
        let pods = vec![
            member("r1", "a", POOL_MEMBER_IDLE, "Running", true, 1),
            member("s1", "a", POOL_MEMBER_IDLE, "Pending", false, 2),
            member("c1", "a", POOL_MEMBER_CLAIMED, "Running", true, 3),
            member("f1", "a", POOL_MEMBER_IDLE, "Failed", false, 4),
            member("x1", "b", POOL_MEMBER_IDLE, "Running", true, 5),
        ];
        let c = census("team", "a", &pods, at(10), Duration::from_secs(60));
        assert_eq!(c.ready, ["r1"]);
        assert_eq!(c.starting, ["s1"]);
        assert_eq!(c.claimed, ["c1"]);
        assert_eq!(
            c.ended.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["f1"]
        );
        // 5 wanted, 2 idle, one starting, surge 3: two more now, the failed one goes.
        assert_eq!(
            plan(5, 3, &c),
            Plan {
                create: 2,
                delete: vec!["f1".into()]
            }
        );
        // Surge already used up by the starting member.
        assert_eq!(plan(5, 1, &c).create, 0);
        // Shrinking: the starting member goes first, then the newest ready.
        assert_eq!(
            plan(0, 3, &c),
            Plan {
                create: 0,
                delete: vec!["f1".into(), "s1".into(), "r1".into()]
            }
        );
        // A claimed member is never counted as idle nor deleted by the pool.
        assert!(!plan(0, 3, &c).delete.contains(&"c1".to_owned()));
    }

    #[test]
    fn a_member_that_does_not_check_in_in_time_is_replaced_saying_what_it_was_doing() {
        let mut unscheduled = (*member("u1", "a", POOL_MEMBER_IDLE, "Pending", false, 0)).clone();
        unscheduled.spec = Some(Default::default());
        let mut booting = unscheduled.clone();
        booting.metadata.name = Some("b1".into());
        booting.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("node-1".into()),
            ..Default::default()
        });
        let pods = vec![
            // Ready but never asked, created at 0 and at 50.
            not_checked_in(member("q1", "a", POOL_MEMBER_IDLE, "Running", true, 0)),
            not_checked_in(member("q2", "a", POOL_MEMBER_IDLE, "Running", true, 50)),
            Arc::new(unscheduled),
            Arc::new(booting),
            member("r1", "a", POOL_MEMBER_IDLE, "Running", true, 0),
        ];
        let within = Duration::from_secs(60);
        // At 30 s nobody is late: the silent ones are starting, not claimable, and the pool is
        // looked at again when the first one's time runs out.
        let early = census("team", "a", &pods, at(30), within);
        assert_eq!(early.ready, ["r1"]);
        assert_eq!(early.starting.len(), 4);
        assert!(early.silent.is_empty());
        assert_eq!(early.next_deadline, Some(at(60)));
        let pools = vec!["a".to_owned()];
        let mut reserved = HashSet::new();
        reserved.insert("team/r1".to_owned());
        assert_eq!(
            pick("team", &pools, &pods, &reserved),
            Pick::Miss { pool: "a".into() },
            "a member that never asked is not claimed"
        );
        // At 70 s the three created at 0 are late and go (the one that checked in stays).
        let late = census("team", "a", &pods, at(70), within);
        let silent: BTreeMap<&str, &str> = late
            .silent
            .iter()
            .map(|(n, w)| (n.as_str(), w.as_str()))
            .collect();
        assert_eq!(
            silent.keys().copied().collect::<Vec<_>>(),
            ["b1", "q1", "u1"]
        );
        assert!(silent["q1"].contains("never asked"), "{silent:?}");
        assert!(silent["u1"].contains("unscheduled"), "{silent:?}");
        assert!(silent["b1"].contains("booting"), "{silent:?}");
        assert_eq!(late.starting, ["q2"]);
        assert_eq!(late.next_deadline, Some(at(110)));
        let p = plan(3, 4, &late);
        assert_eq!(p.delete, ["b1", "q1", "u1"]);
        assert_eq!(p.create, 1, "replaced within replicas 3: r1 and q2 remain");
    }

    fn pool() -> SandboxPool {
        let mut pool = SandboxPool::new(
            "fast",
            oauth3_crds::SandboxPoolSpec {
                runtime_class_name: Some("kata-qemu".into()),
                image: None,
                resources: Some(oauth3_crds::PoolResources {
                    cpu: Some("250m".into()),
                    memory: None,
                }),
                replicas: 2,
                min_ready: None,
                max_surge: None,
            },
        );
        pool.metadata.namespace = Some("team".into());
        pool.metadata.uid = Some("pool-uid".into());
        pool
    }

    fn config() -> PoolConfig {
        PoolConfig {
            pod: PodLaunchConfig::default(),
            callback_base_url: "https://op.oauth3-system.svc:8443".into(),
            callback_ca_pem: Some("CA".into()),
            check_in_within: Duration::from_secs(120),
        }
    }

    #[test]
    fn a_member_has_no_bundle_no_secrets_and_no_permit_and_asks_with_its_standby_file() {
        let pod =
            desired_member(&pool(), &config(), "oauth3-pool-fast-bcd23", "sha256:t").expect("pod");
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.runtime_class_name.as_deref(), Some("kata-qemu"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.active_deadline_seconds, None);
        let c = &spec.containers[0];
        let args = c.args.clone().unwrap_or_default();
        assert_eq!(
            &args[..3],
            ["run", "--standby", "/var/run/oauth3/bundle/standby.json"]
        );
        assert!(
            !args.iter().any(|a| a == "--bundle" || a == "--sealed-dir"),
            "{args:?}"
        );
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .expect("limits");
        assert_eq!(limits["cpu"].0, "250m");
        let labels = pod.labels();
        assert_eq!(labels[LABEL_POOL], "fast");
        assert_eq!(labels[LABEL_POOL_MEMBER], POOL_MEMBER_IDLE);
        assert!(!labels.contains_key(LABEL_EXECUTION) && !labels.contains_key(LABEL_PERMIT));
        // The sealed projection is empty: no Permit, no secrets.
        let volumes = spec.volumes.clone().unwrap_or_default();
        let sealed = volumes.iter().find(|v| v.name == "sealed").expect("sealed");
        assert!(
            sealed
                .projected
                .as_ref()
                .and_then(|p| p.sources.clone())
                .unwrap_or_default()
                .is_empty()
        );
        let bundle = volumes.iter().find(|v| v.name == "bundle").expect("bundle");
        let secret = bundle.secret.as_ref().expect("secret");
        assert_eq!(
            secret.secret_name.as_deref(),
            Some("oauth3-pool-fast-bcd23")
        );
        let items: Vec<String> = secret
            .items
            .iter()
            .flatten()
            .map(|i| i.key.clone())
            .collect();
        assert_eq!(items, ["standby.json"]);

        let mut stored = pod.clone();
        stored.metadata.uid = Some("pod-uid".into());
        let secret = desired_member_secret(&stored, &config(), "tok").expect("secret");
        let file = &secret.string_data.as_ref().expect("data")[STANDBY_FILE];
        let standby: Standby = serde_json::from_str(file).expect("standby");
        assert_eq!(
            standby.url,
            "https://op.oauth3-system.svc:8443/v1/standby/team/oauth3-pool-fast-bcd23"
        );
        assert_eq!(standby.token.as_str(), "tok");
        assert_eq!(standby.ca_pem.as_deref(), Some("CA"));
        let owner = &secret.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Pod", "pod-uid")
        );
    }

    #[test]
    fn the_standby_policy_allows_only_dns_and_the_callback() {
        let policy = desired_pool_policy(&pool(), &PodLaunchConfig::default()).expect("policy");
        let spec = policy.spec.expect("spec");
        assert_eq!(
            spec.pod_selector
                .and_then(|s| s.match_labels)
                .expect("selector")[LABEL_POOL],
            "fast"
        );
        assert_eq!(spec.ingress.unwrap_or_default().len(), 0);
        let egress = serde_json::to_value(spec.egress.unwrap_or_default()).expect("json");
        let ports: Vec<i64> = egress
            .as_array()
            .expect("rules")
            .iter()
            .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_i64())
            .collect();
        assert_eq!(ports, [53, 53, 8443], "{egress}");
    }

    #[test]
    fn a_claim_is_guarded_relabels_for_the_execution_and_sets_its_deadline() {
        let mut exec = Execution::new(
            "run-1",
            serde_json::from_value(json!({"permitRef": "gh", "code": "return 1"})).expect("spec"),
        );
        exec.metadata.namespace = Some("team".into());
        exec.metadata.uid = Some("exec-uid".into());
        let m = Member {
            pool: "fast".into(),
            namespace: "team".into(),
            name: "oauth3-pool-fast-bcd23".into(),
            resource_version: "77".into(),
            started: None,
        };
        let patch = claim_patch(&m, &exec, 95).expect("patch");
        assert_eq!(patch["metadata"]["resourceVersion"], "77");
        assert_eq!(patch["metadata"]["labels"][LABEL_EXECUTION], "exec-uid");
        assert_eq!(
            patch["metadata"]["labels"][LABEL_POOL_MEMBER],
            POOL_MEMBER_CLAIMED
        );
        assert_eq!(patch["metadata"]["ownerReferences"][0]["kind"], "Execution");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "exec-uid");
        assert_eq!(patch["spec"]["activeDeadlineSeconds"], 95);
    }
}
