//! The scoped fetch: the [`CapabilityHost`] that enforces the policy on every call, injects
//! credentials and sends the request.
//!
//! Per call: the call budget (`max_calls`) is checked, the [`Policy`] decides, the rate
//! limiter takes a token, the credential template is filled (a missing secret fails the call
//! before anything is sent), then the request goes out through a client with redirects
//! disabled, no proxy, and a DNS resolver that refuses loopback, private, link-local,
//! unspecified and multicast answers unless the capability's own host is loopback
//! (development). Redirects are followed here: same origin only, re-checked with
//! [`Policy::check_redirect`], at most [`MAX_REDIRECTS`]; the credential is injected again
//! only into a URL the policy allowed.
//!
//! # What a call resolves to
//! - 2xx with a JSON content type (`application/json`, `*+json`): the parsed value;
//! - 2xx text (`text/*`, XML, JavaScript, or no content type and valid UTF-8): a string;
//! - 2xx anything else: `{contentType, base64}`; an empty body: `null`;
//! - non-2xx: an error `"<capability>: upstream returned <status>: <first 512 bytes>"`;
//! - a response larger than `max_response_bytes`: an error.
//!
//! Every secret value is scrubbed (`[REDACTED]`) from every string that leaves here (values,
//! error messages, call records); base64 payloads are returned as received. Every attempted
//! request is recorded as a [`CallRecord`] (one per request sent, plus one per denial); the
//! recorded URL never carries the credential.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use oauth3_crds::{AuthSpec, CallDecision, CallRecord, HttpMethod};
use reqwest::header::{HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::host::{BoxFuture, CallOutcome, CapabilityCall, CapabilityHost};
use crate::policy::{Denial, Policy, PreparedRequest, RateLimiter};

/// Most redirects followed for one call.
pub const MAX_REDIRECTS: usize = 5;
/// How much of a non-2xx body is quoted in the error.
pub const ERROR_BODY_PREFIX: usize = 512;
const REDACTED: &str = "[REDACTED]";

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

/// Whether an address is one a capability on a public host must never reach: loopback,
/// private (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), link-local (169.254/16,
/// fe80::/10), unspecified, multicast, broadcast or reserved; IPv4-mapped and NAT64 IPv6
/// addresses are judged by the IPv4 address they carry.
pub fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return restricted_v4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return restricted_v4(Ipv4Addr::new(a, b, c, d));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

fn restricted_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
}

/// Resolves with the system resolver (or a fixed override) and refuses restricted answers.
struct GuardedResolver {
    allow_private: bool,
    overrides: Arc<Vec<(String, SocketAddr)>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let allow_private = self.allow_private;
        let fixed: Vec<SocketAddr> = self
            .overrides
            .iter()
            .filter(|(h, _)| h.eq_ignore_ascii_case(&host))
            .map(|(_, a)| *a)
            .collect();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = if fixed.is_empty() {
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect()
            } else {
                fixed
            };
            if !allow_private && let Some(bad) = addrs.iter().find(|a| is_restricted(a.ip())) {
                return Err(Box::new(FetchError::AddressRefused {
                    host,
                    addr: bad.ip(),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Fills `{NAME}` placeholders from the secrets; `Err` names the missing secret.
fn render_template(
    template: &str,
    secrets: &BTreeMap<String, Zeroizing<String>>,
) -> Result<Zeroizing<String>, String> {
    let mut out = Zeroizing::new(String::with_capacity(template.len() + 32));
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                let value = secrets.get(name).ok_or_else(|| name.to_owned())?;
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces every secret value (raw and URL-encoded) in `text`.
fn scrub(text: &str, secrets: &[Zeroizing<String>]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.is_empty() && out.contains(s.as_str()) {
            out = out.replace(s.as_str(), REDACTED);
        }
    }
    out
}

fn scrub_value(v: Value, secrets: &[Zeroizing<String>]) -> Value {
    match v {
        Value::String(s) => Value::String(scrub(&s, secrets)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|i| scrub_value(i, secrets)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (scrub(&k, secrets), scrub_value(v, secrets)))
                .collect(),
        ),
        other => other,
    }
}

/// Converts a 2xx response body into the value JavaScript receives.
fn response_value(content_type: Option<&str>, body: &[u8]) -> Result<Value, String> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let essence = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_json = essence == "application/json" || essence.ends_with("+json");
    let is_text = essence.starts_with("text/")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/xml" | "application/javascript" | "application/x-www-form-urlencoded"
        );
    if is_json {
        return serde_json::from_slice(body)
            .map_err(|e| format!("response is not valid JSON: {e}"));
    }
    if is_text || essence.is_empty() {
        if let Ok(s) = std::str::from_utf8(body) {
            return Ok(Value::String(s.to_owned()));
        }
        if is_text {
            return Ok(Value::String(String::from_utf8_lossy(body).into_owned()));
        }
    }
    Ok(json!({
        "contentType": content_type.unwrap_or("application/octet-stream"),
        "base64": base64::engine::general_purpose::STANDARD.encode(body),
    }))
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

/// The method after a redirect: 303 (and 301/302 after POST) become GET without a body;
/// 307/308 keep method and body.
fn method_after_redirect(status: u16, method: HttpMethod) -> (HttpMethod, bool) {
    match (status, method) {
        (303, HttpMethod::HEAD) => (HttpMethod::HEAD, false),
        (303, _) | (301 | 302, HttpMethod::POST) => (HttpMethod::GET, false),
        (301 | 302, m) => (m, m != HttpMethod::GET && m != HttpMethod::HEAD),
        (_, m) => (m, true),
    }
}

/// What one upstream request produced.
enum Sent {
    Redirect(u16, String),
    Done(u16, Option<String>, Vec<u8>),
}

/// The capability host that enforces the Permit on every call. Holds the plaintext secrets;
/// deliberately not `Debug`.
pub struct ScopedFetch {
    policy: Policy,
    secrets: BTreeMap<String, Zeroizing<String>>,
    secret_values: Vec<Zeroizing<String>>,
    max_response_bytes: usize,
    max_calls: usize,
    public_client: reqwest::Client,
    private_client: reqwest::Client,
    limiter: Mutex<RateLimiter>,
    records: Mutex<Vec<CallRecord>>,
    attempts: AtomicUsize,
}

/// The Mozilla root programme's trust anchors compiled into the binary (no files are read:
/// a sandbox trusts the same roots whatever image it runs in, and starts without parsing a
/// certificate directory) plus the certificates of each PEM bundle in `extra_pems`.
///
/// # Errors
/// `(index, reason)` of the first bundle that is not PEM certificates or holds none.
pub fn web_pki_roots_and(extra_pems: &[&[u8]]) -> Result<rustls::RootCertStore, (usize, String)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for (index, pem) in extra_pems.iter().enumerate() {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (index, e.to_string()))?;
        if certs.is_empty() {
            return Err((index, "no CERTIFICATE block".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| (index, e.to_string()))?;
        }
    }
    Ok(roots)
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
    /// rate limiter seeded with `config.rate_budget`.
    pub fn new(
        policy: Policy,
        secrets: BTreeMap<String, Zeroizing<String>>,
        config: FetchConfig,
    ) -> Result<Self, FetchError> {
        let extra: Vec<&[u8]> = config
            .extra_root_certs_pem
            .iter()
            .map(Vec::as_slice)
            .collect();
        let roots = web_pki_roots_and(&extra)
            .map_err(|(index, reason)| FetchError::RootCert { index, reason })?;
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let public_client = build_client(&tls, &config, false)?;
        let private_client = build_client(&tls, &config, true)?;
        let limiter = RateLimiter::new(&policy, &config.rate_budget, Instant::now());
        let mut secret_values: Vec<Zeroizing<String>> = Vec::new();
        for v in secrets.values() {
            secret_values.push(v.clone());
            let encoded: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            if encoded != v.as_str() {
                secret_values.push(Zeroizing::new(encoded));
            }
        }
        // Longest first, so a secret containing another is scrubbed whole.
        secret_values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(Self {
            policy,
            secrets,
            secret_values,
            max_response_bytes: config.max_response_bytes,
            max_calls: config.max_calls,
            public_client,
            private_client,
            limiter: Mutex::new(limiter),
            records: Mutex::new(Vec::new()),
            attempts: AtomicUsize::new(0),
        })
    }

    /// Remaining rate-limit tokens per capability now, to carry over to the next Execution.
    pub fn rate_budget(&self) -> BTreeMap<String, f64> {
        lock(&self.limiter).budget(Instant::now())
    }

    fn record(&self, mut rec: CallRecord) {
        rec.url = scrub(&rec.url, &self.secret_values);
        rec.reason = rec.reason.map(|r| scrub(&r, &self.secret_values));
        lock(&self.records).push(rec);
    }

    fn deny(&self, d: Denial, started: Instant) -> CallOutcome {
        let reason = scrub(&d.reason, &self.secret_values);
        self.record(call_record(
            &d.capability,
            &d.method,
            &d.url,
            None,
            CallDecision::Denied,
            Some(reason.clone()),
            started,
        ));
        CallOutcome::Error(reason)
    }

    fn fail(
        &self,
        req: &PreparedRequest,
        status: Option<u16>,
        reason: String,
        started: Instant,
    ) -> CallOutcome {
        let reason = scrub(&reason, &self.secret_values);
        self.record(call_record(
            &req.capability,
            req.method.as_str(),
            req.url.as_str(),
            status,
            CallDecision::Allowed,
            Some(reason.clone()),
            started,
        ));
        CallOutcome::Error(reason)
    }

    fn denial_for(req: &PreparedRequest, reason: String) -> Denial {
        Denial {
            capability: req.capability.clone(),
            method: req.method.as_str().to_owned(),
            url: req.url.as_str().to_owned(),
            reason,
        }
    }

    async fn run(&self, call: CapabilityCall) -> CallOutcome {
        let started = Instant::now();
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if attempt >= self.max_calls {
            let method = call
                .args
                .first()
                .and_then(Value::as_str)
                .map(str::to_ascii_uppercase)
                .unwrap_or_default();
            return self.deny(
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
            );
        }
        let req = match self.policy.decide(&call.capability, &call.args) {
            Ok(r) => r,
            Err(d) => return self.deny(d, started),
        };
        if let Err(reason) = lock(&self.limiter).try_acquire(&req.capability, Instant::now()) {
            return self.deny(Self::denial_for(&req, reason), started);
        }
        let credential = match req
            .auth
            .as_ref()
            .map(|a| render_template(&a.value, &self.secrets))
        {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(missing)) => {
                return self.deny(
                    Self::denial_for(
                        &req,
                        format!(
                            "secret {missing} needed by {} is not available; nothing was sent",
                            req.capability
                        ),
                    ),
                    started,
                );
            }
        };
        self.follow(req, credential, started).await
    }

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
            let sent = match self.send_once(&req, credential.as_ref()).await {
                Ok(s) => s,
                Err(Err(denial)) => return self.deny(denial, hop_started),
                Err(Ok((status, reason))) => return self.fail(&req, status, reason, hop_started),
            };
            match sent {
                Sent::Redirect(status, location) => {
                    self.record(call_record(
                        &req.capability,
                        req.method.as_str(),
                        req.url.as_str(),
                        Some(status),
                        CallDecision::Allowed,
                        Some(format!("redirect {status}")),
                        hop_started,
                    ));
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return self.deny(
                            Self::denial_for(
                                &req,
                                format!(
                                    "{}: more than {MAX_REDIRECTS} redirects; not followed",
                                    req.capability
                                ),
                            ),
                            Instant::now(),
                        );
                    }
                    let next = match self.policy.check_redirect(&req, &location) {
                        Ok(u) => u,
                        Err(mut d) => {
                            d.url = req
                                .url
                                .join(&location)
                                .map(|u| u.to_string())
                                .unwrap_or_else(|_| location.clone());
                            return self.deny(d, Instant::now());
                        }
                    };
                    let (method, keep_body) = method_after_redirect(status, req.method);
                    if !self.policy.allows_method(&req.capability, method) {
                        return self.deny(
                            Self::denial_for(
                                &req,
                                format!(
                                    "redirect for {} would use method {method}, which it does not allow",
                                    req.capability
                                ),
                            ),
                            Instant::now(),
                        );
                    }
                    req.url = next;
                    req.method = method;
                    if !keep_body {
                        req.body = None;
                        req.content_type = None;
                    }
                }
                Sent::Done(status, content_type, body) => {
                    let ok = (200..300).contains(&status);
                    if !ok {
                        let prefix = &body[..body.len().min(ERROR_BODY_PREFIX)];
                        let reason = format!(
                            "{}: upstream returned {status}: {}",
                            req.capability,
                            String::from_utf8_lossy(prefix)
                        );
                        return self.fail(&req, Some(status), reason, hop_started);
                    }
                    return match response_value(content_type.as_deref(), &body) {
                        Ok(v) => {
                            self.record(call_record(
                                &req.capability,
                                req.method.as_str(),
                                req.url.as_str(),
                                Some(status),
                                CallDecision::Allowed,
                                None,
                                hop_started,
                            ));
                            CallOutcome::Value(scrub_value(v, &self.secret_values))
                        }
                        Err(e) => self.fail(
                            &req,
                            Some(status),
                            format!("{}: {e}", req.capability),
                            hop_started,
                        ),
                    };
                }
            }
        }
    }

    /// Sends one request. `Err(Err(denial))`: refused before or while connecting (address
    /// rules); `Err(Ok((status, reason)))`: the request failed.
    #[allow(clippy::type_complexity)]
    async fn send_once(
        &self,
        req: &PreparedRequest,
        credential: Option<&Zeroizing<String>>,
    ) -> Result<Sent, Result<(Option<u16>, String), Denial>> {
        let cap = req.capability.as_str();
        let allow_private = self.policy.allows_private_addresses(cap);
        let literal = match req.url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !allow_private
            && is_restricted(ip)
        {
            return Err(Err(Self::denial_for(
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
        let mut rb_headers = reqwest::header::HeaderMap::new();
        for (k, v) in &req.headers {
            let name = HeaderName::from_bytes(k.as_bytes());
            let value = HeaderValue::from_str(v);
            match (name, value) {
                (Ok(n), Ok(v)) => {
                    rb_headers.append(n, v);
                }
                _ => {
                    return Err(Err(Self::denial_for(
                        req,
                        format!("header {k} for {cap} is not a valid HTTP header"),
                    )));
                }
            }
        }
        if let Some(ct) = &req.content_type {
            let v = HeaderValue::from_str(ct).map_err(|_| {
                Err(Self::denial_for(
                    req,
                    format!("content type for {cap} is not a valid header value"),
                ))
            })?;
            rb_headers.insert(reqwest::header::CONTENT_TYPE, v);
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
                let name = HeaderName::from_bytes(h.as_bytes());
                let value = HeaderValue::from_str(cred.as_str());
                match (name, value) {
                    (Ok(n), Ok(mut v)) => {
                        v.set_sensitive(true);
                        // Replaces anything of the same name: never merged.
                        rb_headers.insert(n, v);
                    }
                    _ => {
                        return Err(Ok((
                            None,
                            format!(
                                "{cap}: the credential does not form a valid {h} header; nothing was sent"
                            ),
                        )));
                    }
                }
            }
            if let Some(q) = query_param {
                url.query_pairs_mut().append_pair(q, cred.as_str());
            }
        }
        let mut builder = client
            .request(to_reqwest_method(req.method), url)
            .headers(rb_headers);
        if let Some(body) = &req.body {
            builder = builder.body(body.clone());
        }
        let mut resp = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = source {
                    if let Some(refused @ FetchError::AddressRefused { .. }) =
                        s.downcast_ref::<FetchError>()
                    {
                        return Err(Err(Self::denial_for(
                            req,
                            format!("{cap}: {refused}; nothing was sent"),
                        )));
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
                return Err(Ok((None, format!("{cap}: request failed: {chain}"))));
            }
        };
        let status = resp.status().as_u16();
        if resp.status().is_redirection()
            && let Some(loc) = resp.headers().get(reqwest::header::LOCATION)
        {
            let loc = loc.to_str().map(str::to_owned).map_err(|_| {
                Err(Self::denial_for(
                    req,
                    format!("redirect for {cap} refused: Location is not valid text"),
                ))
            })?;
            return Ok(Sent::Redirect(status, loc));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let too_big = || {
            format!(
                "{cap}: response larger than {} bytes; discarded",
                self.max_response_bytes
            )
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_response_bytes as u64)
        {
            return Err(Ok((Some(status), too_big())));
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_response_bytes {
                        return Err(Ok((Some(status), too_big())));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Ok((
                        Some(status),
                        format!("{cap}: reading the response failed: {}", e.without_url()),
                    )));
                }
            }
        }
        Ok(Sent::Done(status, content_type, body))
    }
}

impl CapabilityHost for ScopedFetch {
    fn capabilities(&self) -> Vec<String> {
        self.policy.capability_names()
    }

    fn call(&self, call: CapabilityCall) -> BoxFuture<'_, CallOutcome> {
        Box::pin(self.run(call))
    }

    fn calls(&self) -> Vec<CallRecord> {
        lock(&self.records).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_ranges_cover_private_loopback_link_local_and_metadata() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(
                is_restricted(ip.parse().expect("ip")),
                "{ip} must be restricted"
            );
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!is_restricted(ip.parse().expect("ip")), "{ip} is public");
        }
    }

    #[test]
    fn templates_fill_secrets_and_name_the_missing_one_without_values() {
        let secrets = BTreeMap::from([("TOKEN".to_owned(), Zeroizing::new("s3cr3t".to_owned()))]);
        assert_eq!(
            render_template("Bearer {TOKEN}", &secrets)
                .expect("filled")
                .as_str(),
            "Bearer s3cr3t"
        );
        assert_eq!(
            render_template("{TOKEN}:{OTHER}", &secrets).expect_err("missing"),
            "OTHER"
        );
    }

    #[test]
    fn responses_map_to_json_text_or_base64() {
        assert_eq!(
            response_value(Some("application/json; charset=utf-8"), br#"{"a":1}"#).expect("json"),
            json!({"a": 1})
        );
        assert_eq!(
            response_value(Some("text/plain"), b"hi").expect("text"),
            json!("hi")
        );
        assert_eq!(
            response_value(Some("image/png"), &[0, 159, 146, 150]).expect("binary"),
            json!({"contentType": "image/png", "base64": "AJ+Slg=="})
        );
        assert_eq!(response_value(None, b"").expect("empty"), Value::Null);
        assert!(response_value(Some("application/json"), b"{").is_err());
    }

    #[test]
    fn redirect_methods_follow_http_semantics() {
        assert_eq!(
            method_after_redirect(303, HttpMethod::POST),
            (HttpMethod::GET, false)
        );
        assert_eq!(
            method_after_redirect(302, HttpMethod::POST),
            (HttpMethod::GET, false)
        );
        assert_eq!(
            method_after_redirect(307, HttpMethod::POST),
            (HttpMethod::POST, true)
        );
        assert_eq!(
            method_after_redirect(302, HttpMethod::GET),
            (HttpMethod::GET, false)
        );
    }

    #[test]
    fn scrub_removes_every_secret_occurrence() {
        let s = [Zeroizing::new("sk-1".to_owned())];
        assert_eq!(scrub("a sk-1 b sk-1", &s), "a [REDACTED] b [REDACTED]");
        assert_eq!(
            scrub_value(json!({"sk-1": ["x sk-1"]}), &s),
            json!({"[REDACTED]": ["x [REDACTED]"]})
        );
    }
}
