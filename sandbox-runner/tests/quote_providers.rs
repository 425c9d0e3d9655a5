//! Quote providers against local stand-ins of their protocols, handing back a real TDX sample
//! quote: dstack's guest agent on a unix socket, Confidential Containers' attestation agent
//! over loopback HTTP, and a configfs-tsm report entry. Then the binary: every result is
//! attested with the provider named by `--attestation` (never silently `none`), a provider
//! that gives no quote fails the run, and `public-key --attest` binds the enclave key.

use std::path::PathBuf;
use std::process::Stdio;

use base64::Engine as _;
use oauth3_crds::{AttestationProvider, PermitSpec};
use oauth3_protocol::attestation::{
    coco_runtime_data, enclave_key_report_data, statement_report_data,
};
use oauth3_sandbox_runner::attest::{
    AttestError, CocoQuotes, DstackQuotes, QuoteProvider, TsmQuotes, attest_statement,
};
use oauth3_test_support::tdx::{CocoAgent, DstackAgent, SAMPLE_QUOTE, TsmDir};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_oauth3-sandbox-runner");

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oauth3-quotes-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

const DATA: [u8; 64] = [0x5a; 64];

#[tokio::test]
async fn dstack_get_quote_sends_the_report_data_as_hex_and_keeps_the_event_log() {
    let dir = temp("dstack");
    let agent = DstackAgent::start(&dir.join("dstack.sock"), "[{\"imr\":3}]");
    let provider = DstackQuotes {
        endpoint: agent.socket.to_string_lossy().into_owned(),
    };
    let evidence = provider.quote(DATA).await.expect("a quote");
    assert_eq!(evidence.quote, SAMPLE_QUOTE);
    assert_eq!(evidence.event_log.as_deref(), Some("[{\"imr\":3}]"));
    let requests = agent.requests();
    assert_eq!(requests.len(), 1);
    let (line, body) = requests[0].split_once('\n').expect("line and body");
    assert_eq!(line, "POST /GetQuote HTTP/1.1");
    let body: Value = serde_json::from_str(body).expect("json body");
    assert_eq!(body, json!({"report_data": hex::encode(DATA)}));
}

#[tokio::test]
async fn coco_evidence_is_asked_with_text_runtime_data_and_its_quote_decoded() {
    let agent = CocoAgent::start().await;
    let provider = CocoQuotes {
        base_url: agent.url.clone(),
    };
    let evidence = provider.quote(DATA).await.expect("a quote");
    assert_eq!(evidence.quote, SAMPLE_QUOTE);
    assert_eq!(evidence.event_log.as_deref(), Some("Y2NlbA=="));
    let requests = agent.requests();
    assert_eq!(
        requests[0].lines().next(),
        Some(
            format!(
                "GET /aa/evidence?runtime_data={} HTTP/1.1",
                coco_runtime_data(&DATA)
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn tsm_writes_inblob_reads_outblob_and_checks_the_generation() {
    let dir = temp("tsm");
    let tsm = TsmDir::start(&dir.join("entry"));
    let provider = TsmQuotes {
        dir: tsm.dir.clone(),
    };
    let evidence = provider.quote(DATA).await.expect("a quote");
    assert_eq!(evidence.quote, SAMPLE_QUOTE);
    let second = provider.quote([1; 64]).await.expect("a second quote");
    assert_eq!(second.quote, SAMPLE_QUOTE);
    assert_eq!(tsm.inblobs(), [DATA.to_vec(), vec![1; 64]]);
}

#[tokio::test]
async fn a_tsm_report_whose_generation_did_not_move_is_refused() {
    // A static directory: outblob is a plain file, so nothing generated a report for this
    // inblob (another writer, or no TDX module behind it).
    let dir = temp("tsm-static");
    for (name, content) in [
        ("provider", &b"tdx_guest\n"[..]),
        ("generation", b"3\n"),
        ("inblob", b""),
        ("outblob", SAMPLE_QUOTE),
    ] {
        std::fs::write(dir.join(name), content).expect("write");
    }
    let err = TsmQuotes { dir: dir.clone() }
        .quote(DATA)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, AttestError::Response { .. })
            && err.to_string().contains("generation 3 -> 3"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_provider_is_an_error_naming_it_never_a_silent_none() {
    let provider = DstackQuotes {
        endpoint: "/nonexistent/dstack.sock".into(),
    };
    let err = attest_statement(Some(&provider), "sha256:00")
        .await
        .expect_err("no quote");
    assert!(err.to_string().contains("quote provider dstack"), "{err}");
}

#[tokio::test]
async fn a_statement_attestation_carries_kind_provider_quote_and_binding() {
    let agent = CocoAgent::start().await;
    let provider = CocoQuotes {
        base_url: agent.url.clone(),
    };
    let a = attest_statement(Some(&provider), "sha256:ab")
        .await
        .expect("attested");
    assert_eq!(a.kind, oauth3_crds::AttestationKind::Tdx);
    assert_eq!(a.provider, Some(AttestationProvider::Coco));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(a.quote.expect("quote"))
            .expect("base64"),
        SAMPLE_QUOTE
    );
    let expected = coco_runtime_data(&statement_report_data("sha256:ab"));
    assert_eq!(a.report_data, Some(hex::encode(expected.as_bytes())));
}

fn bundle() -> Value {
    let spec = json!({"description": "d", "capabilities": [{"name": "github",
        "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"]}]});
    let parsed: PermitSpec = serde_json::from_value(spec.clone()).expect("spec");
    json!({
        "execution": {"namespace": "ns", "name": "e", "uid": "u"},
        "permit": {"name": "p", "spec": spec,
            "specDigest": oauth3_crds::spec_digest(&parsed).expect("digest")},
        "code": "return 6 * 7",
        "limits": {"timeoutSeconds": 5}
    })
}

async fn runner(args: &[&str], bundle: Option<&Value>) -> (Option<i32>, Value, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starts");
    if let Some(b) = bundle {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().expect("stdin");
        // A runner that refuses its flags exits before reading: a broken pipe is fine.
        let _ = stdin.write_all(b.to_string().as_bytes()).await;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().await.expect("ends");
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_binary_attests_its_result_with_the_named_provider() {
    let dir = temp("bin-tsm");
    let tsm = TsmDir::start(&dir.join("entry"));
    let entry = tsm.dir.to_string_lossy().into_owned();
    let (code, result, stderr) = runner(
        &[
            "run",
            "--attestation",
            "tsm",
            "--tsm-report-dir",
            &entry,
            "--bundle",
            "-",
        ],
        Some(&bundle()),
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(result["result"], 42);
    let digest = result["statementDigest"].as_str().expect("digest");
    assert_eq!(result["attestation"]["kind"], "tdx");
    assert_eq!(result["attestation"]["provider"], "tsm");
    assert_eq!(result["attestation"]["statementDigest"], digest);
    let binding = statement_report_data(digest);
    assert_eq!(result["attestation"]["reportData"], hex::encode(binding));
    assert_eq!(
        tsm.inblobs(),
        [binding.to_vec()],
        "the quote was asked over the statement"
    );
}

#[tokio::test]
async fn the_binary_needs_an_explicit_attestation_choice_and_fails_without_a_quote() {
    let (code, _, stderr) = runner(&["run", "--bundle", "-"], Some(&bundle())).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--attestation is required"), "{stderr}");

    let (code, result, _) = runner(
        &["run", "--attestation", "none", "--bundle", "-"],
        Some(&bundle()),
    )
    .await;
    assert_eq!(code, Some(0));
    assert_eq!(result["attestation"]["kind"], "none");

    let (code, result, stderr) = runner(
        &[
            "run",
            "--attestation",
            "dstack",
            "--dstack-endpoint",
            "/nonexistent/dstack.sock",
            "--bundle",
            "-",
        ],
        Some(&bundle()),
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(result["phase"], "Failed");
    assert_eq!(result["result"], Value::Null);
    let error = result["error"].as_str().expect("error");
    assert!(
        error.contains("attesting the result") && error.contains("/nonexistent/dstack.sock"),
        "{error}"
    );
}

#[tokio::test]
async fn public_key_attest_prints_the_key_with_a_quote_over_its_binding() {
    let dir = temp("bin-key");
    let key_file = dir.join("dev.key");
    std::fs::write(&key_file, hex::encode([7u8; 32])).expect("key");
    let agent = DstackAgent::start(&dir.join("dstack.sock"), "[]");
    let socket = agent.socket.to_string_lossy().into_owned();
    let key = key_file.to_string_lossy().into_owned();
    let dev = [
        "--key-provider",
        "dev",
        "--dev-key-file",
        &key,
        "--insecure-dev-key",
    ];
    let mut args = vec!["public-key"];
    args.extend(dev);
    args.extend([
        "--attest",
        "--attestation",
        "dstack",
        "--dstack-endpoint",
        &socket,
    ]);
    let (code, out, stderr) = runner(&args, None).await;
    assert_eq!(code, Some(0), "{stderr}");
    let public = *crypto_box::SecretKey::from([7u8; 32])
        .public_key()
        .as_bytes();
    assert_eq!(out["publicKey"], hex::encode(public));
    assert_eq!(out["attestation"]["provider"], "dstack");
    assert_eq!(
        out["attestation"]["reportData"],
        hex::encode(enclave_key_report_data(&public))
    );
    let body = agent.requests()[0]
        .split_once('\n')
        .expect("body")
        .1
        .to_owned();
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        body["report_data"],
        hex::encode(enclave_key_report_data(&public))
    );

    let mut args = vec!["public-key"];
    args.extend(dev);
    args.extend(["--attest", "--attestation", "none"]);
    let (code, _, stderr) = runner(&args, None).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--attest needs"), "{stderr}");
}
