//! `kubectl oauth3 login` end to end: the real plugin binary runs the device flow against a
//! real OpenID provider on loopback (built from `github.com/zitadel/oidc/v3`), the test plays
//! the user at the provider's verification pages, and what comes out is only the sealed Secret
//! of an oauth2 credential whose refresh token works. `slow_down`, a denial and an expired code
//! are honoured; the complete verification URL is drawn as a terminal QR code; no token
//! reaches the terminal.

use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use oauth3_protocol::oauth2::{ANNOTATION_CREDENTIAL_KIND, TokenSet};
use oauth3_test_support::OidcProvider;
use oauth3_test_support::oidc::CLIENT_ID;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const KEY: [u8; 32] = [4u8; 32];

fn public_hex() -> String {
    hex::encode(crypto_box::SecretKey::from(KEY).public_key().as_bytes())
}

/// What a login printed, and how long it took.
struct Login {
    ok: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `login GITHUB --issuer ...`; when the user code shows up, `approve` decides what the
/// user does (`Some(allow)`, or `None`: nothing).
async fn login(idp: &OidcProvider, approve: Option<bool>) -> Login {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-oauth3"))
        .args(["-n", "team-a", "login", "GITHUB", "--client-id", CLIENT_ID])
        .args(["--issuer", &idp.issuer, "--public-key", &public_hex()])
        .env("KUBECONFIG", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("plugin starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut stderr = String::new();
    while let Some(line) = lines.next_line().await.expect("stderr") {
        stderr.push_str(&line);
        stderr.push('\n');
        if let Some(code) = line.split("enter the code ").nth(1) {
            if let Some(allow) = approve {
                idp.approve(code.trim(), allow).await;
            }
            break;
        }
    }
    let rest = tokio::spawn(async move {
        let mut rest = String::new();
        while let Some(line) = lines.next_line().await.expect("stderr") {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });
    let mut out = String::new();
    stdout.read_to_string(&mut out).await.expect("stdout");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("login ends")
        .expect("status");
    stderr.push_str(&rest.await.expect("stderr"));
    Login {
        ok: status.success(),
        stdout: out,
        stderr,
        took: started.elapsed(),
    }
}

fn opened(out: &str) -> (Secret, TokenSet) {
    let secret: Secret = serde_yaml::from_str(out).expect("a Secret manifest");
    let envelope = &secret.string_data.as_ref().expect("stringData")["sealed"];
    let value = oauth3_protocol::envelope::unseal(
        &crypto_box::SecretKey::from(KEY),
        envelope,
        "team-a",
        "GITHUB",
    )
    .expect("sealed to the enclave key, bound to team-a/GITHUB");
    (
        secret,
        TokenSet::parse(&value).expect("an oauth2 token set"),
    )
}

fn assert_no_token(l: &Login, set: &TokenSet) {
    for token in set.secret_values() {
        assert!(
            !l.stdout.contains(token) && !l.stderr.contains(token),
            "a token reached the terminal"
        );
    }
}

#[tokio::test]
async fn login_runs_the_device_flow_and_prints_only_the_sealed_oauth2_secret() {
    let idp = OidcProvider::start().await;
    let l = login(&idp, Some(true)).await;
    assert!(l.ok, "{}", l.stderr);
    assert!(
        l.stderr.contains("/device") && l.stderr.contains("user_code="),
        "the verification URL (and the complete one) are shown: {}",
        l.stderr
    );
    assert!(
        l.took >= Duration::from_secs(5),
        "the server's interval of 5 s is kept"
    );
    let (secret, set) = opened(&l.stdout);
    assert_eq!(secret.metadata.name.as_deref(), Some("github"));
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(ann[ANNOTATION_CREDENTIAL_KIND], "oauth2");
    assert_eq!(set.token_endpoint, idp.endpoint("token_endpoint"));
    assert_eq!(set.client_id, CLIENT_ID);
    assert_eq!(set.issuer.as_deref(), Some(idp.issuer.as_str()));
    assert!(set.expires_at.is_some());
    assert!(idp.token_is_valid(&set.access_token).await);
    assert_no_token(&l, &set);
    let refresh = set
        .refresh_token
        .as_deref()
        .expect("offline_access gives a refresh token");
    assert_eq!(
        idp.refresh(refresh).await.0,
        200,
        "the sealed refresh token works"
    );
}

#[tokio::test]
async fn slow_down_makes_login_poll_five_seconds_less_often() {
    let idp = OidcProvider::start_with(&[("OIDC_SLOW_DOWN_POLLS", "1")]).await;
    let l = login(&idp, Some(true)).await;
    assert!(l.ok, "{}", l.stderr);
    assert!(
        l.stderr.contains("slow_down): polling every 10 s"),
        "{}",
        l.stderr
    );
    assert!(
        l.took >= Duration::from_secs(15),
        "5 s, then 10 s: {:?}",
        l.took
    );
    let (_, set) = opened(&l.stdout);
    assert_no_token(&l, &set);
}

#[tokio::test]
async fn a_denied_sign_in_seals_nothing() {
    let idp = OidcProvider::start().await;
    let l = login(&idp, Some(false)).await;
    assert!(!l.ok);
    assert!(
        l.stderr.contains("login GITHUB: the sign-in was denied"),
        "{}",
        l.stderr
    );
    assert!(l.stdout.is_empty(), "nothing sealed: {}", l.stdout);
}

#[tokio::test]
async fn an_expired_code_ends_login_with_run_login_again() {
    let idp = OidcProvider::start_with(&[("OIDC_DEVICE_LIFETIME", "1s")]).await;
    let l = login(&idp, None).await;
    assert!(!l.ok);
    assert!(
        l.stderr
            .contains("the code expired before it was approved (expired_token); run login again"),
        "{}",
        l.stderr
    );
    assert!(l.stdout.is_empty());
}
