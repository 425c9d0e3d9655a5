//! Decision latency of `Policy::decide` for Permits of 1, 100 and 1000 capabilities.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use oauth3_crds::PermitSpec;
use oauth3_sandbox_runner::policy::Policy;
use serde_json::json;

fn permit(n: usize) -> PermitSpec {
    let caps: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "name": format!("cap{i}"),
                "baseUrl": format!("https://api{i}.example.com/v3"),
                "paths": ["/repos/owner/repo/issues", "/repos/owner/repo/issues/*", "/search/**"],
                "methods": ["GET", "POST"],
                "query": {"allow": ["state", "per_page"]},
                "auth": {"header": "Authorization", "value": "Bearer {TOKEN}"}
            })
        })
        .collect();
    serde_json::from_value(
        json!({"description": "bench", "capabilities": caps, "secrets": ["TOKEN"]}),
    )
    .expect("valid permit")
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50);
    for n in [1usize, 100, 1000] {
        let policy = Policy::compile(&permit(n)).expect("compiles");
        let target = format!("cap{}", n / 2);
        let args = [
            json!("GET"),
            json!("/repos/owner/repo/issues/42"),
            json!({"query": {"state": "open"}}),
        ];
        group.bench_with_input(BenchmarkId::new("capabilities", n), &n, |b, _| {
            b.iter(|| {
                policy
                    .decide(black_box(&target), black_box(&args))
                    .expect("allowed")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
