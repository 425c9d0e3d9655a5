//! The scoped fetch against a real local HTTPS upstream: allowed calls arrive with the
//! credential exactly once; every attack is denied, reaches no upstream, and leaks the secret
//! into no outcome or call record.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use oauth3_crds::{CallDecision, PermitSpec};
use oauth3_sandbox_runner::fetch::{FetchConfig, ScopedFetch};
use oauth3_sandbox_runner::host::{CallOutcome, CapabilityCall, CapabilityHost};
use oauth3_sandbox_runner::policy::Policy;
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_test_support::Upstream;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const SECRET: &str = "sk-test-7f3a9c";
/// A digits-only secret (a PIN), the kind an upstream may hand back as a JSON number.
const PIN: &str = "48213597";

fn permit(up: &Upstream) -> PermitSpec {
    let origin = up.origin();
    let port = up.addr.port();
    serde_json::from_value(json!({
        "description": "fetch tests",
        "secrets": ["API_TOKEN", "OTHER_TOKEN", "PIN"],
        "capabilities": [{
            "name": "api",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/items", "/items/*", "/echo-auth", "/text", "/binary", "/redirect",
                      "/large", "/missing", "/json"],
            "methods": ["GET", "POST"],
            "query": {"allow": ["q", "to"]},
            "body": {"allowKeys": ["title", "meta.tag"], "denyKeys": ["meta.tag.admin"], "maxBytes": 256},
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }, {
            "name": "keyed",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/echo-auth", "/missing"],
            "methods": ["GET"],
            "auth": {"queryParam": "key", "value": "{API_TOKEN}"}
        }, {
            "name": "echo",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/echo-key", "/echo-error"],
            "methods": ["GET"],
            "query": {"allow": ["pad"]},
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }, {
            "name": "pinned",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/echo-number", "/echo-key", "/echo-error"],
            "methods": ["GET"],
            "query": {"allow": ["pad"]},
            "auth": {"queryParam": "key", "value": "{PIN}"}
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
            "name": "typedItem",
            "endpoint": format!("{origin}/v1/items/{{id}}"),
            "method": "GET",
            "params": {"id": {"in": "path"}},
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }, {
            "name": "rebound",
            "baseUrl": format!("https://upstream.test:{port}/v1"),
            "paths": ["/items"],
            "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }, {
            "name": "metadata",
            "baseUrl": format!("https://metadata.test:{port}/v1"),
            "paths": ["/items"],
            "methods": ["GET"],
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

fn fetch_for(up: &Upstream, tweak: impl FnOnce(&mut FetchConfig)) -> ScopedFetch {
    let policy = Policy::compile(&permit(up)).expect("policy compiles");
    let secrets = BTreeMap::from([
        ("API_TOKEN".to_owned(), Zeroizing::new(SECRET.to_owned())),
        ("PIN".to_owned(), Zeroizing::new(PIN.to_owned())),
    ]);
    let mut config = FetchConfig {
        extra_root_certs_pem: vec![up.ca_pem.clone()],
        max_response_bytes: 64 * 1024,
        resolve_overrides: vec![
            ("upstream.test".to_owned(), up.addr),
            (
                "metadata.test".to_owned(),
                SocketAddr::from(([169, 254, 169, 254], up.addr.port())),
            ),
        ],
        ..FetchConfig::default()
    };
    tweak(&mut config);
    let redactor = Arc::new(Redactor::for_secrets(&secrets));
    ScopedFetch::new(policy, secrets, redactor, config).expect("fetch builds")
}

async fn call(host: &dyn CapabilityHost, cap: &str, args: Value) -> CallOutcome {
    host.call(CapabilityCall {
        capability: cap.to_owned(),
        args: args.as_array().expect("args array").clone(),
    })
    .await
}

/// The secret appears in no outcome and no call record.
fn assert_no_secret(outcome: &CallOutcome, host: &dyn CapabilityHost) {
    let shown = format!("{outcome:?} {:?}", host.calls());
    assert!(!shown.contains(SECRET), "secret leaked: {shown}");
    assert!(!shown.contains("7f3a9c"), "secret fragment leaked: {shown}");
}

/// Neither `secret` nor its hex form nor any prefix of it of four bytes or more appears in
/// the outcome or a call record (a prefix is what a cut through the secret would leave).
fn assert_no_secret_or_prefix(secret: &str, outcome: &CallOutcome, host: &dyn CapabilityHost) {
    let shown = format!("{outcome:?} {:?}", host.calls());
    assert!(
        !shown.contains(&hex::encode(secret)),
        "hex form of the secret leaked: {shown}"
    );
    for end in 4..=secret.len() {
        assert!(
            !shown.contains(&secret[..end]),
            "{:?} (a prefix of the secret) leaked: {shown}",
            &secret[..end]
        );
    }
}

/// The call was denied with a reason containing `reason_has`, nothing reached the upstream,
/// the denial is recorded, and no secret leaked.
async fn assert_denied_unsent(cap: &str, args: Value, reason_has: &str) {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    let outcome = call(&host, cap, args.clone()).await;
    match &outcome {
        CallOutcome::Error(reason) => assert!(
            reason.contains(reason_has),
            "{cap} {args}: reason {reason:?} should contain {reason_has:?}"
        ),
        CallOutcome::Value(v) => panic!("{cap} {args}: expected a denial, got {v}"),
    }
    assert!(
        up.requests().is_empty(),
        "{cap} {args}: upstream must receive nothing, got {:?}",
        up.requests()
    );
    let calls = host.calls();
    assert_eq!(calls.len(), 1, "one record per call");
    assert_eq!(calls[0].decision, CallDecision::Denied);
    assert_eq!(calls[0].status, None);
    assert_no_secret(&outcome, &host);
}

#[tokio::test]
async fn allowed_call_arrives_with_the_credential_exactly_once() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    let outcome = call(
        &host,
        "api",
        json!(["post", "/items", {"query": {"q": "x y"}, "body": {"title": "t"}, "headers": {"X-Request-Id": "r1"}}]),
    )
    .await;
    assert_eq!(
        outcome,
        CallOutcome::Value(json!({"path": "/v1/items", "method": "POST"}))
    );
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path_and_query, "/v1/items?q=x+y");
    assert_eq!(
        r.header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );
    assert_eq!(r.header_values("x-request-id"), ["r1"]);
    assert_eq!(r.header_values("content-type"), ["application/json"]);
    assert_eq!(r.body, br#"{"title":"t"}"#);
    let calls = host.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].decision, CallDecision::Allowed);
    assert_eq!(calls[0].status, Some(200));
    assert_eq!(calls[0].url, format!("{}/v1/items?q=x+y", up.origin()));
    assert_no_secret(&outcome, &host);
}

#[tokio::test]
async fn query_credentials_are_injected_but_never_recorded() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    let outcome = call(&host, "keyed", json!(["GET", "/echo-auth"])).await;
    // The upstream got the key; the echo of it is scrubbed before JavaScript sees it.
    assert_eq!(
        up.requests()[0].path_and_query,
        format!("/v1/echo-auth?key={SECRET}")
    );
    assert_eq!(
        outcome,
        CallOutcome::Value(json!({"authorization": [], "key": "[REDACTED]"}))
    );
    assert_eq!(host.calls()[0].url, format!("{}/v1/echo-auth", up.origin()));
    assert_no_secret(&outcome, &host);
}

#[tokio::test]
async fn responses_become_json_text_or_base64_and_errors_quote_the_status() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    assert_eq!(
        call(&host, "api", json!(["GET", "/text"])).await,
        CallOutcome::Value(json!("hello"))
    );
    assert_eq!(
        call(&host, "api", json!(["GET", "/binary"])).await,
        CallOutcome::Value(
            json!({"contentType": "application/octet-stream", "base64": "AAEC/w=="})
        )
    );
    assert_eq!(
        call(&host, "api", json!(["GET", "/missing"])).await,
        CallOutcome::Error("api: upstream returned 404: no such thing here".into())
    );
    let echoed = call(&host, "api", json!(["GET", "/echo-auth"])).await;
    assert_eq!(
        echoed,
        CallOutcome::Value(json!({"authorization": ["Bearer [REDACTED]"], "key": null}))
    );
    let statuses: Vec<_> = host.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [Some(200), Some(200), Some(404), Some(200)]);
    assert_no_secret(&echoed, &host);
}

#[tokio::test]
async fn oversize_responses_are_an_error() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    let outcome = call(&host, "api", json!(["GET", "/large"])).await;
    assert_eq!(
        outcome,
        CallOutcome::Error("api: response larger than 65536 bytes; discarded".into())
    );
    assert_no_secret(&outcome, &host);
}

#[tokio::test]
async fn path_traversal_raw_and_encoded_is_denied_unsent() {
    assert_denied_unsent(
        "api",
        json!(["GET", "/items/../../admin"]),
        ". and .. segments",
    )
    .await;
    assert_denied_unsent(
        "api",
        json!(["GET", "/items/%2e%2e/%2E%2E/admin"]),
        ". and .. segments",
    )
    .await;
    assert_denied_unsent("typedItem", json!([".."]), "must not be empty, . or ..").await;
}

#[tokio::test]
async fn encoded_slashes_and_backslashes_are_denied_unsent() {
    assert_denied_unsent("api", json!(["GET", "/items/..%2fadmin"]), "%2f").await;
    assert_denied_unsent("api", json!(["GET", "/items/a%2Fb"]), "%2f").await;
    assert_denied_unsent("api", json!(["GET", "/items\\..\\admin"]), "backslash").await;
    assert_denied_unsent("api", json!(["GET", "/items/%5c..%5cadmin"]), "backslash").await;
}

#[tokio::test]
async fn typed_path_values_stay_in_their_segment() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    let outcome = call(&host, "typedItem", json!(["a/../../admin"])).await;
    assert!(matches!(outcome, CallOutcome::Value(_)), "{outcome:?}");
    assert_eq!(
        up.requests()[0].path_and_query,
        "/v1/items/a%2F..%2F..%2Fadmin"
    );
    assert_no_secret(&outcome, &host);
}

#[tokio::test]
async fn absolute_scheme_relative_and_userinfo_targets_are_denied_unsent() {
    assert_denied_unsent(
        "api",
        json!(["GET", "https://evil.example/v1/items"]),
        "must start with /",
    )
    .await;
    assert_denied_unsent(
        "api",
        json!(["GET", "//evil.example/v1/items"]),
        "scheme-relative",
    )
    .await;
    assert_denied_unsent(
        "api",
        json!(["GET", "//user:pw@evil.example/items"]),
        "scheme-relative",
    )
    .await;
}

#[tokio::test]
async fn disallowed_methods_are_denied_unsent() {
    assert_denied_unsent(
        "api",
        json!(["DELETE", "/items/1"]),
        "method DELETE not allowed for api; allowed: GET, POST",
    )
    .await;
    assert_denied_unsent(
        "api",
        json!(["patch", "/items/1"]),
        "method PATCH not allowed",
    )
    .await;
}

#[tokio::test]
async fn disallowed_query_params_are_denied_unsent() {
    assert_denied_unsent(
        "api",
        json!(["GET", "/items", {"query": {"key": "x"}}]),
        "query param key not allowed for api; allowed: q, to",
    )
    .await;
    assert_denied_unsent(
        "keyed",
        json!(["GET", "/echo-auth", {"query": {"key": "mine"}}]),
        "allowed: none",
    )
    .await;
}

#[tokio::test]
async fn denied_and_unlisted_body_keys_are_denied_unsent() {
    assert_denied_unsent(
        "api",
        json!(["POST", "/items", {"body": {"title": "t", "admin": true}}]),
        "body key admin not allowed",
    )
    .await;
    assert_denied_unsent(
        "api",
        json!(["POST", "/items", {"body": {"meta": {"tag": {"admin": 1}}}}]),
        "body key meta.tag.admin is denied",
    )
    .await;
    assert_denied_unsent(
        "api",
        json!(["POST", "/items", {"body": [{"title": "a"}, {"owner": "b"}]}]),
        "body key owner not allowed",
    )
    .await;
}

#[tokio::test]
async fn non_json_and_oversize_bodies_are_denied_unsent() {
    assert_denied_unsent(
        "api",
        json!(["POST", "/items", {"body": "title=t"}]),
        "must be JSON",
    )
    .await;
    assert_denied_unsent("api", json!(["POST", "/items", {"body": 7}]), "got number").await;
    let big = "x".repeat(300);
    assert_denied_unsent(
        "api",
        json!(["POST", "/items", {"body": {"title": big}}]),
        "at most 256 bytes",
    )
    .await;
    assert_denied_unsent("api", json!(["POST", "/items", {"body": [{"title": "x".repeat(200)}, {"title": "y".repeat(100)}]}]), "at most 256 bytes").await;
}

#[tokio::test]
async fn header_smuggling_is_denied_unsent() {
    assert_denied_unsent(
        "api",
        json!(["GET", "/items", {"headers": {"Authorization": "Bearer mine"}}]),
        "header Authorization not allowed",
    )
    .await;
    assert_denied_unsent(
        "api",
        json!(["GET", "/items", {"headers": {"X-HTTP-Method-Override": "DELETE"}}]),
        "header X-HTTP-Method-Override not allowed",
    )
    .await;
    assert_denied_unsent(
        "api",
        json!(["GET", "/items", {"headers": {"X-Note": "a\r\nAuthorization: Bearer mine"}}]),
        "CR, LF",
    )
    .await;
    assert_denied_unsent(
        "api",
        json!(["GET", "/items", {"headers": {"X-Note\r\nHost": "evil"}}]),
        "CR, LF",
    )
    .await;
    assert_denied_unsent(
        "needsOther",
        json!(["GET", "/items", {"headers": {"x-api-key": "mine"}}]),
        "credential",
    )
    .await;
}

#[tokio::test]
async fn same_origin_redirects_are_followed_with_the_credential_re_injected() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    let outcome = call(
        &host,
        "api",
        json!(["GET", "/redirect", {"query": {"to": "/v1/json"}}]),
    )
    .await;
    assert_eq!(
        outcome,
        CallOutcome::Value(json!({"path": "/v1/json", "method": "GET"}))
    );
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(
            r.header_values("authorization"),
            [format!("Bearer {SECRET}")]
        );
    }
    let statuses: Vec<_> = host.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [Some(302), Some(200)]);
    assert_no_secret(&outcome, &host);
}

#[tokio::test]
async fn cross_origin_and_disallowed_redirects_send_nothing_further() {
    let up = Upstream::start().await;
    let other = Upstream::start().await;
    let other_port = other.addr.port();
    for (to, reason) in [
        (
            format!("https://localhost:{other_port}/v1/json"),
            "another origin",
        ),
        (
            format!("//127.0.0.1:{other_port}/v1/json"),
            "another origin",
        ),
        (
            format!("http://127.0.0.1:{}/v1/json", up.addr.port()),
            "another origin",
        ),
        (
            "/v1/admin".to_owned(),
            "not allowed by the capability's paths",
        ),
        (
            "/v1/items/..%2f..%2fadmin".to_owned(),
            "not allowed by the capability's paths",
        ),
    ] {
        let host = fetch_for(&up, |c| c.extra_root_certs_pem.push(other.ca_pem.clone()));
        let before = up.requests().len();
        let outcome = call(
            &host,
            "api",
            json!(["GET", "/redirect", {"query": {"to": to}}]),
        )
        .await;
        match &outcome {
            CallOutcome::Error(r) => assert!(r.contains(reason), "{to}: {r}"),
            CallOutcome::Value(v) => panic!("{to}: redirect must be refused, got {v}"),
        }
        assert_eq!(
            up.requests().len(),
            before + 1,
            "{to}: only the first request is sent"
        );
        let calls = host.calls();
        assert_eq!(calls.len(), 2, "{to}");
        assert_eq!(calls[0].status, Some(302));
        assert_eq!(calls[1].decision, CallDecision::Denied);
        assert_no_secret(&outcome, &host);
    }
    other.assert_nothing_received("nothing reached the other origin");
}

#[tokio::test]
async fn dns_answers_in_private_ranges_are_refused_unsent() {
    assert_denied_unsent(
        "rebound",
        json!(["GET", "/items"]),
        "DNS answer for upstream.test refused: 127.0.0.1",
    )
    .await;
    assert_denied_unsent("metadata", json!(["GET", "/items"]), "169.254.169.254").await;
    assert_denied_unsent(
        "linkLocal",
        json!(["GET", "/meta-data/iam"]),
        "address 169.254.169.254 is in a loopback, private",
    )
    .await;
}

#[tokio::test]
async fn rate_limits_deny_without_sending_and_carry_the_budget() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    for _ in 0..2 {
        assert!(matches!(
            call(&host, "limited", json!(["GET", "/items"])).await,
            CallOutcome::Value(_)
        ));
    }
    for _ in 0..2 {
        let outcome = call(&host, "limited", json!(["GET", "/items"])).await;
        match &outcome {
            CallOutcome::Error(r) => assert!(
                r.contains("rate limit of 2 requests per 3600 s exceeded for limited"),
                "{r}"
            ),
            CallOutcome::Value(v) => panic!("expected rate limit, got {v}"),
        }
        assert_no_secret(&outcome, &host);
    }
    assert_eq!(up.requests().len(), 2, "denied calls are not sent");
    assert!(host.rate_budget()["limited"] < 1.0);
    // A new Execution starting from the carried budget is still limited.
    let budget = host.rate_budget();
    let next = fetch_for(&up, |c| c.rate_budget = budget);
    assert!(matches!(
        call(&next, "limited", json!(["GET", "/items"])).await,
        CallOutcome::Error(_)
    ));
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn a_missing_secret_fails_the_call_before_anything_is_sent() {
    assert_denied_unsent(
        "needsOther",
        json!(["GET", "/items"]),
        "secret OTHER_TOKEN needed by needsOther is not available",
    )
    .await;
    assert_denied_unsent(
        "needsOther",
        json!(["get", "/items", {"query": null}]),
        "secret OTHER_TOKEN",
    )
    .await;
}

#[tokio::test]
async fn the_call_budget_is_enforced() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |c| c.max_calls = 1);
    assert!(matches!(
        call(&host, "api", json!(["GET", "/items"])).await,
        CallOutcome::Value(_)
    ));
    let outcome = call(&host, "api", json!(["GET", "/items"])).await;
    assert_eq!(
        outcome,
        CallOutcome::Error("call limit of 1 calls per execution exceeded; nothing was sent".into())
    );
    assert_eq!(up.requests().len(), 1);
    assert_eq!(host.calls()[1].decision, CallDecision::Denied);
}

#[tokio::test]
async fn a_digits_only_secret_echoed_as_a_json_number_reaches_the_code_as_the_marker() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    let outcome = call(&host, "pinned", json!(["GET", "/echo-number"])).await;
    assert_eq!(
        up.requests()[0].path_and_query,
        format!("/v1/echo-number?key={PIN}"),
        "the upstream got the PIN"
    );
    assert_eq!(
        outcome,
        CallOutcome::Value(json!({"pin": "[REDACTED]"})),
        "a number holding the secret becomes the marker string"
    );
    assert_no_secret_or_prefix(PIN, &outcome, &host);
}

#[tokio::test]
async fn a_secret_echoed_as_an_object_key_reaches_the_code_only_redacted() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    for (cap, secret) in [("echo", SECRET), ("pinned", PIN)] {
        let outcome = call(&host, cap, json!(["GET", "/echo-key"])).await;
        let CallOutcome::Value(value) = &outcome else {
            panic!("{cap}: expected a value, got {outcome:?}");
        };
        assert_eq!(value["nested"]["[REDACTED]"]["[REDACTED]"], 1, "{value}");
        assert_eq!(value["[REDACTED]"], true, "{value}");
        assert_eq!(value["list"][0]["[REDACTED]"], secret.len(), "{value}");
        assert_no_secret_or_prefix(secret, &outcome, &host);
    }
}

#[tokio::test]
async fn a_secret_straddling_the_error_excerpt_cut_leaks_no_prefix() {
    let up = Upstream::start().await;
    let host = fetch_for(&up, |_| {});
    // The excerpt keeps the first 512 bytes of the body; the body is `pad` bytes of `x` and
    // then the credential, so every pad below puts the cut inside the secret, leaving 4 or
    // more of its bytes before the cut.
    for (cap, secret) in [("echo", SECRET), ("pinned", PIN)] {
        for pad in (512 - secret.len() + 1)..=(512 - 4) {
            let outcome = call(
                &host,
                cap,
                json!(["GET", "/echo-error", {"query": {"pad": pad.to_string()}}]),
            )
            .await;
            match &outcome {
                CallOutcome::Error(reason) => assert!(
                    reason.starts_with(&format!("{cap}: upstream returned 404: xxx")),
                    "{reason}"
                ),
                CallOutcome::Value(v) => panic!("expected an error, got {v}"),
            }
            assert_no_secret_or_prefix(secret, &outcome, &host);
        }
    }
}
