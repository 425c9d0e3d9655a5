//! oauth2 credentials through the real runner binary against a real OpenID provider on
//! loopback (rotating refresh tokens, deleted when used): an expired access token is refreshed
//! inside the runner before the call, the upstream gets the new token, the rotated token set
//! comes back re-sealed in `sealedUpdates`, a spent (revoked) refresh token ends the call with "sign in
//! again" naming the credential, and a sealed token endpoint on a private http address is
//! refused. No token value appears in any output.

use std::process::Output;

use crypto_box::SecretKey;
use oauth3_crds::PermitSpec;
use oauth3_protocol::oauth2::TokenSet;
use oauth3_sandbox_runner::secrets::{DevKey, DevProvider, seal};
use oauth3_test_support::oidc::CLIENT_ID;
use oauth3_test_support::{OidcProvider, Upstream};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const NAMESPACE: &str = "team-a";
const NAME: &str = "GITHUB";
const DEV_KEY: [u8; 32] = [9u8; 32];

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The token set a sign-in produced, expiring at `expires_at`, refreshed at `endpoint`.
fn token_set(tokens: &Value, endpoint: &str, expires_at: i64) -> String {
    json!({
        "type": "oauth2",
        "access_token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        "expires_at": expires_at,
        "token_endpoint": endpoint,
        "client_id": CLIENT_ID,
        "scopes": ["openid", "offline_access"],
    })
    .to_string()
}

fn sealed(value: &str) -> String {
    let provider = DevProvider::new(DevKey::Hex(Zeroizing::new(hex::encode(DEV_KEY))), true)
        .expect("dev provider");
    seal(&provider.public_key(), NAMESPACE, NAME, value).expect("sealed")
}

fn bundle(up: &Upstream, envelope: &str) -> Value {
    let spec = json!({
        "description": "oauth2",
        "secrets": [NAME],
        "capabilities": [{
            "name": "api",
            "baseUrl": format!("{}/v1", up.origin()),
            "paths": ["/echo-auth"],
            "methods": ["GET"],
            "auth": {"header": "Authorization", "value": format!("Bearer {{{NAME}}}")}
        }]
    });
    let parsed: PermitSpec = serde_json::from_value(spec.clone()).expect("spec");
    json!({
        "execution": {"namespace": NAMESPACE, "name": "oauth", "uid": "uid-oauth"},
        "permit": {"name": "p", "spec": spec,
                   "specDigest": oauth3_crds::spec_digest(&parsed).expect("digest")},
        "code": "const a = await api('GET', '/echo-auth'); console.log(JSON.stringify(a)); return a;",
        "args": {},
        "sealedSecrets": [{"name": NAME, "envelope": envelope}],
        "limits": {"timeoutSeconds": 20}
    })
}

async fn run(up: &Upstream, envelope: &str, tag: &str) -> (Output, Value) {
    let dir = std::env::temp_dir().join(format!("oauth3-oauth-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bundle_path = dir.join("bundle.json");
    std::fs::write(&bundle_path, bundle(up, envelope).to_string()).expect("bundle");
    let key_path = dir.join("dev.key");
    std::fs::write(&key_path, hex::encode(DEV_KEY)).expect("key");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &up.ca_pem).expect("ca");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oauth3-sandbox-runner"))
        .args([
            "run",
            "--attestation",
            "none",
            "--key-provider",
            "dev",
            "--insecure-dev-key",
        ])
        .arg("--bundle")
        .arg(&bundle_path)
        .arg("--dev-key-file")
        .arg(&key_path)
        .arg("--ca-file")
        .arg(&ca_path)
        .output()
        .await
        .expect("runner starts");
    let _ = std::fs::remove_dir_all(&dir);
    let result = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, result)
}

/// Neither token of `tokens` (nor any other given value) appears in the runner's output.
fn assert_no_token(out: &Output, values: &[&str]) {
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for v in values {
        assert!(v.len() >= 8, "a real token: {v}");
        assert!(!all.contains(v), "a token value reached the output: {all}");
    }
}

fn bearer(up: &Upstream) -> String {
    let got = up.assert_received(1, "one call");
    got[0].header_values("authorization")[0]
        .strip_prefix("Bearer ")
        .expect("a bearer credential")
        .to_owned()
}

#[tokio::test]
async fn an_expired_token_is_refreshed_in_the_runner_and_the_rotated_set_comes_back_resealed() {
    let idp = OidcProvider::start().await;
    let up = Upstream::start().await;
    let tokens = idp.sign_in().await;
    let old_access = tokens["access_token"].as_str().expect("at").to_owned();
    let old_refresh = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let envelope = sealed(&token_set(
        &tokens,
        &idp.endpoint("token_endpoint"),
        now() - 5,
    ));

    let (out, result) = run(&up, &envelope, "refresh").await;
    assert_eq!(result["phase"], "Succeeded", "{result}");

    let sent = bearer(&up);
    assert_ne!(
        sent, old_access,
        "the expired token was refreshed before the call"
    );
    assert!(
        idp.token_is_valid(&sent).await,
        "the upstream got a token the provider issued"
    );

    let updates = result["sealedUpdates"].as_array().expect("sealedUpdates");
    assert_eq!(updates.len(), 1, "{result}");
    assert_eq!(updates[0]["name"], NAME);
    assert_eq!(
        updates[0]["replaces"],
        oauth3_protocol::oauth2::envelope_digest(&envelope)
    );
    let opened = oauth3_protocol::envelope::unseal(
        &SecretKey::from(DEV_KEY),
        updates[0]["envelope"].as_str().expect("envelope"),
        NAMESPACE,
        NAME,
    )
    .expect("re-sealed to the runner's own key, bound to the same Secret");
    let next = TokenSet::parse(&opened).expect("a token set");
    assert_eq!(next.access_token.as_str(), sent);
    let new_refresh = next
        .refresh_token
        .as_deref()
        .expect("rotated refresh token")
        .to_owned();
    assert_ne!(
        new_refresh, old_refresh,
        "the provider rotated the refresh token"
    );
    assert!(next.expires_at.expect("expiry") > now());
    assert_eq!(updates[0]["expiresAt"], json!(next.expires_at));
    assert_eq!(next.token_endpoint, idp.endpoint("token_endpoint"));

    // The old refresh token is spent: only the re-sealed one can sign the owner in now.
    assert_eq!(idp.refresh(&old_refresh).await.0, 400);
    assert_no_token(&out, &[&old_access, &old_refresh, &sent, &new_refresh]);
}

#[tokio::test]
async fn a_fresh_token_is_used_as_sealed_and_nothing_is_refreshed() {
    let idp = OidcProvider::start().await;
    let up = Upstream::start().await;
    let tokens = idp.sign_in().await;
    let access = tokens["access_token"].as_str().expect("at").to_owned();
    let envelope = sealed(&token_set(
        &tokens,
        &idp.endpoint("token_endpoint"),
        now() + 3600,
    ));
    let (out, result) = run(&up, &envelope, "fresh").await;
    assert_eq!(result["phase"], "Succeeded", "{result}");
    assert_eq!(bearer(&up), access);
    assert!(result.get("sealedUpdates").is_none(), "{result}");
    assert_no_token(
        &out,
        &[&access, tokens["refresh_token"].as_str().expect("rt")],
    );
}

#[tokio::test]
async fn a_spent_refresh_token_ends_the_call_with_sign_in_again_naming_the_credential() {
    let idp = OidcProvider::start().await;
    let up = Upstream::start().await;
    let tokens = idp.sign_in().await;
    let refresh = tokens["refresh_token"].as_str().expect("rt").to_owned();
    // Used once elsewhere: the provider rotates it and deletes (revokes) the sealed one.
    assert_eq!(idp.refresh(&refresh).await.0, 200);
    let envelope = sealed(&token_set(
        &tokens,
        &idp.endpoint("token_endpoint"),
        now() - 5,
    ));
    let (out, result) = run(&up, &envelope, "revoked").await;
    assert_eq!(result["phase"], "Failed", "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("oauth2 credential {NAME}")) && error.contains("sign in again"),
        "{error}"
    );
    up.assert_nothing_received("no call goes out without a valid token");
    assert!(result.get("sealedUpdates").is_none(), "{result}");
    assert_no_token(
        &out,
        &[tokens["access_token"].as_str().expect("at"), &refresh],
    );
}

#[tokio::test]
async fn a_sealed_token_endpoint_on_a_private_http_address_is_refused_and_nothing_is_sent() {
    let up = Upstream::start().await;
    let tokens =
        json!({"access_token": "at-private-endpoint-1", "refresh_token": "rt-private-endpoint-2"});
    let envelope = sealed(&token_set(&tokens, "http://10.0.0.1/token", now() - 5));
    let (out, result) = run(&up, &envelope, "private").await;
    assert_eq!(result["phase"], "Failed", "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("oauth2 credential {NAME}"))
            && error.contains("token_endpoint \"http://10.0.0.1/token\" is refused")
            && error.contains("must be https"),
        "{error}"
    );
    up.assert_nothing_received("the credential is refused before the code runs");
    assert_no_token(&out, &["at-private-endpoint-1", "rt-private-endpoint-2"]);
}
