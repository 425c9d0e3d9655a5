//! Start-up benchmarks of the sandbox: time to the first capability call, and a trivial run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use oauth3_crds::CallRecord;
use oauth3_sandbox_runner::host::{BoxFuture, CallOutcome, CapabilityCall, CapabilityHost};
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_sandbox_runner::sandbox::{self, Limits};
use oauth3_typescript::Language;
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

    fn has_fetch(&self) -> bool {
        true
    }

    fn fetch(&self, _request: serde_json::Value) -> BoxFuture<'_, CallOutcome> {
        let _ = self.arrived.send(Instant::now());
        Box::pin(async {
            CallOutcome::Value(serde_json::json!({
                "status": 200, "statusText": "OK", "url": "https://api.example.com/x",
                "redirected": false, "headers": [], "bodyBase64": "e30="
            }))
        })
    }

    fn environment(&self) -> std::collections::BTreeMap<String, String> {
        [(
            "TOKEN".to_owned(),
            "OAUTH3_SECRET_TOKEN_0123456789abcdefghijklmn".to_owned(),
        )]
        .into()
    }
}

fn startup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let limits = Limits::default();
    let args = serde_json::json!({"path": "/x"});

    // From the start of the run (for TypeScript: before the types are removed, as the runner
    // does for `spec.language: typescript`) to the moment the host receives the first call.
    let first_call = |c: &mut Criterion, name: &str, code: &str, language: Option<Language>| {
        c.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    let host = Arc::new(TimingHost { arrived: tx });
                    let start = Instant::now();
                    let code = match language {
                        Some(l) => oauth3_typescript::prepare(code, l).expect("valid").code,
                        None => code.to_owned(),
                    };
                    rt.block_on(sandbox::run(
                        &code,
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
    };
    first_call(
        c,
        "run start to first capability call",
        "await api('GET', args.path)",
        None,
    );
    first_call(
        c,
        "typescript: prepare, then start to first capability call",
        "interface Req { path: string }\n\
         const req: Req = args as Req;\n\
         const answer: unknown = await api('GET', req.path!);\n\
         return answer;",
        Some(Language::TypeScript),
    );
    // Unchanged third-party code: the fetch classes and the environment are loaded on this
    // first use, then the request reaches the host.
    first_call(
        c,
        "typescript fetch(): prepare, then start to first fetch",
        "interface Repo { name: string }\n\
         const res = await fetch('https://api.example.com/x', { headers: { Authorization: `Bearer ${Deno.env.get('TOKEN')!}` } });\n\
         const repos: Repo[] = await res.json();\n\
         return repos;",
        Some(Language::TypeScript),
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
