//! SandboxPools on the kwok tier: the operator (pod launcher, `--sandbox-pools`) on a real
//! kube-apiserver keeps a pool's idle members booted (bound to a kwok node by the test, which
//! stands in for the scheduler), an Execution claims one (relabelled for it, owned by it, its
//! egress policy in place) and the member is handed the bundle over the standby endpoint when
//! it asks (the test plays the member's runner with the token from its Secret); the pool
//! refills, the member goes with its Execution, and with no idle member the Execution gets a
//! fresh Pod and says so. A second operator replica (not leading) hands over the bundle too.
//! Only a member whose runner has checked in (asked once) is claimed; one that never does is
//! replaced. A claim the API server refuses after the launch lock falls back to a fresh Pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use oauth3_crds::constants::{
    ANNOTATION_STANDBY_CHECKED_IN, LABEL_EXECUTION, LABEL_POOL, LABEL_POOL_MEMBER,
    POOL_MEMBER_CLAIMED, POOL_MEMBER_IDLE, pool_policy_name,
};
use oauth3_crds::{Execution, ExecutionPhase, ExecutionSpec, SandboxPool};
use oauth3_operator::launcher::pod::{PodLaunchConfig, run_object_name};
use oauth3_protocol::standby::Standby;
use oauth3_tests::kwok::{Kwok, bind_pod};
use oauth3_tests::operator::{InProcessOperator, Launcher};
use oauth3_tests::{
    apply_dev_sealed_secret, client_or_skip, ensure_runtime_class, namespace, post_json,
};
use serde_json::{Value, json};

const SECRET_VALUE: &str = "sk-pool-5e1f";

/// Polls `what` for up to 30 s until it returns `Some`.
async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    oauth3_tests::node::eventually(what, 30, f).await
}

/// The operator with pools on a namespace with a kwok node, an approved Permit, and a
/// stand-in scheduler that binds every pool member to the node.
struct Fixture {
    client: kube::Client,
    kwok: Kwok,
    ns: String,
    base: String,
    op: InProcessOperator,
    binder: tokio::task::JoinHandle<()>,
    pods: Api<Pod>,
    execs: Api<Execution>,
    pools: Api<SandboxPool>,
}

impl Fixture {
    async fn stop(self) {
        self.binder.abort();
        self.op.stop().await;
        self.kwok.stop().await;
    }
}

async fn start_operator(
    client: &kube::Client,
    ns: &str,
    flags: &[&str],
) -> (InProcessOperator, String) {
    let mut flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
    flags.push("--sandbox-pools".to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let op = InProcessOperator::start_with_flags(
        client,
        ns,
        listener,
        Launcher::Pod(Box::default()),
        Duration::from_secs(30),
        Duration::from_secs(3600),
        &flags,
    );
    (op, base)
}

async fn fixture(prefix: &str) -> Option<Fixture> {
    fixture_with(prefix, &[]).await
}

/// [`fixture`] with more operator flags.
async fn fixture_with(prefix: &str, flags: &[&str]) -> Option<Fixture> {
    let client = client_or_skip().await?;
    let kwok = Kwok::start(&client, prefix).await?;
    let ns = namespace(&client, prefix).await;
    ensure_runtime_class(&client, &PodLaunchConfig::default().runtime_class_name).await;
    apply_dev_sealed_secret(
        &client,
        &ns,
        "api-token",
        "API_TOKEN",
        SECRET_VALUE,
        [6u8; 32],
    )
    .await;
    let (op, base) = start_operator(&client, &ns, flags).await;
    oauth3_tests::approved_permit(&client, &ns, "issues").await;
    // The stand-in scheduler: every unbound pool member goes to the kwok node.
    let binder = {
        let (client, ns, node) = (client.clone(), ns.clone(), kwok.node.clone());
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            loop {
                if let Ok(list) = pods.list(&ListParams::default().labels(LABEL_POOL)).await {
                    for pod in list.items {
                        let unbound = pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.node_name.as_ref())
                            .is_none();
                        if unbound && pod.metadata.deletion_timestamp.is_none() {
                            bind_pod(&client, &ns, &pod.name_any(), &node).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    Some(Fixture {
        pods: Api::namespaced(client.clone(), &ns),
        execs: Api::namespaced(client.clone(), &ns),
        pools: Api::namespaced(client.clone(), &ns),
        client,
        kwok,
        ns,
        base,
        op,
        binder,
    })
}

async fn create_pool(pools: &Api<SandboxPool>, name: &str, replicas: i32) {
    let pool: SandboxPool = serde_json::from_value(json!({
        "apiVersion": "oauth3.dev/v1alpha1", "kind": "SandboxPool",
        "metadata": {"name": name},
        "spec": {"replicas": replicas}
    }))
    .expect("pool");
    pools
        .create(&PostParams::default(), &pool)
        .await
        .expect("pool created");
}

/// Waits until pool `name` reports `ready` ready members (and that many idle ones exist).
async fn pool_ready(f: &Fixture, name: &str, ready: i32) -> SandboxPool {
    eventually(
        &format!("SandboxPool {name} with {ready} ready members"),
        || {
            let pools = f.pools.clone();
            async move {
                let p = pools.get(name).await.ok()?;
                (p.status.as_ref().map(|s| s.ready) == Some(ready)).then_some(p)
            }
        },
    )
    .await
}

/// Plays the runners of pool `name`'s `n` oldest idle members up to their check-in, as booted
/// runners do: each asks once (its first ask is its check-in); returns their names.
async fn check_in(f: &Fixture, name: &str, n: usize) -> Vec<String> {
    let members = eventually(&format!("{n} idle members of {name}"), || {
        let pods = f.pods.clone();
        async move {
            let m = idle_members(&pods, name).await;
            (m.len() >= n).then_some(m)
        }
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let mut names = Vec::new();
    for member in members.into_iter().take(n) {
        let member = member.name_any();
        eventually(&format!("{member} checked in"), || {
            let (pods, secrets, member) = (f.pods.clone(), secrets.clone(), member.clone());
            async move {
                let secret = secrets.get_opt(&member).await.ok()??;
                let raw = secret.data?.get("standby.json")?.0.clone();
                let standby: Standby = serde_json::from_slice(&raw).ok()?;
                // The operator holds the ask; the check-in is written before it waits.
                let _ = reqwest::Client::new()
                    .post(&standby.url)
                    .bearer_auth(standby.token.as_str())
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await;
                let pod = pods.get(&member).await.ok()?;
                pod.annotations()
                    .contains_key(ANNOTATION_STANDBY_CHECKED_IN)
                    .then_some(())
            }
        })
        .await;
        names.push(member);
    }
    names
}

/// The idle members of pool `name`, oldest first.
async fn idle_members(pods: &Api<Pod>, name: &str) -> Vec<Pod> {
    let mut list = pods
        .list(&ListParams::default().labels(&format!(
            "{LABEL_POOL}={name},{LABEL_POOL_MEMBER}={POOL_MEMBER_IDLE}"
        )))
        .await
        .expect("members")
        .items;
    list.sort_by_key(|p| p.creation_timestamp().map(|t| t.0));
    list
}

/// The member's standby file, as its runner reads it from its Secret.
async fn standby_of(secrets: &Api<Secret>, member: &str) -> Standby {
    let secret = secrets.get(member).await.expect("member secret");
    let raw = secret.data.expect("data")["standby.json"].0.clone();
    serde_json::from_slice(&raw).expect("standby file")
}

/// One standby request as a member's runner makes it: the status and the body.
async fn ask(url: &str, token: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .expect("standby request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Asks until something other than "ask again" (204) comes.
async fn ask_until_answered(url: String, token: String) -> (u16, String) {
    loop {
        let (status, body) = ask(&url, &token).await;
        if status != 204 {
            return (status, body);
        }
    }
}

async fn create_execution(execs: &Api<Execution>, name: &str) -> Execution {
    let spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": "issues", "code": "return 1", "timeoutSeconds": 60
    }))
    .expect("execution spec");
    execs
        .create(&PostParams::default(), &Execution::new(name, spec))
        .await
        .expect("execution")
}

/// Waits for Execution `name`'s fresh sandbox Pod; its name and the Execution's status then.
async fn fresh_pod_status(f: &Fixture, name: &str) -> (String, oauth3_crds::ExecutionStatus) {
    let sandbox = run_object_name(name);
    eventually("a fresh sandbox Pod", || {
        let (pods, sandbox) = (f.pods.clone(), sandbox.clone());
        async move { pods.get_opt(&sandbox).await.expect("read") }
    })
    .await;
    let exec = f.execs.get(name).await.expect("execution");
    (sandbox, exec.status.expect("status"))
}

/// The `Launched` Event of `exec`, once it is there.
async fn launched_event(f: &Fixture, exec: &Execution) -> Event {
    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.ns);
    let uid = exec.metadata.uid.clone().expect("uid");
    eventually("the Launched Event", || {
        let (events, uid) = (events.clone(), uid.clone());
        async move {
            let list = events.list(&Default::default()).await.expect("events");
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("Launched")
                    && e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str())
            })
        }
    })
    .await
}

fn runner_result(ns: &str, name: &str, uid: &str) -> Value {
    json!({"execution": {"namespace": ns, "name": name, "uid": uid},
        "phase": "Succeeded", "result": 1, "stdout": "", "stderr": "", "calls": [],
        "durationMs": 3, "codeDigest": "sha256:x", "permitDigest": "sha256:y", "rateBudget": {},
        "attestation": {"kind": "none"}, "statementDigest": "sha256:z"})
}

#[tokio::test]
async fn an_execution_runs_on_an_idle_member_that_gets_its_bundle_only_after_its_policy_and_the_pool_refills()
 {
    let Some(f) = fixture("pool-hit").await else {
        return;
    };
    create_pool(&f.pools, "fast", 2).await;
    check_in(&f, "fast", 2).await;
    let pool = pool_ready(&f, "fast", 2).await;
    let ready = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready condition");
    assert_eq!(ready.status, "True", "{ready:?}");

    // Members as designed: no Execution, no Permit, no secrets; a standby file in their own
    // Secret; the pool's standby policy lets them reach only DNS and the callback.
    let members = idle_members(&f.pods, "fast").await;
    assert_eq!(members.len(), 2);
    for m in &members {
        let labels = m.labels();
        assert!(!labels.contains_key(LABEL_EXECUTION), "{labels:?}");
        let spec = m.spec.as_ref().expect("spec");
        let args = spec.containers[0].args.clone().unwrap_or_default();
        assert_eq!(&args[..2], ["run", "--standby"], "{args:?}");
        assert_eq!(spec.active_deadline_seconds, None);
        let sealed: Vec<_> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.projected.as_ref())
            .flat_map(|p| p.sources.iter().flatten())
            .collect();
        assert!(sealed.is_empty(), "a member gets no sealed Secret");
    }
    let policy = Api::<NetworkPolicy>::namespaced(f.client.clone(), &f.ns)
        .get(&pool_policy_name("fast"))
        .await
        .expect("standby policy");
    let np = policy.spec.expect("spec");
    assert_eq!(
        np.pod_selector
            .and_then(|s| s.match_labels)
            .and_then(|l| l.get(LABEL_POOL).cloned())
            .as_deref(),
        Some("fast")
    );
    assert_eq!(
        np.egress.map(|e| e.len()),
        Some(2),
        "DNS and the callback only"
    );

    // Both members ask for a run (the operator holds the requests); a wrong token is refused,
    // and one member's token does not open the other's endpoint.
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let (a, b) = (members[0].name_any(), members[1].name_any());
    let (sa, sb) = (
        standby_of(&secrets, &a).await,
        standby_of(&secrets, &b).await,
    );
    assert_eq!(sa.url, format!("{}/v1/standby/{}/{a}", f.base, f.ns));
    assert_eq!(ask(&sa.url, "not-the-token").await.0, 401);
    assert_eq!(ask(&sa.url, &sb.token).await.0, 401);
    let asking_a = tokio::spawn(ask_until_answered(sa.url.clone(), sa.token.to_string()));
    let asking_b = tokio::spawn(ask_until_answered(sb.url.clone(), sb.token.to_string()));

    let exec = create_execution(&f.execs, "on-member").await;
    let uid = exec.metadata.uid.clone().expect("uid");
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), asking_a)
        .await
        .expect("the oldest member got an answer")
        .expect("ask task");
    assert_eq!(status, 200, "{body}");
    // When the bundle was handed over, the Execution's egress policy already selected the
    // member.
    let run_policy = Api::<NetworkPolicy>::namespaced(f.client.clone(), &f.ns)
        .get(&run_object_name("on-member"))
        .await
        .expect("the Execution's policy exists before its bundle is handed over");
    assert_eq!(
        run_policy
            .spec
            .and_then(|s| s.pod_selector)
            .and_then(|s| s.match_labels)
            .and_then(|l| l.get(LABEL_EXECUTION).cloned()),
        Some(uid.clone())
    );
    let bundle: Value = serde_json::from_str(&body).expect("bundle json");
    assert_eq!(bundle["execution"]["uid"], uid.as_str());
    let sealed = bundle["sealedSecrets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sealed.len(), 1, "{bundle}");
    assert_eq!(sealed[0]["name"], "API_TOKEN");
    assert!(
        !body.contains(SECRET_VALUE),
        "only ciphertext leaves the operator"
    );
    // The envelopes travel only over the standby endpoint: the bundle Secret has none.
    let stored = secrets
        .get(&run_object_name("on-member"))
        .await
        .expect("bundle Secret");
    let stored: Value =
        serde_json::from_slice(&stored.data.expect("data")["bundle.json"].0).expect("bundle");
    assert_eq!(
        stored["sealedSecrets"].as_array().map_or(0, Vec::len),
        0,
        "{stored}"
    );
    let token = bundle["callback"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(!asking_b.is_finished(), "the other member is still waiting");

    // The Execution runs on the member: its status names it and the pool; the member is
    // relabelled for it, owned by it, and has the run's deadline.
    let running = f.execs.get("on-member").await.expect("execution");
    let status = running.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Running));
    assert_eq!(status.pod_name, Some(format!("pod/{a}")));
    assert_eq!(
        status.launch.as_ref().and_then(|l| l.pool.as_deref()),
        Some("fast")
    );
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("idle member") && message.contains("fast"),
        "{message}"
    );
    let member = f.pods.get(&a).await.expect("member");
    assert_eq!(member.labels()[LABEL_POOL_MEMBER], POOL_MEMBER_CLAIMED);
    assert_eq!(member.labels()[LABEL_EXECUTION], uid);
    let owners = member.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners
            .iter()
            .map(|o| (o.kind.as_str(), o.uid.as_str()))
            .collect::<Vec<_>>(),
        [("Execution", uid.as_str())]
    );
    let deadline = member.spec.as_ref().and_then(|s| s.active_deadline_seconds);
    assert!(deadline.is_some_and(|d| d >= 90), "{deadline:?}");
    // No Pod of its own was created.
    assert!(
        f.pods
            .get_opt(&run_object_name("on-member"))
            .await
            .expect("read")
            .is_none()
    );

    // The pool replaces the claimed member at once: two idle ready members again (once the new
    // one's runner checked in), one claimed.
    check_in(&f, "fast", 2).await;
    eventually("the pool refilled", || {
        let pools = f.pools.clone();
        async move {
            let s = pools.get("fast").await.ok()?.status?;
            (s.ready == 2 && s.claimed == 1).then_some(())
        }
    })
    .await;

    // The member's runner reports with the bundle's token; the Execution ends and the member
    // goes with its other sandbox objects.
    let url = format!("{}/v1/results/{}/on-member", f.base, f.ns);
    assert_eq!(
        post_json(&url, &token, &runner_result(&f.ns, "on-member", &uid)).await,
        204
    );
    let done = oauth3_tests::wait_ended(&f.client, &f.ns, "on-member").await;
    assert_eq!(
        done.status.and_then(|s| s.phase),
        Some(ExecutionPhase::Succeeded)
    );
    eventually("the member and the run's objects are gone", || {
        let (pods, secrets, a) = (f.pods.clone(), secrets.clone(), a.clone());
        async move {
            let member = pods.get_opt(&a).await.expect("read");
            let bundle = secrets
                .get_opt(&run_object_name("on-member"))
                .await
                .expect("read");
            (member.is_none() && bundle.is_none()).then_some(())
        }
    })
    .await;
    let status = eventually("the pool counted the claim", || {
        let pools = f.pools.clone();
        async move {
            let s = pools.get("fast").await.ok()?.status?;
            (s.claims == Some(1) && s.claimed == 0).then_some(s)
        }
    })
    .await;
    assert!(status.last_claim_latency_ms.is_some(), "{status:?}");
    assert!(
        !asking_b.is_finished(),
        "the other member never got a bundle"
    );
    asking_b.abort();
    f.stop().await;
}

#[tokio::test]
async fn with_no_idle_member_an_execution_gets_a_fresh_pod_and_says_so() {
    let Some(f) = fixture("pool-miss").await else {
        return;
    };
    create_pool(&f.pools, "empty", 0).await;
    eventually("the empty pool's status", || {
        let pools = f.pools.clone();
        async move { pools.get("empty").await.ok()?.status.map(|_| ()) }
    })
    .await;
    let exec = create_execution(&f.execs, "fresh").await;
    let sandbox = run_object_name("fresh");
    eventually("a fresh sandbox Pod", || {
        let (pods, sandbox) = (f.pods.clone(), sandbox.clone());
        async move { pods.get_opt(&sandbox).await.expect("read") }
    })
    .await;
    let running = f.execs.get("fresh").await.expect("execution");
    let status = running.status.clone().expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Running));
    assert_eq!(status.pod_name, Some(format!("pod/{sandbox}")));
    assert_eq!(status.launch.as_ref().and_then(|l| l.pool.clone()), None);
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("SandboxPool empty had no idle member") && message.contains("fresh Pod"),
        "{message}"
    );
    // The Launched Event says the same.
    let event = launched_event(&f, &exec).await;
    assert!(
        event
            .note
            .unwrap_or_default()
            .contains("had no idle member"),
        "the Event explains the fresh Pod"
    );
    let status = eventually("the pool counted the miss", || {
        let pools = f.pools.clone();
        async move {
            let s = pools.get("empty").await.ok()?.status?;
            (s.misses == Some(1)).then_some(s)
        }
    })
    .await;
    assert_eq!(status.claims, None);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        ready.status, "True",
        "minReady defaults to 0 for an empty pool: {ready:?}"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_replica_that_did_not_launch_hands_over_the_bundle_only_once_the_policy_exists() {
    let Some(f) = fixture("pool-ha").await else {
        return;
    };
    create_pool(&f.pools, "ha", 1).await;
    check_in(&f, "ha", 1).await;
    pool_ready(&f, "ha", 1).await;
    let members = idle_members(&f.pods, "ha").await;
    let a = members[0].name_any();
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let standby = standby_of(&secrets, &a).await;
    // A second replica: it does not lead (the first holds the Lease), but serves the callback.
    let (second, second_base) = start_operator(&f.client, &f.ns, &[]).await;
    let at_second = standby.url.replace(&f.base, &second_base);
    assert_ne!(at_second, standby.url);

    let exec = create_execution(&f.execs, "elsewhere").await;
    let uid = exec.metadata.uid.clone().expect("uid");
    eventually("the Execution runs on the member", || {
        let execs = f.execs.clone();
        async move {
            let s = execs.get("elsewhere").await.ok()?.status?;
            (s.phase == Some(ExecutionPhase::Running)).then_some(())
        }
    })
    .await;
    // Without the Execution's egress policy the bundle is not handed over: the member is told
    // to ask again.
    let policies: Api<NetworkPolicy> = Api::namespaced(f.client.clone(), &f.ns);
    policies
        .delete(&run_object_name("elsewhere"), &DeleteParams::default())
        .await
        .expect("policy deleted");
    let (status, body) = ask(&at_second, &standby.token).await;
    assert_eq!(status, 204, "no bundle without the policy: {body}");
    // With the policy back (as the launch wrote it), the second replica hands it over, read
    // from the API.
    let policy: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": run_object_name("elsewhere"), "labels": {LABEL_EXECUTION: uid}},
        "spec": {"podSelector": {"matchLabels": {LABEL_EXECUTION: uid}},
            "policyTypes": ["Ingress", "Egress"]}
    }))
    .expect("policy");
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy back");
    let (status, body) = ask(&at_second, &standby.token).await;
    assert_eq!(status, 200, "{body}");
    let bundle: Value = serde_json::from_str(&body).expect("bundle");
    assert_eq!(bundle["execution"]["uid"], uid.as_str());
    assert_eq!(
        bundle["sealedSecrets"][0]["name"], "API_TOKEN",
        "the envelopes, read by the replica that hands the bundle over: {bundle}"
    );
    // The first replica, which launched it, hands over the same bundle (a member that lost
    // the first answer asks again), and only to this member.
    let (status, again) = ask(&standby.url, &standby.token).await;
    assert_eq!(status, 200);
    let again: Value = serde_json::from_str(&again).expect("bundle");
    assert_eq!(again["callback"]["token"], bundle["callback"]["token"]);

    // Once the Execution ended, the member is retired.
    let token = bundle["callback"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let url = format!("{}/v1/results/{}/elsewhere", f.base, f.ns);
    assert_eq!(
        post_json(&url, &token, &runner_result(&f.ns, "elsewhere", &uid)).await,
        204
    );
    oauth3_tests::wait_ended(&f.client, &f.ns, "elsewhere").await;
    let (status, _) = ask(&at_second, &standby.token).await;
    assert!(
        status == 410 || status == 404,
        "an ended member gets no run: {status}"
    );
    second.stop().await;
    f.stop().await;
}

#[tokio::test]
async fn a_claimed_member_that_dies_before_its_result_fails_its_execution_and_is_replaced() {
    let Some(f) = fixture("pool-dies").await else {
        return;
    };
    create_pool(&f.pools, "frail", 1).await;
    check_in(&f, "frail", 1).await;
    pool_ready(&f, "frail", 1).await;
    let a = idle_members(&f.pods, "frail").await[0].name_any();
    create_execution(&f.execs, "orphaned").await;
    eventually("the member claimed", || {
        let (pods, a) = (f.pods.clone(), a.clone());
        async move {
            let p = pods.get(&a).await.ok()?;
            p.labels().contains_key(LABEL_EXECUTION).then_some(())
        }
    })
    .await;
    // The node reports the member's runner killed (the test writes what the kubelet would).
    let status = json!({"status": {"phase": "Failed", "containerStatuses": [{
        "name": "runner", "image": PodLaunchConfig::default().image, "imageID": "",
        "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    }]}});
    f.pods
        .patch_status(&a, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
    let done = oauth3_tests::wait_ended(&f.client, &f.ns, "orphaned").await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Failed), "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("SandboxFailed"));
    assert!(
        status.message.unwrap_or_default().contains(&a),
        "the message names the member"
    );
    // The pool has a new idle member, and the dead one is gone.
    eventually("a new member replaced the dead one", || {
        let (pods, a) = (f.pods.clone(), a.clone());
        async move {
            let idle = idle_members(&pods, "frail").await;
            let gone = pods.get_opt(&a).await.expect("read").is_none();
            (gone && idle.len() == 1 && idle[0].name_any() != a).then_some(())
        }
    })
    .await;
    f.stop().await;
}

#[tokio::test]
async fn a_claimed_member_that_never_asks_for_its_run_is_deleted_and_its_execution_fails() {
    let Some(f) = fixture("pool-mute").await else {
        return;
    };
    create_pool(&f.pools, "mute", 1).await;
    check_in(&f, "mute", 1).await;
    pool_ready(&f, "mute", 1).await;
    let a = idle_members(&f.pods, "mute").await[0].name_any();
    // Nobody plays this member's runner: it never asks for the bundle offered to it.
    create_execution(&f.execs, "unasked").await;
    let done = oauth3_tests::wait_ended(&f.client, &f.ns, "unasked").await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(ExecutionPhase::Failed), "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("SandboxFailed"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains(&a) && message.contains("never asked for its run"),
        "{message}"
    );
    eventually("the silent member gone and a new one idle", || {
        let (pods, a) = (f.pods.clone(), a.clone());
        async move {
            let idle = idle_members(&pods, "mute").await;
            let gone = pods.get_opt(&a).await.expect("read").is_none();
            (gone && idle.len() == 1 && idle[0].name_any() != a).then_some(())
        }
    })
    .await;
    f.stop().await;
}

#[tokio::test]
async fn an_idle_member_that_never_checks_in_is_never_claimed_and_is_replaced() {
    let Some(f) = fixture_with("pool-silent", &["--pool-check-in", "4s"]).await else {
        return;
    };
    create_pool(&f.pools, "quiet", 1).await;
    // The member boots (kwok marks it Ready) but nobody plays its runner: it never asks.
    let a = eventually("the member Ready", || {
        let pods = f.pods.clone();
        async move {
            let m = idle_members(&pods, "quiet").await.into_iter().next()?;
            let ready = m
                .status
                .as_ref()?
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then(|| m.name_any())
        }
    })
    .await;
    // An Execution created meanwhile does not get it: a fresh Pod, saying why.
    create_execution(&f.execs, "not-on-silent").await;
    let (_, status) = fresh_pod_status(&f, "not-on-silent").await;
    assert_eq!(status.launch.as_ref().and_then(|l| l.pool.clone()), None);
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("SandboxPool quiet had no idle member"),
        "a member that never checked in is not claimed"
    );
    let member = f.pods.get(&a).await.expect("member");
    assert!(!member.labels().contains_key(LABEL_EXECUTION));
    let pool = f.pools.get("quiet").await.expect("pool");
    let s = pool.status.expect("status");
    assert_eq!((s.ready, s.starting), (0, 1), "{s:?}");
    // After its check-in time it is deleted and replaced, and the pool says why.
    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.ns);
    let note = eventually("the MemberSilent Event", || {
        let (events, a) = (events.clone(), a.clone());
        async move {
            let list = events.list(&Default::default()).await.expect("events");
            list.items.into_iter().find_map(|e| {
                let note = e.note.unwrap_or_default();
                (e.reason.as_deref() == Some("MemberSilent") && note.contains(&a)).then_some(note)
            })
        }
    })
    .await;
    assert!(
        note.contains("within 4s") && note.contains("never asked for a run"),
        "{note}"
    );
    let b = eventually("a new member replaced the silent one", || {
        let (pods, a) = (f.pods.clone(), a.clone());
        async move {
            let idle = idle_members(&pods, "quiet").await;
            let gone = pods.get_opt(&a).await.expect("read").is_none();
            (gone && idle.len() == 1 && idle[0].name_any() != a).then(|| idle[0].name_any())
        }
    })
    .await;
    // One that does check in is ready to be claimed.
    assert_eq!(check_in(&f, "quiet", 1).await, [b]);
    pool_ready(&f, "quiet", 1).await;
    f.stop().await;
}

/// An admission policy of the API server's own (CEL, no webhook) that refuses to relabel an
/// idle member of pool `pool` in `ns` as claimed: what a claim meets when something else
/// writes the member between the pick and the claim, or a cluster policy forbids it.
async fn refuse_claims(client: &kube::Client, ns: &str, pool: &str) -> String {
    use kube::api::DynamicObject;
    use kube::core::{ApiResource, GroupVersionKind};
    let name = format!("{ns}-refuse-claims");
    let gvk = |kind: &str| {
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            kind,
        ))
    };
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["UPDATE"], "resources": ["pods"]}]},
            "validations": [{
                "expression": format!(
                    "!(has(object.metadata.labels) \
                     && '{LABEL_POOL}' in object.metadata.labels \
                     && object.metadata.labels['{LABEL_POOL}'] == '{pool}' \
                     && '{LABEL_POOL_MEMBER}' in object.metadata.labels \
                     && object.metadata.labels['{LABEL_POOL_MEMBER}'] == '{POOL_MEMBER_CLAIMED}')"
                ),
                "message": "claims of this pool are refused by the cluster's policy"
            }]
        }
    }))
    .expect("policy");
    let binding: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        }
    }))
    .expect("binding");
    let policies: Api<DynamicObject> =
        Api::all_with(client.clone(), &gvk("ValidatingAdmissionPolicy"));
    let bindings: Api<DynamicObject> =
        Api::all_with(client.clone(), &gvk("ValidatingAdmissionPolicyBinding"));
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("admission policy");
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("admission policy binding");
    name
}

async fn drop_refusal(client: &kube::Client, name: &str) {
    use kube::api::DynamicObject;
    use kube::core::{ApiResource, GroupVersionKind};
    for kind in [
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicy",
    ] {
        let api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &ApiResource::from_gvk(&GroupVersionKind::gvk(
                "admissionregistration.k8s.io",
                "v1",
                kind,
            )),
        );
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
}

#[tokio::test]
async fn a_claim_the_api_server_refuses_after_the_launch_lock_falls_back_to_a_fresh_pod_and_says_why()
 {
    let Some(f) = fixture("pool-refused").await else {
        return;
    };
    create_pool(&f.pools, "guarded", 1).await;
    let member = check_in(&f, "guarded", 1).await.remove(0);
    pool_ready(&f, "guarded", 1).await;
    let refusal = refuse_claims(&f.client, &f.ns, "guarded").await;
    // The API server applies a new admission policy within a moment: wait until a dry run of
    // a claim is refused.
    eventually("the admission policy in force", || {
        let (pods, member) = (f.pods.clone(), member.clone());
        async move {
            let patch = json!({"metadata": {"labels": {LABEL_POOL_MEMBER: POOL_MEMBER_CLAIMED}}});
            let params = PatchParams {
                dry_run: true,
                ..PatchParams::default()
            };
            pods.patch(&member, &params, &Patch::Merge(&patch))
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;

    let exec = create_execution(&f.execs, "refused").await;
    let (sandbox, status) = fresh_pod_status(&f, "refused").await;
    assert_eq!(status.phase, Some(ExecutionPhase::Running));
    assert_eq!(status.pod_name, Some(format!("pod/{sandbox}")));
    assert_eq!(
        status.launch.as_ref().and_then(|l| l.pool.clone()),
        None,
        "the launch record no longer names the pool"
    );
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("could not be claimed")
            && message.contains(&member)
            && message.contains("refused by the cluster's policy")
            && message.contains("fresh Pod"),
        "{message}"
    );
    // The fresh Pod has its own egress policy; the member is untouched and idle, and its
    // runner is never handed the bundle.
    Api::<NetworkPolicy>::namespaced(f.client.clone(), &f.ns)
        .get(&sandbox)
        .await
        .expect("the fresh Pod's egress policy");
    let pod = f.pods.get(&member).await.expect("member");
    assert_eq!(
        pod.labels().get(LABEL_POOL_MEMBER).map(String::as_str),
        Some(POOL_MEMBER_IDLE)
    );
    assert!(!pod.labels().contains_key(LABEL_EXECUTION));
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let standby = standby_of(&secrets, &member).await;
    let asked = reqwest::Client::new()
        .post(&standby.url)
        .bearer_auth(standby.token.as_str())
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(
        asked.as_ref().map_or(true, |r| r.status().as_u16() != 200),
        "the member was handed a bundle: {:?}",
        asked.map(|r| r.status())
    );
    let event = launched_event(&f, &exec).await;
    assert!(
        event
            .note
            .unwrap_or_default()
            .contains("could not be claimed"),
        "the Event says why the run got a fresh Pod"
    );
    drop_refusal(&f.client, &refusal).await;
    f.stop().await;
}
