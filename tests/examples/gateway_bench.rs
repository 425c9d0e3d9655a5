//! Gateway benchmark against a real kube-apiserver (see BENCHMARKS.md, "Agent gateway").
//!
//! `wake`: N times, an agent's long-poll (`GET /execute/<permit request>/status?wait=true`) is
//! held by the gateway; the owner's decision is then written straight to the API server, the
//! operator's Permit controller moves the Permit to `Approved`, and the time from the write to
//! the long-poll's answer is measured, next to the time a direct watch of the same Permit sees
//! `Approved` (the gateway's own share is the difference).
//!
//! `execute`: N Executions of `return 1` under one approved Permit, run by the operator
//! (process launcher, the real runner), each once through the gateway (`POST /execute`, then
//! long-polls until `completed`) and once directly (create the Execution, watch until
//! `Succeeded`); p50/p99 of both and of the difference.
//!
//! ```sh
//! eval "$(make -s cluster-up)"
//! cargo build --bins
//! TEST_KUBECONFIG=$KUBECONFIG cargo run -p oauth3-tests --example gateway_bench -- wake 200
//! TEST_KUBECONFIG=$KUBECONFIG cargo run -p oauth3-tests --example gateway_bench -- execute 100
//! ```

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use oauth3_crds::{ApprovalVia, Execution, ExecutionPhase, ExecutionSpec, Permit, PermitPhase};
use oauth3_operator::launcher::process::ProcessLauncherConfig;
use oauth3_operator::plugin::{Decision, record_decision};
use oauth3_tests::bench::{percentile, report};
use oauth3_tests::gateway::{Http, InProcessGateway, Tenant};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{client_or_skip, workspace_binary};
use serde_json::json;

fn permit_body() -> serde_json::Value {
    json!({"description": "bench", "capabilities": [{"type": "scoped-fetch", "name": "api",
        "base_url": "https://api.example.com", "scope": ["items"], "methods": ["GET"]}]})
}

/// Waits on a watch of `name` until `done` holds; returns when it was seen.
async fn watch_until<K>(api: Api<K>, name: String, rv: String, done: fn(&K) -> bool) -> Instant
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(120);
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    while let Some(ev) = stream.try_next().await.unwrap() {
        if let WatchEvent::Added(o) | WatchEvent::Modified(o) = ev
            && done(&o)
        {
            return Instant::now();
        }
    }
    panic!("watch of {name} ended before the change");
}

fn operator(admin: &Client, ns: &str, listener: tokio::net::TcpListener) -> InProcessOperator {
    let runner = ProcessLauncherConfig {
        binary: workspace_binary("oauth3-sandbox-runner", "oauth3-sandbox-runner"),
        extra_args: vec![],
        attestation: oauth3_operator::launcher::pod::PodQuoteProvider::None,
    };
    InProcessOperator::start(
        admin,
        ns,
        listener,
        Launcher::Process(runner),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    )
}

async fn wake(admin: &Client, n: usize) {
    let tenant = Tenant::new(admin, "bench-wake").await;
    let gw = InProcessGateway::start(admin, &["--long-poll=30s"]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let op = operator(admin, &tenant.ns, listener);
    let http = Http::new();
    let permits: Api<Permit> = Api::namespaced(admin.clone(), &tenant.ns);
    let (mut gateway, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let asked = http
            .post(&gw.url("/permit"), Some(&tenant.agent), &permit_body())
            .await;
        let id = asked.body["request_id"].as_str().unwrap().to_owned();
        let name = asked.body["permit_id"].as_str().unwrap().to_owned();
        let rv = permits
            .get(&name)
            .await
            .unwrap()
            .resource_version()
            .unwrap();
        let url = gw.url(&format!("/execute/{id}/status?wait=true"));
        let (h, token) = (http.clone(), tenant.agent.clone());
        let poll = tokio::spawn(async move {
            let a = h.get(&url, Some(&token)).await;
            (
                Instant::now(),
                a.body["status"].as_str().unwrap_or("").to_owned(),
            )
        });
        let watched = tokio::spawn(watch_until(permits.clone(), name.clone(), rv, |p| {
            p.status
                .as_ref()
                .and_then(|s| s.approval.as_ref())
                .is_some()
        }));
        // Let both settle into their hold.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        record_decision(
            admin,
            &tenant.ns,
            &name,
            Decision::Approve,
            "bench",
            ApprovalVia::Web,
        )
        .await
        .unwrap();
        let (answered, status) = poll.await.unwrap();
        let seen = watched.await.unwrap();
        assert_eq!(status, "completed");
        gateway.push(answered - t0);
        direct.push(seen - t0);
    }
    op.stop().await;
    report(
        "decision written -> direct watch sees Approved",
        direct.clone(),
    );
    report(
        "decision written -> gateway long-poll answer",
        gateway.clone(),
    );
    let extra: Vec<Duration> = gateway
        .iter()
        .zip(&direct)
        .map(|(g, d)| g.saturating_sub(*d))
        .collect();
    report("gateway's share (answer - watch event)", extra);
}

async fn execute(admin: &Client, n: usize) {
    let tenant = Tenant::new(admin, "bench-exec").await;
    let gw = InProcessGateway::start(admin, &["--long-poll=30s"]).await;
    let http = Http::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let op = operator(admin, &tenant.ns, listener);
    let asked = http
        .post(&gw.url("/permit"), Some(&tenant.agent), &permit_body())
        .await;
    let id = asked.body["request_id"].as_str().unwrap().to_owned();
    let permit = asked.body["permit_id"].as_str().unwrap().to_owned();
    http.post(
        &gw.url(&format!("/approve/{id}")),
        Some(&tenant.owner),
        &json!({"action": "approve"}),
    )
    .await;
    let permits: Api<Permit> = Api::namespaced(admin.clone(), &tenant.ns);
    for _ in 0..300 {
        let p = permits.get(&permit).await.unwrap();
        if p.status.and_then(|s| s.phase) == Some(PermitPhase::Approved) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let execs: Api<Execution> = Api::namespaced(admin.clone(), &tenant.ns);
    let (mut through, mut direct) = (Vec::new(), Vec::new());
    for i in 0..n {
        // Through the gateway.
        let t0 = Instant::now();
        let run = http
            .post(
                &gw.url("/execute"),
                Some(&tenant.agent),
                &json!({"permit_id": permit, "code": "return 1"}),
            )
            .await;
        let rid = run.body["request_id"].as_str().unwrap().to_owned();
        loop {
            let a = http
                .get(
                    &gw.url(&format!("/execute/{rid}/status?wait=true")),
                    Some(&tenant.agent),
                )
                .await;
            if a.body["status"] == "completed" {
                break;
            }
            assert_ne!(a.body["status"], "failed", "{}", a.text);
        }
        through.push(t0.elapsed());
        // Directly.
        let spec: ExecutionSpec =
            serde_json::from_value(json!({"permitRef": permit, "code": "return 1"})).unwrap();
        let t0 = Instant::now();
        let created = execs
            .create(
                &PostParams::default(),
                &Execution::new(&format!("direct-{i}"), spec),
            )
            .await
            .unwrap();
        watch_until(
            execs.clone(),
            created.name_any(),
            created.resource_version().unwrap(),
            |e| e.status.as_ref().and_then(|s| s.phase) == Some(ExecutionPhase::Succeeded),
        )
        .await;
        direct.push(t0.elapsed());
    }
    report("direct: create -> Succeeded (watch)", direct.clone());
    report("gateway: POST /execute -> completed", through.clone());
    let mut d = direct.clone();
    let mut t = through.clone();
    d.sort();
    t.sort();
    println!(
        "gateway's added latency: p50 {:.2} ms, p99 {:.2} ms",
        (percentile(&t, 50.0).as_secs_f64() - percentile(&d, 50.0).as_secs_f64()) * 1e3,
        (percentile(&t, 99.0).as_secs_f64() - percentile(&d, 99.0).as_secs_f64()) * 1e3,
    );
    op.stop().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("wake");
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let Some(admin) = client_or_skip().await else {
        eprintln!("set TEST_KUBECONFIG (eval \"$(make -s cluster-up)\")");
        std::process::exit(2);
    };
    match mode {
        "wake" => wake(&admin, n).await,
        "execute" => execute(&admin, n).await,
        other => {
            eprintln!("unknown mode {other}: wake | execute");
            std::process::exit(2);
        }
    }
}
