//! The approval path from the attacker's side: an agent's identity (a service account bound to
//! the chart's `oauth3-agent` role) can request Permits and submit Executions but can never
//! record an approval, trust code, or keep an approval while changing the spec. The owner's
//! identity (`oauth3-owner`) can decide.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use oauth3_crds::{Execution, ExecutionSpec, Permit, PermitSpec};
use oauth3_operator::execution::decide::{Admission, admit};
use oauth3_operator::plugin::{Decision, Plugin};
use oauth3_tests::{bind, client_as, client_or_skip, install_user_roles, namespace};
use serde_json::json;

fn spec(paths: &[&str]) -> PermitSpec {
    serde_json::from_value(json!({
        "description": "issues",
        "capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
            "paths": paths, "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}}],
        "secrets": ["GITHUB_TOKEN"]
    }))
    .expect("spec")
}

fn forbidden(r: Result<impl std::fmt::Debug, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(ref s)) if s.is_forbidden())
}

#[tokio::test]
async fn an_agent_can_request_and_submit_but_never_approve() {
    let Some(admin) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&admin, "rbac").await;
    install_user_roles(&admin).await;
    bind(
        &admin,
        &ns,
        "oauth3-agent",
        json!({"kind": "ServiceAccount", "name": "agent", "namespace": ns}),
    )
    .await;
    bind(
        &admin,
        &ns,
        "oauth3-owner",
        json!({"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}),
    )
    .await;
    let agent = client_as(
        &format!("system:serviceaccount:{ns}:agent"),
        &["system:serviceaccounts"],
    )
    .await;
    let alice = client_as("alice", &["system:authenticated"]).await;

    // The agent may request a Permit and submit an Execution.
    let agent_permits: Api<Permit> = Api::namespaced(agent.clone(), &ns);
    let mut request = Permit::new("gh", spec(&["/repos/o/r/issues"]));
    // A forged approval in the create request is dropped: status is not writable on create.
    request.status = Some(serde_json::from_value(json!({
        "phase": "Approved",
        "approval": {"decision": "Approved", "by": "agent", "via": "kubectl",
                     "at": "2026-01-01T00:00:00Z", "expiresAt": "2999-01-01T00:00:00Z",
                     "specDigest": oauth3_crds::spec_digest(&spec(&["/repos/o/r/issues"])).expect("d")}
    }))
    .expect("status"));
    let created = agent_permits
        .create(&PostParams::default(), &request)
        .await
        .expect("agent creates a Permit");
    assert!(
        created.status.is_none_or(|s| s.approval.is_none()),
        "a forged approval must not be stored"
    );
    let exec_spec: ExecutionSpec =
        serde_json::from_value(json!({"permitRef": "gh", "code": "return 1"})).expect("spec");
    Api::<Execution>::namespaced(agent.clone(), &ns)
        .create(&PostParams::default(), &Execution::new("run", exec_spec))
        .await
        .expect("agent submits an Execution");

    // The agent cannot record a decision: no access to permits/status, by any verb.
    let approval = json!({"status": {"approval": {"decision": "Approved", "by": "agent", "via": "kubectl",
        "at": "2026-01-01T00:00:00Z", "specDigest": "sha256:x"}}});
    assert!(forbidden(
        agent_permits
            .patch_status("gh", &PatchParams::default(), &Patch::Merge(&approval))
            .await
    ));
    let mut whole = agent_permits.get("gh").await.expect("agent reads");
    whole.status = serde_json::from_value(approval["status"].clone()).ok();
    assert!(forbidden(
        agent_permits
            .replace_status("gh", &PostParams::default(), &whole)
            .await
    ));
    assert!(forbidden(
        Plugin::new(agent.clone(), ns.clone())
            .decide("gh", Decision::Approve)
            .await
            .map_err(|e| match e {
                oauth3_operator::plugin::PluginError::Api { source, .. } => source,
                other => panic!("unexpected {other}"),
            })
    ));
    // Nor write Execution results.
    let execs: Api<Execution> = Api::namespaced(agent.clone(), &ns);
    let result = json!({"status": {"phase": "Succeeded", "result": 42}});
    assert!(forbidden(
        execs
            .patch_status("run", &PatchParams::default(), &Patch::Merge(&result))
            .await
    ));

    // The owner can decide; the decision names the authenticated owner.
    let summary = Plugin::new(alice.clone(), ns.clone())
        .decide("gh", Decision::Approve)
        .await
        .expect("owner approves");
    assert!(summary.contains("approved by alice"), "{summary}");
    let admin_permits: Api<Permit> = Api::namespaced(admin.clone(), &ns);
    let approved = admin_permits.get("gh").await.expect("read");
    let exec = Api::<Execution>::namespaced(admin.clone(), &ns)
        .get("run")
        .await
        .expect("read");
    assert!(matches!(
        admit(&exec, Some(&approved), Timestamp::now()),
        Admission::Launch { .. }
    ));

    // The agent widens the approved Permit: allowed as an edit, but the approval no longer
    // matches the spec, so nothing runs under it.
    let widen = json!({"spec": {"capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
        "paths": ["/repos/o/r/issues", "/user/repos"], "methods": ["GET", "DELETE"],
        "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}}]}});
    agent_permits
        .patch("gh", &PatchParams::default(), &Patch::Merge(&widen))
        .await
        .expect("agent edits its request");
    let widened = admin_permits.get("gh").await.expect("read");
    match admit(&exec, Some(&widened), Timestamp::now()) {
        Admission::Refuse { reason, message } => {
            assert_eq!(reason.as_str(), "PermitChanged", "{message}");
        }
        other => panic!("a widened Permit must not admit Executions, got {other:?}"),
    }
}
