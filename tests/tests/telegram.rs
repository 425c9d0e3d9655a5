//! Owner approvals on Telegram, on a real kube-apiserver with the operator binary and the
//! `telegram-test-api` Bot API emulator: what the owner is shown, every button, refused
//! strangers, double taps, outdated messages, timeouts, `/pending` and `/revoke`, a restart
//! in the middle, and a Permit approved on Telegram whose Execution then runs.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use oauth3_crds::{
    ApprovalDecision, ApprovalVia, Execution, ExecutionPhase, ExecutionSpec, Permit, PermitPhase,
    PermitSpec, TrustLevel, code_digest, spec_digest,
};
use oauth3_test_support::{Upstream, wait_until};
use oauth3_tests::telegram::{BotMessage, Emulator, OperatorProcess, telegram_flags};
use oauth3_tests::{apply_dev_sealed_secret, client_or_skip, namespace, workspace_binary};
use serde_json::{Value, json};

const OWNER: u64 = 42;
const STRANGER: u64 = 99;
const CHAT: i64 = 5005;
const SECRET: &str = "sk-telegram-e2e-5d1f";
const DEV_KEY: [u8; 32] = [7u8; 32];

struct Env {
    client: kube::Client,
    ns: String,
    dir: PathBuf,
    tg: Emulator,
}

impl Env {
    async fn new(tag: &str) -> Option<Env> {
        let client = client_or_skip().await?;
        let ns = namespace(&client, tag).await;
        let dir = std::env::temp_dir().join(format!("oauth3-telegram-{ns}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let tg = Emulator::start().await;
        Some(Env {
            client,
            ns,
            dir,
            tg,
        })
    }

    fn operator(&self, timeout: &str, extra: &[String]) -> OperatorProcess {
        let mut flags = telegram_flags(&self.tg, &self.dir, CHAT, &[OWNER], timeout);
        flags.extend_from_slice(extra);
        OperatorProcess::start(&self.ns, &self.dir, &flags)
    }

    fn permits(&self) -> Api<Permit> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn permit(&self, name: &str, spec: Value) {
        let spec: PermitSpec = serde_json::from_value(spec).expect("spec");
        self.permits()
            .create(&PostParams::default(), &Permit::new(name, spec))
            .await
            .expect("permit");
    }

    async fn get(&self, name: &str) -> Permit {
        self.permits().get(name).await.expect("permit")
    }

    async fn wait_permit(&self, name: &str, what: &str, pred: impl Fn(&Permit) -> bool) -> Permit {
        wait_until(
            &format!("Permit {name} {what}"),
            Duration::from_secs(30),
            || async {
                let p = self.get(name).await;
                if pred(&p) { Ok(p) } else { Err(p.status) }
            },
        )
        .await
    }

    /// The request message for Permit `name` (its first line names it).
    async fn request_for(&self, name: &str) -> BotMessage {
        let needle = format!("Permit {name} (namespace {})", self.ns);
        self.tg
            .wait_message(&format!("asking about {name}"), |m| {
                m.text.contains(&needle) && !m.buttons.is_empty()
            })
            .await
    }

    async fn tap(&self, user: u64, m: &BotMessage, label: &str) {
        self.tg
            .tap(user, CHAT, m.message_id, &m.button(label))
            .await;
    }

    /// Waits until the operator's state record holds message `message_id`.
    async fn wait_recorded(&self, message_id: i64) {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns);
        let needle = format!("\"messageId\":{message_id},");
        for _ in 0..100 {
            if let Ok(cm) = api.get("oauth3-telegram-state").await
                && cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("state.json"))
                    .is_some_and(|s| s.contains(&needle))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("message {message_id} was never recorded in oauth3-telegram-state");
    }

    /// Lets the bot go through a few polls (for asserting that something did NOT happen).
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(2_000)).await;
    }
}

fn simple_spec(description: &str, valid_for: &str) -> Value {
    json!({
        "description": description,
        "capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
            "paths": ["/repos/acme/app/issues", "/repos/acme/app/issues/*"],
            "methods": ["GET", "POST"],
            "query": {"allow": ["state", "labels"]},
            "body": {"allowKeys": ["title", "body"], "denyKeys": ["assignees"], "maxBytes": 4096},
            "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"},
            "rateLimit": {"requests": 30, "perSeconds": 60}}],
        "secrets": ["GITHUB_TOKEN"],
        "validFor": valid_for,
        "maxExecutions": 10
    })
}

fn approval(p: &Permit) -> Option<oauth3_crds::Approval> {
    p.status.as_ref().and_then(|s| s.approval.clone())
}

fn phase(p: &Permit) -> Option<PermitPhase> {
    p.status.as_ref().and_then(|s| s.phase)
}

fn requests_about(messages: &[BotMessage], name: &str) -> usize {
    messages
        .iter()
        .filter(|m| {
            m.text.starts_with("oauth3: approval requested")
                && m.text.contains(&format!("Permit {name} "))
        })
        .count()
}

#[tokio::test]
async fn a_new_permit_shows_the_owner_exactly_what_would_be_allowed_and_approve_records_it() {
    let Some(env) = Env::new("tg-approve").await else {
        return;
    };
    let _op = env.operator("24h", &[]);
    env.permit("triage", simple_spec("Triage new issues", "7d"))
        .await;
    let m = env.request_for("triage").await;
    let digest = spec_digest(&env.get("triage").await.spec).expect("digest");

    // Everything that will be enforced, in plain words, from the same spec.
    for needle in [
        "The agent says: \"Triage new issues\"",
        "methods: GET, POST",
        "url:     https://api.github.com/repos/acme/app/issues\n",
        "url:     https://api.github.com/repos/acme/app/issues/*",
        "query:   only state, labels",
        "only keys title, body, never assignees, at most 4096 bytes",
        "30 calls per 60 s",
        "Secrets: GITHUB_TOKEN",
        "Lifetime: 7d after approval; at most 10 Executions",
        &format!("Spec digest: {digest}"),
    ] {
        assert!(
            m.text.contains(needle),
            "missing {needle:?} in:\n{}",
            m.text
        );
    }
    assert_eq!(m.chat_id, CHAT);
    let labels: Vec<&str> = m.buttons.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["Approve (7d)", "Deny"]);
    assert!(m.buttons.iter().all(|(_, d)| d.len() <= 64));

    env.tap(OWNER, &m, "Approve (7d)").await;
    let p = env
        .wait_permit("triage", "Approved", |p| {
            phase(p) == Some(PermitPhase::Approved)
        })
        .await;
    let a = approval(&p).expect("approval");
    assert_eq!(a.decision, ApprovalDecision::Approved);
    assert_eq!(
        (a.by.as_str(), a.via),
        ("telegram:42", ApprovalVia::Telegram)
    );
    assert_eq!(a.spec_digest, digest);

    // The message now shows the decision, who made it and when, and has no buttons left.
    let edited = env
        .tg
        .wait_message("showing the decision", |x| {
            x.message_id == m.message_id && x.buttons.is_empty()
        })
        .await;
    assert!(
        edited
            .text
            .contains(">> Approved by telegram:42 via telegram at "),
        "{}",
        edited.text
    );

    // A double tap, or Deny on the decided message, changes nothing.
    env.tap(OWNER, &m, "Approve (7d)").await;
    env.tap(OWNER, &m, "Deny").await;
    env.settle().await;
    assert_eq!(approval(&env.get("triage").await), Some(a));
    assert_eq!(requests_about(&env.tg.bot_messages().await, "triage"), 1);
}

#[tokio::test]
async fn deny_records_a_denial_and_a_stranger_is_refused_without_any_write() {
    let Some(env) = Env::new("tg-deny").await else {
        return;
    };
    let op = env.operator("24h", &[]);
    env.permit("mail", simple_spec("Send mail", "1h")).await;
    let m = env.request_for("mail").await;

    // Someone else in the chat taps Approve and tries to revoke: refused, nothing written.
    env.tap(STRANGER, &m, "Approve (1h)").await;
    env.tg.command(STRANGER, CHAT, "/pending").await;
    env.tg
        .wait_message("refusing the stranger", |x| {
            x.text.starts_with("Only the configured owners")
        })
        .await;
    env.settle().await;
    assert_eq!(approval(&env.get("mail").await), None);
    assert!(
        env.tg
            .bot_messages()
            .await
            .iter()
            .any(|x| x.message_id == m.message_id && !x.buttons.is_empty()),
        "the request is still open"
    );
    assert!(
        op.log_text().contains("not a configured owner"),
        "refusals are logged"
    );

    // The owner denies.
    env.tap(OWNER, &m, "Deny").await;
    let p = env
        .wait_permit("mail", "Denied", |p| phase(p) == Some(PermitPhase::Denied))
        .await;
    let a = approval(&p).expect("approval");
    assert_eq!(
        (a.decision, a.by.as_str()),
        (ApprovalDecision::Denied, "telegram:42")
    );
    env.tg
        .wait_message("showing the denial", |x| {
            x.message_id == m.message_id && x.text.contains(">> Denied by telegram:42")
        })
        .await;
    // The token never reaches the log.
    assert!(!op.log_text().contains("oauth3-test-token"));
}

#[tokio::test]
async fn a_tap_on_a_message_outdated_by_a_spec_change_changes_nothing() {
    let Some(env) = Env::new("tg-stale").await else {
        return;
    };
    let _op = env.operator("24h", &[]);
    env.permit("sync", simple_spec("Sync issues", "1h")).await;
    let old = env.request_for("sync").await;

    // The agent changes the spec: the old message is marked outdated and a new one is sent.
    env.permits()
        .patch(
            "sync",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"description": "Sync AND delete issues"}})),
        )
        .await
        .expect("spec changed");
    let new = env
        .tg
        .wait_message("for the new spec", |m| {
            m.text.contains("Sync AND delete issues") && !m.buttons.is_empty()
        })
        .await;
    assert_ne!(new.message_id, old.message_id);
    env.tg
        .wait_message("marking the old one outdated", |m| {
            m.message_id == old.message_id && m.text.contains("Outdated: the Permit's spec changed")
        })
        .await;

    // Approve on the old message approves nothing; Deny on the new one is what counts.
    env.tap(OWNER, &old, "Approve (1h)").await;
    env.tap(OWNER, &new, "Deny").await;
    let p = env
        .wait_permit("sync", "decided", |p| approval(p).is_some())
        .await;
    let a = approval(&p).expect("approval");
    assert_eq!(a.decision, ApprovalDecision::Denied);
    assert_eq!(a.spec_digest, spec_digest(&p.spec).expect("digest"));
}

#[tokio::test]
async fn an_unanswered_request_times_out_to_denied_with_a_reason() {
    let Some(env) = Env::new("tg-timeout").await else {
        return;
    };
    let _op = env.operator("3s", &[]);
    env.permit("late", simple_spec("Late request", "1h")).await;
    let m = env.request_for("late").await;
    let p = env
        .wait_permit("late", "Denied", |p| phase(p) == Some(PermitPhase::Denied))
        .await;
    let a = approval(&p).expect("approval");
    assert_eq!(a.by, "oauth3-operator");
    assert_eq!(
        a.reason.as_deref(),
        Some("no decision on Telegram within 3s (approval timeout)")
    );
    env.tg
        .wait_message("showing the timeout", |x| {
            x.message_id == m.message_id
                && x.buttons.is_empty()
                && x.text.contains("approval timeout")
        })
        .await;
    // A late tap changes nothing.
    env.tap(OWNER, &m, "Approve (1h)").await;
    env.settle().await;
    assert_eq!(approval(&env.get("late").await), Some(a));
}

#[tokio::test]
async fn an_operator_restart_neither_duplicates_the_request_nor_loses_the_decision() {
    let Some(env) = Env::new("tg-restart").await else {
        return;
    };
    let op = env.operator("24h", &[]);
    env.permit("backup", simple_spec("Back up repos", "1h"))
        .await;
    let m = env.request_for("backup").await;
    // Killed once the operator has recorded the message (between the Bot API's answer and
    // that record, a crash can send the request once more: see the README).
    env.wait_recorded(m.message_id).await;
    op.kill();

    // A new operator remembers what was sent.
    let op = env.operator("24h", &[]);
    env.settle().await;
    assert_eq!(requests_about(&env.tg.bot_messages().await, "backup"), 1);
    op.kill();

    // The owner taps while no operator runs; the next one records it.
    env.tap(OWNER, &m, "Approve (1h)").await;
    let _op = env.operator("24h", &[]);
    let p = env
        .wait_permit("backup", "Approved", |p| {
            phase(p) == Some(PermitPhase::Approved)
        })
        .await;
    assert_eq!(approval(&p).expect("approval").by, "telegram:42");
    env.settle().await;
    assert_eq!(requests_about(&env.tg.bot_messages().await, "backup"), 1);
}

#[tokio::test]
async fn owners_list_pending_requests_and_revoke_permits_from_the_chat() {
    let Some(env) = Env::new("tg-commands").await else {
        return;
    };
    let _op = env.operator("24h", &[]);
    env.permit("one", simple_spec("First", "1h")).await;
    env.permit("two", simple_spec("Second", "1h")).await;
    let one = env.request_for("one").await;
    env.request_for("two").await;

    env.tg.command(OWNER, CHAT, "/pending").await;
    let list = env
        .tg
        .wait_message("listing pending requests", |m| {
            m.text.starts_with("Waiting for your decision (2)")
        })
        .await;
    assert!(
        list.text.contains("Permit one") && list.text.contains("Permit two"),
        "{}",
        list.text
    );

    env.tap(OWNER, &one, "Approve (1h)").await;
    env.wait_permit("one", "Approved", |p| {
        phase(p) == Some(PermitPhase::Approved)
    })
    .await;

    // A stranger cannot revoke; the owner can.
    let target = format!("/revoke {}/one", env.ns);
    env.tg.command(STRANGER, CHAT, &target).await;
    env.settle().await;
    assert_eq!(phase(&env.get("one").await), Some(PermitPhase::Approved));
    env.tg.command(OWNER, CHAT, &target).await;
    let p = env
        .wait_permit("one", "Revoked", |p| phase(p) == Some(PermitPhase::Revoked))
        .await;
    let a = approval(&p).expect("approval");
    assert_eq!(
        (a.by.as_str(), a.via),
        ("telegram:42", ApprovalVia::Telegram)
    );
    env.tg
        .wait_message("confirming the revocation", |m| {
            m.text.contains("Permit") && m.text.contains(": Revoked by telegram:42")
        })
        .await;
}

#[tokio::test]
async fn a_failing_bot_api_neither_stops_the_controllers_nor_loses_requests() {
    let Some(mut env) = Env::new("tg-outage").await else {
        return;
    };
    let op = env.operator("24h", &[]);
    env.permit("first", simple_spec("Before the outage", "1h"))
        .await;
    env.request_for("first").await;

    // The Bot API goes away: the Permit controller keeps working and the operator stays up.
    let port_owner = std::mem::replace(&mut env.tg, Emulator::start().await);
    let down = tokio::spawn(port_owner.restart_after(Duration::from_secs(4)));
    env.permit("second", simple_spec("During the outage", "1h"))
        .await;
    env.wait_permit("second", "Pending", |p| {
        phase(p) == Some(PermitPhase::Pending)
    })
    .await;
    // Back again: the request made during the outage arrives, once.
    let spare = std::mem::replace(&mut env.tg, down.await.expect("emulator back"));
    spare.stop().await;
    let m = env.request_for("second").await;
    env.tap(OWNER, &m, "Approve (1h)").await;
    env.wait_permit("second", "Approved", |p| {
        phase(p) == Some(PermitPhase::Approved)
    })
    .await;
    assert_eq!(requests_about(&env.tg.bot_messages().await, "second"), 1);
    let log = op.log_text();
    assert!(
        log.contains("retry_in"),
        "failures are retried with backoff"
    );
    assert!(!log.contains("panicked") && !log.contains("oauth3-test-token"));
}

/// The upstream, sealed secret and runner flags of an end-to-end run.
async fn e2e_setup(env: &Env) -> (Upstream, Vec<String>) {
    let up = Upstream::start().await;
    std::fs::write(env.dir.join("dev.key"), hex::encode(DEV_KEY)).expect("key");
    std::fs::write(env.dir.join("ca.pem"), &up.ca_pem).expect("ca");
    apply_dev_sealed_secret(
        &env.client,
        &env.ns,
        "api-token",
        "API_TOKEN",
        SECRET,
        DEV_KEY,
    )
    .await;
    let d = |f: &str| env.dir.join(f).to_string_lossy().into_owned();
    let runner = workspace_binary("oauth3-sandbox-runner", "oauth3-sandbox-runner");
    let flags = vec![
        format!("--runner-binary={}", runner.to_string_lossy()),
        "--runner-arg=--key-provider".into(),
        "--runner-arg=dev".into(),
        "--runner-arg=--dev-key-file".into(),
        format!("--runner-arg={}", d("dev.key")),
        "--runner-arg=--insecure-dev-key".into(),
        "--runner-arg=--ca-file".into(),
        format!("--runner-arg={}", d("ca.pem")),
    ];
    (up, flags)
}

async fn execution(env: &Env, name: &str, code: &str) {
    let spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "api", "code": code, "timeoutSeconds": 20
    }))
    .expect("spec");
    Api::<Execution>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &Execution::new(name, spec))
        .await
        .expect("execution");
}

async fn wait_exec(env: &Env, name: &str, want: ExecutionPhase) -> Execution {
    let api: Api<Execution> = Api::namespaced(env.client.clone(), &env.ns);
    wait_until(
        &format!("Execution {name} {want:?}"),
        Duration::from_secs(60),
        || async {
            let e = api.get(name).await.expect("execution");
            if e.status.as_ref().and_then(|s| s.phase) == Some(want) {
                Ok(e)
            } else {
                Err(e.status)
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_permit_and_its_code_approved_on_telegram_run_end_to_end() {
    let Some(env) = Env::new("tg-e2e").await else {
        return;
    };
    let (up, runner_flags) = e2e_setup(&env).await;
    let _op = env.operator("24h", &runner_flags);
    env.permit(
        "api",
        json!({
            "description": "Read items",
            "capabilities": [{"name": "api", "baseUrl": format!("{}/v1", up.origin()),
                "paths": ["/items"], "methods": ["GET"],
                "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}}],
            "secrets": ["API_TOKEN"], "validFor": "1h", "codeReview": "perCode"
        }),
    )
    .await;
    let m = env.request_for("api").await;
    assert!(
        m.text
            .contains("every new piece of code needs your approval")
    );
    env.tap(OWNER, &m, "Approve (1h)").await;
    env.wait_permit("api", "Approved", |p| {
        phase(p) == Some(PermitPhase::Approved)
    })
    .await;

    // New code: the owner sees the code and its digest, and trusts it always.
    let code = "const items = await api('GET', '/items');\nreturn items;";
    execution(&env, "run-1", code).await;
    wait_exec(&env, "run-1", ExecutionPhase::AwaitingApproval).await;
    let digest = code_digest(code);
    let ask = env
        .tg
        .wait_message("asking about the code", |m| {
            m.text.contains(&format!("Code digest: {digest}")) && !m.buttons.is_empty()
        })
        .await;
    assert!(
        ask.text.contains("Executions waiting: run-1"),
        "{}",
        ask.text
    );
    assert!(
        ask.text
            .contains("const items = await api('GET', '/items');\nreturn items;")
    );
    let labels: Vec<&str> = ask.buttons.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["Approve once", "Approve 24h", "Always", "Deny"]);
    env.tap(OWNER, &ask, "Always").await;
    let done = wait_exec(&env, "run-1", ExecutionPhase::Succeeded).await;
    assert_eq!(
        done.status.and_then(|s| s.result).expect("result")["path"],
        "/v1/items"
    );
    let trusted = env.get("api").await.status.expect("status").trusted_code;
    assert_eq!(
        (
            trusted[0].code_digest.as_str(),
            trusted[0].level,
            trusted[0].by.as_str()
        ),
        (digest.as_str(), TrustLevel::Always, "telegram:42")
    );
    assert_eq!(up.requests().len(), 1);

    // One byte of change needs approval again; Deny refuses the waiting Execution.
    let changed = format!("{code} ");
    execution(&env, "run-2", &changed).await;
    let ask2 = env
        .tg
        .wait_message("asking about the changed code", |m| {
            m.text
                .contains(&format!("Code digest: {}", code_digest(&changed)))
                && !m.buttons.is_empty()
        })
        .await;
    env.tap(OWNER, &ask2, "Deny").await;
    let denied = wait_exec(&env, "run-2", ExecutionPhase::Denied).await;
    assert_eq!(
        denied.status.and_then(|s| s.reason).as_deref(),
        Some("CodeDenied")
    );
    assert_eq!(up.requests().len(), 1, "denied code never ran");

    // Approve once: runs once, and no trust is kept; the same code asks again next time.
    let third = "return await api('GET', '/items');";
    let third_digest = code_digest(third);
    let ask_code = |digest: String, exclude: Option<i64>| {
        let env = &env;
        async move {
            env.tg
                .wait_message("asking about the code", |m| {
                    m.text.contains(&format!("Code digest: {digest}"))
                        && !m.buttons.is_empty()
                        && Some(m.message_id) != exclude
                })
                .await
        }
    };
    execution(&env, "run-3", third).await;
    let once = ask_code(third_digest.clone(), None).await;
    env.tap(OWNER, &once, "Approve once").await;
    wait_exec(&env, "run-3", ExecutionPhase::Succeeded).await;
    let trusted = env.get("api").await.status.expect("status").trusted_code;
    assert!(
        trusted.iter().all(|t| t.code_digest != third_digest),
        "a once trust is consumed: {trusted:?}"
    );
    execution(&env, "run-4", third).await;
    let day = ask_code(third_digest.clone(), Some(once.message_id)).await;
    env.tap(OWNER, &day, "Approve 24h").await;
    wait_exec(&env, "run-4", ExecutionPhase::Succeeded).await;
    let trusted = env.get("api").await.status.expect("status").trusted_code;
    let t = trusted
        .iter()
        .find(|t| t.code_digest == third_digest)
        .expect("trusted for 24h");
    assert_eq!(t.level, TrustLevel::Day);
    assert!(t.expires_at.is_some());
    assert_eq!(up.requests().len(), 3);
}

#[tokio::test]
async fn an_intent_is_shown_to_the_owner_with_its_draft_only_once_drafted_and_approve_binds_it() {
    use oauth3_test_support::{DocServer, github_openapi};
    let Some(env) = Env::new("tg-intent").await else {
        return;
    };
    let docs = DocServer::start(vec![("/github.json", github_openapi())]).await;
    std::fs::write(env.dir.join("docs-ca.pem"), &docs.ca_pem).expect("ca");
    let _op = env.operator(
        "24h",
        &[
            format!("--draft-doc-hosts={}", docs.host()),
            "--insecure-draft-docs-on-loopback".into(),
            format!("--draft-ca-file={}", env.dir.join("docs-ca.pem").display()),
        ],
    );
    env.permit(
        "issues",
        json!({"description": "file bug reports", "capabilities": [], "secrets": ["GITHUB_TOKEN"],
            "intent": [{"name": "createIssue", "goal": "create issues on amiller/test",
                "docUrls": [docs.url("/github.json")], "secretHints": ["GITHUB_TOKEN"],
                "operations": ["issues/create"], "constraints": {"owner": "amiller", "repo": "test"}}]}),
    )
    .await;
    let m = env.request_for("issues").await;
    let drafted = env.get("issues").await;
    let digest = spec_digest(&drafted.effective_spec()).expect("digest");
    for needle in [
        "The agent says: \"file bug reports\"",
        "POST https://api.github.com/repos/amiller/test/issues",
        "createIssue: \"create issues on amiller/test\"",
        "Drafted by the openapi drafter from",
        &format!(
            "createIssue: {}, operation issues/create: POST /repos/{{owner}}/{{repo}}/issues",
            docs.url("/github.json")
        ),
        &format!("Spec digest: {digest}"),
    ] {
        assert!(
            m.text.contains(needle),
            "missing {needle:?} in:\n{}",
            m.text
        );
    }
    env.tap(OWNER, &m, "Approve (24h)").await;
    let p = env
        .wait_permit("issues", "Approved", |p| {
            phase(p) == Some(PermitPhase::Approved)
        })
        .await;
    assert_eq!(approval(&p).expect("approval").spec_digest, digest);
    assert!(
        p.spec.capabilities.is_empty(),
        "approving copies nothing into the agent's spec"
    );
}
