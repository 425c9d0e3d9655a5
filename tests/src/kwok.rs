//! The kwok tier's harness: a `kwok` process (a kubelet stand-in) against the local control
//! plane, managing exactly one fake Node of its own, so Pods bound to that Node go Running and
//! their deletion is confirmed as a kubelet would.
//!
//! The binary comes from `OAUTH3_KWOK` (set by `make test` and `tests/cluster/control-plane.sh`),
//! else from the cache directory `.ci/k8s/build-bins.sh` builds into. Without one the test skips
//! with a message, unless `REQUIRE_K8S=1`, in which case it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

/// Label whose value tells which kwok process manages a Node.
pub const KWOK_NODE_LABEL: &str = "oauth3.dev/kwok-node";

/// Where `.ci/k8s/build-bins.sh` puts its binaries, given the text of `.ci/k8s/versions.env`
/// and the cache directory: `<cache>/bin/k8s-<K8S>-etcd-<ETCD>-kwok-<KWOK>`. `None` when a
/// version is missing.
pub fn cached_bin_dir(versions_env: &str, cache: &Path) -> Option<PathBuf> {
    let version = |key: &str| {
        versions_env.lines().find_map(|l| {
            l.trim()
                .strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        })
    };
    Some(cache.join("bin").join(format!(
        "k8s-{}-etcd-{}-kwok-{}",
        version("K8S_VERSION")?,
        version("ETCD_VERSION")?,
        version("KWOK_VERSION")?
    )))
}

/// The kwok binary to run, or `None` (test skipped) when there is none.
///
/// # Panics
/// When `REQUIRE_K8S=1` and no binary is found: a required tier must never be skipped.
pub fn kwok_binary_or_skip() -> Option<PathBuf> {
    let required = std::env::var("REQUIRE_K8S").is_ok_and(|v| v == "1");
    let candidate = match std::env::var_os("OAUTH3_KWOK") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            let versions = std::fs::read_to_string(crate::repo_root().join(".ci/k8s/versions.env"))
                .expect("reading .ci/k8s/versions.env");
            let cache = std::env::var_os("CI_K8S_CACHE")
                .map_or_else(|| PathBuf::from("/var/cache/ci-k8s"), PathBuf::from);
            cached_bin_dir(&versions, &cache).map(|d| d.join("kwok"))
        }
    };
    match candidate.clone().filter(|p| p.is_file()) {
        Some(p) => Some(p),
        None => {
            assert!(
                !required,
                "REQUIRE_K8S=1 but no kwok binary (looked at {}): set OAUTH3_KWOK to an \
                 existing file or build it with `bash .ci/k8s/build-bins.sh`",
                candidate.map_or_else(|| "nothing".to_owned(), |p| p.display().to_string())
            );
            eprintln!("skipping: no kwok binary (set OAUTH3_KWOK or run `make test`)");
            None
        }
    }
}

/// A running kwok process and the fake Node it manages.
pub struct Kwok {
    child: tokio::process::Child,
    client: Client,
    /// Name of the fake Node (Ready once [`Kwok::start`] returns).
    pub node: String,
    dir: PathBuf,
}

impl Kwok {
    /// Starts kwok against `TEST_KUBECONFIG`, managing only Nodes labelled
    /// [`KWOK_NODE_LABEL`]`=<this instance>`, creates such a Node and waits until kwok reports it
    /// Ready. `None` when the tier is skipped (see [`kwok_binary_or_skip`]).
    ///
    /// # Panics
    /// When kwok cannot start, exits, or the Node is not Ready within 60 seconds.
    pub async fn start(client: &Client, tag: &str) -> Option<Kwok> {
        let binary = kwok_binary_or_skip()?;
        let kubeconfig = std::env::var_os("TEST_KUBECONFIG").expect("TEST_KUBECONFIG");
        let suffix: u32 = rand::random();
        let node = format!("kwok-{tag}-{suffix:08x}");
        let dir = std::env::temp_dir().join(format!("oauth3-{node}"));
        std::fs::create_dir_all(&dir).expect("kwok state dir");
        let log = std::fs::File::create(dir.join("kwok.log")).expect("kwok log file");
        let stages = crate::repo_root().join("tests/cluster/kwok-stages.yaml");
        let child = tokio::process::Command::new(&binary)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--config")
            .arg(&stages)
            .arg(format!(
                "--manage-nodes-with-label-selector={KWOK_NODE_LABEL}={node}"
            ))
            // An isolated home: kwok reads ~/.kwok/kwok.yaml by default.
            .env("HOME", &dir)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut kwok = Kwok {
            child,
            client: client.clone(),
            node,
            dir,
        };
        kwok.create_node().await;
        kwok.wait_node_ready().await;
        Some(kwok)
    }

    async fn create_node(&self) {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node, "labels": {
                KWOK_NODE_LABEL: self.node, "type": "kwok",
                "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux"}},
            // Nothing but a test that binds explicitly may land here.
            "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake",
                "effect": "NoSchedule"}]}
        }))
        .expect("node");
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {}: {e}", self.node));
    }

    async fn wait_node_ready(&mut self) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("kwok status") {
                panic!("kwok exited ({status}): {}", self.log());
            }
            let node = nodes.get(&self.node).await.expect("reading node");
            if is_ready(&node) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {} not Ready within 60s: {}", self.node, self.log());
    }

    /// The tail of kwok's log, for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("kwok.log")).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or(&text).to_owned()
    }

    /// Stops kwok and deletes the fake Node.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = Api::<Node>::all(self.client.clone())
            .delete(&self.node, &DeleteParams::default())
            .await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a Node reports the `Ready` condition as `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Binds Pod `name` in `ns` to `node` through the `pods/binding` subresource: what a scheduler
/// does (there is none in the test control plane).
///
/// # Panics
/// When the API server refuses the binding.
pub async fn bind_pod(client: &Client, ns: &str, name: &str, node: &str) {
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}
    });
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let _: serde_json::Value = pods
        .create_subresource("binding", name, &PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("binding pod {name} to {node}: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_bin_dir_is_named_after_all_three_pinned_versions() {
        let env = "# comment\nK8S_VERSION=v1.36.4\nETCD_VERSION=v3.6.16\nKWOK_VERSION=v0.8.0\n";
        assert_eq!(
            cached_bin_dir(env, Path::new("/c")),
            Some(PathBuf::from("/c/bin/k8s-v1.36.4-etcd-v3.6.16-kwok-v0.8.0"))
        );
    }

    #[test]
    fn a_missing_version_gives_no_bin_dir() {
        assert_eq!(
            cached_bin_dir("K8S_VERSION=v1.36.4\nETCD_VERSION=\n", Path::new("/c")),
            None
        );
    }

    #[test]
    fn a_node_without_a_true_ready_condition_is_not_ready() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}}))
        .expect("node");
        assert!(!is_ready(&node));
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
        .expect("node");
        assert!(is_ready(&node));
    }
}
