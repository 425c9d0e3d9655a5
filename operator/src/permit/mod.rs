//! The Permit controller: watches Permits and keeps their status (digest, phase, conditions)
//! true to the spec and to the decision the owner recorded in `status.approval`, which the
//! operator reads but never re-applies (it only removes a decision voided by a spec change).
//!
//! Reconcile shape: observe (the Permit from the watch cache) -> desired status (pure, see
//! [`status`]) -> remove a voided decision if any -> server-side apply of the status with the
//! operator's field manager -> Events -> requeue at the approval's expiry or after a resync.

pub mod status;

use crate::metrics::Metrics;
use crate::status_write::write_status;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use oauth3_crds::constants::{API_VERSION, FIELD_MANAGER};
use oauth3_crds::{Permit, PermitStatus};
use serde::Serialize;

use crate::context::Context;
use crate::error::Error;
use status::{
    EventSeverity, PlannedEvent, desired_status, is_up_to_date, planned_events, requeue_after,
};

/// How often a Permit is looked at when nothing changes and no approval is about to lapse.
pub const RESYNC: Duration = Duration::from_secs(600);

/// How long a failed draft stands before the operator drafts again (a document host may
/// have been down).
pub const DRAFT_RETRY: Duration = Duration::from_secs(300);

/// The body of the status server-side apply: only the fields the operator owns.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: &'static str,
    kind: &'static str,
    status: &'a PermitStatus,
}

/// Reconciles one Permit. Idempotent, and independent of why it ran.
///
/// # Errors
/// [`Error`] naming the step that failed; the controller retries with backoff.
pub async fn reconcile(permit: Arc<Permit>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = permit.name_any();
    let namespace = permit.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "Permit",
        name: name.clone(),
    })?;
    let api: Api<Permit> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = ctx.now();
    let current = permit.status.as_ref();
    let draft = match &ctx.drafting {
        Some(drafting)
            if crate::draft::needs_draft(
                &permit.spec,
                current.and_then(|s| s.draft.as_ref()),
                now,
                DRAFT_RETRY,
            ) =>
        {
            Some(drafting.draft(&permit.spec, now).await)
        }
        _ => current.and_then(|s| s.draft.clone()),
    };
    let mut resolved = (*permit).clone();
    resolved.status.get_or_insert_with(Default::default).draft = draft.clone();
    let spec = resolved.effective_spec();
    let mut desired = desired_status(&spec, current, permit.metadata.generation, now);
    desired.status.network = Some(crate::egress::network_text(&spec, ctx.egress));
    status::apply_draft(
        &mut desired,
        &permit.spec,
        draft,
        permit.metadata.generation,
        now,
    );

    if desired.voided.is_some() {
        // Server-side apply cannot remove a field that another manager (the approver) also
        // owns, so the void decision is removed with a merge patch, guarded by the
        // resourceVersion we decided on: if the status changed meanwhile, this conflicts and
        // the reconcile runs again with fresh data.
        let change = serde_json::json!({"approval": null});
        let written = write_status(&api, &*permit, &change, None)
            .await
            .map_err(|source| Error::ClearVoidedApproval {
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            })?;
        if !written.written() {
            // Someone else changed it meanwhile: decide again on what they wrote.
            return Ok(Action::requeue(std::time::Duration::from_millis(200)));
        }
    }

    if is_up_to_date(current, &desired) {
        ctx.reset_backoff(&key(&permit));
        return Ok(Action::requeue(requeue_after(&desired, now, RESYNC)));
    }
    let body = StatusApply {
        api_version: API_VERSION,
        kind: "Permit",
        status: &desired.status,
    };
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::ApplyPermitStatus {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    })?;

    let reference = permit.object_ref(&());
    for event in planned_events(current, &desired) {
        publish(&ctx, &event, &reference).await;
    }
    ctx.reset_backoff(&key(&permit));
    Ok(Action::requeue(requeue_after(&desired, now, RESYNC)))
}

/// Retry policy after a failed reconcile: exponential backoff per Permit.
pub fn error_policy(permit: Arc<Permit>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.failure_backoff(&key(&permit));
    tracing::warn!(permit = %key(&permit), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The Permit controller over `api` (all namespaces or one), as a stream of reconcile results
/// that ends after `shutdown` resolves and in-flight reconciles finish. Each reconcile is
/// counted and timed in `metrics`; the cache is the lean one (no managedFields or
/// last-applied copies in memory).
pub fn permit_controller(
    api: Api<Permit>,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<Item = Result<(ObjectRef<Permit>, Action), controller::Error<Error, watcher::Error>>>
{
    let (store, stream) = crate::cache::lean_watch(api);
    Controller::for_stream(stream, store)
        .graceful_shutdown_on(shutdown)
        .run(
            move |permit, ctx| {
                let metrics = metrics.clone();
                async move { metrics.instrument("permit", reconcile(permit, ctx)).await }
            },
            error_policy,
            ctx,
        )
}

/// Runs the Permit controller over `api` until `shutdown` resolves, logging each outcome. The
/// one way the operator (and its tests) run it.
pub async fn run_permit_controller(
    api: Api<Permit>,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    permit_controller(api, ctx, metrics, shutdown)
        .for_each(|result| async move {
            match result {
                Ok((permit, action)) => {
                    tracing::debug!(permit = %permit, ?action, "reconciled");
                }
                Err(e) => tracing::warn!(error = %e, "permit controller"),
            }
        })
        .await;
}

async fn publish(ctx: &Context, event: &PlannedEvent, reference: &ObjectReference) {
    let event = Event {
        type_: match event.severity {
            EventSeverity::Normal => EventType::Normal,
            EventSeverity::Warning => EventType::Warning,
        },
        reason: event.reason.clone(),
        note: Some(event.note.clone()),
        action: event.action.clone(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        // Events are informative; status is the record. A failed Event does not fail the
        // reconcile (which would repeat the status write).
        tracing::warn!(error = %e, reason = %event.reason, "publishing an Event failed");
    }
}

fn key(permit: &Permit) -> String {
    format!(
        "{}/{}",
        permit.namespace().unwrap_or_default(),
        permit.name_any()
    )
}
