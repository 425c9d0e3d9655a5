//! Specifications of the policy engine: one block per rule, attacks included.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use oauth3_crds::{HttpMethod, PermitSpec};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Denial, Policy, PolicyError, PreparedRequest, RateLimiter};

fn spec(caps: Value) -> PermitSpec {
    serde_json::from_value(
        json!({"description": "test", "capabilities": caps, "secrets": ["TOKEN"]}),
    )
    .expect("valid permit spec")
}

fn github() -> Policy {
    Policy::compile(&spec(json!([{
        "name": "github",
        "baseUrl": "https://api.github.com",
        "paths": ["/repos/owner/repo/issues", "/repos/owner/repo/issues/*", "/search/**"],
        "methods": ["GET", "POST"],
        "query": {"allow": ["state", "per_page"]},
        "body": {"allowKeys": ["title", "body", "labels", "author.name"], "denyKeys": ["labels.secret"], "maxBytes": 200},
        "auth": {"header": "Authorization", "value": "Bearer {TOKEN}"}
    }, {
        "name": "gmail",
        "baseUrl": "https://gmail.googleapis.com/gmail/v1/users/me",
        "paths": ["/messages", "/messages/*", "/files/*.json"],
        "methods": ["GET"],
        "auth": {"queryParam": "key", "value": "{TOKEN}"},
        "rateLimit": {"requests": 2, "perSeconds": 10}
    }, {
        "name": "createIssue",
        "endpoint": "https://api.github.com/repos/{owner}/{repo}/issues",
        "method": "POST",
        "params": {
            "owner": {"in": "path", "pattern": "[a-z0-9-]+"},
            "repo": {"in": "path"},
            "title": {"in": "body", "required": true},
            "body": {"in": "body"},
            "dryRun": {"in": "query"},
            "X-Trace": {"in": "header"}
        },
        "auth": {"header": "Authorization", "value": "Bearer {TOKEN}"}
    }, {
        "name": "dev",
        "baseUrl": "http://127.0.0.1:8080/api",
        "paths": ["/**"],
        "methods": ["GET", "PUT"],
        "body": {"allowRaw": true, "maxBytes": 16}
    }])))
    .expect("compiles")
}

fn ok(p: &Policy, cap: &str, args: Value) -> PreparedRequest {
    let args = args.as_array().expect("args array").clone();
    p.decide(cap, &args)
        .unwrap_or_else(|d| panic!("expected allowed, got denial: {}", d.reason))
}

fn denied(p: &Policy, cap: &str, args: Value) -> Denial {
    let args = args.as_array().expect("args array").clone();
    match p.decide(cap, &args) {
        Ok(r) => panic!("expected denial, got request to {}", r.url),
        Err(d) => d,
    }
}

fn assert_denied(p: &Policy, cap: &str, args: Value, reason_has: &str) {
    let d = denied(p, cap, args.clone());
    assert!(
        d.reason.contains(reason_has),
        "args {args}: reason {:?} should contain {reason_has:?}",
        d.reason
    );
    assert_eq!(d.capability, cap);
}

// --- compile ---

#[test]
fn compile_keeps_capability_order_and_rejects_duplicates() {
    assert_eq!(
        github().capability_names(),
        ["github", "gmail", "createIssue", "dev"]
    );
    let dup = spec(json!([
        {"name": "a", "baseUrl": "https://a.example", "paths": ["/"], "methods": ["GET"]},
        {"name": "a", "baseUrl": "https://b.example", "paths": ["/"], "methods": ["GET"]}
    ]));
    assert_eq!(
        Policy::compile(&dup).expect_err("duplicate"),
        PolicyError::DuplicateName("a".into())
    );
}

#[test]
fn compile_rejects_plain_http_to_non_loopback_userinfo_and_dot_globs() {
    for (base, glob) in [
        ("http://api.example.com", "/x"),
        ("https://user:pw@api.example.com", "/x"),
        ("https://api.example.com?x=1", "/x"),
        ("https://api.example.com", "/a/../b"),
        ("https://api.example.com", "/a/%2e%2e/b"),
    ] {
        let s = spec(json!([{"name": "a", "baseUrl": base, "paths": [glob], "methods": ["GET"]}]));
        assert!(
            Policy::compile(&s).is_err(),
            "{base} {glob} must not compile"
        );
    }
}

// --- method ---

#[test]
fn method_is_case_insensitive_and_must_be_allowed() {
    let p = github();
    assert_eq!(
        ok(&p, "github", json!(["get", "/repos/owner/repo/issues"])).method,
        HttpMethod::GET
    );
    assert_denied(
        &p,
        "github",
        json!(["DELETE", "/repos/owner/repo/issues/1"]),
        "method DELETE not allowed for github; allowed: GET, POST",
    );
    assert_denied(
        &p,
        "github",
        json!(["TRACE", "/repos/owner/repo/issues"]),
        "allowed: GET, POST",
    );
    assert_denied(
        &p,
        "github",
        json!([1, "/repos/owner/repo/issues"]),
        "method must be a string",
    );
}

// --- paths ---

#[test]
fn path_is_joined_under_base_path_and_globs_match_the_relative_path() {
    let p = github();
    let r = ok(&p, "gmail", json!(["GET", "/messages/abc"]));
    assert_eq!(
        r.url.as_str(),
        "https://gmail.googleapis.com/gmail/v1/users/me/messages/abc"
    );
    assert_eq!(
        ok(&p, "gmail", json!(["GET", "/files/x.json"])).url.path(),
        "/gmail/v1/users/me/files/x.json"
    );
    assert_denied(
        &p,
        "gmail",
        json!(["GET", "/files/x.txt"]),
        "not allowed for gmail",
    );
    assert_denied(
        &p,
        "gmail",
        json!(["GET", "/gmail/v1/users/me/messages"]),
        "not allowed",
    );
}

#[test]
fn star_matches_exactly_one_segment_and_double_star_any_number() {
    let p = github();
    ok(&p, "github", json!(["GET", "/repos/owner/repo/issues/42"]));
    assert_denied(
        &p,
        "github",
        json!(["GET", "/repos/owner/repo/issues/42/comments"]),
        "not allowed",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/repos/owner/other/issues"]),
        "not allowed",
    );
    ok(&p, "github", json!(["GET", "/search"]));
    ok(&p, "github", json!(["GET", "/search/a/b/c"]));
}

#[test]
fn path_traversal_raw_and_percent_encoded_is_denied() {
    let p = github();
    for path in [
        "/repos/owner/repo/issues/../../../admin",
        "/repos/owner/repo/issues/..",
        "/repos/owner/repo/issues/%2e%2e/x",
        "/repos/owner/repo/issues/%2E%2E",
        "/repos/owner/repo/issues/.%2e",
        "/repos/owner/repo/./issues",
        "/search/%2e",
    ] {
        assert_denied(&p, "github", json!(["GET", path]), "segments");
    }
}

#[test]
fn encoded_slashes_and_backslashes_are_denied() {
    let p = github();
    assert_denied(
        &p,
        "github",
        json!(["GET", "/repos/owner/repo/issues/a%2fb"]),
        "%2f",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/repos/owner/repo/issues/a%2F..%2Fb"]),
        "%2f",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/repos/owner/repo/issues/a\\b"]),
        "backslash",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/repos/owner/repo/issues/a%5cb"]),
        "backslash",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/search/%5C..%5C"]),
        "backslash",
    );
}

#[test]
fn absolute_scheme_relative_and_userinfo_targets_are_denied() {
    let p = github();
    assert_denied(
        &p,
        "github",
        json!(["GET", "https://evil.example/x"]),
        "must start with /",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "//evil.example/search"]),
        "scheme-relative",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "//user:pw@evil.example/"]),
        "scheme-relative",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "evil.example/search"]),
        "must start with /",
    );
    // An @ inside the path stays in the path at the capability's origin.
    let r = ok(&p, "github", json!(["GET", "/search/user@evil.example"]));
    assert_eq!(r.url.host_str(), Some("api.github.com"));
    assert_eq!(r.url.username(), "");
}

#[test]
fn control_characters_fragments_and_question_marks_in_path_are_denied() {
    let p = github();
    assert_denied(
        &p,
        "github",
        json!(["GET", "/search/a\r\nHost: evil"]),
        "control character",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/search/a%0d%0ab"]),
        "control characters",
    );
    assert_denied(&p, "github", json!(["GET", "/search/a#frag"]), "fragments");
    assert_denied(&p, "github", json!(["GET", "/search?q=1"]), "query");
    assert_denied(&p, "github", json!(["GET", "/search/a%zz"]), "malformed");
    assert_denied(
        &p,
        "github",
        json!(["GET", "/search//x"]),
        "empty path segments",
    );
}

#[test]
fn unicode_and_spaces_are_percent_encoded_and_matched_canonically() {
    let p = github();
    let r = ok(&p, "github", json!(["GET", "/search/caf\u{e9} x"]));
    assert_eq!(r.url.path(), "/search/caf%C3%A9%20x");
}

// --- query ---

#[test]
fn query_params_only_from_allow_list_with_scalars_or_arrays() {
    let p = github();
    let r = ok(
        &p,
        "github",
        json!(["GET", "/repos/owner/repo/issues", {"query": {"state": "open", "per_page": [10, true]}}]),
    );
    assert_eq!(r.url.query(), Some("per_page=10&per_page=true&state=open"));
    assert_denied(
        &p,
        "github",
        json!(["GET", "/repos/owner/repo/issues", {"query": {"access_token": "x"}}]),
        "query param access_token not allowed for github; allowed: per_page, state",
    );
    assert_denied(
        &p,
        "gmail",
        json!(["GET", "/messages", {"query": {"key": "x"}}]),
        "allowed: none",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/repos/owner/repo/issues", {"query": {"state": {"a": 1}}}]),
        "must be a string",
    );
}

#[test]
fn query_values_cannot_inject_more_params() {
    let p = github();
    let r = ok(
        &p,
        "github",
        json!(["GET", "/repos/owner/repo/issues", {"query": {"state": "open&access_token=x#y"}}]),
    );
    let names: Vec<String> = r.url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    assert_eq!(names, ["state"]);
    assert_eq!(r.url.fragment(), None);
}

// --- body ---

#[test]
fn body_objects_are_sent_as_json_and_keys_checked_recursively() {
    let p = github();
    let r = ok(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": {"title": "t", "labels": ["a"], "author": {"name": "n"}}}]),
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let sent: Value = serde_json::from_slice(r.body.as_deref().expect("body")).expect("json");
    assert_eq!(sent["author"]["name"], "n");
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": {"title": "t", "assignee": "x"}}]),
        "body key assignee not allowed for github",
    );
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": {"author": {"name": "n", "email": "e"}}}]),
        "body key author.email not allowed",
    );
}

#[test]
fn denied_keys_and_arrays_of_objects_are_checked_element_wise() {
    let p = github();
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": {"labels": {"secret": 1}}}]),
        "body key labels.secret is denied",
    );
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": [{"title": "a"}, {"admin": true}]}]),
        "body key admin not allowed",
    );
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": {"author.name": "dotted"}}]),
        "contains a dot",
    );
}

#[test]
fn non_json_bodies_are_denied_unless_raw_is_allowed() {
    let p = github();
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": "not json"}]),
        "must be JSON",
    );
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": 42}]),
        "got number",
    );
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": true}]),
        "got boolean",
    );
    let r = ok(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": "{\"title\": \"x\"}"}]),
    );
    assert_eq!(r.body.as_deref(), Some(&b"{\"title\": \"x\"}"[..]));
    let raw = ok(&p, "dev", json!(["PUT", "/f", {"body": "plain text"}]));
    assert_eq!(
        raw.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    // A JSON string body is still key-checked.
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": "{\"admin\": 1}"}]),
        "not allowed",
    );
}

#[test]
fn oversize_bodies_are_denied() {
    let p = github();
    let big = "x".repeat(300);
    assert_denied(
        &p,
        "github",
        json!(["POST", "/repos/owner/repo/issues", {"body": {"title": big}}]),
        "at most 200 bytes",
    );
    assert_denied(
        &p,
        "dev",
        json!(["PUT", "/f", {"body": "seventeen bytes!!"}]),
        "at most 16 bytes",
    );
}

// --- headers ---

#[test]
fn credential_and_override_headers_are_rejected() {
    let p = github();
    for h in [
        "Authorization",
        "authorization",
        "Proxy-Authorization",
        "Cookie",
        "Host",
        "X-HTTP-Method-Override",
        "X-Method-Override",
        "X-HTTP-Method",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Forwarded-For",
        "Proxy-Connection",
        "Forwarded",
        "Transfer-Encoding",
        "Connection",
        "Content-Length",
        "Content-Type",
    ] {
        assert_denied(
            &p,
            "github",
            json!(["GET", "/search", {"headers": {h: "x"}}]),
            &format!("header {h} not allowed for github"),
        );
    }
}

#[test]
fn the_capabilitys_own_auth_header_cannot_be_sent_by_the_agent() {
    let p = Policy::compile(&spec(json!([{
        "name": "k", "baseUrl": "https://a.example", "paths": ["/**"], "methods": ["GET"],
        "auth": {"header": "X-Api-Key", "value": "{TOKEN}"}
    }])))
    .expect("compiles");
    assert_denied(
        &p,
        "k",
        json!(["GET", "/x", {"headers": {"x-api-key": "mine"}}]),
        "credential",
    );
    assert_denied(
        &p,
        "k",
        json!(["GET", "/x", {"headers": {"X-API-KEY": "mine"}}]),
        "credential",
    );
}

#[test]
fn crlf_in_header_names_or_values_is_rejected() {
    let p = github();
    assert_denied(
        &p,
        "github",
        json!(["GET", "/search", {"headers": {"X-A": "v\r\nAuthorization: x"}}]),
        "CR, LF",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/search", {"headers": {"X-A\r\nHost": "v"}}]),
        "CR, LF",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/search", {"headers": {"X A": "v"}}]),
        "valid token",
    );
    let r = ok(
        &p,
        "github",
        json!(["GET", "/search", {"headers": {"Accept": "application/json"}}]),
    );
    assert_eq!(
        r.headers,
        [("Accept".to_owned(), "application/json".to_owned())]
    );
}

#[test]
fn unknown_options_and_extra_arguments_are_denied() {
    let p = github();
    assert_denied(
        &p,
        "github",
        json!(["GET", "/search", {"url": "https://evil"}]),
        "unknown option url",
    );
    assert_denied(
        &p,
        "github",
        json!(["GET", "/search", {}, {}]),
        "at most 3 arguments",
    );
    assert_denied(&p, "nope", json!(["GET", "/"]), "unknown capability nope");
}

// --- typed endpoints ---

#[test]
fn typed_endpoint_places_params_by_location() {
    let p = github();
    let r = ok(
        &p,
        "createIssue",
        json!(["owner-1", "repo", {"title": "t", "dryRun": true, "X-Trace": "abc"}]),
    );
    assert_eq!(r.method, HttpMethod::POST);
    assert_eq!(
        r.url.as_str(),
        "https://api.github.com/repos/owner-1/repo/issues?dryRun=true"
    );
    assert_eq!(r.headers, [("X-Trace".to_owned(), "abc".to_owned())]);
    let sent: Value = serde_json::from_slice(r.body.as_deref().expect("body")).expect("json");
    assert_eq!(sent, json!({"title": "t"}));
}

#[test]
fn typed_endpoint_path_values_cannot_escape_their_segment() {
    let p = github();
    let r = ok(
        &p,
        "createIssue",
        json!(["o", "a/../../admin", {"title": "t"}]),
    );
    assert_eq!(r.url.path(), "/repos/o/a%2F..%2F..%2Fadmin/issues");
    let r = ok(&p, "createIssue", json!(["o", "%2f..%2f", {"title": "t"}]));
    assert_eq!(r.url.path(), "/repos/o/%252f..%252f/issues");
    assert_denied(
        &p,
        "createIssue",
        json!(["o", "..", {"title": "t"}]),
        "must not be empty, . or ..",
    );
    assert_denied(
        &p,
        "createIssue",
        json!(["o", ".", {"title": "t"}]),
        "must not be empty, . or ..",
    );
    assert_denied(
        &p,
        "createIssue",
        json!(["o", "", {"title": "t"}]),
        "must not be empty",
    );
}

#[test]
fn typed_endpoint_denies_missing_unknown_and_non_matching_params() {
    let p = github();
    assert_denied(
        &p,
        "createIssue",
        json!(["o"]),
        "missing required path param repo",
    );
    assert_denied(
        &p,
        "createIssue",
        json!(["o", "r"]),
        "missing required param title",
    );
    assert_denied(
        &p,
        "createIssue",
        json!(["o", "r", {"title": "t", "admin": 1}]),
        "unknown param admin",
    );
    assert_denied(
        &p,
        "createIssue",
        json!(["o", "r", {"title": "t", "owner": "x"}]),
        "positionally",
    );
    assert_denied(
        &p,
        "createIssue",
        json!(["Evil.Owner", "r", {"title": "t"}]),
        "does not match its pattern",
    );
    assert_denied(
        &p,
        "createIssue",
        json!(["ok-owner\n", "r", {"title": "t"}]),
        "does not match its pattern",
    );
    assert_denied(
        &p,
        "createIssue",
        json!(["o", "r", {"title": "t"}, 1]),
        "at most 3 arguments",
    );
}

#[test]
fn typed_endpoint_header_params_naming_credentials_do_not_compile() {
    let s = spec(json!([{
        "name": "t", "endpoint": "https://a.example/x", "method": "GET",
        "params": {"Authorization": {"in": "header"}}
    }]));
    assert!(matches!(
        Policy::compile(&s),
        Err(PolicyError::BadParam { .. })
    ));
}

// --- redirects ---

#[test]
fn redirects_stay_on_origin_and_inside_the_allowed_paths() {
    let p = github();
    let req = ok(&p, "github", json!(["GET", "/repos/owner/repo/issues/1"]));
    let next = p
        .check_redirect(&req, "/repos/owner/repo/issues/2")
        .expect("same origin, allowed path");
    assert_eq!(
        next.as_str(),
        "https://api.github.com/repos/owner/repo/issues/2"
    );
    assert!(
        p.check_redirect(&req, "3").is_ok(),
        "relative to the current URL"
    );
    for loc in [
        "https://evil.example/repos/owner/repo/issues/2",
        "//evil.example/repos/owner/repo/issues/2",
        "http://api.github.com/repos/owner/repo/issues/2",
        "https://api.github.com:8443/repos/owner/repo/issues/2",
        "/admin",
        "/repos/owner/repo/issues/..%2f..%2fadmin",
        "https://user@api.github.com/repos/owner/repo/issues/2",
        "/repos/owner/repo/issues/\\evil",
    ] {
        assert!(
            p.check_redirect(&req, loc).is_err(),
            "{loc} must be refused"
        );
    }
    let typed = ok(&p, "createIssue", json!(["o", "r", {"title": "t"}]));
    assert!(p.check_redirect(&typed, "/repos/x/y/issues").is_ok());
    assert!(p.check_redirect(&typed, "/repos/x/issues").is_err());
}

#[test]
fn only_loopback_capabilities_allow_private_addresses() {
    let p = github();
    assert!(
        p.allows_private_addresses("dev", &url::Url::parse("https://127.0.0.1/").expect("url"))
    );
    assert!(!p.allows_private_addresses(
        "github",
        &url::Url::parse("https://127.0.0.1/").expect("url")
    ));
    assert!(!p.allows_private_addresses(
        "unknown",
        &url::Url::parse("https://127.0.0.1/").expect("url")
    ));
}

// --- rate limits ---

#[test]
fn rate_limiter_spends_refills_and_carries_budget() {
    let p = github();
    let t0 = Instant::now();
    let mut rl = RateLimiter::new(&p, &BTreeMap::new(), t0);
    assert!(rl.try_acquire("gmail", t0).is_ok());
    assert!(rl.try_acquire("gmail", t0).is_ok());
    let err = rl.try_acquire("gmail", t0).expect_err("bucket empty");
    assert!(
        err.contains("rate limit of 2 requests per 10 s exceeded for gmail"),
        "{err}"
    );
    // Unlimited capabilities are never limited.
    for _ in 0..100 {
        assert!(rl.try_acquire("github", t0).is_ok());
    }
    // 5 s refills one token (2 per 10 s).
    let t1 = t0 + Duration::from_secs(5);
    assert!(rl.try_acquire("gmail", t1).is_ok());
    assert!(rl.try_acquire("gmail", t1).is_err());
    let budget = rl.budget(t1);
    assert!(budget["gmail"] < 1.0);
    assert!(!budget.contains_key("github"));
    // Carried over: an empty budget stays empty.
    let mut next = RateLimiter::new(&p, &budget, t1);
    assert!(next.try_acquire("gmail", t1).is_err());
    let mut forged = RateLimiter::new(&p, &BTreeMap::from([("gmail".into(), 1e9)]), t0);
    assert!(forged.try_acquire("gmail", t0).is_ok());
    assert!(forged.try_acquire("gmail", t0).is_ok());
    assert!(
        forged.try_acquire("gmail", t0).is_err(),
        "budget is clamped to capacity"
    );
}

// --- property: nothing accepted escapes its glob ---

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just("%2f".to_owned()),
        Just("%5c".to_owned()),
        Just("\\".to_owned()),
        Just("".to_owned()),
        Just("a".to_owned()),
        Just("issues".to_owned()),
        Just("repo".to_owned()),
        Just("caf\u{e9}".to_owned()),
        Just("%41".to_owned()),
        Just("@evil".to_owned()),
        Just("evil.example".to_owned()),
        Just(":".to_owned()),
        Just("..;".to_owned()),
        Just("\u{2025}".to_owned()),
        Just("\u{ff0e}\u{ff0e}".to_owned()),
        "[a-z.%/\\\\]{1,4}",
    ]
}

fn glob_matches(glob: &str, path: &str) -> bool {
    fn go(g: &[&str], p: &[&str]) -> bool {
        match g.split_first() {
            None => p.is_empty(),
            Some((&"**", rest)) => (0..=p.len()).any(|i| go(rest, &p[i..])),
            Some((&"*", rest)) => !p.is_empty() && !p[0].is_empty() && go(rest, &p[1..]),
            Some((lit, rest)) => p.first() == Some(lit) && go(rest, &p[1..]),
        }
    }
    let split = |s: &str| -> Vec<String> {
        let t = s.strip_prefix('/').unwrap_or(s);
        if t.is_empty() {
            Vec::new()
        } else {
            t.split('/').map(str::to_owned).collect()
        }
    };
    let g = split(glob);
    let p = split(path);
    let g: Vec<&str> = g.iter().map(String::as_str).collect();
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    go(&g, &p)
}

/// Checks the property for one raw path; `Ok(true)` when the path was accepted.
fn accepted_path_stays_inside_its_glob(
    p: &Policy,
    globs: &[&str],
    raw: &str,
) -> Result<bool, TestCaseError> {
    let Ok(req) = p.decide("c", &[json!("GET"), json!(raw)]) else {
        return Ok(false);
    };
    // What is sent parses back to the same URL ...
    let sent = url::Url::parse(req.url.as_str()).expect("sent URL parses");
    prop_assert_eq!(&sent, &req.url);
    // ... at the base origin, under the base path ...
    prop_assert_eq!(
        sent.origin().ascii_serialization(),
        "https://api.example.com"
    );
    prop_assert_eq!(sent.username(), "");
    let rel = sent.path().strip_prefix("/v3").expect("under base path");
    prop_assert!(rel.is_empty() || rel.starts_with('/'));
    // ... with no dot, encoded-slash or backslash segment left to reinterpret ...
    for s in rel.split('/') {
        let l = s.to_ascii_lowercase();
        let d = l.replace("%2e", ".");
        prop_assert!(d != "." && d != "..", "dot segment in {}", rel);
        prop_assert!(!l.contains("%2f") && !l.contains("%5c") && !l.contains('\\'));
    }
    // ... and matching one of the globs.
    prop_assert!(
        globs.iter().any(|g| glob_matches(g, rel)),
        "{} matched no glob",
        rel
    );
    Ok(true)
}

#[test]
fn no_accepted_path_resolves_outside_its_glob() {
    let globs = ["/repos/owner/*", "/repos/owner/repo/**", "/a"];
    let p = Policy::compile(&spec(json!([{
        "name": "c", "baseUrl": "https://api.example.com/v3",
        "paths": globs, "methods": ["GET"]
    }])))
    .expect("compiles");
    let strategy = (
        proptest::collection::vec(segment(), 0..6),
        prop_oneof![
            Just("/"),
            Just("//"),
            Just("/repos/owner/"),
            Just("/repos/owner/repo/"),
            Just("")
        ],
    );
    let accepted = std::cell::Cell::new(0u32);
    let rejected = std::cell::Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(3000));
    runner
        .run(&strategy, |(segs, lead)| {
            let raw = format!("{lead}{}", segs.join("/"));
            let ok = accepted_path_stays_inside_its_glob(&p, &globs, &raw)?;
            let counter = if ok { &accepted } else { &rejected };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .expect("property holds");
    // The property is only meaningful if both branches are exercised.
    assert!(
        accepted.get() > 50,
        "only {} accepted paths generated",
        accepted.get()
    );
    assert!(
        rejected.get() > 50,
        "only {} rejected paths generated",
        rejected.get()
    );
}

// --- property: the compiled glob is the glob the owner read ---

/// The glob as displayed, read independently of both the runner and the crds grammar: a
/// regular expression over the `/`-joined path where a whole-segment `**` is any number of
/// segments, a whole-segment `*` one non-empty segment and a `*` inside a segment any run of
/// characters other than `/`.
fn displayed_glob_regex(glob: &str) -> regex::Regex {
    let mut re = String::from("^");
    let rest = glob.strip_prefix('/').expect("glob starts with /");
    for seg in rest.split('/') {
        match seg {
            "**" => re.push_str("(?:/[^/]*)*"),
            "*" => re.push_str("/[^/]+"),
            s => {
                re.push('/');
                let pieces: Vec<String> = s.split('*').map(regex::escape).collect();
                re.push_str(&pieces.join("[^/]*"));
            }
        }
    }
    re.push('$');
    regex::Regex::new(&re).expect("reference regex")
}

fn glob_segment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "issues", "x.json", "*", "**", "a*", "*.json", "i*s", "*s*", "issues**", "***", "**b",
        "a**", "****",
    ])
}

fn path_segment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "issues", "x.json", "is", "iXs", "issuesX", "b", "ab", ".json", "s", "aa",
    ])
}

#[test]
fn every_path_a_compiled_glob_accepts_matches_the_glob_as_displayed() {
    let strategy = (
        proptest::collection::vec(glob_segment(), 1..4),
        proptest::collection::vec(proptest::collection::vec(path_segment(), 0..5), 40),
    );
    let compiled = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    let accepted = std::cell::Cell::new(0u32);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(1500));
    runner
        .run(&strategy, |(glob_segs, paths)| {
            let glob = format!("/{}", glob_segs.join("/"));
            let in_segment = glob_segs.iter().any(|s| s.contains("**") && *s != "**");
            let policy = Policy::compile(&spec(json!([{
                "name": "c", "baseUrl": "https://api.example.com",
                "paths": [glob], "methods": ["GET"]
            }])));
            let Ok(policy) = policy else {
                // Refused only for `**` inside a segment, and then always (fail closed).
                prop_assert!(in_segment, "{} refused: {:?}", glob, policy.err());
                refused.set(refused.get() + 1);
                return Ok(());
            };
            prop_assert!(
                !in_segment,
                "{} compiled although ** is inside a segment",
                glob
            );
            compiled.set(compiled.get() + 1);
            let displayed = displayed_glob_regex(&glob);
            let grammar = oauth3_crds::PathGlob::parse(&glob).expect("grammar accepts it");
            for segs in paths {
                let path = format!("/{}", segs.join("/"));
                let sent = policy.decide("c", &[json!("GET"), json!(path)]).is_ok();
                let reads = displayed.is_match(&path);
                // Accepted => matches what the owner read; and what the owner read (a plain,
                // canonical path) is accepted, so the grammar neither widens nor narrows.
                prop_assert!(
                    !sent || reads,
                    "{} accepted {} outside its reading",
                    glob,
                    path
                );
                if !segs.is_empty() {
                    prop_assert_eq!(sent, reads, "{} vs {}", glob, path);
                }
                prop_assert_eq!(
                    grammar.matches(&path),
                    reads,
                    "grammar: {} vs {}",
                    glob,
                    path
                );
                if sent {
                    accepted.set(accepted.get() + 1);
                }
            }
            Ok(())
        })
        .expect("property holds");
    for (what, n) in [
        ("compiled", &compiled),
        ("refused", &refused),
        ("accepted", &accepted),
    ] {
        assert!(n.get() > 100, "only {} globs/paths {what}", n.get());
    }
}
