//! Verifying attested results and enclave keys, offline (`kubectl oauth3 verify`, `kubectl
//! oauth3 seal --attestation`): pure functions over an Execution (or a key and its quote), the
//! quote collateral and the owner's measurement policy, giving one verdict per check.
//!
//! The checks, in order:
//! - **statement**: the statement digest recomputed from the Execution's status (phase,
//!   result, stdout, stderr, error, calls, duration, digests, rate budget) equals the one the
//!   runner attested;
//! - **quote**: the attestation carries a TDX quote that parses;
//! - **signature**: the quote's signature chain up to Intel's root (PCK certificate chain, QE
//!   report, CRLs, TCB info and QE identity signatures) verifies with `dcap-qvl`, at the given
//!   time, which must lie inside the collateral's validity;
//! - **tcb**: the platform's TCB status (and advisories) is one the policy accepts (default:
//!   `UpToDate` only);
//! - **binding**: the quote's report data is the binding of this statement (or key), as
//!   defined in [`oauth3_protocol::attestation`];
//! - **measurements**: MRTD, RTMR0-3 and, for dstack, the event log's compose hash and app id
//!   (after the log replays to RTMR3) are values the owner's policy lists.
//!
//! Every check must pass for a verdict of *verified*; a check that cannot be made (no
//! collateral, no policy) counts as not passed.

pub mod eventlog;
pub mod pccs;
pub mod policy;

use base64::Engine as _;
use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::{Quote, TDReport10};
use oauth3_crds::{Attestation, AttestationKind, AttestationProvider, Execution};
use oauth3_protocol::attestation::{
    enclave_key_report_data, quote_report_data, statement_report_data,
};
use oauth3_protocol::{ExecutionRef, RunResult};
use serde::Serialize;

pub use policy::{MeasurementPolicy, PolicyError};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// The check passed.
    Pass,
    /// The check failed.
    Fail,
    /// The check could not be made (missing input, or an earlier check failed).
    NotChecked,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::NotChecked => "not checked",
        }
    }
}

/// One check and what it found, in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `statement`, `quote`, `signature`, `tcb`, `binding` or `measurements`.
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
}

/// The measurements a quote carries (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurements {
    /// MRTD.
    pub mrtd: String,
    /// RTMR0.
    pub rtmr0: String,
    /// RTMR1.
    pub rtmr1: String,
    /// RTMR2.
    pub rtmr2: String,
    /// RTMR3.
    pub rtmr3: String,
    /// REPORTDATA.
    pub report_data: String,
}

impl Measurements {
    fn of(r: &TDReport10) -> Self {
        Self {
            mrtd: hex::encode(r.mr_td),
            rtmr0: hex::encode(r.rt_mr0),
            rtmr1: hex::encode(r.rt_mr1),
            rtmr2: hex::encode(r.rt_mr2),
            rtmr3: hex::encode(r.rt_mr3),
            report_data: hex::encode(r.report_data),
        }
    }

    fn register(&self, name: &str) -> &str {
        match name {
            "MRTD" => &self.mrtd,
            "RTMR0" => &self.rtmr0,
            "RTMR1" => &self.rtmr1,
            "RTMR2" => &self.rtmr2,
            _ => &self.rtmr3,
        }
    }
}

/// Everything `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// What was verified (`Execution ns/name`, `enclave key <hex>`).
    pub subject: String,
    /// True when every check passed.
    pub verified: bool,
    /// The checks in order.
    pub checks: Vec<Check>,
    /// The platform's TCB status, when the signature verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcb_status: Option<String>,
    /// Intel security advisories that apply to the platform.
    pub advisory_ids: Vec<String>,
    /// The quote's measurements, when it parsed (what a policy lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurements: Option<Measurements>,
    /// The time the collateral was checked at (Unix seconds).
    pub checked_at: u64,
}

impl Verification {
    /// The verdict in plain words, one line per check.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: {}\n",
            self.subject,
            if self.verified {
                "VERIFIED"
            } else {
                "NOT VERIFIED"
            }
        );
        for c in &self.checks {
            out.push_str(&format!(
                "  {:<12} {:<13} {}\n",
                c.verdict.word(),
                c.name,
                c.detail
            ));
        }
        if let Some(m) = &self.measurements {
            out.push_str(&format!(
                "measurements:\n  MRTD   {}\n  RTMR0  {}\n  RTMR1  {}\n  RTMR2  {}\n  RTMR3  {}\n",
                m.mrtd, m.rtmr0, m.rtmr1, m.rtmr2, m.rtmr3
            ));
        }
        out
    }
}

/// What verification is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The quote's collateral (TCB info, QE identity, CRLs), if in hand.
    pub collateral: Option<&'a QuoteCollateralV3>,
    /// The owner's measurement policy, if given.
    pub policy: Option<&'a MeasurementPolicy>,
    /// The time to check the collateral's validity at (Unix seconds).
    pub now: u64,
}

/// The run result as the Execution's status records it, for recomputing the statement digest.
///
/// # Errors
/// A message naming what the status lacks, or the output it holds only truncated.
pub fn statement_of(exec: &Execution) -> Result<RunResult, String> {
    let status = exec
        .status
        .as_ref()
        .ok_or("the Execution has no status yet")?;
    let need = |what: &str| format!("the status has no {what}: the Execution has no result");
    let phase = status.phase.ok_or_else(|| need("phase"))?;
    for (field, text) in [
        ("stdout", status.stdout.as_deref()),
        ("stderr", status.stderr.as_deref()),
        ("error", status.error.as_deref()),
    ] {
        if text.is_some_and(|t| t.ends_with(" bytes]") && t.contains("\n[truncated at ")) {
            return Err(format!(
                "status.{field} was truncated when it was stored; the statement cannot be \
                 recomputed from status"
            ));
        }
    }
    Ok(RunResult {
        execution: ExecutionRef {
            namespace: exec.metadata.namespace.clone().unwrap_or_default(),
            name: exec.metadata.name.clone().unwrap_or_default(),
            uid: exec.metadata.uid.clone().unwrap_or_default(),
        },
        phase,
        result: status.result.clone().unwrap_or(serde_json::Value::Null),
        stdout: status.stdout.clone().unwrap_or_default(),
        stderr: status.stderr.clone().unwrap_or_default(),
        error: status.error.clone(),
        calls: status.calls.clone(),
        duration_ms: status.duration_ms.ok_or_else(|| need("durationMs"))?,
        code_digest: status
            .code_digest
            .clone()
            .ok_or_else(|| need("codeDigest"))?,
        permit_digest: status
            .permit_digest
            .clone()
            .ok_or_else(|| need("permitDigest"))?,
        rate_budget: status.rate_budget.clone(),
        sealed_updates: Vec::new(),
        attestation: Attestation::none(),
        statement_digest: String::new(),
    })
}

/// Verifies an Execution's attested result.
pub fn verify_execution(exec: &Execution, inputs: &Inputs<'_>) -> Verification {
    let subject = format!(
        "Execution {}/{}",
        exec.metadata.namespace.as_deref().unwrap_or_default(),
        exec.metadata.name.as_deref().unwrap_or_default()
    );
    let mut checks = Vec::new();
    let attestation = exec
        .status
        .as_ref()
        .and_then(|s| s.attestation.clone())
        .unwrap_or_else(Attestation::none);
    let attested = attestation.statement_digest.clone().unwrap_or_default();
    let recomputed = statement_of(exec).map(|r| r.compute_statement_digest());
    checks.push(match &recomputed {
        Ok(d) if *d == attested => Check {
            name: "statement",
            verdict: Verdict::Pass,
            detail: format!("the status recomputes to {d}, the digest the runner attested"),
        },
        Ok(d) => Check {
            name: "statement",
            verdict: Verdict::Fail,
            detail: format!(
                "the status recomputes to {d}, not the attested {}: the status was changed \
                 after the runner reported it",
                if attested.is_empty() {
                    "(none)"
                } else {
                    &attested
                }
            ),
        },
        Err(e) => Check {
            name: "statement",
            verdict: Verdict::Fail,
            detail: e.clone(),
        },
    });
    let expected = statement_report_data(&attested);
    let what = "this result's statement";
    quote_checks(subject, &attestation, expected, what, inputs, checks)
}

/// Verifies the enclave key `public_key` against the attestation `public-key --attest` gave.
pub fn verify_key(
    public_key: &[u8; 32],
    attestation: &Attestation,
    inputs: &Inputs<'_>,
) -> Verification {
    let subject = format!("enclave key {}", hex::encode(public_key));
    let expected = enclave_key_report_data(public_key);
    quote_checks(
        subject,
        attestation,
        expected,
        "this key",
        inputs,
        Vec::new(),
    )
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

fn not_checked(checks: &mut Vec<Check>, names: &[&'static str], why: &str) {
    for n in names {
        checks.push(check(n, Verdict::NotChecked, why));
    }
}

fn finish(
    subject: String,
    checks: Vec<Check>,
    tcb: Option<(String, Vec<String>)>,
    measurements: Option<Measurements>,
    now: u64,
) -> Verification {
    let (tcb_status, advisory_ids) = tcb.map_or((None, Vec::new()), |(s, a)| (Some(s), a));
    Verification {
        subject,
        verified: checks.iter().all(|c| c.verdict == Verdict::Pass),
        checks,
        tcb_status,
        advisory_ids,
        measurements,
        checked_at: now,
    }
}

fn time_text(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| secs.to_string(), |t| t.to_string())
}

/// The TDX quote an attestation carries, decoded (`None` for `kind: none` or a quote that is
/// not base64): what collateral is fetched for.
#[must_use]
pub fn tdx_quote(attestation: &Attestation) -> Option<Vec<u8>> {
    match (attestation.kind, attestation.quote.as_deref()) {
        (AttestationKind::Tdx, Some(q)) => base64::engine::general_purpose::STANDARD
            .decode(q.trim())
            .ok(),
        _ => None,
    }
}

fn quote_checks(
    subject: String,
    attestation: &Attestation,
    binding: [u8; 64],
    what: &str,
    inputs: &Inputs<'_>,
    mut checks: Vec<Check>,
) -> Verification {
    let rest = ["signature", "tcb", "binding", "measurements"];
    let raw = match (attestation.kind, attestation.quote.as_deref()) {
        (AttestationKind::Tdx, Some(_)) => {
            tdx_quote(attestation).ok_or_else(|| "the attestation's quote is not base64".to_owned())
        }
        _ => Err(
            "the result carries no quote (attestation.kind: none): it was not run in a \
                  TEE, or not with a quote provider"
                .to_owned(),
        ),
    };
    let parsed = raw.and_then(|raw| {
        let quote = Quote::parse(&raw).map_err(|e| format!("the quote does not parse: {e}"))?;
        let report = *quote
            .report
            .as_td10()
            .ok_or("the quote is not a TDX quote (an SGX enclave quote?)")?;
        Ok((raw, quote, report))
    });
    let (raw, quote, report) = match parsed {
        Ok(p) => p,
        Err(e) => {
            checks.push(check("quote", Verdict::Fail, e));
            not_checked(&mut checks, &rest, "there is no usable quote");
            return finish(subject, checks, None, None, inputs.now);
        }
    };
    let provider = attestation
        .provider
        .map_or("an unnamed provider", |p| p.as_str());
    checks.push(check(
        "quote",
        Verdict::Pass,
        format!(
            "a TDX quote (version {}) from {provider}, {} bytes",
            quote.header.version,
            raw.len()
        ),
    ));
    let measurements = Measurements::of(&report);

    // signature + tcb
    let mut tcb = None;
    match inputs.collateral {
        None => not_checked(
            &mut checks,
            &["signature", "tcb"],
            "no collateral: pass --collateral FILE (or --pccs-url URL)",
        ),
        Some(collateral) => {
            match dcap_qvl::verify::QuoteVerifier::new_prod().verify(&raw, collateral, inputs.now) {
                Err(e) => {
                    checks.push(check(
                        "signature",
                        Verdict::Fail,
                        format!(
                            "the quote does not verify against Intel's root of trust at {}: \
                             {e:#}",
                            time_text(inputs.now)
                        ),
                    ));
                    not_checked(&mut checks, &["tcb"], "the signature did not verify");
                }
                Ok(report) => {
                    checks.push(check(
                        "signature",
                        Verdict::Pass,
                        format!(
                            "signed by a genuine TDX platform (PCK chain to Intel's root, QE \
                             report, CRLs, TCB info), collateral valid at {}",
                            time_text(inputs.now)
                        ),
                    ));
                    checks.push(tcb_check(
                        &report.status,
                        &report.advisory_ids,
                        inputs.policy,
                    ));
                    tcb = Some((report.status, report.advisory_ids));
                }
            }
        }
    }

    // binding
    let expected = quote_report_data(
        &binding,
        attestation.provider == Some(AttestationProvider::Coco),
    );
    checks.push(if report.report_data == expected {
        check(
            "binding",
            Verdict::Pass,
            format!("the quote's report data binds {what}"),
        )
    } else {
        check(
            "binding",
            Verdict::Fail,
            format!(
                "the quote's report data ({}...) is not the binding of {what} ({}...): the \
                 quote was not made over it",
                &measurements.report_data[..16],
                &hex::encode(expected)[..16]
            ),
        )
    });

    checks.push(match inputs.policy {
        None => check(
            "measurements",
            Verdict::NotChecked,
            "no --policy given: the measurements below are not compared with anything",
        ),
        Some(policy) => measurement_check(policy, &measurements, attestation),
    });
    finish(subject, checks, tcb, Some(measurements), inputs.now)
}

fn tcb_check(status: &str, advisories: &[String], policy: Option<&MeasurementPolicy>) -> Check {
    let default = policy::TcbPolicy::default();
    let tcb = policy.map_or(&default, |p| &p.tcb);
    let listed = if advisories.is_empty() {
        "no advisories".to_owned()
    } else {
        format!("advisories {}", advisories.join(", "))
    };
    if !tcb.allow_status.iter().any(|s| s == status) {
        return check(
            "tcb",
            Verdict::Fail,
            format!(
                "TCB status {status} ({listed}) is not one the policy accepts ({})",
                tcb.allow_status.join(", ")
            ),
        );
    }
    if let Some(bad) = advisories
        .iter()
        .find(|a| tcb.reject_advisories.contains(a))
    {
        return check(
            "tcb",
            Verdict::Fail,
            format!("TCB status {status}, but advisory {bad} is rejected by the policy"),
        );
    }
    check(
        "tcb",
        Verdict::Pass,
        format!("TCB status {status}, {listed}"),
    )
}

fn measurement_check(
    policy: &MeasurementPolicy,
    m: &Measurements,
    attestation: &Attestation,
) -> Check {
    let mut wrong = Vec::new();
    let mut checked = Vec::new();
    for (name, allowed) in policy.registers() {
        if allowed.is_empty() {
            continue;
        }
        checked.push(name.to_owned());
        let value = m.register(name);
        if !allowed.iter().any(|a| a == value) {
            wrong.push(format!("{name} {}... is not in the policy", &value[..16]));
        }
    }
    let dstack = &policy.dstack;
    if !dstack.compose_hash.is_empty() || !dstack.app_id.is_empty() {
        match attestation.event_log.as_deref().map(eventlog::replay) {
            None => wrong.push("the attestation has no dstack event log".to_owned()),
            Some(Err(e)) => wrong.push(e),
            Some(Ok(log)) if log.rtmr3 != m.rtmr3 => wrong.push(
                "the event log does not replay to the quote's RTMR3, so its app events \
                 cannot be trusted"
                    .to_owned(),
            ),
            Some(Ok(log)) => {
                for (name, allowed, found) in [
                    ("compose hash", &dstack.compose_hash, &log.compose_hashes),
                    ("app id", &dstack.app_id, &log.app_ids),
                ] {
                    if allowed.is_empty() {
                        continue;
                    }
                    checked.push(format!("dstack {name}"));
                    if found.is_empty() || !found.iter().all(|f| allowed.contains(f)) {
                        wrong.push(format!(
                            "dstack {name} {} is not in the policy",
                            found.first().map_or("(none in the log)", String::as_str)
                        ));
                    }
                }
            }
        }
    }
    if wrong.is_empty() {
        check(
            "measurements",
            Verdict::Pass,
            format!("{} match the policy", checked.join(", ")),
        )
    } else {
        check("measurements", Verdict::Fail, wrong.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_without_a_quote_fails_quote_and_checks_nothing_else() {
        let mut exec = Execution::new(
            "e",
            oauth3_crds::ExecutionSpec {
                permit_ref: "p".into(),
                code: "1".into(),
                language: Default::default(),
                args: None,
                timeout_seconds: 30,
            },
        );
        exec.metadata.namespace = Some("ns".into());
        let v = verify_execution(
            &exec,
            &Inputs {
                collateral: None,
                policy: None,
                now: 0,
            },
        );
        assert!(!v.verified);
        let verdicts: Vec<_> = v.checks.iter().map(|c| (c.name, c.verdict)).collect();
        assert_eq!(verdicts[0], ("statement", Verdict::Fail));
        assert_eq!(verdicts[1], ("quote", Verdict::Fail));
        assert!(verdicts[2..].iter().all(|(_, v)| *v == Verdict::NotChecked));
        assert!(v.render().contains("NOT VERIFIED"));
    }
}
