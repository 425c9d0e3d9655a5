//! Process start to first capability call: spawns the `oauth3-sandbox-runner` binary on a
//! bundle whose code calls a capability at once, and times from spawn to the moment the local
//! HTTPS upstream received the request (and, separately, to the process's exit).
//!
//! The binary is the one Cargo builds for this bench (`CARGO_BIN_EXE_oauth3-sandbox-runner`):
//! under `cargo bench` that is the optimised `target/release/oauth3-sandbox-runner`. The
//! bundle has no secrets, so no key provider is contacted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use oauth3_crds::PermitSpec;
use oauth3_test_support::Upstream;
use serde_json::{Value, json};

const RUNNER: &str = env!("CARGO_BIN_EXE_oauth3-sandbox-runner");

fn bundle(up: &Upstream) -> Value {
    let spec = json!({
        "description": "process start bench",
        "capabilities": [{
            "name": "api",
            "baseUrl": format!("{}/v1", up.origin()),
            "paths": ["/items"],
            "methods": ["GET"]
        }]
    });
    let parsed: PermitSpec = serde_json::from_value(spec.clone()).expect("valid permit");
    json!({
        "execution": {"namespace": "bench", "name": "start", "uid": "uid-start"},
        "permit": {"name": "p", "spec": spec,
                   "specDigest": oauth3_crds::spec_digest(&parsed).expect("digest")},
        "code": "return await api('GET', '/items')",
        "args": {},
        "limits": {"timeoutSeconds": 10}
    })
}

/// Files of one bench run, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!("oauth3-bench-start-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("bench dir");
        Self(d)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write bench file");
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One run: (spawn to upstream request, spawn to exit).
fn run_once(
    rt: &tokio::runtime::Runtime,
    up: &Upstream,
    bundle: &Path,
    ca: &Path,
) -> (Duration, Duration) {
    let before = up.requests().len();
    let start = Instant::now();
    let status = Command::new(RUNNER)
        .args(["run", "--attestation", "none", "--bundle"])
        .arg(bundle)
        .arg("--ca-file")
        .arg(ca)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runner spawns");
    let exited = start.elapsed();
    assert!(status.success(), "runner succeeded: {status}");
    rt.block_on(up.wait_for_requests(before + 1));
    let requests = up.requests();
    let first = requests.get(before).expect("the call reached the upstream");
    assert_eq!(first.path_and_query, "/v1/items", "the capability's path");
    (first.received_at - start, exited)
}

fn process_start(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let up = rt.block_on(Upstream::start());
    let dir = Dir::new();
    let bundle_path = dir.file("bundle.json", bundle(&up).to_string().as_bytes());
    let ca_path = dir.file("ca.pem", &up.ca_pem);

    let mut group = c.benchmark_group("runner process");
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("spawn to first upstream request", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_once(&rt, &up, &bundle_path, &ca_path).0)
                .sum()
        })
    });
    group.bench_function("spawn to exit", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_once(&rt, &up, &bundle_path, &ca_path).1)
                .sum()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = process_start
}
criterion_main!(benches);
