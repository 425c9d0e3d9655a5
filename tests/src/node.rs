//! The real-node tier's harness: the node `tests/cluster/node.sh` started (containerd + runc,
//! kubelet, kube-scheduler, kube-proxy, kube-router) as its `OAUTH3_NODE_*` variables describe
//! it, upstream servers inside the network namespace it created, and the result callback
//! published as a Service whose endpoint is this process on the node's bridge.
//!
//! Without the variables the tests skip with a message, unless `REQUIRE_NODE=1` (as `make
//! test` and CI set it), in which case they fail.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use oauth3_crds::constants::secret_object_name;
use oauth3_crds::{Execution, ExecutionPhase, ExecutionSpec, Permit, PermitPhase};
use oauth3_operator::launcher::pod::{PodLaunchConfig, desired_pod};
use oauth3_test_support::fixtures::PermitFixture;
use oauth3_test_support::tdx::DstackAgent;
use oauth3_test_support::upstream::Upstream;
use serde_json::{Value, json};

use crate::operator::{InProcessOperator, Launcher};
use crate::{
    apply_dev_sealed_secret, callback_certificate_for, client_or_skip, ensure_runtime_class,
    namespace, workspace_binary,
};

/// The node the harness started.
#[derive(Debug, Clone)]
pub struct NodeEnv {
    /// Name of the Node.
    pub node: String,
    /// The node's address on the Pod bridge (Pods reach this machine there).
    pub node_ip: Ipv4Addr,
    /// RuntimeClass (and containerd handler) of sandbox Pods: `runc`, standing in for Kata.
    pub runtime_class: String,
    /// The runner image imported into containerd.
    pub runner_image: String,
    /// The network namespace holding the upstream addresses.
    pub netns: PathBuf,
    /// Addresses inside that namespace that Pods can route to.
    pub upstreams: Vec<Ipv4Addr>,
}

/// The probe image (tests/cluster/images/probe.c) imported beside the runner.
pub const PROBE_IMAGE: &str = "oauth3.local/probe:dev";

impl NodeEnv {
    /// The node from the environment, or `None` (test skipped).
    ///
    /// # Panics
    /// When `REQUIRE_NODE=1` and the variables are missing or malformed.
    pub fn from_env_or_skip() -> Option<Self> {
        let required = std::env::var("REQUIRE_NODE").is_ok_and(|v| v == "1");
        let Ok(node) = std::env::var("OAUTH3_NODE") else {
            assert!(
                !required,
                "REQUIRE_NODE=1 but OAUTH3_NODE is not set: run the node tier through `make \
                 test` or `bash tests/cluster/node.sh run ...`"
            );
            eprintln!("skipping: no real node (run `make test`, or tests/cluster/node.sh run)");
            return None;
        };
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap_or_else(|e| panic!("{s}: {e}"));
        Some(Self {
            node,
            node_ip: ip(&var("OAUTH3_NODE_IP")),
            runtime_class: var("OAUTH3_NODE_RUNTIME_CLASS"),
            runner_image: var("OAUTH3_NODE_RUNNER_IMAGE"),
            netns: var("OAUTH3_NODE_NETNS").into(),
            upstreams: var("OAUTH3_NODE_UPSTREAMS")
                .split_whitespace()
                .map(ip)
                .collect(),
        })
    }

    /// A TCP listener on `ip:0` inside the upstream network namespace: bound from a thread that
    /// entered the namespace, so the socket lives there while this process stays where it is.
    ///
    /// # Panics
    /// When the namespace cannot be entered or the address bound.
    pub fn listen_in_netns(&self, ip: Ipv4Addr) -> tokio::net::TcpListener {
        let netns = self.netns.clone();
        let listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(&netns)
                .unwrap_or_else(|e| panic!("opening {}: {e}", netns.display()));
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("entering {}: {e}", netns.display()));
            let l = std::net::TcpListener::bind(SocketAddr::from((ip, 0)))
                .unwrap_or_else(|e| panic!("binding {ip}:0 in the namespace: {e}"));
            l.set_nonblocking(true).expect("non-blocking");
            l
        })
        .join()
        .expect("the namespace thread");
        tokio::net::TcpListener::from_std(listener).expect("a tokio listener")
    }

    /// A recording HTTPS upstream at `ip` inside the namespace, with a certificate for `ip`.
    pub fn upstream(&self, ip: Ipv4Addr) -> Upstream {
        let listener = self.listen_in_netns(ip);
        Upstream::start_on(listener, &[&ip.to_string()])
    }
}

/// Publishes the result callback listening at `callback` (this process, on the node's
/// bridge) as the Service `oauth3-callback` of `ns` on port 8443, with an EndpointSlice
/// naming that address (kube-proxy routes the ClusterIP to it); returns the ClusterIP.
///
/// # Panics
/// When the API server refuses the objects.
pub async fn publish_callback(client: &Client, ns: &str, callback: SocketAddr) -> Ipv4Addr {
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "oauth3-callback"},
        "spec": {"ports": [{"name": "https", "port": 8443, "targetPort": callback.port(), "protocol": "TCP"}]}
    }))
    .expect("service");
    let created = Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &service)
        .await
        .expect("callback Service");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "oauth3-callback-1",
            "labels": {"kubernetes.io/service-name": "oauth3-callback"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [callback.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": callback.port(), "protocol": "TCP"}]
    }))
    .expect("endpoint slice");
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await
        .expect("callback EndpointSlice");
    created
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP")
        .parse()
        .expect("an IPv4 ClusterIP")
}

/// The secret the owner sealed; it must reach the upstream and nothing else.
pub const SECRET: &str = "sk-node-4f1b9c27";
/// The enclave key the dstack stand-in hands the runner (and the secret is sealed to).
pub const ENCLAVE_KEY: [u8; 32] = [0x3c; 32];

/// Polls `what` every 250 ms for up to `secs` until it returns `Some`.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
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
pub struct NodeFixture {
    /// The node.
    pub env: NodeEnv,
    /// Admin client of the control plane.
    pub client: kube::Client,
    /// The fixture's namespace (the operator's too).
    pub ns: String,
    op: InProcessOperator,
    /// The upstream the Permit's capability `api` reaches.
    pub permitted: Upstream,
    /// An upstream the Permit does not name.
    pub other: Upstream,
    /// The dstack guest agent stand-in the runner gets its key and quote from.
    pub dstack: DstackAgent,
    dir: std::path::PathBuf,
}

impl NodeFixture {
    /// The fixture, with the runner's memory limit `memory` (a Kubernetes quantity).
    pub async fn start(prefix: &str, memory: &str) -> Option<Self> {
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
            "--sandbox-pools".to_owned(),
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

    /// Waits until the Permit `issues` is in phase `want`.
    pub async fn wait_permit(&self, want: PermitPhase) {
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

    /// Creates Execution `name` of `code` under the Permit `issues`.
    pub async fn execute(&self, name: &str, code: &str, timeout: u32) -> Execution {
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
    pub async fn finished(&self, name: &str, secs: u64) -> Execution {
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
    pub async fn probe(
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
    pub fn assert_no_secret(&self, what: &str, text: &str) {
        assert!(!text.contains(SECRET), "{what} holds the secret: {text}");
    }

    /// Stops the operator and the stand-in, and deletes the namespace.
    pub async fn stop(self) {
        self.op.stop().await;
        drop(self.dstack);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
            .delete(&self.ns, &DeleteParams::default())
            .await;
    }
}

/// `ip:port` of `upstream` (listening at `ip`).
pub fn target(ip: Ipv4Addr, upstream: &Upstream) -> String {
    format!("{ip}:{}", upstream.addr.port())
}
