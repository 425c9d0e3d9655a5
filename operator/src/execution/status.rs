//! Every value an Execution's status takes, built here and nowhere else (pure, typed).
//!
//! Writers, all through the one guarded write ([`crate::status_write::write_status`]):
//! - the Execution driver ([`super`]): `AwaitingApproval`, the launch lock (`Running`), notes on
//!   a waiting sandbox, refusals (`Denied`), failed launches, sandboxes and runners that ended
//!   without a result (`Failed`), and deadlines (`TimedOut`);
//! - the result endpoint ([`super::result`]): the runner's result;
//! - the Telegram bot ([`crate::telegram`]): `Denied` for code the owner denied or left
//!   unanswered.
//!
//! Each value is a partial [`ExecutionStatus`] merged into the stored status: fields left
//! `None` are not touched. Conditions are set with [`crate::conditions`] only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use oauth3_crds::{Execution, ExecutionPhase, ExecutionStatus, LaunchRecord, LauncherKind};
use oauth3_protocol::RunResult;

use crate::conditions::{ConditionStatus, NewCondition, set_condition};

/// Cap on each of stdout and stderr as stored in status.
pub const MAX_STATUS_OUTPUT: usize = 32 * 1024;
/// Cap on the number of call records stored in status.
pub const MAX_STATUS_CALLS: usize = 200;
/// Cap on `status.message`.
const MAX_MESSAGE: usize = 4096;
/// Cap on the `Completed` condition's message of a result.
const MAX_CONDITION_MESSAGE: usize = 1024;

/// The condition every finished Execution carries.
pub const COMPLETED: &str = "Completed";
/// Condition type (and Event reason) of a result that arrived after the deadline ended the
/// Execution: its calls were counted.
pub const LATE_RESULT: &str = "LateResult";

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Machine-readable reason of an Execution's status and of its `Completed` condition.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// The reason as written (`PascalCase`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    /// No Permit of that name in the namespace.
    PermitNotFound,
    /// The Permit has no decision for any spec yet.
    PermitNotApproved,
    /// The Permit's spec cannot be digested.
    PermitInvalid,
    /// The Permit changed after its owner decided.
    PermitChanged,
    /// The owner denied the Permit.
    PermitDenied,
    /// The owner revoked the Permit.
    PermitRevoked,
    /// The approval's lifetime is over.
    PermitExpired,
    /// `maxExecutions` is used up.
    ExecutionBudgetExhausted,
    /// Every capability's rate limit is used up.
    RateBudgetExhausted,
    /// A sealed Secret the Permit names is missing or not of the sealed type.
    SealedSecretMissing,
    /// The code digest waits for the owner's trust (codeReview perCode).
    CodeNotTrusted,
    /// The owner denied the code.
    CodeDenied,
    /// The owner left the code unanswered past the approval timeout.
    CodeApprovalTimedOut,
    /// The Permit pins its code (`pinnedCode`) and this code is not one of those.
    CodeNotPinned,
    /// The Permit pins this code and waits for its owner's decision.
    PermitPending,
    /// The Execution's args break one of the Permit's `argRules`.
    ArgsRefused,
    /// The runner was started.
    Launched,
    /// The runner could not be started.
    LaunchFailed,
    /// The Permit's hosts cannot be walled in (one resolves to a private, loopback or metadata
    /// address, or does not resolve): no sandbox was created.
    EgressRefused,
    /// The sandbox Pod exists but does not run yet.
    SandboxWaiting,
    /// The sandbox Pod ended without a result.
    SandboxFailed,
    /// The runner process exited without a result.
    RunnerExited,
    /// No result by the deadline (or the node enforced it).
    DeadlineExceeded,
    /// The code returned.
    Succeeded,
    /// The code ran past its time limit.
    TimedOut,
    /// The runner refused the bundle.
    RunnerRefused,
    /// The Permit requires a TDX quote and the result carried none.
    NotAttested,
    /// The code threw or the sandbox failed.
    CodeFailed,
}

/// How an Execution ends when the operator (not the runner) ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// `Denied`, `Failed` or `TimedOut`.
    pub phase: ExecutionPhase,
    /// Why.
    pub reason: Reason,
    /// In words an agent can act on.
    pub message: String,
}

impl Ending {
    /// Refused before running.
    pub fn denied(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            phase: ExecutionPhase::Denied,
            reason,
            message: message.into(),
        }
    }

    /// Ended without a result.
    pub fn failed(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            phase: ExecutionPhase::Failed,
            reason,
            message: message.into(),
        }
    }

    /// Ran out of time.
    pub fn timed_out(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            phase: ExecutionPhase::TimedOut,
            reason,
            message: message.into(),
        }
    }
}

/// The record of one launch: what the launch lock writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Which launcher starts the runner.
    pub launcher: LauncherKind,
    /// `sha256:` of the run's one-time callback token.
    pub token_digest: String,
    /// When the operator stops waiting for the result.
    pub deadline: Timestamp,
    /// `pod/<name>` of the sandbox Pod (pod launcher).
    pub pod_name: Option<String>,
    /// The approved spec digest the run is bound to.
    pub permit_digest: String,
    /// The code's digest.
    pub code_digest: String,
    /// The attestation the Permit requires of the result.
    pub require_attestation: Option<oauth3_crds::RequiredAttestation>,
    /// The SandboxPool whose idle member runs it (`pod_name` is the member).
    pub pool: Option<String>,
    /// The SandboxPool that had no idle member, when the run got a fresh Pod instead.
    pub pool_miss: Option<String>,
    /// Why the member picked in `pool_miss` could not be claimed (it changed since it was
    /// picked, or the API server refused the claim), when that is why the run got a fresh Pod.
    pub pool_claim_failed: Option<String>,
}

impl LaunchPlan {
    /// How the runner is started, in words (for the status message and the Launched Event).
    pub fn how(&self) -> String {
        match (&self.pool, &self.pool_miss, &self.pod_name) {
            (Some(pool), _, Some(pod)) => {
                format!("the idle member {pod} of SandboxPool {pool} runs it")
            }
            (None, Some(pool), _) => match &self.pool_claim_failed {
                Some(why) => format!(
                    "SandboxPool {pool}'s idle member could not be claimed ({why}), so the {} \
                     launcher starts a fresh Pod",
                    self.launcher.as_str()
                ),
                None => format!(
                    "SandboxPool {pool} had no idle member, so the {} launcher starts a fresh Pod",
                    self.launcher.as_str()
                ),
            },
            _ => format!(
                "the runner is started by the {} launcher",
                self.launcher.as_str()
            ),
        }
    }
}

fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[truncated at {max} bytes]", &text[..end])
}

/// The stored conditions of `exec` with `Completed` set.
fn completed_condition(
    exec: &Execution,
    reason: Reason,
    message: String,
    now: Time,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    with_condition(exec, COMPLETED, reason.as_str(), message, now)
}

/// `exec`'s conditions with condition `type_` set to true for `reason`.
fn with_condition(
    exec: &Execution,
    type_: &str,
    reason: &str,
    message: String,
    now: Time,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let mut conditions = exec
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    set_condition(
        &mut conditions,
        NewCondition::new(type_, ConditionStatus::True, reason, message),
        exec.metadata.generation,
        now,
    );
    conditions
}

/// Whether a late result was already counted for `exec` (it is counted once).
pub fn late_result_counted(exec: &Execution) -> bool {
    exec.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == LATE_RESULT))
}

/// The status change a result that arrived after the deadline makes to `exec` (ended
/// `TimedOut` by the operator): the phase and reason stay, the call log of what did happen is
/// kept, and a `LateResult` condition says when it came and that its calls are counted.
pub fn late_result(exec: &Execution, result: &RunResult, now: Timestamp) -> ExecutionStatus {
    let allowed = result
        .calls
        .iter()
        .filter(|c| c.decision == oauth3_crds::CallDecision::Allowed)
        .count();
    let message = format!(
        "the runner's result ({:?}, {} call(s), {allowed} allowed) arrived after the deadline; its calls are counted in the Permit's usage and rate budget",
        result.phase,
        result.calls.len()
    );
    let conditions = with_condition(exec, LATE_RESULT, LATE_RESULT, message, Time(now));
    ExecutionStatus {
        calls: result
            .calls
            .iter()
            .take(MAX_STATUS_CALLS)
            .cloned()
            .collect(),
        usage_counted: Some(false),
        conditions,
        ..ExecutionStatus::default()
    }
}

/// The status of `exec` ended by the operator at `now`.
pub fn ended(exec: &Execution, ending: &Ending, now: Timestamp) -> ExecutionStatus {
    let now = Time(now);
    ExecutionStatus {
        phase: Some(ending.phase),
        reason: Some(ending.reason.as_str().to_owned()),
        message: Some(ending.message.clone()),
        completion_time: Some(now.clone()),
        observed_generation: exec.metadata.generation,
        conditions: completed_condition(exec, ending.reason, ending.message.clone(), now),
        ..ExecutionStatus::default()
    }
}

/// The status of `exec` waiting for the owner to trust `code_digest`.
pub fn awaiting_approval(exec: &Execution, code_digest: &str) -> ExecutionStatus {
    ExecutionStatus {
        phase: Some(ExecutionPhase::AwaitingApproval),
        reason: Some(Reason::CodeNotTrusted.as_str().to_owned()),
        message: Some(awaiting_message(code_digest)),
        code_digest: Some(code_digest.to_owned()),
        observed_generation: exec.metadata.generation,
        ..ExecutionStatus::default()
    }
}

/// `exec` waits for the owner's decision on Permit `permit`, which pins its code.
pub fn awaiting_permit(exec: &Execution, permit: &str, code_digest: &str) -> ExecutionStatus {
    ExecutionStatus {
        phase: Some(ExecutionPhase::AwaitingApproval),
        reason: Some(Reason::PermitPending.as_str().to_owned()),
        message: Some(awaiting_permit_message(permit)),
        code_digest: Some(code_digest.to_owned()),
        observed_generation: exec.metadata.generation,
        ..ExecutionStatus::default()
    }
}

/// What an Execution waiting for its pinned Permit's decision says.
pub fn awaiting_permit_message(permit: &str) -> String {
    format!("waiting for the owner to approve Permit {permit}, which pins this code")
}

/// What an Execution waiting for code trust says.
pub fn awaiting_message(code_digest: &str) -> String {
    format!("waiting for the owner to trust code {code_digest}")
}

/// The note on a `Running` Execution whose sandbox does not run yet (phase unchanged).
pub fn sandbox_waiting(message: &str) -> ExecutionStatus {
    ExecutionStatus {
        reason: Some(Reason::SandboxWaiting.as_str().to_owned()),
        message: Some(message.to_owned()),
        ..ExecutionStatus::default()
    }
}

/// The note on a `Running` Execution whose sandbox was noted as waiting and runs now.
pub fn sandbox_running(deadline: Timestamp) -> ExecutionStatus {
    ExecutionStatus {
        reason: Some(Reason::Launched.as_str().to_owned()),
        message: Some(format!(
            "the sandbox runs; its result is awaited until {deadline}"
        )),
        ..ExecutionStatus::default()
    }
}

/// The launch lock: `exec` is `Running` under `plan` from `now`.
pub fn running(exec: &Execution, plan: &LaunchPlan, now: Timestamp) -> ExecutionStatus {
    ExecutionStatus {
        phase: Some(ExecutionPhase::Running),
        reason: Some(Reason::Launched.as_str().to_owned()),
        message: Some(format!(
            "{}; its result is awaited until {}",
            plan.how(),
            plan.deadline
        )),
        permit_digest: Some(plan.permit_digest.clone()),
        code_digest: Some(plan.code_digest.clone()),
        start_time: Some(Time(now)),
        observed_generation: exec.metadata.generation,
        pod_name: plan.pod_name.clone(),
        launch: Some(LaunchRecord {
            launcher: plan.launcher,
            token_digest: plan.token_digest.clone(),
            launched_at: Time(now),
            deadline: Time(plan.deadline),
            require_attestation: plan.require_attestation,
            pool: plan.pool.clone(),
        }),
        ..ExecutionStatus::default()
    }
}

/// The reason and message a runner's result is recorded with.
pub fn result_reason(result: &RunResult) -> (Reason, String) {
    let error = |default: &str| result.error.clone().unwrap_or_else(|| default.to_owned());
    match result.phase {
        ExecutionPhase::Succeeded => (Reason::Succeeded, "the code returned".to_owned()),
        ExecutionPhase::TimedOut => (Reason::TimedOut, error("the code ran past its time limit")),
        ExecutionPhase::Denied => (Reason::RunnerRefused, error("the runner refused the run")),
        _ => (Reason::CodeFailed, error("the code failed")),
    }
}

/// Why `result` does not meet the attestation `exec`'s Permit required at launch, if it
/// does not (pure).
pub fn missing_attestation(exec: &Execution, result: &RunResult) -> Option<String> {
    let required = exec.status.as_ref()?.launch.as_ref()?.require_attestation?;
    match required {
        oauth3_crds::RequiredAttestation::Tdx
            if result.attestation.kind != oauth3_crds::AttestationKind::Tdx
                || result.attestation.quote.is_none() =>
        {
            Some(format!(
                "the Permit requires a TDX attestation (requireAttestation: tdx) and the result \
                 carried none (attestation.kind: {}); the result is withheld{}",
                match result.attestation.kind {
                    oauth3_crds::AttestationKind::Tdx => "tdx, without a quote",
                    oauth3_crds::AttestationKind::None => "none",
                },
                result
                    .error
                    .as_deref()
                    .map(|e| format!("; the runner said: {e}"))
                    .unwrap_or_default()
            ))
        }
        oauth3_crds::RequiredAttestation::Tdx => None,
    }
}

/// The status the runner's `result` gives `exec` at `now`: phase, reason, message, output,
/// result, call log, timing, attestation and the `Completed` condition (outputs capped). A
/// result without the attestation the Permit required ends `Failed` (`NotAttested`) with its
/// `result` withheld.
pub fn completed(exec: &Execution, result: &RunResult, now: Timestamp) -> ExecutionStatus {
    let (mut reason, mut message) = result_reason(result);
    let mut phase = result.phase;
    let mut value = result.result.clone();
    if let Some(why) = missing_attestation(exec, result) {
        (phase, reason, message) = (ExecutionPhase::Failed, Reason::NotAttested, why);
        value = serde_json::Value::Null;
    }
    let now = Time(now);
    ExecutionStatus {
        phase: Some(phase),
        reason: Some(reason.as_str().to_owned()),
        message: Some(cap(&message, MAX_MESSAGE)),
        stdout: Some(cap(&result.stdout, MAX_STATUS_OUTPUT)),
        stderr: Some(cap(&result.stderr, MAX_STATUS_OUTPUT)),
        result: Some(value),
        error: result.error.as_deref().map(|e| cap(e, MAX_STATUS_OUTPUT)),
        rate_budget: result.rate_budget.clone(),
        calls: result
            .calls
            .iter()
            .take(MAX_STATUS_CALLS)
            .cloned()
            .collect(),
        duration_ms: Some(result.duration_ms),
        exit_code: Some(if phase == ExecutionPhase::Succeeded {
            0
        } else {
            1
        }),
        completion_time: Some(now.clone()),
        usage_counted: Some(false),
        attestation: Some(result.attestation.clone()),
        code_digest: Some(result.code_digest.clone()),
        conditions: completed_condition(exec, reason, cap(&message, MAX_CONDITION_MESSAGE), now),
        ..ExecutionStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth3_crds::{Attestation, ExecutionSpec};
    use oauth3_protocol::ExecutionRef;

    fn exec() -> Execution {
        let mut e = Execution::new(
            "run-1",
            ExecutionSpec {
                permit_ref: "p".into(),
                code: "return 1".into(),
                language: Default::default(),
                args: None,
                timeout_seconds: 30,
            },
        );
        e.metadata.namespace = Some("ns".into());
        e.metadata.generation = Some(1);
        e
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("timestamp")
    }

    fn result(phase: ExecutionPhase, stdout: &str) -> RunResult {
        RunResult {
            execution: ExecutionRef {
                namespace: "ns".into(),
                name: "run-1".into(),
                uid: "u".into(),
            },
            phase,
            result: serde_json::json!(42),
            stdout: stdout.into(),
            stderr: String::new(),
            error: None,
            calls: Vec::new(),
            duration_ms: 5,
            code_digest: "sha256:c".into(),
            permit_digest: "sha256:p".into(),
            rate_budget: Default::default(),
            sealed_updates: Vec::new(),
            attestation: Attestation::none(),
            statement_digest: String::new(),
        }
    }

    #[test]
    fn an_ending_sets_phase_reason_message_time_and_the_completed_condition() {
        let s = ended(
            &exec(),
            &Ending::denied(Reason::PermitExpired, "expired"),
            now(),
        );
        assert_eq!(s.phase, Some(ExecutionPhase::Denied));
        assert_eq!(s.reason.as_deref(), Some("PermitExpired"));
        assert_eq!(s.message.as_deref(), Some("expired"));
        assert_eq!(s.completion_time, Some(Time(now())));
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Completed", "True", "PermitExpired")
        );
        assert_eq!(c.observed_generation, Some(1));
    }

    #[test]
    fn the_launch_lock_records_the_launcher_token_digest_and_deadline() {
        let plan = LaunchPlan {
            launcher: LauncherKind::Pod,
            token_digest: "sha256:t".into(),
            deadline: now(),
            pod_name: Some("pod/x".into()),
            permit_digest: "sha256:p".into(),
            code_digest: "sha256:c".into(),
            require_attestation: None,
            pool: None,
            pool_miss: None,
            pool_claim_failed: None,
        };
        let s = running(&exec(), &plan, now());
        assert_eq!(s.phase, Some(ExecutionPhase::Running));
        let launch = s.launch.expect("launch record");
        assert_eq!(launch.launcher, LauncherKind::Pod);
        assert_eq!(launch.token_digest, "sha256:t");
        let text = serde_json::to_value(&launch).expect("json");
        assert_eq!(text["launcher"], "pod");
        assert!(s.message.expect("message").contains("pod launcher"));
    }

    #[test]
    fn a_fresh_pod_after_a_pool_says_whether_the_pool_was_empty_or_its_member_refused() {
        let mut plan = LaunchPlan {
            launcher: LauncherKind::Pod,
            token_digest: "sha256:t".into(),
            deadline: now(),
            pod_name: Some("pod/x".into()),
            permit_digest: "sha256:p".into(),
            code_digest: "sha256:c".into(),
            require_attestation: None,
            pool: None,
            pool_miss: Some("fast".into()),
            pool_claim_failed: None,
        };
        assert_eq!(
            plan.how(),
            "SandboxPool fast had no idle member, so the pod launcher starts a fresh Pod"
        );
        plan.pool_claim_failed = Some("fast-abc changed since it was picked".into());
        assert_eq!(
            plan.how(),
            "SandboxPool fast's idle member could not be claimed (fast-abc changed since it \
             was picked), so the pod launcher starts a fresh Pod"
        );
    }

    #[test]
    fn a_result_is_recorded_with_capped_outputs_and_its_reason() {
        let long = "é".repeat(MAX_STATUS_OUTPUT);
        let s = completed(&exec(), &result(ExecutionPhase::Succeeded, &long), now());
        assert_eq!(s.reason.as_deref(), Some("Succeeded"));
        let stdout = s.stdout.expect("stdout");
        assert!(stdout.ends_with(&format!("[truncated at {MAX_STATUS_OUTPUT} bytes]")));
        assert_eq!(s.exit_code, Some(0));
        assert_eq!(s.result, Some(serde_json::json!(42)));
        let failed = completed(&exec(), &result(ExecutionPhase::Denied, ""), now());
        assert_eq!(failed.reason.as_deref(), Some("RunnerRefused"));
        assert_eq!(failed.exit_code, Some(1));
    }

    fn requiring(exec: Execution) -> Execution {
        let plan = LaunchPlan {
            launcher: LauncherKind::Process,
            token_digest: "sha256:t".into(),
            deadline: now(),
            pod_name: None,
            permit_digest: "sha256:p".into(),
            code_digest: "sha256:c".into(),
            require_attestation: Some(oauth3_crds::RequiredAttestation::Tdx),
            pool: None,
            pool_miss: None,
            pool_claim_failed: None,
        };
        let mut e = exec;
        e.status = Some(running(&e, &plan, now()));
        e
    }

    #[test]
    fn an_unattested_result_under_a_permit_requiring_tdx_fails_not_attested_and_is_withheld() {
        let e = requiring(exec());
        let s = completed(&e, &result(ExecutionPhase::Succeeded, "out"), now());
        assert_eq!(s.phase, Some(ExecutionPhase::Failed));
        assert_eq!(s.reason.as_deref(), Some("NotAttested"));
        assert!(
            s.message
                .expect("message")
                .contains("requireAttestation: tdx")
        );
        assert_eq!(s.result, Some(serde_json::Value::Null));
        assert_eq!(s.exit_code, Some(1));
        assert_eq!(
            s.stdout.as_deref(),
            Some("out"),
            "the output is still shown"
        );

        let mut attested = result(ExecutionPhase::Succeeded, "");
        attested.attestation.kind = oauth3_crds::AttestationKind::Tdx;
        attested.attestation.quote = Some("cXVvdGU=".into());
        let s = completed(&e, &attested, now());
        assert_eq!(s.phase, Some(ExecutionPhase::Succeeded));
        assert_eq!(s.result, Some(serde_json::json!(42)));

        let s = completed(&exec(), &result(ExecutionPhase::Succeeded, ""), now());
        assert_eq!(s.phase, Some(ExecutionPhase::Succeeded), "nothing required");
    }

    #[test]
    fn the_runner_error_and_rate_budget_are_kept_verbatim_for_the_statement() {
        let mut r = result(ExecutionPhase::Failed, "");
        r.error = Some("boom".into());
        r.rate_budget.insert("github".into(), 1.5);
        let s = completed(&exec(), &r, now());
        assert_eq!(s.error.as_deref(), Some("boom"));
        assert_eq!(s.rate_budget["github"], 1.5);
    }

    #[test]
    fn outputs_are_capped_at_a_char_boundary_with_a_marker() {
        let long = "é".repeat(40_000);
        let capped = cap(&long, MAX_STATUS_OUTPUT);
        assert!(capped.len() < MAX_STATUS_OUTPUT + 64);
        assert!(capped.ends_with("[truncated at 32768 bytes]"));
        assert_eq!(cap("short", 10), "short");
        let capped = cap("aé", 2);
        assert_eq!(capped, "a\n[truncated at 2 bytes]");
    }

    #[test]
    fn a_partial_status_leaves_unset_fields_out_of_the_patch() {
        let v = serde_json::to_value(sandbox_waiting("image not pulled")).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"reason": "SandboxWaiting", "message": "image not pulled"})
        );
    }
}
