//! The gateway's web approval page in a real headless browser (the distribution's Chromium,
//! driven by `playwright-core` from `tests/browser`): it shows exactly the text `kubectl oauth3
//! get` prints, is served with a strict CSP and `Referrer-Policy: no-referrer`, refuses an
//! agent's token typed into it, and records the owner's approval. Screenshots are kept under
//! `target/test-artifacts/`.

use std::path::PathBuf;

use kube::api::Api;
use oauth3_crds::{ApprovalDecision, ApprovalVia, Permit};
use oauth3_tests::gateway::{Http, InProcessGateway, Tenant};
use oauth3_tests::{client_or_skip, repo_root, workspace_binary};
use serde_json::{Value, json};

fn browser_dir() -> PathBuf {
    repo_root().join("tests").join("browser")
}

/// Installs playwright-core from the lock file unless it is there, and checks for Chromium.
fn ensure_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} not found: install the distribution's Chromium (apt-get install chromium), \
         as .ci/run does, or set CHROMIUM"
    );
    oauth3_tests::npm_ci_once(&browser_dir(), "playwright-core");
}

/// Runs the page script (asynchronously: the gateway answering it runs on this runtime);
/// returns what it saw.
async fn drive(url: &str, token: &str, shot: &std::path::Path, button: &str) -> Value {
    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("approve-page.js"))
        .args([url, token, &shot.to_string_lossy(), button])
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "the browser script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "browser output {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn artifacts() -> PathBuf {
    let dir = repo_root().join("target").join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

#[tokio::test]
async fn the_approval_page_shows_the_permit_and_only_an_owner_token_approves_it() {
    let Some(admin) = client_or_skip().await else {
        return;
    };
    ensure_browser();
    let tenant = Tenant::new(&admin, "gw-page").await;
    let gw = InProcessGateway::start(&admin, &["--auth-cache-ttl=0s"]).await;
    let http = Http::new();
    let asked = http
        .post(
            &gw.url("/permit"),
            Some(&tenant.agent),
            &json!({
                "description": "Read the <b>open</b> issues of o/r",
                "capabilities": [{
                    "type": "scoped-fetch", "name": "github", "base_url": "https://api.github.com",
                    "scope": ["repos/o/r/issues"], "methods": ["GET"],
                    "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"},
                    "rate_limit": {"max_calls": 30, "window_seconds": 60}
                }]
            }),
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.text);
    let url = asked.body["approval_url"].as_str().expect("approval_url");
    let name = asked.body["permit_id"].as_str().expect("permit_id");

    // An agent's token typed into the page is refused; nothing is recorded.
    let shot = artifacts().join("gateway-approval-page.png");
    let agent_try = drive(url, &tenant.agent, &shot, "approve").await;
    assert_eq!(agent_try["status"], 200, "{agent_try}");
    assert_eq!(agent_try["afterStatus"], 403, "{agent_try}");
    assert!(
        agent_try["afterText"]
            .as_str()
            .is_some_and(|t| t.contains("may not patch permits/status")),
        "{agent_try}"
    );
    let permits: Api<Permit> = Api::namespaced(admin.clone(), &tenant.ns);
    let before = permits.get(name).await.expect("permit");
    assert!(before.status.and_then(|s| s.approval).is_none());

    // The page shows what `kubectl oauth3 get` prints, under a strict policy.
    let plugin = std::process::Command::new(workspace_binary("oauth3-operator", "kubectl-oauth3"))
        .env(
            "KUBECONFIG",
            std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
        )
        .args(["-n", &tenant.ns, "get", name])
        .output()
        .expect("plugin runs");
    assert!(plugin.status.success());
    let kubectl_text = String::from_utf8(plugin.stdout).expect("utf8");
    assert_eq!(
        agent_try["permitText"].as_str().expect("text").trim_end(),
        kubectl_text.trim_end(),
        "the page must show exactly what kubectl oauth3 get shows"
    );
    assert!(kubectl_text.contains("The agent says: \"Read the <b>open</b> issues of o/r\""));
    let csp = agent_try["csp"].as_str().expect("csp");
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(agent_try["referrerPolicy"], "no-referrer");
    assert!(
        agent_try["setCookie"]
            .as_str()
            .is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict")),
        "{agent_try}"
    );
    assert_ne!(
        agent_try["styled"], "rgba(0, 0, 0, 0)",
        "the page's own style (allowed by its hash) applies"
    );
    assert_eq!(
        agent_try["problems"],
        json!([]),
        "no CSP violation or error on the page"
    );
    let png = std::fs::read(&shot).expect("screenshot kept");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");

    // The owner's token approves, and the decision names the owner.
    let owner_shot = artifacts().join("gateway-approval-page-owner.png");
    let owner_try = drive(url, &tenant.owner, &owner_shot, "approve").await;
    assert_eq!(owner_try["afterStatus"], 200, "{owner_try}");
    assert!(
        owner_try["afterText"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("Permit {name} approved"))),
        "{owner_try}"
    );
    let after = permits.get(name).await.expect("permit");
    let approval = after.status.and_then(|s| s.approval).expect("approval");
    assert_eq!(approval.decision, ApprovalDecision::Approved);
    assert_eq!(approval.via, ApprovalVia::Web);
    assert_eq!(
        approval.by,
        format!("system:serviceaccount:{}:owner", tenant.ns)
    );
    assert_eq!(
        Some(approval.spec_digest),
        asked.body["spec_digest"].as_str().map(str::to_owned)
    );
}

const OWNER: u64 = 42;
const STRANGER: u64 = 99;
const CHAT: i64 = 5005;

/// The owner taps "Open on the web" under a Telegram request: the bot sends a one-time sign-in
/// link, which opens the request in a real browser and decides it without a Kubernetes token,
/// recorded as the Telegram owner. A stranger's tap makes no link, a forged or reused code
/// decides nothing, and the same works for a code request under a perCode Permit.
#[tokio::test]
async fn a_telegram_sign_in_link_decides_once_on_the_page_without_a_token() {
    use oauth3_operator::plugin::{Decision, record_decision};
    use oauth3_tests::telegram::{BotMessage, Emulator, OperatorProcess, telegram_flags};

    let Some(admin) = client_or_skip().await else {
        return;
    };
    ensure_browser();
    let tenant = Tenant::new(&admin, "gw-signin").await;
    let gw = InProcessGateway::start(&admin, &["--auth-cache-ttl=0s"]).await;
    let tg = Emulator::start().await;
    let dir = std::env::temp_dir().join(format!("oauth3-signin-{}", tenant.ns));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut flags = telegram_flags(&tg, &dir, CHAT, &[OWNER], "10m");
    flags.push(format!("--telegram-web-url={}", gw.base));
    let operator = OperatorProcess::start(&tenant.ns, &dir, &flags);
    let http = Http::new();
    let permits: Api<Permit> = Api::namespaced(admin.clone(), &tenant.ns);

    let asked = http
        .post(
            &gw.url("/permit"),
            Some(&tenant.agent),
            &json!({
                "description": "Read the open issues of o/r",
                "capabilities": [{
                    "type": "scoped-fetch", "name": "github", "base_url": "https://api.github.com",
                    "scope": ["repos/o/r/issues"], "methods": ["GET"],
                    "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}
                }]
            }),
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.text);
    let name = asked.body["permit_id"]
        .as_str()
        .expect("permit_id")
        .to_owned();
    let request = tg
        .wait_message("the Permit request", |m| {
            m.text.contains(&format!("Permit {name}")) && m.buttons.len() == 3
        })
        .await;
    let open_web = request.button("Open on the web");

    // A stranger's tap makes no link and writes nothing.
    tg.tap(STRANGER, CHAT, request.message_id, &open_web).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let link_messages = |ms: Vec<BotMessage>| {
        ms.into_iter()
            .filter(|m| m.text.contains("sign-in link"))
            .count()
    };
    assert_eq!(link_messages(tg.bot_messages().await), 0);
    let p = permits.get(&name).await.expect("permit");
    assert!(p.status.and_then(|s| s.web_sign_in).is_none());

    // The owner's tap sends a link; the Permit keeps only the code's hash.
    tg.tap(OWNER, CHAT, request.message_id, &open_web).await;
    let sent = tg
        .wait_message("the sign-in link", |m| {
            m.text
                .contains(&format!("sign-in link for Permit request {name}"))
        })
        .await;
    let link = sent.button("Sign in and decide");
    let prefix = format!("{}/signin/{}/{name}?code=", gw.base, tenant.ns);
    let code = link
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{link}"))
        .to_owned();
    assert_eq!(code.len(), 64, "{link}");
    assert!(
        !sent.text.contains(&code),
        "the code is only behind the button"
    );
    let stored = permits.get(&name).await.expect("permit");
    let record = stored
        .status
        .as_ref()
        .and_then(|s| s.web_sign_in.clone())
        .expect("a sign-in record");
    assert_eq!(record.by, format!("telegram:{OWNER}"));
    let status_json = serde_json::to_string(&stored.status).expect("json");
    assert!(!status_json.contains(&code), "only the hash is stored");

    // Anyone without the exact code gets nothing, and nothing is recorded.
    let mut forged = code.clone().into_bytes();
    forged[0] = if forged[0] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).expect("hex");
    for bad in [
        prefix.clone() + &forged,
        prefix.trim_end_matches("?code=").to_owned(),
    ] {
        let a = http.get(&bad, None).await;
        assert_eq!(a.status, 403, "{bad}: {}", a.text);
        assert!(a.text.contains("not valid"), "{}", a.text);
    }
    let posted = http
        .post(
            &gw.url(&format!("/signin/{}/{name}", tenant.ns)),
            Some(&tenant.agent),
            &json!({"action": "approve", "code": forged}),
        )
        .await;
    assert_eq!(posted.status, 403, "{}", posted.text);
    let other_ns = http
        .get(
            &format!("{}/signin/default/{name}?code={code}", gw.base),
            None,
        )
        .await;
    assert_eq!(other_ns.status, 404, "{}", other_ns.text);
    assert!(
        permits
            .get(&name)
            .await
            .expect("permit")
            .status
            .and_then(|s| s.approval)
            .is_none()
    );

    // The owner opens the link in a browser and approves: no token field, no token typed.
    let shot = artifacts().join("gateway-sign-in-page.png");
    let seen = drive(&link, "-", &shot, "approve").await;
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(seen["tokenFields"], 0, "{seen}");
    assert!(
        seen["signedIn"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("telegram:{OWNER}"))),
        "{seen}"
    );
    assert!(
        seen["permitText"]
            .as_str()
            .is_some_and(|t| t.contains("api.github.com"))
    );
    assert_eq!(seen["problems"], json!([]), "{seen}");
    assert!(
        seen["setCookie"]
            .as_str()
            .is_some_and(|c| c.contains("Path=/signin")),
        "{seen}"
    );
    assert_eq!(seen["afterStatus"], 200, "{seen}");
    assert!(
        seen["afterText"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("Permit {name} approved"))),
        "{seen}"
    );
    let after = permits.get(&name).await.expect("permit");
    let status = after.status.expect("status");
    let approval = status.approval.expect("approval");
    assert_eq!(approval.decision, ApprovalDecision::Approved);
    assert_eq!(approval.via, ApprovalVia::Web);
    assert_eq!(approval.by, format!("telegram:{OWNER}"));
    assert!(status.web_sign_in.is_none(), "the link is used up");

    // Used once: the same link decides nothing again.
    let again = http.get(&link, None).await;
    assert_eq!(again.status, 403, "{}", again.text);
    let deny_again = http
        .post(
            &gw.url(&format!("/signin/{}/{name}", tenant.ns)),
            None,
            &json!({"action": "deny", "code": code}),
        )
        .await;
    assert_eq!(deny_again.status, 403, "{}", deny_again.text);
    assert_eq!(
        permits
            .get(&name)
            .await
            .expect("permit")
            .status
            .and_then(|s| s.approval)
            .map(|a| a.decision),
        Some(ApprovalDecision::Approved)
    );
    // Telegram shows the decision on the original message.
    tg.wait_message("the request closed", |m| {
        m.message_id == request.message_id && m.text.contains("via web")
    })
    .await;

    // A code request under a perCode Permit: the link trusts the code for 24h.
    let spec: oauth3_crds::PermitSpec = serde_json::from_value(json!({
        "description": "review each script",
        "capabilities": [{"name": "api", "baseUrl": "https://api.example.com",
            "paths": ["/v1/**"], "methods": ["GET"]}],
        "validFor": "1h", "codeReview": "perCode"
    }))
    .expect("spec");
    permits
        .create(&Default::default(), &Permit::new("reviewed", spec))
        .await
        .expect("permit");
    record_decision(
        &admin,
        &tenant.ns,
        "reviewed",
        Decision::Approve,
        "kube:admin",
        ApprovalVia::Kubectl,
    )
    .await
    .expect("approved");
    let code_text = "return 40 + 2;";
    let exec_spec: oauth3_crds::ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "reviewed", "code": code_text, "timeoutSeconds": 20
    }))
    .expect("spec");
    Api::<oauth3_crds::Execution>::namespaced(admin.clone(), &tenant.ns)
        .create(
            &Default::default(),
            &oauth3_crds::Execution::new("run-1", exec_spec),
        )
        .await
        .expect("execution");
    let code_request = tg
        .wait_message("the code request", |m| {
            m.text
                .contains("new code wants to run under Permit reviewed")
                && m.buttons.len() == 5
        })
        .await;
    tg.tap(
        OWNER,
        CHAT,
        code_request.message_id,
        &code_request.button("Open on the web"),
    )
    .await;
    let code_link = tg
        .wait_message("the code sign-in link", |m| {
            m.text
                .contains("sign-in link for the code waiting under Permit reviewed")
        })
        .await
        .button("Sign in and decide");
    let code_shot = artifacts().join("gateway-sign-in-code-page.png");
    let seen = drive(&code_link, "-", &code_shot, "approve-24h").await;
    assert_eq!(seen["tokenFields"], 0, "{seen}");
    assert_eq!(seen["afterStatus"], 200, "{seen}");
    let digest = oauth3_crds::code_digest(code_text);
    assert!(
        seen["afterText"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("Code {digest} approved under Permit reviewed"))),
        "{seen}"
    );
    let reviewed = permits.get("reviewed").await.expect("permit");
    let trusted = reviewed.status.expect("status");
    assert!(trusted.web_sign_in.is_none());
    assert!(
        trusted.trusted_code.iter().any(|t| t.code_digest == digest
            && t.level == oauth3_crds::TrustLevel::Day
            && t.by == format!("telegram:{OWNER}")),
        "{:?}",
        trusted.trusted_code
    );
    drop(operator);
}
