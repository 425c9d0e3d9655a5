//! Calls without code through the gateway: `ANY /proxy/<namespace>/<permit>/<capability>/...`
//! (and `POST /proxy/<namespace>/<permit>/<capability>` for typed endpoints), forwarded to the
//! Permit's credential proxy (`oauth3-sandbox-runner serve`, reached at
//! `status.proxy.endpoint`) as `/<capability>/...` with the query, both bodies streamed.
//!
//! The gateway does not decide calls: the proxy authenticates every client (the client's
//! `Authorization` / `X-Api-Key` header is passed on as is), enforces the Permit and answers
//! refusals itself. The gateway answers only when there is nothing to forward to, in the
//! proxy's refusal format (header [`REFUSAL_HEADER`], JSON [`Refusal`] body), and then only
//! after checking the caller the same way the proxy would (TokenReview, SubjectAccessReview
//! `create` on `permits/proxy` for the Permit, one of `spec.proxy.callers`), so a caller
//! without access learns nothing about the Permit, not even whether it exists:
//!
//! | situation | status | `x-oauth3-refusal` |
//! |---|---|---|
//! | no token, or a token the API server rejects | 401 | `unauthenticated` |
//! | no right to call this Permit's proxy (also when it does not exist) | 403 | `forbidden` |
//! | no such Permit (for a caller with the right) | 404 | `badRequest` |
//! | the Permit does not enable calls without code (`spec.proxy.enabled`) | 409 | `badRequest` |
//! | the Permit is not approved (pending, denied, revoked, expired) | 403 | `policy` |
//! | the proxy stopped for a reason other than idling (revoked, expired, failed, ...) | 503 | `stopped` |
//! | the proxy did not become ready within `--proxy-wake-timeout` | 503 | `stopped` |
//! | the proxy's endpoint does not answer | 502 | `failed` |
//!
//! A proxy stopped for idling (`status.proxy.reason: Idle`) is woken for an authorised caller:
//! the gateway sets the wake annotation ([`ANNOTATION_PROXY_WAKE`]), the operator starts the
//! proxy again, and the call waits (bounded) for `phase: Ready`. A caller without the right
//! wakes nothing.
//!
//! An `https` endpoint is trusted for exactly `status.proxy.certificate` when the operator
//! published one, else through the system roots plus `--proxy-ca-file`; `http` only on
//! loopback. Per call, a Ready proxy costs one cached Permit read and one pooled upstream
//! connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt as _;
use kube::api::{Patch, PatchParams};
use oauth3_crds::constants::{ANNOTATION_PROXY_WAKE, GATEWAY_FIELD_MANAGER};
use oauth3_crds::{Permit, PermitPhase, ProxyPhase};
use oauth3_protocol::proxy::{GATEWAY_PREFIX, REFUSAL_HEADER, Refusal, RefusalKind, parse_target};

use crate::Gateway;
use crate::error::ApiError;
use crate::identity::{Caller, bearer};

/// How long a Permit read is reused for forwarding. Short: a revoked Permit's proxy refuses
/// calls itself, so a stale entry only costs a refused forward; a stopped proxy's entry is
/// dropped at the first failed connection.
const PERMIT_CACHE_TTL: Duration = Duration::from_secs(2);

/// Most Permits kept in the cache.
const PERMIT_CACHE_CAP: usize = 4096;

/// Pause between reads of a Permit being woken.
const WAKE_POLL: Duration = Duration::from_millis(200);

/// Why the proxy forwarding could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxySetupError {
    /// `--proxy-ca-file` cannot be read or holds no usable certificate.
    #[error("--proxy-ca-file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("setting up the proxy client: {0}")]
    Client(String),
}

/// A client whose TLS accepts exactly one server certificate (the handshake signatures are
/// still verified with it): what `status.proxy.certificate` publishes for a Pod proxy's
/// endpoint. Names and validity dates are not checked; the certificate is the identity.
fn pinned_client(pem: &str) -> Result<reqwest::Client, String> {
    use rustls::pki_types::pem::PemObject as _;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        cert,
        provider: provider.clone(),
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())
}

/// Accepts exactly one end-entity certificate.
#[derive(Debug)]
struct Pinned {
    cert: rustls::pki_types::CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Permits by namespace and name, each with when it was read (`None`: there was none).
type PermitCache = HashMap<(String, String), (Instant, Option<Arc<Permit>>)>;

/// The gateway's forwarding to credential proxies: one pooled HTTP client and a short cache
/// of Permits.
pub struct Proxies {
    http: reqwest::Client,
    pinned: Mutex<HashMap<String, reqwest::Client>>,
    permits: Mutex<PermitCache>,
    wake_timeout: Duration,
}

impl Proxies {
    /// Forwarding that trusts the system roots plus the PEM certificates of `ca_file`, and
    /// waits up to `wake_timeout` for a woken proxy.
    ///
    /// # Errors
    /// [`ProxySetupError`] for an unreadable CA file or a client that cannot be built.
    pub fn new(
        ca_file: Option<&std::path::Path>,
        wake_timeout: Duration,
    ) -> Result<Self, ProxySetupError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "reading a system root certificate");
        }
        let (_, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "system root certificates not usable");
        }
        if let Some(path) = ca_file {
            use rustls::pki_types::pem::PemObject as _;
            let bad = |reason: String| ProxySetupError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let mut added = 0;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(bad("no PEM certificate in the file".into()));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxySetupError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| ProxySetupError::Client(e.to_string()))?;
        Ok(Self {
            http,
            pinned: Mutex::new(HashMap::new()),
            permits: Mutex::new(HashMap::new()),
            wake_timeout,
        })
    }

    /// The client that trusts exactly the certificate `pem` (one per certificate, kept).
    fn pinned_client(&self, pem: &str) -> Result<reqwest::Client, String> {
        let mut clients = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(pem) {
            return Ok(c.clone());
        }
        let client = pinned_client(pem)?;
        if clients.len() >= PERMIT_CACHE_CAP {
            clients.clear();
        }
        clients.insert(pem.to_owned(), client.clone());
        Ok(client)
    }

    /// The Permit `ns/name`, from the cache when read within [`PERMIT_CACHE_TTL`].
    pub(crate) async fn cached_permit(
        &self,
        gw: &Gateway,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<Permit>>, ApiError> {
        let key = (ns.to_owned(), name.to_owned());
        {
            let cache = self.permits.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, p)) = cache.get(&key)
                && at.elapsed() < PERMIT_CACHE_TTL
            {
                return Ok(p.clone());
            }
        }
        self.read_permit(gw, ns, name).await
    }

    /// The Permit `ns/name` as the API server has it now (the cache is refreshed).
    async fn read_permit(
        &self,
        gw: &Gateway,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<Permit>>, ApiError> {
        let found = gw
            .store()
            .permits(ns)
            .get_opt(name)
            .await
            .map_err(ApiError::kube(format!("reading Permit {name}")))?
            .map(Arc::new);
        let mut cache = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= PERMIT_CACHE_CAP {
            cache.retain(|_, (at, _)| at.elapsed() < PERMIT_CACHE_TTL);
            if cache.len() >= PERMIT_CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(
            (ns.to_owned(), name.to_owned()),
            (Instant::now(), found.clone()),
        );
        Ok(found)
    }

    fn forget(&self, ns: &str, name: &str) {
        let mut cache = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(&(ns.to_owned(), name.to_owned()));
    }
}

/// A call's place: the Permit and the runner path `/<capability><rest>` (percent-encoded as
/// received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The Permit's namespace.
    pub namespace: String,
    /// The Permit's name.
    pub permit: String,
    /// The capability.
    pub capability: String,
    /// The rest of the path after the capability, with its leading `/` (empty for a typed
    /// endpoint).
    pub rest: String,
}

impl Route {
    /// The runner path of the call: `/<capability><rest>`.
    pub fn runner_path(&self) -> String {
        format!("/{}{}", self.capability, self.rest)
    }
}

/// Splits a gateway path `/proxy/<namespace>/<permit>/<capability>[/<rest>]`. The error says
/// what is wrong.
pub fn parse_route(path: &str) -> Result<Route, String> {
    let layout = "the path must be /proxy/<namespace>/<permit>/<capability>[/<path>]";
    let after = path
        .strip_prefix(GATEWAY_PREFIX)
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(|| layout.to_owned())?;
    let mut parts = after.splitn(3, '/');
    let (Some(namespace), Some(permit), Some(tail)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(layout.to_owned());
    };
    for (what, value) in [("namespace", namespace), ("permit", permit)] {
        if !is_object_name(value) {
            return Err(format!(
                "{what} {value:?} is not a Kubernetes name (lower-case letters, digits, - and .); {layout}"
            ));
        }
    }
    let runner = format!("/{tail}");
    let target = parse_target(&runner).map_err(|e| format!("{e}; {layout}"))?;
    Ok(Route {
        namespace: namespace.to_owned(),
        permit: permit.to_owned(),
        capability: target.capability.to_owned(),
        rest: target.rest.to_owned(),
    })
}

fn is_object_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Where a Ready proxy answers (`status.proxy.endpoint`), and the one certificate its
/// `https` endpoint presents when the operator published it (`status.proxy.certificate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL.
    pub url: String,
    /// The PEM certificate to trust exactly, instead of the roots and `--proxy-ca-file`.
    pub certificate: Option<String>,
}

/// What the gateway does with a call, from the Permit as read (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Forward to this endpoint.
    Forward(Endpoint),
    /// The proxy idled out: wake it (for an authorised caller), then forward.
    Wake,
    /// The proxy is starting (or not yet started): wait for it (for an authorised caller).
    Wait,
    /// Answer with this refusal (to an authorised caller).
    Refuse {
        /// HTTP status.
        status: u16,
        /// The kind.
        kind: RefusalKind,
        /// Why, in words.
        reason: String,
    },
}

/// The [`Plan`] for a call to `ns/name` given the Permit read (`None`: there is none).
pub fn plan(permit: Option<&Permit>, ns: &str, name: &str) -> Plan {
    let Some(permit) = permit else {
        return Plan::Refuse {
            status: 404,
            kind: RefusalKind::BadRequest,
            reason: format!("there is no Permit {name} in namespace {ns}"),
        };
    };
    if !permit.spec.proxy.as_ref().is_some_and(|p| p.enabled) {
        return Plan::Refuse {
            status: 409,
            kind: RefusalKind::BadRequest,
            reason: format!(
                "Permit {ns}/{name} does not allow calls without code (spec.proxy.enabled is not true); run code under it with POST /execute instead"
            ),
        };
    }
    let status = permit.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    if phase != Some(PermitPhase::Approved) {
        let phase = phase.map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}"));
        return Plan::Refuse {
            status: 403,
            kind: RefusalKind::Policy,
            reason: format!(
                "Permit {ns}/{name} is {phase}, not Approved: none of its capabilities may be called"
            ),
        };
    }
    let Some(proxy) = status.and_then(|s| s.proxy.as_ref()) else {
        return Plan::Wait;
    };
    match proxy.phase {
        ProxyPhase::Ready => match &proxy.endpoint {
            Some(endpoint) => Plan::Forward(Endpoint {
                url: endpoint.clone(),
                certificate: proxy.certificate.clone(),
            }),
            None => Plan::Wait,
        },
        ProxyPhase::Starting => Plan::Wait,
        ProxyPhase::Stopped if proxy.reason.as_deref() == Some("Idle") => Plan::Wake,
        ProxyPhase::Stopped => {
            let reason = proxy.reason.as_deref().unwrap_or("Stopped");
            let message = proxy
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            Plan::Refuse {
                status: 503,
                kind: RefusalKind::Stopped,
                reason: format!("the proxy of Permit {ns}/{name} is stopped ({reason}){message}"),
            }
        }
    }
}

/// Checks an endpoint from `status.proxy.endpoint`: `https`, or `http` on a loopback
/// address only. Returns it without a trailing `/`.
pub fn check_endpoint(endpoint: &str) -> Result<String, String> {
    let url = url::Url::parse(endpoint).map_err(|e| format!("{endpoint:?}: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => return Err(format!("{endpoint:?} has no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{endpoint:?} is plain http off loopback; a proxy off this host is reached over https"
            ));
        }
        other => return Err(format!("{endpoint:?}: scheme {other} is not http(s)")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{endpoint:?} has a query or fragment"));
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

/// An answer in the proxy's refusal format.
pub fn refusal(
    status: u16,
    kind: RefusalKind,
    reason: String,
    capability: Option<&str>,
) -> Response {
    let body = Refusal {
        error: kind,
        reason,
        capability: capability.map(str::to_owned),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        HeaderName::from_static(REFUSAL_HEADER),
        HeaderValue::from_static(kind.as_str()),
    );
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The client token of a proxy call: `Authorization: Bearer`, or else `X-Api-Key`.
pub fn client_token(headers: &HeaderMap) -> Option<&str> {
    match headers.get(header::AUTHORIZATION) {
        Some(h) => bearer(h.to_str().ok()),
        None => headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty()),
    }
}

/// `ANY /proxy/<namespace>/<permit>/<capability>/...`: see the module documentation.
pub async fn forward(State(gw): State<Gateway>, request: Request) -> Response {
    let route = match parse_route(request.uri().path()) {
        Ok(r) => r,
        Err(reason) => return refusal(404, RefusalKind::BadRequest, reason, None),
    };
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().map(str::to_owned);
    let call = Call {
        route,
        method: parts.method,
        query,
        headers: parts.headers,
        body: reqwest::Body::wrap_stream(body.into_data_stream()),
    };
    call_proxy(&gw, call).await
}

/// One call to a Permit's proxy: where, and the request as the client made it.
pub struct Call {
    /// The Permit and runner path.
    pub route: Route,
    /// The method.
    pub method: Method,
    /// The query, without `?`.
    pub query: Option<String>,
    /// The client's headers (hop-by-hop ones are dropped when forwarded).
    pub headers: HeaderMap,
    /// The body, streamed.
    pub body: reqwest::Body,
}

/// Forwards `call` to its Permit's proxy (waking it first when it idled out), or answers with
/// the refusal the module documentation lists.
pub async fn call_proxy(gw: &Gateway, call: Call) -> Response {
    let proxies = gw.proxies();
    let (ns, name) = (call.route.namespace.clone(), call.route.permit.clone());
    let capability = call.route.capability.clone();
    let permit = match proxies.cached_permit(gw, &ns, &name).await {
        Ok(p) => p,
        Err(e) => return failed(&e, Some(&capability)),
    };
    let endpoint = match plan(permit.as_deref(), &ns, &name) {
        Plan::Forward(endpoint) => endpoint,
        Plan::Refuse {
            status,
            kind,
            reason,
        } => {
            if let Err(denied) = authorise(gw, &call.headers, &ns, &name, permit.as_deref()).await {
                return denied;
            }
            return refusal(status, kind, reason, Some(&capability));
        }
        Plan::Wake | Plan::Wait => {
            if let Err(denied) = authorise(gw, &call.headers, &ns, &name, permit.as_deref()).await {
                return denied;
            }
            match wake_and_wait(gw, &ns, &name).await {
                Ok(endpoint) => endpoint,
                Err(answer) => return answer,
            }
        }
    };
    send(gw, &endpoint, call).await
}

fn failed(e: &ApiError, capability: Option<&str>) -> Response {
    tracing::warn!(error = %e, "proxy call");
    refusal(502, RefusalKind::Failed, e.to_string(), capability)
}

/// Checks the caller as the proxy would: an accepted token, `create` on `permits/proxy` for
/// this Permit, and (when the Permit exists) one of its `spec.proxy.callers`.
async fn authorise(
    gw: &Gateway,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
    permit: Option<&Permit>,
) -> Result<Caller, Response> {
    let Some(token) = client_token(headers) else {
        return Err(refusal(
            401,
            RefusalKind::Unauthenticated,
            "no token: send a Kubernetes token as Authorization: Bearer <token> or X-Api-Key: <token>".into(),
            None,
        ));
    };
    let caller = match gw.identity().authenticate(token, Some(ns)).await {
        Ok(c) => c,
        Err(ApiError::Unauthorized(reason)) => {
            return Err(refusal(401, RefusalKind::Unauthenticated, reason, None));
        }
        Err(e) => return Err(failed(&e, None)),
    };
    let allowed = match gw.identity().may_call_proxy(&caller, name).await {
        Ok(yes) => yes,
        Err(e) => return Err(failed(&e, None)),
    };
    let listed = permit.is_none_or(|p| {
        p.spec
            .proxy
            .as_ref()
            .is_some_and(|proxy| proxy.callers.contains(&caller.user))
            || !p.spec.proxy.as_ref().is_some_and(|proxy| proxy.enabled)
    });
    if allowed && listed {
        Ok(caller)
    } else {
        Err(refusal(
            403,
            RefusalKind::Forbidden,
            format!(
                "{} may not call the proxy of Permit {ns}/{name}: that needs create on permits/proxy for it (RBAC) and to be one of its spec.proxy.callers",
                caller.user
            ),
            None,
        ))
    }
}

/// Sets the wake annotation when the proxy idled out, then reads the Permit until its proxy
/// is Ready (up to `--proxy-wake-timeout`). Returns the endpoint.
async fn wake_and_wait(gw: &Gateway, ns: &str, name: &str) -> Result<Endpoint, Response> {
    let proxies = gw.proxies();
    let deadline = Instant::now() + proxies.wake_timeout;
    let mut woken = false;
    loop {
        let permit = proxies
            .read_permit(gw, ns, name)
            .await
            .map_err(|e| failed(&e, None))?;
        match plan(permit.as_deref(), ns, name) {
            Plan::Forward(endpoint) => return Ok(endpoint),
            Plan::Refuse {
                status,
                kind,
                reason,
            } => return Err(refusal(status, kind, reason, None)),
            Plan::Wake if !woken => {
                wake(gw, ns, name).await.map_err(|e| failed(&e, None))?;
                woken = true;
            }
            Plan::Wake | Plan::Wait => {}
        }
        if Instant::now() >= deadline {
            proxies.forget(ns, name);
            return Err(refusal(
                503,
                RefusalKind::Stopped,
                format!(
                    "the proxy of Permit {ns}/{name} did not become ready within {}s; try again",
                    proxies.wake_timeout.as_secs()
                ),
                None,
            ));
        }
        tokio::time::sleep(WAKE_POLL).await;
    }
}

/// Asks the operator to start an idle-stopped proxy again: the wake annotation set to now
/// (later than `status.proxy.stoppedAt`).
async fn wake(gw: &Gateway, ns: &str, name: &str) -> Result<(), ApiError> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION_PROXY_WAKE: now}}});
    let pp = PatchParams {
        field_manager: Some(GATEWAY_FIELD_MANAGER.into()),
        ..Default::default()
    };
    gw.store()
        .permits(ns)
        .patch(name, &pp, &Patch::Merge(&patch))
        .await
        .map_err(ApiError::kube(format!("waking the proxy of Permit {name}")))?;
    tracing::info!(namespace = ns, permit = name, "woke an idle proxy");
    Ok(())
}

/// Headers that belong to one connection and are never forwarded (RFC 9110 7.6.1), plus the
/// ones the client connection sets itself.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sends `call` to `endpoint` and streams the answer back as it comes.
async fn send(gw: &Gateway, target: &Endpoint, call: Call) -> Response {
    let Call {
        route,
        method,
        query,
        mut headers,
        body,
    } = call;
    let endpoint = match check_endpoint(&target.url) {
        Ok(e) => e,
        Err(reason) => {
            return refusal(
                502,
                RefusalKind::Failed,
                format!(
                    "status.proxy.endpoint of Permit {}/{}: {reason}",
                    route.namespace, route.permit
                ),
                Some(&route.capability),
            );
        }
    };
    let mut url = format!("{endpoint}{}", route.runner_path());
    if let Some(q) = query {
        url.push('?');
        url.push_str(&q);
    }
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    let http = match &target.certificate {
        None => gw.proxies().http.clone(),
        Some(pem) => match gw.proxies().pinned_client(pem) {
            Ok(c) => c,
            Err(reason) => {
                return refusal(
                    502,
                    RefusalKind::Failed,
                    format!(
                        "status.proxy.certificate of Permit {}/{}: {reason}",
                        route.namespace, route.permit
                    ),
                    Some(&route.capability),
                );
            }
        },
    };
    let sent = http
        .request(method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match sent {
        Ok(r) => r,
        Err(e) => {
            gw.proxies().forget(&route.namespace, &route.permit);
            return refusal(
                502,
                RefusalKind::Failed,
                format!(
                    "the proxy of Permit {}/{} did not answer: {}",
                    route.namespace,
                    route.permit,
                    e.without_url()
                ),
                Some(&route.capability),
            );
        }
    };
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    strip_hop_by_hop(&mut headers);
    let stream = upstream.bytes_stream().map_err(std::io::Error::other);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(fields: serde_json::Value) -> Permit {
        let mut doc = serde_json::json!({
            "apiVersion": "oauth3.dev/v1alpha1", "kind": "Permit",
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"description": "d", "secrets": [], "capabilities": [],
                     "proxy": {"enabled": true, "callers": ["agent"]}},
        });
        for (k, v) in fields.as_object().expect("object") {
            doc[k] = v.clone();
        }
        serde_json::from_value(doc).expect("permit")
    }

    #[test]
    fn routes_split_namespace_permit_capability_and_rest() {
        let r = parse_route("/proxy/team-a/openai/chat/v1/chat%2Fcompletions").expect("ok");
        assert_eq!(r.namespace, "team-a");
        assert_eq!(r.permit, "openai");
        assert_eq!(r.runner_path(), "/chat/v1/chat%2Fcompletions");
        let typed = parse_route("/proxy/team-a/gh/createIssue").expect("ok");
        assert_eq!(typed.rest, "");
        for bad in [
            "/proxy/team-a/openai",
            "/proxy/team-a/openai/",
            "/proxy/Team/openai/chat",
            "/proxy//openai/chat",
            "/proxy/a/b/c%2e/x",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
        assert!(
            parse_route("/proxy/n/p/")
                .expect_err("refused")
                .contains("/proxy/<namespace>/<permit>/<capability>")
        );
    }

    #[test]
    fn the_plan_follows_the_permit_and_its_proxy() {
        assert!(matches!(
            plan(None, "n", "p"),
            Plan::Refuse { status: 404, .. }
        ));
        let off = permit(
            serde_json::json!({"spec": {"description": "d", "secrets": [],
            "capabilities": []}}),
        );
        assert!(matches!(
            plan(Some(&off), "n", "p"),
            Plan::Refuse { status: 409, .. }
        ));
        let pending = permit(serde_json::json!({}));
        let Plan::Refuse {
            status,
            kind,
            reason,
        } = plan(Some(&pending), "n", "p")
        else {
            panic!("refused");
        };
        assert_eq!((status, kind), (403, RefusalKind::Policy));
        assert!(reason.contains("Pending, not Approved"), "{reason}");
        let with = |proxy: serde_json::Value| {
            permit(serde_json::json!({"status": {"phase": "Approved", "proxy": proxy}}))
        };
        assert_eq!(
            plan(
                Some(&with(
                    serde_json::json!({"phase": "Ready", "endpoint": "http://127.0.0.1:1"})
                )),
                "n",
                "p"
            ),
            Plan::Forward(Endpoint {
                url: "http://127.0.0.1:1".into(),
                certificate: None
            })
        );
        assert_eq!(
            plan(
                Some(&with(
                    serde_json::json!({"phase": "Stopped", "reason": "Idle"})
                )),
                "n",
                "p"
            ),
            Plan::Wake
        );
        assert_eq!(
            plan(
                Some(&with(serde_json::json!({"phase": "Starting"}))),
                "n",
                "p"
            ),
            Plan::Wait
        );
        let Plan::Refuse {
            status,
            kind,
            reason,
        } = plan(
            Some(&with(
                serde_json::json!({"phase": "Stopped", "reason": "Revoked",
                "message": "the owner revoked the Permit"}),
            )),
            "n",
            "p",
        )
        else {
            panic!("refused");
        };
        assert_eq!((status, kind), (503, RefusalKind::Stopped));
        assert!(reason.contains("(Revoked): the owner revoked"), "{reason}");
    }

    #[test]
    fn endpoints_are_https_or_loopback_http() {
        assert_eq!(
            check_endpoint("http://127.0.0.1:8443/").expect("ok"),
            "http://127.0.0.1:8443"
        );
        assert!(check_endpoint("https://oauth3-proxy-p.n.svc:8443").is_ok());
        assert!(
            check_endpoint("http://oauth3-proxy-p.n.svc:8443")
                .expect_err("refused")
                .contains("plain http off loopback")
        );
        assert!(check_endpoint("ftp://127.0.0.1").is_err());
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_credentials_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["authorization", "x-api-key"]);
    }

    #[test]
    fn the_client_token_is_the_bearer_or_else_the_api_key() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k"));
        assert_eq!(client_token(&h), Some("k"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        assert_eq!(client_token(&h), Some("t"));
        h.insert("authorization", HeaderValue::from_static("Basic t"));
        assert_eq!(client_token(&h), None);
    }

    #[test]
    fn refusals_carry_the_header_and_the_json_body() {
        let r = refusal(404, RefusalKind::BadRequest, "no".into(), Some("c"));
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()[REFUSAL_HEADER], "badRequest");
    }
}
