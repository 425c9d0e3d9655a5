//! `kubectl oauth3` against a real kube-apiserver: decisions land in the Permit's status bound
//! to the spec digest, code trust only under perCode Permits, misuse gets clear errors, and
//! sealing never prints the value.

use std::process::Output;

use kube::api::{Api, Patch, PatchParams, PostParams};
use oauth3_crds::{
    ApprovalDecision, ApprovalVia, Execution, ExecutionSpec, Permit, PermitSpec, TrustLevel,
    code_digest, spec_digest,
};
use oauth3_tests::{client_or_skip, namespace};
use serde_json::json;

fn plugin(ns: &str, args: &[&str]) -> Output {
    let kubeconfig = std::env::var("TEST_KUBECONFIG").expect("TEST_KUBECONFIG");
    std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-oauth3"))
        .env("KUBECONFIG", kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("plugin runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn create_permit(client: &kube::Client, ns: &str, name: &str, review: &str) -> Permit {
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "List issues",
        "capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
            "paths": ["/repos/o/r/issues"], "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}}],
        "secrets": ["GITHUB_TOKEN"], "validFor": "2h", "codeReview": review
    }))
    .expect("spec");
    Api::<Permit>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &Permit::new(name, spec))
        .await
        .expect("permit created")
}

#[tokio::test]
async fn approve_deny_and_revoke_record_the_decision_bound_to_the_current_spec() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "plugin-decide").await;
    let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
    let created = create_permit(&client, &ns, "gh", "none").await;
    let digest = spec_digest(&created.spec).expect("digest");

    let out = plugin(&ns, &["approve", "gh"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&digest), "{}", text(&out));
    let approval = permits
        .get("gh")
        .await
        .expect("read")
        .status
        .and_then(|s| s.approval)
        .expect("approval");
    assert_eq!(approval.decision, ApprovalDecision::Approved);
    assert_eq!(approval.spec_digest, digest);
    assert_eq!(approval.via, ApprovalVia::Kubectl);
    assert_eq!(
        approval.by, "oauth3-admin",
        "the authenticated user, not a name the caller chose"
    );
    let lifetime = approval
        .expires_at
        .expect("expiry")
        .0
        .duration_since(approval.at.0);
    assert_eq!(lifetime.as_secs(), 7200);

    let out = plugin(&ns, &["deny", "gh"]);
    assert!(out.status.success(), "{}", text(&out));
    let a = permits
        .get("gh")
        .await
        .expect("read")
        .status
        .and_then(|s| s.approval)
        .expect("approval");
    assert_eq!(a.decision, ApprovalDecision::Denied);

    let out = plugin(&ns, &["revoke", "gh"]);
    assert!(out.status.success(), "{}", text(&out));
    let a = permits
        .get("gh")
        .await
        .expect("read")
        .status
        .and_then(|s| s.approval)
        .expect("approval");
    assert_eq!(a.decision, ApprovalDecision::Revoked);

    let out = plugin(&ns, &["get", "gh"]);
    assert!(out.status.success(), "{}", text(&out));
    for needle in [
        "github(method, path, {query, body, headers})",
        "url:     https://api.github.com/repos/o/r/issues",
        "Decision: Revoked by oauth3-admin",
    ] {
        assert!(
            text(&out).contains(needle),
            "missing {needle:?}:\n{}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn code_trust_needs_a_per_code_permit_and_binds_the_exact_code_digest() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "plugin-code").await;
    create_permit(&client, &ns, "plain", "none").await;
    create_permit(&client, &ns, "reviewed", "perCode").await;
    let spec: ExecutionSpec =
        serde_json::from_value(json!({"permitRef": "reviewed", "code": "return 42"}))
            .expect("spec");
    Api::<Execution>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &Execution::new("run-1", spec))
        .await
        .expect("execution");

    let out = plugin(
        &ns,
        &["approve", "plain", "--code", "run-1", "--level", "24h"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("codeReview: none"), "{}", text(&out));

    let out = plugin(&ns, &["approve", "reviewed", "--level", "always"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("--level applies to code trust"),
        "{}",
        text(&out)
    );

    let out = plugin(
        &ns,
        &[
            "approve", "reviewed", "--code", "run-1", "--level", "always",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
    let trusted = permits
        .get("reviewed")
        .await
        .expect("read")
        .status
        .expect("status")
        .trusted_code;
    assert_eq!(trusted.len(), 1);
    assert_eq!(trusted[0].code_digest, code_digest("return 42"));
    assert_eq!(trusted[0].level, TrustLevel::Always);

    let out = plugin(
        &ns,
        &["revoke", "reviewed", "--code", &code_digest("return 42")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let status = permits
        .get("reviewed")
        .await
        .expect("read")
        .status
        .expect("status");
    assert!(status.trusted_code.is_empty());
}

#[tokio::test]
async fn misuse_gets_clear_errors_and_changes_nothing() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "plugin-misuse").await;
    let out = plugin(&ns, &["approve", "missing"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains(&format!("Permit missing not found in namespace {ns}")),
        "{}",
        text(&out)
    );
    create_permit(&client, &ns, "gh", "perCode").await;
    let out = plugin(
        &ns,
        &["approve", "gh", "--code", "sha256:xyz", "--level", "once"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("64 hex characters"), "{}", text(&out));
    let out = plugin(
        &ns,
        &["approve", "gh", "--code", "no-such-exec", "--level", "once"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("Execution no-such-exec not found"),
        "{}",
        text(&out)
    );
    let status = Api::<Permit>::namespaced(client.clone(), &ns)
        .get("gh")
        .await
        .expect("read")
        .status;
    assert!(status.is_none_or(|s| s.approval.is_none() && s.trusted_code.is_empty()));
}

#[tokio::test]
async fn a_decision_on_a_permit_changed_since_it_was_read_is_refused_not_overwritten() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let ns = namespace(&client, "plugin-race").await;
    create_permit(&client, &ns, "gh", "none").await;
    let permits: Api<Permit> = Api::namespaced(client.clone(), &ns);
    let stale = permits.get("gh").await.expect("read");
    // Someone else changes the object after it was read.
    permits
        .patch(
            "gh",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect("label");
    let p = oauth3_operator::plugin::Plugin::new(client.clone(), ns.clone());
    // The plugin reads afresh, so a normal decision works...
    p.decide("gh", oauth3_operator::plugin::Decision::Approve)
        .await
        .expect("decide");
    // ...but a write carrying the stale resourceVersion is refused by the API server.
    let patch = json!({"metadata": {"resourceVersion": stale.metadata.resource_version}, "status": {"approval": null}});
    let err = permits
        .patch_status("gh", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("stale write refused");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.is_conflict()),
        "{err}"
    );
    assert!(
        permits
            .get("gh")
            .await
            .expect("read")
            .status
            .and_then(|s| s.approval)
            .is_some()
    );
}

#[tokio::test]
async fn seal_prints_a_sealed_secret_that_only_the_enclave_key_opens() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-oauth3"))
        .args([
            "-n",
            "team-a",
            "seal",
            "GITHUB_TOKEN",
            "--from-literal",
            "ghp_value_123",
        ])
        .args(["--public-key", &hex_public_key()])
        .output()
        .expect("runs");
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        !printed.contains("ghp_value_123"),
        "the value must never be printed"
    );
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_yaml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("yaml");
    let envelope = secret.string_data.expect("data")["sealed"].clone();
    let key = crypto_box::SecretKey::from([5u8; 32]);
    let opened = oauth3_protocol::envelope::unseal(&key, &envelope, "team-a", "GITHUB_TOKEN")
        .expect("opens");
    assert_eq!(opened.as_str(), "ghp_value_123");
    assert!(oauth3_protocol::envelope::unseal(&key, &envelope, "team-b", "GITHUB_TOKEN").is_err());
}

fn hex_public_key() -> String {
    hex::encode(
        crypto_box::SecretKey::from([5u8; 32])
            .public_key()
            .as_bytes(),
    )
}
