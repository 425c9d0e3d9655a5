//! Leader election against a real API server: of two candidates on one Lease exactly one leads;
//! when the leader crashes (stops renewing without releasing) the other takes over only after
//! the Lease expires; a graceful release hands over at once; and with two real operator
//! processes, killing the leader (SIGKILL) loses no work: a Permit created after the kill gets
//! its status, and an Execution submitted while nobody leads is run by the new leader.

use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, PostParams};
use oauth3_crds::{Execution, ExecutionPhase, ExecutionSpec, Permit, PermitPhase};
use oauth3_operator::leader::{LEASE_NAME, LeaderConfig, LeaderElector};
use oauth3_operator::plugin::{Decision, Plugin};
use oauth3_tests::{client_or_skip, namespace};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// One elector running in this process.
struct Candidate {
    identity: String,
    leading: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Candidate {
    fn leads(&self) -> bool {
        *self.leading.borrow()
    }

    /// Stops gracefully: the elector releases the Lease.
    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("elector stops within 10s")
            .expect("elector task did not panic");
    }

    /// Simulates a crash: the elector stops at once, without releasing the Lease.
    fn crash(self) {
        self.task.abort();
    }
}

fn start(client: &Client, ns: &str, identity: &str, lease_duration: Duration) -> Candidate {
    let config = LeaderConfig {
        lease_duration,
        renew_interval: Duration::from_millis(300),
        retry_interval: Duration::from_millis(200),
        ..LeaderConfig::new(ns, identity)
    };
    let elector = LeaderElector::new(client.clone(), config).expect("valid settings");
    let leading = elector.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(elector.run(async move {
        let _ = stopped.await;
    }));
    Candidate {
        identity: identity.to_owned(),
        leading,
        stop: Some(stop),
        task,
    }
}

/// Waits until `ok` holds, checking every 50 ms, failing after `limit`.
async fn eventually(what: &str, limit: Duration, ok: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "not {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

async fn lease(client: &Client, ns: &str) -> Lease {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get(LEASE_NAME)
        .await
        .expect("reading the Lease")
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

fn transitions(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

/// Starts two candidates and returns them as (leader, standby) once exactly one leads.
async fn elect_one(client: &Client, ns: &str, lease_duration: Duration) -> (Candidate, Candidate) {
    let a = start(client, ns, "candidate-a", lease_duration);
    let b = start(client, ns, "candidate-b", lease_duration);
    eventually("someone leading", Duration::from_secs(10), || {
        a.leads() || b.leads()
    })
    .await;
    // Watch for a while: never both.
    for _ in 0..30 {
        assert!(!(a.leads() && b.leads()), "two leaders at once");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.leads() != b.leads(), "exactly one leads");
    if a.leads() { (a, b) } else { (b, a) }
}

#[tokio::test]
async fn exactly_one_of_two_candidates_leads_and_holds_the_lease() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "leader-one").await;
    let (leader, standby) = elect_one(&client, &ns, Duration::from_secs(3)).await;
    let l = lease(&client, &ns).await;
    assert_eq!(holder(&l), Some(leader.identity.clone()));
    assert_eq!(
        l.spec.as_ref().and_then(|s| s.lease_duration_seconds),
        Some(3)
    );
    // The leader keeps renewing: still the holder after more than a lease duration.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(leader.leads() && !standby.leads());
    assert_eq!(
        holder(&lease(&client, &ns).await),
        Some(leader.identity.clone())
    );
    leader.shut_down().await;
    standby.shut_down().await;
}

#[tokio::test]
async fn after_a_leader_crash_the_standby_takes_over_only_once_the_lease_expired() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "leader-crash").await;
    let lease_duration = Duration::from_secs(3);
    let (leader, standby) = elect_one(&client, &ns, lease_duration).await;
    let before = transitions(&lease(&client, &ns).await);
    let crashed = leader.identity.clone();
    leader.crash();

    let took = eventually("taken over", Duration::from_secs(10), || standby.leads()).await;
    // The last renewal was at most one renew interval (300 ms) before the crash, so the Lease
    // cannot have expired sooner than lease_duration - 300 ms after it.
    assert!(
        took >= lease_duration - Duration::from_millis(400),
        "took over after {took:?}, before the crashed leader's Lease expired"
    );
    let l = lease(&client, &ns).await;
    assert_eq!(holder(&l), Some(standby.identity.clone()));
    assert_ne!(holder(&l), Some(crashed));
    assert_eq!(transitions(&l), before + 1, "the takeover is counted");
    standby.shut_down().await;
}

#[tokio::test]
async fn a_graceful_release_hands_over_without_waiting_for_expiry() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "leader-release").await;
    let lease_duration = Duration::from_secs(15);
    let (leader, standby) = elect_one(&client, &ns, lease_duration).await;
    let before = transitions(&lease(&client, &ns).await);
    let released_at = Instant::now();
    leader.shut_down().await;
    let took = eventually("taken over", Duration::from_secs(5), || standby.leads()).await;
    let since_release = released_at.elapsed();
    assert!(
        since_release < Duration::from_secs(3),
        "handover took {since_release:?} ({took:?} after shutdown returned), \
         nearly a lease duration"
    );
    let l = lease(&client, &ns).await;
    assert_eq!(holder(&l), Some(standby.identity.clone()));
    assert_eq!(transitions(&l), before + 1);

    standby.shut_down().await;
    assert_eq!(
        holder(&lease(&client, &ns).await),
        None,
        "the last leader released the Lease on shutdown"
    );
}

// ---- Two operator processes ----

/// A running `oauth3-operator` process; killed (SIGKILL) when dropped.
struct Operator {
    identity: String,
    http: std::net::SocketAddr,
    child: tokio::process::Child,
}

/// `GET path` on the operator's HTTP endpoint: (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the operator");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending the request");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .await
        .expect("reading the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn spawn_operator(ns: &str, identity: &str) -> Operator {
    let kubeconfig = std::env::var_os("TEST_KUBECONFIG").expect("TEST_KUBECONFIG");
    let log_dir = std::env::temp_dir();
    let log = std::fs::File::create(log_dir.join(format!("{ns}-{identity}.log")))
        .expect("operator log file");
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_oauth3-operator"))
        .env("KUBECONFIG", kubeconfig)
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .args(["--namespace", ns, "--lease-namespace", ns])
        .args(["--identity", identity])
        .args(["--metrics-addr", &http.to_string()])
        .args(["--callback-addr", "127.0.0.1:0", "--launcher", "process"])
        .arg(format!(
            "--runner-binary={}",
            oauth3_tests::workspace_binary("oauth3-sandbox-runner", "oauth3-sandbox-runner")
                .display()
        ))
        .args(["--lease-duration", "3s"])
        .args(["--lease-renew-interval", "500ms"])
        .args(["--lease-retry-interval", "300ms"])
        .args(["--log", "info"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file handle"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starting oauth3-operator");
    Operator {
        identity: identity.to_owned(),
        http,
        child,
    }
}

fn permit(name: &str) -> Permit {
    serde_json::from_value(json!({
        "apiVersion": "oauth3.dev/v1alpha1",
        "kind": "Permit",
        "metadata": {"name": name},
        "spec": {
            "description": "List issues",
            "capabilities": [{
                "name": "github",
                "baseUrl": "https://api.github.com",
                "paths": ["/repos/o/r/issues"],
                "methods": ["GET"]
            }],
            "validFor": "1h"
        }
    }))
    .expect("a valid Permit")
}

/// Polls until the Permit is Pending with a spec digest.
async fn wait_pending_with_digest(api: &Api<Permit>, name: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let p = api.get(name).await.expect("reading the Permit");
        let status = p.status.as_ref();
        if status.and_then(|s| s.phase) == Some(PermitPhase::Pending)
            && status
                .and_then(|s| s.spec_digest.as_deref())
                .is_some_and(|d| d.starts_with("sha256:"))
        {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{name} not Pending with a digest within {limit:?}: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_holder(client: &Client, ns: &str, among: &[&str], limit: Duration) -> String {
    let api = Api::<Lease>::namespaced(client.clone(), ns);
    let start = Instant::now();
    loop {
        if let Some(h) = api
            .get_opt(LEASE_NAME)
            .await
            .expect("reading the Lease")
            .as_ref()
            .and_then(holder)
            && among.contains(&h.as_str())
        {
            return h;
        }
        assert!(
            start.elapsed() < limit,
            "no leader among {among:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the Execution until it has finished; returns its phase.
async fn wait_finished(api: &Api<Execution>, name: &str, limit: Duration) -> ExecutionPhase {
    let start = Instant::now();
    loop {
        let e = api.get(name).await.expect("reading the Execution");
        if let Some(phase) = e
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .filter(|p| p.is_terminal())
        {
            return phase;
        }
        assert!(
            start.elapsed() < limit,
            "{name} not finished within {limit:?}: {:?}",
            e.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn execution(name: &str, permit: &str) -> Execution {
    let spec: ExecutionSpec =
        serde_json::from_value(json!({"permitRef": permit, "code": "return 6 * 7"}))
            .expect("a valid Execution");
    Execution::new(name, spec)
}

#[tokio::test]
async fn killing_the_leading_operator_process_loses_no_work() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "leader-procs").await;
    let a = spawn_operator(&ns, "operator-a");
    let b = spawn_operator(&ns, "operator-b");
    let first = wait_holder(
        &client,
        &ns,
        &["operator-a", "operator-b"],
        Duration::from_secs(30),
    )
    .await;
    let (mut leader, standby) = if first == a.identity { (a, b) } else { (b, a) };

    let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
    permits
        .create(&PostParams::default(), &permit("before-kill"))
        .await
        .expect("creating the first Permit");
    wait_pending_with_digest(&permits, "before-kill", Duration::from_secs(30)).await;
    // The owner approves it (as the plugin does), and the leader runs one Execution under it.
    Plugin::new(client.clone(), ns.clone())
        .decide("before-kill", Decision::Approve)
        .await
        .expect("approving");
    let execs: Api<Execution> = Api::namespaced(client.clone(), &ns);
    execs
        .create(
            &PostParams::default(),
            &execution("run-before", "before-kill"),
        )
        .await
        .expect("creating the first Execution");
    assert_eq!(
        wait_finished(&execs, "run-before", Duration::from_secs(30)).await,
        ExecutionPhase::Succeeded
    );

    leader.child.start_kill().expect("SIGKILL the leader");
    leader.child.wait().await.expect("the leader exited");
    permits
        .create(&PostParams::default(), &permit("after-kill"))
        .await
        .expect("creating the second Permit");
    execs
        .create(
            &PostParams::default(),
            &execution("run-after", "before-kill"),
        )
        .await
        .expect("creating an Execution while nobody leads");

    let next = wait_holder(
        &client,
        &ns,
        &[standby.identity.as_str()],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(next, standby.identity);
    wait_pending_with_digest(&permits, "after-kill", Duration::from_secs(30)).await;
    // Work submitted while nobody led is done by the new leader, once.
    let done = wait_finished(&execs, "run-after", Duration::from_secs(30)).await;
    assert_eq!(done, ExecutionPhase::Succeeded);
    let run = execs.get("run-after").await.expect("reading the Execution");
    assert_eq!(
        run.status.as_ref().and_then(|s| s.result.clone()),
        Some(json!(42))
    );

    // The new leader says so on /metrics, counts its reconciles, and is ready.
    let (status, metrics) = get(standby.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.lines().any(|l| l == "oauth3_leader 1"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("oauth3_reconciles_total{controller=\"permit\"}")),
        "{metrics}"
    );
    let (status, body) = get(standby.http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    drop(standby);
}
