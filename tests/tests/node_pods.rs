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

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use oauth3_crds::ExecutionPhase;
use oauth3_operator::launcher::pod::run_object_name;
use oauth3_tests::node::{NodeFixture, SECRET, eventually, target};
use serde_json::json;

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

#[tokio::test]
async fn an_execution_runs_on_a_booted_pool_member_on_the_real_node_and_the_pool_refills() {
    use kube::ResourceExt;
    use kube::api::{ListParams, PostParams};
    use oauth3_crds::SandboxPool;
    use oauth3_crds::constants::{LABEL_POOL, LABEL_POOL_MEMBER, POOL_MEMBER_IDLE};
    let Some(f) = NodeFixture::start("node-pool", "128Mi").await else {
        return;
    };
    let pools: Api<SandboxPool> = Api::namespaced(f.client.clone(), &f.ns);
    let pool: SandboxPool = serde_json::from_value(json!({
        "apiVersion": "oauth3.dev/v1alpha1", "kind": "SandboxPool",
        "metadata": {"name": "warm"}, "spec": {"replicas": 1}
    }))
    .expect("pool");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("pool created");
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), &f.ns);
    let idle = format!("{LABEL_POOL}=warm,{LABEL_POOL_MEMBER}={POOL_MEMBER_IDLE}");
    // A real runner boots in standby on the node and waits for a run.
    let member = eventually("a ready pool member on the node", 90, || {
        let (pools, pods, idle) = (pools.clone(), pods.clone(), idle.clone());
        async move {
            let ready = pools.get("warm").await.ok()?.status?.ready;
            let list = pods.list(&ListParams::default().labels(&idle)).await.ok()?;
            (ready == 1 && list.items.len() == 1).then(|| list.items[0].name_any())
        }
    })
    .await;

    let code = r#"
        const items = await api('GET', '/items');
        return { path: items.path };
    "#;
    f.execute("pooled", code, 60).await;
    let done = f.finished("pooled", 120).await;
    let status = done.status.clone().expect("status");
    assert_eq!(
        status.phase,
        Some(ExecutionPhase::Succeeded),
        "the run on the member: {:?}",
        status.message
    );
    assert_eq!(status.result, Some(json!({"path": "/v1/items"})));
    assert_eq!(
        status.pod_name,
        Some(format!("pod/{member}")),
        "the member ran it"
    );
    assert_eq!(
        status.launch.as_ref().and_then(|l| l.pool.as_deref()),
        Some("warm")
    );
    // The member unsealed the envelope its bundle carried and sent the credential to the
    // permitted upstream only.
    let got = f.permitted.assert_received(1, "the permitted call");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!("Bearer {SECRET}").as_str()]
    );
    f.other
        .assert_nothing_received("the upstream the Permit does not name");
    f.assert_no_secret(
        "the Execution's status",
        &serde_json::to_string(&status).expect("json"),
    );
    // No Pod of its own was made; the member is gone after its one run, and the pool booted a
    // new one.
    assert!(
        pods.get_opt(&run_object_name("pooled"))
            .await
            .expect("read")
            .is_none()
    );
    eventually("the member gone and a new one ready", 90, || {
        let (pools, pods, idle, member) =
            (pools.clone(), pods.clone(), idle.clone(), member.clone());
        async move {
            let gone = pods.get_opt(&member).await.ok()?.is_none();
            let ready = pools.get("warm").await.ok()?.status?.ready;
            let list = pods.list(&ListParams::default().labels(&idle)).await.ok()?;
            (gone && ready == 1 && list.items.iter().all(|p| p.name_any() != member)).then_some(())
        }
    })
    .await;
    f.stop().await;
}
