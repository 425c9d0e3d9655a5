//! What clients read about a request, from the object as it is now (pure).
//!
//! Statuses, as the protocol's clients expect them:
//! - a Permit request: `pending` (waiting for the owner) -> `completed` (approved) or `denied`
//!   (denied, revoked, expired);
//! - an Execution: `approved` (admitted or waiting to start) -> `executing` -> `completed` (the
//!   code ran to the end) or `failed` (it threw, timed out or its sandbox failed); `pending`
//!   while its code waits for the owner (`codeReview: perCode`); `denied` when a policy
//!   refused it (with the reason in `error`).
//!
//! Timestamps are milliseconds since the epoch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use oauth3_crds::{Execution, ExecutionPhase, Permit, PermitPhase};
use serde_json::{Value, json};

/// Whether a status value is final: answers for it are given at once, never held.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "denied")
}

fn millis(t: Option<&Time>) -> Option<i64> {
    t.map(|t| t.0.as_millisecond())
}

/// The status value of a Permit request.
pub fn permit_status(permit: &Permit) -> &'static str {
    match permit.status.as_ref().and_then(|s| s.phase) {
        Some(PermitPhase::Approved) => "completed",
        Some(PermitPhase::Denied | PermitPhase::Revoked | PermitPhase::Expired) => "denied",
        Some(PermitPhase::Pending) | None => "pending",
    }
}

/// The status answer for a Permit request `request_id`.
pub fn permit_answer(request_id: &str, permit: &Permit) -> Value {
    let status = permit_status(permit);
    let approval = permit.status.as_ref().and_then(|s| s.approval.as_ref());
    let mut out = json!({
        "request_id": request_id,
        "status": status,
        "permit_id": permit.metadata.name,
        "session_id": permit.metadata.name,
        "created_at": millis(permit.metadata.creation_timestamp.as_ref()),
    });
    if status == "completed" {
        out["approved_at"] = json!(approval.map(|a| a.at.0.as_millisecond()));
    }
    if status == "denied" {
        let phase = permit
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|p| format!("{p:?}"))
            .unwrap_or_default();
        let reason = approval
            .and_then(|a| a.reason.clone())
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        out["error"] = json!(format!("Permit {phase}{reason}"));
    }
    out
}

/// The status value of an Execution.
pub fn execution_status(exec: &Execution) -> &'static str {
    match exec.status.as_ref().and_then(|s| s.phase) {
        None | Some(ExecutionPhase::Pending) => "approved",
        Some(ExecutionPhase::AwaitingApproval) => "pending",
        Some(ExecutionPhase::Running) => "executing",
        Some(ExecutionPhase::Succeeded) => "completed",
        Some(ExecutionPhase::Failed | ExecutionPhase::TimedOut) => "failed",
        Some(ExecutionPhase::Denied) => "denied",
    }
}

/// The `result` object of a finished Execution: `{success, stdout, stderr, exitCode,
/// duration, value}` (`value` is what the code returned).
pub fn execution_result(exec: &Execution) -> Option<Value> {
    let s = exec.status.as_ref()?;
    let phase = s.phase?;
    if !phase.is_terminal() || phase == ExecutionPhase::Denied {
        return None;
    }
    let success = phase == ExecutionPhase::Succeeded;
    Some(json!({
        "success": success,
        "stdout": s.stdout.clone().unwrap_or_default(),
        "stderr": s.stderr.clone().unwrap_or_default(),
        "exitCode": s.exit_code.unwrap_or(if success { 0 } else { 1 }),
        "duration": s.duration_ms.unwrap_or(0),
        "value": s.result.clone().unwrap_or(Value::Null),
    }))
}

/// Why an Execution did not complete, in one line (`reason: message`).
pub fn execution_error(exec: &Execution) -> Option<String> {
    let s = exec.status.as_ref()?;
    match s.phase? {
        ExecutionPhase::Failed | ExecutionPhase::TimedOut | ExecutionPhase::Denied => {
            let reason = s.reason.clone().unwrap_or_else(|| "Failed".into());
            Some(match s.message.as_deref().filter(|m| !m.is_empty()) {
                Some(m) => format!("{reason}: {m}"),
                None => reason,
            })
        }
        _ => None,
    }
}

/// The status answer for an Execution `request_id`.
pub fn execution_answer(request_id: &str, exec: &Execution) -> Value {
    let status = execution_status(exec);
    let s = exec.status.clone().unwrap_or_default();
    let mut out = json!({
        "request_id": request_id,
        "status": status,
        "permit_id": exec.spec.permit_ref,
        "created_at": millis(exec.metadata.creation_timestamp.as_ref()),
    });
    if let Some(t) = millis(s.start_time.as_ref()) {
        out["approved_at"] = json!(t);
    }
    if let Some(t) = millis(s.completion_time.as_ref()) {
        out["executed_at"] = json!(t);
    }
    if let Some(r) = execution_result(exec) {
        out["result"] = r;
    }
    if let Some(e) = execution_error(exec) {
        out["error"] = json!(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth3_crds::{ExecutionSpec, ExecutionStatus, PermitSpec, PermitStatus};

    fn exec(phase: Option<ExecutionPhase>) -> Execution {
        let spec: ExecutionSpec =
            serde_json::from_value(json!({"permitRef": "p", "code": "return 1"})).expect("spec");
        let mut e = Execution::new("e", spec);
        e.status = Some(ExecutionStatus {
            phase,
            stdout: Some("hi\n".into()),
            result: Some(json!(1)),
            duration_ms: Some(12),
            reason: Some("CodeThrew".into()),
            message: Some("boom".into()),
            ..Default::default()
        });
        e
    }

    #[test]
    fn execution_phases_map_to_the_protocol_statuses() {
        for (phase, want) in [
            (None, "approved"),
            (Some(ExecutionPhase::Pending), "approved"),
            (Some(ExecutionPhase::AwaitingApproval), "pending"),
            (Some(ExecutionPhase::Running), "executing"),
            (Some(ExecutionPhase::Succeeded), "completed"),
            (Some(ExecutionPhase::Failed), "failed"),
            (Some(ExecutionPhase::TimedOut), "failed"),
            (Some(ExecutionPhase::Denied), "denied"),
        ] {
            assert_eq!(execution_status(&exec(phase)), want, "{phase:?}");
        }
    }

    #[test]
    fn a_finished_execution_carries_its_result_and_a_failed_one_its_error() {
        let done = execution_answer("exec_1", &exec(Some(ExecutionPhase::Succeeded)));
        assert_eq!(done["result"]["success"], true);
        assert_eq!(done["result"]["stdout"], "hi\n");
        assert_eq!(done["result"]["exitCode"], 0);
        assert_eq!(done["result"]["duration"], 12);
        assert_eq!(done["result"]["value"], 1);
        assert!(done.get("error").is_none());
        let failed = execution_answer("exec_1", &exec(Some(ExecutionPhase::Failed)));
        assert_eq!(failed["result"]["success"], false);
        assert_eq!(failed["error"], "CodeThrew: boom");
        let denied = execution_answer("exec_1", &exec(Some(ExecutionPhase::Denied)));
        assert!(denied.get("result").is_none());
        assert_eq!(denied["status"], "denied");
        assert!(is_terminal("denied") && !is_terminal("executing"));
    }

    #[test]
    fn permit_phases_map_to_pending_completed_denied() {
        let spec: PermitSpec = serde_json::from_value(json!({"description": "d",
            "capabilities": [{"name": "x", "baseUrl": "https://h", "paths": ["/"], "methods": ["GET"]}]}))
        .expect("spec");
        let mut p = Permit::new("p", spec);
        assert_eq!(permit_status(&p), "pending");
        for (phase, want) in [
            (PermitPhase::Pending, "pending"),
            (PermitPhase::Approved, "completed"),
            (PermitPhase::Denied, "denied"),
            (PermitPhase::Revoked, "denied"),
            (PermitPhase::Expired, "denied"),
        ] {
            p.status = Some(PermitStatus {
                phase: Some(phase),
                ..Default::default()
            });
            assert_eq!(permit_status(&p), want);
        }
        assert_eq!(permit_answer("permit_1", &p)["error"], "Permit Expired");
    }
}
