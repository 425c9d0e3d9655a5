//! The run result: what a runner reports for one bundle, and the statement digest an
//! attestation quote commits to.

use std::collections::BTreeMap;

use oauth3_crds::digest::canonical_json;
use oauth3_crds::{Attestation, CallRecord, ExecutionPhase};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bundle::{BundleLimits, ExecutionRef};

/// Most bytes of `error` in a result (after redaction; the runner cuts longer texts).
pub const MAX_ERROR_BYTES: usize = 4096;
/// Most bytes of each call record's `url` (after redaction).
pub const MAX_CALL_URL_BYTES: usize = 2048;
/// Most bytes of each call record's `reason` (after redaction).
pub const MAX_CALL_REASON_BYTES: usize = 1024;
/// Most bytes of a result's `attestation` as JSON (a TDX quote is about 5 KiB, base64-encoded
/// about 7 KiB; an event log some tens of KiB).
pub const MAX_ATTESTATION_BYTES: usize = 512 * 1024;
/// Most capabilities in a Permit, hence entries in `rateBudget`.
const MAX_BUDGET_ENTRIES: usize = 128;
/// Fixed-size fields of a result and of each call record (names, digests, numbers, keys and
/// JSON punctuation), and a truncation marker per capped text, bounded generously.
const RESULT_OVERHEAD: usize = 8 * 1024;
const CALL_OVERHEAD: usize = 512;
/// JSON escaping turns one byte of text into at most six (`\u00XX`).
const ESCAPE: usize = 6;

/// The largest JSON body a runner's result can be for a run under `limits`: what the result
/// endpoint reads at most. Derived from the caps the runner applies: the returned value's JSON
/// text (`maxOutputBytes`), stdout and stderr (`maxOutputBytes` each, every byte possibly
/// escaped), the error text, `maxCalls` call records with capped URLs and reasons, the rate
/// budget and the attestation.
pub fn max_result_bytes(limits: &BundleLimits) -> usize {
    let out = usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX);
    let calls = usize::try_from(limits.max_calls).unwrap_or(usize::MAX);
    let per_call =
        ESCAPE.saturating_mul(64 + 16 + MAX_CALL_URL_BYTES + MAX_CALL_REASON_BYTES) + CALL_OVERHEAD;
    RESULT_OVERHEAD
        .saturating_add(out)
        .saturating_add(ESCAPE.saturating_mul(out.saturating_mul(2)))
        .saturating_add(ESCAPE * MAX_ERROR_BYTES)
        .saturating_add(calls.saturating_mul(per_call))
        .saturating_add(MAX_BUDGET_ENTRIES * (ESCAPE * 64 + 32))
        .saturating_add(MAX_ATTESTATION_BYTES)
}

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
    /// oauth2 credentials the run refreshed, re-sealed to the runner's enclave key; the
    /// operator writes each back to its sealed Secret. Absent when nothing was refreshed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed_updates: Vec<crate::oauth2::SealedUpdate>,
    /// Evidence of where the code ran (`kind: none` outside a TEE).
    pub attestation: Attestation,
    /// `sha256:<hex>` of the canonical JSON of this result without `attestation`,
    /// `sealedUpdates` and `statementDigest`: the statement an attestation quote commits to.
    pub statement_digest: String,
}

impl RunResult {
    /// The canonical statement digest of this result (see [`RunResult::statement_digest`]).
    pub fn compute_statement_digest(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.remove("attestation");
            map.remove("statementDigest");
            // Ciphertext for the enclave's own key, written back to Secrets, not to the
            // Execution's status that `kubectl oauth3 verify` recomputes the digest from.
            map.remove("sealedUpdates");
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
            sealed_updates: Vec::new(),
            attestation: Attestation::none(),
            statement_digest: String::new(),
        }
    }

    #[test]
    fn the_largest_result_a_runner_can_post_fits_the_derived_body_limit() {
        for limits in [
            BundleLimits::default(),
            BundleLimits {
                max_output_bytes: 1 << 20,
                max_calls: 10_000,
                ..BundleLimits::default()
            },
        ] {
            let out = usize::try_from(limits.max_output_bytes).expect("fits");
            // Every text at its cap (plus a truncation marker), made of the character whose
            // JSON escape is longest; the returned value at its cap of JSON text.
            let worst = |n: usize| "\u{1}".repeat(n + 64);
            let call = CallRecord {
                capability: "c".repeat(64),
                method: "OPTIONS".into(),
                url: worst(MAX_CALL_URL_BYTES),
                status: Some(599),
                decision: oauth3_crds::CallDecision::Denied,
                reason: Some(worst(MAX_CALL_REASON_BYTES)),
                duration_ms: i64::MAX,
            };
            let mut r = result();
            r.phase = ExecutionPhase::Failed;
            r.result = serde_json::Value::String("x".repeat(out - 2));
            r.stdout = worst(out);
            r.stderr = worst(out);
            r.error = Some(worst(MAX_ERROR_BYTES));
            r.calls = vec![call; usize::try_from(limits.max_calls).expect("fits")];
            r.rate_budget = (0..128).map(|i| (format!("{i:064}"), f64::MAX)).collect();
            r.attestation.quote = Some("q".repeat(MAX_ATTESTATION_BYTES - 1024));
            let body = serde_json::to_vec(&r).expect("serialises");
            assert!(
                body.len() <= max_result_bytes(&limits),
                "{} > {}",
                body.len(),
                max_result_bytes(&limits)
            );
        }
        // And the bound is not absurd for the default limits the operator launches with.
        assert!(max_result_bytes(&BundleLimits::default()) < 4 * 1024 * 1024);
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
