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

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, PostParams};
use oauth3_test_support::upstream::Upstream;
use serde_json::json;

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
