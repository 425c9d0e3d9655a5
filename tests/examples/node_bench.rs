//! Real-node benchmark (see BENCHMARKS.md, "Sandbox Pods on a real node"): N Executions, one
//! after the other, each run by the operator's pod launcher in a sandbox Pod on the node
//! `tests/cluster/node.sh` started (containerd + runc, the kubelet, kube-scheduler,
//! kube-proxy, kube-router), the same fixture as `tests/tests/node_pods.rs`. For each, from the
//! create request: the sandbox Pod's runner container running (the kubelet's `startedAt`, as
//! the watch sees it), its one capability call arriving at the recording upstream, and the
//! result in the Execution's status (`Succeeded`); p50/p99.
//! With `pool` as the second argument, a SandboxPool of 2 keeps booted members, and each
//! Execution is created once a member is ready: the runner is already running, so only the
//! time to the result is reported, with how many ran on a member.
//!
//! ```sh
//! make test-node   # once: builds and caches everything
//! OAUTH3_CLUSTER_DIR=$PWD/.cluster-node bash tests/cluster/control-plane.sh run \
//!   bash tests/cluster/node.sh run cargo run --release -p oauth3-tests --example node_bench -- 50
//! ```

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::watcher;
use oauth3_crds::{Execution, ExecutionPhase};
use oauth3_tests::bench::report;
use oauth3_tests::node::NodeFixture;

type Seen = Arc<Mutex<BTreeMap<String, Instant>>>;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let pool = std::env::args().nth(2).as_deref() == Some("pool");
    let f = NodeFixture::start("node-bench", "128Mi")
        .await
        .expect("a node and a control plane (see the usage above)");
    let pools: Api<oauth3_crds::SandboxPool> = Api::namespaced(f.client.clone(), &f.ns);
    if pool {
        let spec: oauth3_crds::SandboxPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "oauth3.dev/v1alpha1", "kind": "SandboxPool",
            "metadata": {"name": "bench"}, "spec": {"replicas": 2}
        }))
        .unwrap();
        pools
            .create(&kube::api::PostParams::default(), &spec)
            .await
            .unwrap();
    }
    let mut hits = 0;
    let running: Seen = Arc::default();
    let finished: Seen = Arc::default();
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), &f.ns);
    let execs: Api<Execution> = Api::namespaced(f.client.clone(), &f.ns);
    {
        let running = running.clone();
        let stream = watcher(pods, watcher::Config::default());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                    continue;
                };
                let started = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c.state
                                .as_ref()
                                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                        })
                    });
                if started {
                    running
                        .lock()
                        .unwrap()
                        .entry(p.name_any())
                        .or_insert_with(Instant::now);
                }
            }
        });
    }
    {
        let finished = finished.clone();
        let stream = watcher(execs, watcher::Config::default());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                let (watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = ev else {
                    continue;
                };
                if e.status.as_ref().and_then(|s| s.phase).is_some_and(|p| {
                    !matches!(p, ExecutionPhase::Pending | ExecutionPhase::Running)
                }) {
                    finished
                        .lock()
                        .unwrap()
                        .entry(e.name_any())
                        .or_insert_with(Instant::now);
                }
            }
        });
    }
    let (mut to_running, mut to_call, mut to_result) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let name = format!("bench-{i}");
        let pod = oauth3_operator::launcher::pod::run_object_name(&name);
        if pool {
            oauth3_tests::node::eventually("a ready pool member", 120, || {
                let pools = pools.clone();
                async move { (pools.get("bench").await.ok()?.status?.ready >= 1).then_some(()) }
            })
            .await;
        }
        let t0 = Instant::now();
        f.execute(&name, "await api('GET', '/items'); return 1", 60)
            .await;
        let done = f.finished(&name, 120).await;
        assert_eq!(
            done.status.as_ref().and_then(|s| s.phase),
            Some(ExecutionPhase::Succeeded),
            "{name}: {:?}",
            done.status.as_ref().and_then(|s| s.message.clone())
        );
        if done
            .status
            .as_ref()
            .and_then(|s| s.launch.as_ref())
            .is_some_and(|l| l.pool.is_some())
        {
            hits += 1;
        }
        // The watch may see the phase a moment before the poll in `finished` does.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let at = |seen: &Seen, key: &str| seen.lock().unwrap().get(key).copied();
        if let Some(t) = at(&running, &pod) {
            to_running.push(t.saturating_duration_since(t0));
        }
        if let Some(t) = at(&finished, &name) {
            to_result.push(t.saturating_duration_since(t0));
        }
        if let Some(call) = f.permitted.requests().get(i) {
            to_call.push(call.received_at.saturating_duration_since(t0));
        }
        eprint!(".");
    }
    eprintln!();
    println!(
        "{n} Executions, serial, on node {}{}",
        f.env.node,
        if pool {
            format!(", {hits} on a pool member")
        } else {
            String::new()
        }
    );
    if !pool {
        report("created -> runner container running", to_running);
    }
    report("created -> first capability call (upstream)", to_call);
    report("created -> result (Succeeded)", to_result);
    f.stop().await;
}
