//! Cold-launch benchmark on the kwok tier (see BENCHMARKS.md, "Cold launch on kwok"): the
//! operator (pod launcher, in-process, the same `run` as the binary) on the local kube-apiserver
//! with a kwok fake Node; N Executions under one approved Permit, created one after the other
//! (`serial`: the next is created once the previous one's Pod is Ready) or paced (`20/s`, open
//! loop). The benchmark stands in for the scheduler: it binds each sandbox Pod to the kwok Node
//! the moment its watch sees it, and kwok marks the Pod Running and Ready as a kubelet would.
//!
//! For each Execution, from the moment its create request is sent: the sandbox Pod seen created
//! (the first watch event of it) and seen Ready (condition `Ready=True`). The API server's
//! request counters (`apiserver_request_total`) before and after give the requests per
//! Execution by verb and resource (the benchmark's own creates and bindings and kwok's status
//! writes included; each is named).
//!
//! ```sh
//! cargo build -p oauth3-tests --example kwok_launch_bench -p oauth3-operator --bin kubectl-oauth3
//! bash tests/cluster/control-plane.sh run target/debug/examples/kwok_launch_bench 200 3
//! ```
//! Arguments: Executions per run (default 200), runs per pace (default 3). Prints each run's
//! p50/p99 and, per pace, the median over the runs.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use oauth3_crds::{Execution, ExecutionSpec};
use oauth3_operator::launcher::pod::{PodLaunchConfig, run_object_name};
use oauth3_tests::approved_permit;
use oauth3_tests::bench::{Pace, drive, pct, pod_ready, request_counts};
use oauth3_tests::kwok::{Kwok, bind_pod};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{apply_dev_sealed_secret, client_or_skip, ensure_runtime_class, namespace};
use serde_json::json;

/// When each sandbox Pod was first seen, and seen Ready.
#[derive(Default)]
struct Seen {
    created: BTreeMap<String, Instant>,
    ready: BTreeMap<String, Instant>,
}

type Shared = Arc<Mutex<Seen>>;

/// One run's latencies (from each create request sent) and its requests per Execution.
struct RunResult {
    to_created: Vec<Duration>,
    to_ready: Vec<Duration>,
    requests: BTreeMap<String, f64>,
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let client = client_or_skip()
        .await
        .expect("a control plane (run under tests/cluster/control-plane.sh)");
    let kwok = Kwok::start(&client, "bench")
        .await
        .expect("a kwok binary (OAUTH3_KWOK)");
    let config = PodLaunchConfig::default();
    ensure_runtime_class(&client, &config.runtime_class_name).await;
    let mut summary = Vec::new();
    for pace in [Pace::Serial, Pace::PerSecond(20)] {
        let mut results = Vec::new();
        for run in 0..runs {
            let r = one_run(&client, &kwok.node, &config, pace, n).await;
            print_run(pace, run, n, &r);
            results.push(r);
        }
        summary.push((pace, results));
    }
    println!("\nmedian of {runs} runs, {n} Executions each:");
    for (pace, results) in &summary {
        let med = |f: &dyn Fn(&RunResult) -> Duration| {
            let mut v: Vec<Duration> = results.iter().map(f).collect();
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e3
        };
        println!(
            "{pace:<7} created -> Pod created p50 {:>7.1} ms p99 {:>7.1} ms | -> Pod Ready p50 {:>7.1} ms p99 {:>7.1} ms",
            med(&|r| pct(&r.to_created, 50.0)),
            med(&|r| pct(&r.to_created, 99.0)),
            med(&|r| pct(&r.to_ready, 50.0)),
            med(&|r| pct(&r.to_ready, 99.0)),
        );
    }
    kwok.stop().await;
}

fn print_run(pace: Pace, run: usize, n: usize, r: &RunResult) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{pace:<7} run {run}: {}/{n} created p50 {:.1} p99 {:.1} ms; {}/{n} Ready p50 {:.1} p99 {:.1} ms",
        r.to_created.len(),
        ms(pct(&r.to_created, 50.0)),
        ms(pct(&r.to_created, 99.0)),
        r.to_ready.len(),
        ms(pct(&r.to_ready, 50.0)),
        ms(pct(&r.to_ready, 99.0)),
    );
    let line: Vec<String> = r
        .requests
        .iter()
        .filter(|(_, per)| **per >= 0.05)
        .map(|(k, per)| format!("{k} {per:.2}"))
        .collect();
    println!("        API requests per Execution: {}", line.join(", "));
}

/// A fresh namespace with an approved Permit and the operator; `n` Executions at `pace`.
async fn one_run(
    client: &Client,
    node: &str,
    config: &PodLaunchConfig,
    pace: Pace,
    n: usize,
) -> RunResult {
    let ns = namespace(client, "kwok-bench").await;
    apply_dev_sealed_secret(client, &ns, "api-token", "API_TOKEN", "sk-bench", [5u8; 32]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let op = InProcessOperator::start(
        client,
        &ns,
        listener,
        Launcher::Pod(Box::new(config.clone())),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    approved_permit(client, &ns, "bench").await;
    let seen: Shared = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let watch = spawn_pod_watch(client.clone(), ns.clone(), node.to_owned(), seen.clone(), {
        let notify = notify.clone();
        move || notify.notify_waiters()
    });
    let execs: Api<Execution> = Api::namespaced(client.clone(), &ns);
    let before = request_counts(client).await;
    let sent: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let create = |i: usize| {
        let (execs, sent) = (execs.clone(), sent.clone());
        async move {
            let name = format!("bench-{i}");
            let spec: ExecutionSpec = serde_json::from_value(
                json!({"permitRef": "bench", "code": "return 1", "timeoutSeconds": 600}),
            )
            .unwrap();
            sent.lock()
                .unwrap()
                .insert(run_object_name(&name), Instant::now());
            execs
                .create(&PostParams::default(), &Execution::new(&name, spec))
                .await
                .unwrap();
        }
    };
    drive(pace, n, &notify, create, |i| {
        seen.lock()
            .unwrap()
            .ready
            .contains_key(&run_object_name(&format!("bench-{i}")))
    })
    .await;
    let after = request_counts(client).await;
    watch.abort();
    op.stop().await;
    let requests = after
        .iter()
        .map(|(k, v)| {
            let delta = v - before.get(k).copied().unwrap_or_default();
            (k.clone(), delta / n as f64)
        })
        .collect();
    let sent = sent.lock().unwrap().clone();
    let result = {
        let seen = seen.lock().unwrap();
        let since = |at: &BTreeMap<String, Instant>| -> Vec<Duration> {
            sent.iter()
                .filter_map(|(pod, t0)| at.get(pod).map(|t| t.saturating_duration_since(*t0)))
                .collect()
        };
        RunResult {
            to_created: since(&seen.created),
            to_ready: since(&seen.ready),
            requests,
        }
    };
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
    result
}

/// Watches the namespace's Pods: notes when each is first seen and seen Ready, and binds each
/// unbound one to `node` (the scheduler's part).
fn spawn_pod_watch(
    client: Client,
    ns: String,
    node: String,
    seen: Shared,
    wake: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(pods, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
                continue;
            };
            let now = Instant::now();
            let name = pod.name_any();
            let first = {
                let mut seen = seen.lock().unwrap();
                let first = !seen.created.contains_key(&name);
                seen.created.entry(name.clone()).or_insert(now);
                if pod_ready(&pod) {
                    seen.ready.entry(name.clone()).or_insert(now);
                }
                first
            };
            let unbound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none();
            if first && unbound {
                let (client, ns, node) = (client.clone(), ns.clone(), node.clone());
                tokio::spawn(async move { bind_pod(&client, &ns, &name, &node).await });
            }
            wake();
        }
    })
}
