//! The run result: what a runner reports for one bundle, and the statement digest an
//! attestation quote commits to.

use std::collections::BTreeMap;

use oauth3_crds::digest::canonical_json;
use oauth3_crds::{Attestation, CallRecord, ExecutionPhase};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bundle::ExecutionRef;

/// The outcome of a run, as the runner reports it (written to the output and POSTed to the
/// callback). The operator copies it into `Execution.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// The Execution this result belongs to.
    pub execution: ExecutionRef,
    /// `Succeeded`, `Failed`, `TimedOut` or `Denied` (refused before running).
    pub phase: ExecutionPhase,
    /// The JSON value the code returned (redacted); `null` unless `Succeeded`.
    pub result: serde_json::Value,
    /// Captured `console.log`/`console.info` output, capped and redacted.
    pub stdout: String,
    /// Captured `console.error`/`console.warn` output plus an uncaught error, capped and
    /// redacted.
    pub stderr: String,
    /// Why the run did not succeed, redacted; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every capability call attempted, allowed or denied, in order.
    pub calls: Vec<CallRecord>,
    /// Wall time of the whole run in milliseconds.
    pub duration_ms: i64,
    /// `sha256:<hex>` of the code that ran.
    pub code_digest: String,
    /// The Permit spec digest the run was checked against.
    pub permit_digest: String,
    /// Rate budget left per capability: the bundle's budget minus the allowed calls made.
    pub rate_budget: BTreeMap<String, f64>,
    /// Evidence of where the code ran (`kind: none` outside a TEE).
    pub attestation: Attestation,
    /// `sha256:<hex>` of the canonical JSON of this result without `attestation` and
    /// `statementDigest`: the statement an attestation quote commits to.
    pub statement_digest: String,
}

impl RunResult {
    /// The canonical statement digest of this result (see [`RunResult::statement_digest`]).
    pub fn compute_statement_digest(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.remove("attestation");
            map.remove("statementDigest");
        }
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(canonical_json(&value).as_bytes()))
        )
    }

    /// Process exit code for this result: 0 when `Succeeded`, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.phase != ExecutionPhase::Succeeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> RunResult {
        RunResult {
            execution: ExecutionRef {
                namespace: "ns".into(),
                name: "e".into(),
                uid: "u".into(),
            },
            phase: ExecutionPhase::Succeeded,
            result: serde_json::json!({"n": 1}),
            stdout: String::new(),
            stderr: String::new(),
            error: None,
            calls: Vec::new(),
            duration_ms: 3,
            code_digest: "sha256:c".into(),
            permit_digest: "sha256:p".into(),
            rate_budget: BTreeMap::new(),
            attestation: Attestation::none(),
            statement_digest: String::new(),
        }
    }

    #[test]
    fn the_statement_digest_ignores_the_attestation_and_itself_but_nothing_else() {
        let a = result();
        let digest = a.compute_statement_digest();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest}"
        );
        let mut b = result();
        b.statement_digest = digest.clone();
        b.attestation.quote = Some("quote".into());
        assert_eq!(b.compute_statement_digest(), digest);
        let mut c = result();
        c.result = serde_json::json!({"n": 2});
        assert_ne!(c.compute_statement_digest(), digest);
    }

    #[test]
    fn only_a_success_exits_zero() {
        let mut r = result();
        assert_eq!(r.exit_code(), 0);
        r.phase = ExecutionPhase::Failed;
        assert_eq!(r.exit_code(), 1);
    }
}
