//! The `Execution` resource: one run of agent JavaScript under an approved Permit.
//!
//! The spec is immutable after creation (a CEL transition rule), so the code digest that was
//! checked against the Permit's trust list is the code that runs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::constants::DEFAULT_TIMEOUT_SECONDS;

/// A request to run JavaScript that may call only the capabilities of an approved Permit.
/// The operator runs it in a short-lived sandbox and writes the outcome to status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "oauth3.dev",
    version = "v1alpha1",
    kind = "Execution",
    doc = "One run of agent JavaScript under an approved Permit, in a short-lived sandbox; status holds the output, result, call log and attestation.",
    plural = "executions",
    singular = "execution",
    shortname = "exec",
    category = "oauth3",
    namespaced,
    status = "ExecutionStatus",
    printcolumn = r#"{"name":"Permit","type":"string","jsonPath":".spec.permitRef","description":"The Permit whose capabilities the code uses"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Duration(ms)","type":"integer","jsonPath":".status.durationMs","description":"Wall time of the run in milliseconds"}"#,
    printcolumn = r#"{"name":"Attested","type":"string","jsonPath":".status.attestation.kind","description":"tdx when a TDX quote backs the result, none otherwise"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("Execution spec is immutable; create a new Execution instead"))]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSpec {
    /// Name of the Permit (in this namespace) whose capabilities the code may call.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub permit_ref: String,

    /// JavaScript (or TypeScript, with `language: typescript`) run as the body of an async
    /// function. It sees `args`, `console.log` /
    /// `console.error` and one async function per capability, nothing else (no fetch, require,
    /// process or timers). Its return value becomes `status.result`. At most 262144 bytes of
    /// UTF-8 (256 KiB; fewer characters when it is not ASCII).
    #[schemars(length(min = 1, max = 262_144))]
    #[x_kube(validation = Rule::new("bytes(self).size() <= 262144").message("must be at most 262144 bytes of UTF-8 (the limit counts bytes, not characters)"))]
    pub code: String,

    /// The language of `code`: `javascript` (the default) or `typescript`. TypeScript types
    /// are removed inside the sandbox runner by a real TypeScript parser; the code digest
    /// (what the owner approves under `codeReview: perCode`) is always the digest of `code` as
    /// written. `import`, `export`, `import()` and `require()` fail with an error saying there
    /// is no module loader.
    #[serde(default, skip_serializing_if = "CodeLanguage::is_default")]
    pub language: CodeLanguage,

    /// JSON value visible to the code as `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::execution::any_json")]
    pub args: Option<serde_json::Value>,

    /// Wall-time limit for the run, in seconds (1 to 3600). Defaults to 30. The run ends as
    /// `TimedOut` when it is exceeded.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,
}

/// The language of an Execution's code.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CodeLanguage {
    /// JavaScript, run as written.
    #[default]
    JavaScript,
    /// TypeScript: types are removed before the code runs.
    TypeScript,
}

impl CodeLanguage {
    /// Whether this is the default (`javascript`), which is left out when serialised.
    pub fn is_default(&self) -> bool {
        *self == Self::JavaScript
    }

    /// The name as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JavaScript => "javascript",
            Self::TypeScript => "typescript",
        }
    }
}

impl ExecutionSpec {
    /// The digest the owner's code approvals bind to: of `code` as written, in its language
    /// ([`crate::code_digest_in`]).
    pub fn code_digest(&self) -> String {
        crate::code_digest_in(&self.code, self.language)
    }
}

fn default_timeout() -> i32 {
    DEFAULT_TIMEOUT_SECONDS
}

/// Schema for a field holding any JSON value.
pub(crate) fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// Observed state of an Execution, written only by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStatus {
    /// `Pending`, `AwaitingApproval`, `Running`, `Succeeded`, `Failed`, `Denied` or `TimedOut`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ExecutionPhase>,
    /// Machine-readable reason for the phase (e.g. `PermitNotApproved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable explanation of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `sha256:<hex>` of `spec.code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_digest: Option<String>,
    /// The Permit's spec digest this Execution was admitted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit_digest: Option<String>,
    /// The sandbox Pod, `pod/<name>` (pod launcher; the process launcher names its process id
    /// in the `Launched` Event instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// How and when the runner was launched; the operator uses it to recognise the run's
    /// result callback and never to launch twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchRecord>,
    /// When the sandbox was launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the result was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Run time in milliseconds as measured by the runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Runner exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What the code printed with `console.log`, capped and redacted of every secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// What the code printed with `console.error` plus uncaught errors, capped and redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// The JSON value the code returned, redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::execution::any_json")]
    pub result: Option<serde_json::Value>,
    /// Every capability call the code attempted, allowed or denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallRecord>,
    /// The runner's error text, redacted, exactly as in its result (absent on success). Kept
    /// verbatim so the attested statement can be recomputed from status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Rate-limit tokens the run left per capability, as the runner reported them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rate_budget: std::collections::BTreeMap<String, f64>,
    /// Whether the calls of this result are written to the Permit's `status.usage` (and rate
    /// budget): `false` from when the result is recorded until the operator has written them,
    /// then `true`. An operator that restarts counts the Executions still at `false` again, so
    /// a crash between the two never loses calls (it may count them twice, which only makes
    /// the rate limit stricter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_counted: Option<bool>,
    /// Evidence of where the code ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<Attestation>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions (`Admitted`, `Launched`, `Completed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Record of the (single) launch of an Execution's runner.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchRecord {
    /// `pod` or `process`.
    pub launcher: LauncherKind,
    /// `sha256:<hex>` of the one-time callback token given to the runner. The token itself is
    /// never stored; a result is accepted only with a token that hashes to this, and only once.
    pub token_digest: String,
    /// When the runner was launched.
    pub launched_at: Time,
    /// When the operator gives up waiting for the result (launch + timeout + grace).
    pub deadline: Time,
    /// The attestation the Permit required when the run was launched (`tdx`): a result
    /// without it ends `Failed` (`NotAttested`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_attestation: Option<crate::permit::RequiredAttestation>,
    /// The SandboxPool whose idle member runs this Execution (`podName` is that member), or
    /// absent when the run got a Pod of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Which launcher started an Execution's runner.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LauncherKind {
    /// A confidential-container Pod per Execution.
    Pod,
    /// A local child process (development and tests).
    Process,
}

impl LauncherKind {
    /// The name as stored (`pod` or `process`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Process => "process",
        }
    }
}

/// Lifecycle phase of an Execution.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionPhase {
    /// Accepted, not yet launched.
    Pending,
    /// Waiting for the owner to trust this code digest (codeReview perCode).
    AwaitingApproval,
    /// The sandbox is running.
    Running,
    /// The code finished and returned.
    Succeeded,
    /// The code threw, or the sandbox failed.
    Failed,
    /// Refused before running (Permit not approved, expired, over budget, code not trusted).
    Denied,
    /// The time limit passed.
    TimedOut,
}

impl ExecutionPhase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::AwaitingApproval,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Denied,
        Self::TimedOut,
    ];

    /// The phase's name as stored in `status.phase` (and used as a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Denied => "Denied",
            Self::TimedOut => "TimedOut",
        }
    }

    /// Whether the phase is final (no further transitions).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Denied | Self::TimedOut
        )
    }
}

/// One capability call attempted by the code.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// Capability (function) name.
    pub capability: String,
    /// Upper-case HTTP method.
    pub method: String,
    /// Canonical URL without credentials.
    pub url: String,
    /// Upstream HTTP status, when the request was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    /// `allowed` or `denied`.
    pub decision: CallDecision,
    /// Why the call was denied (or failed), in words an agent can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Time spent on the call in milliseconds.
    #[serde(default)]
    pub duration_ms: i64,
}

/// Whether a call passed policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub enum CallDecision {
    Allowed,
    Denied,
}

/// Attestation evidence for the run.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    /// `tdx` when a TDX quote backs the result, `none` otherwise (process launcher, no TEE).
    pub kind: AttestationKind,
    /// Where the quote came from: `dstack` (guest agent), `coco` (attestation agent) or `tsm`
    /// (Linux configfs-tsm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<AttestationProvider>,
    /// Base64 quote, when `kind` is `tdx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
    /// Hex report data bound into the quote: SHA-512 over `oauth3.dev/v1alpha1/statement`, a
    /// newline and the statement digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_data: Option<String>,
    /// `sha256:<hex>` of the result statement the report data commits to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_digest: Option<String>,
    /// The provider's event log, as it gave it (dstack: the JSON event log that replays to
    /// RTMR3, with the app's compose hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log: Option<String>,
}

impl Attestation {
    /// No evidence: the run was not in a TEE (process launcher, development).
    pub fn none() -> Self {
        Self {
            kind: AttestationKind::None,
            provider: None,
            quote: None,
            report_data: None,
            statement_digest: None,
            event_log: None,
        }
    }
}

/// Where a quote came from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttestationProvider {
    /// The dstack guest agent's `GetQuote`.
    Dstack,
    /// Confidential Containers' attestation agent (`/aa/evidence`).
    Coco,
    /// Linux configfs-tsm.
    Tsm,
}

impl AttestationProvider {
    /// The name as stored and as `--attestation` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dstack => "dstack",
            Self::Coco => "coco",
            Self::Tsm => "tsm",
        }
    }
}

/// Kinds of attestation evidence.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub enum AttestationKind {
    Tdx,
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_phases_are_exactly_the_final_ones() {
        use ExecutionPhase::*;
        for p in [Succeeded, Failed, Denied, TimedOut] {
            assert!(p.is_terminal(), "{p:?}");
        }
        for p in [Pending, AwaitingApproval, Running] {
            assert!(!p.is_terminal(), "{p:?}");
        }
    }

    #[test]
    fn execution_spec_defaults_timeout_to_thirty_seconds() {
        let spec: ExecutionSpec =
            serde_json::from_value(serde_json::json!({"permitRef": "p", "code": "1"}))
                .expect("valid");
        assert_eq!(spec.timeout_seconds, 30);
        assert_eq!(spec.args, None);
    }
}
