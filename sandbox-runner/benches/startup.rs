//! Start-up benchmarks of the sandbox: time to the first capability call, and a trivial run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use oauth3_crds::CallRecord;
use oauth3_sandbox_runner::host::{BoxFuture, CallOutcome, CapabilityCall, CapabilityHost};
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_sandbox_runner::sandbox::{self, Limits};
use tokio::sync::mpsc;

/// Answers every call at once and reports the instant each call arrived.
struct TimingHost {
    arrived: mpsc::UnboundedSender<Instant>,
}

impl CapabilityHost for TimingHost {
    fn capabilities(&self) -> Vec<String> {
        vec!["api".to_owned()]
    }

    fn call(&self, _call: CapabilityCall) -> BoxFuture<'_, CallOutcome> {
        let _ = self.arrived.send(Instant::now());
        Box::pin(async { CallOutcome::Value(serde_json::Value::Null) })
    }

    fn calls(&self) -> Vec<CallRecord> {
        Vec::new()
    }
}

fn startup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let limits = Limits::default();
    let args = serde_json::json!({"path": "/x"});

    c.bench_function("run start to first capability call", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let host = Arc::new(TimingHost { arrived: tx });
                let start = Instant::now();
                rt.block_on(sandbox::run(
                    "await api('GET', args.path)",
                    &args,
                    host,
                    &limits,
                    Arc::new(Redactor::none()),
                ))
                .expect("runs");
                let arrived = rx.try_recv().expect("the call reached the host");
                total += arrived - start;
            }
            total
        });
    });

    // The same first call from TypeScript: the types are removed by the real parser and
    // transformer first, as the runner does for `spec.language: typescript`.
    let typescript = "interface Req { path: string }\n\
        const req: Req = args as Req;\n\
        const answer: unknown = await api('GET', req.path!);\n\
        return answer;";
    c.bench_function(
        "typescript: prepare, then start to first capability call",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    let host = Arc::new(TimingHost { arrived: tx });
                    let start = Instant::now();
                    let prepared = oauth3_typescript::prepare(
                        typescript,
                        oauth3_typescript::Language::TypeScript,
                    )
                    .expect("valid TypeScript");
                    rt.block_on(sandbox::run(
                        &prepared.code,
                        &args,
                        host,
                        &limits,
                        Arc::new(Redactor::none()),
                    ))
                    .expect("runs");
                    let arrived = rx.try_recv().expect("the call reached the host");
                    total += arrived - start;
                }
                total
            });
        },
    );

    c.bench_function("trivial script total run", |b| {
        b.iter(|| {
            let (tx, _rx) = mpsc::unbounded_channel();
            let host = Arc::new(TimingHost { arrived: tx });
            rt.block_on(sandbox::run(
                "return 1 + 1",
                &args,
                host,
                &limits,
                Arc::new(Redactor::none()),
            ))
            .expect("runs")
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = startup
}
criterion_main!(benches);
