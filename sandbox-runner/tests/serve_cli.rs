//! `oauth3-sandbox-runner serve` through the real binary: a serve bundle with a sealed secret
//! (development key provider), an HTTPS endpoint from PEM files, a client token file, a real
//! recording upstream. Calls are forwarded with the unsealed credential, denials never leave,
//! each call is one JSON line on standard output, SIGTERM stops it, and the secret and the
//! client token appear in no output.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use oauth3_crds::PermitSpec;
use oauth3_protocol::proxy::{ProxyCall, REFUSAL_HEADER};
use oauth3_sandbox_runner::proxy::auth::TokenFile;
use oauth3_sandbox_runner::secrets::{DevKey, DevProvider, seal};
use oauth3_test_support::{Upstream, free_port, wait_until};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const SECRET: &str = "sk-live-serve-8c2e1a";
const CLIENT_TOKEN: &str = "client-token-serve-77";
const NAMESPACE: &str = "team-a";
const DEV_KEY: [u8; 32] = [9u8; 32];

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("oauth3-serve-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        Self(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn serve_bundle(up: &Upstream) -> Value {
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "serve",
        "secrets": ["API_TOKEN"],
        "capabilities": [{
            "name": "api",
            "baseUrl": format!("{}/v1", up.origin()),
            "paths": ["/items", "/echo-auth"],
            "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }],
        "proxy": {"enabled": true, "callers": ["agent-1"], "maxConcurrentCalls": 8}
    }))
    .expect("spec");
    let provider = DevProvider::new(DevKey::Hex(Zeroizing::new(hex::encode(DEV_KEY))), true)
        .expect("dev provider");
    let envelope = seal(&provider.public_key(), NAMESPACE, "API_TOKEN", SECRET).expect("sealed");
    json!({
        "namespace": NAMESPACE,
        "permit": {"name": "p", "specDigest": oauth3_crds::spec_digest(&spec).expect("digest"),
                   "spec": spec},
        "sealedSecrets": [{"name": "API_TOKEN", "envelope": envelope}]
    })
}

/// A CA (PEM) and a leaf for 127.0.0.1 it signed (PEM certificate, PEM key).
fn endpoint_tls() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

fn client(ca_pem: &str) -> reqwest::Client {
    let roots =
        oauth3_sandbox_runner::fetch::web_pki_roots_and(&[ca_pem.as_bytes()]).expect("roots");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .build()
        .expect("client")
}

#[tokio::test]
async fn serve_forwards_with_the_unsealed_credential_logs_each_call_and_stops_on_sigterm() {
    let up = Upstream::start().await;
    let dir = Dir::new("main");
    let (ca, cert, key) = endpoint_tls();
    let bundle = dir.file("bundle.json", serve_bundle(&up).to_string().as_bytes());
    let port = free_port();
    let tokens = format!("{}\n", TokenFile::line_for(CLIENT_TOKEN, "agent-1"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oauth3-sandbox-runner"))
        .arg("serve")
        .arg("--bundle")
        .arg(&bundle)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(dir.file("tls.crt", cert.as_bytes()))
        .arg("--tls-key")
        .arg(dir.file("tls.key", key.as_bytes()))
        .arg("--client-token-file")
        .arg(dir.file("tokens", tokens.as_bytes()))
        .args(["--key-provider", "dev", "--insecure-dev-key"])
        .arg("--dev-key-file")
        .arg(dir.file("dev.key", hex::encode(DEV_KEY).as_bytes()))
        .arg("--ca-file")
        .arg(dir.file("ca.pem", &up.ca_pem))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("serve starts");
    let http = client(&ca);
    let base = format!("https://127.0.0.1:{port}");
    wait_until("the proxy answers", Duration::from_secs(20), || {
        let http = http.clone();
        let url = format!("{base}/api/items");
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        }
    })
    .await;

    let ok = http
        .get(format!("{base}/api/echo-auth"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .await
        .expect("call");
    assert_eq!(ok.status().as_u16(), 200);
    let body = ok.text().await.expect("body");
    assert!(body.contains("[REDACTED]"), "{body}");
    let denied = http
        .delete(format!("{base}/api/items"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .await
        .expect("call");
    assert_eq!(denied.status().as_u16(), 403);
    assert_eq!(
        denied
            .headers()
            .get(REFUSAL_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some("policy")
    );
    let got = up.assert_received(1, "only the allowed call");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(20), async {
        let status = child.wait().await.expect("exit");
        let mut stdout = String::new();
        let mut stderr = String::new();
        use tokio::io::AsyncReadExt as _;
        if let Some(mut s) = child.stdout.take() {
            s.read_to_string(&mut stdout).await.expect("stdout");
        }
        if let Some(mut s) = child.stderr.take() {
            s.read_to_string(&mut stderr).await.expect("stderr");
        }
        (status, stdout, stderr)
    })
    .await
    .expect("serve stops on SIGTERM");
    let (status, stdout, stderr) = out;
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopped:"), "{stderr}");
    let calls: Vec<ProxyCall> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(calls.len(), 2, "{stdout}");
    assert!(calls.iter().all(|c| c.identity == "agent-1"));
    assert_eq!(calls[1].method, "DELETE");
    for text in [&stdout, &stderr] {
        assert!(!text.contains(SECRET), "secret in output: {text}");
        assert!(
            !text.contains(CLIENT_TOKEN),
            "client token in output: {text}"
        );
    }
}

#[tokio::test]
async fn serve_refuses_plain_http_off_loopback_and_a_missing_token_file_by_name() {
    let up = Upstream::start().await;
    let dir = Dir::new("usage");
    let bundle = dir.file("bundle.json", serve_bundle(&up).to_string().as_bytes());
    for (extra, expected) in [
        (
            vec!["--insecure-plain-http", "--listen", "0.0.0.0:0"],
            "--insecure-plain-http needs a loopback --listen address",
        ),
        (
            vec!["--insecure-plain-http", "--listen", "127.0.0.1:0"],
            "serve needs --client-token-file",
        ),
        (
            vec!["--listen", "127.0.0.1:0"],
            "serve needs --tls-cert and --tls-key",
        ),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oauth3-sandbox-runner"))
            .arg("serve")
            .arg("--bundle")
            .arg(&bundle)
            .args(&extra)
            .args([
                "--key-provider",
                "dev",
                "--insecure-dev-key",
                "--dev-key-file",
                "/none",
            ])
            .output()
            .await
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
    }
    up.assert_nothing_received("usage errors");
}
