//! oauth2 credentials through the operator on a real kube-apiserver: the in-process operator
//! (process launcher, result callback, credential endpoints) + the real runner binary + a real
//! OpenID provider on loopback that rotates refresh tokens and deletes the old one when it is
//! used + a recording HTTPS upstream. Two runs that need the same expired credential at the
//! same moment refresh it once (the operator's refresh lease), both call with the new token,
//! and the rotated refresh token is written back sealed: the newest is never lost. No token
//! value reaches an Execution, an Event or the Secret's annotations.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, PostParams};
use oauth3_crds::{Execution, ExecutionPhase, ExecutionSpec, Permit, PermitPhase};
use oauth3_operator::launcher::process::ProcessLauncherConfig;
use oauth3_protocol::oauth2::{ANNOTATION_GENERATION, ANNOTATION_REFRESHED_BY, TokenSet};
use oauth3_test_support::oidc::CLIENT_ID;
use oauth3_test_support::{OidcProvider, PermitFixture, Upstream, wait_until};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{
    apply_dev_oauth2_secret, client_or_skip, namespace, post_json, workspace_binary,
};
use serde_json::json;

const DEV_KEY: [u8; 32] = [5u8; 32];
const NAME: &str = "GITHUB";
const OBJECT: &str = "github";
const WAIT: Duration = Duration::from_secs(60);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .try_into()
        .expect("fits")
}

fn runner(dir: &std::path::Path) -> ProcessLauncherConfig {
    oauth3_tests::operator::dev_runner(dir)
}

fn plugin(ns: &str, args: &[&str]) -> std::process::Output {
    oauth3_tests::plugin(ns, args)
}

async fn approved_permit(client: &kube::Client, ns: &str, up: &Upstream) {
    let permit = PermitFixture::api(&format!("{}/v1", up.origin()))
        .with(json!({"paths": ["/echo-auth"]}))
        .secret(NAME)
        .spec_fields(json!({"description": "oauth", "validFor": "1h"}))
        .permit("gh");
    let api: Api<Permit> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &permit)
        .await
        .expect("permit");
    wait_until("Permit gh Pending", WAIT, || async {
        match api.get("gh").await {
            Ok(p) if p.status.as_ref().and_then(|s| s.phase) == Some(PermitPhase::Pending) => {
                Ok(())
            }
            other => Err(format!("{:?}", other.map(|p| p.status))),
        }
    })
    .await;
    let out = plugin(ns, &["approve", "gh"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn execution(client: &kube::Client, ns: &str, name: &str) {
    let spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "gh",
        "code": "return await api('GET', '/echo-auth');",
        "timeoutSeconds": 30
    }))
    .expect("spec");
    Api::<Execution>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &Execution::new(name, spec))
        .await
        .expect("execution");
}

async fn finished(client: &kube::Client, ns: &str, name: &str) -> Execution {
    oauth3_tests::wait_ended(client, ns, name).await
}

fn envelope(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().expect("data")["sealed"].0.clone()).expect("utf-8")
}

#[tokio::test]
async fn two_concurrent_runs_refresh_a_rotating_credential_once_and_the_newest_token_is_written_back()
 {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "oauth-concurrent").await;
    let idp = OidcProvider::start().await;
    let up = Upstream::start().await;
    let dir: PathBuf = std::env::temp_dir().join(format!("oauth3-oauth-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("dev.key"), hex::encode(DEV_KEY)).expect("key");
    std::fs::write(dir.join("ca.pem"), &up.ca_pem).expect("ca");

    // The owner signed in once; the access token has expired since.
    let tokens = idp.sign_in().await;
    let old_access = tokens["access_token"].as_str().expect("at").to_owned();
    let old_refresh = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let set = json!({
        "type": "oauth2", "access_token": old_access, "refresh_token": old_refresh,
        "expires_at": now() - 60, "token_endpoint": idp.endpoint("token_endpoint"),
        "client_id": CLIENT_ID, "scopes": ["openid", "offline_access"],
    })
    .to_string();
    apply_dev_oauth2_secret(&client, &ns, OBJECT, NAME, &set, DEV_KEY).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let sealed_at_login = envelope(&secrets.get(OBJECT).await.expect("secret"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let callback = format!("http://{}", listener.local_addr().expect("addr"));
    let op = InProcessOperator::start(
        &client,
        &ns,
        listener,
        Launcher::Process(runner(&dir)),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    approved_permit(&client, &ns, &up).await;
    // Both runs start together, each needing a fresh token for its first call.
    tokio::join!(
        execution(&client, &ns, "run-a"),
        execution(&client, &ns, "run-b")
    );
    let a = finished(&client, &ns, "run-a").await;
    let b = finished(&client, &ns, "run-b").await;
    for e in [&a, &b] {
        assert_eq!(
            e.status.as_ref().and_then(|s| s.phase),
            Some(ExecutionPhase::Succeeded),
            "{:?}",
            e.status
        );
    }

    // One refresh: both calls carried the same new token, one the provider accepts.
    let reqs = up.assert_received(2, "one call per run");
    let sent: Vec<String> = reqs
        .iter()
        .map(|r| {
            r.header_values("authorization")[0]
                .trim_start_matches("Bearer ")
                .to_owned()
        })
        .collect();
    assert_eq!(
        sent[0], sent[1],
        "the second run used the first run's refresh"
    );
    assert_ne!(sent[0], old_access);
    assert!(idp.token_is_valid(&sent[0]).await);

    // The newest token set is in the Secret, sealed: its refresh token is the live one.
    let secret = secrets.get(OBJECT).await.expect("secret");
    let now_sealed = envelope(&secret);
    assert_ne!(now_sealed, sealed_at_login);
    let opened = oauth3_protocol::envelope::unseal(
        &crypto_box::SecretKey::from(DEV_KEY),
        &now_sealed,
        &ns,
        NAME,
    )
    .expect("sealed to the enclave key, bound to the Secret");
    let newest = TokenSet::parse(&opened).expect("a token set");
    assert_eq!(newest.access_token.as_str(), sent[0]);
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(ann[ANNOTATION_REFRESHED_BY], "tee");
    assert_eq!(
        ann[ANNOTATION_GENERATION], "1",
        "written back once: {ann:?}"
    );
    assert_eq!(
        idp.refresh(&old_refresh).await.0,
        400,
        "the old one is spent"
    );
    let live = newest.refresh_token.as_deref().expect("rotated").to_owned();

    // Nothing of the tokens anywhere an agent or an operator reads.
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("events");
    let shown = format!(
        "{} {} {} {:?}",
        serde_json::to_string(&a).expect("json"),
        serde_json::to_string(&b).expect("json"),
        serde_json::to_string(&events).expect("json"),
        ann
    );
    for token in [&old_access, &old_refresh, &sent[0], &live] {
        assert!(!shown.contains(token.as_str()), "a token reached {shown}");
    }
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CredentialRefreshed")),
        "an Event says the credential was refreshed"
    );

    // The owner sees what the credential is, how long it lasts and who refreshed it.
    let got = plugin(&ns, &["get", "gh"]);
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(
        text.contains("GITHUB (OAuth, expires in ") && text.contains(" min, refreshed in the TEE)"),
        "{text}"
    );
    assert!(text.contains("used by: api"), "{text}");

    // The credential endpoints answer only a run's own token: a stranger changes nothing.
    let lease = format!("{callback}/v1/credentials/{ns}/run-a/{NAME}/lease");
    assert_eq!(
        post_json(&lease, "not-the-token", &json!({"held": "x"})).await,
        401
    );
    assert_eq!(
        envelope(&secrets.get(OBJECT).await.expect("secret")),
        now_sealed
    );
    op.stop().await;
    // And the written-back refresh token still signs in (checked last: it rotates it).
    assert_eq!(idp.refresh(&live).await.0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_login_applied_to_the_cluster_is_the_credential_the_next_run_calls_with() {
    use tokio::io::AsyncBufReadExt;
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "oauth-login").await;
    let idp = OidcProvider::start().await;
    let up = Upstream::start().await;
    let dir: PathBuf = std::env::temp_dir().join(format!("oauth3-oauth-{ns}"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("dev.key"), hex::encode(DEV_KEY)).expect("key");
    std::fs::write(dir.join("ca.pem"), &up.ca_pem).expect("ca");

    // The owner signs in from a terminal; the plugin applies the sealed Secret.
    let public = hex::encode(crypto_box::SecretKey::from(DEV_KEY).public_key().as_bytes());
    let mut child =
        tokio::process::Command::new(workspace_binary("oauth3-operator", "kubectl-oauth3"))
            .env(
                "KUBECONFIG",
                std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
            )
            .args([
                "-n",
                &ns,
                "login",
                NAME,
                "--client-id",
                CLIENT_ID,
                "--apply",
            ])
            .args(["--issuer", &idp.issuer, "--public-key", &public])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("plugin starts");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    while let Some(line) = lines.next_line().await.expect("stderr") {
        if let Some(code) = line.split("enter the code ").nth(1) {
            idp.approve(code.trim(), true).await;
            break;
        }
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("login ends")
        .expect("output");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealed Secret github applied"));

    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(OBJECT)
        .await
        .expect("the login applied the Secret");
    let opened = oauth3_protocol::envelope::unseal(
        &crypto_box::SecretKey::from(DEV_KEY),
        &envelope(&secret),
        &ns,
        NAME,
    )
    .expect("sealed to the enclave key");
    let set = TokenSet::parse(&opened).expect("token set");

    let op = InProcessOperator::start(
        &client,
        &ns,
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        Launcher::Process(runner(&dir)),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    approved_permit(&client, &ns, &up).await;
    execution(&client, &ns, "run-1").await;
    let done = finished(&client, &ns, "run-1").await;
    op.stop().await;
    assert_eq!(
        done.status.as_ref().and_then(|s| s.phase),
        Some(ExecutionPhase::Succeeded),
        "{:?}",
        done.status
    );
    let reqs = up.assert_received(1, "the run's call");
    assert_eq!(
        reqs[0].header_values("authorization"),
        [format!("Bearer {}", set.access_token.as_str()).as_str()],
        "the fresh token from the login, not refreshed"
    );
    let shown = serde_json::to_string(&done).expect("json");
    for token in set.secret_values() {
        assert!(!shown.contains(token), "a token reached the Execution");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
