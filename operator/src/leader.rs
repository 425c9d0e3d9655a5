//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! only one reconciles at a time, and running work only while leading.
//!
//! The decision (create, acquire, renew or wait) is the pure [`next_step`]; [`LeaderElector`]
//! does the IO: it reads the Lease, writes it with the observed `resourceVersion` (so a write
//! racing another candidate's fails with 409 Conflict and the other candidate wins), publishes
//! "am I leader" on a `watch` channel, and on shutdown releases the Lease (clears
//! `holderIdentity`) so a standby takes over without waiting for the Lease to expire.
//!
//! Expiry compares the holder's `renewTime` with the local clock, so replicas' clocks must
//! agree to well within the lease duration (as they do on NTP-synchronised nodes).
//!
//! `kube::runtime` 5.0 has no elector. `kube-lease-manager` 0.13 was tried in this module's
//! place and kept out: a standby sleeps until the observed Lease expires, so a released Lease
//! is taken over only a lease duration later (the graceful-release test fails), its durations
//! are whole seconds (no 500ms renew or retry interval), and a leader whose renewals fail
//! keeps reporting "leading" while the Lease expires under it (this module steps down after
//! [`LeaderConfig::renew_deadline`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The name of the Lease the operator replicas compete for.
pub const LEASE_NAME: &str = "oauth3-operator";
/// Default time a Lease stays valid after its last renewal.
pub(crate) const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default interval between renewals by the leader.
pub(crate) const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// Default interval between attempts by a standby (and after a failed request).
pub(crate) const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Why leader election could not run or a Lease request failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The durations cannot give a safe election.
    #[error("invalid leader election settings: {0}")]
    InvalidConfig(&'static str),
    /// Reading the Lease failed.
    #[error("reading Lease {namespace}/{name}: {source}")]
    ReadLease {
        /// Namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The API error (boxed: it is large).
        #[source]
        source: Box<kube::Error>,
    },
    /// Creating, acquiring, renewing or releasing the Lease failed.
    #[error("writing Lease {namespace}/{name} to {step}: {source}")]
    WriteLease {
        /// What the write was for (see [`Step::action`]).
        step: &'static str,
        /// Namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The API error (boxed: it is large).
        #[source]
        source: Box<kube::Error>,
    },
}

impl LeaderError {
    /// Whether another writer changed the Lease between this replica's read and write.
    fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::WriteLease { source, .. }
                if matches!(&**source, kube::Error::Api(s) if s.is_conflict())
        )
    }
}

/// Who competes for which Lease, and how fast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// The Lease's name (default [`LEASE_NAME`]).
    pub lease_name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's identity, unique among the replicas (see [`default_identity`]).
    pub identity: String,
    /// How long the Lease stays valid after a renewal (whole seconds; at least 1 s).
    pub lease_duration: Duration,
    /// How often the leader renews; must be shorter than `lease_duration`.
    pub renew_interval: Duration,
    /// How often a standby tries to acquire, and the pause after a failed request.
    pub retry_interval: Duration,
}

impl LeaderConfig {
    /// Settings for `identity` competing for [`LEASE_NAME`] in `namespace`, with the default
    /// durations (15 s lease, 5 s renew, 2 s retry).
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            lease_name: LEASE_NAME.to_owned(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    /// Checks the durations give a safe election: the leader renews well before the Lease
    /// could expire.
    ///
    /// # Errors
    /// [`LeaderError::InvalidConfig`] naming the problem.
    pub fn validate(&self) -> Result<(), LeaderError> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err(LeaderError::InvalidConfig(
                "the lease duration must be at least 1s",
            ));
        }
        if self.lease_duration.subsec_nanos() != 0 {
            return Err(LeaderError::InvalidConfig(
                "the lease duration must be whole seconds",
            ));
        }
        if self.renew_interval.is_zero() || self.retry_interval.is_zero() {
            return Err(LeaderError::InvalidConfig(
                "the renew and retry intervals must be positive",
            ));
        }
        if self.renew_interval >= self.lease_duration {
            return Err(LeaderError::InvalidConfig(
                "the renew interval must be shorter than the lease duration",
            ));
        }
        if self.identity.is_empty() {
            return Err(LeaderError::InvalidConfig("the identity must not be empty"));
        }
        Ok(())
    }

    /// How long a leader keeps leading without a successful renewal: the lease duration less
    /// one renew interval, so it steps down before any standby may take the expired Lease.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_interval)
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// This replica's identity: `$POD_NAME` when set (unique per pod), else `hostname-pid`.
pub(crate) fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}-{}", std::process::id())
}

/// What a candidate does next, given the Lease it observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// No Lease exists: create it, holding it.
    Create,
    /// The Lease is free (no holder) or expired: take it over.
    Acquire,
    /// This candidate holds the Lease: renew it.
    Renew,
    /// Another candidate holds a valid Lease until `expires_at`: do not lead.
    Wait {
        /// The current holder.
        holder: String,
        /// When the holder's Lease expires unless renewed.
        expires_at: Timestamp,
    },
    /// Releasing the Lease on shutdown (only used to name a failed write).
    Release,
}

impl Step {
    /// What writing the Lease for this step does, in words.
    pub(crate) fn action(&self) -> &'static str {
        match self {
            Self::Create => "create it",
            Self::Acquire => "acquire it",
            Self::Renew => "renew it",
            Self::Wait { .. } => "wait",
            Self::Release => "release it",
        }
    }
}

/// Decides the next step of candidate `me` from the observed Lease `spec` (`None`: no Lease)
/// at time `now`. A Lease is expired when `renewTime + leaseDurationSeconds < now`; a Lease
/// with no renew time or duration counts as expired.
pub(crate) fn next_step(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Step::Acquire;
    }
    if holder == me {
        return Step::Renew;
    }
    let (Some(renewed), Some(secs)) = (
        spec.renew_time.as_ref().or(spec.acquire_time.as_ref()),
        spec.lease_duration_seconds,
    ) else {
        return Step::Acquire;
    };
    let expires_at = renewed
        .0
        .checked_add(SignedDuration::from_secs(i64::from(secs.max(0))))
        .unwrap_or(renewed.0);
    if expires_at < now {
        Step::Acquire
    } else {
        Step::Wait {
            holder: holder.to_owned(),
            expires_at,
        }
    }
}

/// The Lease spec that candidate `me` writes for `step` at `now`, from the observed spec.
/// `leaseTransitions` grows by one whenever the holder changes (including after a release).
pub(crate) fn desired_spec(
    observed: Option<&LeaseSpec>,
    step: &Step,
    config: &LeaderConfig,
    now: Timestamp,
) -> LeaseSpec {
    let me = &config.identity;
    let previous = observed.cloned().unwrap_or_default();
    match step {
        Step::Create => LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(config.lease_duration_seconds()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..Default::default()
        },
        Step::Acquire => LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(config.lease_duration_seconds()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                previous
                    .lease_transitions
                    .unwrap_or(0)
                    .saturating_add(i32::from(previous.holder_identity.as_deref() != Some(me))),
            ),
            ..previous
        },
        Step::Renew => LeaseSpec {
            lease_duration_seconds: Some(config.lease_duration_seconds()),
            renew_time: Some(MicroTime(now)),
            ..previous
        },
        Step::Release => LeaseSpec {
            holder_identity: None,
            ..previous
        },
        Step::Wait { .. } => previous,
    }
}

/// Competes for the Lease and publishes whether this replica leads.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    leading: watch::Sender<bool>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .field("leading", &*self.leading.borrow())
            .finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// An elector for `config` (checked with [`LeaderConfig::validate`]), not yet running.
    ///
    /// # Errors
    /// [`LeaderError::InvalidConfig`] for unsafe durations or an empty identity.
    pub fn new(client: Client, config: LeaderConfig) -> Result<Self, LeaderError> {
        config.validate()?;
        let (leading, _) = watch::channel(false);
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            leading,
            metrics: None,
        })
    }

    /// Also sets the `oauth3_leader` gauge of `metrics` while running.
    #[must_use]
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// "Am I leader": `true` while this replica holds the Lease. The channel closes when the
    /// elector stops, so a closed channel also means "not running".
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// The settings this elector runs with.
    pub(crate) fn config(&self) -> &LeaderConfig {
        &self.config
    }

    /// Competes for the Lease until `shutdown` resolves, then (if leading) stops leading and
    /// releases the Lease. Request failures are logged and retried; a leader that cannot renew
    /// within [`LeaderConfig::renew_deadline`] stops leading.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_renewal: Option<Instant> = None;
        loop {
            let pause = match self.attempt().await {
                Ok(true) => {
                    last_renewal = Some(Instant::now());
                    self.set_leading(true);
                    self.config.renew_interval
                }
                Ok(false) => {
                    last_renewal = None;
                    self.set_leading(false);
                    self.config.retry_interval
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election");
                    let conflict = e.is_conflict();
                    let overdue =
                        last_renewal.is_none_or(|t| t.elapsed() >= self.config.renew_deadline());
                    if conflict || overdue {
                        // Someone else wrote the Lease, or we could not renew in time: stop
                        // leading at once; the next attempt re-reads the Lease.
                        last_renewal = None;
                        self.set_leading(false);
                    }
                    if conflict {
                        Duration::ZERO
                    } else {
                        self.config.retry_interval
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        let was_leading = *self.leading.borrow();
        self.set_leading(false);
        if was_leading {
            match self.release().await {
                Ok(()) => tracing::info!(identity = %self.config.identity, "released the lease"),
                Err(e) => tracing::warn!(error = %e, "releasing the lease"),
            }
        }
    }

    /// Reads the Lease and performs the next step. `Ok(true)`: this replica now holds it.
    async fn attempt(&self) -> Result<bool, LeaderError> {
        let observed = self.read().await?;
        let now = Timestamp::now();
        let spec = observed.as_ref().and_then(|l| l.spec.as_ref());
        let step = next_step(spec, &self.config.identity, now);
        let desired = desired_spec(spec, &step, &self.config, now);
        match (&step, observed) {
            (Step::Wait { holder, expires_at }, _) => {
                tracing::debug!(%holder, %expires_at, "another replica leads");
                Ok(false)
            }
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.lease_name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(desired),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map_err(|source| self.write_error(&step, source))?;
                tracing::info!(identity = %self.config.identity, "created the lease; leading");
                Ok(true)
            }
            (_, Some(mut lease)) => {
                lease.spec = Some(desired);
                self.replace(&step, &lease).await?;
                if step == Step::Acquire {
                    tracing::info!(identity = %self.config.identity, "acquired the lease; leading");
                }
                Ok(true)
            }
            (_, None) => Ok(false),
        }
    }

    /// Clears `holderIdentity` so the next candidate acquires at once.
    async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.read().await? else {
            return Ok(());
        };
        let spec = lease.spec.as_ref();
        if spec.and_then(|s| s.holder_identity.as_deref()) != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(desired_spec(
            spec,
            &Step::Release,
            &self.config,
            Timestamp::now(),
        ));
        self.replace(&Step::Release, &lease).await
    }

    async fn read(&self) -> Result<Option<Lease>, LeaderError> {
        self.api
            .get_opt(&self.config.lease_name)
            .await
            .map_err(|source| LeaderError::ReadLease {
                namespace: self.config.namespace.clone(),
                name: self.config.lease_name.clone(),
                source: Box::new(source),
            })
    }

    /// Replaces the Lease; the `resourceVersion` it carries makes a concurrent write a 409.
    async fn replace(&self, step: &Step, lease: &Lease) -> Result<(), LeaderError> {
        self.api
            .replace(&lease.name_any(), &PostParams::default(), lease)
            .await
            .map(|_| ())
            .map_err(|source| self.write_error(step, source))
    }

    fn write_error(&self, step: &Step, source: kube::Error) -> LeaderError {
        LeaderError::WriteLease {
            step: step.action(),
            namespace: self.config.namespace.clone(),
            name: self.config.lease_name.clone(),
            source: Box::new(source),
        }
    }

    fn set_leading(&self, leading: bool) {
        let changed = self.leading.send_if_modified(|v| {
            let changed = *v != leading;
            *v = leading;
            changed
        });
        if changed && !leading {
            tracing::info!(identity = %self.config.identity, "stopped leading");
        }
        if let Some(m) = &self.metrics {
            m.set_leader(leading);
        }
    }
}

/// Runs the work `start` makes only while `leading` says so, until `shutdown` resolves.
///
/// Each time this replica becomes leader, `start(stop)` is called and its future run; `stop`
/// resolves on `shutdown`, for a graceful finish. If leadership is lost meanwhile, the work's
/// future is dropped at once (whatever it was doing) and `start` is called again on the next
/// election win. If the elector stops (its channel closes), the work stops too.
pub(crate) async fn run_while_leading<F, W>(
    mut leading: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut start: F,
) where
    F: FnMut(StopSignal) -> W,
    W: Future<Output = ()>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // Nobody listening is fine: the work is not running then.
        let _ = stop_tx.send(true);
    });
    let mut stopped = stop_rx.clone();
    loop {
        // Wait to lead (or to stop).
        tokio::select! {
            ok = wait_until(&mut leading, true) => if !ok { return },
            _ = wait_until(&mut stopped, true) => return,
        }
        let work = start(StopSignal(stop_rx.clone()));
        tokio::select! {
            () = work => {
                if *stopped.borrow() {
                    return;
                }
                tracing::warn!("the leader's work ended on its own; restarting it shortly");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = wait_until(&mut stopped, true) => return,
                }
            }
            _ = wait_until(&mut leading, false) => {
                tracing::warn!("lost leadership: stopped reconciling");
            }
        }
    }
}

/// Resolves when the process shuts down; hand it to a controller's `graceful_shutdown_on`.
#[derive(Clone, Debug)]
pub(crate) struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Resolves once shutdown was requested (or its source is gone).
    pub(crate) async fn wait(mut self) {
        wait_until(&mut self.0, true).await;
    }
}

/// Waits until `rx` holds `value`; `false` if the sender is gone first.
async fn wait_until(rx: &mut watch::Receiver<bool>, value: bool) -> bool {
    rx.wait_for(|v| *v == value).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
    }

    fn held_by(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(3),
            ..Default::default()
        }
    }

    fn config(me: &str) -> LeaderConfig {
        LeaderConfig::new("ns", me)
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(next_step(None, "a", at(0)), Step::Create);
    }

    #[test]
    fn a_lease_without_holder_is_acquired_even_if_recently_renewed() {
        let mut spec = held_by("b", 0, 15);
        spec.holder_identity = None;
        assert_eq!(next_step(Some(&spec), "a", at(1)), Step::Acquire);
        spec.holder_identity = Some(String::new());
        assert_eq!(next_step(Some(&spec), "a", at(1)), Step::Acquire);
    }

    #[test]
    fn the_holder_renews_its_own_lease_even_when_expired() {
        assert_eq!(
            next_step(Some(&held_by("a", 0, 15)), "a", at(5)),
            Step::Renew
        );
        assert_eq!(
            next_step(Some(&held_by("a", 0, 15)), "a", at(100)),
            Step::Renew
        );
    }

    #[test]
    fn another_holders_valid_lease_is_not_taken_until_it_expires() {
        let spec = held_by("b", 0, 15);
        assert_eq!(
            next_step(Some(&spec), "a", at(10)),
            Step::Wait {
                holder: "b".to_owned(),
                expires_at: at(15)
            }
        );
        // Exactly at expiry the holder still owns it; strictly after, it is expired.
        assert!(matches!(
            next_step(Some(&spec), "a", at(15)),
            Step::Wait { .. }
        ));
        assert_eq!(next_step(Some(&spec), "a", at(16)), Step::Acquire);
    }

    #[test]
    fn a_lease_without_renew_time_or_duration_counts_as_expired() {
        let mut spec = held_by("b", 0, 15);
        spec.renew_time = None;
        spec.acquire_time = None;
        assert_eq!(next_step(Some(&spec), "a", at(0)), Step::Acquire);
        let mut spec = held_by("b", 0, 15);
        spec.lease_duration_seconds = None;
        assert_eq!(next_step(Some(&spec), "a", at(0)), Step::Acquire);
    }

    #[test]
    fn acquiring_from_another_holder_counts_a_transition_and_resets_times() {
        let old = held_by("b", 0, 15);
        let new = desired_spec(Some(&old), &Step::Acquire, &config("a"), at(20));
        assert_eq!(new.holder_identity.as_deref(), Some("a"));
        assert_eq!(new.lease_transitions, Some(4));
        assert_eq!(new.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(new.renew_time, Some(MicroTime(at(20))));
        assert_eq!(new.lease_duration_seconds, Some(15));
    }

    #[test]
    fn acquiring_a_released_lease_counts_a_transition() {
        let mut old = held_by("b", 0, 15);
        old.holder_identity = None;
        let new = desired_spec(Some(&old), &Step::Acquire, &config("a"), at(1));
        assert_eq!(new.lease_transitions, Some(4));
    }

    #[test]
    fn renewing_moves_only_the_renew_time() {
        let old = held_by("a", 0, 15);
        let new = desired_spec(Some(&old), &Step::Renew, &config("a"), at(5));
        assert_eq!(new.renew_time, Some(MicroTime(at(5))));
        assert_eq!(new.acquire_time, old.acquire_time);
        assert_eq!(new.lease_transitions, Some(3));
        assert_eq!(new.holder_identity.as_deref(), Some("a"));
    }

    #[test]
    fn creating_holds_the_lease_with_zero_transitions() {
        let new = desired_spec(None, &Step::Create, &config("a"), at(0));
        assert_eq!(new.holder_identity.as_deref(), Some("a"));
        assert_eq!(new.lease_transitions, Some(0));
        assert_eq!(new.renew_time, Some(MicroTime(at(0))));
    }

    #[test]
    fn releasing_clears_only_the_holder() {
        let old = held_by("a", 0, 15);
        let new = desired_spec(Some(&old), &Step::Release, &config("a"), at(3));
        assert_eq!(new.holder_identity, None);
        assert_eq!(new.lease_transitions, Some(3));
        assert_eq!(next_step(Some(&new), "b", at(4)), Step::Acquire);
    }

    #[test]
    fn defaults_are_fifteen_five_two_seconds_and_valid() {
        let c = config("a");
        assert_eq!(c.lease_name, "oauth3-operator");
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_interval, Duration::from_secs(5));
        assert_eq!(c.retry_interval, Duration::from_secs(2));
        assert_eq!(c.renew_deadline(), Duration::from_secs(10));
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn settings_where_the_leader_cannot_renew_in_time_are_rejected() {
        let mut c = config("a");
        c.renew_interval = c.lease_duration;
        assert!(matches!(c.validate(), Err(LeaderError::InvalidConfig(_))));
        let mut c = config("a");
        c.lease_duration = Duration::from_millis(500);
        assert!(matches!(c.validate(), Err(LeaderError::InvalidConfig(_))));
        let mut c = config("a");
        c.lease_duration = Duration::from_millis(2500);
        assert!(matches!(c.validate(), Err(LeaderError::InvalidConfig(_))));
        assert!(matches!(
            config("").validate(),
            Err(LeaderError::InvalidConfig(_))
        ));
    }

    #[test]
    fn the_identity_is_the_pod_name_or_host_and_pid() {
        let id = default_identity();
        assert!(!id.is_empty());
        if std::env::var("POD_NAME").is_err() {
            assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        }
    }

    #[tokio::test]
    async fn work_runs_only_while_leading_and_is_dropped_at_once_on_losing_the_lease() {
        let (lead_tx, lead_rx) = watch::channel(false);
        let (shut_tx, shut_rx) = tokio::sync::oneshot::channel::<()>();
        let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, r) = (starts.clone(), running.clone());
        let task = tokio::spawn(run_while_leading(
            lead_rx,
            async move {
                let _ = shut_rx.await;
            },
            move |stop| {
                let (s, r) = (s.clone(), r.clone());
                async move {
                    s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    r.store(true, std::sync::atomic::Ordering::SeqCst);
                    // Reset the flag when this future is dropped or finishes.
                    struct Reset(Arc<std::sync::atomic::AtomicBool>);
                    impl Drop for Reset {
                        fn drop(&mut self) {
                            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    let _reset = Reset(r);
                    stop.wait().await;
                }
            },
        ));
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        settle().await;
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 0);
        lead_tx.send(true).expect("send");
        settle().await;
        assert!(running.load(std::sync::atomic::Ordering::SeqCst));
        lead_tx.send(false).expect("send");
        settle().await;
        assert!(!running.load(std::sync::atomic::Ordering::SeqCst));
        lead_tx.send(true).expect("send");
        settle().await;
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 2);
        shut_tx.send(()).expect("shutdown");
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("stops on shutdown")
            .expect("no panic");
        assert!(!running.load(std::sync::atomic::Ordering::SeqCst));
    }
}
