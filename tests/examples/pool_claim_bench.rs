//! Pool-claim benchmark on the kwok tier (see BENCHMARKS.md, "Warm pools on kwok"): the
//! operator (pod launcher, `--sandbox-pools`, in-process, the same `run` as the binary) on the
//! local kube-apiserver with a kwok fake Node; N Executions under one approved Permit, serial
//! (the next is created once the previous one's runner has its bundle) or paced (`20/s`, open
//! loop), with and without a SandboxPool, alternating runs.
//!
//! Measured from each Execution's create request to the moment its runner has its bundle: for
//! a pool hit, when the member's standby request is answered with it (the benchmark plays
//! each member's runner: it asks with the token from the member's Secret, as the runner does);
//! for a fresh Pod, when kwok reports the Pod Ready (on a real node, the runner then still has
//! to start and read its bundle: fresh-Pod figures here are a lower bound). As in the cold
//! launch benchmark, no runner reports: the Executions stay `Running` (600 s timeout), so what
//! is measured is the launch alone, with the pool's refills. The API server's request counters
//! give the requests per Execution by verb and resource (the benchmark's own creates, bindings
//! and reads included: each is named), and writes per Execution are summed.
//!
//! ```sh
//! cargo build -p oauth3-tests --example pool_claim_bench -p oauth3-operator --bin kubectl-oauth3
//! bash tests/cluster/control-plane.sh run target/debug/examples/pool_claim_bench 200 3 20
//! ```
//! Arguments: Executions per run (default 200), runs per case (default 3), pool replicas
//! (default 20).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use oauth3_crds::constants::LABEL_POOL;
use oauth3_crds::{Execution, ExecutionSpec, SandboxPool};
use oauth3_operator::launcher::pod::PodLaunchConfig;
use oauth3_protocol::standby::Standby;
use oauth3_tests::approved_permit;
use oauth3_tests::bench::{Pace, drive, pct, pod_ready, request_counts};
use oauth3_tests::kwok::{Kwok, bind_pod};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{apply_dev_sealed_secret, client_or_skip, ensure_runtime_class, namespace};
use serde_json::json;

/// What the watches saw: per Execution name, when its runner had its bundle, and how.
#[derive(Default)]
struct Seen {
    /// Execution name -> when its runner had the bundle.
    ready: BTreeMap<String, Instant>,
    /// Executions that ran on a pool member.
    hits: BTreeSet<String>,
    /// Pods already bound or asked for.
    handled: BTreeSet<String>,
}

type Shared = Arc<Mutex<Seen>>;

struct RunResult {
    to_runner: Vec<Duration>,
    hits: usize,
    requests: BTreeMap<String, f64>,
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let replicas: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let client = client_or_skip()
        .await
        .expect("a control plane (run under tests/cluster/control-plane.sh)");
    let kwok = Kwok::start(&client, "pool-bench")
        .await
        .expect("a kwok binary (OAUTH3_KWOK)");
    ensure_runtime_class(&client, &PodLaunchConfig::default().runtime_class_name).await;
    let mut summary: Vec<(Pace, bool, Vec<RunResult>)> = Vec::new();
    for pace in [Pace::Serial, Pace::PerSecond(20)] {
        let mut fresh = Vec::new();
        let mut pooled = Vec::new();
        for run in 0..runs {
            for pool in [false, true] {
                let r = one_run(&client, &kwok.node, pace, n, pool.then_some(replicas)).await;
                print_run(pace, pool, run, n, &r);
                if pool { pooled.push(r) } else { fresh.push(r) }
            }
        }
        summary.push((pace, false, fresh));
        summary.push((pace, true, pooled));
    }
    println!("\nmedian of {runs} runs, {n} Executions each (pool replicas {replicas}):");
    for (pace, pool, results) in &summary {
        let med = |f: &dyn Fn(&RunResult) -> f64| {
            let mut v: Vec<f64> = results.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{pace:<7} {:<10} created -> runner has its bundle p50 {:>7.1} ms p99 {:>7.1} ms | hits {:>5.1}% | writes per Execution {:>5.2}",
            if *pool { "pool" } else { "fresh Pod" },
            med(&|r| ms(pct(&r.to_runner, 50.0))),
            med(&|r| ms(pct(&r.to_runner, 99.0))),
            med(&|r| 100.0 * r.hits as f64 / n as f64),
            med(&|r| writes(&r.requests)),
        );
    }
    kwok.stop().await;
}

/// API writes (create, update, patch, delete) per Execution.
fn writes(requests: &BTreeMap<String, f64>) -> f64 {
    requests
        .iter()
        .filter(|(k, _)| {
            ["POST ", "PUT ", "PATCH ", "DELETE "]
                .iter()
                .any(|v| k.starts_with(v))
        })
        .map(|(_, v)| v)
        .sum()
}

fn print_run(pace: Pace, pool: bool, run: usize, n: usize, r: &RunResult) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{pace:<7} {:<9} run {run}: {}/{n} runners had their bundle p50 {:.1} p99 {:.1} ms; {} pool hits; {:.2} writes per Execution",
        if pool { "pool" } else { "fresh Pod" },
        r.to_runner.len(),
        ms(pct(&r.to_runner, 50.0)),
        ms(pct(&r.to_runner, 99.0)),
        r.hits,
        writes(&r.requests),
    );
    let line: Vec<String> = r
        .requests
        .iter()
        .filter(|(_, per)| **per >= 0.05)
        .map(|(k, per)| format!("{k} {per:.2}"))
        .collect();
    println!("        API requests per Execution: {}", line.join(", "));
}

/// A fresh namespace with an approved Permit, the operator, and (with `replicas`) a full
/// SandboxPool; `n` Executions at `pace`.
async fn one_run(
    client: &Client,
    node: &str,
    pace: Pace,
    n: usize,
    replicas: Option<i32>,
) -> RunResult {
    let ns = namespace(client, "pool-bench").await;
    apply_dev_sealed_secret(client, &ns, "api-token", "API_TOKEN", "sk-bench", [5u8; 32]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let op = InProcessOperator::start_with_flags(
        client,
        &ns,
        listener,
        Launcher::Pod(Box::default()),
        Duration::from_secs(30),
        Duration::from_secs(3600),
        &["--sandbox-pools".to_owned()],
    );
    approved_permit(client, &ns, "bench").await;
    let seen: Shared = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let watch = spawn_watch(client.clone(), ns.clone(), node.to_owned(), seen.clone(), {
        let notify = notify.clone();
        move || notify.notify_waiters()
    });
    let pools: Api<SandboxPool> = Api::namespaced(client.clone(), &ns);
    if let Some(replicas) = replicas {
        let pool: SandboxPool = serde_json::from_value(json!({
            "apiVersion": "oauth3.dev/v1alpha1", "kind": "SandboxPool",
            "metadata": {"name": "bench"},
            "spec": {"replicas": replicas, "maxSurge": replicas}
        }))
        .unwrap();
        pools.create(&PostParams::default(), &pool).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = pools
                .get("bench")
                .await
                .ok()
                .and_then(|p| p.status)
                .map(|s| s.ready);
            if ready == Some(replicas) {
                break;
            }
            assert!(Instant::now() < deadline, "the pool did not fill in 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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
            sent.lock().unwrap().insert(name.clone(), Instant::now());
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
            .contains_key(&format!("bench-{i}"))
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
        RunResult {
            to_runner: sent
                .iter()
                .filter_map(|(name, t0)| {
                    seen.ready
                        .get(name)
                        .map(|t| t.saturating_duration_since(*t0))
                })
                .collect(),
            hits: seen.hits.len(),
            requests,
        }
    };
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
    result
}

/// Watches the namespace's Pods: binds each unbound one to `node` (the scheduler's part);
/// notes when a fresh sandbox Pod is Ready (its runner could start), and plays the runner of
/// each pool member: asks for its run with its token and notes when the bundle came.
fn spawn_watch(
    client: Client,
    ns: String,
    node: String,
    seen: Shared,
    wake: impl Fn() + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let wake = Arc::new(wake);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let http = reqwest::Client::new();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(pods, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event else {
                continue;
            };
            let now = Instant::now();
            let name = pod.name_any();
            let member = pod.labels().contains_key(LABEL_POOL);
            let first = seen.lock().unwrap().handled.insert(name.clone());
            let unbound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none();
            if first && unbound {
                let (client, ns, node, name) =
                    (client.clone(), ns.clone(), node.clone(), name.clone());
                tokio::spawn(async move { bind_pod(&client, &ns, &name, &node).await });
            }
            if first && member {
                tokio::spawn(play_member(
                    client.clone(),
                    http.clone(),
                    ns.clone(),
                    name.clone(),
                    seen.clone(),
                    wake.clone(),
                ));
            }
            if !member && pod_ready(&pod) {
                let exec = pod
                    .annotations()
                    .get(oauth3_crds::constants::ANNOTATION_EXECUTION_NAME)
                    .cloned();
                if let Some(exec) = exec {
                    seen.lock().unwrap().ready.entry(exec).or_insert(now);
                }
            }
            wake();
        }
    })
}

/// A pool member's runner: asks until its bundle comes, and notes it.
async fn play_member(
    client: Client,
    http: reqwest::Client,
    ns: String,
    member: String,
    seen: Shared,
    wake: Arc<impl Fn() + Send + Sync + 'static>,
) {
    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let standby: Standby = loop {
        if let Ok(Some(secret)) = secrets.get_opt(&member).await
            && let Some(raw) = secret.data.as_ref().and_then(|d| d.get("standby.json"))
        {
            break serde_json::from_slice(&raw.0).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let bundle: serde_json::Value = loop {
        let Ok(response) = http
            .post(&standby.url)
            .bearer_auth(standby.token.as_str())
            .timeout(Duration::from_secs(30))
            .send()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        match response.status().as_u16() {
            200 => break response.json().await.unwrap(),
            204 => {}
            _ => return,
        }
    };
    let now = Instant::now();
    let exec = bundle["execution"]["name"].as_str().unwrap().to_owned();
    {
        let mut seen = seen.lock().unwrap();
        seen.ready.entry(exec.clone()).or_insert(now);
        seen.hits.insert(exec.clone());
    }
    wake();
}
