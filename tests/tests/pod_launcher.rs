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

/// With Cilium's own CiliumNetworkPolicy CRD (from its Go module, `.ci/k8s/cilium-crd.sh`)
/// installed, `auto` picks `cilium`, and the operator's desired policy for a Permit is accepted
/// by Cilium's schema and stored as designed: only the Permit's hosts by name, on their ports.
#[tokio::test]
async fn the_cilium_policy_is_accepted_by_ciliums_own_crd_and_auto_picks_it() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let Some(crd_path) = std::env::var_os("OAUTH3_CILIUM_CRD") else {
        assert!(
            std::env::var_os("REQUIRE_K8S").is_none(),
            "OAUTH3_CILIUM_CRD is not set (make test sets it from .ci/k8s/cilium-crd.sh)"
        );
        eprintln!("skipping: OAUTH3_CILIUM_CRD not set");
        return;
    };
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_yaml::from_str(&std::fs::read_to_string(&crd_path).expect("CRD file"))
            .expect("CRD yaml");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.patch(
        "ciliumnetworkpolicies.cilium.io",
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("Cilium's CRD installed");
    oauth3_test_support::wait_until(
        "the Cilium CRD served",
        std::time::Duration::from_secs(30),
        || async {
            let mode = oauth3_operator::egress::resolve(
                oauth3_operator::egress::EgressChoice::Auto,
                &client,
            )
            .await;
            if mode == oauth3_operator::egress::EgressMode::Cilium {
                Ok(())
            } else {
                Err(format!("{mode:?}"))
            }
        },
    )
    .await;

    let ns = namespace(&client, "cilium-policy").await;
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "two hosts",
        "capabilities": [
            {"name": "github", "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"]},
            {"name": "upload", "endpoint": "https://uploads.example.com:8443/v1/{id}", "method": "PUT",
             "params": {"id": {"in": "path"}}}
        ]
    }))
    .expect("spec");
    let permit = Api::<Permit>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &Permit::new("two", spec))
        .await
        .expect("permit");
    let exec_spec: ExecutionSpec = serde_json::from_value(
        json!({"permitRef": "two", "code": "return 1", "timeoutSeconds": 10}),
    )
    .expect("execution spec");
    let exec = Api::<Execution>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &Execution::new("cil", exec_spec))
        .await
        .expect("execution");
    let config = PodLaunchConfig::default();
    let targets = oauth3_operator::egress::targets(&permit.spec);
    let desired = oauth3_operator::launcher::pod::desired_cilium_policy(&exec, &config, &targets)
        .expect("desired policy");
    let obj: kube::api::DynamicObject = serde_json::from_value(desired.clone()).expect("object");
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &oauth3_operator::launcher::cilium_policy_resource(),
    );
    let name = obj.metadata.name.clone().expect("name");
    let stored = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("Cilium's schema refused the policy: {e}"));
    let fqdns: Vec<String> = stored.data["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .filter_map(|r| r["toFQDNs"][0]["matchName"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(fqdns, ["api.github.com", "uploads.example.com"]);
    assert_eq!(
        stored.data["spec"]["egress"], desired["spec"]["egress"],
        "stored as designed"
    );
}

/// The bundle token a stored bundle Secret carries.
fn bundle_token(secret: &k8s_openapi::api::core::v1::Secret) -> String {
    let raw = &secret.data.as_ref().expect("data")["bundle.json"].0;
    let bundle: serde_json::Value = serde_json::from_slice(raw).expect("bundle json");
    bundle["callback"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// Two launches of one Execution racing for the launch lock (an operator that lost its lease
/// and its successor): each stages its bundle Secret and NetworkPolicy concurrently with its
/// lock write. The loser takes back only what is still as it created it; the winner overwrites
/// what it found with its own bundle, and only the winner creates the Pod, which then mounts
/// the winner's bundle under the winner's policy. A lone loser leaves nothing behind.
#[tokio::test]
async fn a_launch_that_loses_the_lock_takes_back_only_its_own_objects_and_the_winner_keeps_its_bundle()
 {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::jiff::Timestamp;
    use kube::ResourceExt;
    use oauth3_crds::constants::ANNOTATION_LAUNCH;
    use oauth3_operator::execution::bundle::{CallbackTarget, build_bundle};
    use oauth3_operator::launcher::pod_launch;

    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "pod-race").await;
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
    let permit = Api::<Permit>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &Permit::new("issues", permit_spec))
        .await
        .expect("permit");
    let exec_spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "issues", "code": "return 1", "timeoutSeconds": 20
    }))
    .expect("execution spec");
    let execs: Api<Execution> = Api::namespaced(client.clone(), &ns);
    let launch_of = |exec: Execution, token: &'static str| {
        let (permit, config) = (permit.clone(), config.clone());
        async move {
            let callback = CallbackTarget {
                base_url: "http://127.0.0.1:1".into(),
                ca_pem: None,
                token: zeroize::Zeroizing::new(token.to_owned()),
                deadline: Timestamp::now(),
            };
            let bundle = build_bundle(
                &exec,
                &permit,
                "sha256:x",
                Vec::new(),
                Some(&callback),
                Timestamp::now(),
            );
            let digest = oauth3_protocol::callback::token_digest(token);
            pod_launch(&exec, &permit, &config, &bundle, &digest, None)
                .await
                .expect("sandbox objects")
        }
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mark = |annotations: &std::collections::BTreeMap<String, String>| {
        annotations.get(ANNOTATION_LAUNCH).cloned()
    };

    // The race: the loser's create lands first, the winner finds its objects there.
    let exec = execs
        .create(
            &PostParams::default(),
            &Execution::new("raced", exec_spec.clone()),
        )
        .await
        .expect("execution");
    let name = oauth3_operator::launcher::pod::run_object_name("raced");
    let loser = launch_of(exec.clone(), "loser-token").await;
    let winner = launch_of(exec, "winner-token").await;
    let lost = loser.stage(&client).await.expect("loser staged");
    let won = winner.stage(&client).await.expect("winner staged");
    assert_eq!(
        bundle_token(&secrets.get(&name).await.expect("secret")),
        "loser-token",
        "staging creates, never overwrites"
    );
    assert!(
        pods.get_opt(&name).await.expect("read pod").is_none(),
        "staging starts nothing"
    );
    winner.start(&client, &won).await.expect("winner started");
    loser.withdraw(&client, &lost).await;
    let secret = secrets.get(&name).await.expect("the winner's Secret stays");
    assert_eq!(bundle_token(&secret), "winner-token");
    let winner_mark = Some(oauth3_protocol::callback::token_digest("winner-token"));
    assert_eq!(mark(secret.annotations()), winner_mark);
    let policy = policies
        .get(&name)
        .await
        .expect("the winner's policy stays");
    assert_eq!(mark(policy.annotations()), winner_mark);
    let pod = pods.get(&name).await.expect("the winner's Pod");
    let mounted = pod
        .spec
        .and_then(|s| s.volumes)
        .into_iter()
        .flatten()
        .find_map(|v| v.secret.and_then(|s| s.secret_name));
    assert_eq!(mounted.as_deref(), Some(name.as_str()));

    // A lone loser (a stale attempt after the Execution ran and was cleaned up).
    execs
        .create(&PostParams::default(), &Execution::new("stale", exec_spec))
        .await
        .expect("execution");
    let exec = execs.get("stale").await.expect("stored");
    let stale = launch_of(exec, "stale-token").await;
    let name = oauth3_operator::launcher::pod::run_object_name("stale");
    let staged = stale.stage(&client).await.expect("staged");
    assert!(secrets.get_opt(&name).await.expect("read").is_some());
    assert!(policies.get_opt(&name).await.expect("read").is_some());
    stale.withdraw(&client, &staged).await;
    assert!(
        secrets.get_opt(&name).await.expect("read").is_none(),
        "the stale bundle Secret is taken back"
    );
    assert!(
        policies.get_opt(&name).await.expect("read").is_none(),
        "the stale policy is taken back"
    );
    assert!(pods.get_opt(&name).await.expect("read").is_none());
}
