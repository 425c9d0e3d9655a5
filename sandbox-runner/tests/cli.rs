//! Specification of the `oauth3-sandbox-runner` command line, run as the built binary.

use std::path::PathBuf;
use std::process::{Output, Stdio};

use oauth3_crds::PermitSpec;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_oauth3-sandbox-runner");

fn spec() -> Value {
    json!({
        "description": "Read issues",
        "capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
            "paths": ["/repos/o/r/issues"], "methods": ["GET"]}]
    })
}

/// A valid bundle running `code`, built with small chainable edits in each test.
fn bundle(code: &str) -> Value {
    let parsed: PermitSpec = serde_json::from_value(spec()).expect("spec");
    json!({
        "execution": {"namespace": "ns", "name": "exec-1", "uid": "uid-1"},
        "permit": {"name": "github-issues", "spec": spec(),
            "specDigest": oauth3_crds::spec_digest(&parsed).expect("digest")},
        "code": code,
        "args": {"x": 41},
        "limits": {"timeoutSeconds": 5}
    })
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "oauth3-cli-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn write(&self, name: &str, value: &Value) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, value.to_string()).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn runner(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the binary starts");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    child.wait_with_output().await.expect("the binary ends")
}

async fn run_bundle(tag: &str, bundle: &Value) -> (Output, Value) {
    let dir = TempDir::new(tag);
    let path = dir.write("bundle.json", bundle);
    let out = runner(
        &[
            "run",
            "--attestation",
            "none",
            "--bundle",
            path.to_str().expect("utf-8 path"),
        ],
        None,
    )
    .await;
    let result = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, result)
}

#[tokio::test]
async fn a_pure_script_succeeds_and_reports_value_output_and_digests() {
    let code = "console.log('hello'); return {answer: args.x + 1}";
    let (out, result) = run_bundle("pure", &bundle(code)).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(result["phase"], "Succeeded");
    assert_eq!(result["result"], json!({"answer": 42}));
    assert_eq!(result["stdout"], "hello\n");
    assert_eq!(result["execution"]["uid"], "uid-1");
    assert_eq!(result["codeDigest"], oauth3_crds::code_digest(code));
    assert_eq!(result["permitDigest"], bundle(code)["permit"]["specDigest"]);
    assert_eq!(result["attestation"]["kind"], "none");
    let statement = result["statementDigest"]
        .as_str()
        .expect("statement digest");
    assert!(
        statement.starts_with("sha256:") && statement.len() == 71,
        "{statement}"
    );
    assert_eq!(result["attestation"]["statementDigest"], statement);
    assert!(result["calls"].as_array().expect("calls").is_empty());
    assert!(result.get("error").is_none());
}

#[tokio::test]
async fn the_statement_digest_covers_the_result_without_the_attestation() {
    let (_, result) = run_bundle("statement", &bundle("return 1")).await;
    let parsed: oauth3_protocol::RunResult =
        serde_json::from_value(result.clone()).expect("a RunResult");
    assert_eq!(parsed.compute_statement_digest(), result["statementDigest"]);
    let mut tampered = parsed.clone();
    tampered.result = json!(2);
    assert_ne!(
        tampered.compute_statement_digest(),
        result["statementDigest"]
    );
}

#[tokio::test]
async fn the_bundle_can_come_from_stdin_and_the_result_go_to_a_file() {
    let dir = TempDir::new("stdin");
    let out_path = dir.0.join("result.json");
    let out = runner(
        &[
            "run",
            "--attestation",
            "none",
            "--bundle",
            "-",
            "--out",
            out_path.to_str().expect("utf-8"),
        ],
        Some(&bundle("return 'from stdin'").to_string()),
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "the result goes to the file only");
    let result: Value =
        serde_json::from_slice(&std::fs::read(&out_path).expect("result file")).expect("json");
    assert_eq!(result["result"], "from stdin");
}

#[tokio::test]
async fn a_script_that_throws_exits_1_as_failed() {
    let (out, result) = run_bundle("throws", &bundle("throw new Error('nope')")).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(result["phase"], "Failed");
    assert!(
        result["error"]
            .as_str()
            .expect("error")
            .contains("Error: nope")
    );
    assert!(result["stderr"].as_str().expect("stderr").contains("nope"));
}

#[tokio::test]
async fn a_script_past_its_time_limit_exits_1_as_timed_out() {
    let mut b = bundle("while (true) {}");
    b["limits"]["timeoutSeconds"] = json!(1);
    let (out, result) = run_bundle("timeout", &b).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(result["phase"], "TimedOut");
}

#[tokio::test]
async fn a_call_outside_the_permit_is_denied_by_the_policy_and_logged() {
    let code = "try { await github('DELETE', '/repos/o/r/issues') } catch (e) { return e.message }";
    let (out, result) = run_bundle("deny", &bundle(code)).await;
    assert_eq!(out.status.code(), Some(0));
    let reason = result["result"].as_str().expect("message");
    assert!(
        reason.contains("method DELETE not allowed for github"),
        "{reason}"
    );
    assert_eq!(result["calls"][0]["capability"], "github");
    assert_eq!(result["calls"][0]["decision"], "denied");
}

#[tokio::test]
async fn a_wrong_spec_digest_exits_2_naming_the_field_and_runs_nothing() {
    let mut b = bundle("console.log('ran'); return 1");
    b["permit"]["specDigest"] = json!(format!("sha256:{}", "0".repeat(64)));
    let (out, result) = run_bundle("digest", &b).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permit.specDigest"), "{stderr}");
    // A result is still written (and posted, when there is a callback): refused, with why.
    assert_eq!(result["phase"], "Denied", "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.contains("permit.specDigest"), "{error}");
    assert_eq!(result["stdout"], "", "nothing ran");
    assert_eq!(result["calls"], json!([]));
}

#[tokio::test]
async fn an_unknown_bundle_field_exits_2_naming_it() {
    let mut b = bundle("return 1");
    b["limits"]["memoryMB"] = json!(64);
    let (out, _) = run_bundle("unknown", &b).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limits") && stderr.contains("memoryMB"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_dev_key_provider_needs_the_insecure_flag() {
    let dir = TempDir::new("devkey");
    let path = dir.write("bundle.json", &bundle("return 1"));
    let out = runner(
        &[
            "run",
            "--attestation",
            "none",
            "--bundle",
            path.to_str().expect("utf-8"),
            "--key-provider",
            "dev",
            "--dev-key-file",
            "/nonexistent",
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-dev-key"));
}

#[tokio::test]
async fn validate_prints_the_digests() {
    let dir = TempDir::new("validate");
    let b = bundle("return 1");
    let path = dir.write("bundle.json", &b);
    let out = runner(
        &["validate", "--bundle", path.to_str().expect("utf-8")],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let digests: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(digests["codeDigest"], oauth3_crds::code_digest("return 1"));
    assert_eq!(digests["permitDigest"], b["permit"]["specDigest"]);
}

#[tokio::test]
async fn help_documents_every_flag() {
    let top = runner(&["--help"], None).await;
    let top = String::from_utf8_lossy(&top.stdout).to_string();
    for word in ["run", "validate"] {
        assert!(top.contains(word), "--help lacks {word}:\n{top}");
    }
    let run = runner(&["run", "--help"], None).await;
    let run = String::from_utf8_lossy(&run.stdout).to_string();
    for flag in [
        "--bundle",
        "--out",
        "--key-provider",
        "--dstack-endpoint",
        "--kbs-url",
        "--dev-key-file",
        "--insecure-dev-key",
        "--ca-file",
    ] {
        assert!(run.contains(flag), "run --help lacks {flag}:\n{run}");
    }
}

/// Accepts one HTTP request, answers 200, returns its head and body.
async fn receive_one(listener: TcpListener) -> (String, Vec<u8>) {
    let (mut socket, _) = listener.accept().await.expect("accept");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before the headers ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed before the body ended");
        buf.extend_from_slice(&chunk[..n]);
    }
    socket
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .expect("respond");
    (head, buf[head_end..head_end + length].to_vec())
}

#[tokio::test]
async fn the_result_is_posted_to_the_callback_with_the_bearer_token() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(receive_one(listener));
    let mut b = bundle("console.log('to callback'); return 7");
    b["callback"] = json!({"url": format!("http://{addr}/results"), "token": "cb-token-123"});
    let (out, printed) = run_bundle("callback", &b).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = server.await.expect("server");
    assert!(head.starts_with("POST /results "), "{head}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("authorization: Bearer cb-token-123")),
        "{head}"
    );
    let posted: Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(posted, printed, "the posted result is the printed one");
    assert_eq!(posted["result"], 7);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("cb-token-123"),
        "the token is never printed"
    );
}

#[tokio::test]
async fn a_plain_http_callback_off_loopback_is_refused_and_gets_no_token() {
    let mut b = bundle("return 1");
    b["callback"] = json!({"url": "http://10.255.255.1:9/results", "token": "cb-token-xyz"});
    let (out, _) = run_bundle("insecure", &b).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("callback.url"), "{stderr}");
    assert!(!stderr.contains("cb-token-xyz"));
}

#[test]
fn public_key_prints_the_key_that_sealed_secrets_are_made_for() {
    let dir = TempDir::new("pubkey");
    let key_file = dir.0.join("dev.key");
    std::fs::write(&key_file, "09".repeat(32)).expect("key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oauth3-sandbox-runner"))
        .args([
            "public-key",
            "--key-provider",
            "dev",
            "--insecure-dev-key",
            "--dev-key-file",
        ])
        .arg(&key_file)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let expected = crypto_box::SecretKey::from([9u8; 32]).public_key();
    assert_eq!(printed, hex::encode(expected.as_bytes()));
    assert!(
        !printed.contains(&"09".repeat(32)),
        "the private key is never printed"
    );
}
