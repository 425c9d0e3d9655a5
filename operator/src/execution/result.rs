//! The result endpoint (the "callback"): where sandbox runners POST their result.
//!
//! `POST /v1/results/{namespace}/{name}` with `Authorization: Bearer <token>` and the runner's
//! result JSON. Accepted only when the Execution is `Running`, its launch record's
//! `tokenDigest` equals the SHA-256 of the presented token (compared in constant time), and the
//! result names the Execution's uid. The status is then written once, guarded by the
//! resourceVersion that was checked: a replay, or a result racing the operator's own timeout,
//! finds the Execution no longer `Running` and is refused with 409. The token is never logged
//! or stored; only its digest is.
//!
//! Nothing is read of the body before the token has been checked against the Execution:
//! requests for names that cannot exist are 404, requests without the run's token 401, both
//! answered from the headers alone. The body is then read with a size limit derived from the
//! result caps ([`oauth3_protocol::result::max_result_bytes`]), a time limit, and at most
//! [`MAX_CONCURRENT_BODIES`] at once; connections are bounded by [`crate::conn_guard`].
//!
//! The same router serves the run's oauth2 credential endpoints (refresh lease and immediate
//! write-back, see [`super::credentials`]); a result's `sealedUpdates` are written back once
//! it is recorded.
//!
//! A result that arrives after the deadline ended the Execution `TimedOut` (the callback was
//! unreachable for longer than the runner's retries could wait) still carries calls that
//! happened: it is counted in the Permit's usage and rate budget and its call log is kept,
//! once, while the phase stays `TimedOut`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::api::Api;
use kube::runtime::events::EventType;
use oauth3_crds::{Execution, ExecutionPhase};
use oauth3_protocol::callback::{
    ACTION_LEASE, ACTION_SEALED, CREDENTIALS_PATH, PROXY_CREDENTIALS_PATH, RESULTS_PATH,
    token_matches,
};
use oauth3_protocol::result::max_result_bytes;
use oauth3_protocol::{BundleLimits, RunResult};
use tokio::sync::Semaphore;

use super::status;
use crate::Context;
use crate::conn_guard::{GuardedListener, Limits};
use crate::launcher;
use crate::status_write::{Guarded, publish, write_status};
use crate::usage::UsageDelta;

/// Most result bodies read at once (each at most [`max_body_bytes`]).
pub const MAX_CONCURRENT_BODIES: usize = 16;

/// Longest time a result body may take to arrive once its headers were accepted.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest result body accepted: the largest result a runner launched by this operator can
/// post (it launches every run with the default output and call limits).
pub fn max_body_bytes() -> usize {
    max_result_bytes(&BundleLimits::default())
}

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
    /// Slots for reading result bodies ([`MAX_CONCURRENT_BODIES`]).
    bodies: Semaphore,
}

impl CallbackState {
    /// The endpoint's state over the operator context.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            bodies: Semaphore::new(MAX_CONCURRENT_BODIES),
        }
    }
}

/// The callback router.
pub fn router(state: Arc<CallbackState>) -> Router {
    Router::new()
        .route(
            &format!("{RESULTS_PATH}/{{namespace}}/{{name}}"),
            post(accept_result),
        )
        .route(
            &format!("{CREDENTIALS_PATH}/{{namespace}}/{{name}}/{{secret}}/{ACTION_LEASE}"),
            post(super::credentials::lease),
        )
        .route(
            &format!("{CREDENTIALS_PATH}/{{namespace}}/{{name}}/{{secret}}/{ACTION_SEALED}"),
            post(super::credentials::sealed),
        )
        .route(
            &format!("{PROXY_CREDENTIALS_PATH}/{{namespace}}/{{name}}/{{secret}}/{ACTION_LEASE}"),
            post(super::credentials::proxy_lease),
        )
        .route(
            &format!("{PROXY_CREDENTIALS_PATH}/{{namespace}}/{{name}}/{{secret}}/{ACTION_SEALED}"),
            post(super::credentials::proxy_sealed),
        )
        .route(
            &format!(
                "{}/{{namespace}}/{{name}}",
                oauth3_protocol::proxy::REVIEW_PATH
            ),
            post(crate::proxy::channel::review),
        )
        .route(
            &format!(
                "{}/{{namespace}}/{{name}}",
                oauth3_protocol::proxy::CALLS_PATH
            ),
            post(crate::proxy::channel::calls),
        )
        .route(
            &format!(
                "{}/{{namespace}}/{{name}}",
                oauth3_protocol::standby::STANDBY_PATH
            ),
            post(crate::pool::standby::ask),
        )
        // The body is read by the handler, after the token check, with its own limit.
        .layer(DefaultBodyLimit::disable())
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
    axum::serve(GuardedListener::new(listener, Limits::default()), router)
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
    axum::serve(GuardedListener::new(listener, Limits::default()), router)
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
    /// The body is larger than any result can be.
    #[error("result body larger than {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive in time, or the connection failed while it was read.
    #[error("reading the result body: {0}")]
    BodyRead(String),
    /// Too many results are being read at once; the runner retries.
    #[error("busy: too many results are being received; retry")]
    Busy,
    /// The API server failed.
    #[error("recording the result: {0}")]
    Api(#[from] kube::Error),
}

impl CallbackError {
    /// The HTTP status this error answers with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated | Self::BadToken => StatusCode::UNAUTHORIZED,
            Self::BadResult(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::NotRunning(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Busy | Self::Api(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for CallbackError {
    fn into_response(self) -> Response {
        (self.status(), self.to_string()).into_response()
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether `name` could be the name of an object in `namespace`: a DNS-1123 label namespace
/// and a DNS-1123 subdomain name. Anything else (`%2e%2e`, `..`, upper case) cannot exist.
pub(crate) fn could_exist(namespace: &str, name: &str) -> bool {
    fn label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }
    label(namespace) && name.len() <= 253 && name.split('.').all(label)
}

/// Reads the body once the request is known to come from the run: at most [`max_body_bytes`],
/// within [`BODY_READ_TIMEOUT`], holding one of [`MAX_CONCURRENT_BODIES`] slots.
async fn read_body(state: &CallbackState, body: Body) -> Result<Bytes, CallbackError> {
    read_body_limited(state, body, max_body_bytes()).await
}

/// Reads a body of at most `limit` bytes, as [`read_body`] does.
pub(crate) async fn read_body_limited(
    state: &CallbackState,
    body: Body,
    limit: usize,
) -> Result<Bytes, CallbackError> {
    let _slot = state
        .bodies
        .try_acquire()
        .map_err(|_| CallbackError::Busy)?;
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(CallbackError::BodyRead(format!(
            "not complete after {}s",
            BODY_READ_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) if is_length_limit(&e) => Err(CallbackError::TooLarge(limit)),
        Ok(Err(e)) => Err(CallbackError::BodyRead(e.to_string())),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// How a request that presented the run's token may be recorded.
enum Accepting {
    /// The Execution is `Running` under this launch: the result completes it.
    Result,
    /// The deadline ended it `TimedOut` before the result came; the calls are still counted.
    Late,
}

/// Checks the request against the Execution as read now (pure): `Running` or ended by the
/// deadline under the launch whose token it presents.
fn accepting(exec: &Execution, token: &str, key: &str) -> Result<Accepting, CallbackError> {
    let status = exec.status.clone().unwrap_or_default();
    let launch = status
        .launch
        .as_ref()
        .ok_or_else(|| CallbackError::NotRunning(key.to_owned()))?;
    // The token first: without it, nothing about the run's state is told.
    if !token_matches(token, &launch.token_digest) {
        tracing::warn!(execution = %key, "result refused: token does not match");
        return Err(CallbackError::BadToken);
    }
    let how = match status.phase {
        Some(ExecutionPhase::Running) => Accepting::Result,
        Some(ExecutionPhase::TimedOut)
            if status.reason.as_deref() == Some(status::Reason::DeadlineExceeded.as_str())
                && !status::late_result_counted(exec) =>
        {
            Accepting::Late
        }
        _ => return Err(CallbackError::NotRunning(key.to_owned())),
    };
    Ok(how)
}

/// Checks the request comes from the run of `exec` (its token) and that the run is `Running`.
pub(crate) fn accepting_running(
    exec: &Execution,
    token: &str,
    key: &str,
) -> Result<(), CallbackError> {
    match accepting(exec, token, key)? {
        Accepting::Result => Ok(()),
        Accepting::Late => Err(CallbackError::NotRunning(key.to_owned())),
    }
}

async fn accept_result(
    State(state): State<Arc<CallbackState>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, CallbackError> {
    let key = format!("{namespace}/{name}");
    if !could_exist(&namespace, &name) {
        return Err(CallbackError::NotFound(key));
    }
    let token = bearer(&headers).ok_or(CallbackError::Unauthenticated)?;
    let api: Api<Execution> = Api::namespaced(state.ctx.client.clone(), &namespace);
    let mut body = Some(body);
    let mut parsed: Option<RunResult> = None;
    // The write is guarded by the resourceVersion that was checked. Another writer touching
    // the Execution in between (the controller noting the Pod, a label) makes it 409: read
    // again and re-check, so the result is still written exactly once and only while Running.
    let mut attempt = 0;
    let (exec, result, late) = loop {
        attempt += 1;
        let exec = api
            .get_opt(&name)
            .await?
            .ok_or_else(|| CallbackError::NotFound(key.clone()))?;
        let how = accepting(&exec, token, &key)?;
        let result = match (parsed.take(), body.take()) {
            (Some(r), _) => r,
            (None, Some(body)) => check_result(&read_body(&state, body).await?, &exec, &key)?,
            (None, None) => return Err(CallbackError::NotRunning(key)),
        };
        let value = match how {
            Accepting::Result => status::completed(&exec, &result, state.ctx.now()),
            Accepting::Late => status::late_result(&exec, &result, state.ctx.now()),
        };
        // Claimed before the write, so the controller, seeing the written result with
        // `usageCounted: false`, leaves the counting to this request.
        let uid = exec.metadata.uid.clone().unwrap_or_default();
        let claimed = state.ctx.usage.claim(&uid);
        let written = write_status(&api, &exec, &value, None).await;
        if claimed && !matches!(written, Ok(Guarded::Written)) {
            state.ctx.usage.unclaim(&uid);
        }
        match written? {
            Guarded::Written => break (exec, result, matches!(how, Accepting::Late)),
            Guarded::Conflict if attempt < WRITE_ATTEMPTS => parsed = Some(result),
            Guarded::Conflict => return Err(CallbackError::NotRunning(key)),
            Guarded::Gone => return Err(CallbackError::NotFound(key)),
        }
    };
    super::credentials::write_back_all(&state, &exec, &result.sealed_updates).await;
    let fresh_budget = (!late).then_some(&result.rate_budget);
    record_usage(
        &state.ctx,
        &namespace,
        &exec.spec.permit_ref,
        &name,
        &result.calls,
        fresh_budget,
    );
    if late {
        let note = format!(
            "result arrived after the deadline; its {} call(s) are counted, the phase stays TimedOut",
            result.calls.len()
        );
        publish(
            &state.ctx.recorder,
            &exec,
            EventType::Warning,
            status::LATE_RESULT,
            note,
        )
        .await;
        tracing::info!(execution = %key, "late result counted");
        return Ok(StatusCode::ACCEPTED);
    }
    // The result is recorded: answer the runner now; sandbox clean-up happens in the
    // background.
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

/// Counts a result's allowed `calls` on the Permit through the usage ledger (batched; see
/// [`crate::usage`]), and marks Execution `execution` `usageCounted` once written. With
/// `rate_budget` (the run's own remaining budget, fresh) that budget is carried forward;
/// without it (a late result, or one recounted after a restart, whose budget is stale) the
/// allowed calls are taken off the current budget instead.
pub(crate) fn record_usage(
    ctx: &Context,
    namespace: &str,
    permit: &str,
    execution: &str,
    calls: &[oauth3_crds::CallRecord],
    rate_budget: Option<&std::collections::BTreeMap<String, f64>>,
) {
    let allowed: Vec<_> = calls
        .iter()
        .filter(|c| c.decision == oauth3_crds::CallDecision::Allowed)
        .collect();
    let mut spent: std::collections::BTreeMap<String, f64> = Default::default();
    if rate_budget.is_none() {
        for c in &allowed {
            *spent.entry(c.capability.clone()).or_default() += 1.0;
        }
    }
    ctx.usage.record_result(
        namespace,
        permit,
        execution,
        UsageDelta {
            executions: 0,
            calls: i64::try_from(allowed.len()).unwrap_or(i64::MAX),
            rate_budget: rate_budget.cloned().unwrap_or_default(),
            budget_at: Some(ctx.now()),
            spent,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_exist_are_recognised_without_the_api_server() {
        assert!(could_exist("team-a", "exec-1"));
        assert!(could_exist("team-a", "exec.1.a"));
        for (ns, name) in [
            ("team-a", "%2e%2e"),
            ("team-a", ".."),
            ("team-a", "."),
            ("team-a", "Exec"),
            ("team-a", ""),
            ("", "e"),
            ("team-a", "a..b"),
            ("-a", "e"),
            ("team-a", "e/../x"),
        ] {
            assert!(!could_exist(ns, name), "{ns}/{name}");
        }
        assert!(!could_exist(&"a".repeat(64), "e"));
        assert!(!could_exist("a", &"a".repeat(254)));
    }

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
