//! The credential proxy over real sockets: a proxy on 127.0.0.1 (HTTPS), a real HTTP client
//! that sends paths exactly as written, and recording HTTPS upstreams. Every attack class of
//! the scoped-fetch suite is replayed through the proxy (each refused as a policy denial with
//! nothing reaching the upstream and no secret in the answer); streams arrive as they are sent
//! and are redacted across chunks; unknown tokens are refused; a stop cuts streams in flight.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use oauth3_crds::{CallDecision, PermitSpec};
use oauth3_protocol::proxy::{
    ProxyCall, REFUSAL_HEADER, Refusal, RefusalKind, ServeLimits, UPSTREAM_HEADER,
};
use oauth3_sandbox_runner::fetch::{FetchConfig, ScopedFetch};
use oauth3_sandbox_runner::policy::Policy;
use oauth3_sandbox_runner::proxy::auth::TokenFile;
use oauth3_sandbox_runner::proxy::{Proxy, ProxyOptions, StopReason, serve};
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_test_support::Upstream;
use oauth3_test_support::sse::EventStream;
use oauth3_test_support::upstream::test_tls;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

const SECRET: &str = "sk-test-7f3a9c";
/// The client's Kubernetes token: accepted by the proxy, never sent upstream.
const CLIENT_TOKEN: &str = "eyJhbGciOi.client-token.sig";
const IDENTITY: &str = "system:serviceaccount:agents:coder";
/// A token the review accepts for an identity the owner did not approve as a caller.
const OTHER_TOKEN: &str = "eyJhbGciOi.other-token.sig";

fn permit(origin: &str) -> PermitSpec {
    serde_json::from_value(json!({
        "description": "proxy tests",
        "secrets": ["API_TOKEN", "OTHER_TOKEN"],
        "capabilities": [{
            "name": "api",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/items", "/items/*", "/echo-auth", "/echo-header", "/echo-error",
                      "/redirect", "/missing", "/stream"],
            "methods": ["GET", "POST"],
            "query": {"allow": ["q", "to", "pad"]},
            "body": {"allowKeys": ["title", "meta.tag"], "denyKeys": ["meta.tag.admin"], "maxBytes": 256},
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }, {
            "name": "limited",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/items"],
            "methods": ["GET"],
            "rateLimit": {"requests": 2, "perSeconds": 3600},
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }, {
            "name": "needsOther",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/items"],
            "methods": ["GET"],
            "auth": {"header": "X-Api-Key", "value": "{API_TOKEN}:{OTHER_TOKEN}"}
        }, {
            "name": "keyed",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/echo-auth"],
            "methods": ["GET"],
            "auth": {"header": "X-Api-Key", "value": "{API_TOKEN}"}
        }, {
            "name": "typedItem",
            "endpoint": format!("{origin}/v1/items/{{id}}"),
            "method": "GET",
            "params": {"id": {"in": "path"}},
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }, {
            "name": "linkLocal",
            "baseUrl": "https://169.254.169.254/latest",
            "paths": ["/**"],
            "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }]
    }))
    .expect("valid permit")
}

/// A proxy serving on 127.0.0.1 over TLS, and what a client needs to reach it.
struct Harness {
    proxy: Arc<Proxy>,
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    audit: Arc<Mutex<Vec<ProxyCall>>>,
    stopped: tokio::task::JoinHandle<StopReason>,
}

async fn start_proxy(
    origin: &str,
    upstream_ca: &[u8],
    tweak: impl FnOnce(&mut ProxyOptions),
) -> Harness {
    let policy = Policy::compile(&permit(origin)).expect("policy compiles");
    let secrets = BTreeMap::from([("API_TOKEN".to_owned(), Zeroizing::new(SECRET.to_owned()))]);
    let redactor = Arc::new(Redactor::for_secrets(&secrets));
    let config = FetchConfig {
        extra_root_certs_pem: vec![upstream_ca.to_vec()],
        max_calls: usize::MAX,
        ..FetchConfig::default()
    };
    let fetch = ScopedFetch::new(policy, secrets, Arc::clone(&redactor), config)
        .expect("fetch builds")
        .without_call_log();
    let tokens = TokenFile::parse(&format!(
        "{}\n{}",
        TokenFile::line_for(CLIENT_TOKEN, IDENTITY),
        TokenFile::line_for(OTHER_TOKEN, "system:serviceaccount:agents:other")
    ))
    .expect("tokens");
    let mut options = ProxyOptions {
        stop_grace: Duration::ZERO,
        callers: vec![IDENTITY.to_owned()],
        ..ProxyOptions::default()
    };
    tweak(&mut options);
    let audit = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&audit);
    let proxy = Arc::new(
        Proxy::new(fetch, redactor, Box::new(tokens), options).with_audit(Box::new(move |c| {
            seen.lock().expect("audit").push(c.clone());
        })),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (acceptor, ca_pem) = test_tls(&["127.0.0.1"]);
    let stopped = tokio::spawn(serve(listener, Some(acceptor), Arc::clone(&proxy)));
    Harness {
        proxy,
        addr,
        ca_pem,
        audit,
        stopped,
    }
}

/// An answer as the client saw it.
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Answer {
    fn refusal(&self) -> Refusal {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    /// Neither the secret, a fragment of it, nor the client's token anywhere in the answer.
    fn assert_clean(&self) {
        let shown = format!("{:?} {}", self.headers, self.body);
        assert!(!shown.contains(SECRET), "secret leaked: {shown}");
        assert!(!shown.contains("7f3a9c"), "secret fragment leaked: {shown}");
        assert!(
            !shown.contains(CLIENT_TOKEN),
            "client token echoed: {shown}"
        );
    }
}

impl Harness {
    /// A fresh HTTPS connection to the proxy.
    async fn connect(&self) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&self.ca_pem) {
            roots.add(cert.expect("ca")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
            .await
            .expect("tls");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender
    }

    /// Sends one request with the path exactly as written (no client-side normalisation)
    /// on `sender` and returns the response with its body unread.
    async fn send_on(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> hyper::Response<Incoming> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        sender.send_request(req).await.expect("response")
    }

    /// [`Harness::send_on`] a new connection.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> hyper::Response<Incoming> {
        let mut sender = self.connect().await;
        self.send_on(&mut sender, method, path, headers, body).await
    }

    /// [`Harness::send`] with the client token, read to the end.
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let bearer = format!("Bearer {CLIENT_TOKEN}");
        let mut all = vec![("authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        self.call_as(method, path, &all, body).await
    }

    async fn call_as(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let resp = self.send(method, path, headers, body).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    fn audit(&self) -> Vec<ProxyCall> {
        self.audit.lock().expect("audit").clone()
    }
}

/// `method path` is refused as a policy denial naming `reason_has`, nothing reached the
/// upstream, no secret is in the answer, and the denial is on the audit record.
async fn assert_denied_unsent(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    reason_has: &str,
) {
    let up = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |_| {}).await;
    let answer = h.call(method, path, headers, body).await;
    assert_eq!(answer.status, 403, "{method} {path}: {}", answer.body);
    assert_eq!(
        answer
            .headers
            .get(REFUSAL_HEADER)
            .map(|v| v.to_str().unwrap_or("")),
        Some("policy"),
        "{method} {path}: a policy denial says so"
    );
    assert!(answer.headers.get(UPSTREAM_HEADER).is_none());
    let refusal = answer.refusal();
    assert_eq!(refusal.error, RefusalKind::Policy);
    assert!(
        refusal.reason.contains(reason_has),
        "{method} {path}: reason {:?} should contain {reason_has:?}",
        refusal.reason
    );
    answer.assert_clean();
    up.assert_nothing_received(&format!("{method} {path}"));
    let audit = h.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].decision, CallDecision::Denied);
    assert_eq!(audit[0].identity, IDENTITY);
}

#[tokio::test]
async fn an_allowed_call_arrives_with_the_credential_and_without_the_client_token() {
    let up = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |_| {}).await;
    let answer = h
        .call(
            "POST",
            "/api/items?q=x+y",
            &[("content-type", "application/json"), ("x-request-id", "r1")],
            r#"{"title":"t"}"#,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"path": "/v1/items", "method": "POST"})
    );
    assert!(answer.headers.get(UPSTREAM_HEADER).is_some());
    assert!(answer.headers.get(REFUSAL_HEADER).is_none());
    let got = up.assert_received(1, "one allowed call");
    let r = &got[0];
    assert_eq!(r.path_and_query, "/v1/items?q=x+y");
    assert_eq!(
        r.header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );
    assert_eq!(r.header_values("x-request-id"), ["r1"]);
    assert_eq!(r.body, br#"{"title":"t"}"#, "the body exactly as sent");
    for (k, v) in &r.headers {
        assert!(
            !v.contains(CLIENT_TOKEN),
            "the client token reached the upstream in {k}"
        );
    }
    let audit = h.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].identity, IDENTITY);
    assert_eq!(audit[0].decision, CallDecision::Allowed);
    assert_eq!(audit[0].status, Some(200));
    assert_eq!(h.proxy.take_calls().calls.len(), 1);
    assert!(h.proxy.take_calls().calls.is_empty(), "taken once");
}

#[tokio::test]
async fn a_token_sent_as_x_api_key_is_accepted_and_removed() {
    let up = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |_| {}).await;
    let answer = h
        .call_as(
            "GET",
            "/keyed/echo-auth",
            &[("x-api-key", CLIENT_TOKEN)],
            "",
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let got = up.assert_received(1, "one call");
    assert_eq!(
        got[0].header_values("x-api-key"),
        [SECRET],
        "the credential replaced it"
    );
}

#[tokio::test]
async fn unknown_missing_and_malformed_tokens_are_refused_and_nothing_is_sent() {
    let up = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |_| {}).await;
    for headers in [
        vec![("authorization", "Bearer not-the-token")],
        vec![],
        vec![
            ("authorization", "Basic dXNlcjpwdw=="),
            ("x-api-key", CLIENT_TOKEN),
        ],
    ] {
        let answer = h.call_as("GET", "/api/items", &headers, "").await;
        assert_eq!(answer.status, 401, "{headers:?}: {}", answer.body);
        assert_eq!(answer.refusal().error, RefusalKind::Unauthenticated);
        assert_eq!(
            answer
                .headers
                .get(REFUSAL_HEADER)
                .map(|v| v.to_str().unwrap_or("")),
            Some("unauthenticated")
        );
        assert!(!answer.body.contains("not-the-token"), "{}", answer.body);
    }
    up.assert_nothing_received("unauthenticated clients");
    assert!(h.audit().is_empty(), "no call was made");
}

#[tokio::test]
async fn an_identity_the_owner_did_not_approve_is_forbidden_and_nothing_is_sent() {
    let up = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |_| {}).await;
    let bearer = format!("Bearer {OTHER_TOKEN}");
    let answer = h
        .call_as("GET", "/api/items", &[("authorization", &bearer)], "")
        .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    let refusal = answer.refusal();
    assert_eq!(refusal.error, RefusalKind::Forbidden);
    assert!(
        refusal.reason.contains("spec.proxy.callers"),
        "{}",
        refusal.reason
    );
    up.assert_nothing_received("a caller the owner did not approve");
}

#[tokio::test]
async fn path_traversal_raw_and_encoded_is_denied_unsent() {
    assert_denied_unsent(
        "GET",
        "/api/items/../../admin",
        &[],
        "",
        ". and .. segments",
    )
    .await;
    assert_denied_unsent(
        "GET",
        "/api/items/%2e%2e/%2E%2E/admin",
        &[],
        "",
        ". and .. segments",
    )
    .await;
}

#[tokio::test]
async fn encoded_slashes_and_backslashes_are_denied_unsent() {
    assert_denied_unsent("GET", "/api/items/..%2fadmin", &[], "", "%2f").await;
    assert_denied_unsent("GET", "/api/items/a%2Fb", &[], "", "%2f").await;
    assert_denied_unsent("GET", "/api/items/%5c..%5cadmin", &[], "", "backslash").await;
}

#[tokio::test]
async fn scheme_relative_targets_are_denied_unsent() {
    assert_denied_unsent(
        "GET",
        "/api//evil.example/v1/items",
        &[],
        "",
        "scheme-relative",
    )
    .await;
}

#[tokio::test]
async fn typed_path_values_stay_in_their_segment() {
    let up = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |_| {}).await;
    let answer = h
        .call("POST", "/typedItem", &[], r#"{"id": "a/../../admin"}"#)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        up.requests()[0].path_and_query,
        "/v1/items/a%2F..%2F..%2Fadmin"
    );
    assert_denied_unsent(
        "POST",
        "/typedItem",
        &[],
        r#"{"id": ".."}"#,
        "must not be empty, . or ..",
    )
    .await;
}

#[tokio::test]
async fn disallowed_methods_are_denied_unsent() {
    assert_denied_unsent(
        "DELETE",
        "/api/items/1",
        &[],
        "",
        "method DELETE not allowed for api; allowed: GET, POST",
    )
    .await;
    assert_denied_unsent("PATCH", "/api/items/1", &[], "", "method PATCH not allowed").await;
}

#[tokio::test]
async fn disallowed_query_params_are_denied_unsent() {
    assert_denied_unsent(
        "GET",
        "/api/items?key=x",
        &[],
        "",
        "query param key not allowed for api",
    )
    .await;
}

#[tokio::test]
async fn denied_unlisted_non_json_and_oversize_bodies_are_denied_unsent() {
    let json = [("content-type", "application/json")];
    assert_denied_unsent(
        "POST",
        "/api/items",
        &json,
        r#"{"title": "t", "admin": true}"#,
        "body key admin not allowed",
    )
    .await;
    assert_denied_unsent(
        "POST",
        "/api/items",
        &json,
        r#"{"meta": {"tag": {"admin": 1}}}"#,
        "body key meta.tag.admin is denied",
    )
    .await;
    assert_denied_unsent("POST", "/api/items", &json, "title=t", "must be JSON").await;
    let big = format!(r#"{{"title": "{}"}}"#, "x".repeat(300));
    assert_denied_unsent("POST", "/api/items", &json, &big, "at most 256 bytes").await;
    assert_denied_unsent(
        "POST",
        "/api/items",
        &[("content-type", "text/plain")],
        r#"{"title": "t"}"#,
        "content type is set by the runner",
    )
    .await;
}

#[tokio::test]
async fn header_smuggling_is_denied_unsent() {
    assert_denied_unsent(
        "GET",
        "/api/items",
        &[("x-http-method-override", "DELETE")],
        "",
        "header x-http-method-override not allowed",
    )
    .await;
    assert_denied_unsent(
        "GET",
        "/needsOther/items",
        &[("x-api-key", "mine")],
        "",
        "credential",
    )
    .await;
    assert_denied_unsent(
        "GET",
        "/api/items",
        &[("cookie", "s=1")],
        "",
        "header cookie not allowed",
    )
    .await;
}

#[tokio::test]
async fn unknown_capabilities_and_private_addresses_are_denied_unsent() {
    assert_denied_unsent(
        "GET",
        "/admin/items",
        &[],
        "",
        "unknown capability admin; available: api",
    )
    .await;
    assert_denied_unsent("GET", "/linkLocal/meta-data", &[], "", "169.254.169.254").await;
}

#[tokio::test]
async fn a_missing_secret_fails_the_call_before_anything_is_sent() {
    assert_denied_unsent(
        "GET",
        "/needsOther/items",
        &[],
        "",
        "secret OTHER_TOKEN needed by needsOther is not available",
    )
    .await;
}

#[tokio::test]
async fn cross_origin_redirects_send_nothing_further() {
    let up = Upstream::start().await;
    let other = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |_| {}).await;
    let to = format!("{}/v1/items", other.origin());
    let path = format!(
        "/api/redirect?to={}",
        url::form_urlencoded::byte_serialize(to.as_bytes()).collect::<String>()
    );
    let answer = h.call("GET", &path, &[], "").await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer
            .refusal()
            .reason
            .contains("to another origin refused"),
        "{}",
        answer.body
    );
    other.assert_nothing_received("the other origin");
    answer.assert_clean();
}

#[tokio::test]
async fn rate_limits_deny_without_sending() {
    let up = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |_| {}).await;
    for _ in 0..2 {
        assert_eq!(h.call("GET", "/limited/items", &[], "").await.status, 200);
    }
    let third = h.call("GET", "/limited/items", &[], "").await;
    assert_eq!(third.status, 403, "{}", third.body);
    assert!(
        third.refusal().reason.contains("rate limit"),
        "{}",
        third.body
    );
    up.assert_received(2, "two within the limit");
}

#[tokio::test]
async fn secrets_echoed_in_bodies_headers_and_errors_are_redacted() {
    let up = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |_| {}).await;
    let echoed = h.call("GET", "/api/echo-auth", &[], "").await;
    assert_eq!(echoed.status, 200);
    assert!(echoed.body.contains("[REDACTED]"), "{}", echoed.body);
    echoed.assert_clean();
    let header = h.call("GET", "/api/echo-header", &[], "").await;
    assert_eq!(header.status, 200);
    assert_eq!(
        header
            .headers
            .get("x-echo-credential")
            .map(|v| v.to_str().unwrap_or("")),
        Some("[REDACTED]")
    );
    header.assert_clean();
    let error = h.call("GET", "/api/echo-error?pad=3", &[], "").await;
    assert_eq!(error.status, 404, "the upstream's own status passes");
    assert!(
        error.headers.get(REFUSAL_HEADER).is_none(),
        "not the proxy's refusal"
    );
    assert_eq!(error.body, "xxx[REDACTED]");
    error.assert_clean();
    let audit = format!("{:?}", h.audit());
    assert!(
        !audit.contains(SECRET) && !audit.contains(CLIENT_TOKEN),
        "{audit}"
    );
}

#[tokio::test]
async fn an_event_stream_reaches_the_client_as_it_is_sent_and_redacted_across_chunks() {
    let events = EventStream::start(5, Duration::from_millis(150)).await;
    let h = start_proxy(&events.origin(), &events.ca_pem, |_| {}).await;
    let bearer = format!("Bearer {CLIENT_TOKEN}");
    let resp = h
        .send("GET", "/api/stream", &[("authorization", &bearer)], "")
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("")),
        Some("text/event-stream")
    );
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut first_at = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
            if first_at.is_none() && text.contains("data: {\"n\": 0}") {
                first_at = Some(Instant::now());
            }
        }
    }
    let sent = events.sent();
    assert_eq!(sent.len(), 5, "all events sent");
    let first_at = first_at.expect("the first event arrived");
    assert!(
        first_at < sent[4],
        "the first event reached the client only after the upstream sent the last one: buffered"
    );
    assert!(text.contains("\"echo\": \"[REDACTED]\""), "{text}");
    assert!(
        !text.contains(SECRET) && !text.contains("7f3a"),
        "secret leaked: {text}"
    );
    assert!(text.contains("data: {\"n\": 4}"), "{text}");
}

#[tokio::test]
async fn a_stop_cuts_streams_in_flight_with_a_clear_error_and_refuses_new_calls() {
    let events = EventStream::start(50, Duration::from_millis(100)).await;
    let h = start_proxy(&events.origin(), &events.ca_pem, |_| {}).await;
    let bearer = format!("Bearer {CLIENT_TOKEN}");
    let resp = h
        .send("GET", "/api/stream", &[("authorization", &bearer)], "")
        .await;
    // A connection opened before the stop, used after it.
    let mut later = h.connect().await;
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut stopped = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
        if !stopped && text.contains("data: {\"n\": 0}") {
            h.proxy.stop(StopReason::Stopped);
            stopped = true;
        }
    }
    assert!(text.contains("event: error"), "{text}");
    assert!(
        text.contains("\"error\":\"stopped\"") && text.contains("revoked"),
        "{text}"
    );
    assert!(
        !text.contains("data: {\"n\": 49}"),
        "the stream was cut: {text}"
    );
    let after = h
        .send_on(
            &mut later,
            "GET",
            "/api/items",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(after.status().as_u16(), 503);
    let after = after.into_body().collect().await.expect("body").to_bytes();
    let refusal: Refusal = serde_json::from_slice(&after).expect("refusal");
    assert_eq!(refusal.error, RefusalKind::Stopped);
    assert_eq!(h.stopped.await.expect("serve"), StopReason::Stopped);
    assert_eq!(events.requests(), 1, "nothing sent after the stop");
}

#[tokio::test]
async fn an_expired_approval_stops_the_proxy_and_refuses_calls() {
    let up = Upstream::start().await;
    let h = start_proxy(&up.origin(), &up.ca_pem, |o| {
        o.not_after = Some(std::time::SystemTime::now() - Duration::from_secs(1));
    })
    .await;
    assert_eq!(h.stopped.await.expect("serve"), StopReason::Expired);
    assert_eq!(h.proxy.stopped(), Some(StopReason::Expired));
    up.assert_nothing_received("an expired proxy");
}

#[tokio::test]
async fn calls_beyond_max_concurrent_calls_are_refused_as_overload() {
    let events = EventStream::start(30, Duration::from_millis(100)).await;
    let h = start_proxy(&events.origin(), &events.ca_pem, |o| {
        o.limits = ServeLimits {
            max_concurrent_calls: 1,
            ..ServeLimits::default()
        };
    })
    .await;
    let bearer = format!("Bearer {CLIENT_TOKEN}");
    let open = h
        .send("GET", "/api/stream", &[("authorization", &bearer)], "")
        .await;
    assert_eq!(open.status().as_u16(), 200);
    let second = h.call("GET", "/api/items", &[], "").await;
    assert_eq!(second.status, 429, "{}", second.body);
    assert_eq!(second.refusal().error, RefusalKind::Overloaded);
    assert!(second.refusal().reason.contains("maxConcurrentCalls"));
    drop(open);
}
