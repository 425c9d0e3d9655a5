//! The run bundle: the one JSON document the runner reads, with everything one run needs.
//!
//! The operator writes a bundle for each Execution (a file or standard input of
//! `oauth3-sandbox-runner run --bundle`). It is parsed strictly (unknown fields are errors, so
//! a typo cannot silently drop a limit) and checked by [`Bundle::validate`] before anything
//! runs: the Permit spec must hash to the digest its approval was bound to, or the runner
//! refuses to run.
//!
//! ```json
//! {
//!   "execution": {"namespace": "default", "name": "list-issues", "uid": "7c0e..."},
//!   "permit": {"name": "github-issues", "spec": {...}, "specDigest": "sha256:..."},
//!   "code": "const r = await github('GET', '/repos/o/r/issues'); return r.length",
//!   "args": {},
//!   "sealedSecrets": [{"name": "GITHUB_TOKEN", "envelope": "..."}],
//!   "limits": {"timeoutSeconds": 30, "memoryMib": 128, "maxOutputBytes": 65536, "maxCalls": 100},
//!   "rateBudget": {"github": 30},
//!   "callback": {"url": "https://oauth3-operator.oauth3:8443/results", "token": "..."}
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;

use oauth3_crds::PermitSpec;
use oauth3_crds::constants::{DEFAULT_TIMEOUT_SECONDS, MAX_CODE_LEN};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Bounds on `limits.timeoutSeconds` (same as `Execution.spec.timeoutSeconds`).
pub const TIMEOUT_SECONDS_RANGE: (u64, u64) = (1, 3600);
/// Bounds on `limits.memoryMib`.
pub const MEMORY_MIB_RANGE: (u64, u64) = (8, 4096);
/// Bounds on `limits.maxOutputBytes`.
pub const MAX_OUTPUT_BYTES_RANGE: (u64, u64) = (1024, 1_048_576);
/// Bounds on `limits.maxCalls`.
pub const MAX_CALLS_RANGE: (u64, u64) = (0, 10_000);

/// Everything one run needs: which Execution it is, the approved Permit, the code, its
/// arguments, the sealed secrets the Permit may use, limits, the remaining rate budget and
/// where to report the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bundle {
    /// The Execution this run belongs to; copied into the result so the operator can match it.
    pub execution: ExecutionRef,
    /// The Permit the code runs under: its spec (the capabilities enforced on every call) and
    /// the spec digest the owner's approval is bound to.
    pub permit: PermitRef,
    /// The JavaScript to run, as the body of an async function (`Execution.spec.code`). At
    /// most 256 KiB.
    pub code: String,
    /// The language of `code` (`Execution.spec.language`): `javascript` (the default) or
    /// `typescript`, whose types the runner removes before it runs the code.
    #[serde(default, skip_serializing_if = "oauth3_crds::CodeLanguage::is_default")]
    pub language: oauth3_crds::CodeLanguage,
    /// The JSON value the code sees as `args` (`Execution.spec.args`). Defaults to `null`.
    #[serde(default)]
    pub args: serde_json::Value,
    /// The sealed secrets to unseal inside the runner, one per name in `permit.spec.secrets`
    /// the capabilities use. Each name must be listed in the Permit. Defaults to none.
    #[serde(default)]
    pub sealed_secrets: Vec<SealedSecretRef>,
    /// Resource limits of the run. Every field has a default.
    #[serde(default)]
    pub limits: BundleLimits,
    /// Calls each capability may still make under its Permit rate limit, by capability name
    /// (fractions allowed: the operator's token buckets refill continuously). A capability not
    /// listed has no rate limit. Defaults to empty.
    #[serde(default)]
    pub rate_budget: BTreeMap<String, f64>,
    /// Where to POST the result, if anywhere. Without it the result is only written to the
    /// output file or standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
}

/// Identifies the Execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutionRef {
    /// Namespace of the Execution (and of its Permit and sealed Secrets).
    pub namespace: String,
    /// Name of the Execution.
    pub name: String,
    /// `metadata.uid` of the Execution, so a result cannot be applied to a recreated object
    /// of the same name.
    pub uid: String,
}

/// The Permit the code runs under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PermitRef {
    /// Name of the Permit.
    pub name: String,
    /// The approved spec, exactly as stored (defaults applied).
    pub spec: PermitSpec,
    /// `status.specDigest` the approval is bound to (`sha256:<hex>`). The runner recomputes
    /// the digest of `spec` and refuses to run if they differ.
    pub spec_digest: String,
}

/// One sealed secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealedSecretRef {
    /// The secret's name as the Permit lists it (e.g. `GITHUB_TOKEN`).
    pub name: String,
    /// The sealed envelope (the `sealed` key of the `oauth3.dev/sealed` Secret), opened only
    /// inside the runner with its key provider.
    pub envelope: String,
}

impl fmt::Debug for SealedSecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecretRef")
            .field("name", &self.name)
            .field("envelope", &format_args!("<{} bytes>", self.envelope.len()))
            .finish()
    }
}

/// Resource limits of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleLimits {
    /// Wall-time limit in seconds (1 to 3600; default 30). The run ends as `TimedOut`.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// JavaScript heap limit in MiB (8 to 4096; default 128).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Cap in bytes on each of stdout and stderr and on the result's JSON (1024 to 1 MiB;
    /// default 65536). Longer output is cut with a marker.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Most capability calls the run may make (0 to 10000; default 100). Later calls reject.
    #[serde(default = "default_max_calls")]
    pub max_calls: u64,
}

fn default_timeout_seconds() -> u64 {
    u64::try_from(DEFAULT_TIMEOUT_SECONDS).unwrap_or(30)
}
fn default_memory_mib() -> u64 {
    128
}
fn default_max_output_bytes() -> u64 {
    65_536
}
fn default_max_calls() -> u64 {
    100
}

impl Default for BundleLimits {
    fn default() -> Self {
        Self {
            timeout_seconds: default_timeout_seconds(),
            memory_mib: default_memory_mib(),
            max_output_bytes: default_max_output_bytes(),
            max_calls: default_max_calls(),
        }
    }
}

/// Where the result is POSTed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Callback {
    /// URL to POST the result JSON to (`https`, or `http` on loopback for development).
    pub url: String,
    /// Bearer token sent as `Authorization: Bearer <token>`; it authenticates this run to the
    /// operator. Never printed.
    #[serde(
        serialize_with = "serialize_secret",
        deserialize_with = "deserialize_secret"
    )]
    pub token: Zeroizing<String>,
    /// PEM certificates (a CA or the operator's own certificate) trusted for this callback
    /// only, on top of the web PKI roots built into the runner: how a sandbox verifies the
    /// operator's callback without trusting that CA for upstream APIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Until when (Unix time in milliseconds) the operator waits for this run's result: the
    /// Execution's deadline. The runner keeps offering its result (with backoff) while the
    /// endpoint is unreachable or busy until then, and a little after: a result that arrives
    /// after the deadline is still counted. Absent: the runner assumes its timeout plus
    /// [`DEFAULT_RESULT_GRACE_MS`] from its start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_unix_ms: Option<u64>,
}

/// How long after its own time limit a runner assumes its result is still awaited, when the
/// bundle names no deadline (the operator's default `--deadline-grace`).
pub const DEFAULT_RESULT_GRACE_MS: u64 = 30_000;

/// How long after the deadline a runner still offers its result: late results are recorded as
/// such (the calls they made are counted) rather than lost.
pub const LATE_RESULT_WINDOW_MS: u64 = 60_000;

impl fmt::Debug for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callback")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

fn serialize_secret<S: serde::Serializer>(v: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_str())
}

fn deserialize_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

/// The digests a valid bundle is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleDigests {
    /// `sha256:<hex>` of the code.
    pub code_digest: String,
    /// The Permit spec digest (recomputed, equal to `permit.specDigest`).
    pub permit_digest: String,
}

/// Why a bundle was refused. Every message starts with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The text is not a bundle (bad JSON, unknown or missing field, wrong type).
    #[error("{path}: {message}")]
    Parse {
        /// Path of the field at fault (`.` when the document itself is at fault).
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The Permit spec does not hash to the digest its approval was bound to.
    #[error(
        "permit.specDigest: the bundle says {claimed} but the Permit spec digests to {actual}; refusing to run code under a spec that was not approved"
    )]
    SpecDigestMismatch {
        /// The digest in the bundle.
        claimed: String,
        /// The digest of the spec in the bundle.
        actual: String,
    },
    /// The spec digest could not be computed.
    #[error("permit.spec: computing its digest: {0}")]
    SpecDigest(#[from] oauth3_crds::DigestError),
    /// A limit is outside its range.
    #[error("limits.{field}: {value} is outside {min}..={max}")]
    LimitOutOfRange {
        /// The limit's field name.
        field: &'static str,
        /// The given value.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// The code is empty or too long.
    #[error("code: must be 1 to {MAX_CODE_LEN} bytes, got {0}")]
    CodeLength(usize),
    /// A sealed secret is not listed in the Permit, or listed twice.
    #[error("sealedSecrets[{index}].name: {name:?} {reason}")]
    SealedSecret {
        /// Position in `sealedSecrets`.
        index: usize,
        /// The secret's name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A rate budget is negative or not a number.
    #[error("rateBudget.{0}: must be a number of calls >= 0")]
    RateBudget(String),
    /// The Permit pins its code and this code is not one of the pinned digests.
    #[error(
        "code: its digest {0} is not in permit.spec.pinnedCode; the owner did not approve this code"
    )]
    CodeNotPinned(String),
    /// The args break one of the Permit's argument rules.
    #[error("args: {0}")]
    ArgsRefused(String),
}

impl Bundle {
    /// The digest of the code in its language, as the owner's approvals bind it.
    pub fn code_digest(&self) -> String {
        oauth3_crds::code_digest_in(&self.code, self.language)
    }

    /// Parses a bundle from JSON text; errors name the path of the field at fault.
    ///
    /// # Errors
    /// [`BundleError::Parse`] for anything that is not a well-formed bundle.
    pub fn from_json(text: &str) -> Result<Self, BundleError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let bundle: Self =
            serde_path_to_error::deserialize(&mut de).map_err(|e| BundleError::Parse {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        de.end().map_err(|e| BundleError::Parse {
            path: ".".to_owned(),
            message: e.to_string(),
        })?;
        Ok(bundle)
    }

    /// Checks the bundle before anything runs: the spec digest matches, limits are in range,
    /// the code has an allowed size, sealed secrets are all listed in the Permit, budgets are
    /// sane. Returns the digests the result will carry.
    ///
    /// # Errors
    /// The first check that fails, naming its field.
    pub fn validate(&self) -> Result<BundleDigests, BundleError> {
        let actual = oauth3_crds::spec_digest(&self.permit.spec)?;
        if actual != self.permit.spec_digest {
            return Err(BundleError::SpecDigestMismatch {
                claimed: self.permit.spec_digest.clone(),
                actual,
            });
        }
        if self.code.is_empty() || self.code.len() > MAX_CODE_LEN {
            return Err(BundleError::CodeLength(self.code.len()));
        }
        // The operator refuses these before it launches; the runner checks again, since the
        // attested statement claims the run kept to this spec.
        let code_digest = self.code_digest();
        let pinned = &self.permit.spec.pinned_code;
        if !pinned.is_empty() && !pinned.contains(&code_digest) {
            return Err(BundleError::CodeNotPinned(code_digest));
        }
        oauth3_crds::check_args(&self.permit.spec.arg_rules, Some(&self.args))
            .map_err(BundleError::ArgsRefused)?;
        let l = &self.limits;
        for (field, value, (min, max)) in [
            ("timeoutSeconds", l.timeout_seconds, TIMEOUT_SECONDS_RANGE),
            ("memoryMib", l.memory_mib, MEMORY_MIB_RANGE),
            ("maxOutputBytes", l.max_output_bytes, MAX_OUTPUT_BYTES_RANGE),
            ("maxCalls", l.max_calls, MAX_CALLS_RANGE),
        ] {
            if !(min..=max).contains(&value) {
                return Err(BundleError::LimitOutOfRange {
                    field,
                    value,
                    min,
                    max,
                });
            }
        }
        for (index, s) in self.sealed_secrets.iter().enumerate() {
            let reason = if !self.permit.spec.secrets.contains(&s.name) {
                Some("is not listed in permit.spec.secrets")
            } else if self.sealed_secrets[..index]
                .iter()
                .any(|o| o.name == s.name)
            {
                Some("appears more than once")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(BundleError::SealedSecret {
                    index,
                    name: s.name.clone(),
                    reason,
                });
            }
        }
        if let Some((name, _)) = self
            .rate_budget
            .iter()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(BundleError::RateBudget(name.clone()));
        }
        Ok(BundleDigests {
            code_digest,
            permit_digest: actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> serde_json::Value {
        json!({
            "description": "Read issues",
            "capabilities": [{"name": "github", "baseUrl": "https://api.github.com",
                "paths": ["/repos/o/r/issues"], "methods": ["GET"],
                "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}}],
            "secrets": ["GITHUB_TOKEN"]
        })
    }

    fn bundle() -> serde_json::Value {
        let parsed: PermitSpec = serde_json::from_value(spec()).expect("spec");
        json!({
            "execution": {"namespace": "ns", "name": "e", "uid": "u"},
            "permit": {"name": "p", "spec": spec(),
                "specDigest": oauth3_crds::spec_digest(&parsed).expect("digest")},
            "code": "return 1",
            "sealedSecrets": [{"name": "GITHUB_TOKEN", "envelope": "sealed"}],
            "callback": {"url": "http://127.0.0.1:1/r", "token": "tok-secret"}
        })
    }

    fn parse(v: serde_json::Value) -> Result<Bundle, BundleError> {
        Bundle::from_json(&v.to_string())
    }

    #[test]
    fn a_minimal_bundle_gets_the_documented_defaults_and_validates() {
        let b = parse(bundle()).expect("parses");
        assert_eq!(b.limits, BundleLimits::default());
        assert_eq!(b.limits.timeout_seconds, 30);
        assert_eq!(b.limits.memory_mib, 128);
        assert_eq!(b.limits.max_output_bytes, 65_536);
        assert_eq!(b.limits.max_calls, 100);
        assert!(b.rate_budget.is_empty());
        assert_eq!(b.args, serde_json::Value::Null);
        let d = b.validate().expect("valid");
        assert_eq!(d.code_digest, oauth3_crds::code_digest("return 1"));
        assert_eq!(d.permit_digest, b.permit.spec_digest);
    }

    /// [`bundle`] with `extra` merged into the Permit spec (and its digest recomputed).
    fn bundle_with_spec(extra: serde_json::Value) -> serde_json::Value {
        let mut spec = spec();
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let parsed: PermitSpec = serde_json::from_value(spec.clone()).expect("spec");
        let mut b = bundle();
        b["permit"]["spec"] = spec;
        b["permit"]["specDigest"] = json!(oauth3_crds::spec_digest(&parsed).expect("digest"));
        b
    }

    #[test]
    fn the_runner_refuses_code_the_permit_does_not_pin() {
        let pinned =
            bundle_with_spec(json!({"pinnedCode": [oauth3_crds::code_digest("return 1")]}));
        parse(pinned.clone())
            .expect("parses")
            .validate()
            .expect("the pinned code");
        let mut other = pinned;
        other["code"] = json!("return 2");
        let err = parse(other)
            .expect("parses")
            .validate()
            .expect_err("not pinned");
        assert!(matches!(err, BundleError::CodeNotPinned(_)), "{err}");
        assert!(
            err.to_string()
                .contains(&oauth3_crds::code_digest("return 2")),
            "{err}"
        );
    }

    #[test]
    fn the_runner_refuses_args_that_break_the_permits_rules() {
        let mut b = bundle_with_spec(json!({"argRules": [{"arg": "owner", "regex": "amiller"}]}));
        b["args"] = json!({"owner": "amiller"});
        parse(b.clone())
            .expect("parses")
            .validate()
            .expect("args keep the rule");
        b["args"] = json!({"owner": "amiller/../evil"});
        let err = parse(b).expect("parses").validate().expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("args: argRules[0]: args.owner must match"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let mut v = bundle();
        v["limits"] = json!({"timeoutSecs": 5});
        let err = parse(v).expect_err("unknown field").to_string();
        assert!(err.starts_with("limits"), "{err}");
        assert!(err.contains("timeoutSecs"), "{err}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let mut v = bundle();
        v.as_object_mut().expect("object").remove("code");
        let err = parse(v).expect_err("missing").to_string();
        assert!(err.contains("code"), "{err}");
    }

    #[test]
    fn a_spec_that_does_not_match_its_digest_is_refused() {
        let mut v = bundle();
        v["permit"]["spec"]["capabilities"][0]["methods"] = json!(["GET", "DELETE"]);
        let err = parse(v).expect("parses").validate().expect_err("mismatch");
        assert!(matches!(err, BundleError::SpecDigestMismatch { .. }));
        let text = err.to_string();
        assert!(text.starts_with("permit.specDigest"), "{text}");
        assert!(text.contains("refusing to run"), "{text}");
    }

    #[test]
    fn limits_out_of_range_name_the_limit() {
        for (field, value) in [
            ("timeoutSeconds", 0),
            ("timeoutSeconds", 3601),
            ("memoryMib", 1),
            ("maxOutputBytes", 10),
            ("maxCalls", 10_001),
        ] {
            let mut v = bundle();
            v["limits"] = json!({ field: value });
            let err = parse(v).expect("parses").validate().expect_err("range");
            assert!(
                err.to_string().starts_with(&format!("limits.{field}")),
                "{err}"
            );
        }
    }

    #[test]
    fn empty_code_is_refused() {
        let mut v = bundle();
        v["code"] = json!("");
        let err = parse(v).expect("parses").validate().expect_err("empty");
        assert!(err.to_string().starts_with("code"), "{err}");
    }

    #[test]
    fn a_sealed_secret_the_permit_does_not_list_is_refused() {
        let mut v = bundle();
        v["sealedSecrets"] = json!([{"name": "OTHER", "envelope": "x"}]);
        let err = parse(v).expect("parses").validate().expect_err("unlisted");
        assert!(
            err.to_string().starts_with("sealedSecrets[0].name"),
            "{err}"
        );
    }

    #[test]
    fn a_negative_rate_budget_is_refused() {
        let mut v = bundle();
        v["rateBudget"] = json!({"github": -1.0});
        let err = parse(v).expect("parses").validate().expect_err("negative");
        assert!(err.to_string().starts_with("rateBudget.github"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_callback_token_or_envelopes() {
        let b = parse(bundle()).expect("parses");
        let debug = format!("{b:?}");
        assert!(!debug.contains("tok-secret"), "{debug}");
        assert!(!debug.contains("\"sealed\""), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn the_bundle_round_trips_through_json() {
        let b = parse(bundle()).expect("parses");
        let again = Bundle::from_json(&serde_json::to_string(&b).expect("serialises"))
            .expect("parses again");
        assert_eq!(b, again);
    }
}
