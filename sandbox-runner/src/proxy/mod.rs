//! The credential proxy (`oauth3-sandbox-runner serve`): a long-running endpoint that forwards
//! HTTP requests as capability calls of one approved Permit, for clients that do not run code
//! (SDKs, IDEs, the gateway's tools). The URL layout, refusals and review contract are
//! [`oauth3_protocol::proxy`].
//!
//! Per request: refuse when stopping; take the client's token (`Authorization: Bearer` or
//! `X-Api-Key`) and review it ([`auth::ClientAuth`], answers cached by token digest for at most
//! [`oauth3_protocol::proxy::MAX_REVIEW_TTL_SECONDS`]) and require the identity to be one of
//! the approved `spec.proxy.callers`; take one of `maxConcurrentCalls` slots;
//! translate the request into the call it stands for ([`request`]); then the same
//! [`ScopedFetch`] a run uses decides, injects the credential (refreshing oauth2 tokens) and
//! sends it ([`ScopedFetch::forward`]). The upstream's answer is streamed back chunk by chunk
//! through a [`StreamRedactor`]; its headers are redacted; a compressed answer is refused
//! (it could not be redacted). Every call's record, with the caller's identity, is kept for
//! [`Proxy::take_calls`] and handed to the audit hook.
//!
//! The proxy stops on [`Proxy::stop`] (the operator ends the process or deletes the Pod on
//! revocation), at the approval's expiry (`notAfter`) and after `idleTimeout` without a call.
//! Once stopping, new calls get 503 `stopped`; calls in flight get the stop grace to finish,
//! then their streams are cut (an event stream ends with an `event: error` naming the reason,
//! other bodies end with a transport error).

pub mod auth;
pub mod report;
pub mod request;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use oauth3_crds::CallRecord;
use oauth3_protocol::proxy::{
    CallBatch, MAX_REVIEW_TTL_SECONDS, ProxyCall, REFUSAL_HEADER, Refusal, RefusalKind,
    ServeLimits, UPSTREAM_HEADER, parse_target,
};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::fetch::{Forwarded, ScopedFetch};
use crate::host::CapabilityCall;
use crate::redact::{Redactor, StreamRedactor};
use auth::{AuthRefusal, ClientAuth};
use request::{ClientRequest, call_args, is_hop_header, token_of};

/// A response body of the proxy: a refusal, or an upstream's answer streamed.
pub type ProxyBody = BoxBody<Bytes, StreamCut>;

/// Why a streamed body was cut (the client sees a transport error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamCut(String);

/// Why the proxy stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Stopped from outside: the operator ended it (revocation, a changed spec) or a signal.
    Stopped,
    /// The approval expired (`notAfter`).
    Expired,
    /// No call for `idleTimeout`.
    Idle,
}

impl StopReason {
    /// Words for a client and a log.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Stopped => {
                "the proxy was stopped (the Permit was revoked or changed, or the proxy is shutting down)"
            }
            Self::Expired => "the Permit's approval has expired",
            Self::Idle => "the proxy stopped after its idle timeout",
        }
    }
}

/// Settings of a proxy beyond its Permit.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `maxConcurrentCalls` and `idleTimeout`.
    pub limits: ServeLimits,
    /// When the approval expires.
    pub not_after: Option<SystemTime>,
    /// How long calls in flight may go on once the proxy stops.
    pub stop_grace: Duration,
    /// Largest request body read.
    pub max_request_bytes: usize,
    /// The spec digest enforced (reported in call batches).
    pub permit_digest: String,
    /// The identities the owner approved (`spec.proxy.callers`); any other identity is
    /// refused as `forbidden`, whatever the review said. Empty: nobody.
    pub callers: Vec<String>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            limits: ServeLimits::default(),
            not_after: None,
            stop_grace: Duration::from_secs(5),
            max_request_bytes: 4 * 1024 * 1024,
            permit_digest: String::new(),
            callers: Vec::new(),
        }
    }
}

/// Most call records kept between two [`Proxy::take_calls`]; later ones are counted.
pub const MAX_KEPT_CALLS: usize = 10_000;

/// A hook that sees every call record (the audit log line).
pub type AuditHook = Box<dyn Fn(&ProxyCall) + Send + Sync>;

/// A token review's answer and when it was given, kept by token digest.
type Review = (Result<String, AuthRefusal>, Instant);

#[derive(Default)]
struct CallLog {
    calls: VecDeque<ProxyCall>,
    dropped: u64,
}

/// One Permit's proxy. Holds the enforcing [`ScopedFetch`] (and so the plaintext secrets);
/// deliberately not `Debug`.
pub struct Proxy {
    fetch: ScopedFetch,
    redactor: Arc<Redactor>,
    auth: Box<dyn ClientAuth>,
    options: ProxyOptions,
    slots: Arc<Semaphore>,
    stop_tx: watch::Sender<Option<StopReason>>,
    last_activity: Mutex<Instant>,
    reviews: Mutex<HashMap<String, Review>>,
    log: Mutex<CallLog>,
    audit: Option<AuditHook>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Proxy {
    /// A proxy forwarding through `fetch` (built with [`crate::run::scoped_fetch`] from the
    /// serve bundle, without a call log of its own), redacting with `redactor` (the one the
    /// fetch was built with), admitting the clients `auth` accepts.
    pub fn new(
        fetch: ScopedFetch,
        redactor: Arc<Redactor>,
        auth: Box<dyn ClientAuth>,
        options: ProxyOptions,
    ) -> Self {
        let slots = usize::try_from(options.limits.max_concurrent_calls.max(1)).unwrap_or(1);
        Self {
            fetch,
            redactor,
            auth,
            slots: Arc::new(Semaphore::new(slots)),
            options,
            stop_tx: watch::channel(None).0,
            last_activity: Mutex::new(Instant::now()),
            reviews: Mutex::new(HashMap::new()),
            log: Mutex::new(CallLog::default()),
            audit: None,
        }
    }

    /// The same proxy, showing every call record to `hook` as it is made.
    #[must_use]
    pub fn with_audit(mut self, hook: AuditHook) -> Self {
        self.audit = Some(hook);
        self
    }

    /// Stops the proxy for `reason` (the first reason given wins).
    pub fn stop(&self, reason: StopReason) {
        self.stop_tx.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why the proxy stopped, if it has.
    pub fn stopped(&self) -> Option<StopReason> {
        *self.stop_tx.borrow()
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        let max = usize::try_from(self.options.limits.max_concurrent_calls.max(1)).unwrap_or(1);
        max - self.slots.available_permits()
    }

    /// The call records since the last take, oldest first.
    pub fn take_calls(&self) -> CallBatch {
        let mut log = lock(&self.log);
        CallBatch {
            permit_digest: self.options.permit_digest.clone(),
            calls: log.calls.drain(..).collect(),
            dropped: std::mem::take(&mut log.dropped),
        }
    }

    /// Puts back the calls of a batch that could not be reported, before any newer ones (the
    /// oldest are dropped, and counted, beyond [`MAX_KEPT_CALLS`]).
    pub fn requeue(&self, batch: CallBatch) {
        let mut log = lock(&self.log);
        log.dropped += batch.dropped;
        for call in batch.calls.into_iter().rev() {
            if log.calls.len() >= MAX_KEPT_CALLS {
                log.dropped += 1;
            } else {
                log.calls.push_front(call);
            }
        }
    }

    /// Lowers the proxy's rate budget to the Permit's shared one where that is lower.
    pub fn cap_budget(&self, shared: &std::collections::BTreeMap<String, f64>) {
        self.fetch.cap_rate_budget(shared);
    }

    fn note(&self, identity: &str, at_ms: i64, record: &CallRecord) {
        let call = ProxyCall {
            at_ms,
            identity: identity.to_owned(),
            capability: record.capability.clone(),
            method: record.method.clone(),
            url: self.redactor.redact(&record.url),
            status: record.status,
            decision: record.decision,
            reason: record.reason.as_deref().map(|r| self.redactor.redact(r)),
            duration_ms: record.duration_ms,
        };
        if let Some(hook) = &self.audit {
            hook(&call);
        }
        let mut log = lock(&self.log);
        if log.calls.len() >= MAX_KEPT_CALLS {
            log.dropped += 1;
        } else {
            log.calls.push_back(call);
        }
    }

    /// Stops the proxy when its approval has expired or it has been idle too long.
    fn check_deadlines(&self) {
        if self
            .options
            .not_after
            .is_some_and(|t| SystemTime::now() >= t)
        {
            self.stop(StopReason::Expired);
        }
        let idle = Duration::from_secs(self.options.limits.idle_timeout_seconds);
        if self.in_flight() == 0 && lock(&self.last_activity).elapsed() >= idle {
            self.stop(StopReason::Idle);
        }
    }

    fn refusal(
        &self,
        kind: RefusalKind,
        reason: &str,
        capability: Option<&str>,
    ) -> Response<ProxyBody> {
        let body = Refusal {
            error: kind,
            reason: self.redactor.redact(reason),
            capability: capability.map(str::to_owned),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut builder = Response::builder()
            .status(kind.status())
            .header(REFUSAL_HEADER, kind.as_str())
            .header("content-type", "application/json");
        if kind == RefusalKind::Unauthenticated {
            builder = builder.header("www-authenticate", "Bearer");
        }
        builder
            .body(Full::new(Bytes::from(json)).map_err(|e| match e {}).boxed())
            .unwrap_or_else(|_| Response::new(BoxBody::default()))
    }

    /// The identity `token` authenticates, from the cache while its answer is fresh.
    async fn review(&self, token: &str) -> Result<String, AuthRefusal> {
        let key = oauth3_protocol::callback::token_digest(token);
        let ttl = Duration::from_secs(MAX_REVIEW_TTL_SECONDS);
        if let Some((answer, at)) = lock(&self.reviews).get(&key)
            && at.elapsed() < ttl
        {
            return answer.clone();
        }
        let answer = self.auth.review(token).await;
        // A review that could not be made (the operator away) is asked again next time.
        if matches!(&answer, Err(r) if r.kind == RefusalKind::Failed) {
            return answer;
        }
        let mut reviews = lock(&self.reviews);
        reviews.retain(|_, (_, at)| at.elapsed() < ttl);
        reviews.insert(key, (answer.clone(), Instant::now()));
        answer
    }

    /// Answers one client request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let at_ms = now_ms();
        *lock(&self.last_activity) = Instant::now();
        if let Some(reason) = self.stopped() {
            return self.refusal(RefusalKind::Stopped, reason.describe(), None);
        }
        let (parts, body) = req.into_parts();
        let mut headers = Vec::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            let Ok(value) = value.to_str() else {
                return self.refusal(
                    RefusalKind::BadRequest,
                    &format!("header {name} is not visible ASCII text"),
                    None,
                );
            };
            headers.push((name.as_str().to_owned(), value.to_owned()));
        }
        let Some((token_header, token)) = token_of(&headers) else {
            return self.refusal(
                RefusalKind::Unauthenticated,
                "no client token: send a Kubernetes token as `Authorization: Bearer <token>` or `X-Api-Key: <token>`",
                None,
            );
        };
        let identity = match self.review(token).await {
            Ok(identity) => identity,
            Err(refusal) => return self.refusal(refusal.kind, &refusal.reason, None),
        };
        if !self.options.callers.contains(&identity) {
            return self.refusal(
                RefusalKind::Forbidden,
                &format!(
                    "{identity} is not one of the callers the owner approved for this Permit (spec.proxy.callers)"
                ),
                None,
            );
        }
        headers.retain(|(k, _)| k != token_header);
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return self.refusal(
                RefusalKind::Overloaded,
                &format!(
                    "{} calls are in flight, the most this proxy takes (spec.proxy.maxConcurrentCalls); retry later",
                    self.options.limits.max_concurrent_calls
                ),
                None,
            );
        };
        let target = match parse_target(parts.uri.path()) {
            Ok(t) => t,
            Err(reason) => return self.refusal(RefusalKind::BadRequest, &reason, None),
        };
        let capability = target.capability.to_owned();
        let body = match Limited::new(body, self.options.max_request_bytes)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return self.refusal(
                    RefusalKind::BadRequest,
                    &format!(
                        "reading the request body failed (at most {} bytes): {e}",
                        self.options.max_request_bytes
                    ),
                    Some(&capability),
                );
            }
        };
        let shape = self.fetch.policy().call_shape(&capability);
        let client = ClientRequest {
            method: parts.method.as_str(),
            rest: target.rest,
            query: parts.uri.query(),
            headers,
            body: &body,
        };
        let args = match call_args(&capability, shape.as_ref(), &client) {
            Ok(a) => a,
            Err(reason) => {
                return self.refusal(RefusalKind::BadRequest, &reason, Some(&capability));
            }
        };
        let forwarded = self
            .fetch
            .forward(CapabilityCall {
                capability: capability.clone(),
                args,
            })
            .await;
        match forwarded {
            Forwarded::Denied(record) => {
                self.note(&identity, at_ms, &record);
                let reason = record.reason.unwrap_or_default();
                self.refusal(RefusalKind::Policy, &reason, Some(&capability))
            }
            Forwarded::Failed(record) => {
                self.note(&identity, at_ms, &record);
                let reason = record.reason.unwrap_or_default();
                self.refusal(RefusalKind::Failed, &reason, Some(&capability))
            }
            Forwarded::Answered { response, record } => {
                self.note(&identity, at_ms, &record);
                self.stream(&capability, response, slot)
            }
        }
    }

    /// The upstream's answer passed on: status, redacted headers, and the body streamed through
    /// a [`StreamRedactor`] by a task that holds the call's slot until the body ends.
    fn stream(
        self: &Arc<Self>,
        capability: &str,
        mut response: reqwest::Response,
        slot: OwnedSemaphorePermit,
    ) -> Response<ProxyBody> {
        if let Some(encoding) = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .filter(|e| !e.eq_ignore_ascii_case("identity"))
        {
            return self.refusal(
                RefusalKind::Failed,
                &format!(
                    "{capability}: the upstream answered with content-encoding {encoding}, which the proxy cannot redact; not passed on"
                ),
                Some(capability),
            );
        }
        let mut builder = Response::builder()
            .status(response.status().as_u16())
            .header(UPSTREAM_HEADER, "1");
        for (name, value) in response.headers() {
            let lower = name.as_str();
            if is_hop_header(lower) || lower == "content-length" {
                continue;
            }
            let Ok(text) = value.to_str() else {
                continue;
            };
            builder = builder.header(lower, self.redactor.redact(text));
        }
        let event_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, StreamCut>::new(4);
        let proxy = Arc::clone(self);
        let capability = capability.to_owned();
        tokio::spawn(async move {
            let _slot = slot;
            let mut redactor = StreamRedactor::new(Arc::clone(&proxy.redactor));
            let cut = proxy.cut_after_grace();
            tokio::pin!(cut);
            loop {
                tokio::select! {
                    chunk = response.chunk() => match chunk {
                        Ok(Some(chunk)) => {
                            let out = redactor.push(&chunk);
                            if !out.is_empty() && tx.send_data(Bytes::from(out)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let out = redactor.finish();
                            if !out.is_empty() {
                                let _ = tx.send_data(Bytes::from(out)).await;
                            }
                            return;
                        }
                        Err(e) => {
                            let reason = proxy.redactor.redact(&format!(
                                "{capability}: reading the upstream's answer failed: {}",
                                e.without_url()
                            ));
                            tx.abort(StreamCut(reason));
                            return;
                        }
                    },
                    reason = &mut cut => {
                        let reason = format!("{capability}: stream cut: {}", reason.describe());
                        if event_stream {
                            let refusal = Refusal {
                                error: RefusalKind::Stopped,
                                reason: reason.clone(),
                                capability: Some(capability.clone()),
                            };
                            let data = serde_json::to_string(&refusal).unwrap_or_default();
                            let event = format!("event: error\ndata: {data}\n\n");
                            let _ = tx.send_data(Bytes::from(event)).await;
                            drop(tx);
                        } else {
                            tx.abort(StreamCut(reason));
                        }
                        return;
                    }
                }
            }
        });
        builder
            .body(body.boxed())
            .unwrap_or_else(|_| Response::new(BoxBody::default()))
    }

    /// Resolves once the proxy has been stopped and the stop grace has passed.
    async fn cut_after_grace(&self) -> StopReason {
        let mut rx = self.stop_tx.subscribe();
        let reason = loop {
            if let Some(reason) = *rx.borrow_and_update() {
                break reason;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::time::sleep(self.options.stop_grace).await;
        reason
    }
}

/// The TLS acceptor of the proxy's HTTPS endpoint from PEM files (ring, safe protocol
/// versions, HTTP/1.1). The error names the file and what is wrong with it.
///
/// # Errors
/// An unreadable file, no certificate, no key, or a key that does not fit the certificate.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading --tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no CERTIFICATE block",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading --tls-key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS protocol versions: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("--tls-cert and --tls-key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `proxy` on `listener` (over TLS with `tls`, else plain HTTP) until it stops, then
/// waits for calls in flight (at most the stop grace and a second) and returns why it stopped.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<Proxy>,
) -> StopReason {
    let mut stop = proxy.stop_tx.subscribe();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let reason = loop {
        if let Some(reason) = proxy.stopped() {
            break reason;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let proxy = Arc::clone(&proxy);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let proxy = Arc::clone(&proxy);
                        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
            _ = ticker.tick() => proxy.check_deadlines(),
            _ = stop.changed() => {}
        }
    };
    let deadline = Instant::now() + proxy.options.stop_grace + Duration::from_secs(1);
    while proxy.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reason
}
