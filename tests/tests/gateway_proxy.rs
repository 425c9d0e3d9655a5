//! Calls without code through the gateway (`/proxy/<namespace>/<permit>/<capability>/...`) on
//! a real kube-apiserver: a real `oauth3-sandbox-runner serve` (plain HTTP on loopback, the
//! development key provider, a sealed secret, a client token file holding the digest of a
//! real ServiceAccount token), recording HTTPS upstreams, and the Permit's `status.proxy`
//! written here as the operator would write it. The client's token never reaches an upstream,
//! the secret never reaches the client, refused calls send nothing, and a caller without the
//! right to call the proxy can neither use nor wake it.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use oauth3_crds::Permit;
use oauth3_crds::constants::ANNOTATION_PROXY_WAKE;
use oauth3_protocol::proxy::REFUSAL_HEADER;
use oauth3_test_support::sse::EventStream;
use oauth3_test_support::wait_until;
use oauth3_tests::gateway::{GatewayEnv, service_account_token};
use oauth3_tests::proxy::{Serve, ServeSpec};
use serde_json::{Value, json};

const SECRET: &str = "sk-proxy-gw-5d21c9";
const DEV_KEY: [u8; 32] = [9u8; 32];
const PERMIT: &str = "api-proxy";
const EVENTS: usize = 3;
const EVENT_GAP: Duration = Duration::from_millis(1500);

/// A tenant with a proxied, approved Permit whose `serve` runs on loopback, an SSE upstream
/// and a caller without the right to call the proxy.
struct ProxyEnv {
    env: GatewayEnv,
    sse: EventStream,
    /// `http://127.0.0.1:<port>` of the running `serve`.
    endpoint: String,
    /// A ServiceAccount of the same namespace without any role (no `permits/proxy`).
    stranger: String,
    _serve: Serve,
    /// The proxy's certificate, key and CA, when it serves HTTPS.
    tls_dir: Option<std::path::PathBuf>,
}

impl Drop for ProxyEnv {
    fn drop(&mut self) {
        if let Some(dir) = &self.tls_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn spec(env: &GatewayEnv, sse: &EventStream, agent_user: &str) -> oauth3_crds::PermitSpec {
    let auth = json!({"header": "Authorization", "value": "Bearer {API_TOKEN}"});
    serde_json::from_value(json!({
        "description": "calls without code through the gateway",
        "secrets": ["API_TOKEN"],
        "capabilities": [
            {"name": "api", "baseUrl": format!("{}/v1", env.up.origin()),
             "paths": ["/items", "/echo-auth"], "methods": ["GET", "POST"], "auth": auth,
             "query": {"allow": ["page"]}},
            {"name": "events", "baseUrl": sse.origin(), "paths": ["/stream"],
             "methods": ["GET"], "auth": auth}
        ],
        "proxy": {"enabled": true, "callers": [agent_user]}
    }))
    .expect("spec")
}

/// Creates `name` with `spec` and marks it Approved (the owner's decision, as the harness).
async fn approved_permit(env: &GatewayEnv, name: &str, spec: oauth3_crds::PermitSpec) {
    let api: Api<Permit> = Api::namespaced(env.admin.clone(), &env.tenant.ns);
    api.create(&PostParams::default(), &Permit::new(name, spec))
        .await
        .expect("Permit created");
    set_status(env, name, json!({"phase": "Approved"})).await;
}

/// Merges `status` into the Permit's status (what the operator writes).
async fn set_status(env: &GatewayEnv, name: &str, status: Value) {
    Api::<Permit>::namespaced(env.admin.clone(), &env.tenant.ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .expect("status patched");
}

async fn set_proxy_status(env: &GatewayEnv, proxy: Value) {
    set_status(env, PERMIT, json!({"proxy": proxy})).await;
}

impl ProxyEnv {
    async fn new(prefix: &str) -> Option<Self> {
        Self::start(prefix, false).await
    }

    /// With `tls`, the proxy serves HTTPS with a certificate from a CA of its own
    /// (`self.tls_dir/ca.crt`).
    async fn start(prefix: &str, tls: bool) -> Option<Self> {
        let env = GatewayEnv::new(prefix, false, DEV_KEY, Duration::from_secs(5)).await?;
        let sse = EventStream::start(EVENTS, EVENT_GAP).await;
        let ns = env.tenant.ns.clone();
        let agent_user = format!("system:serviceaccount:{ns}:agent");
        // The agent may call proxies through the chart's oauth3-agent role (`create` on
        // permits/proxy); the stranger is a ServiceAccount with no role at all.
        let stranger = service_account_token(&env.admin, &ns, "stranger").await;
        let spec = spec(&env, &sse, &agent_user);
        approved_permit(&env, PERMIT, spec.clone()).await;

        let stranger_user = format!("system:serviceaccount:{ns}:stranger");
        let tls_dir = tls.then(|| {
            let dir = std::env::temp_dir().join(format!("oauth3-gw-proxy-tls-{ns}"));
            oauth3_tests::callback_certificate(&dir);
            dir
        });
        let serve = Serve::start(&ServeSpec {
            namespace: &ns,
            permit: PERMIT,
            spec: &spec,
            secret: ("API_TOKEN", SECRET),
            dev_key: DEV_KEY,
            tokens: &[
                (&env.tenant.agent, &agent_user),
                (&stranger, &stranger_user),
            ],
            upstream_cas: &[&env.up.ca_pem, &sse.ca_pem],
            tls_dir: tls_dir.as_deref(),
        })
        .await;
        let endpoint = serve.endpoint.clone();
        let this = Self {
            env,
            sse,
            endpoint,
            stranger,
            _serve: serve,
            tls_dir,
        };
        this.ready().await;
        Some(this)
    }

    /// `status.proxy` as the operator writes it once the proxy answers.
    async fn ready(&self) {
        set_proxy_status(
            &self.env,
            json!({"phase": "Ready", "endpoint": self.endpoint, "handle": "process/1"}),
        )
        .await;
    }

    fn url(&self, permit: &str, rest: &str) -> String {
        self.env
            .gw
            .url(&format!("/proxy/{}/{permit}/{rest}", self.env.tenant.ns))
    }

    async fn wake_annotation(&self) -> Option<String> {
        Api::<Permit>::namespaced(self.env.admin.clone(), &self.env.tenant.ns)
            .get(PERMIT)
            .await
            .expect("Permit")
            .metadata
            .annotations
            .and_then(|a| a.get(ANNOTATION_PROXY_WAKE).cloned())
    }
}

fn assert_no_client_token(env: &ProxyEnv, why: &str) {
    for r in env.env.up.requests() {
        for (k, v) in &r.headers {
            assert!(
                !v.contains(&env.env.tenant.agent),
                "{why}: the client token reached the upstream in {k}"
            );
        }
    }
}

#[tokio::test]
async fn a_call_through_the_gateway_reaches_the_upstream_with_the_secret_and_not_the_client_token()
{
    let Some(env) = ProxyEnv::new("gw-proxy-call").await else {
        return;
    };
    let http = reqwest::Client::new();
    let answer = http
        .get(env.url(PERMIT, "api/echo-auth?page=2"))
        .bearer_auth(&env.env.tenant.agent)
        .send()
        .await
        .expect("call");
    assert_eq!(answer.status().as_u16(), 200);
    assert!(
        answer.headers().contains_key("x-oauth3-upstream"),
        "the runner's upstream header is passed on"
    );
    let text = answer.text().await.expect("body");
    assert!(
        !text.contains(SECRET),
        "the secret reached the client: {text}"
    );

    // Anthropic-style: the token as X-Api-Key; a POST body streamed up.
    let posted = http
        .post(env.url(PERMIT, "api/items"))
        .header("x-api-key", &env.env.tenant.agent)
        .header("content-type", "application/json")
        .body(r#"{"title":"through the gateway"}"#)
        .send()
        .await
        .expect("call");
    assert_eq!(posted.status().as_u16(), 200);

    let got = env.env.up.assert_received(2, "both calls");
    assert_eq!(got[0].path_and_query, "/v1/echo-auth?page=2");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );
    assert_eq!(got[1].method, "POST");
    assert_eq!(got[1].body, br#"{"title":"through the gateway"}"#);
    assert!(got[1].header_values("x-api-key").is_empty());
    assert_no_client_token(&env, "forwarded calls");
}

#[tokio::test]
async fn server_sent_events_reach_the_client_one_at_a_time() {
    let Some(env) = ProxyEnv::new("gw-proxy-sse").await else {
        return;
    };
    let mut answer = reqwest::Client::new()
        .get(env.url(PERMIT, "events/stream"))
        .bearer_auth(&env.env.tenant.agent)
        .send()
        .await
        .expect("call");
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(
        answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = answer
            .chunk()
            .await
            .expect("chunk")
            .expect("the first event");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let sent = env.sse.sent().len();
    assert!(
        sent < EVENTS,
        "the first event arrived only after the upstream had sent {sent} of {EVENTS}: the answer was buffered"
    );
    assert!(text.starts_with("data: {\"n\": 0}"), "{text}");
    while let Some(chunk) = answer.chunk().await.expect("chunk") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(text.matches("data: ").count(), EVENTS, "{text}");
    assert!(
        !text.contains(SECRET),
        "the secret reached the client: {text}"
    );
    assert_eq!(env.sse.requests(), 1);
}

#[tokio::test]
async fn a_call_the_policy_refuses_gets_the_proxys_refusal_and_sends_nothing() {
    let Some(env) = ProxyEnv::new("gw-proxy-deny").await else {
        return;
    };
    let http = reqwest::Client::new();
    for (method, rest) in [
        (reqwest::Method::DELETE, "api/items"),
        (reqwest::Method::GET, "api/admin"),
    ] {
        let answer = http
            .request(method.clone(), env.url(PERMIT, rest))
            .bearer_auth(&env.env.tenant.agent)
            .send()
            .await
            .expect("call");
        assert_eq!(answer.status().as_u16(), 403, "{method} {rest}");
        assert_eq!(
            answer
                .headers()
                .get(REFUSAL_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("policy"),
            "{method} {rest}"
        );
        let body: Value = answer.json().await.expect("refusal body");
        assert_eq!(body["error"], "policy");
        assert_eq!(body["capability"], "api");
    }
    // The stranger's token is known to the proxy but is not one of the callers.
    let answer = http
        .get(env.url(PERMIT, "api/items"))
        .bearer_auth(&env.stranger)
        .send()
        .await
        .expect("call");
    assert_eq!(answer.status().as_u16(), 403);
    env.env
        .up
        .assert_nothing_received("refused calls are never sent");
}

async fn refusal(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let answer = req.send().await.expect("call");
    let status = answer.status().as_u16();
    let kind = answer
        .headers()
        .get(REFUSAL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = answer.json().await.unwrap_or(Value::Null);
    (status, kind, body)
}

#[tokio::test]
async fn unknown_unproxied_unapproved_and_stopped_permits_get_the_documented_refusals() {
    let Some(env) = ProxyEnv::new("gw-proxy-refusals").await else {
        return;
    };
    let http = reqwest::Client::new();
    let agent = Some(env.env.tenant.agent.as_str());

    let (status, kind, body) = refusal(&http, &env.url("nothing-here", "api/items"), agent).await;
    assert_eq!(
        (status, kind.as_deref()),
        (404, Some("badRequest")),
        "{body}"
    );
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no Permit nothing-here")),
        "{body}"
    );

    let plain =
        oauth3_test_support::PermitFixture::api(&format!("{}/v1", env.env.up.origin())).spec();
    approved_permit(&env.env, "plain", plain).await;
    let (status, kind, body) = refusal(&http, &env.url("plain", "api/items"), agent).await;
    assert_eq!(
        (status, kind.as_deref()),
        (409, Some("badRequest")),
        "{body}"
    );
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("spec.proxy.enabled is not true")),
        "{body}"
    );

    // A caller without the right learns nothing: the same 403 for a Permit that exists and
    // one that does not; without a token, 401.
    let stranger = Some(env.stranger.as_str());
    let (status, kind, _) = refusal(&http, &env.url("plain", "api/items"), stranger).await;
    assert_eq!((status, kind.as_deref()), (403, Some("forbidden")));
    let (status, kind, _) = refusal(&http, &env.url("nothing-here", "api/items"), stranger).await;
    assert_eq!((status, kind.as_deref()), (403, Some("forbidden")));
    let (status, kind, _) = refusal(&http, &env.url("plain", "api/items"), None).await;
    assert_eq!((status, kind.as_deref()), (401, Some("unauthenticated")));

    set_proxy_status(
        &env.env,
        json!({"phase": "Stopped", "reason": "Revoked", "message": "the owner revoked the Permit",
               "endpoint": null}),
    )
    .await;
    let (status, kind, body) = refusal(&http, &env.url(PERMIT, "api/items"), agent).await;
    assert_eq!((status, kind.as_deref()), (503, Some("stopped")), "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("(Revoked): the owner revoked the Permit")),
        "{body}"
    );
    assert_eq!(
        env.wake_annotation().await,
        None,
        "a revoked proxy is not woken"
    );

    // The gateway reuses a Permit read for a moment (documented); the change shows soon.
    set_status(&env.env, PERMIT, json!({"phase": "Pending"})).await;
    let url = env.url(PERMIT, "api/items");
    let (status, kind, body) = wait_until("the Pending refusal", Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let seen = refusal(&http, &url, agent).await;
            if seen.0 == 403 { Ok(seen) } else { Err(seen) }
        }
    })
    .await;
    assert_eq!(kind.as_deref(), Some("policy"), "{status} {body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("is Pending, not Approved")),
        "{body}"
    );
    env.env
        .up
        .assert_nothing_received("nothing is forwarded without a ready proxy");
}

#[tokio::test]
async fn an_idle_proxy_is_woken_only_for_a_caller_allowed_to_call_it() {
    let Some(env) = ProxyEnv::new("gw-proxy-wake").await else {
        return;
    };
    set_proxy_status(
        &env.env,
        json!({"phase": "Stopped", "reason": "Idle", "endpoint": null,
               "stoppedAt": k8s_openapi::jiff::Timestamp::now().to_string()}),
    )
    .await;
    let http = reqwest::Client::new();

    let (status, kind, _) =
        refusal(&http, &env.url(PERMIT, "api/items"), Some(&env.stranger)).await;
    assert_eq!((status, kind.as_deref()), (403, Some("forbidden")));
    assert_eq!(
        env.wake_annotation().await,
        None,
        "a caller without the right woke the proxy"
    );

    let call = {
        let http = http.clone();
        let url = env.url(PERMIT, "api/items");
        let token = env.env.tenant.agent.clone();
        tokio::spawn(async move {
            let answer = http.get(url).bearer_auth(token).send().await.expect("call");
            answer.status().as_u16()
        })
    };
    let woken = wait_until("the wake annotation", Duration::from_secs(20), || async {
        env.wake_annotation().await.ok_or("not set")
    })
    .await;
    assert!(
        woken.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "the annotation is an RFC 3339 time: {woken}"
    );
    env.env
        .up
        .assert_nothing_received("nothing is sent while the proxy is stopped");
    // The operator starts the proxy again.
    env.ready().await;
    let status = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the held call ends once the proxy is ready")
        .expect("task");
    assert_eq!(status, 200);
    let got = env.env.up.assert_received(1, "the woken call");
    assert_eq!(got[0].path_and_query, "/v1/items");
    assert_no_client_token(&env, "the woken call");
}

#[tokio::test]
async fn an_https_proxy_endpoint_is_trusted_through_the_proxy_ca_file_or_its_published_certificate()
{
    let Some(env) = ProxyEnv::start("gw-proxy-tls", true).await else {
        return;
    };
    assert!(
        env.endpoint.starts_with("https://127.0.0.1:"),
        "{}",
        env.endpoint
    );
    let http = reqwest::Client::new();
    // The environment's gateway trusts the system roots only: the proxy's certificate is not
    // accepted and nothing is sent.
    let (status, kind, body) = refusal(
        &http,
        &env.url(PERMIT, "api/items"),
        Some(&env.env.tenant.agent),
    )
    .await;
    assert_eq!((status, kind.as_deref()), (502, Some("failed")), "{body}");
    env.env
        .up
        .assert_nothing_received("an unverified proxy endpoint gets no call");

    let ca = env.tls_dir.as_ref().expect("tls").join("ca.crt");
    let trusting = oauth3_tests::gateway::InProcessGateway::start(
        &env.env.admin,
        &[
            &format!("--proxy-ca-file={}", ca.display()),
            "--auth-cache-ttl=0s",
        ],
    )
    .await;
    let answer = http
        .get(trusting.url(&format!("/proxy/{}/{PERMIT}/api/items", env.env.tenant.ns)))
        .bearer_auth(&env.env.tenant.agent)
        .send()
        .await
        .expect("call");
    assert_eq!(answer.status().as_u16(), 200);
    let got = env.env.up.assert_received(1, "the verified call");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );

    // A certificate published in status.proxy.certificate is trusted exactly, without a CA
    // file: another certificate (here the CA's own) is refused, the proxy's own accepted.
    let tls = env.tls_dir.as_ref().expect("tls");
    let read = |f: &str| std::fs::read_to_string(tls.join(f)).expect("pem");
    let url = env.url(PERMIT, "api/items");
    set_proxy_status(&env.env, json!({"certificate": read("ca.crt")})).await;
    let (status, kind, body) = refusal(&http, &url, Some(&env.env.tenant.agent)).await;
    assert_eq!((status, kind.as_deref()), (502, Some("failed")), "{body}");
    assert_eq!(
        env.env.up.requests().len(),
        1,
        "nothing sent to a wrong certificate"
    );
    set_proxy_status(&env.env, json!({"certificate": read("tls.crt")})).await;
    let (status, _, body) = refusal(&http, &url, Some(&env.env.tenant.agent)).await;
    assert_eq!(status, 200, "{body}");
    env.env.up.assert_received(2, "the pinned call");
    assert_no_client_token(&env, "the verified calls");
}
