//! Cookie-jar capabilities against a real local HTTPS upstream: each request carries, in its
//! `Cookie` header, exactly the jar's cookies RFC 6265 sends to that URL; a cookie never goes
//! to a host that merely ends with its domain (`localhost` for a cookie of `host`), to an IP
//! address other than its own, to another path, or after its expiry; each redirect hop gets
//! its own cookies; and no cookie value reaches an outcome or a call record. (The runner
//! refuses DNS names that resolve to loopback, so the hosts here are `localhost` and
//! `127.0.0.1`; the domain rules for names are tested in `oauth3_protocol::cookies`.)

use std::collections::BTreeMap;
use std::sync::Arc;

use oauth3_crds::PermitSpec;
use oauth3_sandbox_runner::fetch::{FetchConfig, ScopedFetch};
use oauth3_sandbox_runner::host::{CallOutcome, CapabilityCall, CapabilityHost};
use oauth3_sandbox_runner::policy::Policy;
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_test_support::Upstream;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const SID: &str = "sid-7c1e5a9b";
const PRIVATE: &str = "priv-3f9d2e01";
const IP_ONLY: &str = "ip-55aa8c21";
const OLD: &str = "old-0b7e4d66";
const SUFFIX: &str = "suffix-9e0c7a12";

fn jar() -> String {
    json!({"cookies": [
        {"name": "sid", "value": SID, "domain": "localhost"},
        {"name": "private", "value": PRIVATE, "domain": "localhost", "path": "/v1/private"},
        {"name": "ip", "value": IP_ONLY, "domain": "127.0.0.1", "hostOnly": true},
        {"name": "suffix", "value": SUFFIX, "domain": "host"},
        {"name": "old", "value": OLD, "domain": "localhost", "expirationDate": 1000}
    ]})
    .to_string()
}

fn host(up: &Upstream, jar_text: &str) -> ScopedFetch {
    let port = up.addr.port();
    let cap = |name: &str, host: &str| {
        json!({"name": name, "baseUrl": format!("https://{host}:{port}/v1"), "paths": ["/**"],
               "methods": ["GET"], "query": {"allow": ["to"]}, "cookies": "SITE_COOKIES"})
    };
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "cookie tests",
        "secrets": ["SITE_COOKIES"],
        "capabilities": [cap("site", "localhost"), cap("ip", "127.0.0.1")]
    }))
    .expect("permit");
    let secrets = BTreeMap::from([(
        "SITE_COOKIES".to_owned(),
        Zeroizing::new(jar_text.to_owned()),
    )]);
    let config = FetchConfig {
        extra_root_certs_pem: vec![up.ca_pem.clone()],
        ..FetchConfig::default()
    };
    let redactor = Arc::new(Redactor::for_secrets(&secrets));
    ScopedFetch::new(
        Policy::compile(&spec).expect("policy"),
        secrets,
        redactor,
        config,
    )
    .expect("fetch")
}

async fn call(host: &dyn CapabilityHost, cap: &str, args: Value) -> CallOutcome {
    host.call(CapabilityCall {
        capability: cap.to_owned(),
        args: args.as_array().expect("args").clone(),
    })
    .await
}

fn no_cookie_value(outcome: &CallOutcome, host: &dyn CapabilityHost) {
    let shown = format!("{outcome:?} {:?}", host.calls());
    for v in [SID, PRIVATE, IP_ONLY, OLD, SUFFIX] {
        assert!(!shown.contains(v), "{v} leaked: {shown}");
    }
}

#[tokio::test]
async fn each_request_carries_exactly_the_cookies_rfc_6265_sends_there() {
    let up = Upstream::start().await;
    let h = host(&up, &jar());
    for (cap, path, want) in [
        ("site", "/text", Some(format!("sid={SID}"))),
        (
            "site",
            "/private/x",
            Some(format!("private={PRIVATE}; sid={SID}")),
        ),
        ("site", "/privatex", Some(format!("sid={SID}"))),
        ("ip", "/text", Some(format!("ip={IP_ONLY}"))),
    ] {
        let before = up.requests().len();
        let outcome = call(&h, cap, json!(["GET", path])).await;
        assert!(
            matches!(outcome, CallOutcome::Value(_)),
            "{cap} {path}: {outcome:?}"
        );
        let got = up.requests();
        assert_eq!(got.len(), before + 1, "{cap} {path}");
        let cookie = got[before].header_values("cookie");
        assert_eq!(
            cookie,
            want.iter().map(String::as_str).collect::<Vec<_>>(),
            "{cap} {path}"
        );
        no_cookie_value(&outcome, &h);
    }
}

#[tokio::test]
async fn each_redirect_hop_gets_its_own_cookies() {
    let up = Upstream::start().await;
    let h = host(&up, &jar());
    let port = up.addr.port();
    let outcome = call(
        &h,
        "site",
        json!(["GET", "/redirect", {"query": {"to": format!("https://localhost:{port}/v1/private/p")}}]),
    )
    .await;
    assert!(matches!(outcome, CallOutcome::Value(_)), "{outcome:?}");
    let got = up.requests();
    assert_eq!(got.len(), 2, "the redirect was followed");
    assert_eq!(got[0].header_values("cookie"), [format!("sid={SID}")]);
    assert_eq!(
        got[1].header_values("cookie"),
        [format!("private={PRIVATE}; sid={SID}")],
        "the second hop's cookies are chosen for its own path"
    );
    no_cookie_value(&outcome, &h);
}

#[tokio::test]
async fn a_secret_that_is_not_a_cookie_jar_sends_nothing() {
    let up = Upstream::start().await;
    let h = host(&up, "sid=raw-cookie-string");
    let outcome = call(&h, "site", json!(["GET", "/text"])).await;
    match &outcome {
        CallOutcome::Error(reason) => {
            assert!(
                reason.contains("SITE_COOKIES is not a cookie jar")
                    && reason.contains("nothing was sent"),
                "{reason}"
            );
            assert!(!reason.contains("raw-cookie-string"), "{reason}");
        }
        CallOutcome::Value(v) => panic!("sent with a bad jar: {v}"),
    }
    up.assert_nothing_received("a secret that is not a jar");
}
