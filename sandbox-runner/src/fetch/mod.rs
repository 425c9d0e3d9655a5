//! The scoped fetch: the [`CapabilityHost`] that enforces the policy on every call, injects
//! credentials, sends the request and redacts what it hands back.
//!
//! Per call: the call budget (`max_calls`) is checked, the [`Policy`] decides, the rate
//! limiter takes a token, the credential template is filled (a missing secret fails the call
//! before anything is sent, see [`template`]), then the request goes out through a client with
//! redirects disabled, no proxy, and a DNS resolver that refuses loopback, private,
//! link-local, unspecified and multicast answers unless the capability's own host is loopback
//! (development; see [`guard`]). Redirects are followed here: same origin only, re-checked with
//! [`Policy::check_redirect`], at most [`MAX_REDIRECTS`]; the credential is injected again
//! only into a URL the policy allowed (see [`redirect`]).
//!
//! # What a call resolves to
//! - 2xx with a JSON content type (`application/json`, `*+json`): the parsed value;
//! - 2xx text (`text/*`, XML, JavaScript, or no content type and valid UTF-8): a string;
//! - 2xx anything else: `{contentType, base64}`; an empty body: `null`;
//! - non-2xx: an error `"<capability>: upstream returned <status>: <excerpt>"`, the excerpt
//!   being the first 512 bytes of the body after redaction;
//! - a response larger than `max_response_bytes`: an error.
//!
//! Everything that leaves here passes through the run's one [`Redactor`]: values (strings,
//! object keys and numbers, base64 payloads included), error messages and call records. Every
//! attempted request is recorded as a [`CallRecord`] (one per request sent, plus one per
//! denial); the recorded URL never carries the credential.

mod forward;
pub mod guard;
pub mod placeholder;
pub mod redirect;
pub mod response;
pub mod template;
pub mod tls;
mod web;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use oauth3_crds::{AuthSpec, CallDecision, CallRecord, HttpMethod};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use zeroize::Zeroizing;

pub use forward::Forwarded;
pub use guard::is_restricted;
pub use redirect::MAX_REDIRECTS;
pub use response::ERROR_BODY_PREFIX;
pub use tls::web_pki_roots_and;

use crate::host::{BoxFuture, CallOutcome, CapabilityCall, CapabilityHost};
use crate::policy::{Denial, Policy, PreparedRequest, RateLimiter};
use crate::redact::Redactor;
use guard::GuardedResolver;

/// Why a [`ScopedFetch`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// An extra root certificate is not PEM or holds no certificate.
    #[error("parsing extra root certificate {index} failed: {reason}")]
    RootCert {
        /// Position in `extra_root_certs_pem`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("building the TLS configuration failed: {0}")]
    Tls(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed: {0}")]
    Client(String),
    /// Resolving a host gave an address the capability may not reach (raised inside the
    /// resolver, surfaced to the agent as a denial).
    #[error(
        "DNS answer for {host} refused: {addr} is in a loopback, private, link-local or otherwise non-public range"
    )]
    AddressRefused {
        /// The host name looked up.
        host: String,
        /// The refused address.
        addr: IpAddr,
    },
}

/// Limits and trust anchors of a [`ScopedFetch`].
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// PEM root certificates trusted in addition to the built-in web PKI roots.
    pub extra_root_certs_pem: Vec<Vec<u8>>,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (per request, redirects included separately).
    pub request_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
    /// Most calls (allowed or denied) one Execution may attempt.
    pub max_calls: usize,
    /// Rate-limit tokens carried over from earlier Executions.
    pub rate_budget: BTreeMap<String, f64>,
    /// Fixed DNS answers (tests); checked by the same address rules as real answers.
    pub resolve_overrides: Vec<(String, SocketAddr)>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            extra_root_certs_pem: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 10 * 1024 * 1024,
            max_calls: 1000,
            rate_budget: BTreeMap::new(),
            resolve_overrides: Vec::new(),
        }
    }
}

fn call_record(
    capability: &str,
    method: &str,
    url: &str,
    status: Option<u16>,
    decision: CallDecision,
    reason: Option<String>,
    started: Instant,
) -> CallRecord {
    CallRecord {
        capability: capability.to_owned(),
        method: method.to_owned(),
        url: url.to_owned(),
        status: status.map(i32::from),
        decision,
        reason,
        duration_ms: elapsed_ms(started),
    }
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn to_reqwest_method(m: HttpMethod) -> reqwest::Method {
    match m {
        HttpMethod::GET => reqwest::Method::GET,
        HttpMethod::HEAD => reqwest::Method::HEAD,
        HttpMethod::POST => reqwest::Method::POST,
        HttpMethod::PUT => reqwest::Method::PUT,
        HttpMethod::PATCH => reqwest::Method::PATCH,
        HttpMethod::DELETE => reqwest::Method::DELETE,
        HttpMethod::OPTIONS => reqwest::Method::OPTIONS,
    }
}

/// A denial of `req` (its capability, method and canonical URL) for `reason`.
fn denial_for(req: &PreparedRequest, reason: String) -> Denial {
    Denial {
        capability: req.capability.clone(),
        method: req.method.as_str().to_owned(),
        url: req.url.as_str().to_owned(),
        reason,
    }
}

/// A call decided and credentialed, ready to send.
struct Ready {
    req: PreparedRequest,
    credential: Option<Zeroizing<String>>,
}

/// Why a request got no answer: refused before sending, or the transport failed.
enum NotSent {
    /// Refused before anything was sent.
    Refused(Denial),
    /// The request failed.
    Failed {
        /// The status, when the upstream answered.
        status: Option<u16>,
        /// Why.
        reason: String,
    },
}

/// What sending one request produced.
enum SendOutcome {
    /// The upstream answered with a redirect to `location`.
    Redirect {
        /// The 3xx status.
        status: u16,
        /// The `Location` header, as sent.
        location: String,
        /// The response headers (a `fetch()` with `redirect: 'manual'` sees them).
        headers: Box<HeaderMap>,
    },
    /// The upstream answered and the whole body was read.
    Answered {
        /// The status.
        status: u16,
        /// The `Content-Type` header, when it is text.
        content_type: Option<String>,
        /// The body, within `max_response_bytes`.
        body: Vec<u8>,
        /// The response headers (a `fetch()` sees them).
        headers: Box<HeaderMap>,
    },
    /// Refused before anything was sent (address rules, a header that is not valid HTTP).
    Refused(Denial),
    /// The request failed (transport, unusable credential, oversize or unreadable body).
    Failed {
        /// The status, when the upstream answered.
        status: Option<u16>,
        /// Why (no secret: the credential is never in it; redacted again when recorded).
        reason: String,
    },
}

/// The capability host that enforces the Permit on every call. Holds the plaintext secrets;
/// deliberately not `Debug`.
pub struct ScopedFetch {
    policy: Policy,
    secrets: BTreeMap<String, Zeroizing<String>>,
    redactor: Arc<Redactor>,
    max_response_bytes: usize,
    max_calls: usize,
    public_client: reqwest::Client,
    private_client: reqwest::Client,
    limiter: Mutex<RateLimiter>,
    records: Mutex<Vec<CallRecord>>,
    attempts: AtomicUsize,
    placeholders: placeholder::Placeholders,
    environment: BTreeMap<String, String>,
    oauth: Option<Arc<crate::oauth::OAuthCredentials>>,
    /// Whether records are kept for [`CapabilityHost::calls`].
    call_log: bool,
    /// Until when a connection the network refused or that timed out (nothing was sent) is
    /// tried again ([`ScopedFetch::with_connect_grace`]).
    connect_grace_until: Option<Instant>,
}

/// Pause before a connection refused during the connect grace is tried again, for the first
/// [`CONNECT_RETRY_FAST_FOR`] of refusals: a refused connection costs the node nothing, and a
/// node usually enforces a new egress policy within tens of milliseconds, so the first call
/// should go out within a few milliseconds of that. Then doubled up to [`CONNECT_RETRY_MAX`].
const CONNECT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(5);
/// How long refused connections are tried again every [`CONNECT_RETRY_FIRST`].
const CONNECT_RETRY_FAST_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest pause between two connection attempts during the connect grace.
const CONNECT_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether `e` is a connection the network refused, reset or let time out before anything was
/// sent (not a DNS refusal by the address guard, not TLS): what a NetworkPolicy the node has
/// not programmed yet looks like.
fn refused_by_network(e: &reqwest::Error) -> bool {
    if !e.is_connect() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<FetchError>().is_some() {
            return false;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            );
        }
        source = s.source();
    }
    false
}

fn build_client(
    tls: &rustls::ClientConfig,
    config: &FetchConfig,
    allow_private: bool,
) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .no_proxy()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .dns_resolver(GuardedResolver {
            allow_private,
            overrides: Arc::new(config.resolve_overrides.clone()),
        })
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))
}

impl ScopedFetch {
    /// Builds the host: TLS trust (web PKI roots plus `extra_root_certs_pem`), two clients
    /// (public-only answers, and loopback-capable for development capabilities) and the
    /// rate limiter seeded with `config.rate_budget`. `redactor` is the run's one redactor
    /// (built from these `secrets`); everything the host hands back passes through it.
    ///
    /// # Errors
    /// Unusable extra roots, TLS or client set-up failures.
    pub fn new(
        policy: Policy,
        secrets: BTreeMap<String, Zeroizing<String>>,
        redactor: Arc<Redactor>,
        config: FetchConfig,
    ) -> Result<Self, FetchError> {
        let tls = tls::client_config(&config.extra_root_certs_pem)?;
        let public_client = build_client(&tls, &config, false)?;
        let private_client = build_client(&tls, &config, true)?;
        let limiter = RateLimiter::new(&policy, &config.rate_budget, Instant::now());
        let bound = policy.bound_secrets();
        let placeholders = if bound.is_empty() {
            placeholder::Placeholders::none()
        } else {
            placeholder::Placeholders::generate(bound.iter().map(String::as_str))
        };
        let environment = placeholders
            .environment()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Self {
            policy,
            secrets,
            redactor,
            max_response_bytes: config.max_response_bytes,
            max_calls: config.max_calls,
            public_client,
            private_client,
            limiter: Mutex::new(limiter),
            records: Mutex::new(Vec::new()),
            attempts: AtomicUsize::new(0),
            placeholders,
            environment,
            oauth: None,
            call_log: true,
            connect_grace_until: None,
        })
    }

    /// The same host, trying a connection the network refused (or that timed out) again, with
    /// backoff, for `grace` from now: a pool member starts its run right after its Execution's
    /// egress policy was written, and the node may take a moment to enforce it (until then
    /// the member's standby policy refuses the Permit's hosts). Nothing is sent on such a
    /// connection, so trying again changes nothing upstream.
    #[must_use]
    pub fn with_connect_grace(mut self, grace: std::time::Duration) -> Self {
        self.connect_grace_until = Some(Instant::now() + grace);
        self
    }

    /// The same host with the run's oauth2 credentials: a `{NAME}` of one of them (and its
    /// placeholder) is its current access token, refreshed before the call when it is due.
    #[must_use]
    pub fn with_oauth(mut self, oauth: Option<Arc<crate::oauth::OAuthCredentials>>) -> Self {
        if let Some(o) = &oauth {
            // Never the token set itself: until the first call, nothing of it is rendered.
            for name in o.names() {
                self.secrets.remove(name);
            }
        }
        self.oauth = oauth;
        self
    }

    /// The secrets a call to `capability` renders from: the opened secrets plus, for each
    /// oauth2 credential the capability uses, its current access token (refreshed first when
    /// due). The error names the credential and is safe to show.
    async fn call_secrets(
        &self,
        capability: &str,
    ) -> Result<std::borrow::Cow<'_, BTreeMap<String, Zeroizing<String>>>, String> {
        let Some(oauth) = &self.oauth else {
            return Ok(std::borrow::Cow::Borrowed(&self.secrets));
        };
        let used: Vec<String> = oauth
            .names()
            .filter(|n| self.policy.uses_secret(capability, n))
            .map(str::to_owned)
            .collect();
        if used.is_empty() {
            return Ok(std::borrow::Cow::Borrowed(&self.secrets));
        }
        let mut secrets = self.secrets.clone();
        for name in used {
            let token = oauth.access_token(&name).await.map_err(|e| e.to_string())?;
            secrets.insert(name, token);
        }
        Ok(std::borrow::Cow::Owned(secrets))
    }

    /// The same host with the run's arguments in its environment: each top-level arg whose
    /// value is a string, number or boolean, as a string (a bound secret's placeholder wins
    /// over an arg of the same name).
    #[must_use]
    pub fn with_args(mut self, args: &Value) -> Self {
        if let Value::Object(args) = args {
            for (k, v) in args {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                self.environment.entry(k.clone()).or_insert(text);
            }
        }
        self
    }

    /// The compiled policy this host enforces.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Remaining rate-limit tokens per capability now, to carry over to the next Execution.
    pub fn rate_budget(&self) -> BTreeMap<String, f64> {
        lock(&self.limiter).budget(Instant::now())
    }

    /// Lowers the rate budget to `shared` where that is lower (see [`RateLimiter::cap`]).
    pub fn cap_rate_budget(&self, shared: &BTreeMap<String, f64>) {
        lock(&self.limiter).cap(shared, Instant::now());
    }

    /// Redacts `rec`, keeps it in the call log (unless [`ScopedFetch::without_call_log`]) and
    /// returns it.
    fn record(&self, mut rec: CallRecord) -> CallRecord {
        rec.url = self.redactor.redact(&rec.url);
        rec.reason = rec.reason.map(|r| self.redactor.redact(&r));
        if self.call_log {
            lock(&self.records).push(rec.clone());
        }
        rec
    }

    /// Records the denial `d` and returns its record (the reason redacted).
    fn deny_record(&self, d: Denial, started: Instant) -> CallRecord {
        self.record(call_record(
            &d.capability,
            &d.method,
            &d.url,
            None,
            CallDecision::Denied,
            Some(d.reason),
            started,
        ))
    }

    fn deny(&self, d: Denial, started: Instant) -> CallOutcome {
        CallOutcome::Error(self.deny_record(d, started).reason.unwrap_or_default())
    }

    /// The same host without a call log of its own: for a long-running proxy, which reports
    /// each call's record as it happens instead of keeping them all.
    #[must_use]
    pub fn without_call_log(mut self) -> Self {
        self.call_log = false;
        self
    }

    /// Records `req` as allowed (and sent), with the status it got and a note.
    fn record_sent(
        &self,
        req: &PreparedRequest,
        status: Option<u16>,
        reason: Option<String>,
        started: Instant,
    ) -> CallRecord {
        self.record(call_record(
            &req.capability,
            req.method.as_str(),
            req.url.as_str(),
            status,
            CallDecision::Allowed,
            reason,
            started,
        ))
    }

    fn fail(
        &self,
        req: &PreparedRequest,
        status: Option<u16>,
        reason: String,
        started: Instant,
    ) -> CallOutcome {
        let rec = self.record_sent(req, status, Some(reason), started);
        CallOutcome::Error(rec.reason.unwrap_or_default())
    }

    async fn run(&self, call: CapabilityCall) -> CallOutcome {
        let started = Instant::now();
        match self.prepare(&call, started).await {
            Ok(ready) => self.follow(ready.req, ready.credential, started).await,
            Err(denied) => CallOutcome::Error(denied.reason.unwrap_or_default()),
        }
    }

    /// Everything before a call is sent: the call budget, the policy's decision, the
    /// placeholder check, a rate-limit token and the credential filled from the secrets (an
    /// oauth2 token refreshed first when due). `Err` is the recorded denial; nothing was sent.
    async fn prepare(&self, call: &CapabilityCall, started: Instant) -> Result<Ready, CallRecord> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if attempt >= self.max_calls {
            let method = call
                .args
                .first()
                .and_then(Value::as_str)
                .map(str::to_ascii_uppercase)
                .unwrap_or_default();
            return Err(self.deny_record(
                Denial {
                    capability: call.capability.clone(),
                    method,
                    url: String::new(),
                    reason: format!(
                        "call limit of {} calls per execution exceeded; nothing was sent",
                        self.max_calls
                    ),
                },
                started,
            ));
        }
        let req = match self.policy.decide(&call.capability, &call.args) {
            Ok(r) => r,
            Err(d) => return Err(self.deny_record(d, started)),
        };
        let sent = Value::Array(call.args.clone()).to_string();
        if let Err(reason) = self
            .placeholders
            .check_free(&sent, &format!("{}()", call.capability))
        {
            return Err(self.deny_record(denial_for(&req, reason), started));
        }
        if let Err(reason) = lock(&self.limiter).try_acquire(&req.capability, Instant::now()) {
            return Err(self.deny_record(denial_for(&req, reason), started));
        }
        let secrets = match self.call_secrets(&req.capability).await {
            Ok(s) => s,
            Err(reason) => {
                return Err(self.deny_record(
                    denial_for(&req, format!("{reason}; nothing was sent")),
                    started,
                ));
            }
        };
        let credential = match req
            .auth
            .as_ref()
            .map(|a| template::render_template(&a.value, &secrets))
        {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(missing)) => {
                return Err(self.deny_record(
                    denial_for(
                        &req,
                        format!(
                            "secret {} needed by {} is not available; nothing was sent",
                            missing.name, req.capability
                        ),
                    ),
                    started,
                ));
            }
        };
        Ok(Ready { req, credential })
    }

    /// Sends `req` and follows its redirects; the outcome of the last hop.
    async fn follow(
        &self,
        mut req: PreparedRequest,
        credential: Option<Zeroizing<String>>,
        started: Instant,
    ) -> CallOutcome {
        let mut redirects = 0;
        loop {
            let hop_started = if redirects == 0 {
                started
            } else {
                Instant::now()
            };
            match self.send_once(&req, credential.as_ref()).await {
                SendOutcome::Refused(denial) => return self.deny(denial, hop_started),
                SendOutcome::Failed { status, reason } => {
                    return self.fail(&req, status, reason, hop_started);
                }
                SendOutcome::Redirect {
                    status, location, ..
                } => {
                    self.record_sent(
                        &req,
                        Some(status),
                        Some(format!("redirect {status}")),
                        hop_started,
                    );
                    redirects += 1;
                    match redirect::next_hop(&self.policy, &req, status, &location, redirects) {
                        Ok(next) => req = next,
                        Err(denial) => return self.deny(denial, Instant::now()),
                    }
                }
                SendOutcome::Answered {
                    status,
                    content_type,
                    body,
                    ..
                } => return self.answer(&req, status, content_type.as_deref(), &body, hop_started),
            }
        }
    }

    /// What an upstream answer resolves to: the redacted value of a 2xx body, else an error
    /// quoting the redacted excerpt of the body.
    fn answer(
        &self,
        req: &PreparedRequest,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
        started: Instant,
    ) -> CallOutcome {
        if !(200..300).contains(&status) {
            let reason = format!(
                "{}: upstream returned {status}: {}",
                req.capability,
                response::error_excerpt(body, &self.redactor)
            );
            return self.fail(req, Some(status), reason, started);
        }
        match response::response_value(content_type, body) {
            Ok(v) => {
                self.record_sent(req, Some(status), None, started);
                CallOutcome::Value(self.redactor.redact_json(&v))
            }
            Err(e) => self.fail(
                req,
                Some(status),
                format!("{}: {e}", req.capability),
                started,
            ),
        }
    }

    /// The agent's headers and content type of `req`, plus the credential in the header the
    /// capability names and (into `url`) the query parameter it names.
    fn request_headers(
        req: &PreparedRequest,
        credential: Option<&Zeroizing<String>>,
        url: &mut url::Url,
    ) -> Result<HeaderMap, NotSent> {
        let cap = req.capability.as_str();
        let mut headers = HeaderMap::new();
        for (k, v) in &req.headers {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(mut v)) => {
                    if n == reqwest::header::AUTHORIZATION || n == reqwest::header::COOKIE {
                        v.set_sensitive(true);
                    }
                    headers.append(n, v);
                }
                _ => {
                    return Err(NotSent::Refused(denial_for(
                        req,
                        format!("header {k} for {cap} is not a valid HTTP header"),
                    )));
                }
            }
        }
        if let Some(ct) = &req.content_type {
            let v = HeaderValue::from_str(ct).map_err(|_| {
                NotSent::Refused(denial_for(
                    req,
                    format!("content type for {cap} is not a valid header value"),
                ))
            })?;
            headers.insert(reqwest::header::CONTENT_TYPE, v);
        }
        if let (
            Some(AuthSpec {
                header,
                query_param,
                ..
            }),
            Some(cred),
        ) = (&req.auth, credential)
        {
            if let Some(h) = header {
                match (
                    HeaderName::from_bytes(h.as_bytes()),
                    HeaderValue::from_str(cred.as_str()),
                ) {
                    (Ok(n), Ok(mut v)) => {
                        v.set_sensitive(true);
                        // Replaces anything of the same name: never merged.
                        headers.insert(n, v);
                    }
                    _ => {
                        return Err(NotSent::Failed {
                            status: None,
                            reason: format!(
                                "{cap}: the credential does not form a valid {h} header; nothing was sent"
                            ),
                        });
                    }
                }
            }
            if let Some(q) = query_param {
                url.query_pairs_mut().append_pair(q, cred.as_str());
            }
        }
        Ok(headers)
    }

    /// The `Cookie` header for `url` from the cookie-jar secret `jar` (RFC 6265 matching; a
    /// redirect's next hop gets its own), `None` when no cookie goes there. The error never
    /// carries a value.
    fn cookie_header(&self, jar: &str, url: &url::Url) -> Result<Option<HeaderValue>, String> {
        let text = self
            .secrets
            .get(jar)
            .ok_or_else(|| format!("secret {jar} is not available"))?;
        let jar_value = oauth3_protocol::cookies::CookieJar::parse(text).map_err(|e| {
            format!(
                "secret {jar} is not a cookie jar ({})",
                e.split(':').next().unwrap_or("?")
            )
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let Some(header) = jar_value.header_for(url, now) else {
            return Ok(None);
        };
        let mut v = HeaderValue::from_str(&header)
            .map_err(|_| format!("the cookies of {jar} do not form a Cookie header"))?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    /// Sends one request (no redirect followed) and reads its body within the size cap.
    async fn send_once(
        &self,
        req: &PreparedRequest,
        credential: Option<&Zeroizing<String>>,
    ) -> SendOutcome {
        match self.send_head(req, credential).await {
            Ok(resp) => self.read_response(req, resp).await,
            Err(NotSent::Refused(d)) => SendOutcome::Refused(d),
            Err(NotSent::Failed { status, reason }) => SendOutcome::Failed { status, reason },
        }
    }

    /// Sends one request (no redirect followed) with its credential and returns the answer
    /// with its body unread; `Err` when nothing was sent or the transport failed.
    async fn send_head(
        &self,
        req: &PreparedRequest,
        credential: Option<&Zeroizing<String>>,
    ) -> Result<reqwest::Response, NotSent> {
        let cap = req.capability.as_str();
        let allow_private = self.policy.allows_private_addresses(cap, &req.url);
        if let Some(ip) = guard::literal_ip(&req.url)
            && !allow_private
            && is_restricted(ip)
        {
            return Err(NotSent::Refused(denial_for(
                req,
                format!(
                    "{cap}: address {ip} is in a loopback, private, link-local or otherwise non-public range; nothing was sent"
                ),
            )));
        }
        let client = if allow_private {
            &self.private_client
        } else {
            &self.public_client
        };
        let mut url = req.url.clone();
        let mut headers = match Self::request_headers(req, credential, &mut url) {
            Ok(h) => h,
            Err(outcome) => return Err(outcome),
        };
        if let Some(jar) = &req.cookies {
            match self.cookie_header(jar, &url) {
                Ok(Some(v)) => {
                    headers.insert(reqwest::header::COOKIE, v);
                }
                Ok(None) => {}
                Err(reason) => {
                    return Err(NotSent::Failed {
                        status: None,
                        reason: format!("{cap}: {reason}; nothing was sent"),
                    });
                }
            }
        }
        let mut pause = CONNECT_RETRY_FIRST;
        let mut first_refused: Option<Instant> = None;
        loop {
            let mut builder = client
                .request(to_reqwest_method(req.method), url.clone())
                .headers(headers.clone());
            if let Some(body) = &req.body {
                builder = builder.body(body.clone());
            }
            match builder.send().await {
                Ok(response) => return Ok(response),
                Err(e)
                    if refused_by_network(&e)
                        && self
                            .connect_grace_until
                            .is_some_and(|until| Instant::now() + pause < until) =>
                {
                    tokio::time::sleep(pause).await;
                    if first_refused.get_or_insert_with(Instant::now).elapsed()
                        >= CONNECT_RETRY_FAST_FOR
                    {
                        pause = (pause * 2).min(CONNECT_RETRY_MAX);
                    }
                }
                Err(e) => return Err(Self::send_error(req, e)),
            }
        }
    }

    /// A transport failure: a denial when the address guard refused the DNS answer, else
    /// the failure with its error chain (without the URL, which may carry the credential).
    fn send_error(req: &PreparedRequest, e: reqwest::Error) -> NotSent {
        let cap = req.capability.as_str();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(refused @ FetchError::AddressRefused { .. }) =
                s.downcast_ref::<FetchError>()
            {
                return NotSent::Refused(denial_for(
                    req,
                    format!("{cap}: {refused}; nothing was sent"),
                ));
            }
            source = s.source();
        }
        let e = e.without_url();
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        NotSent::Failed {
            status: None,
            reason: format!("{cap}: request failed: {chain}"),
        }
    }

    /// The answer to a sent request: a redirect, or the status and body read within
    /// `max_response_bytes`.
    async fn read_response(
        &self,
        req: &PreparedRequest,
        mut resp: reqwest::Response,
    ) -> SendOutcome {
        let cap = req.capability.as_str();
        let status = resp.status().as_u16();
        if resp.status().is_redirection()
            && let Some(loc) = resp.headers().get(reqwest::header::LOCATION)
        {
            return match loc.to_str() {
                Ok(location) => SendOutcome::Redirect {
                    status,
                    location: location.to_owned(),
                    headers: Box::new(resp.headers().clone()),
                },
                Err(_) => SendOutcome::Refused(denial_for(
                    req,
                    format!("redirect for {cap} refused: Location is not valid text"),
                )),
            };
        }
        let headers = Box::new(resp.headers().clone());
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let too_big = || SendOutcome::Failed {
            status: Some(status),
            reason: format!(
                "{cap}: response larger than {} bytes; discarded",
                self.max_response_bytes
            ),
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_response_bytes as u64)
        {
            return too_big();
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_response_bytes {
                        return too_big();
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return SendOutcome::Failed {
                        status: Some(status),
                        reason: format!("{cap}: reading the response failed: {}", e.without_url()),
                    };
                }
            }
        }
        SendOutcome::Answered {
            status,
            content_type,
            body,
            headers,
        }
    }
}

impl CapabilityHost for ScopedFetch {
    fn capabilities(&self) -> Vec<String> {
        self.policy.function_names()
    }

    fn call(&self, call: CapabilityCall) -> BoxFuture<'_, CallOutcome> {
        Box::pin(self.run(call))
    }

    fn calls(&self) -> Vec<CallRecord> {
        lock(&self.records).clone()
    }

    fn sealed_updates(&self) -> Vec<oauth3_protocol::oauth2::SealedUpdate> {
        self.oauth.as_ref().map(|o| o.updates()).unwrap_or_default()
    }

    fn has_fetch(&self) -> bool {
        self.policy.has_fetch()
    }

    fn fetch(&self, request: Value) -> BoxFuture<'_, CallOutcome> {
        Box::pin(self.run_fetch(request))
    }

    fn environment(&self) -> BTreeMap<String, String> {
        self.environment.clone()
    }
}
