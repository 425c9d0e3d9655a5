//! The pod launcher's desired objects against a real kube-apiserver: accepted as applied
//! (server-side apply), owned by the stored Execution, and stored exactly as designed.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use oauth3_crds::constants::{FIELD_MANAGER, LABEL_EXECUTION};
use oauth3_crds::{Execution, ExecutionSpec, Permit, PermitSpec};
use oauth3_operator::launcher::pod::{
    EgressRules, PodLaunchConfig, desired_network_policy, desired_pod,
};
use oauth3_tests::{client_or_skip, namespace};
use serde_json::json;

async fn ensure_runtime_class(client: &kube::Client, name: &str) {
    let api: Api<RuntimeClass> = Api::all(client.clone());
    let rc: RuntimeClass = serde_json::from_value(json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": name}, "handler": name
    }))
    .expect("runtime class");
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&rc),
    )
    .await
    .expect("runtime class applied");
}

#[tokio::test]
async fn desired_pod_and_network_policy_are_accepted_and_stored_as_designed() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "pod-launcher").await;
    let config = PodLaunchConfig::default();
    ensure_runtime_class(&client, &config.runtime_class_name).await;

    let permit_spec: PermitSpec = serde_json::from_value(json!({
        "description": "issues",
        "capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
            "paths": ["/repos/o/r/issues"], "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}}],
        "secrets": ["GITHUB_TOKEN"]
    }))
    .expect("permit spec");
    let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
    let permit = permits
        .create(
            &PostParams::default(),
            &Permit::new("github-issues", permit_spec),
        )
        .await
        .expect("permit");
    let exec_spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "github-issues", "code": "return 1", "timeoutSeconds": 20
    }))
    .expect("execution spec");
    let execs: Api<Execution> = Api::namespaced(client.clone(), &ns);
    let exec = execs
        .create(&PostParams::default(), &Execution::new("count", exec_spec))
        .await
        .expect("execution");
    let uid = exec.metadata.uid.clone().expect("uid");

    let pod = desired_pod(&exec, &permit, &config).expect("desired pod");
    // The Permit's one host, as resolved at launch (a public address).
    let rules = EgressRules::Addresses(
        oauth3_operator::egress::targets(&permit.spec)
            .into_iter()
            .map(|t| (t, vec!["140.82.112.6".parse().expect("ip")]))
            .collect(),
    );
    let policy = desired_network_policy(&exec, &config, &rules).expect("desired policy");
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let name = pod.metadata.name.clone().expect("pod name");
    let stored = pods
        .patch(&name, &pp, &Patch::Apply(&pod))
        .await
        .expect("pod accepted");
    // Applying the same desired state again changes nothing (idempotent reconcile).
    let again = pods
        .patch(&name, &pp, &Patch::Apply(&pod))
        .await
        .expect("re-applied");
    assert_eq!(
        stored.metadata.resource_version,
        again.metadata.resource_version
    );

    let spec = stored.spec.expect("spec");
    assert_eq!(spec.runtime_class_name.as_deref(), Some("kata-qemu-tdx"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.active_deadline_seconds, Some(50));
    assert_eq!(
        spec.service_account_name, None,
        "no service account is mounted or assigned"
    );
    let owners = stored.metadata.owner_references.expect("owners");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("Execution", uid.as_str())
    );
    let sealed: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.secret.as_ref().map(|s| s.name.clone()))
        .collect();
    assert_eq!(sealed, ["github-token"]);

    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let stored = policies
        .patch(&name, &pp, &Patch::Apply(&policy))
        .await
        .expect("network policy accepted");
    let np = stored.spec.expect("spec");
    assert_eq!(
        np.pod_selector
            .and_then(|s| s.match_labels)
            .and_then(|l| l.get(LABEL_EXECUTION).cloned()),
        Some(uid)
    );
    let egress = np.egress.expect("egress");
    assert_eq!(
        egress.len(),
        3,
        "DNS, the callback and the Permit's one host"
    );
    let host_rule = serde_json::to_value(&egress[2]).expect("json");
    assert_eq!(
        host_rule,
        json!({"to": [{"ipBlock": {"cidr": "140.82.112.6/32"}}], "ports": [{"protocol": "TCP", "port": 443}]}),
        "only the Permit's host, on its port"
    );
    assert_eq!(
        np.ingress.map(|i| i.len()).unwrap_or(0),
        0,
        "no ingress is allowed"
    );
}
