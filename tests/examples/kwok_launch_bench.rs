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
//! With `OAUTH3_PEER_CONTROLLER` (a controller binary of kubernetes-sigs/agent-sandbox, built
//! outside this repository) and `OAUTH3_PEER_CRDS` (its CRD YAML, a file or a directory) set,
//! the same is measured for that peer too, run for run interleaved with the operator's
//! (oauth3, peer, oauth3, peer, ...): its CRDs are applied, and each peer run starts the peer
//! controller as a process on the same API server (cluster-wide, no leader election, no metrics
//! or probe listeners), waits until it has launched one warm-up Sandbox (so its start-up and
//! cache sync are not measured), then creates N Sandboxes (one container, no Service, no
//! volumes) at the pace and measures each Sandbox's Pod (named as the Sandbox) in the same way.
//!
//! ```sh
//! cargo build -p oauth3-tests --example kwok_launch_bench -p oauth3-operator --bin kubectl-oauth3
//! bash tests/cluster/control-plane.sh run target/debug/examples/kwok_launch_bench 200 3
//! OAUTH3_PEER_CONTROLLER=/path/agent-sandbox-controller OAUTH3_PEER_CRDS=/path/k8s/crds \
//!   bash tests/cluster/control-plane.sh run target/debug/examples/kwok_launch_bench 200 3
//! ```
//! Arguments: launches per run (default 200), runs per pace and contender (default 3). Prints
//! each run's p50/p99 and, per pace and contender, the median over the runs.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use oauth3_crds::{Execution, ExecutionSpec};
use oauth3_operator::launcher::pod::{PodLaunchConfig, run_object_name};
use oauth3_tests::approved_permit;
use oauth3_tests::bench::{Pace, drive, pct, pod_ready, request_counts};
use oauth3_tests::kwok::{Kwok, bind_pod};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{
    TEST_FIELD_MANAGER, apply_dev_sealed_secret, client_or_skip, ensure_runtime_class, namespace,
};
use serde::Deserialize;
use serde_json::json;

/// When each sandbox Pod was first seen, and seen Ready.
#[derive(Default)]
struct Seen {
    created: BTreeMap<String, Instant>,
    ready: BTreeMap<String, Instant>,
}

type Shared = Arc<Mutex<Seen>>;

/// One run's latencies (from each create request sent) and its requests per launch.
struct RunResult {
    to_created: Vec<Duration>,
    to_ready: Vec<Duration>,
    requests: BTreeMap<String, f64>,
}

/// What launches the sandboxes in a run.
#[derive(Clone, Copy)]
enum Contender<'a> {
    /// The operator, in-process, with the pod launcher: one Execution per launch.
    Oauth3(&'a PodLaunchConfig),
    /// The peer controller, as a process: one Sandbox per launch.
    Peer(&'a Peer),
}

impl Contender<'_> {
    fn label(self) -> &'static str {
        match self {
            Self::Oauth3(_) => "oauth3",
            Self::Peer(_) => "peer",
        }
    }
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
    let peer = Peer::from_env(&client).await;
    let mut contenders = vec![Contender::Oauth3(&config)];
    contenders.extend(peer.as_ref().map(Contender::Peer));
    let mut summary = Vec::new();
    for pace in [Pace::Serial, Pace::PerSecond(20)] {
        let mut results: Vec<Vec<RunResult>> = contenders.iter().map(|_| Vec::new()).collect();
        for run in 0..runs {
            for (who, done) in contenders.iter().zip(&mut results) {
                let r = one_run(&client, &kwok.node, *who, pace, n).await;
                print_run(pace, who.label(), run, n, &r);
                done.push(r);
            }
        }
        for (who, done) in contenders.iter().zip(results) {
            summary.push((pace, who.label(), done));
        }
    }
    println!("\nmedian of {runs} runs, {n} launches each:");
    for (pace, who, results) in &summary {
        let med = |f: &dyn Fn(&RunResult) -> Duration| {
            let mut v: Vec<Duration> = results.iter().map(f).collect();
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e3
        };
        println!(
            "{pace:<7} {who:<6} created -> Pod created p50 {:>7.1} ms p99 {:>7.1} ms | -> Pod Ready p50 {:>7.1} ms p99 {:>7.1} ms",
            med(&|r| pct(&r.to_created, 50.0)),
            med(&|r| pct(&r.to_created, 99.0)),
            med(&|r| pct(&r.to_ready, 50.0)),
            med(&|r| pct(&r.to_ready, 99.0)),
        );
    }
    kwok.stop().await;
}

fn print_run(pace: Pace, who: &str, run: usize, n: usize, r: &RunResult) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{pace:<7} {who:<6} run {run}: {}/{n} created p50 {:.1} p99 {:.1} ms; {}/{n} Ready p50 {:.1} p99 {:.1} ms",
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
    println!("        API requests per launch: {}", line.join(", "));
}

/// Creates launch `i`'s object (an Execution or a Sandbox); resolves once the create returned.
type Create = Box<dyn Fn(usize) -> BoxFuture<'static, ()> + Send + Sync>;

/// What a run's contender needs stopped once the run is over.
enum Running {
    Oauth3(InProcessOperator),
    Peer(PeerProcess),
}

impl Running {
    async fn stop(self) {
        match self {
            Self::Oauth3(op) => op.stop().await,
            Self::Peer(p) => p.stop().await,
        }
    }
}

/// A fresh namespace and a fresh `who`; `n` launches at `pace`.
async fn one_run(
    client: &Client,
    node: &str,
    who: Contender<'_>,
    pace: Pace,
    n: usize,
) -> RunResult {
    let ns = namespace(client, "kwok-bench").await;
    let seen: Shared = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let watch = spawn_pod_watch(client.clone(), ns.clone(), node.to_owned(), seen.clone(), {
        let notify = notify.clone();
        move || notify.notify_waiters()
    });
    let sent: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let (running, create, pod_of): (Running, Create, fn(usize) -> String) = match who {
        Contender::Oauth3(config) => {
            let op = start_oauth3(client, &ns, config).await;
            let create = create_executions(client, &ns, &sent);
            (Running::Oauth3(op), create, |i| {
                run_object_name(&format!("bench-{i}"))
            })
        }
        Contender::Peer(peer) => {
            let process = peer.start(&ns);
            peer.warm_up(client, &ns, &process, &seen, &notify).await;
            let create = peer.create_sandboxes(client, &ns, &sent);
            (Running::Peer(process), create, |i| format!("bench-{i}"))
        }
    };
    let before = request_counts(client).await;
    drive(pace, n, &notify, create, |i| {
        seen.lock().unwrap().ready.contains_key(&pod_of(i))
    })
    .await;
    let after = request_counts(client).await;
    watch.abort();
    running.stop().await;
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

/// The operator on `ns` with an approved Permit `bench` and the bundle's Secret.
async fn start_oauth3(client: &Client, ns: &str, config: &PodLaunchConfig) -> InProcessOperator {
    apply_dev_sealed_secret(client, ns, "api-token", "API_TOKEN", "sk-bench", [5u8; 32]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let op = InProcessOperator::start(
        client,
        ns,
        listener,
        Launcher::Pod(Box::new(config.clone())),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    approved_permit(client, ns, "bench").await;
    op
}

/// Launch `i` is Execution `bench-{i}` under Permit `bench`; notes in `sent` (by its Pod's
/// name) when its create request is sent.
fn create_executions(
    client: &Client,
    ns: &str,
    sent: &Arc<Mutex<BTreeMap<String, Instant>>>,
) -> Create {
    let execs: Api<Execution> = Api::namespaced(client.clone(), ns);
    let sent = sent.clone();
    Box::new(move |i| {
        let (execs, sent) = (execs.clone(), sent.clone());
        Box::pin(async move {
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
        })
    })
}

/// The peer controller (kubernetes-sigs/agent-sandbox): its binary and the Sandbox resource
/// its CRD serves.
struct Peer {
    binary: PathBuf,
    sandbox: ApiResource,
}

/// A running peer controller process and where its log goes.
struct PeerProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl PeerProcess {
    /// The tail of the controller's log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or(&text).to_owned()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Peer {
    /// The peer from `OAUTH3_PEER_CONTROLLER` and `OAUTH3_PEER_CRDS`, its CRDs applied and
    /// served; `None` when either is unset.
    ///
    /// # Panics
    /// When the CRDs cannot be read or applied, or define no `Sandbox`.
    async fn from_env(client: &Client) -> Option<Peer> {
        let binary = PathBuf::from(std::env::var_os("OAUTH3_PEER_CONTROLLER")?);
        let crds = PathBuf::from(std::env::var_os("OAUTH3_PEER_CRDS")?);
        assert!(
            binary.is_file(),
            "OAUTH3_PEER_CONTROLLER {} is no file",
            binary.display()
        );
        let crds = read_crds(&crds);
        let sandbox = crds
            .iter()
            .find_map(sandbox_resource)
            .expect("OAUTH3_PEER_CRDS defines a Sandbox");
        apply_crds(client, &crds).await;
        let all: Api<DynamicObject> = Api::all_with(client.clone(), &sandbox);
        for _ in 0..100 {
            if all.list(&ListParams::default().limit(1)).await.is_ok() {
                return Some(Peer { binary, sandbox });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{} not served within 10s of being Established",
            sandbox.plural
        );
    }

    /// Starts the controller on the control plane of `TEST_KUBECONFIG`, all namespaces,
    /// without leader election or metrics and probe listeners; its log in the temp dir.
    fn start(&self, ns: &str) -> PeerProcess {
        let kubeconfig = std::env::var_os("TEST_KUBECONFIG").expect("TEST_KUBECONFIG");
        let log = std::env::temp_dir().join(format!("oauth3-peer-{ns}.log"));
        let file = std::fs::File::create(&log).expect("peer log file");
        let child = tokio::process::Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "--leader-elect=false",
                "--metrics-bind-address=0",
                "--health-probe-bind-address=0",
            ])
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        PeerProcess { child, log }
    }

    /// Sandbox `name` in `ns`: one container, no Service, no volumes.
    fn sandbox(&self, name: &str) -> DynamicObject {
        DynamicObject::new(name, &self.sandbox).data(json!({"spec": {
            "podTemplate": {"spec": {"containers": [
                {"name": "sandbox", "image": "registry.k8s.io/pause:3.10"}
            ]}}
        }}))
    }

    /// Launches Sandbox `warm-up` in `ns` and waits (60 s at most) until its Pod is Ready and a
    /// moment longer, so the controller is started, synced and done with it.
    ///
    /// # Panics
    /// When the controller exits or the Pod is not Ready in time.
    async fn warm_up(
        &self,
        client: &Client,
        ns: &str,
        process: &PeerProcess,
        seen: &Shared,
        notify: &tokio::sync::Notify,
    ) {
        let sandboxes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &self.sandbox);
        sandboxes
            .create(&PostParams::default(), &self.sandbox("warm-up"))
            .await
            .unwrap_or_else(|e| panic!("creating the warm-up Sandbox: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen.lock().unwrap().ready.contains_key("warm-up") {
            assert!(
                Instant::now() < deadline,
                "the peer's warm-up Pod not Ready within 60s: {}",
                process.log_tail()
            );
            let _ = tokio::time::timeout(Duration::from_millis(20), notify.notified()).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Launch `i` is Sandbox `bench-{i}` (its Pod is named as it); notes in `sent` when its
    /// create request is sent.
    fn create_sandboxes(
        &self,
        client: &Client,
        ns: &str,
        sent: &Arc<Mutex<BTreeMap<String, Instant>>>,
    ) -> Create {
        let sandboxes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &self.sandbox);
        let template = self.sandbox("template");
        let sent = sent.clone();
        Box::new(move |i| {
            let (sandboxes, sent) = (sandboxes.clone(), sent.clone());
            let mut sandbox = template.clone();
            let name = format!("bench-{i}");
            sandbox.metadata.name = Some(name.clone());
            Box::pin(async move {
                sent.lock().unwrap().insert(name, Instant::now());
                sandboxes
                    .create(&PostParams::default(), &sandbox)
                    .await
                    .unwrap();
            })
        })
    }
}

/// Every CRD in `path` (a YAML file of one or more documents, or a directory of such files).
///
/// # Panics
/// When a file cannot be read or a document is no CRD.
fn read_crds(path: &Path) -> Vec<CustomResourceDefinition> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut crds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            crds.push(
                serde_yaml::from_value(value)
                    .unwrap_or_else(|e| panic!("a CRD in {}: {e}", file.display())),
            );
        }
    }
    crds
}

/// The namespaced `Sandbox` resource `crd` defines (its storage version), if it is that CRD.
fn sandbox_resource(crd: &CustomResourceDefinition) -> Option<ApiResource> {
    let spec = &crd.spec;
    if spec.names.kind != "Sandbox" || spec.scope != "Namespaced" {
        return None;
    }
    let version = spec.versions.iter().find(|v| v.storage)?;
    let gvk = GroupVersionKind::gvk(&spec.group, &version.name, &spec.names.kind);
    Some(ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural))
}

/// Applies `crds` (server-side, forced) and waits until each is Established.
///
/// # Panics
/// When one is refused or not Established within 60 seconds.
async fn apply_crds(client: &Client, crds: &[CustomResourceDefinition]) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply(TEST_FIELD_MANAGER).force();
    for crd in crds {
        let name = crd.name_any();
        let mut crd = crd.clone();
        crd.metadata.managed_fields = None;
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established within 60s"))
            .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
    }
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
