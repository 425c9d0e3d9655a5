//! The operator's HTTP endpoints: `GET /metrics` (Prometheus text), `GET /healthz` (the
//! process is alive) and `GET /readyz` (the API server was reached recently and, with leader
//! election on, the elector is running), plus the probe that records API server reachability.
//!
//! The readiness decision is the pure [`readiness`]; handlers only render it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::{CONTENT_TYPE, Metrics};

/// How long a successful API server probe keeps the operator ready by default.
pub const DEFAULT_API_FRESHNESS: Duration = Duration::from_secs(30);
/// How often [`probe_api_server`] asks the API server for its version by default.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Why serving HTTP failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Accepting or serving connections failed.
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// Why the operator is not ready; the text is the `/readyz` body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// No API server request has succeeded yet.
    #[error("the API server has not been reached yet")]
    ApiNeverReached,
    /// The last successful API server request is too old.
    #[error("the API server was last reached {0:?} ago")]
    ApiStale(Duration),
    /// Leader election is on but the elector is not running.
    #[error("the leader elector is not running")]
    ElectorStopped,
}

/// Decides readiness: the API server answered within `freshness` before `now`, and when leader
/// election is on (`elector_running` is `Some`) the elector runs.
///
/// # Errors
/// The first [`NotReady`] reason that applies.
pub fn readiness(
    last_api_ok: Option<Instant>,
    now: Instant,
    freshness: Duration,
    elector_running: Option<bool>,
) -> Result<(), NotReady> {
    let Some(ok_at) = last_api_ok else {
        return Err(NotReady::ApiNeverReached);
    };
    let age = now.saturating_duration_since(ok_at);
    if age > freshness {
        return Err(NotReady::ApiStale(age));
    }
    if elector_running == Some(false) {
        return Err(NotReady::ElectorStopped);
    }
    Ok(())
}

/// What `/readyz` looks at: when the API server was last reached and, with leader election,
/// the elector's "am I leader" channel (closed once the elector stops).
#[derive(Debug)]
pub struct Health {
    last_api_ok: Mutex<Option<Instant>>,
    freshness: Duration,
    elector: Option<watch::Receiver<bool>>,
}

impl Health {
    /// Health without leader election; an API success older than `freshness` is stale.
    pub fn new(freshness: Duration) -> Self {
        Self {
            last_api_ok: Mutex::new(None),
            freshness,
            elector: None,
        }
    }

    /// Also requires the elector publishing on `leading` (see
    /// [`crate::leader::LeaderElector::subscribe`]) to be running.
    #[must_use]
    pub fn with_elector(mut self, leading: watch::Receiver<bool>) -> Self {
        self.elector = Some(leading);
        self
    }

    /// Records that a request to the API server just succeeded.
    pub fn record_api_ok(&self) {
        *self.last_api_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// The current readiness (see [`readiness`]).
    ///
    /// # Errors
    /// The reason the operator is not ready.
    pub fn check(&self) -> Result<(), NotReady> {
        let last = *self.last_api_ok.lock().unwrap_or_else(|e| e.into_inner());
        let elector_running = self.elector.as_ref().map(|rx| rx.has_changed().is_ok());
        readiness(last, Instant::now(), self.freshness, elector_running)
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The metrics `/metrics` exposes.
    pub metrics: Arc<Metrics>,
    /// What `/readyz` checks.
    pub health: Arc<Health>,
}

/// The router: `GET /metrics`, `GET /healthz`, `GET /readyz`.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes open requests.
///
/// # Errors
/// [`HttpError::Serve`] if the server fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HttpError::Serve)
}

/// Asks the API server for its version every `interval` until `shutdown`, recording each
/// success in `health`.
pub async fn probe_api_server(
    client: Client,
    health: Arc<Health>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        match client.apiserver_version().await {
            Ok(_) => health.record_api_ok(),
            Err(e) => tracing::warn!(error = %e, "probing the API server"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.health.check() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_secs(30);

    #[test]
    fn not_ready_before_the_api_server_was_ever_reached() {
        let now = Instant::now();
        assert_eq!(
            readiness(None, now, FRESH, None),
            Err(NotReady::ApiNeverReached)
        );
    }

    #[test]
    fn ready_after_a_recent_api_success_without_leader_election() {
        let now = Instant::now();
        assert_eq!(readiness(Some(now), now, FRESH, None), Ok(()));
    }

    #[test]
    fn a_stale_api_success_makes_the_operator_unready() {
        let then = Instant::now();
        let now = then + Duration::from_secs(31);
        assert!(matches!(
            readiness(Some(then), now, FRESH, None),
            Err(NotReady::ApiStale(_))
        ));
    }

    #[test]
    fn with_leader_election_a_stopped_elector_makes_the_operator_unready() {
        let now = Instant::now();
        assert_eq!(
            readiness(Some(now), now, FRESH, Some(false)),
            Err(NotReady::ElectorStopped)
        );
        assert_eq!(readiness(Some(now), now, FRESH, Some(true)), Ok(()));
    }

    #[test]
    fn health_sees_the_elector_stop_when_its_channel_closes() {
        let (tx, rx) = watch::channel(false);
        let health = Health::new(FRESH).with_elector(rx);
        health.record_api_ok();
        assert_eq!(health.check(), Ok(()));
        drop(tx);
        assert_eq!(health.check(), Err(NotReady::ElectorStopped));
    }
}
