//! The credential proxy contract: how a client (an SDK, an IDE, the gateway's MCP tools) calls
//! an approved Permit's capabilities through `oauth3-sandbox-runner serve` without code, what
//! a refusal looks like, how the runner asks the operator who a client is, and the call-record
//! batches it reports. Shared by the runner, the operator and the gateway; keep it stable.
//!
//! # URL layout (the runner's endpoint)
//! - **Scoped fetch** (`baseUrl`): `<METHOD> /<capability>/<path relative to baseUrl>?<query>`
//!   with the body as is. `GET /github/repos/o/r/issues?state=open` is exactly the request
//!   `github('GET', '/repos/o/r/issues', {query: {state: 'open'}})` makes in code. The path is
//!   passed on percent-encoded as received and checked by the same canonical-path rules.
//! - **Typed endpoint** (`endpoint`): `POST /<capability>` with a JSON object of its params
//!   (names as in `spec.capabilities[].params`), turned into exactly the request
//!   `name(...)` in code makes.
//! - **Fetch form** (`hosts`): `<METHOD> /<capability>/<host>[:<port>]/<path>?<query>`: the
//!   first segment after the capability names the host (https), the rest is the path.
//!
//! Behind the gateway the same layout sits under
//! `/proxy/<namespace>/<permit>` ([`gateway_path`]).
//!
//! # Who may call
//! The client presents a Kubernetes token as `Authorization: Bearer <token>` (what OpenAI-style
//! SDKs send as their API key) or, without that header, as `X-Api-Key: <token>` (what
//! Anthropic-style SDKs send). The header it came in is removed before the request is decided:
//! the token never reaches an upstream. The runner asks the operator ([`REVIEW_PATH`],
//! authenticated with the run's callback token) and caches the answer for at most
//! [`ReviewAnswer::ttl_seconds`].
//!
//! # Refusals
//! Every answer the runner itself makes (not the upstream's) carries the header
//! [`REFUSAL_HEADER`] whose value is the [`RefusalKind`], and a JSON [`Refusal`] body.
//! A policy denial is 403, an unknown or rejected token 401, a client without the
//! `permits/proxy` permission 403 (kind `forbidden`), overload 429, a stopped proxy 503.

use oauth3_crds::CallDecision;
use serde::{Deserialize, Serialize};

/// Header on every answer the proxy makes itself (never on an upstream's), naming the
/// [`RefusalKind`]: how a client tells a policy 403 from an upstream's own 403.
pub const REFUSAL_HEADER: &str = "x-oauth3-refusal";

/// Header the runner adds to every forwarded answer: the upstream's own status follows.
pub const UPSTREAM_HEADER: &str = "x-oauth3-upstream";

/// Prefix of the gateway's proxy routes: `/proxy/<namespace>/<permit>/<capability>/...`.
pub const GATEWAY_PREFIX: &str = "/proxy";

/// Path below the callback base URL where the runner asks the operator to review a client
/// token: `POST {REVIEW_PATH}/<namespace>/<permit>` with a [`ReviewRequest`], answered with a
/// [`ReviewAnswer`].
pub const REVIEW_PATH: &str = "/v1/proxy-review";

/// Path below the callback base URL where the runner posts [`CallBatch`]es:
/// `POST {CALLS_PATH}/<namespace>/<permit>`.
pub const CALLS_PATH: &str = "/v1/proxy-calls";

/// The RBAC an agent needs to call a proxied Permit: `create` on this subresource of
/// `permits` in group `oauth3.dev`, for the Permit's name.
pub const PROXY_SUBRESOURCE: &str = "proxy";

/// The verb of the SubjectAccessReview.
pub const PROXY_VERB: &str = "create";

/// Longest time the runner keeps a token review's answer.
pub const MAX_REVIEW_TTL_SECONDS: u64 = 10;

/// Default `spec.proxy.maxConcurrentCalls`.
pub const DEFAULT_MAX_CONCURRENT_CALLS: u32 = 64;

/// Default `spec.proxy.idleTimeout` in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u64 = 900;

/// Why the proxy answered itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RefusalKind {
    /// The Permit's policy denied the call (HTTP 403); nothing was sent.
    Policy,
    /// No token, or a token the API server does not accept (HTTP 401).
    Unauthenticated,
    /// A valid identity without `create` on `permits/proxy` for this Permit (HTTP 403).
    Forbidden,
    /// The request is not in the proxy's URL layout (HTTP 400 or 404).
    BadRequest,
    /// `maxConcurrentCalls` are in flight (HTTP 429).
    Overloaded,
    /// The call was allowed but could not be completed (transport failure, credential
    /// unusable, upstream answer too large) (HTTP 502).
    Failed,
    /// The proxy is stopping: the Permit was revoked or expired, or the proxy idled out
    /// (HTTP 503). An in-flight stream cut for this reason ends with this error.
    Stopped,
}

impl RefusalKind {
    /// The header value and JSON `error` of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::BadRequest => "badRequest",
            Self::Overloaded => "overloaded",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }

    /// The HTTP status the proxy answers with.
    pub fn status(self) -> u16 {
        match self {
            Self::Policy | Self::Forbidden => 403,
            Self::Unauthenticated => 401,
            Self::BadRequest => 400,
            Self::Overloaded => 429,
            Self::Failed => 502,
            Self::Stopped => 503,
        }
    }

    /// The kind a header value names.
    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Policy,
            Self::Unauthenticated,
            Self::Forbidden,
            Self::BadRequest,
            Self::Overloaded,
            Self::Failed,
            Self::Stopped,
        ]
        .into_iter()
        .find(|k| k.as_str() == value)
    }
}

/// The JSON body of every answer the proxy makes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// The [`RefusalKind`] (as [`RefusalKind::as_str`]).
    pub error: RefusalKind,
    /// The runner's reason, in words a client can act on (redacted; never a secret).
    pub reason: String,
    /// The capability named in the URL, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
}

/// Where a proxy URL points: the capability and the rest of the path (percent-encoded as
/// received, starting with `/`, or empty for a typed endpoint's `POST /<capability>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The capability name.
    pub capability: &'a str,
    /// The rest of the path, with its leading `/` (empty when none).
    pub rest: &'a str,
}

/// Splits a runner path `/<capability>/<rest...>` (without query). The error says what is
/// wrong.
pub fn parse_target(path: &str) -> Result<Target<'_>, String> {
    let Some(after) = path.strip_prefix('/') else {
        return Err("the path must start with /<capability>".to_owned());
    };
    let (capability, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    };
    if capability.is_empty() {
        return Err(
            "the path must start with /<capability>, the name of one of the Permit's capabilities"
                .to_owned(),
        );
    }
    if !capability
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
    {
        return Err(format!(
            "{capability:?} is not a capability name (letters, digits, _ and $)"
        ));
    }
    Ok(Target { capability, rest })
}

/// The gateway path of a call: `/proxy/<namespace>/<permit>/<capability><rest>`.
pub fn gateway_path(namespace: &str, permit: &str, capability: &str, rest: &str) -> String {
    format!("{GATEWAY_PREFIX}/{namespace}/{permit}/{capability}{rest}")
}

/// The limits of one proxy (`Permit.spec.proxy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeLimits {
    /// Most calls in flight at once; further calls get 429 (default 64).
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: u32,
    /// Seconds without a call after which the proxy stops (default 900).
    #[serde(default = "default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
}

fn default_max_concurrent_calls() -> u32 {
    DEFAULT_MAX_CONCURRENT_CALLS
}

fn default_idle_timeout_seconds() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECONDS
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            idle_timeout_seconds: DEFAULT_IDLE_TIMEOUT_SECONDS,
        }
    }
}

/// The code-free bundle of a proxied Permit: what `oauth3-sandbox-runner serve --bundle`
/// reads. Like a run [`crate::Bundle`] without code, args or per-run limits. Its limits and
/// callers come from `permit.spec.proxy`, bound to the approval by the spec digest; a spec
/// without `proxy.enabled` is refused.
///
/// ```json
/// {
///   "namespace": "default",
///   "permit": {"name": "openai", "spec": {...}, "specDigest": "sha256:..."},
///   "sealedSecrets": [{"name": "OPENAI_KEY", "envelope": "..."}],
///   "rateBudget": {"chat": 30},
///   "notAfter": 1764806400000,
///   "callback": {"url": "https://oauth3-operator.oauth3:8443/v1/results/default/openai", "token": "..."}
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeBundle {
    /// Namespace of the Permit and its sealed Secrets.
    pub namespace: String,
    /// The approved Permit: its spec (enforced on every call) and the digest the approval is
    /// bound to.
    pub permit: crate::PermitRef,
    /// The sealed secrets the capabilities use, each listed in the Permit.
    #[serde(default)]
    pub sealed_secrets: Vec<crate::SealedSecretRef>,
    /// Rate-limit tokens each capability starts with (as a run bundle's).
    #[serde(default)]
    pub rate_budget: std::collections::BTreeMap<String, f64>,
    /// Unix time in milliseconds after which the proxy refuses every call and stops (the
    /// approval's expiry). Without it, the operator's stop is the only end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// The operator's callback: token reviews and call-record batches go there, with its
    /// token. Without it, client tokens can only be checked against a local token file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<crate::Callback>,
}

/// Why a serve bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum ServeBundleError {
    /// The Permit's spec does not hash to the digest the approval is bound to.
    #[error(
        "permit.specDigest {claimed} does not match the spec (its digest is {actual}); the approval does not cover this spec"
    )]
    SpecDigestMismatch {
        /// The digest the bundle claims.
        claimed: String,
        /// The digest of the spec it carries.
        actual: String,
    },
    /// The digest could not be computed.
    #[error("computing the spec digest: {0}")]
    Digest(#[from] oauth3_crds::DigestError),
    /// A limit is out of range.
    #[error(
        "permit.spec.proxy.{field} is {value}; allowed: {min} to {max} (seconds for idleTimeout)"
    )]
    LimitOutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Lowest allowed.
        min: u64,
        /// Highest allowed.
        max: u64,
    },
    /// The approved spec does not enable the proxy.
    #[error("permit.spec.proxy.enabled is not true: the owner approved no calls without code")]
    ProxyNotEnabled,
    /// `spec.proxy.idleTimeout` is not a duration.
    #[error("permit.spec.proxy.idleTimeout: {0}")]
    IdleTimeout(#[from] oauth3_crds::DurationError),
    /// A sealed secret is not one of the Permit's.
    #[error("sealedSecrets[{index}] ({name}) is not listed in permit.spec.secrets")]
    UnlistedSecret {
        /// Position.
        index: usize,
        /// Its name.
        name: String,
    },
}

/// Bounds on `limits.maxConcurrentCalls`.
pub const MAX_CONCURRENT_CALLS_RANGE: (u64, u64) = (1, 10_000);
/// Bounds on `limits.idleTimeoutSeconds`.
pub const IDLE_TIMEOUT_SECONDS_RANGE: (u64, u64) = (10, 86_400);

impl ServeBundle {
    /// Parses a serve bundle strictly (unknown fields are errors).
    ///
    /// # Errors
    /// The JSON error with the path of the offending field.
    pub fn from_json(text: &str) -> Result<Self, serde_path_to_error::Error<serde_json::Error>> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de)
    }

    /// The proxy's limits from `permit.spec.proxy`.
    ///
    /// # Errors
    /// The spec does not enable the proxy, or its idle timeout is not a duration.
    pub fn limits(&self) -> Result<ServeLimits, ServeBundleError> {
        let proxy = self
            .permit
            .spec
            .proxy
            .as_ref()
            .filter(|p| p.enabled)
            .ok_or(ServeBundleError::ProxyNotEnabled)?;
        Ok(ServeLimits {
            max_concurrent_calls: proxy.max_concurrent_calls,
            idle_timeout_seconds: oauth3_crds::parse_duration(&proxy.idle_timeout)?.as_secs(),
        })
    }

    /// The identities the owner approved as callers.
    pub fn callers(&self) -> &[String] {
        self.permit
            .spec
            .proxy
            .as_ref()
            .map_or(&[], |p| p.callers.as_slice())
    }

    /// Checks the bundle before anything is unsealed: the spec matches the approved digest,
    /// the spec enables the proxy within the limits, and every sealed secret is the Permit's.
    ///
    /// # Errors
    /// The first rule broken, naming the field.
    pub fn validate(&self) -> Result<(), ServeBundleError> {
        let actual = oauth3_crds::spec_digest(&self.permit.spec)?;
        if actual != self.permit.spec_digest {
            return Err(ServeBundleError::SpecDigestMismatch {
                claimed: self.permit.spec_digest.clone(),
                actual,
            });
        }
        let limits = self.limits()?;
        for (field, value, (min, max)) in [
            (
                "maxConcurrentCalls",
                u64::from(limits.max_concurrent_calls),
                MAX_CONCURRENT_CALLS_RANGE,
            ),
            (
                "idleTimeout",
                limits.idle_timeout_seconds,
                IDLE_TIMEOUT_SECONDS_RANGE,
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err(ServeBundleError::LimitOutOfRange {
                    field,
                    value,
                    min,
                    max,
                });
            }
        }
        if let Some((index, s)) = self
            .sealed_secrets
            .iter()
            .enumerate()
            .find(|(_, s)| !self.permit.spec.secrets.contains(&s.name))
        {
            return Err(ServeBundleError::UnlistedSecret {
                index,
                name: s.name.clone(),
            });
        }
        Ok(())
    }
}

/// What the runner asks the operator about a client token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewRequest {
    /// The bearer token the client presented. Never logged.
    pub token: String,
}

impl std::fmt::Debug for ReviewRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReviewRequest { token: <hidden> }")
    }
}

/// The operator's answer: TokenReview + SubjectAccessReview (`create` on
/// `permits/proxy` of this Permit in group `oauth3.dev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewAnswer {
    /// Whether the client may call.
    pub allowed: bool,
    /// The authenticated user name, when the token was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `unauthenticated` (the token was not accepted) or `forbidden` (no permission) when
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<RefusalKind>,
    /// Why, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the runner may keep this answer (capped at [`MAX_REVIEW_TTL_SECONDS`]).
    #[serde(default)]
    pub ttl_seconds: u64,
}

/// One proxied call, as the runner reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyCall {
    /// When the call arrived, Unix time in milliseconds.
    pub at_ms: i64,
    /// Who called (the reviewed user name).
    pub identity: String,
    /// The capability.
    pub capability: String,
    /// Upper-case method.
    pub method: String,
    /// Canonical URL without credentials (redacted).
    pub url: String,
    /// The upstream's status, when the request was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    /// `allowed` or `denied`.
    pub decision: CallDecision,
    /// Why it was denied or failed (redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Milliseconds until the upstream's answer head (a stream's length is not counted).
    pub duration_ms: i64,
}

/// Calls reported together: `POST {CALLS_PATH}/<namespace>/<permit>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallBatch {
    /// The Permit's spec digest the proxy enforces.
    pub permit_digest: String,
    /// Calls since the last batch, oldest first.
    pub calls: Vec<ProxyCall>,
    /// Calls left out because the batch buffer was full (counted, not listed).
    #[serde(default)]
    pub dropped: u64,
}

/// The operator's answer to a [`CallBatch`]: the Permit's rate budget now (its Executions'
/// and every proxy's calls taken off), which the proxy adopts where it is lower than its own,
/// so a rate limit holds across the Permit's Executions and its proxy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallBatchAnswer {
    /// Remaining tokens per rate-limited capability (capabilities left out: no carried budget).
    #[serde(default)]
    pub rate_budget: std::collections::BTreeMap<String, f64>,
}

/// How often a proxy posts its call records (and learns the shared rate budget), in
/// milliseconds, while calls are made; without calls it still asks every
/// [`IDLE_REPORT_EVERY`] intervals.
pub const REPORT_INTERVAL_MS: u64 = 1000;

/// Exit status of `serve` once it stopped after `idleTimeout` without a call (0: stopped
/// from outside, by SIGTERM; 1 and 2: failed to start).
pub const EXIT_IDLE: u8 = 10;

/// Exit status of `serve` once the approval expired (`notAfter`).
pub const EXIT_EXPIRED: u8 = 11;

/// Report intervals without calls between two budget updates.
pub const IDLE_REPORT_EVERY: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_capability_and_rest() {
        assert_eq!(
            parse_target("/github/repos/o/r").expect("ok"),
            Target {
                capability: "github",
                rest: "/repos/o/r"
            }
        );
        assert_eq!(parse_target("/createIssue").expect("ok").rest, "");
        assert!(
            parse_target("/")
                .expect_err("refused")
                .contains("/<capability>")
        );
        assert!(parse_target("github").is_err());
        assert!(
            parse_target("/gi%74hub/x")
                .expect_err("refused")
                .contains("not a capability name")
        );
    }

    #[test]
    fn refusal_kinds_round_trip_and_have_their_statuses() {
        for kind in [
            RefusalKind::Policy,
            RefusalKind::Unauthenticated,
            RefusalKind::Forbidden,
            RefusalKind::BadRequest,
            RefusalKind::Overloaded,
            RefusalKind::Failed,
            RefusalKind::Stopped,
        ] {
            assert_eq!(RefusalKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).expect("json");
            assert_eq!(json, kind.as_str());
        }
        assert_eq!(RefusalKind::Policy.status(), 403);
        assert_eq!(RefusalKind::Unauthenticated.status(), 401);
        assert_eq!(RefusalKind::Overloaded.status(), 429);
        assert_eq!(RefusalKind::Stopped.status(), 503);
    }

    #[test]
    fn the_gateway_path_nests_the_runner_layout() {
        assert_eq!(
            gateway_path("ns", "openai", "chat", "/v1/chat/completions"),
            "/proxy/ns/openai/chat/v1/chat/completions"
        );
    }

    #[test]
    fn a_review_request_never_shows_its_token() {
        let r = ReviewRequest {
            token: "eyJsecret".to_owned(),
        };
        assert!(!format!("{r:?}").contains("eyJ"));
    }

    fn serve_bundle(
        proxy: serde_json::Value,
        extra: serde_json::Value,
    ) -> Result<ServeBundle, String> {
        let spec: oauth3_crds::PermitSpec = serde_json::from_value(serde_json::json!({
            "description": "d", "secrets": ["KEY"],
            "capabilities": [{"name": "api", "baseUrl": "https://api.example", "paths": ["/**"],
                "methods": ["GET"], "auth": {"header": "Authorization", "value": "Bearer {KEY}"}}],
            "proxy": proxy
        }))
        .expect("spec");
        let mut doc = serde_json::json!({
            "namespace": "n",
            "permit": {"name": "p", "specDigest": oauth3_crds::spec_digest(&spec).expect("digest"),
                       "spec": spec},
            "sealedSecrets": [{"name": "KEY", "envelope": "e"}],
        });
        for (k, v) in extra.as_object().expect("object") {
            doc[k] = v.clone();
        }
        let bundle = ServeBundle::from_json(&doc.to_string()).map_err(|e| e.to_string())?;
        bundle
            .validate()
            .map(|()| bundle)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn serve_bundles_are_checked_against_the_approved_digest_and_the_approved_proxy() {
        let enabled = serde_json::json!({"enabled": true, "callers": ["agent"]});
        let none = serde_json::json!({});
        let ok = serve_bundle(enabled.clone(), none.clone()).expect("valid");
        assert_eq!(ok.limits().expect("limits"), ServeLimits::default());
        assert_eq!(ok.callers(), ["agent"]);
        let forged = serve_bundle(
            enabled.clone(),
            serde_json::json!({"permit": {"name": "p", "specDigest": "sha256:00",
                "spec": ok.permit.spec}}),
        );
        assert!(
            forged
                .expect_err("refused")
                .contains("does not match the spec")
        );
        let off = serve_bundle(serde_json::json!({"enabled": false}), none.clone());
        assert!(
            off.expect_err("refused")
                .contains("proxy.enabled is not true")
        );
        let short = serde_json::json!({"enabled": true, "callers": ["a"], "idleTimeout": "5s"});
        assert!(
            serve_bundle(short, none.clone())
                .expect_err("refused")
                .contains("permit.spec.proxy.idleTimeout is 5")
        );
        let other = serve_bundle(
            enabled.clone(),
            serde_json::json!({"sealedSecrets": [{"name": "X", "envelope": "e"}]}),
        );
        assert!(
            other
                .expect_err("refused")
                .contains("sealedSecrets[0] (X) is not listed")
        );
        let typo = serve_bundle(enabled, serde_json::json!({"limit": {}}));
        assert!(typo.expect_err("refused").contains("unknown field `limit`"));
    }
}
