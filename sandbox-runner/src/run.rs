//! One run of a bundle, end to end: validate, unseal, build the run's one [`Redactor`] and
//! the enforcing host, run the sandbox, redact, assemble the [`RunResult`] and attest its
//! statement with the configured quote provider (posting it is [`crate::callback`]).
//!
//! How secrets are unsealed and how calls are enforced is plugged in through [`RunnerDeps`]
//! ([`RunnerDeps::enforcing`] is the real thing). Redaction is not pluggable: one
//! [`Redactor`] is built from the opened secrets per run and handed to the host (responses,
//! errors, call records) and to the sandbox (console capture); every text that leaves the
//! runner (result, stdout, stderr, error, call urls and reasons) passes through it again here.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use oauth3_crds::{Attestation, CallDecision, CallRecord, ExecutionPhase};
use zeroize::Zeroizing;

use crate::attest::{QuoteProvider, attest_statement};
use crate::bundle::Bundle;
use crate::fetch::{FetchConfig, FetchError, ScopedFetch};
use crate::host::{BoxFuture, CapabilityHost};
use crate::policy::{Policy, PolicyError};
use crate::redact::Redactor;
use crate::sandbox::{self, Outcome};
use crate::secrets::{KeyProvider, SealedSecret, SecretsError, unseal_permitted};
pub use oauth3_protocol::RunResult;
use oauth3_protocol::result::{MAX_CALL_REASON_BYTES, MAX_CALL_URL_BYTES, MAX_ERROR_BYTES};

/// Plaintext secrets by name (as the Permit lists them), wiped from memory on drop.
pub type Secrets = BTreeMap<String, Zeroizing<String>>;

/// Why a run could not start its code. Reported as the run's error; never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The key provider could not open the bundle's sealed secrets.
    #[error("unsealing secrets with the {provider} key provider: {source}")]
    Unseal {
        /// The key provider (`dstack`, `kbs`, `dev`).
        provider: &'static str,
        /// Why.
        #[source]
        source: SecretsError,
    },
    /// The Permit's policy does not compile.
    #[error("compiling the Permit's policy: {0}")]
    Policy(#[source] PolicyError),
    /// The scoped fetch could not be built.
    #[error("building the scoped fetch: {0}")]
    Fetch(#[source] FetchError),
    /// An oauth2 credential is unusable (the message names it and the rule).
    #[error("{0}")]
    OAuth(String),
}

/// Opens the bundle's sealed secrets.
pub trait Unsealer: Send + Sync {
    /// The plaintext of every entry of `bundle.sealed_secrets`, by name.
    fn unseal<'a>(&'a self, bundle: &'a Bundle) -> BoxFuture<'a, Result<Secrets, SetupError>>;
}

/// Builds the capability host (policy enforcement + credential injection) for one run from
/// the bundle, the opened secrets and the run's redactor.
pub type MakeHost = Box<
    dyn Fn(&Bundle, &Secrets, &Arc<Redactor>) -> Result<Arc<dyn CapabilityHost>, SetupError>
        + Send
        + Sync,
>;

/// What the runner needs from the secrets and enforcement modules.
pub struct RunnerDeps {
    /// Opens the sealed secrets.
    pub unsealer: Box<dyn Unsealer>,
    /// Builds the enforcing capability host.
    pub make_host: MakeHost,
    /// Attests the result's statement; `None` is `--attestation none` (no TEE).
    pub quotes: Option<Box<dyn QuoteProvider>>,
}

impl fmt::Debug for RunnerDeps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunnerDeps { .. }")
    }
}

/// Settings of the enforcing deps that come from the command line, not the bundle.
#[derive(Clone, Default)]
pub struct BackendOptions {
    /// Extra PEM roots trusted for upstream TLS (development and tests).
    pub extra_root_certs_pem: Vec<Vec<u8>>,
    /// Seconds before expiry an oauth2 access token is refreshed (default
    /// [`crate::oauth::DEFAULT_REFRESH_LEAD_SECONDS`]).
    pub oauth_refresh_lead_seconds: Option<i64>,
    /// Serialises oauth2 refreshes across runs (the operator's refresh lease).
    pub refresh_coordinator: Option<Arc<dyn crate::oauth::RefreshCoordinator>>,
    /// How long after the host is built a connection the network refused is tried again
    /// (a pool member: see [`ScopedFetch::with_connect_grace`]); `None`: never.
    pub connect_grace: Option<std::time::Duration>,
}

impl fmt::Debug for BackendOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendOptions")
            .field("extra_root_certs_pem", &self.extra_root_certs_pem.len())
            .field(
                "oauth_refresh_lead_seconds",
                &self.oauth_refresh_lead_seconds,
            )
            .field("refresh_coordinator", &self.refresh_coordinator.is_some())
            .field("connect_grace", &self.connect_grace)
            .finish()
    }
}

impl RunnerDeps {
    /// The real deps: `provider` opens the secrets the Permit names, and a [`ScopedFetch`]
    /// compiled from the Permit decides, injects and sends every call.
    pub fn enforcing(provider: Box<dyn KeyProvider>, options: BackendOptions) -> Self {
        let provider: Arc<dyn KeyProvider> = Arc::from(provider);
        let keys = Arc::clone(&provider);
        Self {
            unsealer: Box::new(ProviderUnsealer { provider }),
            make_host: Box::new(move |bundle, secrets, redactor| {
                let fetch = scoped_fetch(
                    &HostInputs {
                        namespace: &bundle.execution.namespace,
                        spec: &bundle.permit.spec,
                        sealed: &bundle.sealed_secrets,
                        max_calls: usize::try_from(bundle.limits.max_calls).unwrap_or(usize::MAX),
                        rate_budget: &bundle.rate_budget,
                        request_timeout: None,
                    },
                    secrets,
                    redactor,
                    &keys,
                    &options,
                )?
                .with_args(&bundle.args);
                Ok(Arc::new(fetch) as Arc<dyn CapabilityHost>)
            }),
            quotes: None,
        }
    }

    /// The same deps, attesting every result with `quotes` (`None`: unattested).
    #[must_use]
    pub fn with_quotes(mut self, quotes: Option<Box<dyn QuoteProvider>>) -> Self {
        self.quotes = quotes;
        self
    }
}

/// What the enforcing host is built from: the parts of a run bundle (or a proxy's serve
/// bundle) that decide and credential calls.
#[derive(Debug)]
pub struct HostInputs<'a> {
    /// Namespace of the Permit and its sealed Secrets.
    pub namespace: &'a str,
    /// The approved spec.
    pub spec: &'a oauth3_crds::PermitSpec,
    /// The sealed envelopes (oauth2 token sets are re-sealed against them).
    pub sealed: &'a [oauth3_protocol::SealedSecretRef],
    /// Most calls the host makes.
    pub max_calls: usize,
    /// Rate-limit tokens to start with.
    pub rate_budget: &'a BTreeMap<String, f64>,
    /// Whole-request timeout, when not the default (a proxy streams for longer).
    pub request_timeout: Option<std::time::Duration>,
}

/// The one way the enforcing [`ScopedFetch`] is built, for a run and for the proxy: the
/// Permit's compiled policy, the opened secrets, the oauth2 credentials among them (refreshed
/// inside the TEE, re-sealed with `keys`), the run's redactor and the command-line options.
///
/// # Errors
/// An unusable oauth2 credential, a policy that does not compile, TLS set-up.
pub fn scoped_fetch(
    inputs: &HostInputs<'_>,
    secrets: &Secrets,
    redactor: &Arc<Redactor>,
    keys: &Arc<dyn KeyProvider>,
    options: &BackendOptions,
) -> Result<ScopedFetch, SetupError> {
    let envelopes: BTreeMap<String, String> = inputs
        .sealed
        .iter()
        .map(|s| (s.name.clone(), s.envelope.clone()))
        .collect();
    let oauth = crate::oauth::OAuthCredentials::from_secrets(
        inputs.namespace,
        secrets,
        &envelopes,
        Arc::clone(keys),
        Arc::clone(redactor),
        &options.extra_root_certs_pem,
    )
    .map_err(SetupError::OAuth)?
    .map(|o| {
        let o = o.with_coordinator(options.refresh_coordinator.clone());
        Arc::new(match options.oauth_refresh_lead_seconds {
            Some(lead) => o.with_lead(lead),
            None => o,
        })
    });
    let policy = Policy::compile(inputs.spec).map_err(SetupError::Policy)?;
    let defaults = FetchConfig::default();
    let config = FetchConfig {
        extra_root_certs_pem: options.extra_root_certs_pem.clone(),
        max_calls: inputs.max_calls,
        rate_budget: inputs.rate_budget.clone(),
        request_timeout: inputs.request_timeout.unwrap_or(defaults.request_timeout),
        ..defaults
    };
    let fetch = ScopedFetch::new(policy, secrets.clone(), Arc::clone(redactor), config)
        .map_err(SetupError::Fetch)?
        .with_oauth(oauth);
    Ok(match options.connect_grace {
        Some(grace) => fetch.with_connect_grace(grace),
        None => fetch,
    })
}

/// Opens the sealed secrets `sealed` of a Permit in `namespace` with `provider`, only those
/// `permitted` lists.
///
/// # Errors
/// The provider's failure, named.
pub async fn unseal_with(
    provider: &dyn KeyProvider,
    namespace: &str,
    permitted: &[String],
    sealed: &[oauth3_protocol::SealedSecretRef],
) -> Result<Secrets, SetupError> {
    let sealed: Vec<SealedSecret> = sealed
        .iter()
        .map(|s| SealedSecret {
            name: s.name.clone(),
            envelope: s.envelope.clone(),
        })
        .collect();
    unseal_permitted(provider, namespace, permitted, &sealed)
        .await
        .map_err(|source| SetupError::Unseal {
            provider: provider.name(),
            source,
        })
}

/// Opens sealed secrets with a [`KeyProvider`], and only those the Permit names.
struct ProviderUnsealer {
    provider: Arc<dyn KeyProvider>,
}

impl Unsealer for ProviderUnsealer {
    fn unseal<'a>(&'a self, bundle: &'a Bundle) -> BoxFuture<'a, Result<Secrets, SetupError>> {
        Box::pin(unseal_with(
            self.provider.as_ref(),
            &bundle.execution.namespace,
            &bundle.permit.spec.secrets,
            &bundle.sealed_secrets,
        ))
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
    sealed_updates: Vec<oauth3_protocol::oauth2::SealedUpdate>,
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
            sealed_updates: Vec::new(),
        }
    }
}

/// The code to evaluate: JavaScript as written; TypeScript with its types removed by the
/// TypeScript parser (module use refused). The error names the field and what is wrong.
fn prepared_code(bundle: &Bundle) -> Result<std::borrow::Cow<'_, str>, String> {
    match bundle.language {
        oauth3_crds::CodeLanguage::JavaScript => Ok(std::borrow::Cow::Borrowed(&bundle.code)),
        oauth3_crds::CodeLanguage::TypeScript => {
            oauth3_typescript::prepare(&bundle.code, oauth3_typescript::Language::TypeScript)
                .map(|p| std::borrow::Cow::Owned(p.code))
                .map_err(|e| format!("spec.code (language typescript): {e}"))
        }
    }
}

/// Runs one bundle and reports the outcome. Never fails: every failure is a phase with an
/// error text. A bundle that does not validate is `Denied` and runs nothing. With a quote
/// provider, a result that cannot be attested ends `Failed` with the reason (its `result`
/// withheld, its output and call log kept) and says `attestation.kind: none`.
pub async fn run_bundle(bundle: &Bundle, deps: &RunnerDeps) -> RunResult {
    let started = Instant::now();
    let code_digest = bundle.code_digest();
    let mut redactor = Arc::new(Redactor::none());
    let (raw, permit_digest) = match bundle.validate() {
        Err(e) => (
            Raw::refused(ExecutionPhase::Denied, e.to_string()),
            bundle.permit.spec_digest.clone(),
        ),
        Ok(digests) => {
            let raw = match deps.unsealer.unseal(bundle).await {
                Err(e) => Raw::refused(ExecutionPhase::Failed, format!("unsealing secrets: {e}")),
                Ok(secrets) => {
                    redactor = Arc::new(Redactor::for_secrets(&secrets));
                    execute(bundle, deps, &secrets, &redactor).await
                }
            };
            (raw, digests.permit_digest)
        }
    };
    let calls = raw
        .calls
        .into_iter()
        .map(|mut c| {
            c.url = capped(&redactor, &c.url, MAX_CALL_URL_BYTES);
            c.reason = c
                .reason
                .as_deref()
                .map(|r| capped(&redactor, r, MAX_CALL_REASON_BYTES));
            c
        })
        .collect::<Vec<_>>();
    let result = RunResult {
        execution: bundle.execution.clone(),
        phase: raw.phase,
        result: redactor.redact_json(&raw.result),
        stdout: redactor.redact(&raw.stdout),
        stderr: redactor.redact(&raw.stderr),
        error: raw
            .error
            .as_deref()
            .map(|e| capped(&redactor, e, MAX_ERROR_BYTES)),
        rate_budget: remaining_budget(&bundle.permit.spec, &bundle.rate_budget, &calls),
        calls,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        code_digest,
        permit_digest,
        sealed_updates: raw.sealed_updates,
        attestation: Attestation::none(),
        statement_digest: String::new(),
    };
    drop(redactor);
    attest(result, deps.quotes.as_deref()).await
}

/// Seals `result` with its statement digest and the quote over it.
async fn attest(mut result: RunResult, quotes: Option<&dyn QuoteProvider>) -> RunResult {
    result.statement_digest = result.compute_statement_digest();
    // Evidence larger than the result endpoint reads (`max_result_bytes` reserves
    // `MAX_ATTESTATION_BYTES` for it) would lose the whole result: refuse it here instead.
    let attested = attest_statement(quotes, &result.statement_digest)
        .await
        .map_err(|e| e.to_string())
        .and_then(|a| {
            let size = serde_json::to_vec(&a)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > oauth3_protocol::result::MAX_ATTESTATION_BYTES {
                Err(format!(
                    "the evidence is {size} bytes, more than the {} a result may carry",
                    oauth3_protocol::result::MAX_ATTESTATION_BYTES
                ))
            } else {
                Ok(a)
            }
        });
    match attested {
        Ok(attestation) => result.attestation = attestation,
        Err(e) => {
            result.phase = ExecutionPhase::Failed;
            result.result = serde_json::Value::Null;
            result.error = Some(format!("attesting the result: {e}"));
            result.statement_digest = result.compute_statement_digest();
            result.attestation.statement_digest = Some(result.statement_digest.clone());
        }
    }
    result
}

/// `text` redacted, then cut to `max` bytes with a marker: the caps that keep every result
/// within [`oauth3_protocol::result::max_result_bytes`], which is all the result endpoint reads.
fn capped(redactor: &Redactor, text: &str, max: usize) -> String {
    let mut c = redactor.redact_capped(text, max);
    if c.cut {
        c.text.push_str(&format!(" [truncated at {max} bytes]"));
    }
    c.text
}

async fn execute(
    bundle: &Bundle,
    deps: &RunnerDeps,
    secrets: &Secrets,
    redactor: &Arc<Redactor>,
) -> Raw {
    let host = match (deps.make_host)(bundle, secrets, redactor) {
        Ok(host) => host,
        Err(e) => {
            return Raw::refused(
                ExecutionPhase::Failed,
                format!("setting up capability enforcement: {e}"),
            );
        }
    };
    let code = match prepared_code(bundle) {
        Ok(code) => code,
        Err(message) => return Raw::refused(ExecutionPhase::Failed, message),
    };
    let limits = sandbox::Limits::from_bundle(&bundle.limits);
    let output = sandbox::run(
        &code,
        &bundle.args,
        Arc::clone(&host),
        &limits,
        Arc::clone(redactor),
    )
    .await;
    let calls = host.calls();
    let sealed_updates = host.sealed_updates();
    match output {
        Err(e) => Raw {
            calls,
            sealed_updates,
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
                sealed_updates,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{CallOutcome, CapabilityCall};
    use crypto_box::SecretKey;
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
        fn unseal<'a>(&'a self, _: &'a Bundle) -> BoxFuture<'a, Result<Secrets, SetupError>> {
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
            make_host: Box::new(|_, secrets, _| {
                assert!(
                    secrets.contains_key("GITHUB_TOKEN"),
                    "the host gets the secrets"
                );
                Ok(Arc::new(LeakyHost) as Arc<dyn CapabilityHost>)
            }),
            quotes: None,
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
    async fn typescript_runs_with_its_types_removed_and_its_digest_bound_to_the_language() {
        let ts = "interface Issue { title: string; n?: number }
            function titles<T extends Issue>(xs: T[]): string[] { return xs.map((x) => x.title); }
            const r = (await github('GET', '/x')) as unknown as Issue;
            const list: Issue[] = [{ title: 'a' }, { title: 'b', n: 2 }];
            return { t: titles(list)!.join(','), got: typeof r satisfies string };";
        let mut bundle = test_bundle(ts);
        bundle.language = oauth3_crds::CodeLanguage::TypeScript;
        let result = run_bundle(&bundle, &leaky_deps()).await;
        assert_eq!(result.phase, ExecutionPhase::Succeeded, "{result:?}");
        assert_eq!(result.result["t"], "a,b");
        assert_eq!(result.result["got"], "object");
        assert_eq!(
            result.code_digest,
            oauth3_crds::code_digest_in(ts, oauth3_crds::CodeLanguage::TypeScript)
        );
        assert_ne!(result.code_digest, oauth3_crds::code_digest(ts));

        // The same bytes as JavaScript do not parse: nothing runs, nothing is called.
        let as_js = run_bundle(&test_bundle(ts), &leaky_deps()).await;
        assert_eq!(as_js.phase, ExecutionPhase::Failed, "{as_js:?}");
        assert!(as_js.result.is_null() && as_js.error.is_some(), "{as_js:?}");
    }

    #[tokio::test]
    async fn typescript_that_imports_modules_fails_before_anything_runs() {
        // Refused before the sandbox exists: the error comes from the preparation step (its
        // prefix), not the JavaScript engine, and no call is on the record.
        for code in [
            "import { Octokit } from 'npm:octokit'; await github('GET', '/x');",
            "const fs = require('fs'); await github('GET', '/x');",
            "const m = await import('https://esm.sh/x'); await github('GET', '/x');",
        ] {
            let mut bundle = test_bundle(code);
            bundle.language = oauth3_crds::CodeLanguage::TypeScript;
            let result = run_bundle(&bundle, &leaky_deps()).await;
            assert_eq!(result.phase, ExecutionPhase::Failed, "{code}: {result:?}");
            let error = result.error.clone().unwrap_or_default();
            assert!(
                error.starts_with("spec.code (language typescript): uses")
                    && error.contains("no module loader"),
                "{code}: {error}"
            );
            assert!(result.calls.is_empty(), "{code}: nothing was called");
        }
    }

    const PIN: &str = "48213597";

    /// A host whose upstream echoes a digits-only secret as a JSON number and as a key.
    struct PinEchoHost;

    impl CapabilityHost for PinEchoHost {
        fn capabilities(&self) -> Vec<String> {
            vec!["github".to_owned()]
        }
        fn call(&self, _call: CapabilityCall) -> BoxFuture<'_, CallOutcome> {
            Box::pin(async {
                CallOutcome::Value(json!({"pin": 48_213_597, PIN: {"again": 48_213_597.0}}))
            })
        }
        fn calls(&self) -> Vec<CallRecord> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn a_digits_only_secret_returned_as_a_number_or_a_key_is_redacted_in_the_result() {
        let deps = RunnerDeps {
            unsealer: Box::new(PinSecret),
            make_host: Box::new(|_, _, _| Ok(Arc::new(PinEchoHost) as Arc<dyn CapabilityHost>)),
            quotes: None,
        };
        let code = "const r = await github('GET', '/x');
            return {r, n: r.pin, sum: Number(String(r.pin)), keys: Object.keys(r)}";
        let result = run_bundle(&test_bundle(code), &deps).await;
        assert_eq!(result.phase, ExecutionPhase::Succeeded, "{result:?}");
        let text = serde_json::to_string(&result).expect("serialises");
        assert!(!text.contains(PIN), "secret leaked: {text}");
        assert_eq!(result.result["n"], "[REDACTED]");
    }

    struct PinSecret;

    impl Unsealer for PinSecret {
        fn unseal<'a>(&'a self, _: &'a Bundle) -> BoxFuture<'a, Result<Secrets, SetupError>> {
            Box::pin(async {
                Ok(Secrets::from([(
                    "GITHUB_TOKEN".to_owned(),
                    Zeroizing::new(PIN.to_owned()),
                )]))
            })
        }
    }

    #[tokio::test]
    async fn a_bundle_that_does_not_validate_is_denied_and_nothing_is_unsealed_or_run() {
        let mut bundle = test_bundle("console.log('ran')");
        bundle.permit.spec_digest = "sha256:00".to_owned();
        let deps = RunnerDeps {
            make_host: Box::new(|_, _, _| panic!("no host may be built for a refused bundle")),
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

    /// A key provider that has no key to give.
    struct NoKeyProvider;

    impl KeyProvider for NoKeyProvider {
        fn name(&self) -> &'static str {
            "none"
        }
        fn secret_key(&self) -> BoxFuture<'_, Result<SecretKey, SecretsError>> {
            Box::pin(async {
                Err(SecretsError::ProviderEndpoint {
                    provider: "none",
                    endpoint: String::new(),
                    reason: "no key provider is reachable",
                })
            })
        }
    }

    #[tokio::test]
    async fn sealed_secrets_without_a_key_provider_fail_closed() {
        let result = run_bundle(
            &test_bundle("return 1"),
            &RunnerDeps::enforcing(Box::new(NoKeyProvider), BackendOptions::default()),
        )
        .await;
        assert_eq!(result.phase, ExecutionPhase::Failed);
        assert!(result.error.expect("error").contains("no key provider"));
        assert_eq!(result.result, serde_json::Value::Null);
    }

    /// A quote provider with a fixed answer.
    struct FixedQuotes(Option<Vec<u8>>);

    impl QuoteProvider for FixedQuotes {
        fn kind(&self) -> oauth3_crds::AttestationProvider {
            oauth3_crds::AttestationProvider::Tsm
        }
        fn quote(
            &self,
            _: [u8; 64],
        ) -> BoxFuture<'_, Result<crate::attest::Evidence, crate::attest::AttestError>> {
            let answer = self.0.clone();
            Box::pin(async move {
                answer
                    .map(|quote| crate::attest::Evidence {
                        quote,
                        event_log: None,
                    })
                    .ok_or(crate::attest::AttestError::Response {
                        provider: "tsm",
                        reason: "no TDX module here".to_owned(),
                    })
            })
        }
    }

    #[tokio::test]
    async fn a_quote_binds_the_statement_digest_of_the_result_as_reported() {
        let deps = leaky_deps().with_quotes(Some(Box::new(FixedQuotes(Some(vec![7; 10])))));
        let result = run_bundle(&test_bundle("return 5"), &deps).await;
        assert_eq!(result.phase, ExecutionPhase::Succeeded, "{result:?}");
        assert_eq!(result.statement_digest, result.compute_statement_digest());
        let a = &result.attestation;
        assert_eq!(a.kind, oauth3_crds::AttestationKind::Tdx);
        assert_eq!(a.quote.as_deref(), Some("BwcHBwcHBwcHBw=="));
        assert_eq!(
            a.report_data.as_deref(),
            Some(
                hex::encode(oauth3_protocol::attestation::statement_report_data(
                    &result.statement_digest
                ))
                .as_str()
            )
        );
        assert_eq!(a.statement_digest.as_ref(), Some(&result.statement_digest));
    }

    #[tokio::test]
    async fn a_configured_provider_without_a_quote_fails_the_run_and_says_why() {
        let deps = leaky_deps().with_quotes(Some(Box::new(FixedQuotes(None))));
        let result = run_bundle(&test_bundle("await github('GET', '/x'); return 5"), &deps).await;
        assert_eq!(result.phase, ExecutionPhase::Failed);
        let error = result.error.as_deref().expect("error");
        assert!(
            error.contains("attesting the result") && error.contains("no TDX module"),
            "{error}"
        );
        assert_eq!(
            result.result,
            serde_json::Value::Null,
            "no unattested result"
        );
        assert_eq!(result.calls.len(), 1, "the call log is kept");
        assert_eq!(result.attestation.kind, oauth3_crds::AttestationKind::None);
        assert_eq!(result.statement_digest, result.compute_statement_digest());
        assert_eq!(result.exit_code(), 1);
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
