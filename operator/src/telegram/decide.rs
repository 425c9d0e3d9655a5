//! What a tap, a timeout or a change in the cluster means for an open request (pure). Every
//! function reads the Permit as it is now and either says what to write (bound to the current
//! spec or code digest) or closes the request without writing anything, so a re-delivered
//! update, a double tap or a tap on an outdated message changes nothing.

use crate::execution::status::Reason;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use oauth3_crds::permit::TrustedCode;
use oauth3_crds::{Approval, ApprovalDecision, ApprovalVia, Permit, TrustLevel, spec_digest};

use super::TelegramError;
use super::callback_data::Action;
use super::message::{decided_note, trust_note};
use super::state::{Request, RequestKind};
use crate::approval::{Decision, approval_for, trust_code};

/// Who decided when nobody did: the operator, on timeout.
pub const TIMEOUT_BY: &str = "oauth3-operator";

/// What to do for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Record this `status.approval` on the Permit.
    Approve(Approval),
    /// Record this `status.trustedCode` list on the Permit.
    Trust {
        /// The new list.
        list: Vec<TrustedCode>,
        /// The level granted.
        level: TrustLevel,
    },
    /// Deny the Executions waiting for the request's code digest.
    DenyCode {
        /// Why (shown on the Executions).
        reason: Reason,
        /// Explanation.
        message: String,
    },
    /// Write nothing; close the request with this note.
    Close(String),
    /// Write nothing; the request stays open.
    Keep,
}

/// The Telegram identity recorded as `by`.
pub fn telegram_by(user_id: u64) -> String {
    format!("telegram:{user_id}")
}

/// The Permit's current spec digest if it has no decision for it (it waits for the owner).
/// An intent with no successful draft yet asks the owner nothing.
pub fn pending_digest(permit: &Permit) -> Option<String> {
    if !permit.spec.intent.is_empty() && permit.usable_draft().is_none() {
        return None;
    }
    let digest = spec_digest(&permit.effective_spec()).ok()?;
    let decided = permit
        .status
        .as_ref()
        .and_then(|s| s.approval.as_ref())
        .is_some_and(|a| a.spec_digest == digest);
    (!decided).then_some(digest)
}

/// Whether `digest` is trusted under `permit` at `now` (a once entry counts until consumed).
pub fn code_trusted(permit: &Permit, digest: &str, now: Timestamp) -> Option<TrustedCode> {
    permit
        .status
        .as_ref()?
        .trusted_code
        .iter()
        .find(|t| {
            t.code_digest == digest
                && (t.level != TrustLevel::Day || t.expires_at.as_ref().is_some_and(|e| e.0 > now))
        })
        .cloned()
}

fn same_permit<'a>(permit: Option<&'a Permit>, req: &Request) -> Option<&'a Permit> {
    permit.filter(|p| p.metadata.uid.as_deref() == Some(req.uid.as_str()))
}

/// Why an open request no longer stands, or `None` while it does (pure). `waiting` says
/// whether an Execution still waits for a code request's digest.
pub fn still_open(
    permit: Option<&Permit>,
    req: &Request,
    waiting: bool,
    now: Timestamp,
) -> Option<String> {
    let Some(permit) = same_permit(permit, req) else {
        return Some("Outdated: the Permit was deleted.".into());
    };
    match req.kind {
        RequestKind::Permit => {
            let current = spec_digest(&permit.effective_spec()).ok()?;
            if current != req.digest {
                return Some(
                    "Outdated: the Permit's spec changed after this message; the new spec is sent separately."
                        .into(),
                );
            }
            let approval = permit.status.as_ref()?.approval.as_ref()?;
            (approval.spec_digest == current).then(|| decided_note(approval))
        }
        RequestKind::Code => {
            if let Some(t) = code_trusted(permit, &req.digest, now) {
                return Some(trust_note(&t));
            }
            (!waiting).then(|| "Outdated: no Execution waits for this code any more.".into())
        }
    }
}

/// What an owner's tap of `action` on `req` means, given the Permit as it is now (pure).
///
/// # Errors
/// [`TelegramError::Decision`] when the spec's `validFor` cannot be used (the schema
/// prevents it).
pub fn on_tap(
    permit: Option<&Permit>,
    req: &Request,
    waiting: bool,
    action: Action,
    user_id: u64,
    now: Timestamp,
) -> Result<Outcome, TelegramError> {
    if let Some(note) = still_open(permit, req, waiting, now) {
        return Ok(Outcome::Close(note));
    }
    let Some(permit) = same_permit(permit, req) else {
        return Ok(Outcome::Close("Outdated: the Permit was deleted.".into()));
    };
    let by = telegram_by(user_id);
    let approval = |d| {
        approval_for(permit, d, &by, ApprovalVia::Telegram, now)
            .map_err(|e| TelegramError::Decision(e.to_string()))
    };
    let trust = |level| {
        let current = permit
            .status
            .as_ref()
            .map(|s| s.trusted_code.clone())
            .unwrap_or_default();
        Outcome::Trust {
            list: trust_code(&current, &req.digest, level, &by, now),
            level,
        }
    };
    Ok(match (req.kind, action) {
        (RequestKind::Permit, Action::ApprovePermit) => {
            Outcome::Approve(approval(Decision::Approve)?)
        }
        (RequestKind::Permit, Action::DenyPermit) => Outcome::Approve(approval(Decision::Deny)?),
        (RequestKind::Code, Action::TrustOnce) => trust(TrustLevel::Once),
        (RequestKind::Code, Action::TrustDay) => trust(TrustLevel::Day),
        (RequestKind::Code, Action::TrustAlways) => trust(TrustLevel::Always),
        (RequestKind::Code, Action::DenyCode) => Outcome::DenyCode {
            reason: Reason::CodeDenied,
            message: format!("the owner refused this code on Telegram ({by})"),
        },
        // A button of the other kind never matches an open request (see State::tapped).
        _ => Outcome::Keep,
    })
}

/// What happens to `req` when it has waited `timeout` without an answer (pure): a Permit is
/// recorded Denied with a reason, the Executions waiting for code are denied; before the
/// timeout, nothing.
pub fn on_timeout(
    permit: Option<&Permit>,
    req: &Request,
    timeout: Duration,
    now: Timestamp,
) -> Outcome {
    let waited = now.as_second().saturating_sub(req.sent_at);
    if waited < i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX) {
        return Outcome::Keep;
    }
    let reason = format!(
        "no decision on Telegram within {} (approval timeout)",
        human_duration(timeout)
    );
    match req.kind {
        RequestKind::Permit => {
            let Some(permit) = same_permit(permit, req) else {
                return Outcome::Close("Outdated: the Permit was deleted.".into());
            };
            match approval_for(
                permit,
                Decision::Deny,
                TIMEOUT_BY,
                ApprovalVia::Telegram,
                now,
            ) {
                Ok(mut a) if a.spec_digest == req.digest => {
                    a.reason = Some(reason);
                    Outcome::Approve(a)
                }
                _ => Outcome::Keep,
            }
        }
        RequestKind::Code => Outcome::DenyCode {
            reason: Reason::CodeApprovalTimedOut,
            message: reason,
        },
    }
}

/// `90s` -> `1m30s`, `86400s` -> `24h` (pure).
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (days, hours, mins, secs) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(days, "d"), (hours, "h"), (mins, "m"), (secs, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if days == 1 && hours == 0 && mins == 0 && secs == 0 {
        return "24h".into();
    }
    out
}

/// The decision an [`Outcome::Approve`] records, for notes.
pub fn decision_word(d: ApprovalDecision) -> &'static str {
    match d {
        ApprovalDecision::Approved => "Approved",
        ApprovalDecision::Denied => "Denied",
        ApprovalDecision::Revoked => "Revoked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use oauth3_crds::{PermitSpec, PermitStatus};
    use serde_json::json;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn permit(code_review: &str) -> Permit {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "d", "validFor": "2h", "codeReview": code_review,
            "capabilities": [{"name": "gh", "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"]}]
        }))
        .expect("spec");
        let mut p = Permit::new("gh", spec);
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    fn request(kind: RequestKind, digest: &str) -> Request {
        Request {
            kind,
            namespace: "ns".into(),
            name: "gh".into(),
            uid: "uid-1".into(),
            digest: digest.into(),
            chat_id: 5,
            message_id: 1,
            sent_at: 1_000,
            text: "t".into(),
            closed: None,
        }
    }

    fn permit_request(p: &Permit) -> Request {
        request(RequestKind::Permit, &spec_digest(&p.spec).expect("digest"))
    }

    const CODE: &str = "sha256:c0dec0dec0dec0dec0dec0dec0dec0dec0dec0dec0dec0dec0dec0dec0dec0de";

    #[test]
    fn approve_records_an_approval_via_telegram_bound_to_the_current_digest() {
        let p = permit("none");
        let req = permit_request(&p);
        let out = on_tap(Some(&p), &req, false, Action::ApprovePermit, 42, t(2_000)).expect("ok");
        let Outcome::Approve(a) = out else {
            panic!("expected an approval, got {out:?}")
        };
        assert_eq!(a.decision, ApprovalDecision::Approved);
        assert_eq!(
            (a.by.as_str(), a.via),
            ("telegram:42", ApprovalVia::Telegram)
        );
        assert_eq!(a.spec_digest, req.digest);
        assert_eq!(a.expires_at.map(|e| e.0), Some(t(2_000 + 7_200)));
    }

    #[test]
    fn deny_records_a_denial() {
        let p = permit("none");
        let out = on_tap(
            Some(&p),
            &permit_request(&p),
            false,
            Action::DenyPermit,
            42,
            t(2_000),
        )
        .expect("ok");
        assert!(matches!(out, Outcome::Approve(a) if a.decision == ApprovalDecision::Denied));
    }

    #[test]
    fn a_tap_after_the_spec_changed_writes_nothing() {
        let mut p = permit("none");
        let req = permit_request(&p);
        p.spec.description = "now something else".into();
        let out = on_tap(Some(&p), &req, false, Action::ApprovePermit, 42, t(2_000)).expect("ok");
        assert!(
            matches!(&out, Outcome::Close(n) if n.contains("spec changed")),
            "{out:?}"
        );
    }

    #[test]
    fn a_tap_on_an_already_decided_permit_writes_nothing() {
        let mut p = permit("none");
        let req = permit_request(&p);
        let earlier = approval_for(
            &p,
            Decision::Deny,
            "kube:alice",
            ApprovalVia::Kubectl,
            t(1_500),
        )
        .expect("approval");
        p.status = Some(PermitStatus {
            approval: Some(earlier),
            ..Default::default()
        });
        let out = on_tap(Some(&p), &req, false, Action::ApprovePermit, 42, t(2_000)).expect("ok");
        assert!(
            matches!(&out, Outcome::Close(n) if n.contains("Denied by kube:alice via kubectl")),
            "{out:?}"
        );
    }

    #[test]
    fn a_tap_for_a_deleted_or_recreated_permit_writes_nothing() {
        let p = permit("none");
        let req = permit_request(&p);
        let mut recreated = p.clone();
        recreated.metadata.uid = Some("uid-2".into());
        for now in [None, Some(&recreated)] {
            let out = on_tap(now, &req, false, Action::ApprovePermit, 42, t(2_000)).expect("ok");
            assert!(
                matches!(&out, Outcome::Close(n) if n.contains("deleted")),
                "{out:?}"
            );
        }
    }

    #[test]
    fn code_buttons_trust_once_for_a_day_or_always() {
        let p = permit("perCode");
        let req = request(RequestKind::Code, CODE);
        for (action, level) in [
            (Action::TrustOnce, TrustLevel::Once),
            (Action::TrustDay, TrustLevel::Day),
            (Action::TrustAlways, TrustLevel::Always),
        ] {
            let out = on_tap(Some(&p), &req, true, action, 42, t(2_000)).expect("ok");
            let Outcome::Trust { list, level: l } = out else {
                panic!("expected trust, got {out:?}")
            };
            assert_eq!(l, level);
            assert_eq!(list[0].code_digest, CODE);
            assert_eq!(list[0].by, "telegram:42");
            assert_eq!(list[0].expires_at.is_some(), level == TrustLevel::Day);
        }
        let out = on_tap(Some(&p), &req, true, Action::DenyCode, 42, t(2_000)).expect("ok");
        assert!(matches!(
            out,
            Outcome::DenyCode {
                reason: Reason::CodeDenied,
                ..
            }
        ));
    }

    #[test]
    fn a_code_tap_when_nothing_waits_or_already_trusted_writes_nothing() {
        let mut p = permit("perCode");
        let req = request(RequestKind::Code, CODE);
        let out = on_tap(Some(&p), &req, false, Action::TrustAlways, 42, t(2_000)).expect("ok");
        assert!(
            matches!(&out, Outcome::Close(n) if n.contains("no Execution waits")),
            "{out:?}"
        );
        p.status = Some(PermitStatus {
            trusted_code: trust_code(&[], CODE, TrustLevel::Always, "telegram:7", t(1_500)),
            ..Default::default()
        });
        let out = on_tap(Some(&p), &req, true, Action::TrustOnce, 42, t(2_000)).expect("ok");
        assert!(
            matches!(&out, Outcome::Close(n) if n.contains("telegram:7")),
            "{out:?}"
        );
    }

    #[test]
    fn expired_day_trust_does_not_count_as_trusted() {
        let mut p = permit("perCode");
        p.status = Some(PermitStatus {
            trusted_code: vec![TrustedCode {
                code_digest: CODE.into(),
                level: TrustLevel::Day,
                by: "x".into(),
                at: Time(t(0)),
                expires_at: Some(Time(t(10))),
            }],
            ..Default::default()
        });
        assert!(code_trusted(&p, CODE, t(11)).is_none());
        assert!(code_trusted(&p, CODE, t(9)).is_some());
    }

    #[test]
    fn an_unanswered_permit_is_denied_with_a_reason_only_after_the_timeout() {
        let p = permit("none");
        let req = permit_request(&p);
        let timeout = Duration::from_secs(600);
        assert_eq!(on_timeout(Some(&p), &req, timeout, t(1_599)), Outcome::Keep);
        let out = on_timeout(Some(&p), &req, timeout, t(1_600));
        let Outcome::Approve(a) = out else {
            panic!("expected a denial, got {out:?}")
        };
        assert_eq!(a.decision, ApprovalDecision::Denied);
        assert_eq!(a.by, TIMEOUT_BY);
        assert_eq!(
            a.reason.as_deref(),
            Some("no decision on Telegram within 10m (approval timeout)")
        );
    }

    #[test]
    fn unanswered_code_denies_the_waiting_executions() {
        let p = permit("perCode");
        let req = request(RequestKind::Code, CODE);
        let out = on_timeout(Some(&p), &req, Duration::from_secs(1), t(5_000));
        assert!(matches!(
            out,
            Outcome::DenyCode {
                reason: Reason::CodeApprovalTimedOut,
                ..
            }
        ));
    }

    #[test]
    fn only_permits_without_a_decision_for_the_current_spec_are_pending() {
        let mut p = permit("none");
        let digest = spec_digest(&p.spec).expect("digest");
        assert_eq!(pending_digest(&p), Some(digest));
        let a = approval_for(&p, Decision::Approve, "x", ApprovalVia::Telegram, t(1)).expect("a");
        p.status = Some(PermitStatus {
            approval: Some(a),
            ..Default::default()
        });
        assert_eq!(pending_digest(&p), None);
        p.spec.description = "changed".into();
        assert!(pending_digest(&p).is_some(), "a changed spec waits again");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_duration(Duration::from_secs(7 * 86_400)), "7d");
    }
}
