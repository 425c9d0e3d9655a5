//! The result endpoint (the "callback"): where sandbox runners POST their result.
//!
//! `POST /v1/results/{namespace}/{name}` with `Authorization: Bearer <token>` and the runner's
//! result JSON. Accepted only when the Execution is `Running`, its launch record's
//! `tokenDigest` equals the SHA-256 of the presented token (compared in constant time), and the
//! result names the Execution's uid. The status is then written once, guarded by the
//! resourceVersion that was checked: a replay, or a result racing the operator's own timeout,
//! finds the Execution no longer `Running` and is refused with 409. The token is never logged
//! or stored; only its digest is.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::api::Api;
use kube::runtime::events::EventType;
use oauth3_crds::{Execution, ExecutionPhase};
use oauth3_protocol::RunResult;
use oauth3_protocol::callback::{RESULTS_PATH, token_matches};

use super::status;
use crate::Context;
use crate::launcher;
use crate::status_write::{Guarded, publish, write_status};
use crate::usage::UsageDelta;

/// Largest result body accepted.
pub const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;

/// How often the guarded result write is tried when other writers keep changing the Execution.
pub const WRITE_ATTEMPTS: u32 = 5;

/// The runner's result in `body`, checked to be final and for `exec` (pure).
fn check_result(body: &[u8], exec: &Execution, key: &str) -> Result<RunResult, CallbackError> {
    let result: RunResult =
        serde_json::from_slice(body).map_err(|e| CallbackError::BadResult(e.to_string()))?;
    if exec.metadata.uid.as_deref() != Some(result.execution.uid.as_str()) {
        return Err(CallbackError::BadResult(format!(
            "the result is for another {key}"
        )));
    }
    if !result.phase.is_terminal() {
        return Err(CallbackError::BadResult(format!(
            "phase {:?} is not final",
            result.phase
        )));
    }
    Ok(result)
}

/// Shared state of the callback endpoint.
pub struct CallbackState {
    /// The operator context (client, recorder, clock).
    pub ctx: Arc<Context>,
}

/// The callback router.
pub fn router(state: Arc<CallbackState>) -> Router {
    Router::new()
        .route(
            &format!("{RESULTS_PATH}/{{namespace}}/{{name}}"),
            post(accept_result),
        )
        .layer(DefaultBodyLimit::max(MAX_RESULT_BYTES))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `router` over HTTPS (see [`crate::tls`]) on `listener` until `shutdown` resolves.
///
/// # Errors
/// When the server fails.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = crate::tls::TlsListener::new(listener, tls)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Why a result was refused; each renders as an HTTP status with a short reason.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// No or malformed bearer token.
    #[error("missing bearer token")]
    Unauthenticated,
    /// The token does not match this run.
    #[error("token does not match this run")]
    BadToken,
    /// The body is not a runner result for this Execution.
    #[error("bad result: {0}")]
    BadResult(String),
    /// No such Execution.
    #[error("Execution {0} not found")]
    NotFound(String),
    /// The Execution is not waiting for a result (already recorded, timed out, never launched).
    #[error("Execution {0} is not waiting for a result")]
    NotRunning(String),
    /// The API server failed.
    #[error("recording the result: {0}")]
    Api(#[from] kube::Error),
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Unauthenticated | Self::BadToken => StatusCode::UNAUTHORIZED,
            Self::BadResult(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::NotRunning(_) => StatusCode::CONFLICT,
            Self::Api(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, self.to_string()).into_response()
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

async fn accept_result(
    State(state): State<Arc<CallbackState>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, CallbackError> {
    let key = format!("{namespace}/{name}");
    let token = bearer(&headers).ok_or(CallbackError::Unauthenticated)?;
    let api: Api<Execution> = Api::namespaced(state.ctx.client.clone(), &namespace);
    let mut parsed: Option<RunResult> = None;
    // The write is guarded by the resourceVersion that was checked. Another writer touching
    // the Execution in between (the controller noting the Pod, a label) makes it 409: read
    // again and re-check, so the result is still written exactly once and only while Running.
    let mut attempt = 0;
    let (exec, result) = loop {
        attempt += 1;
        let exec = api
            .get_opt(&name)
            .await?
            .ok_or_else(|| CallbackError::NotFound(key.clone()))?;
        let status = exec.status.clone().unwrap_or_default();
        let launch = status
            .launch
            .as_ref()
            .filter(|_| status.phase == Some(ExecutionPhase::Running))
            .ok_or_else(|| CallbackError::NotRunning(key.clone()))?;
        if !token_matches(token, &launch.token_digest) {
            tracing::warn!(execution = %key, "result refused: token does not match");
            return Err(CallbackError::BadToken);
        }
        let result = match parsed.take() {
            Some(r) => r,
            None => check_result(&body, &exec, &key)?,
        };
        let value = status::completed(&exec, &result, state.ctx.now());
        match write_status(&api, &exec, &value, None).await? {
            Guarded::Written => break (exec, result),
            Guarded::Conflict if attempt < WRITE_ATTEMPTS => parsed = Some(result),
            Guarded::Conflict => return Err(CallbackError::NotRunning(key)),
            Guarded::Gone => return Err(CallbackError::NotFound(key)),
        }
    };
    // The result is recorded: answer the runner now; sandbox clean-up happens in the
    // background.
    record_usage(&state.ctx, &namespace, &exec.spec.permit_ref, &result);
    {
        let (ctx, exec) = (state.ctx.clone(), exec.clone());
        tokio::spawn(async move {
            launcher::cleanup(&ctx.client, &exec).await;
        });
    }
    let note = format!(
        "{:?} in {} ms with {} call(s)",
        result.phase,
        result.duration_ms,
        result.calls.len()
    );
    let type_ = if result.phase == ExecutionPhase::Succeeded {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(&state.ctx.recorder, &exec, type_, status::COMPLETED, note).await;
    tracing::info!(execution = %key, phase = ?result.phase, "result recorded");
    Ok(StatusCode::NO_CONTENT)
}

/// Counts the run's allowed calls on the Permit and carries its remaining rate budget
/// forward, through the usage ledger (batched; see [`crate::usage`]).
fn record_usage(ctx: &Context, namespace: &str, permit: &str, result: &RunResult) {
    let allowed = result
        .calls
        .iter()
        .filter(|c| c.decision == oauth3_crds::CallDecision::Allowed)
        .count();
    ctx.usage.record(
        namespace,
        permit,
        UsageDelta {
            executions: 0,
            calls: i64::try_from(allowed).unwrap_or(i64::MAX),
            rate_budget: result.rate_budget.clone(),
            budget_at: Some(ctx.now()),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_taken_only_from_the_bearer_scheme() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().expect("header"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("header"));
        assert_eq!(bearer(&h), Some("abc"));
    }
}
