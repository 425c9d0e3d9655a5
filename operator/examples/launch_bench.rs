//! Operator benchmark against a real kube-apiserver (see BENCHMARKS.md).
//!
//! `launch`: creates N Executions under one approved Permit with the Permit and Execution
//! controllers running (process launcher, the real runner binary, the result callback) and
//! reports, from a watch, the time from each create to its launch (`Running`, the launch
//! record written just before the runner starts) and to its result in status (p50/p99).
//!
//! `memory`: starts the `oauth3-operator` binary on a namespace, creates N Executions there and
//! reports the operator's resident memory once it has reconciled them all.
//!
//! ```sh
//! eval "$(make -s cluster-up)"
//! cargo build --release --bins
//! cargo run --release -p oauth3-operator --example launch_bench -- launch 1000 target/release/oauth3-sandbox-runner
//! cargo run --release -p oauth3-operator --example launch_bench -- launch 1000 target/release/oauth3-sandbox-runner 50/s
//! cargo run --release -p oauth3-operator --example launch_bench -- memory 10000 target/release/oauth3-operator
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use oauth3_crds::{Execution, ExecutionPhase, ExecutionSpec, Permit, PermitSpec};
use oauth3_operator::config::Config;
use oauth3_operator::plugin::{Decision, Plugin};
use oauth3_operator::{Listeners, run};
use serde_json::json;

/// When each Execution was first seen finished, and how it ended.
type Finished = Arc<Mutex<HashMap<String, (Instant, Option<ExecutionPhase>)>>>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(name)
}

fn execution(name: &str, permit: &str) -> anyhow::Result<Execution> {
    let spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": permit, "code": "return 1", "timeoutSeconds": 60
    }))?;
    Ok(Execution::new(name, spec))
}

/// When each create request was sent and when the API server answered it.
type Created = Mutex<HashMap<String, (Instant, Instant)>>;

/// Creates `n` Executions, `concurrency` requests at a time, or one every `interval` when set.
async fn create_all(api: &Api<Execution>, n: usize, permit: &str, pace: Pace, created: &Created) {
    let start = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(pace.concurrency, |i| async move {
            let name = format!("e{i:05}");
            let Ok(e) = execution(&name, permit) else {
                return;
            };
            if let Some(every) = pace.interval {
                tokio::time::sleep_until((start + every * u32::try_from(i).unwrap_or(0)).into())
                    .await;
            }
            let at = Instant::now();
            if api.create(&PostParams::default(), &e).await.is_ok() {
                created
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name, (at, Instant::now()));
            }
        })
        .await;
}

/// How the Executions are created.
#[derive(Clone, Copy, Debug)]
struct Pace {
    concurrency: usize,
    interval: Option<Duration>,
}

impl Pace {
    /// `burst` (8 concurrent creates, as fast as the API server takes them), `serial` (one
    /// create after the other, as fast as they are answered) or `<N>/s`.
    fn parse(s: &str) -> Option<Pace> {
        let flat_out = |concurrency| {
            Some(Pace {
                concurrency,
                interval: None,
            })
        };
        match s {
            "burst" => return flat_out(8),
            "serial" => return flat_out(1),
            _ => {}
        }
        let rate: u32 = s.strip_suffix("/s")?.parse().ok().filter(|r| *r > 0)?;
        Some(Pace {
            concurrency: 64,
            interval: Some(Duration::from_secs(1) / rate),
        })
    }
}

fn report(what: &str, sorted: &[Duration]) {
    println!(
        "{what}: n={} p50={:.1?} p99={:.1?} max={:.1?}",
        sorted.len(),
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        sorted.last().copied().unwrap_or_default()
    );
}

async fn launch(n: usize, runner: String, pace: Pace) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    oauth3_tests::install_crds(&client).await;
    let ns = namespace(&client, "bench-launch").await?;
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "benchmark",
        "capabilities": [{"name": "api", "baseUrl": "https://127.0.0.1:9", "paths": ["/"], "methods": ["GET"]}],
        "validFor": "1h"
    }))?;
    Api::<Permit>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &Permit::new("bench", spec))
        .await?;
    Plugin::new(client.clone(), ns.clone())
        .decide("bench", Decision::Approve)
        .await?;

    // The operator as the binary runs it (leader election off: one replica), in-process.
    let config = Config::try_parse_from([
        "oauth3-operator",
        "--namespace",
        &ns,
        "--leader-elect=false",
        "--metrics-addr=127.0.0.1:0",
        "--callback-addr=127.0.0.1:0",
        "--launcher=process",
        &format!("--runner-binary={runner}"),
        "--deadline-grace=300s",
        "--execution-ttl=24h",
    ])?;
    let listeners = Listeners::bind(&config).await?;
    tokio::spawn(run(
        config,
        client.clone(),
        listeners,
        std::future::pending(),
    ));

    let api: Api<Execution> = Api::namespaced(client.clone(), &ns);
    let created: Arc<Created> = Arc::default();
    let launched: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let finished: Finished = Arc::default();
    {
        let (launched, finished) = (launched.clone(), finished.clone());
        let stream = watcher(api.clone(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(e)) = stream.try_next().await {
                let now = Instant::now();
                let phase = e.status.as_ref().and_then(|s| s.phase);
                if e.status.as_ref().and_then(|s| s.launch.as_ref()).is_some() {
                    launched
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(e.name_any())
                        .or_insert(now);
                }
                if phase.is_some_and(ExecutionPhase::is_terminal) {
                    finished
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(e.name_any())
                        .or_insert((now, phase));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    create_all(&api, n, "bench", pace, &created).await;
    let created_in = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(900);
    while finished.lock().unwrap_or_else(|e| e.into_inner()).len() < n && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = start.elapsed();
    let created = created.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // From the create request being sent (`sent`) or answered (`acked`) to `t`.
    let lat = |m: &HashMap<String, Instant>, acked: bool| {
        let mut v: Vec<Duration> = m
            .iter()
            .filter_map(|(k, t)| {
                created
                    .get(k)
                    .map(|(s, a)| t.saturating_duration_since(if acked { *a } else { *s }))
            })
            .collect();
        v.sort();
        v
    };
    let launched = launched.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let fin = finished.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let done: HashMap<String, Instant> = fin.iter().map(|(k, (t, _))| (k.clone(), *t)).collect();
    let succeeded = fin
        .values()
        .filter(|(_, p)| *p == Some(ExecutionPhase::Succeeded))
        .count();
    let mut create_calls: Vec<Duration> = created.values().map(|(s, a)| *a - *s).collect();
    create_calls.sort();
    println!(
        "namespace {ns}: {n} Executions created ({pace:?}) in {created_in:.1?}, all finished after {total:.1?}"
    );
    println!("succeeded: {succeeded}/{n}");
    report("create request (sent -> answered)", &create_calls);
    report("create sent -> launched", &lat(&launched, false));
    report("create answered -> launched", &lat(&launched, true));
    report("create sent -> result in status", &lat(&done, false));
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn memory(n: usize, operator: String) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    oauth3_tests::install_crds(&client).await;
    let ns = namespace(&client, "bench-memory").await?;
    let mut child = tokio::process::Command::new(operator)
        .args([
            "--namespace",
            &ns,
            "--leader-elect=false",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--callback-addr",
            "127.0.0.1:0",
            "--launcher",
            "process",
            "--log",
            "warn",
        ])
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid).unwrap_or_default();
    let api: Api<Execution> = Api::namespaced(client.clone(), &ns);
    let created = Mutex::new(HashMap::new());
    let start = Instant::now();
    let burst = Pace {
        concurrency: 8,
        interval: None,
    };
    // Executions under a Permit that does not exist: each is reconciled (refused, status
    // written, Event published) and stays cached as a finished object.
    create_all(&api, n, "absent", burst, &created).await;
    println!("created {n} Executions in {:.1?}", start.elapsed());
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let list = api.list(&Default::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|e| e.status.as_ref().and_then(|s| s.phase).is_some())
            .count();
        if done >= n || Instant::now() > deadline {
            println!("{done}/{n} reconciled after {:.1?}", start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    println!(
        "operator RSS: idle {} MiB, with {n} Executions {} MiB ({peak})",
        idle / 1024,
        rss_kib(pid).unwrap_or_default() / 1024
    );
    child.kill().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("launch") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
            let runner = args
                .get(2)
                .cloned()
                .unwrap_or_else(|| "target/release/oauth3-sandbox-runner".into());
            let pace = args.get(3).map_or("burst", String::as_str);
            let Some(pace) = Pace::parse(pace) else {
                anyhow::bail!("pace {pace:?}: expected `burst`, `serial` or a rate like `100/s`");
            };
            launch(n, runner, pace).await
        }
        Some("memory") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
            let operator = args
                .get(2)
                .cloned()
                .unwrap_or_else(|| "target/release/oauth3-operator".into());
            memory(n, operator).await
        }
        _ => {
            eprintln!(
                "usage: launch_bench launch [N] [RUNNER] [burst|serial|<rate>/s] | memory [N] [OPERATOR]"
            );
            std::process::exit(2);
        }
    }
}
