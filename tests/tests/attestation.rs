//! Attestation end to end on a real kube-apiserver: the operator with the process launcher and
//! the real runner binary whose quote provider is a configfs-tsm stand-in handing back a real
//! TDX quote. The Execution's status carries that quote, and `kubectl oauth3 verify` reports
//! exactly which checks pass (statement, signature, TCB, measurements) and which cannot
//! (binding: the sample quote was not made over this statement). A Permit that requires
//! attestation fails an unattested result (`NotAttested`) and keeps an attested one.

use std::path::PathBuf;
use std::time::Duration;

use kube::api::{Api, PostParams};
use oauth3_crds::{AttestationKind, Execution, ExecutionPhase, Permit, PermitPhase};
use oauth3_operator::launcher::pod::PodQuoteProvider;
use oauth3_operator::launcher::process::ProcessLauncherConfig;
use oauth3_test_support::pccs::Pccs;
use oauth3_test_support::tdx::{SAMPLE_COLLATERAL, SAMPLE_QUOTE, TsmDir, sample_mrtd};
use oauth3_test_support::{ExecutionFixture, PermitFixture, wait_until};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{client_or_skip, namespace, workspace_binary};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

struct Env {
    client: kube::Client,
    ns: String,
    dir: PathBuf,
}

impl Env {
    async fn new(tag: &str) -> Option<Self> {
        let client = client_or_skip().await?;
        let ns = namespace(&client, tag).await;
        let dir = std::env::temp_dir().join(format!("oauth3-attest-{ns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        Some(Self { client, ns, dir })
    }

    async fn operator(&self, attestation: PodQuoteProvider) -> InProcessOperator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        InProcessOperator::start(
            &self.client,
            &self.ns,
            listener,
            Launcher::Process(ProcessLauncherConfig {
                binary: workspace_binary("oauth3-sandbox-runner", "oauth3-sandbox-runner"),
                extra_args: Vec::new(),
                attestation,
            }),
            Duration::from_secs(30),
            Duration::from_secs(3600),
        )
    }

    fn plugin(&self, args: &[&str]) -> std::process::Output {
        oauth3_tests::plugin(&self.ns, args)
    }

    /// Creates Permit `name` from `fixture` and approves it as its owner would.
    async fn approved(&self, name: &str, fixture: PermitFixture) {
        let permits: Api<Permit> = Api::namespaced(self.client.clone(), &self.ns);
        permits
            .create(&PostParams::default(), &fixture.permit(name))
            .await
            .expect("permit");
        let phase = |want: PermitPhase| {
            let permits = permits.clone();
            async move {
                wait_until(&format!("Permit {name} {want:?}"), WAIT, || async {
                    let p = permits.get(name).await.map_err(|e| e.to_string())?;
                    match p.status.as_ref().and_then(|s| s.phase) {
                        Some(got) if got == want => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                })
                .await;
            }
        };
        phase(PermitPhase::Pending).await;
        let out = self.plugin(&["approve", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        phase(PermitPhase::Approved).await;
    }

    /// Runs `return 6 * 7` as Execution `name` under `permit` and waits for it to finish.
    async fn finished(&self, name: &str, permit: &str) -> Execution {
        let api: Api<Execution> = Api::namespaced(self.client.clone(), &self.ns);
        api.create(
            &PostParams::default(),
            &ExecutionFixture::under(permit)
                .code("return 6 * 7")
                .execution(name),
        )
        .await
        .expect("execution");
        wait_until(&format!("Execution {name} finished"), WAIT, || async {
            let e = api.get(name).await.map_err(|e| e.to_string())?;
            match e.status.as_ref().and_then(|s| s.phase) {
                Some(p) if p.is_terminal() => Ok(e),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }
}

fn permit() -> PermitFixture {
    PermitFixture::api("https://api.example.com/v1")
}

// Multi-threaded: the plugin runs as a blocking child process while the stand-in PCCS
// answers it on this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attested_result_carries_the_quote_and_verify_says_which_checks_pass() {
    let Some(env) = Env::new("attest-e2e").await else {
        return;
    };
    let tsm = TsmDir::start(&env.dir.join("tsm-entry"));
    let op = env
        .operator(PodQuoteProvider::Tsm {
            dir: tsm.dir.to_string_lossy().into_owned(),
        })
        .await;
    env.approved("attested", permit().require_attestation())
        .await;
    let exec = env.finished("answer", "attested").await;
    op.stop().await;

    let status = exec.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Succeeded), "{status:?}");
    assert_eq!(status.result, Some(serde_json::json!(42)));
    let a = status.attestation.clone().expect("attestation");
    assert_eq!(a.kind, AttestationKind::Tdx);
    assert_eq!(
        a.quote.as_deref(),
        Some(base64_of(SAMPLE_QUOTE).as_str()),
        "the status carries the provider's quote"
    );
    let digest = a.statement_digest.clone().expect("statement digest");
    assert_eq!(
        tsm.inblobs(),
        [oauth3_protocol_binding(&digest)],
        "the runner asked for a quote over the statement"
    );

    let collateral = env.dir.join("collateral.json");
    std::fs::write(&collateral, SAMPLE_COLLATERAL).expect("collateral");
    let policy = env.dir.join("policy.yaml");
    std::fs::write(&policy, format!("mrtd: [{}]\n", sample_mrtd())).expect("policy");
    let (collateral, policy) = (
        collateral.to_string_lossy().into_owned(),
        policy.to_string_lossy().into_owned(),
    );
    let args = [
        "verify",
        "answer",
        "--collateral",
        &collateral,
        "--policy",
        &policy,
        "--at",
        "2025-07-01T00:00:00Z",
    ];
    let out = env.plugin(&[&args[..], &["--json"]].concat());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json verdicts");
    let verdicts: Vec<(String, String)> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["verdict"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expect = [
        ("statement", "pass"),
        ("quote", "pass"),
        ("signature", "pass"),
        ("tcb", "pass"),
        ("binding", "fail"),
        ("measurements", "pass"),
    ];
    assert_eq!(
        verdicts,
        expect.map(|(n, v)| (n.to_owned(), v.to_owned())),
        "{report:#}"
    );
    assert_eq!(report["tcbStatus"], "UpToDate");
    assert_eq!(report["verified"], false);

    let out = env.plugin(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Execution") && text.contains("NOT VERIFIED"),
        "{text}"
    );
    assert!(text.contains("pass         signature"), "{text}");
    assert!(text.contains("FAIL         binding"), "{text}");

    // The same verdicts with the collateral fetched from a PCCS for the quote's platform.
    let pccs = Pccs::start().await;
    let ca = env.dir.join("pccs-ca.pem");
    std::fs::write(&ca, &pccs.ca_pem).expect("pccs ca");
    let (url, ca) = (pccs.url(), ca.to_string_lossy().into_owned());
    let out = env.plugin(&[
        "verify",
        "answer",
        "--pccs-url",
        &url,
        "--pccs-ca",
        &ca,
        "--policy",
        &policy,
        "--at",
        "2025-07-01T00:00:00Z",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let via_pccs: Value = serde_json::from_slice(&out.stdout).expect("json verdicts");
    assert_eq!(via_pccs["checks"], report["checks"], "{via_pccs:#}");
    assert_eq!(
        pccs.requests().len(),
        4,
        "collateral fetched: {:?}",
        pccs.requests()
    );
}

#[tokio::test]
async fn a_permit_requiring_attestation_fails_an_unattested_result() {
    let Some(env) = Env::new("attest-required").await else {
        return;
    };
    let op = env.operator(PodQuoteProvider::None).await;
    env.approved("strict", permit().require_attestation()).await;
    env.approved("lenient", permit()).await;
    let strict = env.finished("strict-run", "strict").await;
    let lenient = env.finished("lenient-run", "lenient").await;
    op.stop().await;

    let s = strict.status.expect("status");
    assert_eq!(s.phase, Some(ExecutionPhase::Failed), "{s:?}");
    assert_eq!(s.reason.as_deref(), Some("NotAttested"));
    assert!(
        s.message
            .as_deref()
            .unwrap_or_default()
            .contains("requireAttestation: tdx"),
        "{s:?}"
    );
    assert!(
        matches!(s.result, None | Some(Value::Null)),
        "the unattested result is withheld: {:?}",
        s.result
    );
    let l = lenient.status.expect("status");
    assert_eq!(l.phase, Some(ExecutionPhase::Succeeded));
    assert_eq!(l.result, Some(serde_json::json!(42)));
    assert_eq!(l.attestation.map(|a| a.kind), Some(AttestationKind::None));
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn oauth3_protocol_binding(digest: &str) -> Vec<u8> {
    oauth3_protocol::attestation::statement_report_data(digest).to_vec()
}
