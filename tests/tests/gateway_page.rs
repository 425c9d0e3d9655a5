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
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("running npm ci (node and npm must be installed)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
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
