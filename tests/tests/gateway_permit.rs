//! The gateway's permit dialect end to end on a real kube-apiserver: real ServiceAccount
//! tokens (TokenRequest) checked by TokenReview and SubjectAccessReview, the operator (process
//! launcher) + the real runner binary + a recording HTTPS upstream. Played from both sides:
//! the agent asks, the owner seals a secret and approves through the gateway, and every
//! attempt to approve without the owner's credential, to read another tenant's requests or to
//! slip bad input through is refused, with nothing created and no secret in any answer.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use oauth3_crds::{Execution, Permit, PermitPhase};
use oauth3_test_support::wait_until;
use oauth3_tests::client_or_skip;
use oauth3_tests::gateway::{Answer, GatewayEnv, Http, InProcessGateway, Tenant};
use serde_json::{Value, json};

const SECRET: &str = "tok-gateway-e2e-5f3a9c";
const DEV_KEY: [u8; 32] = [7u8; 32];
/// The long-poll hold the gateway under test uses.
const HOLD: Duration = Duration::from_secs(20);

/// Every answer a test saw, to check that none of them carries the secret.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn keep(&mut self, a: &Answer) -> Answer {
        self.0.push(a.text.clone());
        for (k, v) in &a.headers {
            self.0.push(format!("{k}: {v}"));
        }
        a.clone()
    }

    fn assert_no_secret(&self) {
        for text in &self.0 {
            assert!(
                !text.contains(SECRET),
                "the secret leaked in an answer: {text}"
            );
        }
    }
}

/// A Permit request in both capability forms, as text: the api-gateway form's positional
/// order is the declaration order of `params`, which a `json!` value would sort away.
fn permit_request(origin: &str) -> String {
    format!(
        r#"{{
        "description": "File issues and read items",
        "capabilities": [
            {{
                "name": "github.createIssue",
                "endpoint": "{origin}/v1/repos/{{owner}}/{{repo}}/issues",
                "method": "POST",
                "auth": {{"header": "Authorization", "value": "token {{API_TOKEN}}"}},
                "params": {{"owner": {{"in": "path"}}, "repo": {{"in": "path"}},
                           "title": {{"in": "body"}}, "body": {{"in": "body"}}}}
            }},
            {{
                "type": "scoped-fetch", "name": "items", "base_url": "{origin}/v1",
                "scope": ["items", "echo-auth"], "methods": ["GET"],
                "auth": {{"header": "Authorization", "value": "Bearer {{API_TOKEN}}"}},
                "rate_limit": {{"max_calls": 10, "window_seconds": 60}}
            }}
        ]
    }}"#
    )
}

/// The shared environment, with this file's helpers.
struct Env(GatewayEnv);

impl std::ops::Deref for Env {
    type Target = GatewayEnv;
    fn deref(&self) -> &GatewayEnv {
        &self.0
    }
}

impl Env {
    /// A tenant, a recording upstream, a gateway and (with `operator`) an operator with the
    /// real runner on the tenant's namespace.
    async fn new(prefix: &str, operator: bool) -> Option<Env> {
        GatewayEnv::new(prefix, operator, DEV_KEY, HOLD)
            .await
            .map(Env)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        self.http.post(&self.gw.url(path), token, body).await
    }

    async fn post_text(&self, path: &str, token: Option<&str>, body: &str) -> Answer {
        self.http
            .post_raw(
                &self.gw.url(path),
                token,
                "application/json",
                body.as_bytes().to_vec(),
                &[],
            )
            .await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.http.get(&self.gw.url(path), token).await
    }

    /// Polls `status_url` (each call may be held) until its status is final.
    async fn until_final(&self, status_url: &str, seen: &mut Seen) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let a = seen.keep(&self.http.get(status_url, None).await);
            assert_eq!(a.status, 200, "{}", a.text);
            let s = a.body["status"].as_str().unwrap_or_default().to_owned();
            if matches!(s.as_str(), "completed" | "failed" | "denied") {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "still {s} after 90 s: {}",
                a.text
            );
        }
    }

    /// Waits until Permit `name` is `Approved`.
    async fn wait_approved(&self, name: &str) {
        wait_until(
            "the Permit is Approved",
            Duration::from_secs(30),
            || async {
                let p = Api::<Permit>::namespaced(self.admin.clone(), &self.tenant.ns)
                    .get(name)
                    .await
                    .map_err(|e| e.to_string())?;
                match p.status.and_then(|s| s.phase) {
                    Some(PermitPhase::Approved) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

#[tokio::test]
async fn the_permit_dialect_runs_end_to_end_and_only_the_owner_can_approve() {
    let Some(env) = Env::new("gw-e2e", true).await else {
        return;
    };
    let (agent, owner) = (env.tenant.agent.clone(), env.tenant.owner.clone());
    let mut seen = Seen::default();

    // The owner stores the secret through the gateway: sealed on arrival.
    let a = seen.keep(
        &env.post(
            "/secrets",
            Some(&agent),
            &json!({"name": "API_TOKEN", "value": SECRET}),
        )
        .await,
    );
    assert_eq!(a.status, 403, "an agent may not store secrets: {}", a.text);
    let a = seen.keep(
        &env.post(
            "/secrets",
            Some(&owner),
            &json!({"name": "API_TOKEN", "value": SECRET}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["name"], "API_TOKEN");
    let stored = Api::<Secret>::namespaced(env.admin.clone(), &env.tenant.ns)
        .get("api-token")
        .await
        .expect("sealed secret stored");
    assert_eq!(stored.type_.as_deref(), Some("oauth3.dev/sealed"));
    let stored_text = serde_json::to_string(&stored).expect("json");
    let envelope = String::from_utf8(stored.data.expect("data")["sealed"].0.clone()).expect("utf8");
    assert!(envelope.starts_with("oauth3-sealed:v1:"));
    assert!(!stored_text.contains(SECRET) && !envelope.contains(SECRET));

    // The agent asks for a Permit in both capability forms.
    let a = seen.keep(
        &env.post_text("/permit", Some(&agent), &permit_request(&env.up.origin()))
            .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "pending_permit");
    let request_id = a.body["request_id"]
        .as_str()
        .expect("request_id")
        .to_owned();
    assert!(request_id.starts_with("permit_"), "{request_id}");
    let permit_id = a.body["permit_id"].as_str().expect("permit_id").to_owned();
    let approval_url = a.body["approval_url"]
        .as_str()
        .expect("approval_url")
        .to_owned();
    let status_url = a.body["status_url"]
        .as_str()
        .expect("status_url")
        .to_owned();
    assert!(status_url.contains("wait=true") && status_url.contains("token="));
    assert!(
        a.body["spec_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    let sigs: Vec<&str> = a.body["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(|c| c["signature"].as_str())
        .collect();
    assert!(
        sigs.contains(&"createIssue(owner, repo, title, body)"),
        "{sigs:?}"
    );
    assert_eq!(a.body["secrets"], json!(["API_TOKEN"]));

    // The status URL works without any header; a held poll starts now.
    let poll = {
        let http = env.http.clone();
        let url = status_url.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            (http.get(&url, None).await, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Nobody but the owner decides: not the agent, not the link's token on its own, not a
    // form post without the page's CSRF token.
    let approve_path = format!("/approve/{request_id}");
    let a = seen.keep(
        &env.post(&approve_path, Some(&agent), &json!({"action": "approve"}))
            .await,
    );
    assert_eq!(a.status, 403, "an agent token cannot approve: {}", a.text);
    let a = seen.keep(
        &env.http
            .post(&approval_url, None, &json!({"action": "approve"}))
            .await,
    );
    assert_eq!(
        a.status, 401,
        "the URL token alone cannot approve: {}",
        a.text
    );
    let form = format!("action=approve&owner_token={owner}&csrf={}", "a".repeat(64));
    let a = seen.keep(
        &env.http
            .post_raw(
                &approval_url,
                None,
                "application/x-www-form-urlencoded",
                form.into_bytes(),
                &[],
            )
            .await,
    );
    assert_eq!(
        a.status, 403,
        "a form without the page's cookie is CSRF: {}",
        a.text
    );
    assert!(a.text.contains("CSRF"), "{}", a.text);
    // Even with the cookie and field matching, a post another site makes is refused.
    let csrf = "c".repeat(64);
    let cookie = format!("oauth3_csrf={csrf}");
    let form = format!("action=approve&owner_token={owner}&csrf={csrf}");
    for from_elsewhere in [
        [
            ("cookie", cookie.as_str()),
            ("origin", "https://evil.example"),
        ],
        [
            ("cookie", cookie.as_str()),
            ("sec-fetch-site", "cross-site"),
        ],
    ] {
        let a = seen.keep(
            &env.http
                .post_raw(
                    &approval_url,
                    None,
                    "application/x-www-form-urlencoded",
                    form.clone().into_bytes(),
                    &from_elsewhere,
                )
                .await,
        );
        assert_eq!(a.status, 403, "{from_elsewhere:?}: {}", a.text);
        assert!(a.text.contains("posted from another site"), "{}", a.text);
    }
    let a = seen.keep(
        &env.get(&format!("/execute/{request_id}/status"), Some(&agent))
            .await,
    );
    assert_eq!(a.body["status"], "pending", "{}", a.text);

    // The owner approves through the gateway; the held poll wakes with the decision.
    let a = seen.keep(
        &env.post(&approve_path, Some(&owner), &json!({"action": "approve"}))
            .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "completed");
    let (woke, held) = poll.await.expect("poll task");
    let woke = seen.keep(&woke);
    assert_eq!(woke.body["status"], "completed", "{}", woke.text);
    assert_eq!(woke.body["permit_id"], permit_id.as_str());
    assert!(
        held < HOLD,
        "the poll was answered by the change, not the {HOLD:?} bound"
    );
    let permit = Api::<Permit>::namespaced(env.admin.clone(), &env.tenant.ns)
        .get(&permit_id)
        .await
        .expect("permit");
    let approval = permit.status.and_then(|s| s.approval).expect("approval");
    assert_eq!(
        approval.by,
        format!("system:serviceaccount:{}:owner", env.tenant.ns)
    );
    assert_eq!(approval.via, oauth3_crds::ApprovalVia::Web);
    // A final status is answered at once, never held.
    let start = Instant::now();
    let a = seen.keep(&env.http.get(&status_url, None).await);
    assert_eq!(a.body["status"], "completed");
    assert!(start.elapsed() < HOLD);
    let a = seen.keep(
        &env.post(&approve_path, Some(&owner), &json!({"action": "approve"}))
            .await,
    );
    assert_eq!(a.body["message"], "Already processed", "{}", a.text);

    // The agent runs code calling both capabilities, positionally for the api-gateway one.
    let code = r#"
const made = await createIssue("o", "r", "Hello", "From TEE");
const list = await items('GET', '/items');
const echo = await items('GET', '/echo-auth');
console.log(JSON.stringify({made, list, echo}));
return {made: made.path};
"#;
    let a = seen.keep(
        &env.post(
            "/execute",
            Some(&agent),
            &json!({"permit_id": permit_id, "code": code, "args": {"n": 1}}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "approved");
    let exec_id = a.body["request_id"]
        .as_str()
        .expect("request_id")
        .to_owned();
    assert!(exec_id.starts_with("exec_"), "{exec_id}");
    let exec_url = a.body["status_url"]
        .as_str()
        .expect("status_url")
        .to_owned();
    let done = env.until_final(&exec_url, &mut seen).await;
    assert_eq!(done.body["status"], "completed", "{}", done.text);
    let result = &done.body["result"];
    assert_eq!(result["success"], true, "{}", done.text);
    assert_eq!(result["value"]["made"], "/v1/repos/o/r/issues");
    assert!(
        result["stdout"]
            .as_str()
            .is_some_and(|s| s.contains("[REDACTED]"))
    );

    // The upstream got the owner's credential and the positional arguments in place.
    let issue = env
        .up
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == "/v1/repos/o/r/issues")
        .expect("the issue request reached the upstream");
    assert_eq!(issue.method, "POST");
    assert_eq!(
        issue.header_values("authorization"),
        [format!("token {SECRET}")]
    );
    let body: Value = serde_json::from_slice(&issue.body).expect("json body");
    assert_eq!(body, json!({"title": "Hello", "body": "From TEE"}));

    // stdout and the session's actions.
    let a = seen.keep(
        &env.get(&format!("/execute/{exec_id}/stdout"), Some(&agent))
            .await,
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-success"), Some("true"));
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    assert!(a.text.contains("/v1/repos/o/r/issues"), "{}", a.text);
    let a = seen.keep(
        &env.get(&format!("/session/{permit_id}/actions"), Some(&agent))
            .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["actions"][0]["id"], exec_id.as_str());
    assert_eq!(a.body["actions"][0]["action_id"], "action");
    assert_eq!(a.body["actions"][0]["status"], "completed");

    // A policy refusal of a well-formed request is a 200 with status denied and the reason.
    let second = permit_request(&env.up.origin()).replacen('{', r#"{"permit_id": "refused","#, 1);
    let a = seen.keep(&env.post_text("/permit", Some(&agent), &second).await);
    assert_eq!(a.status, 200, "{}", a.text);
    let refused_id = a.body["request_id"].as_str().expect("id").to_owned();
    let refused_status = a.body["status_url"].as_str().expect("url").to_owned();
    let a = seen.keep(
        &env.post(
            &format!("/approve/{refused_id}"),
            Some(&owner),
            &json!({"action": "deny"}),
        )
        .await,
    );
    assert_eq!(a.body["status"], "denied", "{}", a.text);
    let a = seen.keep(&env.http.get(&refused_status, None).await);
    assert_eq!(a.body["status"], "denied", "{}", a.text);
    let a = seen.keep(
        &env.post(
            "/execute",
            Some(&agent),
            &json!({"permit_id": "refused", "code": "return 1"}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let denied = env
        .until_final(a.body["status_url"].as_str().expect("url"), &mut seen)
        .await;
    assert_eq!(denied.body["status"], "denied", "{}", denied.text);
    assert!(
        denied.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("PermitDenied")),
        "{}",
        denied.text
    );

    // No secret in any answer, Execution status or Event.
    seen.assert_no_secret();
    let execs = Api::<Execution>::namespaced(env.admin.clone(), &env.tenant.ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    let events = Api::<Event>::namespaced(env.admin.clone(), &env.tenant.ns)
        .list(&ListParams::default())
        .await
        .expect("events");
    for text in [
        serde_json::to_string(&execs.items).expect("json"),
        serde_json::to_string(&events.items).expect("json"),
        serde_json::to_string(&env.permits().await).expect("json"),
    ] {
        assert!(
            !text.contains(SECRET),
            "the secret leaked into the cluster's objects"
        );
    }
    env.stop().await;
}

/// A raw HTTP/1.1 GET of `path` exactly as written (no client-side normalisation of `..` or
/// percent-escapes), with a Bearer token; returns status and body.
async fn raw_get(base: &str, path: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.strip_prefix("http://").expect("http base");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_creates_nothing() {
    let Some(env) = Env::new("gw-bad", false).await else {
        return;
    };
    let agent = env.tenant.agent.clone();
    let cap = |extra: Value| {
        let mut c = json!({"type": "scoped-fetch", "name": "gh",
            "base_url": "https://api.github.com", "scope": ["repos/*"]});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        json!({"description": "d", "capabilities": [c]})
    };
    for (body, status, needle) in [
        (
            cap(json!({"type": "ftp"})),
            400,
            "capabilities[0].type: unknown type \"ftp\"",
        ),
        (
            cap(json!({"scope": []})),
            400,
            "capabilities[0].scope: must list at least one",
        ),
        (
            cap(json!({"name": "git hub"})),
            400,
            "capabilities[0].name: \"git hub\"",
        ),
        (
            cap(json!({"base_url": "https://user:pw@api.github.com"})),
            400,
            "userinfo",
        ),
        (json!({"description": "d"}), 400, "capabilities: required"),
        (
            json!({"description": "d", "intent": [{"name": "github", "goal": "list issues"}]}),
            400,
            "intent[0]: missing field `docUrls`",
        ),
        (
            json!({"description": "d", "intent": [{"name": "github", "goal": "list issues",
                "docUrls": ["https://docs.example/a.json"]}], "capabilities": [{"name": "x",
                "base_url": "https://api.github.com"}]}),
            400,
            "send intent or capabilities, not both",
        ),
    ] {
        let a = env.post("/permit", Some(&agent), &body).await;
        assert_eq!(a.status, status, "{body} -> {}", a.text);
        assert!(
            a.body["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{body} -> {} (want {needle:?})",
            a.text
        );
    }
    let a = env
        .http
        .post_raw(
            &env.gw.url("/permit"),
            Some(&agent),
            "application/json",
            b"{\"description\": \"d\", \"capabilities\": [".to_vec(),
            &[],
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(
        a.text.contains("request body: not valid JSON"),
        "{}",
        a.text
    );
    let a = env
        .http
        .post_raw(
            &env.gw.url("/permit"),
            Some(&agent),
            "application/json",
            vec![b' '; 10 * 1024 * 1024],
            &[],
        )
        .await;
    assert_eq!(a.status, 413, "{}", a.text);
    assert!(a.text.contains("request body: larger than"), "{}", a.text);

    // Ids are checked before anything is looked up.
    for path in [
        "/execute/..%2F..%2Fapi%2Fv1%2Fsecrets/status",
        "/execute/permit_0123456789abcdef%2F..%2F/status",
        "/execute/%2e%2e/stdout",
        "/execute/PERMIT_0123456789ABCDEF/status",
    ] {
        let (code, body) = raw_get(&env.gw.base, path, &agent).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains("\"field\":\"id\""), "{path}: {body}");
    }

    // Executions: bad fields, and a Permit that does not exist.
    for (body, status, needle) in [
        (json!({"code": "return 1"}), 400, "permit_id: required"),
        (json!({"permit_id": "x", "code": ""}), 400, "code: required"),
        (
            json!({"permit_id": "x", "code": "1", "args": [1]}),
            400,
            "args: must be a JSON object",
        ),
        (
            json!({"permit_id": "../x", "code": "1"}),
            400,
            "permit_id: must be a Permit name",
        ),
        (
            json!({"permit_id": "x", "code": "1", "extra": true}),
            400,
            "unknown field `extra`",
        ),
        (
            json!({"permit_id": "nope", "code": "return 1"}),
            404,
            "Permit nope not found",
        ),
    ] {
        let a = env.post("/execute", Some(&agent), &body).await;
        assert_eq!(a.status, status, "{body} -> {}", a.text);
        assert!(
            a.body["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{body} -> {} (want {needle:?})",
            a.text
        );
    }

    // No credential, or one the API server does not accept.
    let a = env.post("/permit", None, &cap(json!({}))).await;
    assert_eq!(a.status, 401, "{}", a.text);
    let a = env
        .post("/permit", Some("not-a-token"), &cap(json!({})))
        .await;
    assert_eq!(a.status, 401, "{}", a.text);
    // The owner role does not include asking for Permits.
    let a = env
        .post("/permit", Some(&env.tenant.owner), &cap(json!({})))
        .await;
    assert_eq!(a.status, 403, "{}", a.text);

    assert!(env.permits().await.is_empty(), "bad input created a Permit");
    let execs = Api::<Execution>::namespaced(env.admin.clone(), &env.tenant.ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(execs.items.is_empty(), "bad input created an Execution");

    // The discovery answers.
    for path in ["/", "/health", "/plugins"] {
        let a = env.get(path, None).await;
        assert_eq!(a.status, 200, "{path}");
        assert!(a.body.is_object(), "{path}: {}", a.text);
    }
    assert_eq!(env.get("/health", None).await.body["status"], "ok");
    env.stop().await;
}

#[tokio::test]
async fn tenants_never_see_or_act_on_each_others_requests() {
    let Some(env) = Env::new("gw-a", false).await else {
        return;
    };
    let b = Tenant::new(&env.admin, "gw-b").await;
    let a = env
        .post_text(
            "/permit",
            Some(&env.tenant.agent),
            &permit_request(&env.up.origin()),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.body["request_id"].as_str().expect("id").to_owned();
    let permit_id = a.body["permit_id"].as_str().expect("permit").to_owned();
    let status_url = a.body["status_url"].as_str().expect("url").to_owned();

    // B's agent: not found in its own namespace; refused in A's.
    let got = env
        .get(&format!("/execute/{id}/status"), Some(&b.agent))
        .await;
    assert_eq!(got.status, 404, "{}", got.text);
    let got = env
        .http
        .get_with(
            &env.gw.url(&format!("/execute/{id}/status")),
            &[
                ("authorization", &format!("Bearer {}", b.agent)),
                ("x-oauth3-namespace", &env.tenant.ns),
            ],
        )
        .await;
    assert_eq!(got.status, 403, "{}", got.text);
    let got = env
        .post(
            "/execute",
            Some(&b.agent),
            &json!({"permit_id": permit_id, "code": "return 1"}),
        )
        .await;
    assert_eq!(got.status, 404, "{}", got.text);
    let got = env
        .get(&format!("/session/{permit_id}/actions"), Some(&b.agent))
        .await;
    assert_eq!(got.status, 404, "{}", got.text);
    // A's read-only token does not open the request from B's namespace.
    let moved = status_url.replace(
        &format!("tenant={}", env.tenant.ns),
        &format!("tenant={}", b.ns),
    );
    let got = env.http.get(&moved, None).await;
    assert_eq!(got.status, 404, "{}", got.text);
    // B's owner cannot decide A's request, in either namespace.
    let got = env
        .post(
            &format!("/approve/{id}"),
            Some(&b.owner),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(got.status, 404, "{}", got.text);
    let got = env
        .post(
            &format!("/approve/{id}?tenant={}", env.tenant.ns),
            Some(&b.owner),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(got.status, 403, "{}", got.text);
    let permit = Api::<Permit>::namespaced(env.admin.clone(), &env.tenant.ns)
        .get(&permit_id)
        .await
        .expect("permit");
    assert!(
        permit.status.and_then(|s| s.approval).is_none(),
        "nobody from tenant B decided"
    );
    // And A's own agent reads it fine.
    let got = env
        .get(&format!("/execute/{id}/status"), Some(&env.tenant.agent))
        .await;
    assert_eq!(got.status, 200, "{}", got.text);
    wait_until("A's request is pending", Duration::from_secs(5), || async {
        let p = Api::<Permit>::namespaced(env.admin.clone(), &env.tenant.ns)
            .get(&permit_id)
            .await
            .map_err(|e| e.to_string())?;
        match p.status.and_then(|s| s.phase) {
            None | Some(PermitPhase::Pending) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    env.stop().await;
}

#[tokio::test]
async fn skill_code_in_typescript_runs_under_an_approved_permit_and_fetch_is_refused() {
    let Some(env) = Env::new("gw-skill", true).await else {
        return;
    };
    let (agent, owner) = (env.tenant.agent.clone(), env.tenant.owner.clone());
    let mut seen = Seen::default();
    let a = seen.keep(
        &env.post(
            "/secrets",
            Some(&owner),
            &json!({"name": "API_TOKEN", "value": SECRET}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let a = seen.keep(
        &env.post_text("/permit", Some(&agent), &permit_request(&env.up.origin()))
            .await,
    );
    let id = a.body["request_id"].as_str().expect("id").to_owned();
    let permit = a.body["permit_id"].as_str().expect("permit").to_owned();
    let a = seen.keep(
        &env.post(
            &format!("/approve/{id}"),
            Some(&owner),
            &json!({"action": "approve"}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    env.wait_approved(&permit).await;

    // A TypeScript skill, as the SDK sends it: run as TypeScript, args through Deno.env.get,
    // a secret no fetch capability binds: undefined.
    let skill = r#"// @skill greet
// @description Greets and counts items
// @secrets API_TOKEN
interface Item { path: string }
const name: string = Deno.env.get("NAME")!;
const r = (await items('GET', '/items')) as Item;
console.log(`hello ${name}`, r.path, typeof Deno.env.get("API_TOKEN"));
return { greeted: name };
"#;
    let a = seen.keep(
        &env.post(
            "/execute",
            Some(&agent),
            &json!({"skill_id": "greet", "skill_code": skill, "session_id": permit,
                    "args": {"NAME": "Ada"}}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let exec_id = a.body["request_id"].as_str().expect("id").to_owned();
    let done = env
        .until_final(a.body["status_url"].as_str().expect("url"), &mut seen)
        .await;
    assert_eq!(done.body["status"], "completed", "{}", done.text);
    assert_eq!(
        done.body["result"]["stdout"],
        "hello Ada /v1/items undefined\n"
    );
    assert_eq!(done.body["result"]["value"], json!({"greeted": "Ada"}));
    let execs: Api<Execution> = Api::namespaced(env.admin.clone(), &env.tenant.ns);
    let stored = execs
        .get(&exec_id.replace('_', "-"))
        .await
        .expect("execution");
    assert_eq!(
        stored
            .annotations()
            .get(oauth3_crds::constants::ANNOTATION_SOURCE_DIGEST),
        Some(&oauth3_crds::code_digest(skill)),
        "the digest of the bytes the agent sent is recorded"
    );
    // The skill runs as its author wrote it; the runner removes the types.
    assert!(stored.spec.code.contains("interface Item"));
    assert_eq!(stored.spec.language, oauth3_crds::CodeLanguage::TypeScript);
    assert_eq!(
        stored
            .annotations()
            .get(oauth3_crds::constants::ANNOTATION_ACTION_ID),
        Some(&"greet".to_owned())
    );

    // Refusals create nothing: fetch, an undeclared secret; bad syntax and no session are 400.
    let before = execs
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    for (code, needle) in [
        (
            "const r = await fetch('https://api.github.com/user'); console.log(await r.text());",
            "skill_code: calls fetch",
        ),
        (
            "// @secrets OTHER_TOKEN\nconsole.log(1);",
            "@secrets OTHER_TOKEN is not a secret of Permit",
        ),
    ] {
        let a = seen.keep(
            &env.post(
                "/execute",
                Some(&agent),
                &json!({"skill_id": "x", "skill_code": code, "session_id": permit}),
            )
            .await,
        );
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["status"], "denied", "{}", a.text);
        assert!(
            a.body["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{}",
            a.text
        );
    }
    let a = env
        .post(
            "/execute",
            Some(&agent),
            &json!({"skill_id": "x", "skill_code": "const = ;", "session_id": permit}),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["field"], "skill_code");
    let a = env
        .post(
            "/execute",
            Some(&agent),
            &json!({"action_id": "x", "code": "console.log(1)"}),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["field"], "permit_id");
    let after = execs
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    assert_eq!(before, after, "a refused skill created an Execution");

    // The SDK's read-only calls.
    let a = env.get("/sessions", Some(&agent)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["sessions"][0]["session_id"], permit.as_str());
    let a = env.get("/me", Some(&agent)).await;
    assert_eq!(a.body["role"], "agent", "{}", a.text);
    assert_eq!(a.body["tenant_id"], env.tenant.ns.as_str());
    let a = env.get("/me", Some(&owner)).await;
    assert_eq!(a.body["role"], "owner", "{}", a.text);
    let a = env.get("/history?limit=5", Some(&agent)).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["executions"][0]["request_id"], exec_id.as_str());
    let a = env.get("/history?limit=0", Some(&agent)).await;
    assert_eq!(a.status, 400, "{}", a.text);
    seen.assert_no_secret();
    env.stop().await;
}

/// `POST /scope` as the SDK/CLI send it: the skill's code is pinned, typed constraints become
/// arg rules, the rest is shown as NOT ENFORCED; after the owner approves, exactly that code
/// runs with args that keep the rules, and other code or other args are refused by the
/// gateway and, when the gateway is bypassed, by the operator.
#[tokio::test]
async fn a_scope_session_pins_its_code_and_enforces_its_typed_constraints() {
    let Some(env) = Env::new("gw-scope", true).await else {
        return;
    };
    let (agent, owner) = (env.tenant.agent.clone(), env.tenant.owner.clone());
    let mut seen = Seen::default();
    let skill = r#"// @skill greet
// @description Greets someone by name
const name: string = Deno.env.get("NAME")!;
console.log(`hello ${name}`);
return { greeted: name };
"#;
    let before = env.permits().await.len();
    for (body, field, why) in [
        (json!({"constraints": []}), "description", "required"),
        (
            json!({"description": "d", "networks": ["https://api.github.com"]}),
            "networks[0]",
            "without scheme",
        ),
        (
            json!({"description": "d", "networks": ["*.github.com"]}),
            "networks[0]",
            "wildcards",
        ),
        (json!({"description": "d"}), "networks", "at least one host"),
        (
            json!({"description": "d", "skill_code": skill,
                   "constraints": [{"type": "predicate", "param": "n", "op": "eval", "value": 1}]}),
            "constraints[0]",
            "op must be one of",
        ),
        (
            json!({"description": "d", "skill_code": skill, "session_id": "Not_A_Name"}),
            "session_id",
            "DNS label",
        ),
        (
            json!({"description": "d", "skill_code": skill, "extra": 1}),
            "extra",
            "unknown field",
        ),
    ] {
        let a = env.post("/scope", Some(&agent), &body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert_eq!(a.body["field"], field, "{body}: {}", a.text);
        assert!(a.text.contains(why), "{body}: {}", a.text);
    }
    assert_eq!(
        env.permits().await.len(),
        before,
        "a refused scope created a Permit"
    );

    let a = seen.keep(
        &env.post(
            "/scope",
            Some(&agent),
            &json!({
                "description": "Greet people by their first name",
                "constraints": [
                    {"type": "regex", "param": "NAME", "pattern": "[A-Z][a-z]{1,20}",
                     "rationale": "first names only"},
                    "never greet anyone rudely"
                ],
                "secrets": [],
                "networks": [],
                "skill_code": skill,
                "session_id": "greeting-session"
            }),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "pending_scope", "{}", a.text);
    assert_eq!(a.body["session_id"], "greeting-session");
    let id = a.body["request_id"]
        .as_str()
        .expect("request_id")
        .to_owned();
    let approval_url = a.body["approval_url"]
        .as_str()
        .expect("approval_url")
        .to_owned();
    let status_url = a.body["status_url"]
        .as_str()
        .expect("status_url")
        .to_owned();
    let permits: Api<Permit> = Api::namespaced(env.admin.clone(), &env.tenant.ns);
    let stored = permits
        .get("greeting-session")
        .await
        .expect("session Permit");
    assert_eq!(stored.spec.pinned_code.len(), 1, "{:?}", stored.spec);
    assert_eq!(stored.spec.arg_rules.len(), 1);
    assert_eq!(
        stored.spec.unenforced_constraints,
        ["never greet anyone rudely"]
    );
    assert!(stored.spec.capabilities.is_empty());
    // The same session name again is a conflict, never a silent change of what was asked.
    let a = env
        .post(
            "/scope",
            Some(&agent),
            &json!({"description": "more", "skill_code": skill, "session_id": "greeting-session"}),
        )
        .await;
    assert_eq!(a.status, 409, "{}", a.text);

    // The owner's page shows the pinned code, the rule and what is not enforced.
    let page = env.http.get(&approval_url, None).await;
    for needle in [
        "Code: only this code may run",
        "exactly as it will run:",
        "console.log(`hello ${name}`);",
        "args.NAME must match ^(?:[A-Z][a-z]{1,20})$",
        "NOT ENFORCED",
        "never greet anyone rudely",
    ] {
        assert!(
            page.text.contains(needle),
            "{needle:?} on the page:\n{}",
            page.text
        );
    }
    let a = seen.keep(
        &env.post(
            &format!("/approve/{id}"),
            Some(&owner),
            &json!({"action": "approve"}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let done = env.until_final(&status_url, &mut seen).await;
    assert_eq!(done.body["status"], "completed", "{}", done.text);
    assert_eq!(done.body["session_id"], "greeting-session");

    // The pinned code with args that keep the rule runs.
    let a = seen.keep(
        &env.post(
            "/execute",
            Some(&agent),
            &json!({"skill_id": "greet", "skill_code": skill, "session_id": "greeting-session",
                    "args": {"NAME": "Ada"}}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let done = env
        .until_final(a.body["status_url"].as_str().expect("url"), &mut seen)
        .await;
    assert_eq!(done.body["status"], "completed", "{}", done.text);
    assert_eq!(done.body["result"]["stdout"], "hello Ada\n");

    // Other code, or args that break the rule, are refused and create nothing.
    let execs: Api<Execution> = Api::namespaced(env.admin.clone(), &env.tenant.ns);
    let count = || async {
        execs
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len()
    };
    let before = count().await;
    for (code, args, needle) in [
        (
            format!("{skill}// one more line\n"),
            json!({"NAME": "Ada"}),
            "not the code the owner approved with session greeting-session",
        ),
        (
            skill.to_owned(),
            json!({"NAME": "Ada; rm -rf /"}),
            "args: argRules[0]: args.NAME must match",
        ),
        (skill.to_owned(), json!({}), "args has no \"NAME\""),
    ] {
        let a = seen.keep(
            &env.post(
                "/execute",
                Some(&agent),
                &json!({"skill_id": "greet", "skill_code": code,
                        "session_id": "greeting-session", "args": args}),
            )
            .await,
        );
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["status"], "denied", "{}", a.text);
        assert!(
            a.body["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{needle:?}: {}",
            a.text
        );
    }
    assert_eq!(count().await, before, "a refused run created an Execution");

    // Straight to the API server, past the gateway: the operator refuses the same.
    let pinned_run = execs
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .next()
        .expect("the run above");
    for (name, code, args, reason) in [
        (
            "other-code",
            "return 'not the approved code'".to_owned(),
            json!({"NAME": "Ada"}),
            "CodeNotPinned",
        ),
        (
            "bad-args",
            pinned_run.spec.code.clone(),
            json!({"NAME": "x"}),
            "ArgsRefused",
        ),
    ] {
        let exec: Execution = serde_json::from_value(json!({
            "apiVersion": "oauth3.dev/v1alpha1", "kind": "Execution",
            "metadata": {"name": name},
            "spec": {"permitRef": "greeting-session", "code": code, "args": args,
                     "language": pinned_run.spec.language}
        }))
        .expect("execution");
        execs
            .create(&kube::api::PostParams::default(), &exec)
            .await
            .expect("create");
        let ended = wait_until(
            &format!("Execution {name} refused"),
            Duration::from_secs(30),
            || async {
                let e = execs.get(name).await.map_err(|e| e.to_string())?;
                match e.status.as_ref().and_then(|s| s.phase) {
                    Some(p) if p.is_terminal() => Ok(e),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        let status = ended.status.expect("status");
        assert_eq!(
            status.phase,
            Some(oauth3_crds::ExecutionPhase::Denied),
            "{status:?}"
        );
        assert_eq!(status.reason.as_deref(), Some(reason), "{status:?}");
        assert!(status.stdout.unwrap_or_default().is_empty(), "nothing ran");
    }

    // A skill without a session: a one-off Permit pins it and the run waits for the owner.
    let oneoff = "// @description say hi\nconsole.log('hi ' + Deno.env.get('WHO'));\n";
    let a = seen.keep(
        &env.post(
            "/execute",
            Some(&agent),
            &json!({"skill_id": "hi", "skill_code": oneoff, "args": {"WHO": "Bo"}}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let one_permit = a.body["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let exec_status = a.body["status_url"]
        .as_str()
        .expect("status_url")
        .to_owned();
    let one_approval = a.body["approval_url"]
        .as_str()
        .expect("approval_url")
        .to_owned();
    let stored = permits.get(&one_permit).await.expect("one-off Permit");
    assert_eq!(stored.spec.pinned_code.len(), 1);
    assert_eq!(stored.spec.description, "Run the skill say hi");
    let waiting = wait_until(
        "the run waits for the owner",
        Duration::from_secs(30),
        || async {
            let e = execs
                .list(&ListParams::default().labels(&format!("oauth3.dev/permit={one_permit}")))
                .await
                .map_err(|e| e.to_string())?;
            match e.items.first().and_then(|e| e.status.clone()) {
                // Asked only once it waits: before admission the answer is "approved".
                Some(s) if s.reason.as_deref() == Some("PermitPending") => Ok(env
                    .http
                    .get(&exec_status.replace("wait=true", "wait=false"), None)
                    .await),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(waiting.body["status"], "pending", "{}", waiting.text);
    let a = env
        .http
        .post(&one_approval, None, &json!({"action": "approve"}))
        .await;
    assert_ne!(a.status, 200, "the link alone cannot approve: {}", a.text);
    let a = env
        .http
        .post(&one_approval, Some(&owner), &json!({"action": "approve"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let done = env.until_final(&exec_status, &mut seen).await;
    assert_eq!(done.body["status"], "completed", "{}", done.text);
    assert_eq!(done.body["result"]["stdout"], "hi Bo\n");

    // Hosts become one capability each; @network and @secrets of the code join the session.
    let a = env
        .post(
            "/scope",
            Some(&agent),
            &json!({"description": "Read my repositories",
                    "networks": ["api.github.com"], "secrets": ["GITHUB_TOKEN"],
                    "skill_code": "// @network uploads.github.com\n// @secrets UPLOAD_TOKEN\nreturn 1;"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let session = a.body["session_id"].as_str().expect("session").to_owned();
    let stored = permits.get(&session).await.expect("Permit");
    let caps: Vec<(String, String)> = stored
        .spec
        .capabilities
        .iter()
        .filter(|c| c.hosts.is_empty())
        .map(|c| (c.name.clone(), c.base_url.clone().unwrap_or_default()))
        .collect();
    // And one fetch capability over the same hosts, every secret bound to them.
    let fetch = stored
        .spec
        .capabilities
        .iter()
        .find(|c| !c.hosts.is_empty())
        .expect("a fetch capability");
    assert_eq!(fetch.name, "fetch");
    assert_eq!(fetch.hosts, ["api.github.com", "uploads.github.com"]);
    let bound: Vec<&str> = fetch
        .secret_bindings
        .iter()
        .map(|b| b.secret.as_str())
        .collect();
    assert_eq!(bound, ["GITHUB_TOKEN", "UPLOAD_TOKEN"]);
    assert_eq!(
        caps,
        [
            (
                "api_github_com".to_owned(),
                "https://api.github.com".to_owned()
            ),
            (
                "uploads_github_com".to_owned(),
                "https://uploads.github.com".to_owned()
            )
        ]
    );
    assert_eq!(stored.spec.secrets, ["GITHUB_TOKEN", "UPLOAD_TOKEN"]);
    seen.assert_no_secret();
    env.stop().await;
}

/// `POST /cookies/upload` end to end: the owner's cookies are sealed on arrival as a cookie
/// jar; a Permit's `cookie_secret` names it; the run's request to the upstream carries exactly
/// the cookies RFC 6265 sends to that URL, and no cookie value is in any answer or Secret.
#[tokio::test]
async fn uploaded_cookies_reach_only_the_urls_they_belong_to() {
    let Some(env) = Env::new("gw-cookies", true).await else {
        return;
    };
    let (agent, owner) = (env.tenant.agent.clone(), env.tenant.owner.clone());
    let mut seen = Seen::default();
    const SID: &str = "sid-gw-4e8a1c0f";
    const ADMIN: &str = "adm-gw-77b2d9e3";
    let upload = json!({"domain": "127.0.0.1", "user_agent": "Mozilla/5.0", "cookies": [
        {"name": "sid", "value": SID, "domain": "127.0.0.1", "path": "/", "secure": true,
         "httpOnly": true, "hostOnly": true, "expirationDate": 4_102_444_800.0_f64},
        {"name": "admin", "value": ADMIN, "domain": "127.0.0.1", "path": "/v1/admin"}
    ]});
    let a = env.post("/cookies/upload", Some(&agent), &upload).await;
    assert_eq!(a.status, 403, "an agent may not upload cookies: {}", a.text);
    for (body, field) in [
        (json!({"cookies": []}), "domain"),
        (json!({"domain": "127.0.0.1"}), "cookies"),
        (
            json!({"domain": "127.0.0.1", "cookies": [{"name": "a", "value": "x;evil=1", "domain": "127.0.0.1"}]}),
            "cookies[0].value",
        ),
        (
            json!({"domain": "example.com", "cookies": [{"name": "a", "value": "v", "domain": "evilexample.com"}]}),
            "cookies[0].domain",
        ),
    ] {
        let a = seen.keep(&env.post("/cookies/upload", Some(&owner), &body).await);
        assert_eq!(a.status, 400, "{body}: {}", a.text);
        assert_eq!(a.body["field"], field, "{body}: {}", a.text);
        assert!(!a.text.contains("evil=1"), "{}", a.text);
    }
    let a = seen.keep(&env.post("/cookies/upload", Some(&owner), &upload).await);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["secret_name"], "COOKIES_127_0_0_1");
    assert_eq!(a.body["cookies"], 2);
    let stored = Api::<Secret>::namespaced(env.admin.clone(), &env.tenant.ns)
        .get("cookies-127-0-0-1")
        .await
        .expect("sealed jar stored");
    assert_eq!(stored.type_.as_deref(), Some("oauth3.dev/sealed"));
    let stored_text = serde_json::to_string(&stored).expect("json");
    assert!(!stored_text.contains(SID) && !stored_text.contains(ADMIN));

    let origin = env.up.origin();
    let a = seen.keep(
        &env.post(
            "/permit",
            Some(&agent),
            &json!({"description": "Read items as me", "capabilities": [{
                "type": "scoped-fetch", "name": "site", "base_url": format!("{origin}/v1"),
                "scope": ["items", "admin/**"], "methods": ["GET"],
                "cookie_secret": "COOKIES_127_0_0_1"}]}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.body["request_id"].as_str().expect("id").to_owned();
    let permit = a.body["permit_id"].as_str().expect("permit").to_owned();
    let a = env
        .post(
            &format!("/approve/{id}"),
            Some(&owner),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    env.wait_approved(&permit).await;
    let a = seen.keep(
        &env.post(
            "/execute",
            Some(&agent),
            &json!({"permit_id": permit, "code":
                "await site('GET', '/items'); await site('GET', '/admin/x'); return 'ok';"}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let done = env
        .until_final(a.body["status_url"].as_str().expect("url"), &mut seen)
        .await;
    assert_eq!(done.body["status"], "completed", "{}", done.text);
    let got = env.up.requests();
    let cookies: Vec<(String, Vec<String>)> = got
        .iter()
        .map(|r| {
            (
                r.path_and_query.clone(),
                r.header_values("cookie")
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        cookies,
        [
            ("/v1/items".to_owned(), vec![format!("sid={SID}")]),
            (
                "/v1/admin/x".to_owned(),
                vec![format!("admin={ADMIN}; sid={SID}")]
            ),
        ]
    );
    for a in &seen.0 {
        assert!(
            !a.contains(SID) && !a.contains(ADMIN),
            "a cookie in an answer: {a}"
        );
    }
    seen.assert_no_secret();
    env.stop().await;
}

#[tokio::test]
async fn signup_is_off_by_default_and_never_mints_an_owner() {
    let Some(env) = Env::new("gw-signup", false).await else {
        return;
    };
    // Off unless configured.
    let a = env.post("/signup", None, &json!({"name": "agent"})).await;
    assert_eq!(a.status, 403, "{}", a.text);
    let prefix = format!("{}-t-", env.tenant.ns);
    let flag = format!("--signup-namespace-prefix={prefix}");
    let gw = InProcessGateway::start(&env.admin, &[&flag, "--auth-cache-ttl=0s"]).await;
    let http = Http::new();
    for role in ["owner", "admin"] {
        let a = http
            .post(
                &gw.url("/signup"),
                None,
                &json!({"name": "x", "role": role}),
            )
            .await;
        assert!(matches!(a.status, 400 | 403), "{role}: {}", a.text);
    }
    // The SDK's exact body.
    let a = http
        .post(&gw.url("/signup"), None, &json!({"name": "agent"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let token = a.body["jwt"].as_str().expect("jwt").to_owned();
    for field in ["token", "api_key"] {
        assert_eq!(a.body[field], token.as_str(), "{field}");
    }
    assert_eq!(a.body["tee_url"], gw.base.as_str());
    let ns = a.body["tenant_id"].as_str().expect("tenant").to_owned();
    assert!(ns.starts_with(&prefix), "{ns}");
    // The new agent asks for a Permit in its own namespace, and cannot approve it.
    let asked = http
        .post_raw(
            &gw.url("/permit"),
            Some(&token),
            "application/json",
            permit_request(&env.up.origin()).into_bytes(),
            &[],
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.text);
    let id = asked.body["request_id"].as_str().expect("id");
    let a = http
        .post(
            &gw.url(&format!("/approve/{id}")),
            Some(&token),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(
        a.status, 403,
        "a signed-up agent cannot approve: {}",
        a.text
    );
    let me = http.get(&gw.url("/me"), Some(&token)).await;
    assert_eq!(me.body["role"], "agent", "{}", me.text);
    assert_eq!(me.body["can_approve"], false);
    // It sees nothing of the other tenant.
    let theirs = env
        .post_text(
            "/permit",
            Some(&env.tenant.agent),
            &permit_request(&env.up.origin()),
        )
        .await;
    let their_id = theirs.body["request_id"].as_str().expect("id");
    let a = http
        .get(
            &gw.url(&format!("/execute/{their_id}/status")),
            Some(&token),
        )
        .await;
    assert_eq!(a.status, 404, "{}", a.text);
    env.stop().await;
}

#[tokio::test]
async fn two_replicas_serve_the_same_clients_without_coordination() {
    let Some(env) = Env::new("gw-two", true).await else {
        return;
    };
    let hold = format!("--long-poll={}s", HOLD.as_secs());
    let other = InProcessGateway::start(&env.admin, &[&hold]).await;
    let on_other = |url: &str| url.replacen(&env.gw.base, &other.base, 1);
    let sealed = env
        .post(
            "/secrets",
            Some(&env.tenant.owner),
            &json!({"name": "API_TOKEN", "value": SECRET}),
        )
        .await;
    assert_eq!(sealed.status, 200, "{}", sealed.text);
    // Asked on one replica, held on the other, decided on the first.
    let a = env
        .post_text(
            "/permit",
            Some(&env.tenant.agent),
            &permit_request(&env.up.origin()),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.body["request_id"].as_str().expect("id").to_owned();
    let permit = a.body["permit_id"].as_str().expect("permit").to_owned();
    let held_url = on_other(a.body["status_url"].as_str().expect("url"));
    let poll = {
        let http = env.http.clone();
        tokio::spawn(async move { http.get(&held_url, None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let decided = env
        .post(
            &format!("/approve/{id}"),
            Some(&env.tenant.owner),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(decided.status, 200, "{}", decided.text);
    let woke = poll.await.expect("poll");
    assert_eq!(woke.body["status"], "completed", "{}", woke.text);
    // Run on the other replica, read the result on the first.
    let run = env
        .http
        .post(
            &other.url("/execute"),
            Some(&env.tenant.agent),
            &json!({"permit_id": permit, "code": "return 7"}),
        )
        .await;
    assert_eq!(run.status, 200, "{}", run.text);
    let url = run.body["status_url"]
        .as_str()
        .expect("url")
        .replacen(&other.base, &env.gw.base, 1);
    let mut seen = Seen::default();
    let done = env.until_final(&url, &mut seen).await;
    assert_eq!(done.body["result"]["value"], 7, "{}", done.text);
    env.stop().await;
}

#[tokio::test]
async fn code_under_a_per_code_permit_waits_until_the_owner_approves_it_on_the_page() {
    let Some(env) = Env::new("gw-code", true).await else {
        return;
    };
    let (agent, owner) = (env.tenant.agent.clone(), env.tenant.owner.clone());
    let sealed = env
        .post(
            "/secrets",
            Some(&owner),
            &json!({"name": "API_TOKEN", "value": SECRET}),
        )
        .await;
    assert_eq!(sealed.status, 200, "{}", sealed.text);
    let body = permit_request(&env.up.origin()).replacen('{', r#"{"code_review": "perCode","#, 1);
    let a = env.post_text("/permit", Some(&agent), &body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.body["request_id"].as_str().expect("id").to_owned();
    let permit = a.body["permit_id"].as_str().expect("permit").to_owned();
    let a = env
        .post(
            &format!("/approve/{id}"),
            Some(&owner),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    env.wait_approved(&permit).await;

    let code = "return 5";
    let run = env
        .post(
            "/execute",
            Some(&agent),
            &json!({"permit_id": permit, "code": code}),
        )
        .await;
    assert_eq!(run.status, 200, "{}", run.text);
    let exec_id = run.body["request_id"].as_str().expect("id").to_owned();
    let approval_url = run.body["approval_url"]
        .as_str()
        .expect("code under review gets an approval_url")
        .to_owned();
    let status_path = format!("/execute/{exec_id}/status");
    wait_until(
        "the code waits for review",
        Duration::from_secs(30),
        || async {
            let a = env.get(&status_path, Some(&agent)).await;
            if a.body["status"] == "pending" {
                Ok(())
            } else {
                Err(a.text)
            }
        },
    )
    .await;
    let page = env.http.get(&approval_url, None).await;
    assert_eq!(page.status, 200, "{}", page.text);
    // The code as it will run (the positional prelude of the api-gateway capability, then
    // the agent's code), and the digest of exactly that.
    let shown = page.body["code"].as_str().expect("code");
    assert!(shown.ends_with(code), "{shown}");
    assert_eq!(page.body["code_digest"], oauth3_crds::code_digest(shown));
    assert_eq!(page.body["language"], "javascript");

    // Not the agent, not the link alone, and code is never "denied" here.
    let a = env
        .http
        .post(&approval_url, Some(&agent), &json!({"action": "approve"}))
        .await;
    assert_eq!(a.status, 403, "{}", a.text);
    let a = env
        .http
        .post(&approval_url, None, &json!({"action": "approve"}))
        .await;
    assert_eq!(a.status, 401, "{}", a.text);
    let a = env
        .http
        .post(&approval_url, Some(&owner), &json!({"action": "deny"}))
        .await;
    assert_eq!(a.status, 400, "{}", a.text);
    let a = env.get(&status_path, Some(&agent)).await;
    assert_eq!(a.body["status"], "pending", "{}", a.text);

    // The owner approves it once; the run goes ahead.
    let a = env
        .http
        .post(
            &approval_url,
            Some(&owner),
            &json!({"action": "approve", "level": "once"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let mut seen = Seen::default();
    let done = env
        .until_final(
            run.body["status_url"].as_str().expect("status_url"),
            &mut seen,
        )
        .await;
    assert_eq!(done.body["status"], "completed", "{}", done.text);
    assert_eq!(done.body["result"]["value"], 5);
    env.stop().await;
}

/// A client that, before each of the first `conflicts` status writes to a Permit, has another
/// writer change that Permit (an annotation: the spec stays as it was), so the guarded write
/// the decision makes meets a real 409 Conflict from the API server.
fn client_with_concurrent_writer(
    client: kube::Client,
    ns: &str,
    conflicts: usize,
) -> (kube::Client, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let provoked = std::sync::Arc::new(AtomicUsize::new(0));
    let count = provoked.clone();
    let inner = client.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let inner = inner.clone();
        let count = count.clone();
        async move {
            let (parts, body) = req.into_parts();
            let path = parts.uri.path().to_owned();
            if parts.method == http::Method::PATCH
                && path.contains("/permits/")
                && path.ends_with("/status")
                && count.load(Ordering::SeqCst) < conflicts
            {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let name = path
                    .trim_end_matches("/status")
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let ns = path
                    .split("/namespaces/")
                    .nth(1)
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or_default()
                    .to_owned();
                let api: Api<Permit> = Api::namespaced(inner.clone(), &ns);
                api.patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(
                        json!({"metadata": {"annotations": {"test.oauth3.dev/other-writer": n.to_string()}}}),
                    ),
                )
                .await?;
            }
            inner
                .send(http::Request::from_parts(parts, body))
                .await
                .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        }
    });
    (kube::Client::new(service, ns.to_owned()), provoked)
}

async fn pending_permit(client: &kube::Client, ns: &str, name: &str) -> Api<Permit> {
    let api: Api<Permit> = Api::namespaced(client.clone(), ns);
    let permit: Permit = serde_json::from_value(json!({
        "apiVersion": "oauth3.dev/v1alpha1",
        "kind": "Permit",
        "metadata": {"name": name},
        "spec": {
            "description": "List issues",
            "capabilities": [{
                "name": "github",
                "baseUrl": "https://api.github.com",
                "paths": ["/repos/o/r/issues"],
                "methods": ["GET"]
            }],
            "validFor": "1h"
        }
    }))
    .expect("a valid Permit");
    api.create(&kube::api::PostParams::default(), &permit)
        .await
        .expect("creating the Permit");
    api
}

#[tokio::test]
async fn a_decision_survives_a_concurrent_status_writer_but_never_moves_to_another_spec() {
    use oauth3_crds::{ApprovalDecision, ApprovalVia};
    use oauth3_operator::plugin::{DECISION_TRIES, Decision, PluginError, record_decision};
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = oauth3_tests::namespace(&client, "gw-conflict").await;

    // Another writer changes the Permit before each of the first two writes: the decision is
    // read again and recorded on the third try.
    let api = pending_permit(&client, &ns, "p").await;
    let (racing, provoked) = client_with_concurrent_writer(client.clone(), &ns, 2);
    let approval = record_decision(
        &racing,
        &ns,
        "p",
        Decision::Approve,
        "owner",
        ApprovalVia::Web,
    )
    .await
    .expect("the decision is recorded despite the concurrent writer");
    assert_eq!(provoked.load(std::sync::atomic::Ordering::SeqCst), 2);
    let p = api.get("p").await.expect("reading the Permit");
    let recorded = p
        .status
        .and_then(|s| s.approval)
        .expect("an approval in status");
    assert_eq!(recorded.decision, ApprovalDecision::Approved);
    assert_eq!(recorded.spec_digest, approval.spec_digest);
    assert_eq!(
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("test.oauth3.dev/other-writer"))
            .map(String::as_str),
        Some("1"),
        "the other writer really wrote twice"
    );

    // A writer that never stops: bounded, then a clear conflict, and nothing recorded.
    let api = pending_permit(&client, &ns, "q").await;
    let (racing, provoked) = client_with_concurrent_writer(client.clone(), &ns, usize::MAX);
    let err = record_decision(
        &racing,
        &ns,
        "q",
        Decision::Approve,
        "owner",
        ApprovalVia::Web,
    )
    .await
    .expect_err("endless conflicts end in an error");
    assert!(matches!(err, PluginError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("Permit q"), "{err}");
    assert_eq!(
        provoked.load(std::sync::atomic::Ordering::SeqCst),
        DECISION_TRIES
    );
    let q = api.get("q").await.expect("reading the Permit");
    assert!(
        q.status.and_then(|s| s.approval).is_none(),
        "no approval was written"
    );

    // The spec changes between the tries: the decision is not moved onto the new spec.
    let api = pending_permit(&client, &ns, "r").await;
    let spec_editor = client.clone();
    let ns2 = ns.clone();
    let inner = client.clone();
    let edited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = edited.clone();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let inner = inner.clone();
        let spec_editor = spec_editor.clone();
        let ns = ns2.clone();
        let flag = flag.clone();
        async move {
            let (parts, body) = req.into_parts();
            if parts.method == http::Method::PATCH
                && parts.uri.path().ends_with("/permits/r/status")
                && !flag.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                let api: Api<Permit> = Api::namespaced(spec_editor, &ns);
                api.patch(
                    "r",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(
                        json!({"spec": {"description": "Delete the repository"}}),
                    ),
                )
                .await?;
            }
            inner
                .send(http::Request::from_parts(parts, body))
                .await
                .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        }
    });
    let racing = kube::Client::new(service, ns.clone());
    let err = record_decision(
        &racing,
        &ns,
        "r",
        Decision::Approve,
        "owner",
        ApprovalVia::Web,
    )
    .await
    .expect_err("a changed spec is a conflict");
    assert!(matches!(err, PluginError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("spec changed"), "{err}");
    let r = api.get("r").await.expect("reading the Permit");
    assert!(
        r.status.and_then(|s| s.approval).is_none(),
        "no approval on the edited spec"
    );
}

/// A skill as the SDK sends it, calling `fetch` with `Deno.env.get` of a secret: the session
/// made from its `@network` and `@secrets` has a fetch capability binding the secret to that
/// host; once the owner approves, the skill runs as TypeScript, the upstream sees the real
/// credential and the agent sees none.
#[tokio::test]
async fn a_fetch_skill_with_a_secret_runs_end_to_end_and_the_agent_never_sees_it() {
    let Some(env) = Env::new("gw-fetch", true).await else {
        return;
    };
    let (agent, owner) = (env.tenant.agent.clone(), env.tenant.owner.clone());
    let mut seen = Seen::default();
    let a = seen.keep(
        &env.post(
            "/secrets",
            Some(&owner),
            &json!({"name": "API_TOKEN", "value": SECRET}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let host = format!("localhost:{}", env.up.addr.port());
    let skill = format!(
        r#"// @skill echo
// @description Ask the upstream who we are
// @network {host}
// @secrets API_TOKEN
interface Echo {{ authorization: string[] }}
const token: string = Deno.env.get("API_TOKEN")!;
const res = await fetch("https://{host}/v1/echo-auth", {{ headers: {{ Authorization: `Bearer ${{token}}` }} }});
const echo: Echo = await res.json();
return {{ status: res.status, echoed: echo.authorization[0], token }};
"#
    );
    let a = seen.keep(
        &env.post(
            "/scope",
            Some(&agent),
            &json!({"description": "Ask the upstream who we are", "skill_code": skill,
                    "session_id": "echo-session"}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let id = a.body["request_id"].as_str().expect("id").to_owned();
    let status_url = a.body["status_url"]
        .as_str()
        .expect("status_url")
        .to_owned();
    let permits: Api<Permit> = Api::namespaced(env.admin.clone(), &env.tenant.ns);
    let stored = permits.get("echo-session").await.expect("session Permit");
    let fetch = stored
        .spec
        .capabilities
        .iter()
        .find(|c| !c.hosts.is_empty())
        .expect("a fetch capability");
    assert_eq!(fetch.hosts, std::slice::from_ref(&host));
    assert_eq!(fetch.secret_bindings[0].secret, "API_TOKEN");
    assert_eq!(fetch.secret_bindings[0].hosts, std::slice::from_ref(&host));
    // The owner's page reads the binding in plain words.
    let page = env
        .http
        .get(a.body["approval_url"].as_str().expect("approval_url"), None)
        .await;
    let said = format!("API_TOKEN may be sent to {host} in the Authorization header");
    assert!(
        page.text.contains(&said),
        "{said:?} on the page:\n{}",
        page.text
    );
    let a = seen.keep(
        &env.post(
            &format!("/approve/{id}"),
            Some(&owner),
            &json!({"action": "approve"}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let done = env.until_final(&status_url, &mut seen).await;
    assert_eq!(done.body["status"], "completed", "{}", done.text);

    let a = seen.keep(
        &env.post(
            "/execute",
            Some(&agent),
            &json!({"skill_id": "echo", "skill_code": skill, "session_id": "echo-session"}),
        )
        .await,
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let done = env
        .until_final(a.body["status_url"].as_str().expect("url"), &mut seen)
        .await;
    assert_eq!(done.body["status"], "completed", "{}", done.text);
    let value = &done.body["result"]["value"];
    assert_eq!(value["status"], 200, "{}", done.text);
    assert_eq!(value["echoed"], "Bearer [REDACTED]", "{}", done.text);
    assert!(
        value["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("OAUTH3_SECRET_API_TOKEN_")),
        "the code held a placeholder: {}",
        done.text
    );
    let sent = env.up.requests();
    let echo: Vec<_> = sent
        .iter()
        .filter(|r| r.path_and_query == "/v1/echo-auth")
        .collect();
    assert_eq!(echo.len(), 1, "{sent:?}");
    assert_eq!(
        echo[0].header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );
    seen.assert_no_secret();
    env.stop().await;
}
