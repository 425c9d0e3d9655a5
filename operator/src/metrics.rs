//! The operator's Prometheus metrics: one registry, the metric handles the controllers,
//! launchers and leader elector update, and their text (OpenMetrics) exposition.
//!
//! [`Metrics`] is cheap to share: put it in an `Arc` and clone the `Arc` wherever a metric is
//! updated. Every metric is registered once, in [`Metrics::new`].

use std::future::Future;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label set of per-controller metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// The controller, e.g. `permit` or `execution`.
    pub controller: String,
}

/// The label set of the Execution phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// The Execution phase, e.g. `Running`.
    pub phase: String,
}

/// The label set of the pool metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// `namespace/name` of the SandboxPool.
    pub pool: String,
}

/// The label set of the pool claim counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOutcomeLabel {
    /// `namespace/name` of the SandboxPool.
    pub pool: String,
    /// `hit` (an idle member ran it) or `miss` (a fresh Pod did).
    pub outcome: String,
}

/// The label set of the pool member gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabel {
    /// `namespace/name` of the SandboxPool.
    pub pool: String,
    /// `ready`, `starting` or `claimed`.
    pub state: String,
}

/// Why encoding the metrics failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Writing the text exposition failed.
    #[error("encoding the metrics as text: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Reconcile durations: 1 ms up to about 16 s.
fn reconcile_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The operator's metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabel, Counter>,
    reconcile_errors: Family<ControllerLabel, Counter>,
    reconcile_duration: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    executions: Family<PhaseLabel, Gauge>,
    launch_latency: Histogram,
    leader: Gauge,
    pool_claims: Family<PoolOutcomeLabel, Counter>,
    pool_members: Family<PoolStateLabel, Gauge>,
    pool_claim_latency: Family<PoolLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry holding every oauth3 metric (all at zero, `oauth3_leader` at 0).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ControllerLabel, Counter>::default();
        // The client library appends `_total` to counters.
        registry.register(
            "oauth3_reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "oauth3_reconcile_errors",
            "Reconciles that returned an error, by controller",
            reconcile_errors.clone(),
        );
        let reconcile_duration: Family<ControllerLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(reconcile_buckets);
        registry.register(
            "oauth3_reconcile_duration_seconds",
            "Time spent in one reconcile, by controller",
            reconcile_duration.clone(),
        );
        let executions = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "oauth3_executions",
            "Executions currently in each phase",
            executions.clone(),
        );
        // 1 ms up to about 8 s.
        let launch_latency = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "oauth3_launch_latency_seconds",
            "Time from an Execution's creation to its runner being launched",
            launch_latency.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "oauth3_leader",
            "1 while this replica holds the leader lease, else 0",
            leader.clone(),
        );
        let pool_claims = Family::<PoolOutcomeLabel, Counter>::default();
        registry.register(
            "oauth3_pool_claims",
            "Pod launches by SandboxPool: hit (an idle member ran it) or miss (a fresh Pod did)",
            pool_claims.clone(),
        );
        let pool_members = Family::<PoolStateLabel, Gauge>::default();
        registry.register(
            "oauth3_pool_members",
            "SandboxPool members by state: ready, starting, claimed",
            pool_members.clone(),
        );
        let pool_claim_latency: Family<PoolLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(reconcile_buckets);
        registry.register(
            "oauth3_pool_claim_latency_seconds",
            "Time from an Execution's creation to its bundle being handed to a pool member",
            pool_claim_latency.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            executions,
            launch_latency,
            leader,
            pool_claims,
            pool_members,
            pool_claim_latency,
        }
    }

    /// Records one finished reconcile of `controller` that took `elapsed` and failed or not.
    pub fn record_reconcile(&self, controller: &str, elapsed: Duration, failed: bool) {
        let label = ControllerLabel {
            controller: controller.to_owned(),
        };
        self.reconciles.get_or_create(&label).inc();
        // Created even on success, so the error series exists (at 0) for rate queries.
        let errors = self.reconcile_errors.get_or_create(&label);
        if failed {
            errors.inc();
        }
        self.reconcile_duration
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    /// Runs one reconcile `fut` of `controller`, recording its count, duration and failure.
    pub async fn instrument<T, E>(
        &self,
        controller: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = fut.await;
        self.record_reconcile(controller, started.elapsed(), result.is_err());
        result
    }

    /// Sets how many Executions are in `phase` now (the Execution controller calls this).
    pub fn set_executions(&self, phase: &str, count: i64) {
        self.executions
            .get_or_create(&PhaseLabel {
                phase: phase.to_owned(),
            })
            .set(count);
    }

    /// Records the time from an Execution's creation to its runner being launched.
    pub fn observe_launch_latency(&self, latency: Duration) {
        self.launch_latency.observe(latency.as_secs_f64());
    }

    /// Counts one pod launch of `pool`: `hit` or `miss`.
    pub fn count_pool_launch(&self, pool: &str, hit: bool) {
        self.pool_claims
            .get_or_create(&PoolOutcomeLabel {
                pool: pool.to_owned(),
                outcome: if hit { "hit" } else { "miss" }.to_owned(),
            })
            .inc();
    }

    /// Sets how many members of `pool` are in `state` (`ready`, `starting`, `claimed`).
    pub fn set_pool_members(&self, pool: &str, state: &str, count: i64) {
        self.pool_members
            .get_or_create(&PoolStateLabel {
                pool: pool.to_owned(),
                state: state.to_owned(),
            })
            .set(count);
    }

    /// Records the time from an Execution's creation to its bundle reaching a member of `pool`.
    pub fn observe_pool_claim_latency(&self, pool: &str, latency: Duration) {
        self.pool_claim_latency
            .get_or_create(&PoolLabel {
                pool: pool.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// Sets `oauth3_leader` to 1 while `leading`, else 0.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition of every metric (OpenMetrics, ending in `# EOF`).
    ///
    /// # Errors
    /// [`MetricsError::Encode`] if writing the text fails.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn unlabelled_metrics_are_exposed_from_the_start_and_labelled_ones_once_used() {
        let m = Metrics::new();
        let text = m.encode().expect("encodes");
        assert!(text.contains("# TYPE oauth3_launch_latency_seconds histogram"));
        assert!(text.contains("# TYPE oauth3_leader gauge"));
        assert_eq!(line_value(&text, "oauth3_leader "), Some(0.0));
        assert!(text.ends_with("# EOF\n"));
        assert!(!text.contains("oauth3_reconciles_total"), "{text}");

        m.record_reconcile("permit", Duration::from_millis(1), false);
        m.set_executions("Pending", 0);
        let text = m.encode().expect("encodes");
        for (name, kind) in [
            ("oauth3_reconciles", "counter"),
            ("oauth3_reconcile_errors", "counter"),
            ("oauth3_reconcile_duration_seconds", "histogram"),
            ("oauth3_executions", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}")),
                "{name} missing:\n{text}"
            );
        }
        assert_eq!(
            line_value(
                &text,
                "oauth3_reconcile_errors_total{controller=\"permit\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn a_failed_reconcile_counts_as_a_reconcile_and_an_error_with_its_duration() {
        let m = Metrics::new();
        m.record_reconcile("permit", Duration::from_millis(20), false);
        m.record_reconcile("permit", Duration::from_millis(30), true);
        let text = m.encode().expect("encodes");
        assert_eq!(
            line_value(&text, "oauth3_reconciles_total{controller=\"permit\"}"),
            Some(2.0)
        );
        assert_eq!(
            line_value(
                &text,
                "oauth3_reconcile_errors_total{controller=\"permit\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            line_value(
                &text,
                "oauth3_reconcile_duration_seconds_count{controller=\"permit\"}"
            ),
            Some(2.0)
        );
        let sum = line_value(
            &text,
            "oauth3_reconcile_duration_seconds_sum{controller=\"permit\"}",
        )
        .expect("sum line");
        assert!((sum - 0.05).abs() < 1e-9, "sum {sum}");
    }

    #[tokio::test]
    async fn instrument_returns_the_reconcile_result_and_counts_only_failures_as_errors() {
        let m = Metrics::new();
        let ok: Result<u8, &str> = m.instrument("execution", async { Ok(7) }).await;
        assert_eq!(ok, Ok(7));
        let err: Result<u8, &str> = m.instrument("execution", async { Err("boom") }).await;
        assert_eq!(err, Err("boom"));
        let text = m.encode().expect("encodes");
        assert_eq!(
            line_value(&text, "oauth3_reconciles_total{controller=\"execution\"}"),
            Some(2.0)
        );
        assert_eq!(
            line_value(
                &text,
                "oauth3_reconcile_errors_total{controller=\"execution\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn setters_replace_the_gauge_values_and_latency_is_observed_in_seconds() {
        let m = Metrics::new();
        m.set_executions("Running", 3);
        m.set_executions("Running", 1);
        m.set_leader(true);
        m.observe_launch_latency(Duration::from_millis(250));
        let text = m.encode().expect("encodes");
        assert_eq!(
            line_value(&text, "oauth3_executions{phase=\"Running\"}"),
            Some(1.0)
        );
        assert_eq!(line_value(&text, "oauth3_leader "), Some(1.0));
        assert_eq!(
            line_value(&text, "oauth3_launch_latency_seconds_sum"),
            Some(0.25)
        );
        m.set_leader(false);
        let text = m.encode().expect("encodes");
        assert_eq!(line_value(&text, "oauth3_leader "), Some(0.0));
    }
}
