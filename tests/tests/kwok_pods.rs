//! The pod launcher with a node (kwok tier): the Execution controller on a real kube-apiserver
//! launches the sandbox Pod, the Pod is bound to a kwok-managed fake Node and goes Running, its
//! stored Pod and NetworkPolicy are exactly as designed, and after the runner's result the Pod
//! is really gone (its deletion confirmed by the node, as a kubelet would) with its bundle
//! Secret. A Pod the node ends before the runner reports (killed for memory) ends its
//! Execution at once, `Failed` with what the node said, and is cleaned up; a Pod stuck before
//! running (image not pulled) is named in the Execution's status until it times out, and is
//! cleaned up then too.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use oauth3_crds::constants::LABEL_EXECUTION;
use oauth3_crds::{Execution, ExecutionPhase, ExecutionSpec, Permit, PermitPhase, PermitSpec};
use oauth3_operator::egress::EgressMode;
use oauth3_operator::launcher::pod::{PodLaunchConfig, RUNNER_UID, run_object_name};
use oauth3_tests::kwok::{Kwok, bind_pod};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{
    apply_dev_sealed_secret, client_or_skip, ensure_runtime_class, namespace, post_json,
    workspace_binary,
};
use serde_json::{Value, json};

const SANDBOX: &str = "oauth3-run-in-node";

/// Polls `what` every 100 ms for up to 30 s until it returns `Some`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 30s");
}

fn phase(e: &Execution) -> Option<ExecutionPhase> {
    e.status.as_ref().and_then(|s| s.phase)
}

/// The callback token the operator put in the sandbox's bundle Secret (what the runner in the
/// Pod would read).
async fn callback_token(secrets: &Api<Secret>, sandbox: &str) -> String {
    let bundle = secrets.get(sandbox).await.expect("bundle secret");
    let raw = bundle.data.expect("data")["bundle.json"].0.clone();
    let bundle: Value = serde_json::from_slice(&raw).expect("bundle json");
    bundle["callback"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// A Succeeded result as a runner posts it.
fn runner_result(ns: &str, name: &str, uid: &str) -> Value {
    json!({"execution": {"namespace": ns, "name": name, "uid": uid},
        "phase": "Succeeded", "result": 1, "stdout": "", "stderr": "", "calls": [],
        "durationMs": 3, "codeDigest": "sha256:x", "permitDigest": "sha256:y", "rateBudget": {},
        "attestation": {"kind": "none"}, "statementDigest": "sha256:z"})
}

/// Waits for Execution `name` to reach a terminal phase.
async fn ended(execs: &Api<Execution>, name: &str) -> Execution {
    eventually(&format!("Execution {name} ended"), || {
        let execs = execs.clone();
        async move {
            let e = execs.get(name).await.expect("execution");
            phase(&e)
                .is_some_and(ExecutionPhase::is_terminal)
                .then_some(e)
        }
    })
    .await
}

/// Waits until the sandbox Pod and its bundle Secret are both really gone.
async fn sandbox_gone(pods: &Api<Pod>, secrets: &Api<Secret>, sandbox: &str) {
    eventually("sandbox Pod and bundle Secret deleted", || async move {
        let pod = pods.get_opt(sandbox).await.expect("read pod");
        let bundle = secrets.get_opt(sandbox).await.expect("read secret");
        (pod.is_none() && bundle.is_none()).then_some(())
    })
    .await;
}

/// The operator (pod launcher) on a fresh namespace with a kwok node, an approved Permit and
/// one Execution whose sandbox Pod has been created (and not yet bound: there is no
/// scheduler).
struct Fixture {
    client: kube::Client,
    kwok: Kwok,
    ns: String,
    /// The callback's base URL.
    base: String,
    op: InProcessOperator,
    config: PodLaunchConfig,
    execs: Api<Execution>,
    pods: Api<Pod>,
    /// The Execution's uid.
    uid: String,
}

async fn fixture(prefix: &str, exec_name: &str, timeout: u32, grace: u64) -> Option<Fixture> {
    fixture_with(
        prefix,
        exec_name,
        timeout,
        grace,
        EgressMode::Open,
        "https://api.github.com",
    )
    .await
}

/// [`fixture`] with the pod launcher's egress mode and the Permit's base URL.
async fn fixture_with(
    prefix: &str,
    exec_name: &str,
    timeout: u32,
    grace: u64,
    egress: EgressMode,
    base_url: &str,
) -> Option<Fixture> {
    let client = client_or_skip().await?;
    let kwok = Kwok::start(&client, prefix).await?;
    let ns = namespace(&client, prefix).await;
    let config = PodLaunchConfig {
        egress,
        ..PodLaunchConfig::default()
    };
    ensure_runtime_class(&client, &config.runtime_class_name).await;
    apply_dev_sealed_secret(
        &client,
        &ns,
        "api-token",
        "API_TOKEN",
        "sk-kwok-7a1e",
        [5u8; 32],
    )
    .await;

    // The operator: Permit and Execution controllers with the pod launcher, and the callback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let op = InProcessOperator::start(
        &client,
        &ns,
        listener,
        Launcher::Pod(Box::new(config.clone())),
        Duration::from_secs(grace),
        Duration::from_secs(3600),
    );

    // The owner approves the Permit with the plugin; the agent submits an Execution.
    let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "kwok",
        "capabilities": [{"name": "api", "baseUrl": base_url,
            "paths": ["/repos/o/r/issues"], "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}}],
        "secrets": ["API_TOKEN"], "validFor": "1h"
    }))
    .expect("permit spec");
    permits
        .create(&PostParams::default(), &Permit::new("issues", spec))
        .await
        .expect("permit");
    let permit_in = |want: PermitPhase| {
        let permits = permits.clone();
        move || {
            let permits = permits.clone();
            async move {
                let p = permits.get("issues").await.ok()?;
                (p.status.as_ref().and_then(|s| s.phase) == Some(want)).then_some(())
            }
        }
    };
    eventually("Permit Pending", permit_in(PermitPhase::Pending)).await;
    let out = std::process::Command::new(workspace_binary("oauth3-operator", "kubectl-oauth3"))
        .env(
            "KUBECONFIG",
            std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
        )
        .args(["-n", &ns, "approve", "issues"])
        .output()
        .expect("plugin runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("Permit Approved", permit_in(PermitPhase::Approved)).await;
    let exec_spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "issues", "code": "return 1", "timeoutSeconds": timeout
    }))
    .expect("execution spec");
    let execs: Api<Execution> = Api::namespaced(client.clone(), &ns);
    let exec = execs
        .create(
            &PostParams::default(),
            &Execution::new(exec_name, exec_spec),
        )
        .await
        .expect("execution");
    let uid = exec.metadata.uid.clone().expect("uid");

    // The sandbox is created once and waits for a node: there is no scheduler.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sandbox = run_object_name(exec_name);
    let pending = eventually("sandbox Pod created", || {
        let (pods, sandbox) = (pods.clone(), sandbox.clone());
        async move { pods.get_opt(&sandbox).await.expect("read pod") }
    })
    .await;
    assert_eq!(
        pending.spec.as_ref().and_then(|s| s.node_name.clone()),
        None,
        "nothing binds the Pod but the scheduler (here: the test)"
    );
    Some(Fixture {
        client,
        kwok,
        ns,
        base,
        op,
        config,
        execs,
        pods,
        uid,
    })
}

#[tokio::test]
async fn a_sandbox_pod_bound_to_a_node_runs_as_designed_and_is_gone_after_the_result() {
    let timeout = 20;
    let Some(Fixture {
        client,
        kwok,
        ns,
        base,
        op,
        config,
        execs,
        pods,
        uid,
    }) = fixture("kwok-pods", "in-node", timeout, 30).await
    else {
        return;
    };

    // The test stands in for the scheduler: it binds the Pod to kwok's fake Node through the
    // pods/binding subresource, as kube-scheduler would.
    bind_pod(&client, &ns, SANDBOX, &kwok.node).await;
    let running = eventually("sandbox Pod Running on the kwok node", || {
        let pods = pods.clone();
        async move {
            let p = pods.get(SANDBOX).await.expect("read pod");
            (p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).then_some(p)
        }
    })
    .await;

    // The Pod as stored and run is exactly as designed.
    let spec = running.spec.clone().expect("pod spec");
    assert_eq!(spec.node_name.as_deref(), Some(kwok.node.as_str()));
    assert_eq!(
        spec.runtime_class_name.as_deref(),
        Some(config.runtime_class_name.as_str())
    );
    assert_eq!(
        spec.active_deadline_seconds,
        Some(i64::from(timeout) + config.deadline_grace_seconds),
        "the node ends a runner that never calls back"
    );
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        spec.automount_service_account_token,
        Some(false),
        "no service-account token is mounted"
    );
    assert_eq!(spec.service_account_name, None);
    assert_eq!(spec.enable_service_links, Some(false));
    for host in [spec.host_network, spec.host_pid, spec.host_ipc] {
        // The API server stores `false` as absent.
        assert_ne!(host, Some(true), "no host namespace is shared");
    }
    let psc = spec.security_context.clone().expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(RUNNER_UID));
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_owned())
    );
    assert_eq!(spec.containers.len(), 1);
    let sc = spec.containers[0]
        .security_context
        .clone()
        .expect("container security context");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    let volumes = spec.volumes.clone().unwrap_or_default();
    let sealed: Vec<_> = volumes
        .iter()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.secret.as_ref().map(|s| s.name.clone()))
        .collect();
    assert_eq!(sealed, ["api-token"], "only the Permit's sealed Secret");
    let secret_volumes: Vec<_> = volumes
        .iter()
        .filter_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()))
        .collect();
    assert_eq!(
        secret_volumes,
        [SANDBOX],
        "only the run's own bundle Secret"
    );
    assert!(
        volumes.iter().all(|v| v.host_path.is_none()),
        "no host path is mounted"
    );
    let owners = running.metadata.owner_references.clone().expect("owners");
    assert_eq!(
        owners
            .iter()
            .map(|o| (o.kind.as_str(), o.uid.as_str()))
            .collect::<Vec<_>>(),
        [("Execution", uid.as_str())]
    );

    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .get(SANDBOX)
        .await
        .expect("network policy");
    let owners = policy.metadata.owner_references.clone().expect("owners");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("Execution", uid.as_str())
    );
    let np = policy.spec.expect("policy spec");
    assert_eq!(
        np.pod_selector
            .and_then(|s| s.match_labels)
            .and_then(|l| l.get(LABEL_EXECUTION).cloned()),
        Some(uid.clone())
    );
    let mut types = np.policy_types.clone().unwrap_or_default();
    types.sort();
    assert_eq!(types, ["Egress", "Ingress"]);
    assert_eq!(
        np.ingress.map(|i| i.len()).unwrap_or(0),
        0,
        "no ingress is allowed"
    );
    assert_eq!(np.egress.map(|e| e.len()), Some(3));

    // A Running Pod does not end the Execution: only the runner's result does.
    let before = execs.get("in-node").await.expect("execution");
    assert_eq!(phase(&before), Some(ExecutionPhase::Running));

    // The runner inside the Pod reports back with the token from its bundle.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let token = callback_token(&secrets, SANDBOX).await;
    let result = runner_result(&ns, "in-node", &uid);
    let url = format!("{base}/v1/results/{ns}/in-node");
    assert_eq!(post_json(&url, &token, &result).await, 204);

    let done = ended(&execs, "in-node").await;
    assert_eq!(phase(&done), Some(ExecutionPhase::Succeeded));

    // The bound Pod is really gone (the node confirmed its deletion), not left Terminating, and
    // the spent bundle Secret with it.
    sandbox_gone(&pods, &secrets, SANDBOX).await;
    let after = execs.get("in-node").await.expect("execution");
    assert_eq!(
        phase(&after),
        Some(ExecutionPhase::Succeeded),
        "the Pod's deletion does not rewrite the result"
    );

    op.stop().await;
    kwok.stop().await;
}

#[tokio::test]
async fn a_sandbox_pod_the_node_kills_ends_its_execution_at_once_and_is_cleaned_up() {
    // A long timeout: the Execution must end because of the Pod, not its deadline.
    let Some(f) = fixture("kwok-killed", "killed", 600, 30).await else {
        return;
    };
    let sandbox = run_object_name("killed");
    bind_pod(&f.client, &f.ns, &sandbox, &f.kwok.node).await;
    eventually("sandbox Pod Running on the kwok node", || {
        let (pods, sandbox) = (f.pods.clone(), sandbox.clone());
        async move {
            let p = pods.get(&sandbox).await.expect("read pod");
            (p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).then_some(())
        }
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let token = callback_token(&secrets, &sandbox).await;

    // The node reports the runner killed for memory before it could report (the test writes
    // what the kubelet would).
    let status = json!({"status": {"phase": "Failed", "containerStatuses": [{
        "name": "runner", "image": f.config.image, "imageID": "", "ready": false,
        "restartCount": 0,
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    }]}});
    f.pods
        .patch_status(&sandbox, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");

    let done = ended(&f.execs, "killed").await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Failed), "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("SandboxFailed"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains(&sandbox) && message.contains("OOMKilled (exit code 137)"),
        "the message names the Pod and what the node reported: {message}"
    );

    // An Event says the same.
    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.ns);
    let event = eventually("SandboxFailed Event", || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.expect("events");
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("SandboxFailed")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("killed")
            })
        }
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));

    // The Pod and its bundle Secret (with the now useless token) are gone.
    sandbox_gone(&f.pods, &secrets, &sandbox).await;

    // A result arriving afterwards (a runner that was only partitioned, or a replay) is refused
    // and changes nothing: the status is written once.
    let result = runner_result(&f.ns, "killed", &f.uid);
    let url = format!("{}/v1/results/{}/killed", f.base, f.ns);
    assert_eq!(post_json(&url, &token, &result).await, 409);
    let after = f.execs.get("killed").await.expect("execution");
    assert_eq!(after.status, done.status, "nothing rewrote the outcome");

    f.op.stop().await;
    f.kwok.stop().await;
}

#[tokio::test]
async fn a_sandbox_pod_stuck_before_running_says_why_then_times_out_and_is_cleaned_up() {
    // Deadline: 3 s + 1 s grace.
    let Some(f) = fixture("kwok-stuck", "stuck", 3, 1).await else {
        return;
    };
    let sandbox = run_object_name("stuck");
    // The node cannot pull the runner image (the test writes what the kubelet would).
    let status = json!({"status": {"phase": "Pending", "containerStatuses": [{
        "name": "runner", "image": f.config.image, "imageID": "", "ready": false,
        "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff",
                              "message": "Back-off pulling image"}}
    }]}});
    f.pods
        .patch_status(&sandbox, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");

    let waiting = eventually("the Execution says why the sandbox waits", || {
        let execs = f.execs.clone();
        async move {
            let e = execs.get("stuck").await.expect("execution");
            let s = e.status.clone()?;
            (s.reason.as_deref() == Some("SandboxWaiting")).then_some(s)
        }
    })
    .await;
    assert_eq!(waiting.phase, Some(ExecutionPhase::Running));
    assert!(
        waiting
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&sandbox) && m.contains("ImagePullBackOff")),
        "{waiting:?}"
    );

    let done = ended(&f.execs, "stuck").await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::TimedOut), "{status:?}");
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("last seen") && m.contains("ImagePullBackOff")),
        "the timeout names what was last seen: {status:?}"
    );
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    sandbox_gone(&f.pods, &secrets, &sandbox).await;
    f.op.stop().await;
    f.kwok.stop().await;
}

/// `--egress-policy kubernetes`: the sandbox's NetworkPolicy allows exactly the Permit's host
/// (here an address literal, so no DNS is involved) on its port besides DNS and the callback,
/// the owner reads the same on the Permit, and the policy is deleted with the Pod.
#[tokio::test]
async fn the_kubernetes_egress_policy_allows_only_the_permits_host_and_goes_with_the_pod() {
    let Some(Fixture {
        client,
        kwok,
        ns,
        base,
        op,
        execs,
        pods,
        uid,
        ..
    }) = fixture_with(
        "kwok-egress",
        "walled",
        30,
        30,
        EgressMode::Kubernetes,
        "https://140.82.112.6:8443",
    )
    .await
    else {
        return;
    };
    let sandbox = run_object_name("walled");
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let policy = policies.get(&sandbox).await.expect("network policy");
    let egress =
        serde_json::to_value(policy.spec.expect("spec").egress.expect("egress")).expect("json");
    let rules = egress.as_array().expect("rules");
    assert_eq!(rules.len(), 3, "DNS, callback, the one host: {egress}");
    assert_eq!(
        rules[2],
        json!({"to": [{"ipBlock": {"cidr": "140.82.112.6/32"}}], "ports": [{"protocol": "TCP", "port": 8443}]})
    );
    assert!(!egress.to_string().contains("0.0.0.0/0"), "{egress}");
    let permit = Api::<Permit>::namespaced(client.clone(), &ns)
        .get("issues")
        .await
        .expect("permit");
    let network = permit.status.and_then(|s| s.network).unwrap_or_default();
    assert!(
        network.starts_with("only 140.82.112.6:8443 (the addresses they resolve to at launch)"),
        "{network}"
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let token = callback_token(&secrets, &sandbox).await;
    let url = format!("{base}/v1/results/{ns}/walled");
    assert_eq!(
        post_json(&url, &token, &runner_result(&ns, "walled", &uid)).await,
        204
    );
    sandbox_gone(&pods, &secrets, &sandbox).await;
    eventually("the sandbox NetworkPolicy deleted with the Pod", || {
        let (policies, sandbox) = (policies.clone(), sandbox.clone());
        async move {
            policies
                .get_opt(&sandbox)
                .await
                .expect("read")
                .is_none()
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        phase(&ended(&execs, "walled").await),
        Some(ExecutionPhase::Succeeded)
    );
    op.stop().await;
    kwok.stop().await;
}

/// A Permit whose host is a private address or the cloud metadata address is refused before
/// any sandbox object exists: the Execution ends Denied (`EgressRefused`) naming the address.
#[tokio::test]
async fn a_permit_pointing_inside_the_cluster_or_at_the_metadata_address_gets_no_sandbox() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "egress-refused").await;
    let config = PodLaunchConfig {
        egress: EgressMode::Kubernetes,
        ..PodLaunchConfig::default()
    };
    ensure_runtime_class(&client, &config.runtime_class_name).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let op = InProcessOperator::start(
        &client,
        &ns,
        listener,
        Launcher::Pod(Box::new(config)),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
    let execs: Api<Execution> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (name, base, address) in [
        ("private", "https://10.0.0.1", "10.0.0.1"),
        ("metadata", "https://169.254.169.254", "169.254.169.254"),
    ] {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "inside", "validFor": "1h",
            "capabilities": [{"name": "api", "baseUrl": base, "paths": ["/x"], "methods": ["GET"]}]
        }))
        .expect("spec");
        permits
            .create(&PostParams::default(), &Permit::new(name, spec))
            .await
            .expect("permit");
        eventually("Permit Pending", || {
            let permits = permits.clone();
            async move {
                let p = permits.get(name).await.ok()?;
                (p.status.as_ref().and_then(|s| s.phase) == Some(PermitPhase::Pending))
                    .then_some(())
            }
        })
        .await;
        let out = std::process::Command::new(workspace_binary("oauth3-operator", "kubectl-oauth3"))
            .env(
                "KUBECONFIG",
                std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
            )
            .args(["-n", &ns, "approve", name])
            .output()
            .expect("plugin runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let spec: ExecutionSpec = serde_json::from_value(
            json!({"permitRef": name, "code": "return 1", "timeoutSeconds": 10}),
        )
        .expect("execution spec");
        execs
            .create(&PostParams::default(), &Execution::new(name, spec))
            .await
            .expect("execution");
        let done = ended(&execs, name).await;
        let status = done.status.expect("status");
        assert_eq!(status.phase, Some(ExecutionPhase::Denied), "{status:?}");
        assert_eq!(status.reason.as_deref(), Some("EgressRefused"));
        let message = status.message.unwrap_or_default();
        assert!(message.contains(address), "{message}");
        assert!(
            pods.get_opt(&run_object_name(name))
                .await
                .expect("read")
                .is_none(),
            "no sandbox Pod for {name}"
        );
    }
    op.stop().await;
}
