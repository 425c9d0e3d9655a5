//! Benchmark of `kubectl oauth3 verify`'s work per receipt (see BENCHMARKS.md): the full
//! offline verification of one attested Execution status with the collateral in hand
//! (statement digest recomputed from status, quote parsed, signature chain and TCB checked
//! with `dcap-qvl`, binding, measurements against a policy), on the real TDX sample quote.
//!
//! ```sh
//! cargo run --release -p oauth3-operator --example verify_bench -- 2000
//! ```

use std::time::{Duration, Instant};

use base64::Engine as _;
use oauth3_crds::{
    Attestation, AttestationKind, AttestationProvider, Execution, ExecutionPhase, ExecutionSpec,
    ExecutionStatus,
};
use oauth3_operator::verify::{Inputs, MeasurementPolicy, statement_of, verify_execution};
use oauth3_test_support::tdx::{SAMPLE_AT, SAMPLE_COLLATERAL, SAMPLE_QUOTE, sample_mrtd};

fn receipt() -> Execution {
    let mut exec = Execution::new(
        "bench",
        ExecutionSpec {
            permit_ref: "p".into(),
            code: "return 1".into(),
            language: Default::default(),
            args: None,
            timeout_seconds: 30,
        },
    );
    exec.metadata.namespace = Some("ns".into());
    exec.metadata.uid = Some("uid".into());
    exec.status = Some(ExecutionStatus {
        phase: Some(ExecutionPhase::Succeeded),
        result: Some(serde_json::json!({"open": 3})),
        stdout: Some("3\n".into()),
        stderr: Some(String::new()),
        duration_ms: Some(12),
        code_digest: Some(oauth3_crds::code_digest("return 1")),
        permit_digest: Some("sha256:p".into()),
        ..ExecutionStatus::default()
    });
    let digest = statement_of(&exec)
        .expect("status")
        .compute_statement_digest();
    exec.status.as_mut().expect("status").attestation = Some(Attestation {
        kind: AttestationKind::Tdx,
        provider: Some(AttestationProvider::Tsm),
        quote: Some(base64::engine::general_purpose::STANDARD.encode(SAMPLE_QUOTE)),
        report_data: None,
        statement_digest: Some(digest),
        event_log: None,
    });
    exec
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let collateral: dcap_qvl::QuoteCollateralV3 =
        serde_json::from_str(SAMPLE_COLLATERAL).expect("collateral");
    let policy = MeasurementPolicy::parse(&format!("mrtd: [{}]", sample_mrtd())).expect("policy");
    let exec = receipt();
    let inputs = Inputs {
        collateral: Some(&collateral),
        policy: Some(&policy),
        now: SAMPLE_AT,
    };
    for _ in 0..20 {
        std::hint::black_box(verify_execution(&exec, &inputs));
    }
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            let v = verify_execution(std::hint::black_box(&exec), &inputs);
            let took = start.elapsed();
            assert_eq!(v.checks[2].name, "signature");
            assert!(
                v.checks[2].verdict == oauth3_operator::verify::Verdict::Pass,
                "the signature verifies in the benchmark"
            );
            took
        })
        .collect();
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    let mean = times.iter().sum::<Duration>() / u32::try_from(n).unwrap_or(u32::MAX);
    println!(
        "verify per receipt over {n} runs: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms",
        mean.as_secs_f64() * 1e3,
        pct(50).as_secs_f64() * 1e3,
        pct(99).as_secs_f64() * 1e3
    );
}
