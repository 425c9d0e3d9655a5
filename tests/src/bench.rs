//! What the benchmark examples (`tests/examples/`) share: percentiles, one report line, pacing,
//! and the API server's request counters.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Client;

/// The `p`th percentile (nearest rank) of `sorted`; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Prints `label`, the count, p50, p99 and max of `samples` in milliseconds.
pub fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{label:<46} n={:<4} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms",
        samples.len(),
        percentile(&samples, 50.0).as_secs_f64() * 1e3,
        percentile(&samples, 99.0).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// `apiserver_request_total` summed by `verb resource[/subresource]` (all codes).
pub async fn request_counts(client: &Client) -> BTreeMap<String, f64> {
    let text = client
        .request_text(
            http::Request::get("/metrics")
                .body(Vec::new())
                .expect("bench setup"),
        )
        .await
        .expect("bench setup");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        if matches!(verb.as_str(), "WATCH" | "CONNECT") || resource.is_empty() {
            continue;
        }
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or_default();
    }
    out
}

/// How a benchmark creates its objects: one after the other (the next once the previous one
/// is done), or open loop at a rate.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// One after the other.
    Serial,
    /// This many per second, not waiting for any.
    PerSecond(u32),
}

impl std::fmt::Display for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Serial => f.pad("serial"),
            Self::PerSecond(n) => f.pad(&format!("{n}/s")),
        }
    }
}

/// Creates `n` objects at `pace` with `create(i)`: serially, each once `done(i - 1)` holds
/// (30 s at most each); paced, then waits (60 s at most) until `done(i)` holds for all.
/// `notify` wakes the waits (a watch's events).
///
/// # Panics
/// When a wait runs out.
pub async fn drive<F, Fut>(
    pace: Pace,
    n: usize,
    notify: &tokio::sync::Notify,
    create: F,
    done: impl Fn(usize) -> bool,
) where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match pace {
        Pace::Serial => {
            for i in 0..n {
                create(i).await;
                wait_for(notify, Duration::from_secs(30), || done(i)).await;
            }
        }
        Pace::PerSecond(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            for i in 0..n {
                tick.tick().await;
                tokio::spawn(create(i));
            }
            wait_for(notify, Duration::from_secs(60), || (0..n).all(&done)).await;
        }
    }
}

/// Waits (up to `limit`) until `done` holds, woken by `notify` (and every 20 ms).
///
/// # Panics
/// When `limit` passes first.
pub async fn wait_for(notify: &tokio::sync::Notify, limit: Duration, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "not done within {limit:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(20), notify.notified()).await;
    }
}

/// The `p`th percentile of unsorted `samples`.
pub fn pct(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    percentile(&s, p)
}

/// Whether `pod` has condition `Ready=True`.
pub fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
