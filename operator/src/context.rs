//! Shared state of the controllers: the API client, the Event recorder, the clock and the
//! per-object failure counts that drive error backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::usage::UsageLedger;

/// The `reportingController` of every Event the operator publishes.
pub const EVENT_REPORTER: &str = "oauth3-operator";

/// The first retry delay after a failed reconcile; doubled per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest retry delay after failed reconciles.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// A source of the current time, so tests can control `now`.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What every reconcile needs.
pub struct Context {
    /// Client for the Kubernetes API.
    pub client: Client,
    /// Publishes Events (reporter [`EVENT_REPORTER`]).
    pub recorder: Recorder,
    /// Batches the informational usage counters of Permits (see [`crate::usage`]).
    pub usage: Arc<UsageLedger>,
    /// How sandbox egress is walled in (the pod launcher's resolved `--egress-policy`); `None`
    /// with the process launcher, which runs no sandbox Pod. Shown to owners on each Permit.
    pub egress: Option<crate::egress::EgressMode>,
    /// Drafts the capabilities of intents (`--draft-*`); `None`: drafting is off.
    pub drafting: Option<Arc<crate::draft::Drafting>>,
    /// SandboxPools: the members launches pick from and the bundles offered to them.
    pub pools: Arc<crate::pool::Pools>,
    clock: Clock,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context using the system clock. The reporting instance is `$POD_NAME` if set.
    pub fn new(client: Client) -> Self {
        Self::with_clock(client, Arc::new(Timestamp::now))
    }

    /// A context whose notion of `now` comes from `clock`.
    pub fn with_clock(client: Client, clock: Clock) -> Self {
        let reporter = Reporter {
            controller: EVENT_REPORTER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            usage: Arc::new(UsageLedger::new(client.clone())),
            egress: None,
            drafting: None,
            pools: Arc::new(crate::pool::Pools::new(Arc::new(
                crate::metrics::Metrics::new(),
            ))),
            client,
            clock,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The current time, truncated to whole seconds (the precision the API stores).
    pub fn now(&self) -> Timestamp {
        let now = (self.clock)();
        Timestamp::from_second(now.as_second()).unwrap_or(now)
    }

    /// The current time, not truncated (for latencies).
    pub fn now_precise(&self) -> Timestamp {
        (self.clock)()
    }

    /// Records one more consecutive failure for `key` and returns the delay before retrying.
    pub fn failure_backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }
}

/// The retry delay after `failures` consecutive failures: `BACKOFF_BASE * 2^(failures-1)`,
/// capped at [`BACKOFF_MAX`].
pub fn backoff_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_is_capped() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(9), Duration::from_secs(256));
        assert_eq!(backoff_delay(10), BACKOFF_MAX);
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
    }
}
