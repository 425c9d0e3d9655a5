//! One run of a bundle, end to end: validate, unseal, build the enforcing host, run the
//! sandbox, redact, and assemble the signed-off [`RunResult`]; plus posting it to the callback.
//!
//! The secret-handling and enforcement pieces are plugged in through [`RunnerDeps`], so this
//! module never sees how secrets are unsealed or how calls are enforced. Every text that
//! leaves the runner (result, stdout, stderr, error, call reasons) passes through
//! [`RunnerDeps::redact`] first.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oauth3_crds::{Attestation, AttestationKind, CallDecision, CallRecord, ExecutionPhase};
use zeroize::Zeroizing;

use crate::bundle::{Bundle, Callback};
use crate::host::{BoxFuture, CallOutcome, CapabilityCall, CapabilityHost};
use crate::sandbox::{self, Outcome};
pub use oauth3_protocol::RunResult;
use oauth3_protocol::callback::callback_url_allowed;

/// Plaintext secrets by name (as the Permit lists them), wiped from memory on drop.
pub type Secrets = BTreeMap<String, Zeroizing<String>>;

/// Opens the bundle's sealed secrets. Implemented by the secrets module's key providers.
pub trait Unsealer: Send + Sync {
    /// The plaintext of every entry of `bundle.sealed_secrets`, by name. The error text must
    /// not contain any secret.
    fn unseal<'a>(&'a self, bundle: &'a Bundle) -> BoxFuture<'a, Result<Secrets, String>>;
}

/// Builds the capability host (policy enforcement + credential injection) for one run.
pub type MakeHost =
    Box<dyn Fn(&Bundle, &Secrets) -> Result<Arc<dyn CapabilityHost>, String> + Send + Sync>;

/// Scrubs every secret value (in every encoding it checks) from a text.
pub type Redact = Box<dyn Fn(&Secrets, &str) -> String + Send + Sync>;

/// What the runner needs from the secrets and enforcement modules.
pub struct RunnerDeps {
    /// Opens the sealed secrets.
    pub unsealer: Box<dyn Unsealer>,
    /// Builds the enforcing capability host from the bundle and the opened secrets.
    pub make_host: MakeHost,
    /// Redacts secret values from a text; applied to everything that leaves the runner.
    pub redact: Redact,
}

impl fmt::Debug for RunnerDeps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunnerDeps { .. }")
    }
}

impl RunnerDeps {
    /// Deps that run pure JavaScript only: no secrets can be opened and every capability call
    /// is denied with [`NO_ENFORCEMENT_BACKEND`]. Redaction is the identity (there is nothing
    /// to redact). Stands in until the real key providers and scoped fetch are linked.
    pub fn without_enforcement_backend() -> Self {
        Self {
            unsealer: Box::new(NoKeyProvider),
            make_host: Box::new(|bundle, _| {
                let names = bundle
                    .permit
                    .spec
                    .capabilities
                    .iter()
                    .map(|c| c.name.clone())
                    .collect();
                Ok(Arc::new(NoEnforcementBackend::new(names)) as Arc<dyn CapabilityHost>)
            }),
            redact: Box::new(|_, text| text.to_owned()),
        }
    }
}

/// Why the placeholder host denies every call.
pub const NO_ENFORCEMENT_BACKEND: &str = "no enforcement backend linked";

/// Placeholder [`CapabilityHost`]: exposes the Permit's capability names but denies and
/// records every call with [`NO_ENFORCEMENT_BACKEND`]. Never reaches the network.
#[derive(Debug, Default)]
pub struct NoEnforcementBackend {
    names: Vec<String>,
    calls: Mutex<Vec<CallRecord>>,
}

impl NoEnforcementBackend {
    /// A placeholder exposing these capability names.
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            calls: Mutex::new(Vec::new()),
        }
    }
}

impl CapabilityHost for NoEnforcementBackend {
    fn capabilities(&self) -> Vec<String> {
        self.names.clone()
    }

    fn call(&self, call: CapabilityCall) -> BoxFuture<'_, CallOutcome> {
        let method = call
            .args
            .first()
            .and_then(|m| m.as_str())
            .map(str::to_ascii_uppercase)
            .unwrap_or_default();
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(CallRecord {
                capability: call.capability,
                method,
                url: String::new(),
                status: None,
                decision: CallDecision::Denied,
                reason: Some(NO_ENFORCEMENT_BACKEND.to_owned()),
                duration_ms: 0,
            });
        }
        Box::pin(async { CallOutcome::Error(NO_ENFORCEMENT_BACKEND.to_owned()) })
    }

    fn calls(&self) -> Vec<CallRecord> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Placeholder [`Unsealer`]: opens nothing, and fails if the bundle carries sealed secrets
/// (fail closed rather than run without credentials the Permit expects).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoKeyProvider;

impl Unsealer for NoKeyProvider {
    fn unseal<'a>(&'a self, bundle: &'a Bundle) -> BoxFuture<'a, Result<Secrets, String>> {
        let result = if bundle.sealed_secrets.is_empty() {
            Ok(Secrets::new())
        } else {
            Err(format!(
                "{} sealed secret(s) to open but no key provider is linked",
                bundle.sealed_secrets.len()
            ))
        };
        Box::pin(async move { result })
    }
}

/// Redacts every string (keys and values) inside a JSON value.
pub fn redact_json(
    value: &serde_json::Value,
    redact: &dyn Fn(&str) -> String,
) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(redact(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| redact_json(v, redact)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (redact(k), redact_json(v, redact)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The rate budget left for every rate-limited capability of `spec`: what the run started with
/// (`budget`, or the full `requests` when nothing was carried) minus its allowed calls, never
/// below zero. (Tokens refilled during the run are not added: the operator refills the budget
/// for elapsed time at the next launch.)
pub fn remaining_budget(
    spec: &oauth3_crds::PermitSpec,
    budget: &BTreeMap<String, f64>,
    calls: &[CallRecord],
) -> BTreeMap<String, f64> {
    spec.capabilities
        .iter()
        .filter_map(|cap| {
            let limit = cap.rate_limit.as_ref()?;
            let start = budget
                .get(&cap.name)
                .copied()
                .unwrap_or(f64::from(limit.requests));
            let used = calls
                .iter()
                .filter(|c| c.capability == cap.name && c.decision == CallDecision::Allowed)
                .count();
            let used = u32::try_from(used).map(f64::from).unwrap_or(f64::MAX);
            Some((cap.name.clone(), (start - used).max(0.0)))
        })
        .collect()
}

/// Phase and error text of a sandbox outcome.
pub fn phase_of(
    outcome: &Outcome,
    limits: &crate::bundle::BundleLimits,
) -> (ExecutionPhase, Option<String>) {
    match outcome {
        Outcome::Returned(_) => (ExecutionPhase::Succeeded, None),
        Outcome::Threw(msg) => (ExecutionPhase::Failed, Some(msg.clone())),
        Outcome::TimedOut => (
            ExecutionPhase::TimedOut,
            Some(format!(
                "time limit of {}s exceeded",
                limits.timeout_seconds
            )),
        ),
        Outcome::OutOfMemory => (
            ExecutionPhase::Failed,
            Some(format!(
                "memory limit of {} MiB exceeded",
                limits.memory_mib
            )),
        ),
        Outcome::InvalidResult(msg) => (ExecutionPhase::Failed, Some(msg.clone())),
    }
}

/// What a run produced before redaction and sealing into a [`RunResult`].
struct Raw {
    phase: ExecutionPhase,
    result: serde_json::Value,
    stdout: String,
    stderr: String,
    error: Option<String>,
    calls: Vec<CallRecord>,
}

impl Raw {
    fn refused(phase: ExecutionPhase, error: String) -> Self {
        Self {
            phase,
            result: serde_json::Value::Null,
            stdout: String::new(),
            stderr: String::new(),
            error: Some(error),
            calls: Vec::new(),
        }
    }
}

/// Runs one bundle and reports the outcome. Never fails: every failure is a phase with an
/// error text. A bundle that does not validate is `Denied` and runs nothing.
pub async fn run_bundle(bundle: &Bundle, deps: &RunnerDeps) -> RunResult {
    let started = Instant::now();
    let code_digest = oauth3_crds::code_digest(&bundle.code);
    let mut secrets = Secrets::new();
    let (raw, permit_digest) = match bundle.validate() {
        Err(e) => (
            Raw::refused(ExecutionPhase::Denied, e.to_string()),
            bundle.permit.spec_digest.clone(),
        ),
        Ok(digests) => {
            let raw = match deps.unsealer.unseal(bundle).await {
                Err(e) => Raw::refused(ExecutionPhase::Failed, format!("unsealing secrets: {e}")),
                Ok(opened) => {
                    secrets = opened;
                    execute(bundle, deps, &secrets).await
                }
            };
            (raw, digests.permit_digest)
        }
    };
    let redact = |text: &str| (deps.redact)(&secrets, text);
    let calls = raw
        .calls
        .into_iter()
        .map(|mut c| {
            c.url = redact(&c.url);
            c.reason = c.reason.as_deref().map(redact);
            c
        })
        .collect::<Vec<_>>();
    let mut result = RunResult {
        execution: bundle.execution.clone(),
        phase: raw.phase,
        result: redact_json(&raw.result, &redact),
        stdout: redact(&raw.stdout),
        stderr: redact(&raw.stderr),
        error: raw.error.as_deref().map(redact),
        rate_budget: remaining_budget(&bundle.permit.spec, &bundle.rate_budget, &calls),
        calls,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        code_digest,
        permit_digest,
        attestation: Attestation {
            kind: AttestationKind::None,
            quote: None,
            report_data: None,
            statement_digest: None,
        },
        statement_digest: String::new(),
    };
    drop(secrets);
    result.statement_digest = result.compute_statement_digest();
    result.attestation.statement_digest = Some(result.statement_digest.clone());
    result
}

async fn execute(bundle: &Bundle, deps: &RunnerDeps, secrets: &Secrets) -> Raw {
    let host = match (deps.make_host)(bundle, secrets) {
        Ok(host) => host,
        Err(e) => {
            return Raw::refused(
                ExecutionPhase::Failed,
                format!("setting up capability enforcement: {e}"),
            );
        }
    };
    let limits = sandbox::Limits::from_bundle(&bundle.limits);
    let output = sandbox::run(&bundle.code, &bundle.args, Arc::clone(&host), &limits).await;
    let calls = host.calls();
    match output {
        Err(e) => Raw {
            calls,
            ..Raw::refused(ExecutionPhase::Failed, e.to_string())
        },
        Ok(out) => {
            let (phase, error) = phase_of(&out.outcome, &bundle.limits);
            let mut stderr = out.stderr;
            if let Outcome::Threw(msg) = &out.outcome {
                stderr.push_str("Uncaught ");
                stderr.push_str(msg);
                stderr.push('\n');
            }
            Raw {
                phase,
                result: match out.outcome {
                    Outcome::Returned(v) => v,
                    _ => serde_json::Value::Null,
                },
                stdout: out.stdout,
                stderr,
                error,
                calls,
            }
        }
    }
}

/// Failures posting the result to the callback.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The callback URL is not https (or http on loopback).
    #[error("callback.url: must be https (http only on loopback), got {0}")]
    InsecureUrl(String),
    /// A CA file is not PEM certificates.
    #[error("reading CA certificates: {0}")]
    CaCertificates(String),
    /// The HTTP client could not be built.
    #[error("building the callback client: {0}")]
    Client(String),
    /// The request failed.
    #[error("posting the result to the callback: {0}")]
    Send(String),
    /// The callback answered with a non-success status.
    #[error("the callback answered HTTP {0}")]
    Status(u16),
}

/// POSTs `result` as JSON to `callback.url` with `Authorization: Bearer <token>`, trusting
/// the web PKI roots built into the runner plus `ca_pems` (PEM bundles) plus the bundle's own
/// `callback.caPem`.
/// Redirects are not followed, so the token goes nowhere else.
///
/// # Errors
/// A refused URL, bad CA material, a transport failure or a non-2xx answer.
pub async fn post_result(
    callback: &Callback,
    result: &RunResult,
    ca_pems: &[Vec<u8>],
) -> Result<(), CallbackError> {
    if !callback_url_allowed(&callback.url) {
        return Err(CallbackError::InsecureUrl(callback.url.clone()));
    }
    let own = callback.ca_pem.as_ref().map(|p| p.as_bytes());
    let pems: Vec<&[u8]> = ca_pems.iter().map(Vec::as_slice).chain(own).collect();
    let roots = crate::fetch::web_pki_roots_and(&pems).map_err(|(index, reason)| {
        CallbackError::CaCertificates(format!("bundle {index}: {reason}"))
    })?;
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CallbackError::Client(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| CallbackError::Client(e.to_string()))?;
    let body = serde_json::to_vec(result).map_err(|e| CallbackError::Send(e.to_string()))?;
    // Transport failures and 5xx answers are retried (the operator may be restarting or
    // busy); any other answer is final. A retry after a lost 2xx answer meets 409 (the result
    // is already recorded), which is reported as such.
    let mut delay = Duration::from_millis(500);
    let mut last = CallbackError::Send("not attempted".to_owned());
    for attempt in 0..CALLBACK_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
        let sent = client
            .post(&callback.url)
            .bearer_auth(callback.token.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) if response.status().is_server_error() => {
                last = CallbackError::Status(response.status().as_u16());
            }
            Ok(response) => return Err(CallbackError::Status(response.status().as_u16())),
            Err(e) => last = CallbackError::Send(e.without_url().to_string()),
        }
    }
    Err(last)
}

/// How many times the result is offered to the callback before giving up.
pub const CALLBACK_ATTEMPTS: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "ghp_s3cr3t_value";

    /// A host that leaks the secret back into the script in every possible way.
    struct LeakyHost;

    impl CapabilityHost for LeakyHost {
        fn capabilities(&self) -> Vec<String> {
            vec!["github".to_owned()]
        }
        fn call(&self, _call: CapabilityCall) -> BoxFuture<'_, CallOutcome> {
            Box::pin(async { CallOutcome::Value(json!({ "token": SECRET, SECRET: 1 })) })
        }
        fn calls(&self) -> Vec<CallRecord> {
            vec![CallRecord {
                reason: Some(format!("echoed {SECRET}")),
                url: format!("https://x/?t={SECRET}"),
                ..call("github", CallDecision::Allowed)
            }]
        }
    }

    struct OneSecret;

    impl Unsealer for OneSecret {
        fn unseal<'a>(&'a self, _: &'a Bundle) -> BoxFuture<'a, Result<Secrets, String>> {
            Box::pin(async {
                Ok(Secrets::from([(
                    "GITHUB_TOKEN".to_owned(),
                    Zeroizing::new(SECRET.to_owned()),
                )]))
            })
        }
    }

    fn leaky_deps() -> RunnerDeps {
        RunnerDeps {
            unsealer: Box::new(OneSecret),
            make_host: Box::new(|_, secrets| {
                assert!(
                    secrets.contains_key("GITHUB_TOKEN"),
                    "the host gets the secrets"
                );
                Ok(Arc::new(LeakyHost) as Arc<dyn CapabilityHost>)
            }),
            redact: Box::new(|secrets, text| {
                secrets
                    .values()
                    .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "[REDACTED]"))
            }),
        }
    }

    fn test_bundle(code: &str) -> Bundle {
        let spec: oauth3_crds::PermitSpec = serde_json::from_value(json!({
            "description": "d",
            "capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
                "paths": ["/x"], "methods": ["GET"],
                "rateLimit": {"requests": 10, "perSeconds": 60}}],
            "secrets": ["GITHUB_TOKEN"]
        }))
        .expect("spec");
        serde_json::from_value(json!({
            "execution": {"namespace": "n", "name": "e", "uid": "u"},
            "permit": {"name": "p", "spec": spec,
                "specDigest": oauth3_crds::spec_digest(&spec).expect("digest")},
            "code": code,
            "sealedSecrets": [{"name": "GITHUB_TOKEN", "envelope": "e"}],
            "limits": {"timeoutSeconds": 5},
            "rateBudget": {"github": 3}
        }))
        .expect("bundle")
    }

    #[tokio::test]
    async fn no_secret_leaves_the_runner_in_any_output() {
        let code = "const r = await github('GET', '/x');
            console.log(r.token); console.error(JSON.stringify(r));
            if (args === null) throw new Error('leak ' + r.token);";
        let succeeded = run_bundle(&test_bundle(code), &leaky_deps()).await;
        let returned = run_bundle(
            &test_bundle("const r = await github('GET', '/x'); return r"),
            &leaky_deps(),
        )
        .await;
        for result in [succeeded, returned] {
            let text = serde_json::to_string(&result).expect("serialises");
            assert!(!text.contains(SECRET), "secret leaked: {text}");
            assert!(text.contains("[REDACTED]"), "{text}");
            assert_eq!(result.rate_budget["github"], 2.0);
        }
    }

    #[tokio::test]
    async fn a_bundle_that_does_not_validate_is_denied_and_nothing_is_unsealed_or_run() {
        let mut bundle = test_bundle("console.log('ran')");
        bundle.permit.spec_digest = "sha256:00".to_owned();
        let deps = RunnerDeps {
            make_host: Box::new(|_, _| panic!("no host may be built for a refused bundle")),
            ..leaky_deps()
        };
        let result = run_bundle(&bundle, &deps).await;
        assert_eq!(result.phase, ExecutionPhase::Denied);
        assert!(
            result
                .error
                .as_deref()
                .expect("error")
                .contains("permit.specDigest")
        );
        assert_eq!(result.stdout, "");
        assert_eq!(result.exit_code(), 1);
    }

    #[tokio::test]
    async fn sealed_secrets_without_a_key_provider_fail_closed() {
        let result = run_bundle(
            &test_bundle("return 1"),
            &RunnerDeps::without_enforcement_backend(),
        )
        .await;
        assert_eq!(result.phase, ExecutionPhase::Failed);
        assert!(result.error.expect("error").contains("no key provider"));
        assert_eq!(result.result, serde_json::Value::Null);
    }

    fn call(capability: &str, decision: CallDecision) -> CallRecord {
        CallRecord {
            capability: capability.to_owned(),
            method: "GET".to_owned(),
            url: "https://x/".to_owned(),
            status: None,
            decision,
            reason: None,
            duration_ms: 0,
        }
    }

    #[test]
    fn only_allowed_calls_spend_the_rate_budget_and_it_never_goes_negative() {
        let spec: oauth3_crds::PermitSpec = serde_json::from_value(json!({
            "description": "d",
            "capabilities": [
                {"name": "a", "baseUrl": "https://a.example", "paths": ["/"], "methods": ["GET"],
                 "rateLimit": {"requests": 5, "perSeconds": 60}},
                {"name": "b", "baseUrl": "https://b.example", "paths": ["/"], "methods": ["GET"],
                 "rateLimit": {"requests": 5, "perSeconds": 60}},
                {"name": "c", "baseUrl": "https://c.example", "paths": ["/"], "methods": ["GET"],
                 "rateLimit": {"requests": 3, "perSeconds": 60}},
                {"name": "free", "baseUrl": "https://f.example", "paths": ["/"], "methods": ["GET"]}
            ]
        }))
        .expect("spec");
        let budget = BTreeMap::from([("a".to_owned(), 2.5), ("b".to_owned(), 1.0)]);
        let calls = [
            call("a", CallDecision::Allowed),
            call("a", CallDecision::Denied),
            call("b", CallDecision::Allowed),
            call("b", CallDecision::Allowed),
            call("c", CallDecision::Allowed),
            call("free", CallDecision::Allowed),
        ];
        let left = remaining_budget(&spec, &budget, &calls);
        assert_eq!(left["a"], 1.5);
        assert_eq!(left["b"], 0.0);
        assert_eq!(left["c"], 2.0, "no carried budget: started full");
        assert!(!left.contains_key("free"), "no limit, nothing to carry");
    }

    #[test]
    fn redaction_reaches_every_string_in_a_result_keys_included() {
        let v = json!({"tok": ["a tok", {"n": 1, "tok2": "tok"}]});
        let out = redact_json(&v, &|s: &str| s.replace("tok", "***"));
        assert!(!out.to_string().contains("tok"), "{out}");
        assert_eq!(out["***"][1]["n"], 1);
    }

    #[test]
    fn phases_follow_the_sandbox_outcome() {
        let limits = crate::bundle::BundleLimits::default();
        assert_eq!(
            phase_of(&Outcome::Returned(json!(1)), &limits),
            (ExecutionPhase::Succeeded, None)
        );
        assert_eq!(
            phase_of(&Outcome::TimedOut, &limits).0,
            ExecutionPhase::TimedOut
        );
        assert_eq!(
            phase_of(&Outcome::Threw("x".into()), &limits).0,
            ExecutionPhase::Failed
        );
        let (phase, error) = phase_of(&Outcome::OutOfMemory, &limits);
        assert_eq!(phase, ExecutionPhase::Failed);
        assert!(error.expect("error").contains("memory"));
    }
}
