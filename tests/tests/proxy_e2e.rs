//! The credential proxy end to end on a real kube-apiserver: the operator (Permit, Execution
//! and proxy controllers, the process launcher, the callback with its token review and call
//! reports) + the real `oauth3-sandbox-runner serve` + a local HTTPS upstream that records
//! what it received + the kubectl plugin for the owner's decisions + real ServiceAccount
//! tokens for the clients.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use oauth3_crds::constants::{ANNOTATION_PROXY_WAKE, PROXY_AUDIT_KEY, proxy_audit_object_name};
use oauth3_crds::{Execution, ExecutionPhase, ExecutionSpec, Permit, PermitPhase, ProxyPhase};
use oauth3_protocol::proxy::{ProxyCall, REFUSAL_HEADER};
use oauth3_test_support::{PermitFixture, Upstream, wait_until};
use oauth3_tests::gateway::{Http, service_account_token};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{
    apply_dev_sealed_secret, bind_named, client_or_skip, install_user_roles, namespace,
    workspace_binary,
};
use serde_json::{Value, json};

const SECRET: &str = "sk-proxy-e2e-5f1d02";
const DEV_KEY: [u8; 32] = [5u8; 32];
const WAIT: Duration = Duration::from_secs(60);

struct Env {
    client: kube::Client,
    ns: String,
    up: Upstream,
    dir: std::path::PathBuf,
    http: Http,
}

impl Env {
    async fn new(tag: &str) -> Option<Env> {
        let client = client_or_skip().await?;
        let ns = namespace(&client, tag).await;
        let up = Upstream::start().await;
        let dir = std::env::temp_dir().join(format!("oauth3-proxy-e2e-{ns}"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("dev.key"), hex::encode(DEV_KEY)).expect("key");
        std::fs::write(dir.join("ca.pem"), &up.ca_pem).expect("ca");
        apply_dev_sealed_secret(&client, &ns, "api-token", "API_TOKEN", SECRET, DEV_KEY).await;
        install_user_roles(&client).await;
        Some(Env {
            client,
            ns,
            up,
            dir,
            http: Http::new(),
        })
    }

    async fn operator(&self) -> InProcessOperator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        InProcessOperator::start(
            &self.client,
            &self.ns,
            listener,
            Launcher::Process(oauth3_tests::operator::dev_runner(&self.dir)),
            Duration::from_secs(30),
            Duration::from_secs(3600),
        )
    }

    fn user(&self, sa: &str) -> String {
        format!("system:serviceaccount:{}:{sa}", self.ns)
    }

    /// A ServiceAccount `sa` with the chart's `oauth3-agent` role (which grants `create` on
    /// `permits/proxy`) in the namespace, and its token.
    async fn agent(&self, sa: &str) -> String {
        let token = service_account_token(&self.client, &self.ns, sa).await;
        bind_named(
            &self.client,
            &self.ns,
            &format!("oauth3-agent-{sa}"),
            "oauth3-agent",
            json!({"kind": "ServiceAccount", "name": sa, "namespace": self.ns}),
        )
        .await;
        token
    }

    /// Creates proxied Permit `name` (capability `api`: GET `/items` and `/echo-auth` with the
    /// secret injected, plus `capability` fields) for `callers`, and approves it as its owner.
    async fn proxied_permit(
        &self,
        name: &str,
        callers: &[String],
        capability: Value,
        proxy: Value,
    ) {
        let mut proxy_spec = json!({"enabled": true, "callers": callers});
        if let (Some(p), Some(extra)) = (proxy_spec.as_object_mut(), proxy.as_object()) {
            p.extend(extra.clone());
        }
        let permit = PermitFixture::api(&format!("{}/v1", self.up.origin()))
            .with(json!({"paths": ["/items", "/echo-auth"]}))
            .secret("API_TOKEN")
            .with(capability)
            .spec_fields(json!({"description": "proxy e2e", "validFor": "1h", "proxy": proxy_spec}))
            .permit(name);
        Api::<Permit>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &permit)
            .await
            .expect("permit");
        self.wait_permit(name, "Pending", |p| phase(p) == Some(PermitPhase::Pending))
            .await;
        let out = self.plugin(&["approve", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn plugin(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(workspace_binary("oauth3-operator", "kubectl-oauth3"))
            .env(
                "KUBECONFIG",
                std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
            )
            .args(["-n", &self.ns])
            .args(args)
            .output()
            .expect("plugin runs")
    }

    async fn wait_permit(&self, name: &str, what: &str, pred: impl Fn(&Permit) -> bool) -> Permit {
        let api: Api<Permit> = Api::namespaced(self.client.clone(), &self.ns);
        wait_until(&format!("Permit {name} {what}"), WAIT, || async {
            match api.get(name).await {
                Ok(p) if pred(&p) => Ok(p),
                Ok(p) => Err(format!("{:?}", p.status.and_then(|s| s.proxy))),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// Waits for the proxy to answer and returns its endpoint.
    async fn ready(&self, name: &str) -> String {
        let p = self
            .wait_permit(name, "proxy Ready", |p| {
                proxy(p).is_some_and(|s| s.phase == ProxyPhase::Ready)
            })
            .await;
        proxy(&p).and_then(|s| s.endpoint).expect("endpoint")
    }

    async fn audit(&self, name: &str) -> Vec<ProxyCall> {
        let cm = Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns)
            .get_opt(&proxy_audit_object_name(name))
            .await
            .expect("read audit");
        cm.and_then(|c| c.data)
            .and_then(|d| d.get(PROXY_AUDIT_KEY).cloned())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn events(&self, name: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.client.clone(), &self.ns)
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect()
    }
}

fn phase(p: &Permit) -> Option<PermitPhase> {
    p.status.as_ref().and_then(|s| s.phase)
}

fn proxy(p: &Permit) -> Option<oauth3_crds::ProxyStatus> {
    p.status.as_ref().and_then(|s| s.proxy.clone())
}

#[tokio::test]
async fn an_approved_permit_is_served_by_a_proxy_that_only_its_callers_may_use() {
    let Some(env) = Env::new("proxy-e2e").await else {
        return;
    };
    let op = env.operator().await;
    let agent = env.agent("coder").await;
    // Bound to the role but not approved by the owner as a caller.
    let other = env.agent("other").await;
    // Approved by the owner as a caller, but without the RBAC to call.
    let unbound = service_account_token(&env.client, &env.ns, "unbound").await;
    env.proxied_permit(
        "gh",
        &[env.user("coder"), env.user("unbound")],
        json!({}),
        json!({}),
    )
    .await;
    let endpoint = env.ready("gh").await;

    // The caller's call is exactly the capability call, with the owner's secret injected and
    // the caller's own token never passed on.
    let ok = env
        .http
        .get(&format!("{endpoint}/api/echo-auth"), Some(&agent))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert!(ok.header(REFUSAL_HEADER).is_none());
    let got = env.up.assert_received(1, "the allowed call");
    assert_eq!(got[0].path_and_query, "/v1/echo-auth");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );
    assert!(
        !got.iter()
            .any(|r| r.headers.iter().any(|(_, v)| v.contains(&agent))),
        "the client token reached the upstream"
    );
    assert!(
        !ok.text.contains(SECRET),
        "the secret came back: {}",
        ok.text
    );

    // Outside the Permit: refused by the proxy, nothing sent.
    let denied = env
        .http
        .get(&format!("{endpoint}/api/admin"), Some(&agent))
        .await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    assert_eq!(denied.header(REFUSAL_HEADER), Some("policy"));
    // Not a caller the owner approved / without RBAC / no Kubernetes token at all.
    for (token, kind, status) in [
        (other.as_str(), "forbidden", 403),
        (unbound.as_str(), "forbidden", 403),
        ("not-a-token", "unauthenticated", 401),
    ] {
        let refused = env
            .http
            .get(&format!("{endpoint}/api/items"), Some(token))
            .await;
        assert_eq!(refused.status, status, "{}", refused.text);
        assert_eq!(
            refused.header(REFUSAL_HEADER),
            Some(kind),
            "{}",
            refused.text
        );
    }
    env.up
        .assert_received(1, "no refused call reached the upstream");

    // The calls are reported: the audit log names who called, usage counts the allowed one.
    let audit = wait_until("the calls in the audit log", WAIT, || async {
        let calls = env.audit("gh").await;
        if calls.len() >= 2 {
            Ok(calls)
        } else {
            Err(format!("{} lines", calls.len()))
        }
    })
    .await;
    assert_eq!(audit[0].identity, env.user("coder"));
    assert_eq!(audit[0].decision, oauth3_crds::CallDecision::Allowed);
    assert_eq!(audit[1].decision, oauth3_crds::CallDecision::Denied);
    env.wait_permit("gh", "usage counted", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.usage.as_ref())
            .is_some_and(|u| u.calls == 1)
    })
    .await;
    let logs = env.plugin(&["logs", "permit/gh"]);
    let shown = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(
        shown.contains(&env.user("coder")) && shown.contains("/v1/echo-auth"),
        "{shown}"
    );

    // Revocation stops it: the status says so, the endpoint no longer answers.
    let out = env.plugin(&["revoke", "gh"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped = env
        .wait_permit("gh", "proxy Stopped", |p| {
            proxy(p).is_some_and(|s| s.phase == ProxyPhase::Stopped)
        })
        .await;
    let status = proxy(&stopped).expect("proxy status");
    assert_eq!(status.reason.as_deref(), Some("Revoked"), "{status:?}");
    assert!(status.endpoint.is_none() && status.token_digest.is_none());
    wait_until("the endpoint to close", WAIT, || async {
        match reqwest::Client::new()
            .get(format!("{endpoint}/api/items"))
            .bearer_auth(&agent)
            .send()
            .await
        {
            Err(e) if e.is_connect() => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    env.up.assert_received(1, "nothing after the revocation");
    let events = env.events("gh").await;
    let reasons: Vec<&str> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert!(
        reasons.contains(&"ProxyStarted") && reasons.contains(&"ProxyStopped"),
        "{reasons:?}"
    );

    // The secret is in no status, Event or audit line.
    let all = format!(
        "{:?}{:?}{:?}",
        stopped.status,
        events,
        env.audit("gh").await
    );
    assert!(!all.contains(SECRET));
    op.stop().await;
}

#[tokio::test]
async fn a_rate_limit_holds_across_the_proxy_and_the_permits_executions() {
    let Some(env) = Env::new("proxy-rate").await else {
        return;
    };
    let op = env.operator().await;
    let agent = env.agent("coder").await;
    env.proxied_permit(
        "limited",
        &[env.user("coder")],
        json!({"rateLimit": {"requests": 3, "perSeconds": 3600}}),
        json!({}),
    )
    .await;
    let endpoint = env.ready("limited").await;
    // An Execution spends two of the three calls.
    let spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "limited", "timeoutSeconds": 30,
        "code": "await api('GET', '/items'); await api('GET', '/items'); return 'two'"
    }))
    .expect("spec");
    let execs: Api<Execution> = Api::namespaced(env.client.clone(), &env.ns);
    execs
        .create(&PostParams::default(), &Execution::new("two", spec))
        .await
        .expect("execution");
    let done = wait_until("the Execution to finish", WAIT, || async {
        match execs.get("two").await {
            Ok(e) if e.status.as_ref().and_then(|s| s.phase) == Some(ExecutionPhase::Succeeded) => {
                Ok(e)
            }
            Ok(e) => Err(format!("{:?}", e.status)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(done.status.and_then(|s| s.result), Some(json!("two")));
    // The proxy learns the Permit's budget with its next report (at most a few seconds).
    tokio::time::sleep(Duration::from_millis(
        oauth3_protocol::proxy::REPORT_INTERVAL_MS
            * u64::from(oauth3_protocol::proxy::IDLE_REPORT_EVERY + 2),
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let a = env
            .http
            .get(&format!("{endpoint}/api/items"), Some(&agent))
            .await;
        statuses.push((a.status, a.header(REFUSAL_HEADER).map(str::to_owned)));
    }
    assert_eq!(
        statuses,
        [
            (200, None),
            (403, Some("policy".to_owned())),
            (403, Some("policy".to_owned()))
        ],
        "one call was left of the three"
    );
    env.up
        .assert_received(3, "two by the Execution, one by the proxy");

    // And the other way: what the proxy spent refuses the next Execution.
    env.wait_permit("limited", "the proxy's call counted", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.usage.as_ref())
            .is_some_and(|u| u.calls == 3)
    })
    .await;
    let spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "limited", "timeoutSeconds": 30, "code": "await api('GET', '/items')"
    }))
    .expect("spec");
    execs
        .create(&PostParams::default(), &Execution::new("more", spec))
        .await
        .expect("execution");
    let refused = wait_until("the Execution to be refused", WAIT, || async {
        match execs.get("more").await {
            Ok(e)
                if e.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(ExecutionPhase::is_terminal) =>
            {
                Ok(e)
            }
            Ok(e) => Err(format!("{:?}", e.status)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let status = refused.status.expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Denied), "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("RateBudgetExhausted"));
    env.up.assert_received(3, "nothing more");
    op.stop().await;
}

#[tokio::test]
async fn an_idle_proxy_stops_and_starts_again_when_woken() {
    let Some(env) = Env::new("proxy-idle").await else {
        return;
    };
    let op = env.operator().await;
    let agent = env.agent("coder").await;
    env.proxied_permit(
        "sleepy",
        &[env.user("coder")],
        json!({}),
        json!({"idleTimeout": "10s"}),
    )
    .await;
    let first = env.ready("sleepy").await;
    let stopped = env
        .wait_permit("sleepy", "proxy idle", |p| {
            proxy(p).is_some_and(|s| s.reason.as_deref() == Some("Idle"))
        })
        .await;
    let status = proxy(&stopped).expect("status");
    assert_eq!(status.phase, ProxyPhase::Stopped);
    // It stays stopped until woken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = Api::<Permit>::namespaced(env.client.clone(), &env.ns)
        .get("sleepy")
        .await
        .expect("permit");
    assert_eq!(proxy(&still).map(|s| s.phase), Some(ProxyPhase::Stopped));
    let wake = k8s_openapi::jiff::Timestamp::now().to_string();
    Api::<Permit>::namespaced(env.client.clone(), &env.ns)
        .patch(
            "sleepy",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ANNOTATION_PROXY_WAKE: wake}}})),
        )
        .await
        .expect("wake");
    let again = env.ready("sleepy").await;
    let ok = env
        .http
        .get(&format!("{again}/api/items"), Some(&agent))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_ne!(first, again, "a new proxy");
    op.stop().await;
}

#[tokio::test]
async fn a_revocation_cuts_a_stream_in_flight_with_a_clear_error_and_the_proxy_ends() {
    let Some(env) = Env::new("proxy-cut").await else {
        return;
    };
    // 200 events 100 ms apart: far longer than the stop grace.
    let events =
        oauth3_test_support::sse::EventStream::start(200, Duration::from_millis(100)).await;
    let mut ca = std::fs::read(env.dir.join("ca.pem")).expect("ca");
    ca.extend_from_slice(&events.ca_pem);
    std::fs::write(env.dir.join("ca.pem"), ca).expect("ca");
    let op = env.operator().await;
    let agent = env.agent("coder").await;
    let permit = PermitFixture::api(&events.origin())
        .with(json!({"paths": ["/stream"]}))
        .secret("API_TOKEN")
        .spec_fields(json!({"description": "stream", "validFor": "1h",
            "proxy": {"enabled": true, "callers": [env.user("coder")]}}))
        .permit("llm");
    Api::<Permit>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &permit)
        .await
        .expect("permit");
    env.wait_permit("llm", "Pending", |p| phase(p) == Some(PermitPhase::Pending))
        .await;
    let out = env.plugin(&["approve", "llm"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint = env.ready("llm").await;

    let mut resp = reqwest::Client::new()
        .get(format!("{endpoint}/api/stream"))
        .bearer_auth(&agent)
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status().as_u16(), 200);
    let mut text = String::new();
    let mut revoked = false;
    while let Ok(Some(chunk)) = resp.chunk().await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        if !revoked && text.contains("data: {\"n\": 0}") {
            // The first event came while the upstream still streams: now the owner revokes.
            let out = env.plugin(&["revoke", "llm"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            revoked = true;
        }
    }
    assert!(revoked, "no event arrived: {text}");
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("\"error\":\"stopped\""), "{text}");
    assert!(
        !text.contains("data: {\"n\": 199}"),
        "the stream was cut: {text}"
    );
    assert!(!text.contains(SECRET));
    let stopped = env
        .wait_permit("llm", "proxy Stopped", |p| {
            proxy(p).is_some_and(|s| s.phase == ProxyPhase::Stopped)
        })
        .await;
    assert_eq!(
        proxy(&stopped).and_then(|s| s.reason).as_deref(),
        Some("Revoked")
    );
    assert_eq!(events.requests(), 1);
    op.stop().await;
}
