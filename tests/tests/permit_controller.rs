//! Controller tier: the real Permit controller against a real API server keeps each Permit's
//! status true to its spec and the owner's recorded decision: Pending with its digest on
//! creation, Approved with an expiry after an approval, voided (Pending, approval removed,
//! `SpecChanged`, an Event) by a spec edit, Expired once the lifetime has passed, Denied on a
//! denial.

use oauth3_test_support::wait_until;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use oauth3_crds::{Permit, PermitPhase, spec_digest};
use oauth3_operator::permit::status::{CONDITION_APPROVED, CONDITION_READY, reason};
use oauth3_operator::{Context, run_permit_controller};
use oauth3_tests::{client_or_skip, namespace};
use serde_json::json;
use tokio::sync::oneshot;

/// The field manager an approver (not the operator) writes decisions with.
const APPROVER: &str = "oauth3-test-approver";
const DEADLINE: Duration = Duration::from_secs(30);

/// A running controller scoped to one namespace; stops when dropped.
struct RunningController {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn start_controller(client: &Client, ns: &str) -> RunningController {
    let (stop, stopped) = oneshot::channel::<()>();
    let api: Api<Permit> = Api::namespaced(client.clone(), ns);
    let ctx = Arc::new(Context::new(client.clone()));
    let metrics = Arc::new(oauth3_operator::metrics::Metrics::new());
    tokio::spawn(run_permit_controller(api, ctx, metrics, async move {
        let _ = stopped.await;
    }));
    RunningController { stop: Some(stop) }
}

fn permit(name: &str, valid_for: &str) -> Permit {
    serde_json::from_value(json!({
        "apiVersion": "oauth3.dev/v1alpha1",
        "kind": "Permit",
        "metadata": {"name": name},
        "spec": {
            "description": "List issues",
            "capabilities": [{
                "name": "github",
                "baseUrl": "https://api.github.com",
                "paths": ["/repos/o/r/issues"],
                "methods": ["GET"]
            }],
            "validFor": valid_for
        }
    }))
    .expect("a valid Permit")
}

fn seconds(ts: Timestamp) -> Timestamp {
    Timestamp::from_second(ts.as_second()).expect("whole seconds")
}

/// Records a decision in status as an approver would: a status patch with its own field
/// manager.
async fn record_decision(
    api: &Api<Permit>,
    name: &str,
    decision: &str,
    digest: &str,
    at: Timestamp,
) {
    let patch = json!({"status": {"approval": {
        "decision": decision,
        "by": "owner@example",
        "via": "kubectl",
        "at": Time(at),
        "specDigest": digest,
    }}});
    let pp = PatchParams {
        field_manager: Some(APPROVER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(name, &pp, &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("recording a {decision} decision on {name}: {e}"));
}

/// Polls the Permit until `ok` holds, failing with the last status after the deadline.
async fn wait_for(
    api: &Api<Permit>,
    name: &str,
    what: &str,
    ok: impl Fn(&Permit) -> bool,
) -> Permit {
    wait_until(&format!("{name}: {what}"), DEADLINE, || async {
        let p = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading {name}: {e}"));
        if ok(&p) { Ok(p) } else { Err(p.status) }
    })
    .await
}

fn phase(p: &Permit) -> Option<PermitPhase> {
    p.status.as_ref().and_then(|s| s.phase)
}

fn condition<'a>(p: &'a Permit, type_: &str) -> Option<&'a Condition> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn current_digest(p: &Permit) -> String {
    spec_digest(&p.spec).expect("digest of the stored spec")
}

async fn setup(
    prefix: &str,
    name: &str,
    valid_for: &str,
) -> Option<(Client, Api<Permit>, RunningController)> {
    let client = client_or_skip().await?;
    let ns = namespace(&client, prefix).await;
    let controller = start_controller(&client, &ns);
    let api: Api<Permit> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &permit(name, valid_for))
        .await
        .unwrap_or_else(|e| panic!("creating Permit {name}: {e}"));
    Some((client, api, controller))
}

#[tokio::test]
async fn a_new_permit_becomes_pending_with_its_spec_digest_and_ready() {
    let Some((_client, api, _controller)) = setup("permit-new", "p", "1h").await else {
        return;
    };
    let p = wait_for(&api, "p", "Pending", |p| {
        phase(p) == Some(PermitPhase::Pending)
    })
    .await;
    let status = p.status.clone().expect("status");
    assert_eq!(status.spec_digest, Some(current_digest(&p)));
    assert_eq!(status.capability_count, Some(1));
    assert_eq!(status.observed_generation, p.metadata.generation);
    assert_eq!(
        status.approval, None,
        "nothing is approved by creating a Permit"
    );
    let ready = condition(&p, CONDITION_READY).expect("Ready condition");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", reason::DIGEST_COMPUTED)
    );
    let approved = condition(&p, CONDITION_APPROVED).expect("Approved condition");
    assert_eq!(approved.status, "False");
    let managers: Vec<_> = p
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers
            .iter()
            .any(|m| m == oauth3_crds::constants::FIELD_MANAGER),
        "status is applied with the operator's field manager: {managers:?}"
    );
}

#[tokio::test]
async fn an_approval_takes_effect_with_an_expiry_and_a_spec_edit_voids_it() {
    let Some((client, api, _controller)) = setup("permit-void", "p", "1h").await else {
        return;
    };
    let p = wait_for(&api, "p", "Pending", |p| {
        phase(p) == Some(PermitPhase::Pending)
    })
    .await;
    let approved_digest = current_digest(&p);
    let at = seconds(Timestamp::now());
    record_decision(&api, "p", "Approved", &approved_digest, at).await;

    let p = wait_for(&api, "p", "Approved", |p| {
        phase(p) == Some(PermitPhase::Approved)
    })
    .await;
    let expiry = at
        .checked_add(SignedDuration::from_hours(1))
        .expect("in range");
    let message = condition(&p, CONDITION_APPROVED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(&format!("until {expiry}")),
        "the Approved condition states expiresAt = at + validFor: {message}"
    );
    assert_eq!(
        condition(&p, CONDITION_APPROVED).map(|c| c.status.as_str()),
        Some("True")
    );

    // The agent edits the approved spec: the approval must not survive.
    let edit = json!({"spec": {"description": "List and close issues"}});
    api.patch("p", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .expect("editing the spec");
    let p = wait_for(&api, "p", "voided", |p| {
        phase(p) == Some(PermitPhase::Pending)
            && p.status.as_ref().is_some_and(|s| s.approval.is_none())
    })
    .await;
    let new_digest = current_digest(&p);
    assert_ne!(new_digest, approved_digest);
    let status = p.status.clone().expect("status");
    assert_eq!(status.spec_digest.as_deref(), Some(new_digest.as_str()));
    assert_eq!(status.observed_generation, p.metadata.generation);
    let approved = condition(&p, CONDITION_APPROVED).expect("Approved condition");
    assert_eq!(
        (approved.status.as_str(), approved.reason.as_str()),
        ("False", reason::SPEC_CHANGED)
    );
    assert!(
        approved.message.contains("spec changed after"),
        "{}",
        approved.message
    );

    // ... and stays void: a later look does not bring the old decision back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = api.get("p").await.expect("reading p");
    assert_eq!(phase(&later), Some(PermitPhase::Pending));
    assert!(later.status.as_ref().is_some_and(|s| s.approval.is_none()));

    // An Event says what happened, naming both digests.
    let events: Api<Event> =
        Api::namespaced(client, &p.metadata.namespace.clone().expect("namespaced"));
    let expected = format!(
        "approval voided: spec changed after approval (digest {approved_digest} -> {new_digest})"
    );
    let start = tokio::time::Instant::now();
    loop {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("listing Events");
        let found = list.items.iter().find(|e| {
            e.reason.as_deref() == Some(reason::APPROVAL_VOIDED)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("p")
        });
        if let Some(e) = found {
            assert_eq!(e.note.as_deref(), Some(expected.as_str()));
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            assert_eq!(e.reporting_controller.as_deref(), Some("oauth3-operator"));
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no ApprovalVoided Event; saw {:?}",
            list.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_approval_whose_lifetime_has_passed_is_expired() {
    let Some((_client, api, _controller)) = setup("permit-expired", "p", "1s").await else {
        return;
    };
    let p = wait_for(&api, "p", "Pending", |p| {
        phase(p) == Some(PermitPhase::Pending)
    })
    .await;
    let at = seconds(Timestamp::now()) - SignedDuration::from_mins(1);
    record_decision(&api, "p", "Approved", &current_digest(&p), at).await;
    let p = wait_for(&api, "p", "Expired", |p| {
        phase(p) == Some(PermitPhase::Expired)
    })
    .await;
    let approved = condition(&p, CONDITION_APPROVED).expect("Approved condition");
    assert_eq!(
        (approved.status.as_str(), approved.reason.as_str()),
        ("False", reason::EXPIRED)
    );
    assert!(
        approved
            .message
            .contains(&format!("expired at {}", at + SignedDuration::from_secs(1))),
        "{}",
        approved.message
    );
}

#[tokio::test]
async fn an_approval_lapses_while_the_controller_runs() {
    let Some((_client, api, _controller)) = setup("permit-lapse", "p", "5s").await else {
        return;
    };
    let p = wait_for(&api, "p", "Pending", |p| {
        phase(p) == Some(PermitPhase::Pending)
    })
    .await;
    record_decision(
        &api,
        "p",
        "Approved",
        &current_digest(&p),
        seconds(Timestamp::now()),
    )
    .await;
    wait_for(&api, "p", "Approved", |p| {
        phase(p) == Some(PermitPhase::Approved)
    })
    .await;
    // No write happens after this: only the requeue at expiry can move it to Expired.
    wait_for(&api, "p", "Expired", |p| {
        phase(p) == Some(PermitPhase::Expired)
    })
    .await;
}

#[tokio::test]
async fn a_denial_is_recorded_as_denied() {
    let Some((_client, api, _controller)) = setup("permit-denied", "p", "1h").await else {
        return;
    };
    let p = wait_for(&api, "p", "Pending", |p| {
        phase(p) == Some(PermitPhase::Pending)
    })
    .await;
    record_decision(
        &api,
        "p",
        "Denied",
        &current_digest(&p),
        seconds(Timestamp::now()),
    )
    .await;
    let p = wait_for(&api, "p", "Denied", |p| {
        phase(p) == Some(PermitPhase::Denied)
    })
    .await;
    assert_eq!(
        condition(&p, CONDITION_APPROVED).map(|c| c.reason.as_str()),
        Some(reason::DENIED)
    );
}
