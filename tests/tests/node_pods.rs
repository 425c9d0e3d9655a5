//! The real-node tier: sandbox Pods run on a real kubelet, containerd and runc, on a Pod bridge
//! with kube-proxy and kube-router's NetworkPolicy controller (tests/cluster/node.sh). There is
//! no Kata or TDX here: RuntimeClass `runc` stands in for the confidential one, and the
//! runner's key and quote provider is a dstack guest agent stand-in on a host socket mounted
//! into the Pod, as dstack's is.
//!
//! What is observed is observed for real: the runner in the Pod unseals the projected sealed
//! Secret, calls a recording upstream inside the harness's network namespace and posts its
//! result over HTTPS through the callback Service; a probe container run with the sandbox Pod's
//! own spec reports its uid, root filesystem, token and reachability from inside; the kernel
//! OOM-kills a runner over its memory limit.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use oauth3_crds::constants::secret_object_name;
use oauth3_crds::{Execution, ExecutionPhase, ExecutionSpec, Permit, PermitPhase};
use oauth3_operator::launcher::pod::{PodLaunchConfig, desired_pod, run_object_name};
use oauth3_test_support::fixtures::PermitFixture;
use oauth3_test_support::tdx::DstackAgent;
use oauth3_test_support::upstream::Upstream;
use oauth3_tests::node::{NodeEnv, PROBE_IMAGE, publish_callback};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{
    apply_dev_sealed_secret, callback_certificate_for, client_or_skip, ensure_runtime_class,
    namespace, workspace_binary,
};
use serde_json::{Value, json};

/// The secret the owner sealed; it must reach the upstream and nothing else.
const SECRET: &str = "sk-node-4f1b9c27";
/// The enclave key the dstack stand-in hands the runner (and the secret is sealed to).
const ENCLAVE_KEY: [u8; 32] = [0x3c; 32];

/// Polls `what` every 250 ms for up to `secs` until it returns `Some`.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..secs * 4 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{what} did not happen within {secs}s");
}

/// An operator with the pod launcher on the real node, an approved Permit `issues` whose one
/// capability reaches the permitted upstream, and a second upstream the Permit does not name.
struct NodeFixture {
    env: NodeEnv,
    client: kube::Client,
    ns: String,
    op: InProcessOperator,
    permitted: Upstream,
    other: Upstream,
    dstack: DstackAgent,
    dir: std::path::PathBuf,
}

impl NodeFixture {
    /// The fixture, with the runner's memory limit `memory` (a Kubernetes quantity).
    async fn start(prefix: &str, memory: &str) -> Option<Self> {
        let env = NodeEnv::from_env_or_skip()?;
        let client = client_or_skip().await?;
        let ns = namespace(&client, prefix).await;
        ensure_runtime_class(&client, &env.runtime_class).await;
        let dir = std::env::temp_dir().join(format!("oauth3-{ns}"));
        std::fs::create_dir_all(&dir).expect("fixture dir");
        let dstack = DstackAgent::with_key(&dir.join("dstack.sock"), "[]", ENCLAVE_KEY);
        apply_dev_sealed_secret(
            &client,
            &ns,
            &secret_object_name("API_TOKEN"),
            "API_TOKEN",
            SECRET,
            ENCLAVE_KEY,
        )
        .await;

        let permitted = env.upstream(env.upstreams[0]);
        let other = env.upstream(env.upstreams[1]);
        let mut cas = permitted.ca_pem.clone();
        cas.extend_from_slice(&other.ca_pem);
        std::fs::write(dir.join("upstream-ca.pem"), cas).expect("upstream CAs");

        // The callback: this process on the node's bridge, published as a Service whose
        // ClusterIP the runner dials (kube-proxy routes it here) with a certificate for it.
        let listener = tokio::net::TcpListener::bind((env.node_ip, 0))
            .await
            .expect("bind the callback on the bridge");
        let bound = listener.local_addr().expect("callback address");
        let cluster_ip = publish_callback(&client, &ns, bound).await;
        callback_certificate_for(&dir.join("tls"), &cluster_ip.to_string());
        let path = |p: &str| dir.join(p).display().to_string();
        let flags = vec![
            "--launcher=pod".to_owned(),
            format!("--runtime-class={}", env.runtime_class),
            format!("--runner-image={}", env.runner_image),
            "--key-provider=dstack".to_owned(),
            format!("--dstack-socket={}", path("dstack.sock")),
            "--attestation=dstack".to_owned(),
            "--sandbox-cpu=500m".to_owned(),
            format!("--sandbox-memory={memory}"),
            format!("--operator-namespace={ns}"),
            "--egress-policy=kubernetes".to_owned(),
            format!("--callback-url=https://{cluster_ip}:8443"),
            format!("--callback-tls-cert={}", path("tls/tls.crt")),
            format!("--callback-tls-key={}", path("tls/tls.key")),
            format!("--callback-egress-cidr={}/32", env.node_ip),
            format!("--sandbox-ca-file={}", path("upstream-ca.pem")),
        ];
        let op = InProcessOperator::start(
            &client,
            &ns,
            listener,
            Launcher::Flags(flags),
            Duration::from_secs(30),
            Duration::from_secs(3600),
        );

        let permit = PermitFixture::api(&format!("{}/v1", permitted.origin()))
            .with(json!({"paths": ["/items", "/echo-auth"],
                "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}}))
            .secret("API_TOKEN")
            .spec_fields(json!({"description": "node tier", "validFor": "1h"}))
            .permit("issues");
        let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
        permits
            .create(&PostParams::default(), &permit)
            .await
            .expect("permit");
        let fixture = Self {
            env,
            client,
            ns,
            op,
            permitted,
            other,
            dstack,
            dir,
        };
        fixture.wait_permit(PermitPhase::Pending).await;
        let out = std::process::Command::new(workspace_binary("oauth3-operator", "kubectl-oauth3"))
            .env(
                "KUBECONFIG",
                std::env::var("TEST_KUBECONFIG").expect("kubeconfig"),
            )
            .args(["-n", &fixture.ns, "approve", "issues"])
            .output()
            .expect("plugin runs");
        assert!(
            out.status.success(),
            "approve: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fixture.wait_permit(PermitPhase::Approved).await;
        Some(fixture)
    }

    async fn wait_permit(&self, want: PermitPhase) {
        let permits: Api<Permit> = Api::namespaced(self.client.clone(), &self.ns);
        eventually(&format!("Permit {want:?}"), 30, || {
            let permits = permits.clone();
            async move {
                let p = permits.get("issues").await.ok()?;
                (p.status.as_ref().and_then(|s| s.phase) == Some(want)).then_some(())
            }
        })
        .await;
    }

    async fn execute(&self, name: &str, code: &str, timeout: u32) -> Execution {
        let spec: ExecutionSpec = serde_json::from_value(json!({
            "permitRef": "issues", "code": code, "timeoutSeconds": timeout
        }))
        .expect("execution spec");
        Api::<Execution>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &Execution::new(name, spec))
            .await
            .expect("execution")
    }

    /// Waits (up to `secs`) until Execution `name` has finished, and returns it.
    async fn finished(&self, name: &str, secs: u64) -> Execution {
        let execs: Api<Execution> = Api::namespaced(self.client.clone(), &self.ns);
        eventually(&format!("Execution {name} finished"), secs, || {
            let execs = execs.clone();
            async move {
                let e = execs.get(name).await.ok()?;
                let phase = e.status.as_ref().and_then(|s| s.phase)?;
                matches!(
                    phase,
                    ExecutionPhase::Succeeded
                        | ExecutionPhase::Failed
                        | ExecutionPhase::TimedOut
                        | ExecutionPhase::Denied
                )
                .then_some(e)
            }
        })
        .await
    }

    /// Runs a probe Pod `name` with `labels` and the sandbox Pod's own spec for `exec` (image
    /// and arguments swapped for the probe's), and returns what it reported.
    async fn probe(
        &self,
        name: &str,
        exec: &Execution,
        sandbox_labels: bool,
        args: &[String],
    ) -> Value {
        let permits: Api<Permit> = Api::namespaced(self.client.clone(), &self.ns);
        let permit = permits.get("issues").await.expect("permit");
        let config = PodLaunchConfig {
            runtime_class_name: self.env.runtime_class.clone(),
            image: PROBE_IMAGE.to_owned(),
            ..PodLaunchConfig::default()
        };
        let mut pod = desired_pod(exec, &permit, &config).expect("the sandbox Pod's spec");
        pod.metadata.name = Some(name.to_owned());
        pod.metadata.owner_references = None;
        if !sandbox_labels {
            pod.metadata.labels = Some([("app".to_owned(), "not-a-sandbox".to_owned())].into());
        }
        let spec = pod.spec.as_mut().expect("spec");
        // The bundle Secret is the Execution's; the probe needs none of its volumes' contents
        // but mounts them like the runner does (so the spec stays the sandbox's).
        spec.containers[0].args = Some(args.to_vec());
        spec.containers[0].image_pull_policy = Some("Never".to_owned());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("probe pod");
        let done = eventually(&format!("probe {name} finished"), 90, || {
            let pods = pods.clone();
            async move {
                let p = pods.get(name).await.ok()?;
                let phase = p.status.as_ref()?.phase.clone()?;
                matches!(phase.as_str(), "Succeeded" | "Failed").then_some(p)
            }
        })
        .await;
        let message = done
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.state?.terminated?.message)
            .unwrap_or_else(|| panic!("probe {name} left no termination message"));
        serde_json::from_str(message.trim())
            .unwrap_or_else(|e| panic!("probe {name} said {message:?}: {e}"))
    }

    /// Asserts nothing of the secret appears in `text`.
    fn assert_no_secret(&self, what: &str, text: &str) {
        assert!(!text.contains(SECRET), "{what} holds the secret: {text}");
    }

    async fn stop(self) {
        self.op.stop().await;
        drop(self.dstack);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
            .delete(&self.ns, &DeleteParams::default())
            .await;
    }
}

/// The upstream address `i` of the node, with `upstream`'s port.
fn target(ip: Ipv4Addr, upstream: &Upstream) -> String {
    format!("{ip}:{}", upstream.addr.port())
}

#[tokio::test]
async fn an_execution_runs_in_a_real_sandbox_pod_and_leaves_nothing_behind() {
    let Some(f) = NodeFixture::start("node-run", "128Mi").await else {
        return;
    };
    let code = r#"
        const items = await api('GET', '/items');
        const echoed = await api('GET', '/echo-auth');
        return { path: items.path, sawAuth: echoed.authorization.length };
    "#;
    let exec = f.execute("real", code, 60).await;
    let uid = exec.metadata.uid.clone().expect("uid");
    let name = run_object_name("real");

    // The operator made the sandbox; the scheduler placed it on the real node.
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), &f.ns);
    let pod = eventually("sandbox Pod on the node", 60, || {
        let (pods, name) = (pods.clone(), name.clone());
        async move {
            let p = pods.get_opt(&name).await.ok()??;
            p.spec.as_ref()?.node_name.as_ref()?;
            Some(p)
        }
    })
    .await;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(f.env.node.as_str())
    );

    let done = f.finished("real", 120).await;
    let status = done.status.clone().expect("status");
    assert_eq!(
        status.phase,
        Some(ExecutionPhase::Succeeded),
        "the run in the real Pod: {:?}",
        status.message
    );
    assert_eq!(
        status.result,
        Some(json!({"path": "/v1/items", "sawAuth": 1})),
        "the result the runner posted through the callback Service"
    );
    // The runner unsealed the projected Secret with the key from the host socket and sent
    // the credential to the permitted upstream, and only there.
    let got = f.permitted.assert_received(2, "the two permitted calls");
    for r in &got {
        assert_eq!(
            r.header_values("authorization"),
            [format!("Bearer {SECRET}").as_str()]
        );
    }
    f.other
        .assert_nothing_received("the upstream the Permit does not name");
    let asked: Vec<String> = f.dstack.requests();
    assert!(
        asked.iter().any(|r| r.starts_with("POST /GetKey")),
        "the runner asked the host's dstack socket for its key: {asked:?}"
    );
    assert!(
        asked.iter().any(|r| r.starts_with("POST /GetQuote")),
        "and for a quote over its result: {asked:?}"
    );
    let text = serde_json::to_string(&status).expect("status json");
    f.assert_no_secret("the Execution's status", &text);

    // The Pod, its bundle Secret and its NetworkPolicy are gone after the result.
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let policies: Api<NetworkPolicy> = Api::namespaced(f.client.clone(), &f.ns);
    eventually("sandbox objects gone", 60, || {
        let (pods, secrets, policies, name) = (
            pods.clone(),
            secrets.clone(),
            policies.clone(),
            name.clone(),
        );
        async move {
            let pod = pods.get_opt(&name).await.ok()?;
            let secret = secrets.get_opt(&name).await.ok()?;
            let policy = policies.get_opt(&name).await.ok()?;
            (pod.is_none() && secret.is_none() && policy.is_none()).then_some(())
        }
    })
    .await;
    assert!(!uid.is_empty());
    f.stop().await;
}

#[tokio::test]
async fn the_sandbox_security_context_and_network_policy_hold_inside_the_container() {
    let Some(f) = NodeFixture::start("node-walls", "128Mi").await else {
        return;
    };
    // An Execution that keeps its sandbox (and so its NetworkPolicy) alive for a while.
    let code = r#"
        const end = Date.now() + 25000;
        while (Date.now() < end) {}
        return 'done';
    "#;
    let exec = f.execute("walls", code, 60).await;
    let policies: Api<NetworkPolicy> = Api::namespaced(f.client.clone(), &f.ns);
    let name = run_object_name("walls");
    eventually("the Execution's NetworkPolicy", 60, || {
        let (policies, name) = (policies.clone(), name.clone());
        async move { policies.get_opt(&name).await.ok()? }
    })
    .await;

    let permitted = target(f.env.upstreams[0], &f.permitted);
    let other = target(f.env.upstreams[1], &f.other);
    // Each probe connects at its start and again 5 s later: kube-router programs a new Pod's
    // rules a moment after the Pod starts (see the node tier's notes in tests/README.md).
    let args = vec!["wait=5".to_owned(), permitted.clone(), other.clone()];

    // With the sandbox's labels (the Execution's policy selects it) and its exact spec.
    let walled = f.probe("probe-walled", &exec, true, &args).await;
    assert_eq!(walled["uid"], json!(65_532), "{walled}");
    assert_eq!(walled["gid"], json!(65_532), "{walled}");
    assert_eq!(
        walled["rootWrite"], "EROFS",
        "the root filesystem is read-only: {walled}"
    );
    assert_eq!(walled["serviceAccountToken"], json!(false), "{walled}");
    assert_eq!(
        walled["capEff"], "0000000000000000",
        "no capabilities: {walled}"
    );
    assert_eq!(walled["noNewPrivs"], "1", "{walled}");
    assert_eq!(
        walled["connectAfter"][&permitted], "open",
        "the Permit's upstream is reachable: {walled}"
    );
    let dropped = walled["connectAfter"][&other].as_str().unwrap_or_default();
    assert!(
        dropped == "refused" || dropped == "timeout",
        "an upstream the Permit does not name is unreachable (kube-router rejects it): {walled}"
    );
    eprintln!(
        "at the probe's start, before the policy controller caught up: {}",
        walled["connect"]
    );

    // The same Pod without the sandbox's labels reaches both: the drop is the policy's.
    let open = f.probe("probe-open", &exec, false, &args).await;
    assert_eq!(open["connectAfter"][&permitted], "open", "{open}");
    assert_eq!(open["connectAfter"][&other], "open", "{open}");

    let done = f.finished("walls", 90).await;
    assert_eq!(
        done.status.as_ref().and_then(|s| s.phase),
        Some(ExecutionPhase::Succeeded),
        "{:?}",
        done.status.as_ref().and_then(|s| s.message.clone())
    );
    f.stop().await;
}

#[tokio::test]
async fn a_runner_over_its_memory_limit_is_oom_killed_and_the_execution_says_so() {
    // The script may use up to the runner's heap limit (the bundle's memoryMib, 128 MiB by
    // default); the Pod's memory limit is smaller, so the kernel acts first.
    let Some(f) = NodeFixture::start("node-oom", "40Mi").await else {
        return;
    };
    let code = "const hog = []; for (;;) { hog.push('x'.repeat(1 << 20) + hog.length); }";
    f.execute("hog", code, 60).await;
    let done = f.finished("hog", 120).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Failed), "{status:?}");
    assert_eq!(
        status.reason.as_deref(),
        Some("SandboxFailed"),
        "{status:?}"
    );
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains("OOMKilled"),
        "the kernel's OOM kill is named: {message}"
    );
    f.permitted.assert_nothing_received("the hog made no call");
    f.stop().await;
}
