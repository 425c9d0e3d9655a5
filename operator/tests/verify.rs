//! `kubectl oauth3 verify` and `seal --attestation`, check by check, on a real TDX quote (the
//! `dcap-qvl` sample, with its collateral, at a time inside the collateral's validity): each
//! check passes where it should and is made to fail by the attack it exists for: a flipped
//! byte in the quote body or in its signature, collateral past its validity, report data that
//! binds something else, a status edited after the runner reported it, measurements the policy
//! does not list.

use std::collections::BTreeMap;

use base64::Engine as _;
use oauth3_crds::{
    Attestation, AttestationKind, AttestationProvider, CallDecision, CallRecord, Execution,
    ExecutionPhase, ExecutionSpec, ExecutionStatus,
};
use oauth3_operator::verify::eventlog::runtime_event;
use oauth3_operator::verify::{
    Inputs, MeasurementPolicy, Verdict, Verification, statement_of, verify_execution, verify_key,
};
use oauth3_protocol::attestation::{enclave_key_report_data, statement_report_data};
use oauth3_test_support::tdx::{
    REPORT_DATA_OFFSET, SAMPLE_AT, SAMPLE_COLLATERAL, SAMPLE_EXPIRED_AT, SAMPLE_QUOTE, sample_mrtd,
};

fn collateral() -> dcap_qvl::QuoteCollateralV3 {
    serde_json::from_str(SAMPLE_COLLATERAL).expect("sample collateral")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A finished Execution whose status is a result attested with `quote`.
fn attested(quote: &[u8]) -> Execution {
    let mut exec = Execution::new(
        "count",
        ExecutionSpec {
            permit_ref: "p".into(),
            code: "return 1".into(),
            language: Default::default(),
            args: None,
            timeout_seconds: 30,
        },
    );
    exec.metadata.namespace = Some("team-a".into());
    exec.metadata.uid = Some("uid-1".into());
    exec.status = Some(ExecutionStatus {
        phase: Some(ExecutionPhase::Succeeded),
        result: Some(serde_json::json!({"open": 3, "ratio": 0.5})),
        stdout: Some("3 open\n".into()),
        stderr: Some(String::new()),
        calls: vec![CallRecord {
            capability: "github".into(),
            method: "GET".into(),
            url: "https://api.github.com/repos/o/r/issues".into(),
            status: Some(200),
            decision: CallDecision::Allowed,
            reason: None,
            duration_ms: 80,
        }],
        duration_ms: Some(91),
        code_digest: Some(oauth3_crds::code_digest("return 1")),
        permit_digest: Some("sha256:p".into()),
        rate_budget: BTreeMap::from([("github".to_owned(), 11.5)]),
        ..ExecutionStatus::default()
    });
    let digest = statement_of(&exec)
        .expect("complete status")
        .compute_statement_digest();
    exec.status.as_mut().expect("status").attestation = Some(Attestation {
        kind: AttestationKind::Tdx,
        provider: Some(AttestationProvider::Tsm),
        quote: Some(b64(quote)),
        report_data: Some(hex::encode(statement_report_data(&digest))),
        statement_digest: Some(digest),
        event_log: None,
    });
    exec
}

fn policy(text: &str) -> MeasurementPolicy {
    MeasurementPolicy::parse(text).expect("policy")
}

fn mrtd_policy() -> MeasurementPolicy {
    policy(&format!("mrtd: [{}]", sample_mrtd()))
}

fn run(exec: &Execution, policy: Option<&MeasurementPolicy>, now: u64) -> Verification {
    let c = collateral();
    verify_execution(
        exec,
        &Inputs {
            collateral: Some(&c),
            policy,
            now,
        },
    )
}

fn verdict(v: &Verification, name: &str) -> (Verdict, String) {
    let c = v
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} check: {v:?}"));
    (c.verdict, c.detail.clone())
}

#[test]
fn the_sample_quote_passes_signature_tcb_and_measurements_but_not_the_binding() {
    let p = mrtd_policy();
    let v = run(&attested(SAMPLE_QUOTE), Some(&p), SAMPLE_AT);
    assert_eq!(verdict(&v, "statement").0, Verdict::Pass, "{}", v.render());
    assert_eq!(verdict(&v, "quote").0, Verdict::Pass);
    assert_eq!(verdict(&v, "signature").0, Verdict::Pass, "{}", v.render());
    let (tcb, detail) = verdict(&v, "tcb");
    assert_eq!(tcb, Verdict::Pass, "{detail}");
    assert!(detail.contains("UpToDate"), "{detail}");
    assert_eq!(v.tcb_status.as_deref(), Some("UpToDate"));
    let (binding, detail) = verdict(&v, "binding");
    assert_eq!(binding, Verdict::Fail);
    assert!(detail.contains("was not made over it"), "{detail}");
    assert_eq!(verdict(&v, "measurements").0, Verdict::Pass);
    assert!(
        !v.verified,
        "one failed check and the result is not verified"
    );
    assert_eq!(
        v.measurements.as_ref().expect("measurements").mrtd,
        sample_mrtd()
    );
    let text = v.render();
    assert!(
        text.starts_with("Execution team-a/count: NOT VERIFIED"),
        "{text}"
    );
    let json = serde_json::to_value(&v).expect("json");
    assert_eq!(json["checks"][2]["name"], "signature");
    assert_eq!(json["checks"][2]["verdict"], "pass");
    assert_eq!(json["checks"][4]["verdict"], "fail");
}

#[test]
fn a_flipped_byte_in_the_quote_body_breaks_the_signature() {
    let mut quote = SAMPLE_QUOTE.to_vec();
    quote[200] ^= 0x01; // inside MRTD
    let v = run(&attested(&quote), Some(&mrtd_policy()), SAMPLE_AT);
    let (sig, detail) = verdict(&v, "signature");
    assert_eq!(sig, Verdict::Fail, "{}", v.render());
    assert!(detail.contains("does not verify"), "{detail}");
    assert_eq!(verdict(&v, "tcb").0, Verdict::NotChecked);
    assert_eq!(
        verdict(&v, "measurements").0,
        Verdict::Fail,
        "the MRTD changed"
    );
}

#[test]
fn a_flipped_byte_in_the_signature_breaks_the_signature() {
    let mut quote = SAMPLE_QUOTE.to_vec();
    // After the 48-byte header and the 584-byte TD report: a 4-byte length, then the
    // 64-byte ECDSA signature over header and report.
    quote[48 + 584 + 4 + 10] ^= 0x80;
    let v = run(&attested(&quote), Some(&mrtd_policy()), SAMPLE_AT);
    assert_eq!(verdict(&v, "signature").0, Verdict::Fail, "{}", v.render());
    assert_eq!(
        verdict(&v, "measurements").0,
        Verdict::Pass,
        "the body is intact"
    );
}

#[test]
fn collateral_past_its_validity_fails_the_signature_check() {
    let v = run(
        &attested(SAMPLE_QUOTE),
        Some(&mrtd_policy()),
        SAMPLE_EXPIRED_AT,
    );
    let (sig, detail) = verdict(&v, "signature");
    assert_eq!(sig, Verdict::Fail, "{}", v.render());
    assert!(detail.contains("2025-08-01"), "{detail}");
}

#[test]
fn report_data_over_this_statement_passes_the_binding_and_a_patched_quote_fails_its_signature() {
    // The positive binding path: a quote whose REPORTDATA is this statement's binding. Only
    // TDX hardware can sign one, so the patched sample fails the signature check instead.
    let exec = attested(SAMPLE_QUOTE);
    let digest = exec
        .status
        .as_ref()
        .and_then(|s| s.attestation.as_ref())
        .and_then(|a| a.statement_digest.clone())
        .expect("digest");
    let mut quote = SAMPLE_QUOTE.to_vec();
    quote[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64]
        .copy_from_slice(&statement_report_data(&digest));
    let v = run(&attested(&quote), Some(&mrtd_policy()), SAMPLE_AT);
    assert_eq!(verdict(&v, "binding").0, Verdict::Pass, "{}", v.render());
    assert_eq!(verdict(&v, "signature").0, Verdict::Fail);

    // Report data binding another statement fails.
    let mut other = SAMPLE_QUOTE.to_vec();
    other[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64]
        .copy_from_slice(&statement_report_data("sha256:00"));
    let v = run(&attested(&other), None, SAMPLE_AT);
    assert_eq!(verdict(&v, "binding").0, Verdict::Fail);
}

/// An edit an attacker makes to a stored status.
type Edit = fn(&mut ExecutionStatus);

#[test]
fn a_status_edited_after_the_result_fails_the_statement_check() {
    let edits: [(&str, Edit); 4] = [
        ("result", |s| {
            s.result = Some(serde_json::json!({"open": 0, "ratio": 0.5}))
        }),
        ("stdout", |s| s.stdout = Some("0 open\n".into())),
        ("calls", |s| s.calls.clear()),
        ("phase", |s| s.phase = Some(ExecutionPhase::Failed)),
    ];
    for (what, edit) in edits {
        let mut exec = attested(SAMPLE_QUOTE);
        edit(exec.status.as_mut().expect("status"));
        let v = run(&exec, Some(&mrtd_policy()), SAMPLE_AT);
        let (statement, detail) = verdict(&v, "statement");
        assert_eq!(statement, Verdict::Fail, "edited {what}: {}", v.render());
        assert!(
            detail.contains("changed after the runner reported it"),
            "{detail}"
        );
        assert!(!v.verified);
    }
    let mut exec = attested(SAMPLE_QUOTE);
    exec.status.as_mut().expect("status").stdout = Some("x\n[truncated at 32768 bytes]".into());
    let v = run(&exec, None, SAMPLE_AT);
    assert!(
        verdict(&v, "statement").1.contains("truncated"),
        "{}",
        v.render()
    );
}

#[test]
fn measurements_the_policy_does_not_list_fail() {
    let v = run(
        &attested(SAMPLE_QUOTE),
        Some(&policy(&format!("mrtd: [{}]", "00".repeat(48)))),
        SAMPLE_AT,
    );
    let (m, detail) = verdict(&v, "measurements");
    assert_eq!(m, Verdict::Fail);
    assert!(
        detail.contains("MRTD") && detail.contains("not in the policy"),
        "{detail}"
    );

    let p = policy(&format!(
        "mrtd: [{}]\ntcb: {{allowStatus: [OutOfDate]}}",
        sample_mrtd()
    ));
    let v = run(&attested(SAMPLE_QUOTE), Some(&p), SAMPLE_AT);
    let (tcb, detail) = verdict(&v, "tcb");
    assert_eq!(tcb, Verdict::Fail);
    assert!(
        detail.contains("UpToDate") && detail.contains("OutOfDate"),
        "{detail}"
    );

    let v = run(&attested(SAMPLE_QUOTE), None, SAMPLE_AT);
    assert_eq!(verdict(&v, "measurements").0, Verdict::NotChecked);
}

#[test]
fn a_dstack_event_log_that_does_not_replay_to_rtmr3_is_not_trusted() {
    let compose = [0xcc; 32];
    let mut exec = attested(SAMPLE_QUOTE);
    let a = exec
        .status
        .as_mut()
        .and_then(|s| s.attestation.as_mut())
        .expect("attestation");
    a.provider = Some(AttestationProvider::Dstack);
    a.event_log = Some(serde_json::json!([runtime_event("compose-hash", &compose)]).to_string());
    let p = policy(&format!(
        "dstack: {{composeHash: [{}]}}",
        hex::encode(compose)
    ));
    let v = run(&exec, Some(&p), SAMPLE_AT);
    let (m, detail) = verdict(&v, "measurements");
    assert_eq!(m, Verdict::Fail);
    assert!(
        detail.contains("does not replay to the quote's RTMR3"),
        "{detail}"
    );
}

#[test]
fn no_collateral_means_signature_and_tcb_are_not_checked() {
    let v = verify_execution(
        &attested(SAMPLE_QUOTE),
        &Inputs {
            collateral: None,
            policy: None,
            now: SAMPLE_AT,
        },
    );
    assert_eq!(verdict(&v, "signature").0, Verdict::NotChecked);
    assert!(verdict(&v, "signature").1.contains("--collateral"));
    assert!(!v.verified);
}

#[test]
fn an_enclave_key_quote_is_checked_against_the_key_binding() {
    let key = [3u8; 32];
    let c = collateral();
    let p = mrtd_policy();
    let inputs = Inputs {
        collateral: Some(&c),
        policy: Some(&p),
        now: SAMPLE_AT,
    };
    let attestation = |quote: &[u8]| Attestation {
        kind: AttestationKind::Tdx,
        provider: Some(AttestationProvider::Dstack),
        quote: Some(b64(quote)),
        report_data: None,
        statement_digest: None,
        event_log: None,
    };
    let v = verify_key(&key, &attestation(SAMPLE_QUOTE), &inputs);
    assert_eq!(verdict(&v, "signature").0, Verdict::Pass);
    assert_eq!(verdict(&v, "binding").0, Verdict::Fail);
    let mut bound = SAMPLE_QUOTE.to_vec();
    bound[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64]
        .copy_from_slice(&enclave_key_report_data(&key));
    let v = verify_key(&key, &attestation(&bound), &inputs);
    assert_eq!(verdict(&v, "binding").0, Verdict::Pass);
    let v = verify_key(&[4u8; 32], &attestation(&bound), &inputs);
    assert_eq!(verdict(&v, "binding").0, Verdict::Fail, "another key");
}

#[test]
fn seal_refuses_a_key_whose_attestation_does_not_verify() {
    let dir = std::env::temp_dir().join(format!("oauth3-seal-attest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let key = hex::encode([3u8; 32]);
    let attestation = write(
        "key.json",
        &serde_json::json!({"publicKey": key, "attestation": {"kind": "tdx",
            "provider": "dstack", "quote": b64(SAMPLE_QUOTE)}})
        .to_string(),
    );
    let policy = write("policy.yaml", &format!("mrtd: [{}]\n", sample_mrtd()));
    let collateral = write("collateral.json", SAMPLE_COLLATERAL);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-oauth3"))
        .args(["seal", "GITHUB_TOKEN", "--from-literal", "ghp_secret_value"])
        .arg("--attestation")
        .arg(&attestation)
        .arg("--policy")
        .arg(&policy)
        .arg("--collateral")
        .arg(&collateral)
        .args(["--at", "2025-07-01T00:00:00Z"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to seal"), "{stderr}");
    assert!(stderr.contains("FAIL         binding"), "{stderr}");
    assert!(
        !stdout.contains("oauth3-sealed"),
        "nothing sealed: {stdout}"
    );
    assert!(!stderr.contains("ghp_secret_value") && !stdout.contains("ghp_secret_value"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-oauth3"))
        .args([
            "seal",
            "GITHUB_TOKEN",
            "--from-literal",
            "v",
            "--attestation",
        ])
        .arg(&attestation)
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "--attestation needs --policy and --collateral"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-oauth3"))
        .args([
            "seal",
            "GITHUB_TOKEN",
            "--from-literal",
            "v",
            "--attestation",
        ])
        .arg(&attestation)
        .arg("--policy")
        .arg(&policy)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "--attestation needs the quote's collateral: --collateral FILE or --pccs-url URL"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
