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
//! - `Revoked` stays `Revoked` until a decision for the current digest made after the
//!   revocation (its `at` later than the revocation time) replaces it. The revocation time is
//!   the `Approved` condition's `lastTransitionTime` once it says `Revoked`: entering `Revoked`
//!   restarts that condition, so its time records when the revocation was first observed;
//! - an unparseable `validFor` (the schema rules it out) fails closed: `Ready=False` with the
//!   parse error, phase `Pending`.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use oauth3_crds::{
    Approval, ApprovalDecision, ApprovalVia, PermitPhase, PermitSpec, PermitStatus, parse_duration,
    spec_digest,
};

use crate::conditions::{ConditionStatus, NewCondition, find_condition, set_condition};

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
    /// The fields the operator owns: phase, specDigest, capabilityCount, approval (with
    /// `expiresAt`), observedGeneration and conditions. `usage` and `trustedCode` are left
    /// unset: other writers own them.
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
            status.approval = current.approval.clone();
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
        None if current.phase == Some(PermitPhase::Revoked) => {
            (PermitPhase::Revoked, revoked_condition(previous_approved))
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
        Some(a) => {
            let mut approval = a.clone();
            let outcome = if current.phase == Some(PermitPhase::Revoked)
                && !decided_after_revocation(a, previous_approved, now)
            {
                (PermitPhase::Revoked, revoked_condition(previous_approved))
            } else {
                match (a.decision, &valid_for) {
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
                        approval.expires_at = Some(Time(expiry));
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
                                    format!(
                                        "approved by {} via {} until {expiry}",
                                        a.by,
                                        via(a.via)
                                    ),
                                ),
                            )
                        }
                    }
                }
            };
            status.approval = Some(approval);
            outcome
        }
    };
    status.phase = Some(phase);
    if phase == PermitPhase::Revoked
        && previous_approved.is_none_or(|c| c.reason != reason::REVOKED)
    {
        // Entering Revoked: start the condition afresh so its lastTransitionTime records when
        // the revocation was observed; later decisions are compared against that time.
        status.conditions.retain(|c| c.type_ != CONDITION_APPROVED);
    }
    set(approved, &mut status);
    DesiredStatus {
        status,
        voided,
        expires_at,
    }
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
    if before != after {
        if let Some(after) = after {
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

/// When the Permit was revoked: the `Approved` condition's transition time if it already says
/// `Revoked`, otherwise now (the revocation is being observed for the first time).
fn revoked_at(previous_approved: Option<&Condition>, now: Timestamp) -> Timestamp {
    match previous_approved {
        Some(c) if c.reason == reason::REVOKED => c.last_transition_time.0,
        _ => now,
    }
}

/// Whether `decision` was made after the revocation, and so replaces it.
fn decided_after_revocation(
    decision: &Approval,
    previous_approved: Option<&Condition>,
    now: Timestamp,
) -> bool {
    decision.at.0 > revoked_at(previous_approved, now)
}

fn revoked_condition(previous_approved: Option<&Condition>) -> NewCondition {
    let message = match previous_approved {
        Some(c) if c.reason == reason::REVOKED => c.message.clone(),
        _ => "the approval was revoked; a new decision is needed".to_owned(),
    };
    NewCondition {
        type_: CONDITION_APPROVED.to_owned(),
        status: ConditionStatus::False,
        reason: reason::REVOKED.to_owned(),
        message,
    }
}
