//! The Execution's next step (pure): what the driver does with an Execution as observed,
//! with its Permit and its sandbox, at a given time. Admission is part of it: the Permit
//! exists, is approved for its current spec, has not expired, has Executions and rate-limit
//! budget left, and (codeReview perCode) the code digest is trusted.
//!
//! Every refusal is terminal for the Execution (phase `Denied`) with a machine-readable reason
//! and a message an agent can act on; nothing here retries. Only a missing code trust is not
//! terminal: the Execution waits in `AwaitingApproval` for the owner. Running Executions end
//! when their sandbox ends without a result or their deadline passes; finished ones are
//! deleted after their TTL.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use oauth3_crds::{
    ApprovalDecision, CodeReview, Execution, ExecutionPhase, Permit, TrustLevel, spec_digest,
};
use oauth3_protocol::rate::TokenBucket;

use super::status::{Ending, Reason};
use crate::launcher::Sandbox;

/// The admission decision for one Execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Run it under the Permit's current approval.
    Launch {
        /// Spec digest the approval is bound to.
        permit_digest: String,
        /// Digest of the code.
        code_digest: String,
    },
    /// codeReview perCode and the owner has not trusted this code digest (yet).
    AwaitApproval {
        /// Digest of the code the owner must trust.
        code_digest: String,
    },
    /// The Permit pins this code and has no decision yet: wait for the owner's.
    AwaitPermit {
        /// Digest of the (pinned) code.
        code_digest: String,
    },
    /// Refused for good.
    Refuse {
        /// `Reason` of the Denied condition.
        reason: Reason,
        /// Human-readable explanation naming the Permit and what to do.
        message: String,
    },
}

/// The rate-limit tokens a run under `permit` starts with at `now`: what the previous runs
/// left (`status.usage.rateBudget`, measured at `usage.at`) refilled at each capability's
/// `requests / perSeconds` for the time since, up to `requests`. Capabilities without a
/// limit, or without a carried budget, are left out (the runner starts those full).
pub(crate) fn refilled_budget(permit: &Permit, now: Timestamp) -> BTreeMap<String, f64> {
    let Some(usage) = permit.status.as_ref().and_then(|s| s.usage.as_ref()) else {
        return BTreeMap::new();
    };
    let elapsed = usage
        .at
        .as_ref()
        .map_or(0.0, |at| now.duration_since(at.0).as_secs_f64().max(0.0));
    permit
        .spec
        .capabilities
        .iter()
        .filter_map(|c| {
            let limit = c.rate_limit.as_ref()?;
            let left = usage.rate_budget.get(&c.name)?;
            Some((
                c.name.clone(),
                TokenBucket::of(limit).refill(*left, elapsed),
            ))
        })
        .collect()
}

/// `Some(message)` when no capability of `permit` can make a call at `now`: every one is rate
/// limited and has less than one token left. (Code that calls nothing needs no Permit.)
fn rate_budget_exhausted(permit: &Permit, name: &str, now: Timestamp) -> Option<String> {
    let budget = refilled_budget(permit, now);
    let mut wait = f64::INFINITY;
    for c in &permit.effective_spec().capabilities {
        let limit = c.rate_limit.as_ref()?;
        let tokens = *budget.get(&c.name)?;
        if tokens >= 1.0 {
            return None;
        }
        wait = wait.min(TokenBucket::of(limit).wait_for_one(tokens));
    }
    if permit.effective_spec().capabilities.is_empty() {
        return None;
    }
    Some(format!(
        "every capability of Permit {name} has used its rate limit; the next call is allowed in {:.0} s",
        wait.ceil()
    ))
}

fn refuse(reason: Reason, message: String) -> Admission {
    Admission::Refuse { reason, message }
}

/// Decides whether `execution` may run under `permit` (looked up by `spec.permitRef`) at `now`.
pub fn admit(execution: &Execution, permit: Option<&Permit>, now: Timestamp) -> Admission {
    let name = &execution.spec.permit_ref;
    let Some(permit) = permit else {
        return refuse(
            Reason::PermitNotFound,
            format!(
                "Permit {name} does not exist in this namespace; create it and have the owner approve it"
            ),
        );
    };
    let status = permit.status.clone().unwrap_or_default();
    let code = execution.spec.code_digest();
    // Decided from the owner's record itself, not from the derived `phase`, so a decision
    // takes effect (or a revocation bites) before the Permit controller has caught up.
    let Some(approval) = status.approval else {
        // Code a pending Permit pins is the code its owner is deciding on (a one-off skill
        // Permit): it waits for that decision rather than being refused.
        if permit.spec.pinned_code.contains(&code)
            && oauth3_crds::check_args(&permit.spec.arg_rules, execution.spec.args.as_ref()).is_ok()
        {
            return Admission::AwaitPermit { code_digest: code };
        }
        return refuse(
            Reason::PermitNotApproved,
            format!("Permit {name} is waiting for the owner's approval"),
        );
    };
    let current = match spec_digest(&permit.effective_spec()) {
        Ok(d) => d,
        Err(e) => return refuse(Reason::PermitInvalid, format!("Permit {name}: {e}")),
    };
    if approval.spec_digest != current {
        return refuse(
            Reason::PermitChanged,
            format!(
                "Permit {name} changed after the owner's decision (decided for {}, now {current}); the owner must approve the new spec",
                approval.spec_digest
            ),
        );
    }
    match approval.decision {
        ApprovalDecision::Approved => {}
        ApprovalDecision::Denied => {
            return refuse(
                Reason::PermitDenied,
                format!("Permit {name} was denied by its owner"),
            );
        }
        ApprovalDecision::Revoked => {
            return refuse(
                Reason::PermitRevoked,
                format!("Permit {name} was revoked by its owner"),
            );
        }
    }
    if approval.expires_at.as_ref().is_none_or(|t| t.0 <= now) {
        return refuse(
            Reason::PermitExpired,
            format!("the approval of Permit {name} has expired; ask the owner to approve it again"),
        );
    }
    if let Some(max) = permit.spec.max_executions {
        let used = status.usage.as_ref().map_or(0, |u| u.executions);
        if used >= max {
            return refuse(
                Reason::ExecutionBudgetExhausted,
                format!(
                    "Permit {name} allows {max} Executions per approval and all have been used"
                ),
            );
        }
    }
    if let Some(message) = rate_budget_exhausted(permit, name, now) {
        return refuse(Reason::RateBudgetExhausted, message);
    }
    if !permit.spec.pinned_code.is_empty() && !permit.spec.pinned_code.contains(&code) {
        return refuse(
            Reason::CodeNotPinned,
            format!(
                "this code ({code}) is not code the owner approved with Permit {name}: it pins \
                 {} (spec.pinnedCode); run that code, or ask for a Permit that pins this one",
                permit.spec.pinned_code.join(", ")
            ),
        );
    }
    if let Err(why) = oauth3_crds::check_args(&permit.spec.arg_rules, execution.spec.args.as_ref())
    {
        return refuse(
            Reason::ArgsRefused,
            format!("the args break a rule of Permit {name}: {why}"),
        );
    }
    if permit.spec.code_review == CodeReview::PerCode {
        let trusted = status.trusted_code.iter().any(|t| {
            t.code_digest == code
                && match t.level {
                    TrustLevel::Always => true,
                    TrustLevel::Day => t.expires_at.as_ref().is_some_and(|e| e.0 > now),
                    // "Once" admits one Execution; the controller removes the entry when it
                    // launches that Execution, so no lasting record is kept.
                    TrustLevel::Once => true,
                }
        });
        if !trusted {
            return Admission::AwaitApproval { code_digest: code };
        }
    }
    Admission::Launch {
        permit_digest: current,
        code_digest: code,
    }
}

/// What the driver does next with an Execution.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Finished, and its TTL is over: delete it.
    Delete,
    /// Finished: look again when its TTL ends.
    KeepUntil(Timestamp),
    /// Read the Permit and admit it ([`admit`]); only Pending and AwaitingApproval do.
    Admit,
    /// Running and nothing to do: look again at the deadline.
    WaitUntil(Timestamp),
    /// Running, and the sandbox noted as waiting runs now: replace the note, wait for the
    /// deadline.
    NoteRunning {
        /// The deadline.
        until: Timestamp,
    },
    /// Running, its sandbox does not run yet: note why (phase unchanged), wait for the deadline.
    NoteWaiting {
        /// Why the sandbox does not run.
        message: String,
        /// The deadline.
        until: Timestamp,
    },
    /// End it now (the sandbox ended without a result, or the deadline passed).
    End(Ending),
}

/// The step for `exec` as observed at `now` with its `sandbox`, given the TTL of finished
/// Executions.
pub(crate) fn next_step(
    exec: &Execution,
    sandbox: &Sandbox,
    now: Timestamp,
    ttl: Duration,
) -> Step {
    let status = exec.status.clone().unwrap_or_default();
    match status.phase {
        Some(phase) if phase.is_terminal() => {
            let done = status.completion_time.map_or(now, |t| t.0);
            let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
            let expiry = done.checked_add(ttl).unwrap_or(Timestamp::MAX);
            if now >= expiry {
                Step::Delete
            } else {
                Step::KeepUntil(expiry)
            }
        }
        Some(ExecutionPhase::Running) => {
            let deadline = status.launch.as_ref().map_or(now, |l| l.deadline.0);
            if let Sandbox::Ended { deadline, message } = sandbox {
                return Step::End(sandbox_ended(*deadline, message));
            }
            if now >= deadline {
                return Step::End(deadline_passed(sandbox));
            }
            match sandbox {
                Sandbox::Waiting(message) if status.message.as_deref() != Some(message) => {
                    Step::NoteWaiting {
                        message: message.clone(),
                        until: deadline,
                    }
                }
                Sandbox::Alive
                    if status.reason.as_deref() == Some(Reason::SandboxWaiting.as_str()) =>
                {
                    Step::NoteRunning { until: deadline }
                }
                _ => Step::WaitUntil(deadline),
            }
        }
        _ => Step::Admit,
    }
}

/// How a sandbox that ended without a result ends its Execution.
fn sandbox_ended(deadline: bool, message: &str) -> Ending {
    if deadline {
        Ending::timed_out(Reason::DeadlineExceeded, message)
    } else {
        Ending::failed(Reason::SandboxFailed, message)
    }
}

/// How an Execution whose deadline passed without a result ends; a sandbox that never ran is
/// named.
fn deadline_passed(sandbox: &Sandbox) -> Ending {
    let mut message =
        "no result arrived before the deadline (timeoutSeconds plus grace)".to_owned();
    if let Sandbox::Waiting(waiting) = sandbox {
        message.push_str(&format!("; last seen: {waiting}"));
    }
    Ending::timed_out(Reason::DeadlineExceeded, message)
}

/// How a Permit's spent `maxExecutions` ends an Execution that passed admission but lost the
/// race for the last slot.
pub(crate) fn budget_spent(permit: &Permit) -> Ending {
    Ending::denied(
        Reason::ExecutionBudgetExhausted,
        format!(
            "Permit {} allows {} Executions per approval and all have been used",
            permit.metadata.name.as_deref().unwrap_or_default(),
            permit.spec.max_executions.unwrap_or_default()
        ),
    )
}

/// How a sealed Secret that is missing or unusable ends an Execution: refused before it runs
/// (fail closed), like any other admission refusal.
pub(crate) fn sealed_secret_unusable(why: &crate::launcher::SealedSecretError) -> Ending {
    Ending::denied(Reason::SealedSecretMissing, why.to_string())
}

/// How a launch that failed ends an Execution.
pub(crate) fn launch_failed(why: &crate::launcher::LaunchError) -> Ending {
    match why {
        // Not a failure to retry: this Permit's hosts cannot be walled in, so it never runs.
        crate::launcher::LaunchError::Egress(_) => {
            Ending::denied(Reason::EgressRefused, why.to_string())
        }
        _ => Ending::failed(Reason::LaunchFailed, why.to_string()),
    }
}

/// How a run whose bundle the runner would refuse ends (it never starts): `Denied`, with the
/// runner's own reason, as the runner itself would report it.
pub(crate) fn bundle_refused(why: &oauth3_protocol::BundleError) -> Ending {
    Ending::denied(
        Reason::RunnerRefused,
        format!("the sandbox runner refuses this run: {why}"),
    )
}

/// How a process runner that exited while `exec` (as read now) still waits for its result
/// ends it: only while it is `Running` under the same launch (`token_digest`); a result that
/// came first, or a newer launch, wins.
pub(crate) fn runner_exited(exec: &Execution, token_digest: &str, how: &str) -> Option<Ending> {
    let status = exec.status.as_ref()?;
    let same_launch = status
        .launch
        .as_ref()
        .is_some_and(|l| l.token_digest == token_digest);
    (status.phase == Some(ExecutionPhase::Running) && same_launch).then(|| {
        Ending::failed(
            Reason::RunnerExited,
            format!("{how} without reporting a result"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use oauth3_crds::permit::TrustedCode;
    use oauth3_crds::{
        Approval, ApprovalVia, ExecutionSpec, PermitPhase, PermitSpec, PermitStatus, PermitUsage,
    };
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("timestamp"))
    }

    fn now() -> Timestamp {
        at(NOW).0
    }

    fn spec(extra: serde_json::Value) -> PermitSpec {
        let mut v = json!({
            "description": "d",
            "capabilities": [{"name": "gh", "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"]}]
        });
        if let (Some(base), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            base.extend(more.clone());
        }
        serde_json::from_value(v).expect("spec")
    }

    /// An approved Permit, valid for another hour.
    fn approved(extra: serde_json::Value) -> Permit {
        let mut p = Permit::new("gh", spec(extra));
        let digest = spec_digest(&p.spec).expect("digest");
        p.status = Some(PermitStatus {
            phase: Some(PermitPhase::Approved),
            spec_digest: Some(digest.clone()),
            approval: Some(Approval {
                decision: ApprovalDecision::Approved,
                by: "owner".into(),
                via: ApprovalVia::Kubectl,
                at: at(NOW - 60),
                expires_at: Some(at(NOW + 3600)),
                spec_digest: digest,
                reason: None,
            }),
            ..Default::default()
        });
        p
    }

    fn exec(code: &str) -> Execution {
        let spec: ExecutionSpec =
            serde_json::from_value(json!({"permitRef": "gh", "code": code})).expect("spec");
        Execution::new("e", spec)
    }

    fn reason(a: &Admission) -> &'static str {
        match a {
            Admission::Refuse { reason, .. } => reason.as_str(),
            Admission::Launch { .. } => "Launch",
            Admission::AwaitApproval { .. } => "AwaitApproval",
            Admission::AwaitPermit { .. } => "AwaitPermit",
        }
    }

    #[test]
    fn pinned_code_admits_only_the_pinned_digests() {
        let pinned = approved(json!({"pinnedCode": [oauth3_crds::code_digest("return 1")]}));
        assert_eq!(
            reason(&admit(&exec("return 1"), Some(&pinned), now())),
            "Launch"
        );
        let other = admit(&exec("return 2"), Some(&pinned), now());
        assert_eq!(reason(&other), "CodeNotPinned");
        let Admission::Refuse { message, .. } = other else {
            unreachable!()
        };
        assert!(
            message.contains(&oauth3_crds::code_digest("return 2")) && message.contains("pins"),
            "{message}"
        );
        // Unpinned Permits take any code.
        assert_eq!(
            reason(&admit(&exec("return 2"), Some(&approved(json!({}))), now())),
            "Launch"
        );
    }

    #[test]
    fn the_pinned_code_example_runs_and_its_variations_are_refused() {
        use serde::Deserialize as _;
        let text = include_str!("../../../examples/permit-pinned-code.yaml");
        let mut docs = serde_yaml::Deserializer::from_str(text);
        let permit_doc =
            serde_yaml::Value::deserialize(docs.next().expect("permit")).expect("yaml");
        let exec_doc =
            serde_yaml::Value::deserialize(docs.next().expect("execution")).expect("yaml");
        let permit_spec: PermitSpec =
            serde_yaml::from_value(permit_doc["spec"].clone()).expect("permit spec");
        let exec_spec: ExecutionSpec =
            serde_yaml::from_value(exec_doc["spec"].clone()).expect("execution spec");
        let mut permit = approved(json!({}));
        permit.spec = permit_spec;
        let digest = spec_digest(&permit.spec).expect("digest");
        if let Some(s) = permit.status.as_mut() {
            s.spec_digest = Some(digest.clone());
            if let Some(a) = s.approval.as_mut() {
                a.spec_digest = digest;
            }
        }
        let run = |spec: &ExecutionSpec| {
            reason(&admit(
                &Execution::new("e", spec.clone()),
                Some(&permit),
                now(),
            ))
        };
        assert_eq!(run(&exec_spec), "Launch");
        let mut other_owner = exec_spec.clone();
        other_owner.args = Some(json!({"owner": "someone-else", "repo": "oauth3"}));
        assert_eq!(run(&other_owner), "ArgsRefused");
        let mut other_code = exec_spec.clone();
        other_code.code.push_str("// one more line\n");
        assert_eq!(run(&other_code), "CodeNotPinned");
    }

    #[test]
    fn pinned_code_waits_for_a_pending_permit_and_other_code_is_refused() {
        let mut pending = approved(json!({"pinnedCode": [oauth3_crds::code_digest("return 1")],
            "argRules": [{"arg": "n", "op": "le", "value": 3}]}));
        if let Some(s) = pending.status.as_mut() {
            s.approval = None;
            s.phase = Some(PermitPhase::Pending);
        }
        let mut e = exec("return 1");
        e.spec.args = Some(json!({"n": 1}));
        assert_eq!(reason(&admit(&e, Some(&pending), now())), "AwaitPermit");
        e.spec.args = Some(json!({"n": 9}));
        assert_eq!(
            reason(&admit(&e, Some(&pending), now())),
            "PermitNotApproved",
            "args that break a rule do not wait"
        );
        assert_eq!(
            reason(&admit(&exec("return 2"), Some(&pending), now())),
            "PermitNotApproved"
        );
        let unpinned = {
            let mut p = approved(json!({}));
            if let Some(s) = p.status.as_mut() {
                s.approval = None;
            }
            p
        };
        assert_eq!(
            reason(&admit(&exec("return 1"), Some(&unpinned), now())),
            "PermitNotApproved"
        );
    }

    #[test]
    fn arg_rules_are_checked_before_launch() {
        let permit = approved(json!({"argRules": [
            {"arg": "owner", "regex": "amiller"},
            {"arg": "count", "op": "le", "value": 10}
        ]}));
        let with = |args: serde_json::Value| {
            let mut e = exec("return 1");
            e.spec.args = Some(args);
            admit(&e, Some(&permit), now())
        };
        assert_eq!(
            reason(&with(json!({"owner": "amiller", "count": "3"}))),
            "Launch"
        );
        let refused = with(json!({"owner": "amiller", "count": 11}));
        assert_eq!(reason(&refused), "ArgsRefused");
        let Admission::Refuse { message, .. } = refused else {
            unreachable!()
        };
        assert!(
            message.contains("argRules[1]: args.count must be a number <= 10: got 11"),
            "{message}"
        );
        assert_eq!(
            reason(&with(json!({"owner": "evil", "count": 1}))),
            "ArgsRefused"
        );
        assert_eq!(
            reason(&admit(&exec("return 1"), Some(&permit), now())),
            "ArgsRefused",
            "no args at all"
        );
    }

    /// An approved Permit with two rate-limited capabilities (10 per minute and 1 per second)
    /// whose last run left `gh`/`api` tokens at `NOW - ago`.
    fn limited(gh: f64, api: f64, ago: i64) -> Permit {
        let mut p = approved(json!({"capabilities": [
            {"name": "gh", "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"],
             "rateLimit": {"requests": 10, "perSeconds": 60}},
            {"name": "api", "baseUrl": "https://api.example.com", "paths": ["/x"], "methods": ["GET"],
             "rateLimit": {"requests": 1, "perSeconds": 1}}
        ]}));
        let status = p.status.as_mut().expect("status");
        status.usage = Some(PermitUsage {
            executions: 3,
            calls: 30,
            rate_budget: [("gh".to_owned(), gh), ("api".to_owned(), api)].into(),
            at: Some(at(NOW - ago)),
        });
        p
    }

    #[test]
    fn the_carried_rate_budget_refills_for_the_time_since_the_last_run_up_to_the_limit() {
        // 30 s at 10/60 per second refills 5 tokens of gh; api (1/s) is full again.
        let b = refilled_budget(&limited(2.0, 0.0, 30), now());
        assert!((b["gh"] - 7.0).abs() < 1e-9, "{b:?}");
        assert!((b["api"] - 1.0).abs() < 1e-9, "capped at the limit: {b:?}");
        // Nothing elapsed: what was left. A negative or future record never adds tokens.
        let b = refilled_budget(&limited(2.0, 0.0, 0), now());
        assert_eq!((b["gh"], b["api"]), (2.0, 0.0));
        let b = refilled_budget(&limited(-3.0, 0.0, -60), now());
        assert_eq!((b["gh"], b["api"]), (0.0, 0.0));
        // No carried budget, or no limit: left to the runner, which starts those full.
        assert!(refilled_budget(&approved(json!({})), now()).is_empty());
    }

    #[test]
    fn a_permit_whose_every_capability_is_out_of_rate_budget_refuses_with_the_wait() {
        // Exhausted a moment ago: gh needs 6 s for one token, api 1 s; the sooner counts.
        let a = admit(&exec("return 1"), Some(&limited(0.0, 0.0, 0)), now());
        assert_eq!(reason(&a), "RateBudgetExhausted");
        let Admission::Refuse { message, .. } = a else {
            unreachable!()
        };
        assert!(
            message.contains("Permit gh") && message.contains("allowed in 1 s"),
            "{message}"
        );
        // One capability with a token left is enough to run.
        let a = admit(&exec("return 1"), Some(&limited(1.0, 0.0, 0)), now());
        assert_eq!(reason(&a), "Launch");
        // Refilled since: runs.
        let a = admit(&exec("return 1"), Some(&limited(0.0, 0.0, 2)), now());
        assert_eq!(reason(&a), "Launch");
        // A capability without a limit can always be called.
        let mut p = limited(0.0, 0.0, 0);
        p.spec.capabilities[1].rate_limit = None;
        let digest = spec_digest(&p.spec).expect("digest");
        if let Some(approval) = p.status.as_mut().and_then(|s| s.approval.as_mut()) {
            approval.spec_digest = digest;
        }
        assert_eq!(reason(&admit(&exec("return 1"), Some(&p), now())), "Launch");
    }

    #[test]
    fn an_approved_unexpired_permit_launches_with_both_digests() {
        let p = approved(json!({}));
        match admit(&exec("return 1"), Some(&p), now()) {
            Admission::Launch {
                permit_digest,
                code_digest: c,
            } => {
                assert_eq!(permit_digest, spec_digest(&p.spec).expect("digest"));
                assert_eq!(c, oauth3_crds::code_digest("return 1"));
            }
            other => panic!("expected launch, got {other:?}"),
        }
    }

    #[test]
    fn each_refusal_has_its_reason_and_names_the_permit() {
        let e = exec("return 1");
        assert_eq!(reason(&admit(&e, None, now())), "PermitNotFound");
        let mut p = approved(json!({}));
        p.status = None;
        assert_eq!(reason(&admit(&e, Some(&p), now())), "PermitNotApproved");
        for (decision, why) in [
            (ApprovalDecision::Denied, "PermitDenied"),
            (ApprovalDecision::Revoked, "PermitRevoked"),
        ] {
            let mut p = approved(json!({}));
            if let Some(a) = p.status.as_mut().and_then(|s| s.approval.as_mut()) {
                a.decision = decision;
            }
            let a = admit(&e, Some(&p), now());
            assert_eq!(reason(&a), why, "{decision:?}");
            let Admission::Refuse { message, .. } = a else {
                panic!("refused")
            };
            assert!(message.contains("Permit gh "), "{message}");
        }
    }

    #[test]
    fn the_decision_counts_even_when_the_derived_phase_lags_behind() {
        let mut p = approved(json!({}));
        if let Some(s) = p.status.as_mut() {
            s.phase = Some(PermitPhase::Pending);
        }
        assert_eq!(reason(&admit(&exec("1"), Some(&p), now())), "Launch");
        if let Some(s) = p.status.as_mut() {
            s.phase = Some(PermitPhase::Approved);
            if let Some(a) = s.approval.as_mut() {
                a.decision = ApprovalDecision::Revoked;
            }
        }
        assert_eq!(reason(&admit(&exec("1"), Some(&p), now())), "PermitRevoked");
    }

    #[test]
    fn a_spec_edited_after_approval_is_refused_even_if_status_still_says_approved() {
        let mut p = approved(json!({}));
        p.spec.capabilities[0].paths.push("/admin".into());
        assert_eq!(reason(&admit(&exec("1"), Some(&p), now())), "PermitChanged");
    }

    #[test]
    fn expiry_is_exact_at_the_boundary() {
        let mut p = approved(json!({}));
        if let Some(a) = p.status.as_mut().and_then(|s| s.approval.as_mut()) {
            a.expires_at = Some(at(NOW));
        }
        assert_eq!(reason(&admit(&exec("1"), Some(&p), now())), "PermitExpired");
        if let Some(a) = p.status.as_mut().and_then(|s| s.approval.as_mut()) {
            a.expires_at = Some(at(NOW + 1));
        }
        assert_eq!(reason(&admit(&exec("1"), Some(&p), now())), "Launch");
    }

    #[test]
    fn max_executions_is_a_hard_budget() {
        let mut p = approved(json!({"maxExecutions": 2}));
        let usage = |n| PermitUsage {
            executions: n,
            ..Default::default()
        };
        if let Some(s) = p.status.as_mut() {
            s.usage = Some(usage(1));
        }
        assert_eq!(reason(&admit(&exec("1"), Some(&p), now())), "Launch");
        if let Some(s) = p.status.as_mut() {
            s.usage = Some(usage(2));
        }
        assert_eq!(
            reason(&admit(&exec("1"), Some(&p), now())),
            "ExecutionBudgetExhausted"
        );
    }

    #[test]
    fn per_code_review_needs_a_trusted_digest_and_one_byte_changes_it() {
        let mut p = approved(json!({"codeReview": "perCode"}));
        assert_eq!(
            reason(&admit(&exec("return 1"), Some(&p), now())),
            "AwaitApproval"
        );
        let trust = |level, expires| TrustedCode {
            code_digest: oauth3_crds::code_digest("return 1"),
            level,
            by: "owner".into(),
            at: at(NOW - 10),
            expires_at: expires,
        };
        if let Some(s) = p.status.as_mut() {
            s.trusted_code = vec![trust(TrustLevel::Always, None)];
        }
        assert_eq!(reason(&admit(&exec("return 1"), Some(&p), now())), "Launch");
        assert_eq!(
            reason(&admit(&exec("return 1 "), Some(&p), now())),
            "AwaitApproval"
        );
        if let Some(s) = p.status.as_mut() {
            s.trusted_code = vec![trust(TrustLevel::Day, Some(at(NOW - 1)))];
        }
        assert_eq!(
            reason(&admit(&exec("return 1"), Some(&p), now())),
            "AwaitApproval"
        );
        if let Some(s) = p.status.as_mut() {
            s.trusted_code = vec![trust(TrustLevel::Day, Some(at(NOW + 60)))];
        }
        assert_eq!(reason(&admit(&exec("return 1"), Some(&p), now())), "Launch");
        if let Some(s) = p.status.as_mut() {
            s.trusted_code = vec![trust(TrustLevel::Once, None)];
        }
        assert_eq!(reason(&admit(&exec("return 1"), Some(&p), now())), "Launch");
        assert_eq!(
            reason(&admit(&exec("return 2"), Some(&p), now())),
            "AwaitApproval"
        );
    }

    const TTL: Duration = Duration::from_secs(3600);

    /// `exec` in `phase`; Running ones have a launch with a deadline at `NOW + 10`.
    fn in_phase(phase: ExecutionPhase, message: Option<&str>) -> Execution {
        let mut e = exec("return 1");
        let launch = (phase == ExecutionPhase::Running).then(|| oauth3_crds::LaunchRecord {
            launcher: oauth3_crds::LauncherKind::Pod,
            token_digest: "sha256:t".into(),
            launched_at: at(NOW - 20),
            deadline: at(NOW + 10),
            require_attestation: None,
            pool: None,
        });
        e.status = Some(oauth3_crds::ExecutionStatus {
            phase: Some(phase),
            message: message.map(str::to_owned),
            completion_time: phase.is_terminal().then(|| at(NOW - 60)),
            launch,
            ..Default::default()
        });
        e
    }

    fn later(secs: i64) -> Timestamp {
        at(NOW + secs).0
    }

    #[test]
    fn a_new_or_waiting_execution_goes_to_admission() {
        for e in [
            exec("return 1"),
            in_phase(ExecutionPhase::Pending, None),
            in_phase(ExecutionPhase::AwaitingApproval, None),
        ] {
            assert_eq!(next_step(&e, &Sandbox::Unobserved, now(), TTL), Step::Admit);
        }
    }

    #[test]
    fn a_finished_execution_is_kept_until_its_ttl_then_deleted() {
        for phase in [
            ExecutionPhase::Succeeded,
            ExecutionPhase::Failed,
            ExecutionPhase::Denied,
            ExecutionPhase::TimedOut,
        ] {
            let e = in_phase(phase, None);
            assert_eq!(
                next_step(&e, &Sandbox::Unobserved, now(), TTL),
                Step::KeepUntil(later(3600 - 60)),
                "{phase:?}"
            );
            assert_eq!(
                next_step(&e, &Sandbox::Unobserved, later(3600 - 60), TTL),
                Step::Delete,
                "{phase:?} at its expiry"
            );
        }
    }

    #[test]
    fn a_running_execution_waits_for_its_deadline_while_its_sandbox_lives() {
        let e = in_phase(ExecutionPhase::Running, None);
        for sandbox in [Sandbox::Unobserved, Sandbox::Alive] {
            assert_eq!(
                next_step(&e, &sandbox, now(), TTL),
                Step::WaitUntil(later(10))
            );
        }
    }

    #[test]
    fn a_running_execution_times_out_at_its_deadline_exactly() {
        let e = in_phase(ExecutionPhase::Running, None);
        assert_eq!(
            next_step(&e, &Sandbox::Alive, later(9), TTL),
            Step::WaitUntil(later(10))
        );
        let Step::End(ending) = next_step(&e, &Sandbox::Alive, later(10), TTL) else {
            panic!("the deadline ends it");
        };
        assert_eq!(ending.phase, ExecutionPhase::TimedOut);
        assert_eq!(ending.reason, Reason::DeadlineExceeded);
        assert!(
            ending
                .message
                .contains("no result arrived before the deadline")
        );
        assert!(!ending.message.contains("last seen"));
    }

    #[test]
    fn a_sandbox_that_never_ran_is_named_in_the_timeout() {
        let e = in_phase(ExecutionPhase::Running, Some("image not pulled"));
        let waiting = Sandbox::Waiting("image not pulled".into());
        let Step::End(ending) = next_step(&e, &waiting, later(11), TTL) else {
            panic!("the deadline ends it");
        };
        assert!(
            ending.message.ends_with("; last seen: image not pulled"),
            "{}",
            ending.message
        );
    }

    #[test]
    fn a_waiting_sandbox_is_noted_once_per_change_of_words() {
        let fresh = in_phase(ExecutionPhase::Running, None);
        let waiting = Sandbox::Waiting("not scheduled".into());
        assert_eq!(
            next_step(&fresh, &waiting, now(), TTL),
            Step::NoteWaiting {
                message: "not scheduled".into(),
                until: later(10)
            }
        );
        let noted = in_phase(ExecutionPhase::Running, Some("not scheduled"));
        assert_eq!(
            next_step(&noted, &waiting, now(), TTL),
            Step::WaitUntil(later(10))
        );
    }

    #[test]
    fn a_sandbox_noted_as_waiting_that_runs_now_replaces_the_note_once() {
        let mut noted = in_phase(ExecutionPhase::Running, Some("not scheduled"));
        if let Some(s) = noted.status.as_mut() {
            s.reason = Some(Reason::SandboxWaiting.as_str().to_owned());
        }
        assert_eq!(
            next_step(&noted, &Sandbox::Alive, now(), TTL),
            Step::NoteRunning { until: later(10) }
        );
        let replaced = in_phase(ExecutionPhase::Running, Some("the sandbox runs"));
        assert_eq!(
            next_step(&replaced, &Sandbox::Alive, now(), TTL),
            Step::WaitUntil(later(10))
        );
    }

    #[test]
    fn a_sandbox_that_ended_without_a_result_ends_the_execution_at_once() {
        let e = in_phase(ExecutionPhase::Running, None);
        let oom = Sandbox::Ended {
            deadline: false,
            message: "OOMKilled".into(),
        };
        assert_eq!(
            next_step(&e, &oom, now(), TTL),
            Step::End(Ending::failed(Reason::SandboxFailed, "OOMKilled"))
        );
        let killed = Sandbox::Ended {
            deadline: true,
            message: "DeadlineExceeded".into(),
        };
        assert_eq!(
            next_step(&e, &killed, now(), TTL),
            Step::End(Ending::timed_out(
                Reason::DeadlineExceeded,
                "DeadlineExceeded"
            ))
        );
    }

    #[test]
    fn a_runner_exit_ends_only_the_launch_it_belongs_to_while_it_runs() {
        let e = in_phase(ExecutionPhase::Running, None);
        let ending = runner_exited(&e, "sha256:t", "runner process/7 exited (exit status: 3)")
            .expect("ends it");
        assert_eq!(ending.phase, ExecutionPhase::Failed);
        assert_eq!(ending.reason, Reason::RunnerExited);
        assert_eq!(
            ending.message,
            "runner process/7 exited (exit status: 3) without reporting a result"
        );
        assert_eq!(
            runner_exited(&e, "sha256:other", "x"),
            None,
            "another launch"
        );
        let done = in_phase(ExecutionPhase::Succeeded, None);
        assert_eq!(
            runner_exited(&done, "sha256:t", "x"),
            None,
            "a result came first"
        );
    }

    #[test]
    fn launch_stage_refusals_and_failures_have_their_phase_and_reason() {
        let spent = budget_spent(&approved(json!({"maxExecutions": 2})));
        assert_eq!(
            (spent.phase, spent.reason),
            (ExecutionPhase::Denied, Reason::ExecutionBudgetExhausted)
        );
        assert_eq!(
            spent.message,
            "Permit gh allows 2 Executions per approval and all have been used"
        );
        let missing = crate::launcher::SealedSecretError::Missing {
            object: "github-token".into(),
            name: "GITHUB_TOKEN".into(),
            namespace: "ns".into(),
        };
        let refused = sealed_secret_unusable(&missing);
        assert_eq!(
            (refused.phase, refused.reason),
            (ExecutionPhase::Denied, Reason::SealedSecretMissing)
        );
        assert!(refused.message.contains("kubectl oauth3 seal GITHUB_TOKEN"));
        let failed = launch_failed(&crate::launcher::LaunchError::Spawn("no binary".into()));
        assert_eq!(
            (failed.phase, failed.reason),
            (ExecutionPhase::Failed, Reason::LaunchFailed)
        );
    }
}
