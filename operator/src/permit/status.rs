//! The Permit's desired status and the Events that announce it: pure functions of the spec,
//! the current status, the generation and the time. No IO happens here.
//!
//! Rules (the approval is bound to the spec digest):
//! - no decision recorded: `Pending`;
//! - a decision whose `specDigest` differs from the current digest is **void**: it is cleared,
//!   the phase returns to `Pending` and `Approved=False reason=SpecChanged` says why (that
//!   reason stays until a new decision arrives);
//! - `Approved` for the current digest: `Approved` until `at + validFor` (`expiresAt`), then
//!   `Expired` (from the instant `now == expiresAt`);
//! - `Denied` for the current digest: `Denied`;
//! - `Revoked` (the owner withdrew the approval): `Revoked` until a new decision replaces it;
//! - an unparseable `validFor` (the schema rules it out) fails closed: `Ready=False` with the
//!   parse error, phase `Pending`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use oauth3_crds::{
    ApprovalDecision, ApprovalVia, PermitPhase, PermitSpec, PermitStatus, parse_duration,
    spec_digest,
};

use crate::conditions::{NewCondition, find_condition, set_condition};

/// Condition type: the spec is valid and its digest computed.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: an approval for the current spec is in force.
pub const CONDITION_APPROVED: &str = "Approved";

/// Condition and Event reasons used by the Permit controller.
pub mod reason {
    /// Ready: spec valid, digest computed.
    pub const DIGEST_COMPUTED: &str = "DigestComputed";
    /// Ready=False: `validFor` does not parse.
    pub const INVALID_VALID_FOR: &str = "InvalidValidFor";
    /// Ready=False: the digest could not be computed.
    pub const DIGEST_FAILED: &str = "DigestFailed";
    /// Approved=False: no decision yet.
    pub const AWAITING_DECISION: &str = "AwaitingDecision";
    /// Approved=True.
    pub const APPROVED: &str = "Approved";
    /// Approved=False: the owner denied it.
    pub const DENIED: &str = "Denied";
    /// Approved=False: the approval's lifetime ran out.
    pub const EXPIRED: &str = "Expired";
    /// Approved=False: the approval was revoked.
    pub const REVOKED: &str = "Revoked";
    /// Approved=False: the spec changed after the decision, which is void.
    pub const SPEC_CHANGED: &str = "SpecChanged";
    /// Approved=False: the spec is invalid, so no approval can be in force.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Approved=False: the intent was drafted; the owner decides on the draft.
    pub const DRAFTED: &str = "Drafted";
    /// Ready=False, Approved=False: the draft failed (the reasons are in `status.draft.errors`).
    pub const DRAFT_FAILED: &str = "DraftFailed";
    /// Approved=False: the intent waits for the operator's drafter.
    pub const AWAITING_DRAFT: &str = "AwaitingDraft";
    /// Event: a decision was voided by a spec change.
    pub const APPROVAL_VOIDED: &str = "ApprovalVoided";
}

/// A decision that was voided because the spec changed after it was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voided {
    /// The digest the decision was bound to.
    pub decided_digest: String,
    /// The digest of the spec as it is now.
    pub current_digest: String,
}

/// What the controller wants the Permit's status to be.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredStatus {
    /// The fields the operator owns: phase, specDigest, capabilityCount, observedGeneration and
    /// conditions. `approval` and `trustedCode` belong to the approver (the operator never
    /// applies them, so a stale cache can never overwrite an owner's decision) and `usage` to
    /// the Execution controller; they are left unset.
    pub status: PermitStatus,
    /// Set when a recorded decision was voided by this computation and must be removed.
    pub voided: Option<Voided>,
    /// When the current approval lapses, if one is in force: the controller checks again then.
    pub expires_at: Option<Timestamp>,
}

/// Severity of a planned Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSeverity {
    /// Expected lifecycle step.
    Normal,
    /// Something the owner or agent should look at.
    Warning,
}

/// An Event the controller should publish about a Permit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Normal or Warning.
    pub severity: EventSeverity,
    /// `PascalCase` reason.
    pub reason: String,
    /// What the controller did, in `PascalCase`.
    pub action: String,
    /// Human-readable note (never contains secrets; Permits hold none).
    pub note: String,
}

/// Computes the desired status of a Permit. Pure: the same inputs give the same output, and
/// applying the output and computing again gives the same output (idempotent).
pub fn desired_status(
    spec: &PermitSpec,
    current: Option<&PermitStatus>,
    generation: Option<i64>,
    now: Timestamp,
) -> DesiredStatus {
    let empty = PermitStatus::default();
    let current = current.unwrap_or(&empty);
    let now_time = Time(now);
    let mut status = PermitStatus {
        capability_count: Some(i32::try_from(spec.capabilities.len()).unwrap_or(i32::MAX)),
        observed_generation: generation,
        conditions: current.conditions.clone(),
        ..PermitStatus::default()
    };
    let set = |c: NewCondition, status: &mut PermitStatus| {
        set_condition(&mut status.conditions, c, generation, now_time.clone());
    };

    let digest = match spec_digest(spec) {
        Ok(d) => d,
        Err(e) => {
            status.phase = Some(PermitPhase::Pending);
            set(
                NewCondition::new(CONDITION_READY, false, reason::DIGEST_FAILED, e.to_string()),
                &mut status,
            );
            set(
                NewCondition::new(
                    CONDITION_APPROVED,
                    false,
                    reason::INVALID_SPEC,
                    "no approval is in force while the spec digest cannot be computed",
                ),
                &mut status,
            );
            return DesiredStatus {
                status,
                voided: None,
                expires_at: None,
            };
        }
    };
    status.spec_digest = Some(digest.clone());
    let valid_for = parse_duration(&spec.valid_for);
    match &valid_for {
        Ok(_) => set(
            NewCondition::new(
                CONDITION_READY,
                true,
                reason::DIGEST_COMPUTED,
                format!("spec is valid; digest {digest}"),
            ),
            &mut status,
        ),
        Err(e) => set(
            NewCondition::new(
                CONDITION_READY,
                false,
                reason::INVALID_VALID_FOR,
                format!("spec.validFor: {e}"),
            ),
            &mut status,
        ),
    }

    let previous_approved = find_condition(&current.conditions, CONDITION_APPROVED);
    let mut voided = None;
    let mut expires_at = None;
    let (phase, approved) = match &current.approval {
        Some(a) if a.spec_digest != digest => {
            voided = Some(Voided {
                decided_digest: a.spec_digest.clone(),
                current_digest: digest.clone(),
            });
            (
                PermitPhase::Pending,
                NewCondition::new(
                    CONDITION_APPROVED,
                    false,
                    reason::SPEC_CHANGED,
                    format!(
                        "the spec changed after the owner's decision (decided for {}, spec is now \
                         {digest}); the decision is void and the Permit needs a new one",
                        a.spec_digest
                    ),
                ),
            )
        }
        None => match previous_approved {
            Some(c) if c.reason == reason::SPEC_CHANGED && c.status == "False" => (
                PermitPhase::Pending,
                NewCondition::new(
                    CONDITION_APPROVED,
                    false,
                    reason::SPEC_CHANGED,
                    c.message.clone(),
                ),
            ),
            _ => (
                PermitPhase::Pending,
                NewCondition::new(
                    CONDITION_APPROVED,
                    false,
                    reason::AWAITING_DECISION,
                    "waiting for the owner's decision",
                ),
            ),
        },
        Some(a) => match (a.decision, &valid_for) {
            (ApprovalDecision::Revoked, _) => (
                PermitPhase::Revoked,
                NewCondition::new(
                    CONDITION_APPROVED,
                    false,
                    reason::REVOKED,
                    format!(
                        "revoked by {} via {}; a new approval is needed",
                        a.by,
                        via(a.via)
                    ),
                ),
            ),
            (ApprovalDecision::Denied, _) => (
                PermitPhase::Denied,
                NewCondition::new(
                    CONDITION_APPROVED,
                    false,
                    reason::DENIED,
                    format!("denied by {} via {}", a.by, via(a.via)),
                ),
            ),
            (ApprovalDecision::Approved, Err(e)) => (
                PermitPhase::Pending,
                NewCondition::new(
                    CONDITION_APPROVED,
                    false,
                    reason::INVALID_SPEC,
                    format!("the approval cannot take effect: spec.validFor: {e}"),
                ),
            ),
            (ApprovalDecision::Approved, Ok(valid_for)) => {
                let expiry = add(a.at.0, *valid_for);
                if now >= expiry {
                    (
                        PermitPhase::Expired,
                        NewCondition::new(
                            CONDITION_APPROVED,
                            false,
                            reason::EXPIRED,
                            format!("the approval by {} expired at {expiry}", a.by),
                        ),
                    )
                } else {
                    expires_at = Some(expiry);
                    (
                        PermitPhase::Approved,
                        NewCondition::new(
                            CONDITION_APPROVED,
                            true,
                            reason::APPROVED,
                            format!("approved by {} via {} until {expiry}", a.by, via(a.via)),
                        ),
                    )
                }
            }
        },
    };
    status.phase = Some(phase);
    set(approved, &mut status);
    DesiredStatus {
        status,
        voided,
        expires_at,
    }
}

/// Records the draft of an intent spec in `desired` (pure): `status.draft`, and while no
/// decision is in force, why: `Drafted` (the owner decides on it), `DraftFailed` (with the
/// reasons; `Ready=False`) or `AwaitingDraft`. A spec without intent is left as it is.
pub fn apply_draft(
    desired: &mut DesiredStatus,
    spec: &PermitSpec,
    draft: Option<oauth3_crds::Draft>,
    generation: Option<i64>,
    now: Timestamp,
) {
    if spec.intent.is_empty() {
        return;
    }
    let source = spec_digest(spec).unwrap_or_default();
    let draft = draft.filter(|d| d.source_digest == source);
    let now = Time(now);
    let status = &mut desired.status;
    let awaiting = find_condition(&status.conditions, CONDITION_APPROVED)
        .is_some_and(|c| c.reason == reason::AWAITING_DECISION || c.reason == reason::SPEC_CHANGED);
    match &draft {
        Some(d) if !d.errors.is_empty() => {
            let why = format!(
                "the {} drafter could not draft the intent: {}",
                d.drafter,
                d.errors.join("; ")
            );
            set_condition(
                &mut status.conditions,
                NewCondition::new(CONDITION_READY, false, reason::DRAFT_FAILED, why.clone()),
                generation,
                now.clone(),
            );
            set_condition(
                &mut status.conditions,
                NewCondition::new(CONDITION_APPROVED, false, reason::DRAFT_FAILED, why),
                generation,
                now,
            );
        }
        Some(d) if awaiting => {
            let docs: Vec<&str> = d.documents.iter().map(|x| x.url.as_str()).collect();
            set_condition(
                &mut status.conditions,
                NewCondition::new(
                    CONDITION_APPROVED,
                    false,
                    reason::DRAFTED,
                    format!(
                        "the {} drafter proposed {} capabilities from {}; waiting for the owner's decision",
                        d.drafter,
                        d.capabilities.len(),
                        docs.join(", ")
                    ),
                ),
                generation,
                now,
            );
        }
        Some(_) => {}
        None => {
            set_condition(
                &mut status.conditions,
                NewCondition::new(
                    CONDITION_APPROVED,
                    false,
                    reason::AWAITING_DRAFT,
                    "the intent waits for the operator's drafter (is drafting configured: --draft-doc-hosts?)",
                ),
                generation,
                now,
            );
        }
    }
    status.draft = draft;
}

/// The Events that announce the change from `current` to `desired`: one for a voided decision
/// and one for a phase transition. Nothing when the phase is unchanged and nothing was voided.
pub fn planned_events(
    current: Option<&PermitStatus>,
    desired: &DesiredStatus,
) -> Vec<PlannedEvent> {
    let mut events = Vec::new();
    if let Some(v) = &desired.voided {
        events.push(PlannedEvent {
            severity: EventSeverity::Warning,
            reason: reason::APPROVAL_VOIDED.to_owned(),
            action: "VoidApproval".to_owned(),
            note: format!(
                "approval voided: spec changed after approval (digest {} -> {})",
                v.decided_digest, v.current_digest
            ),
        });
    }
    let before = current.and_then(|s| s.phase);
    let after = desired.status.phase;
    if before != after
        && let Some(after) = after
    {
        let severity = match after {
            PermitPhase::Pending | PermitPhase::Approved => EventSeverity::Normal,
            PermitPhase::Denied | PermitPhase::Expired | PermitPhase::Revoked => {
                EventSeverity::Warning
            }
        };
        let message = desired
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_APPROVED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        events.push(PlannedEvent {
            severity,
            reason: phase_name(after).to_owned(),
            action: "UpdatePhase".to_owned(),
            note: format!(
                "phase {} -> {}: {message}",
                before.map_or("(none)", phase_name),
                phase_name(after)
            ),
        });
    }
    events
}

/// How long until the controller must look at the Permit again: until the approval lapses if
/// one is in force (never longer than `resync`), otherwise `resync`.
pub fn requeue_after(desired: &DesiredStatus, now: Timestamp, resync: Duration) -> Duration {
    match desired.expires_at {
        Some(expiry) => {
            let left = Duration::try_from(expiry.duration_since(now)).unwrap_or(Duration::ZERO);
            left.min(resync)
        }
        None => resync,
    }
}

/// Whether `current` already holds every field of `desired` that the operator owns (phase,
/// specDigest, capabilityCount, observedGeneration, conditions) and nothing needs removing:
/// then the status write is skipped. A usage update, an owner's decision or a resync changes
/// none of these; without the check each would cost the API server a server-side apply.
pub fn is_up_to_date(current: Option<&PermitStatus>, desired: &DesiredStatus) -> bool {
    let Some(current) = current else {
        return false;
    };
    let want = &desired.status;
    desired.voided.is_none()
        && current.phase == want.phase
        && current.spec_digest == want.spec_digest
        && current.capability_count == want.capability_count
        && current.network == want.network
        && current.draft == want.draft
        && current.observed_generation == want.observed_generation
        && current.conditions == want.conditions
}

/// The API spelling of a phase.
pub fn phase_name(phase: PermitPhase) -> &'static str {
    match phase {
        PermitPhase::Pending => "Pending",
        PermitPhase::Approved => "Approved",
        PermitPhase::Denied => "Denied",
        PermitPhase::Expired => "Expired",
        PermitPhase::Revoked => "Revoked",
    }
}

fn via(via: ApprovalVia) -> &'static str {
    match via {
        ApprovalVia::Telegram => "telegram",
        ApprovalVia::Kubectl => "kubectl",
        ApprovalVia::Web => "web",
    }
}

/// `at + d`, saturating at the largest timestamp (durations are at most 365 days, so this
/// only matters for absurd `at` values).
fn add(at: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| at.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use oauth3_crds::Approval;
    use serde_json::json;

    const T0: i64 = 1_800_000_000;

    fn ts(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid second")
    }

    fn spec() -> PermitSpec {
        serde_json::from_value(json!({
            "description": "List issues",
            "capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
                              "paths": ["/repos/o/r/issues"], "methods": ["GET"]}],
            "validFor": "1h"
        }))
        .expect("valid spec")
    }

    fn digest(spec: &PermitSpec) -> String {
        spec_digest(spec).expect("digest")
    }

    fn decision(decision: ApprovalDecision, digest: &str, at: i64) -> Approval {
        Approval {
            decision,
            by: "owner".to_owned(),
            via: ApprovalVia::Kubectl,
            at: Time(ts(at)),
            expires_at: None,
            spec_digest: digest.to_owned(),
            reason: None,
        }
    }

    fn with_approval(approval: Approval) -> PermitStatus {
        PermitStatus {
            approval: Some(approval),
            ..PermitStatus::default()
        }
    }

    fn condition<'a>(d: &'a DesiredStatus, type_: &str) -> &'a Condition {
        find_condition(&d.status.conditions, type_).expect("condition present")
    }

    /// The stored status after the controller applied `desired` over `current`: the fields the
    /// approver owns stay (unless the decision was voided and removed).
    fn stored(current: Option<&PermitStatus>, desired: &DesiredStatus) -> PermitStatus {
        let mut next = desired.status.clone();
        if desired.voided.is_none() {
            next.approval = current.and_then(|c| c.approval.clone());
        }
        next.trusted_code = current.map(|c| c.trusted_code.clone()).unwrap_or_default();
        next
    }

    /// Computes the status, then computes again from the stored result: a fixed point.
    fn settle(spec: &PermitSpec, current: Option<&PermitStatus>, now: i64) -> DesiredStatus {
        let first = desired_status(spec, current, Some(1), ts(now));
        let second = desired_status(spec, Some(&stored(current, &first)), Some(1), ts(now));
        assert_eq!(second.status, first.status, "desired status is idempotent");
        first
    }

    #[test]
    fn the_status_write_is_skipped_only_when_every_owned_field_already_matches() {
        let spec = spec();
        let d = digest(&spec);
        let approved = with_approval(decision(ApprovalDecision::Approved, &d, T0));
        let first = desired_status(&spec, Some(&approved), Some(1), ts(T0 + 1));
        assert!(!is_up_to_date(None, &first));
        assert!(
            !is_up_to_date(Some(&approved), &first),
            "nothing written yet"
        );

        // Written: the same computation a moment later (a usage update, a resync) is a no-op,
        // whatever the fields the operator does not own hold.
        let mut written = first.status.clone();
        written.approval = approved.approval.clone();
        written.usage = Some(oauth3_crds::PermitUsage {
            executions: 7,
            ..Default::default()
        });
        let again = desired_status(&spec, Some(&written), Some(1), ts(T0 + 2));
        assert!(is_up_to_date(Some(&written), &again));

        // A new generation, or a lapsed approval, must be written.
        let edited = desired_status(&spec, Some(&written), Some(2), ts(T0 + 2));
        assert!(!is_up_to_date(Some(&written), &edited));
        let lapsed = desired_status(&spec, Some(&written), Some(1), ts(T0 + 7200));
        assert!(!is_up_to_date(Some(&written), &lapsed));
    }

    #[test]
    fn a_new_permit_is_pending_with_digest_count_generation_and_ready() {
        let spec = spec();
        let d = desired_status(&spec, None, Some(4), ts(T0));
        assert_eq!(d.status.phase, Some(PermitPhase::Pending));
        assert_eq!(
            d.status.spec_digest.as_deref(),
            Some(digest(&spec).as_str())
        );
        assert_eq!(d.status.capability_count, Some(1));
        assert_eq!(d.status.observed_generation, Some(4));
        assert_eq!(d.status.approval, None);
        assert_eq!(d.voided, None);
        assert_eq!(d.expires_at, None);
        let ready = condition(&d, CONDITION_READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", reason::DIGEST_COMPUTED)
        );
        assert_eq!(ready.observed_generation, Some(4));
        let approved = condition(&d, CONDITION_APPROVED);
        assert_eq!(
            (approved.status.as_str(), approved.reason.as_str()),
            ("False", reason::AWAITING_DECISION)
        );
    }

    #[test]
    fn an_approval_for_the_current_digest_is_approved_until_at_plus_valid_for() {
        let spec = spec();
        let current = with_approval(decision(ApprovalDecision::Approved, &digest(&spec), T0));
        let d = settle(&spec, Some(&current), T0 + 10);
        assert_eq!(d.status.phase, Some(PermitPhase::Approved));
        assert_eq!(
            d.status.approval, None,
            "the approver owns the approval; it is not re-applied"
        );
        assert_eq!(d.expires_at, Some(ts(T0 + 3600)));
        let approved = condition(&d, CONDITION_APPROVED);
        assert_eq!(
            (approved.status.as_str(), approved.reason.as_str()),
            ("True", reason::APPROVED)
        );
        assert_eq!(
            requeue_after(&d, ts(T0 + 10), RESYNC_FOR_TESTS),
            Duration::from_secs(3590),
            "the controller looks again exactly when the approval lapses"
        );
    }

    const RESYNC_FOR_TESTS: Duration = Duration::from_secs(7200);

    #[test]
    fn requeue_is_capped_by_the_resync_interval() {
        let spec = spec();
        let current = with_approval(decision(ApprovalDecision::Approved, &digest(&spec), T0));
        let d = desired_status(&spec, Some(&current), Some(1), ts(T0));
        assert_eq!(
            requeue_after(&d, ts(T0), Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        let pending = desired_status(&spec, None, Some(1), ts(T0));
        assert_eq!(
            requeue_after(&pending, ts(T0), Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn an_approval_is_expired_from_the_exact_instant_at_plus_valid_for() {
        let spec = spec();
        let current = with_approval(decision(ApprovalDecision::Approved, &digest(&spec), T0));
        let just_before = desired_status(&spec, Some(&current), Some(1), ts(T0 + 3599));
        assert_eq!(just_before.status.phase, Some(PermitPhase::Approved));
        assert_eq!(
            requeue_after(&just_before, ts(T0 + 3599), RESYNC_FOR_TESTS),
            Duration::from_secs(1)
        );

        let at_boundary = settle(
            &spec,
            Some(&stored(Some(&current), &just_before)),
            T0 + 3600,
        );
        assert_eq!(at_boundary.status.phase, Some(PermitPhase::Expired));
        assert_eq!(at_boundary.expires_at, None, "nothing left to wait for");
        let approved = condition(&at_boundary, CONDITION_APPROVED);
        assert_eq!(
            (approved.status.as_str(), approved.reason.as_str()),
            ("False", reason::EXPIRED)
        );
        assert_eq!(approved.last_transition_time, Time(ts(T0 + 3600)));
        assert!(
            at_boundary.voided.is_none(),
            "the lapsed approval stays on record"
        );
    }

    #[test]
    fn a_denial_for_the_current_digest_is_denied_and_stays_denied() {
        let spec = spec();
        let current = with_approval(decision(ApprovalDecision::Denied, &digest(&spec), T0));
        let d = settle(&spec, Some(&current), T0 + 100_000);
        assert_eq!(d.status.phase, Some(PermitPhase::Denied));
        assert_eq!(d.expires_at, None);
        assert_eq!(d.voided, None);
        let approved = condition(&d, CONDITION_APPROVED);
        assert_eq!(
            (approved.status.as_str(), approved.reason.as_str()),
            ("False", reason::DENIED)
        );
    }

    #[test]
    fn a_decision_for_another_digest_is_voided_and_the_permit_returns_to_pending() {
        let spec = spec();
        let approved_then = decision(ApprovalDecision::Approved, "sha256:old", T0);
        let current = PermitStatus {
            phase: Some(PermitPhase::Approved),
            ..with_approval(approved_then)
        };
        let d = desired_status(&spec, Some(&current), Some(2), ts(T0 + 5));
        assert_eq!(d.status.phase, Some(PermitPhase::Pending));
        assert_eq!(d.status.approval, None, "the voided approval is cleared");
        assert_eq!(d.expires_at, None);
        assert_eq!(
            d.voided,
            Some(Voided {
                decided_digest: "sha256:old".to_owned(),
                current_digest: digest(&spec),
            })
        );
        let approved = condition(&d, CONDITION_APPROVED);
        assert_eq!(
            (approved.status.as_str(), approved.reason.as_str()),
            ("False", reason::SPEC_CHANGED)
        );
        assert!(
            approved.message.contains("spec changed after"),
            "{}",
            approved.message
        );

        // Once cleared, the Permit stays Pending and keeps saying why.
        let after = settle(&spec, Some(&d.status), T0 + 60);
        assert_eq!(after.status.phase, Some(PermitPhase::Pending));
        assert_eq!(after.voided, None, "voiding happens once");
        assert_eq!(
            condition(&after, CONDITION_APPROVED).reason,
            reason::SPEC_CHANGED
        );
    }

    #[test]
    fn a_denial_for_another_digest_is_voided_too() {
        let spec = spec();
        let current = with_approval(decision(ApprovalDecision::Denied, "sha256:old", T0));
        let d = desired_status(&spec, Some(&current), Some(2), ts(T0 + 5));
        assert_eq!(d.status.phase, Some(PermitPhase::Pending));
        assert!(d.voided.is_some());
        assert_eq!(d.status.approval, None);
    }

    #[test]
    fn a_new_approval_after_voiding_replaces_spec_changed() {
        let spec = spec();
        let voided = desired_status(
            &spec,
            Some(&with_approval(decision(
                ApprovalDecision::Approved,
                "sha256:old",
                T0,
            ))),
            Some(2),
            ts(T0 + 5),
        );
        let mut current = voided.status.clone();
        current.approval = Some(decision(
            ApprovalDecision::Approved,
            &digest(&spec),
            T0 + 10,
        ));
        let d = settle(&spec, Some(&current), T0 + 20);
        assert_eq!(d.status.phase, Some(PermitPhase::Approved));
        assert_eq!(condition(&d, CONDITION_APPROVED).reason, reason::APPROVED);
    }

    #[test]
    fn a_revocation_is_revoked_and_a_later_approval_lifts_it() {
        let spec = spec();
        let current = with_approval(decision(ApprovalDecision::Revoked, &digest(&spec), T0 + 5));
        let d = settle(&spec, Some(&current), T0 + 10);
        assert_eq!(d.status.phase, Some(PermitPhase::Revoked));
        assert_eq!(d.expires_at, None, "a revoked approval is not in force");
        let c = condition(&d, CONDITION_APPROVED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::REVOKED)
        );
        assert!(c.message.contains("revoked by owner"), "{}", c.message);
        let later = settle(&spec, Some(&stored(Some(&current), &d)), T0 + 100_000);
        assert_eq!(
            later.status.phase,
            Some(PermitPhase::Revoked),
            "stays revoked"
        );
        let reapproved = with_approval(decision(
            ApprovalDecision::Approved,
            &digest(&spec),
            T0 + 20,
        ));
        let mut next = stored(Some(&reapproved), &d);
        next.approval = reapproved.approval.clone();
        let lifted = settle(&spec, Some(&next), T0 + 30);
        assert_eq!(lifted.status.phase, Some(PermitPhase::Approved));
    }

    #[test]
    fn an_invalid_valid_for_fails_closed_with_the_parse_error() {
        let mut spec = spec();
        spec.valid_for = "1.5h".to_owned();
        let current = with_approval(decision(ApprovalDecision::Approved, &digest(&spec), T0));
        let d = settle(&spec, Some(&current), T0 + 1);
        assert_eq!(d.status.phase, Some(PermitPhase::Pending), "never Approved");
        assert_eq!(d.expires_at, None);
        let ready = condition(&d, CONDITION_READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason::INVALID_VALID_FOR)
        );
        assert!(ready.message.contains("1.5h"), "{}", ready.message);
        assert_eq!(condition(&d, CONDITION_APPROVED).status, "False");
    }

    #[test]
    fn events_announce_phase_transitions_only() {
        let spec = spec();
        let created = desired_status(&spec, None, Some(1), ts(T0));
        let events = planned_events(None, &created);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "Pending");
        assert_eq!(events[0].severity, EventSeverity::Normal);

        assert!(
            planned_events(
                Some(&created.status),
                &settle(&spec, Some(&created.status), T0 + 1)
            )
            .is_empty(),
            "no Event when nothing changed"
        );

        let mut current = created.status.clone();
        current.approval = Some(decision(ApprovalDecision::Approved, &digest(&spec), T0));
        let approved = desired_status(&spec, Some(&current), Some(1), ts(T0 + 1));
        let events = planned_events(Some(&current), &approved);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "Approved");
        assert!(
            events[0].note.starts_with("phase Pending -> Approved"),
            "{}",
            events[0].note
        );
    }

    #[test]
    fn voiding_is_announced_with_both_digests() {
        let spec = spec();
        let current = PermitStatus {
            phase: Some(PermitPhase::Approved),
            ..with_approval(decision(ApprovalDecision::Approved, "sha256:old", T0))
        };
        let d = desired_status(&spec, Some(&current), Some(2), ts(T0 + 5));
        let events = planned_events(Some(&current), &d);
        let voided = events
            .iter()
            .find(|e| e.reason == reason::APPROVAL_VOIDED)
            .expect("a voided Event");
        assert_eq!(voided.severity, EventSeverity::Warning);
        assert_eq!(
            voided.note,
            format!(
                "approval voided: spec changed after approval (digest sha256:old -> {})",
                digest(&spec)
            )
        );
        assert!(
            events.iter().any(|e| e.reason == "Pending"),
            "and the phase change"
        );
    }
}
