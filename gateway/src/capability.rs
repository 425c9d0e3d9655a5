//! The permit dialect's `POST /permit` body mapped to a Permit spec (pure).
//!
//! Two capability forms, as clients send them:
//! - `type: "scoped-fetch"`: `name`, `base_url`, `scope` (path globs relative to `base_url`),
//!   `methods` (absent: every method), `auth {header | query_param, value}`, `cookie_secret` (a
//!   cookie jar from `POST /cookies/upload`: capability `cookies`),
//!   `body_schema {allow_keys, deny_keys, max_bytes}`, `rate_limit {max_calls,
//!   window_seconds}`, and (an oauth3 addition) `query {allow}`. Becomes a scoped-fetch
//!   capability: `paths` = `/` + each glob, called as `name(method, path, {query, body})`.
//! - `type: "api-gateway"` or no `type`: `name`, `endpoint` (a URL template with `{param}`s),
//!   `method`, `params {name: {in, required?, pattern?}}`, `auth`. Becomes a typed endpoint.
//!   Clients call it **positionally in the declaration order of `params`**
//!   (`createIssue(owner, repo, title, body)`), so that order is kept (the body is read with
//!   an order-keeping map) and returned for the positional prelude ([`positional_prelude`]).
//!
//! A dotted `name` (`github.createIssue`) is called by its last segment. Secrets are the
//! `{NAME}` placeholders of `auth.value` plus `cookie_secret`. Every refusal names the field
//! (`capabilities[0].scope: must list at least one path glob`); fields that would change what
//! is allowed but that oauth3 does not enforce (`rpc_method`, `extra_headers`,
//! `response_filter`, ...) are refused rather than ignored.

use std::collections::BTreeMap;
use std::fmt;

use oauth3_crds::constants::{DEFAULT_BODY_MAX_BYTES, SECRET_NAME_PATTERN};
use oauth3_crds::{
    AuthSpec, BodyRules, Capability, CodeReview, HttpMethod, ParamLocation, ParamSpec, PermitSpec,
    QueryRules, RateLimit,
};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::ApiError;

/// The body of `POST /permit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermitRequest {
    /// What the agent wants and why; shown to the owner verbatim.
    #[serde(default)]
    pub description: Option<String>,
    /// The capabilities, in either form.
    #[serde(default)]
    pub capabilities: Option<Vec<CapabilityRequest>>,
    /// Goals to draft capabilities from, instead of `capabilities`: the operator's drafter
    /// proposes them (`status.draft`) and the owner approves the draft.
    #[serde(default)]
    pub intent: Option<Vec<oauth3_crds::Intent>>,
    /// The Permit's name (a DNS label); generated when absent.
    #[serde(default)]
    pub permit_id: Option<String>,
    /// Hosts the agent expects to reach: informational, the capabilities define the hosts.
    #[serde(default)]
    pub networks: Option<Vec<String>>,
    /// Approval lifetime (`30m`, `24h`, `7d`); the Permit default (24h) when absent.
    #[serde(default)]
    pub valid_for: Option<String>,
    /// At most this many Executions under one approval.
    #[serde(default)]
    pub max_executions: Option<i64>,
    /// `none` or `perCode`.
    #[serde(default)]
    pub code_review: Option<CodeReview>,
}

/// One capability as a client sends it (both forms; [`to_spec`] checks which fields fit
/// which form).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityRequest {
    /// `scoped-fetch` or `api-gateway` (the default).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The capability's name; its last dot-segment is the function name.
    #[serde(default)]
    pub name: Option<String>,
    /// Link to the API's documentation.
    #[serde(default)]
    pub doc_url: Option<String>,
    /// Navigation hints for a drafter (ignored).
    #[serde(default)]
    pub doc_nav: Option<serde_json::Value>,
    /// Who drafted the spec (ignored).
    #[serde(default)]
    pub drafted_by: Option<serde_json::Value>,
    /// Scoped fetch: the origin and optional path prefix.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Scoped fetch: path globs relative to `base_url`.
    #[serde(default)]
    pub scope: Option<Vec<String>>,
    /// Scoped fetch: allowed methods (absent: every method).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Scoped fetch: a secret sent as the `Cookie` header.
    #[serde(default)]
    pub cookie_secret: Option<String>,
    /// Scoped fetch: top-level body keys allowed / denied.
    #[serde(default)]
    pub body_schema: Option<BodySchemaRequest>,
    /// Scoped fetch: calls per window.
    #[serde(default)]
    pub rate_limit: Option<RateLimitRequest>,
    /// Scoped fetch: query parameters the code may send (absent: none).
    #[serde(default)]
    pub query: Option<QueryRequest>,
    /// How the credential is injected.
    #[serde(default)]
    pub auth: Option<AuthRequest>,
    /// API gateway: the URL template.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// API gateway: the method.
    #[serde(default)]
    pub method: Option<String>,
    /// API gateway: parameters, in positional order.
    #[serde(default)]
    pub params: Option<OrderedParams>,
    /// API gateway: how to read the answer (the sandbox decides by content type; ignored).
    #[serde(default)]
    pub response: Option<String>,
    /// Not enforced by oauth3: refused.
    #[serde(default)]
    pub rpc_method: Option<serde_json::Value>,
    /// Not enforced by oauth3: refused.
    #[serde(default)]
    pub rpc_wrap: Option<serde_json::Value>,
    /// Not enforced by oauth3: refused.
    #[serde(default)]
    pub extra_headers: Option<serde_json::Value>,
    /// Not enforced by oauth3: refused.
    #[serde(default)]
    pub response_filter: Option<serde_json::Value>,
}

/// `body_schema` of a scoped-fetch capability.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodySchemaRequest {
    /// Only these keys.
    #[serde(default)]
    pub allow_keys: Option<Vec<String>>,
    /// Never these keys.
    #[serde(default)]
    pub deny_keys: Option<Vec<String>>,
    /// Largest body in bytes.
    #[serde(default)]
    pub max_bytes: Option<i32>,
}

/// `rate_limit` of a scoped-fetch capability.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRequest {
    /// Calls per window.
    pub max_calls: i64,
    /// Window in seconds.
    pub window_seconds: i64,
}

/// `query` of a scoped-fetch capability.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Allowed parameter names.
    pub allow: Vec<String>,
}

/// `auth` of either form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRequest {
    /// Header that carries the credential.
    #[serde(default)]
    pub header: Option<String>,
    /// Query parameter that carries the credential.
    #[serde(default)]
    pub query_param: Option<String>,
    /// Template with `{SECRET}` placeholders.
    pub value: String,
}

/// One `params` entry of an api-gateway capability.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamRequest {
    /// `path`, `query`, `body` or `header`.
    #[serde(rename = "in")]
    pub location: String,
    /// Whether the call fails without it.
    #[serde(default)]
    pub required: Option<bool>,
    /// A regular expression the value must match in full.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Free-text constraints are not enforceable: refused.
    #[serde(default)]
    pub constraint: Option<serde_json::Value>,
    /// Documentation (ignored).
    #[serde(default)]
    pub description: Option<String>,
}

/// `params` with the declaration order of the JSON object kept (a JSON object read into a
/// sorted map would turn `createIssue(owner, repo, title, body)` into `(body, owner, ...)`).
#[derive(Debug, Default)]
pub struct OrderedParams(pub Vec<(String, ParamRequest)>);

impl<'de> Deserialize<'de> for OrderedParams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = OrderedParams;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of parameter name to {in, required?, pattern?}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, ParamRequest)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, ParamRequest>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(format!(
                            "parameter {k:?} is declared twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(OrderedParams(out))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

/// Parses a `POST /permit` body; the error names the JSON path of the offending field.
///
/// # Errors
/// [`ApiError::BadRequest`] for malformed JSON, unknown fields or wrong types.
pub fn parse_request(body: &[u8]) -> Result<PermitRequest, ApiError> {
    parse_json(body)
}

/// Parses a JSON body into `T`, naming the JSON path of the offending field on failure.
///
/// # Errors
/// [`ApiError::BadRequest`] with the path (`capabilities[0].scope`) or `request body`.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = inner.is_syntax() || inner.is_eof();
        let field = if syntax || path == "." || path.is_empty() {
            "request body".to_owned()
        } else {
            path
        };
        let message = if syntax {
            format!("not valid JSON: {inner}")
        } else {
            inner.to_string()
        };
        ApiError::bad(field, message)
    })?;
    de.end()
        .map_err(|e| ApiError::bad("request body", format!("not valid JSON: {e}")))?;
    Ok(value)
}

/// `value` as a `T`, or a 400 naming the JSON path of the first field that does not fit
/// (`arguments` for the value itself), as [`parse_json`] does for a body.
///
/// # Errors
/// [`ApiError::BadRequest`] naming the field and the rule.
pub fn from_value_at<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "arguments".to_owned()
        } else {
            path
        };
        ApiError::bad(field, e.into_inner().to_string())
    })
}

fn intent_spec(
    req: &PermitRequest,
    intent: &[oauth3_crds::Intent],
) -> Result<MappedPermit, ApiError> {
    if req.capabilities.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(ApiError::bad(
            "intent",
            "send intent or capabilities, not both: the capabilities of an intent are drafted by the operator",
        ));
    }
    if intent.is_empty() || intent.len() > 8 {
        return Err(ApiError::bad("intent", "1 to 8 intents"));
    }
    let description = req
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map_or_else(
            || {
                intent
                    .iter()
                    .map(|i| i.goal.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            str::to_owned,
        );
    let description: String = description.chars().take(2000).collect();
    let mut secrets: Vec<String> = intent.iter().flat_map(|i| i.secret_hints.clone()).collect();
    secrets.sort();
    secrets.dedup();
    let spec: PermitSpec = serde_json::from_value(serde_json::json!({
        "description": description, "capabilities": [], "secrets": secrets,
        "intent": intent,
    }))
    .map_err(|e| ApiError::bad("intent", e.to_string()))?;
    let mut spec = spec;
    if let Some(v) = &req.valid_for {
        spec.valid_for = v.clone();
    }
    spec.max_executions = req.max_executions;
    if let Some(c) = req.code_review {
        spec.code_review = c;
    }
    Ok(MappedPermit {
        spec,
        positional: BTreeMap::new(),
    })
}

/// A Permit spec built from a request, with what the gateway must remember about it.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedPermit {
    /// The spec to create.
    pub spec: PermitSpec,
    /// For api-gateway capabilities: function name to parameter names in positional order.
    pub positional: BTreeMap<String, Vec<String>>,
}

const ALL_METHODS: [HttpMethod; 7] = [
    HttpMethod::GET,
    HttpMethod::HEAD,
    HttpMethod::POST,
    HttpMethod::PUT,
    HttpMethod::PATCH,
    HttpMethod::DELETE,
    HttpMethod::OPTIONS,
];

/// Maps a parsed request to a Permit spec (pure). With `intent`, the spec states the intent
/// and no capabilities (the operator drafts them); its secrets are the intents' secret hints.
///
/// # Errors
/// [`ApiError::BadRequest`] naming the field and the rule.
pub fn to_spec(req: &PermitRequest) -> Result<MappedPermit, ApiError> {
    if let Some(intent) = &req.intent {
        return intent_spec(req, intent);
    }
    let description = req
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            ApiError::bad(
                "description",
                "required: say what the agent wants to do and why",
            )
        })?;
    if description.chars().count() > 2000 {
        return Err(ApiError::bad("description", "at most 2000 characters"));
    }
    let caps = req
        .capabilities
        .as_ref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            ApiError::bad(
                "capabilities",
                "required: a non-empty array of capability specs (or intent, with a drafter)",
            )
        })?;
    if caps.len() > oauth3_crds::constants::MAX_CAPABILITIES {
        return Err(ApiError::bad(
            "capabilities",
            format!(
                "at most {} capabilities",
                oauth3_crds::constants::MAX_CAPABILITIES
            ),
        ));
    }
    let mut capabilities = Vec::with_capacity(caps.len());
    let mut positional = BTreeMap::new();
    let mut secrets: Vec<String> = Vec::new();
    for (i, cap) in caps.iter().enumerate() {
        let at = format!("capabilities[{i}]");
        let (capability, order) = map_capability(cap, &at)?;
        if capabilities
            .iter()
            .any(|c: &Capability| c.name == capability.name)
        {
            return Err(ApiError::bad(
                format!("{at}.name"),
                format!(
                    "two capabilities are called {:?} (the last dot-segment of name is the function name)",
                    capability.name
                ),
            ));
        }
        for s in secret_names(cap, &at)? {
            if !secrets.contains(&s) {
                secrets.push(s);
            }
        }
        if let Some(order) = order {
            positional.insert(capability.name.clone(), order);
        }
        capabilities.push(capability);
    }
    secrets.sort();
    let valid_for = match &req.valid_for {
        Some(v) => {
            oauth3_crds::parse_duration(v)
                .map_err(|e| ApiError::bad("valid_for", e.to_string()))?;
            v.clone()
        }
        None => oauth3_crds::constants::DEFAULT_VALID_FOR.to_owned(),
    };
    if let Some(m) = req.max_executions.filter(|m| *m < 1) {
        return Err(ApiError::bad(
            "max_executions",
            format!("must be at least 1, not {m}"),
        ));
    }
    // Built from JSON so fields added to PermitSpec later keep their defaults here.
    let mut spec: PermitSpec = serde_json::from_value(serde_json::json!({
        "description": description,
        "capabilities": [],
    }))
    .map_err(|e| ApiError::Internal(format!("building a Permit spec: {e}")))?;
    spec.capabilities = capabilities;
    spec.secrets = secrets;
    spec.valid_for = valid_for;
    spec.max_executions = req.max_executions;
    spec.code_review = req.code_review.unwrap_or_default();
    Ok(MappedPermit { spec, positional })
}

/// The function name of a capability name: its last dot-segment, which must be a JavaScript
/// identifier.
fn function_name(name: Option<&str>, at: &str) -> Result<String, ApiError> {
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad(format!("{at}.name"), "required"))?;
    let last = name.rsplit('.').next().unwrap_or(name);
    let ident = last
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && last
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if !ident || last.len() > 64 {
        return Err(ApiError::bad(
            format!("{at}.name"),
            format!(
                "{name:?} is not usable as a function name: the part after the last dot must be \
                 1-64 letters, digits, _ or $, not starting with a digit (no spaces)"
            ),
        ));
    }
    Ok(last.to_owned())
}

fn refuse_unsupported(cap: &CapabilityRequest, at: &str) -> Result<(), ApiError> {
    for (field, set) in [
        ("rpc_method", cap.rpc_method.is_some()),
        ("rpc_wrap", cap.rpc_wrap.is_some()),
        ("extra_headers", cap.extra_headers.is_some()),
        ("response_filter", cap.response_filter.is_some()),
    ] {
        if set {
            return Err(ApiError::bad(
                format!("{at}.{field}"),
                "not supported: oauth3 enforces only what it can check on every request; remove it",
            ));
        }
    }
    Ok(())
}

fn not_for_form(
    at: &str,
    form: &str,
    fields: &[(&str, bool)],
    other: &str,
) -> Result<(), ApiError> {
    match fields.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ApiError::bad(
            format!("{at}.{field}"),
            format!("not a field of a {form} capability (it belongs to {other})"),
        )),
        None => Ok(()),
    }
}

fn parse_method(text: &str, field: String) -> Result<HttpMethod, ApiError> {
    HttpMethod::parse(text).ok_or_else(|| {
        ApiError::bad(
            field,
            format!("{text:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        )
    })
}

fn map_auth(auth: Option<&AuthRequest>, at: &str) -> Result<Option<AuthSpec>, ApiError> {
    let Some(a) = auth else { return Ok(None) };
    if a.header.is_some() == a.query_param.is_some() {
        return Err(ApiError::bad(
            format!("{at}.auth"),
            "set exactly one of header or query_param",
        ));
    }
    Ok(Some(AuthSpec {
        header: a.header.clone(),
        query_param: a.query_param.clone(),
        value: a.value.clone(),
    }))
}

/// Maps one capability; returns the positional order for the api-gateway form.
fn map_capability(
    cap: &CapabilityRequest,
    at: &str,
) -> Result<(Capability, Option<Vec<String>>), ApiError> {
    refuse_unsupported(cap, at)?;
    let name = function_name(cap.name.as_deref(), at)?;
    // Built from JSON so fields added to Capability later keep their defaults here.
    let mut empty: Capability = serde_json::from_value(serde_json::json!({ "name": name }))
        .map_err(|e| ApiError::Internal(format!("building a capability: {e}")))?;
    empty.auth = map_auth(cap.auth.as_ref(), at)?;
    empty.doc_url = cap.doc_url.clone().filter(|d| !d.is_empty());
    match cap.kind.as_deref() {
        Some("scoped-fetch") => scoped_fetch(cap, empty, at).map(|c| (c, None)),
        None | Some("api-gateway") => {
            api_gateway(cap, empty, at).map(|(c, order)| (c, Some(order)))
        }
        Some(other) => Err(ApiError::bad(
            format!("{at}.type"),
            format!("unknown type {other:?}; expected scoped-fetch or api-gateway (the default)"),
        )),
    }
}

fn scoped_fetch(
    cap: &CapabilityRequest,
    mut out: Capability,
    at: &str,
) -> Result<Capability, ApiError> {
    not_for_form(
        at,
        "scoped-fetch",
        &[
            ("endpoint", cap.endpoint.is_some()),
            ("method", cap.method.is_some()),
            ("params", cap.params.is_some()),
        ],
        "the api-gateway form",
    )?;
    let base = cap
        .base_url
        .as_deref()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            ApiError::bad(
                format!("{at}.base_url"),
                "required for a scoped-fetch capability",
            )
        })?;
    let parsed = url::Url::parse(base).map_err(|e| {
        ApiError::bad(
            format!("{at}.base_url"),
            format!("not an absolute URL: {e}"),
        )
    })?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
        return Err(ApiError::bad(
            format!("{at}.base_url"),
            "must be an https URL with a host (http only for loopback)",
        ));
    }
    let scope = cap
        .scope
        .as_ref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::bad(
                format!("{at}.scope"),
                "must list at least one path glob (e.g. \"repos/*/issues\")",
            )
        })?;
    let mut paths = Vec::with_capacity(scope.len());
    for (j, glob) in scope.iter().enumerate() {
        let rel = glob.strip_prefix('/').unwrap_or(glob);
        if rel.is_empty() && glob.is_empty() {
            return Err(ApiError::bad(
                format!("{at}.scope[{j}]"),
                "an empty glob; use \"**\" for everything under base_url",
            ));
        }
        paths.push(format!("/{rel}"));
    }
    let methods = match &cap.methods {
        None => ALL_METHODS.to_vec(),
        Some(list) if list.is_empty() => {
            return Err(ApiError::bad(
                format!("{at}.methods"),
                "an empty list allows nothing; omit it to allow every method",
            ));
        }
        Some(list) => {
            let mut out = Vec::new();
            for (j, m) in list.iter().enumerate() {
                let m = parse_method(m, format!("{at}.methods[{j}]"))?;
                if !out.contains(&m) {
                    out.push(m);
                }
            }
            out
        }
    };
    if let Some(secret) = &cap.cookie_secret {
        if out
            .auth
            .as_ref()
            .and_then(|a| a.header.as_deref())
            .is_some_and(|h| h.eq_ignore_ascii_case("cookie"))
        {
            return Err(ApiError::bad(
                format!("{at}.cookie_secret"),
                "set cookie_secret or an auth header of Cookie, not both",
            ));
        }
        // A cookie jar (POST /cookies/upload): the runner sends each request only the cookies
        // RFC 6265 sends to its URL.
        out.cookies = Some(secret.clone());
    }
    out.base_url = Some(base.to_owned());
    out.paths = paths;
    out.methods = methods;
    out.query = cap.query.as_ref().map(|q| QueryRules {
        allow: q.allow.clone(),
    });
    out.body = cap.body_schema.as_ref().map(|b| BodyRules {
        allow_keys: b.allow_keys.clone(),
        deny_keys: b.deny_keys.clone().unwrap_or_default(),
        max_bytes: b.max_bytes.unwrap_or(DEFAULT_BODY_MAX_BYTES),
        allow_raw: false,
    });
    out.rate_limit = match &cap.rate_limit {
        None => None,
        Some(r) => {
            let field = |f: &str| format!("{at}.rate_limit.{f}");
            let requests = i32::try_from(r.max_calls)
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| ApiError::bad(field("max_calls"), "must be 1..1000000"))?;
            let per_seconds = i32::try_from(r.window_seconds)
                .ok()
                .filter(|n| (1..=86_400).contains(n))
                .ok_or_else(|| ApiError::bad(field("window_seconds"), "must be 1..86400"))?;
            Some(RateLimit {
                requests,
                per_seconds,
            })
        }
    };
    Ok(out)
}

fn api_gateway(
    cap: &CapabilityRequest,
    mut out: Capability,
    at: &str,
) -> Result<(Capability, Vec<String>), ApiError> {
    not_for_form(
        at,
        "api-gateway",
        &[
            ("base_url", cap.base_url.is_some()),
            ("scope", cap.scope.is_some()),
            ("methods", cap.methods.is_some()),
            ("cookie_secret", cap.cookie_secret.is_some()),
            ("body_schema", cap.body_schema.is_some()),
            ("rate_limit", cap.rate_limit.is_some()),
            ("query", cap.query.is_some()),
        ],
        "the scoped-fetch form",
    )?;
    let endpoint = cap
        .endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
        .ok_or_else(|| {
            ApiError::bad(
                format!("{at}.endpoint"),
                "required for an api-gateway capability (or set type: scoped-fetch)",
            )
        })?;
    let method = cap.method.as_deref().ok_or_else(|| {
        ApiError::bad(
            format!("{at}.method"),
            "required for an api-gateway capability",
        )
    })?;
    let method = parse_method(method, format!("{at}.method"))?;
    let mut order = Vec::new();
    let mut params = BTreeMap::new();
    for (pname, p) in cap.params.as_ref().map(|p| p.0.as_slice()).unwrap_or(&[]) {
        let field = format!("{at}.params.{pname}");
        if p.constraint.is_some() {
            return Err(ApiError::bad(
                format!("{field}.constraint"),
                "free-text constraints cannot be enforced; use pattern (a regular expression the value must match)",
            ));
        }
        let location = match p.location.as_str() {
            "path" => ParamLocation::Path,
            "query" => ParamLocation::Query,
            "body" => ParamLocation::Body,
            "header" => ParamLocation::Header,
            other => {
                return Err(ApiError::bad(
                    format!("{field}.in"),
                    format!("{other:?} is not one of path, query, body, header"),
                ));
            }
        };
        order.push(pname.clone());
        params.insert(
            pname.clone(),
            ParamSpec {
                location,
                required: p.required.unwrap_or(false),
                pattern: p.pattern.clone(),
            },
        );
    }
    out.endpoint = Some(endpoint.to_owned());
    out.method = Some(method);
    out.params = params;
    Ok((out, order))
}

/// The secret names a capability uses: `{NAME}` placeholders of `auth.value` and
/// `cookie_secret`, each checked against the secret-name rule.
fn secret_names(cap: &CapabilityRequest, at: &str) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    if let Some(a) = &cap.auth {
        let mut rest = a.value.as_str();
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                return Err(ApiError::bad(
                    format!("{at}.auth.value"),
                    "an unclosed { placeholder",
                ));
            };
            out.push((rest[start + 1..start + len].to_owned(), "auth.value"));
            rest = &rest[start + len + 1..];
        }
        if out.is_empty() {
            return Err(ApiError::bad(
                format!("{at}.auth.value"),
                "must contain a {SECRET_NAME} placeholder (the secret is filled in inside the sandbox)",
            ));
        }
    }
    if let Some(c) = &cap.cookie_secret {
        out.push((c.clone(), "cookie_secret"));
    }
    out.into_iter()
        .map(|(name, field)| {
            if is_secret_name(&name) {
                Ok(name)
            } else {
                Err(ApiError::bad(
                    format!("{at}.{field}"),
                    format!(
                        "secret name {name:?} must match {SECRET_NAME_PATTERN} (e.g. GITHUB_TOKEN)"
                    ),
                ))
            }
        })
        .collect()
}

/// Whether `name` matches the Permit secret-name rule.
pub fn is_secret_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_uppercase()
        && b.last()
            .is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// The call signature a client uses: positional for api-gateway capabilities
/// (`createIssue(owner, repo, title, body)`), the sandbox's own otherwise.
pub fn client_signature(cap: &Capability, positional: &BTreeMap<String, Vec<String>>) -> String {
    match positional.get(&cap.name) {
        Some(order) => format!("{}({})", cap.name, order.join(", ")),
        None => oauth3_operator::describe::signature(cap),
    }
}

/// The prelude that gives api-gateway capabilities their positional calling convention
/// (pure). The sandbox calls a typed endpoint as `name(pathParams..., {others})`; clients
/// call it with every parameter positional in declaration order. The prelude is ordinary
/// code with no authority of its own: it rebinds each such function to one that reorders its
/// arguments and forwards to the capability. It is put in front of the agent's code, so the
/// code digest and what the owner reviews cover it. Empty when nothing needs it.
pub fn positional_prelude(spec: &PermitSpec, positional: &BTreeMap<String, Vec<String>>) -> String {
    let mut lines = Vec::new();
    for cap in &spec.capabilities {
        let Some(order) = positional.get(&cap.name) else {
            continue;
        };
        let Some(endpoint) = cap.endpoint.as_deref() else {
            continue;
        };
        let index = |p: &str| order.iter().position(|o| o == p);
        let mut call: Vec<String> = oauth3_operator::describe::path_placeholders(endpoint)
            .iter()
            .map(|p| match index(p) {
                Some(i) => format!("a[{i}]"),
                None => "undefined".to_owned(),
            })
            .collect();
        let others: Vec<String> = order
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                cap.params
                    .get(p.as_str())
                    .is_some_and(|s| s.location != ParamLocation::Path)
            })
            .map(|(i, p)| {
                format!(
                    "{}: a[{i}]",
                    serde_json::to_string(p).unwrap_or_else(|_| "\"\"".into())
                )
            })
            .collect();
        if !others.is_empty() {
            call.push(format!("__oauth3Defined({{{}}})", others.join(", ")));
        }
        lines.push(format!(
            "const {name} = ((f) => (...a) => f({args}))(globalThis.{name});",
            name = cap.name,
            args = call.join(", ")
        ));
    }
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "// oauth3-gateway: positional calls for api-gateway capabilities (no authority of its own)\n\
         const __oauth3Defined = (o) => Object.fromEntries(Object.entries(o).filter((e) => e[1] !== undefined));\n\
         {}\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(body: serde_json::Value) -> Result<MappedPermit, ApiError> {
        to_spec(&parse_request(body.to_string().as_bytes())?)
    }

    fn err(body: serde_json::Value) -> String {
        map(body).expect_err("refused").to_string()
    }

    /// The hosted quick start's body, as text: a `json!` value would sort the keys and lose
    /// the declaration order that is the point.
    const HOSTED_QUICK_START: &str = r#"{"description": "File an issue", "capabilities": [{
        "name": "github.createIssue", "doc_url": "https://docs.github.com/rest/issues",
        "endpoint": "https://api.github.com/repos/{owner}/{repo}/issues", "method": "POST",
        "auth": {"header": "Authorization", "value": "token {GH_TOKEN}"},
        "params": {"owner": {"in": "path"}, "repo": {"in": "path"},
                   "title": {"in": "body"}, "body": {"in": "body"}}}]}"#;

    fn map_text(body: &str) -> Result<MappedPermit, ApiError> {
        to_spec(&parse_request(body.as_bytes())?)
    }

    #[test]
    fn the_hosted_quick_start_becomes_a_typed_endpoint_called_positionally() {
        let m = map_text(HOSTED_QUICK_START).expect("maps");
        let cap = &m.spec.capabilities[0];
        assert_eq!(cap.name, "createIssue");
        assert_eq!(
            cap.endpoint.as_deref(),
            Some("https://api.github.com/repos/{owner}/{repo}/issues")
        );
        assert_eq!(cap.method, Some(HttpMethod::POST));
        assert_eq!(m.spec.secrets, ["GH_TOKEN"]);
        assert_eq!(
            m.positional["createIssue"],
            ["owner", "repo", "title", "body"]
        );
        assert_eq!(
            client_signature(cap, &m.positional),
            "createIssue(owner, repo, title, body)"
        );
        let prelude = positional_prelude(&m.spec, &m.positional);
        assert!(
            prelude.contains(
                "const createIssue = ((f) => (...a) => f(a[0], a[1], __oauth3Defined({\"title\": a[2], \"body\": a[3]})))(globalThis.createIssue);"
            ),
            "{prelude}"
        );
    }

    #[test]
    fn declaration_order_not_alphabetical_order_is_the_argument_order() {
        let body = HOSTED_QUICK_START.replace(
            r#""params": {"owner": {"in": "path"}, "repo": {"in": "path"},
                   "title": {"in": "body"}, "body": {"in": "body"}}"#,
            r#""params": {"repo": {"in": "path"}, "zeta": {"in": "query"},
                   "owner": {"in": "path"}, "alpha": {"in": "body"}}"#,
        );
        let m = map_text(&body).expect("maps");
        assert_eq!(
            m.positional["createIssue"],
            ["repo", "zeta", "owner", "alpha"]
        );
        let prelude = positional_prelude(&m.spec, &m.positional);
        // The sandbox wants path params in endpoint order (owner, repo), then the others.
        assert!(
            prelude.contains("f(a[2], a[0], __oauth3Defined({\"zeta\": a[1], \"alpha\": a[3]}))"),
            "{prelude}"
        );
    }

    #[test]
    fn scoped_fetch_maps_scope_methods_body_and_rate_limit() {
        let m = map(json!({"description": "read issues", "capabilities": [{
            "type": "scoped-fetch", "name": "github", "base_url": "https://api.github.com",
            "scope": ["repos/*/issues", "/user"], "methods": ["get", "POST"],
            "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"},
            "body_schema": {"allow_keys": ["title"], "deny_keys": ["assignees"]},
            "rate_limit": {"max_calls": 5, "window_seconds": 60}}]}))
        .expect("maps");
        let cap = &m.spec.capabilities[0];
        assert_eq!(cap.paths, ["/repos/*/issues", "/user"]);
        assert_eq!(cap.methods, [HttpMethod::GET, HttpMethod::POST]);
        let body = cap.body.as_ref().expect("body");
        assert_eq!(body.allow_keys.as_deref(), Some(&["title".to_owned()][..]));
        assert_eq!(body.deny_keys, ["assignees"]);
        assert_eq!(
            cap.rate_limit,
            Some(RateLimit {
                requests: 5,
                per_seconds: 60
            })
        );
        assert!(m.positional.is_empty());
        assert_eq!(positional_prelude(&m.spec, &m.positional), "");
        assert_eq!(m.spec.secrets, ["GITHUB_TOKEN"]);
    }

    #[test]
    fn absent_methods_allow_every_method_and_cookie_secret_is_a_cookie_jar() {
        let m = map(
            json!({"description": "d", "capabilities": [{"type": "scoped-fetch",
            "name": "site", "base_url": "https://example.com", "scope": ["**"],
            "cookie_secret": "COOKIES_EXAMPLE_COM"}]}),
        )
        .expect("maps");
        let cap = &m.spec.capabilities[0];
        assert_eq!(cap.methods.len(), 7);
        assert_eq!(cap.cookies.as_deref(), Some("COOKIES_EXAMPLE_COM"));
        assert!(cap.auth.is_none());
        assert_eq!(m.spec.secrets, ["COOKIES_EXAMPLE_COM"]);
    }

    #[test]
    fn bad_input_is_refused_naming_the_field_and_the_rule() {
        let sf = |extra: serde_json::Value| {
            let mut cap = json!({"type": "scoped-fetch", "name": "gh",
                "base_url": "https://api.github.com", "scope": ["x"]});
            for (k, v) in extra.as_object().expect("object") {
                cap[k] = v.clone();
            }
            json!({"description": "d", "capabilities": [cap]})
        };
        for (body, expected) in [
            (
                json!({"description": "d", "capabilities": []}),
                "capabilities: required: a non-empty array",
            ),
            (
                json!({"description": "d", "capabilities": [{"type": "ftp", "name": "x"}]}),
                "capabilities[0].type: unknown type \"ftp\"",
            ),
            (
                sf(json!({"scope": []})),
                "capabilities[0].scope: must list at least one path glob",
            ),
            (
                sf(json!({"name": "git hub"})),
                "capabilities[0].name: \"git hub\" is not usable as a function name",
            ),
            (
                sf(json!({"methods": ["FETCH"]})),
                "capabilities[0].methods[0]: \"FETCH\" is not one of",
            ),
            (
                sf(json!({"base_url": "not a url"})),
                "capabilities[0].base_url: not an absolute URL",
            ),
            (
                sf(json!({"endpoint": "https://x/y"})),
                "capabilities[0].endpoint: not a field of a scoped-fetch capability",
            ),
            (
                sf(json!({"auth": {"header": "Authorization", "value": "Bearer {bad-name}"}})),
                "capabilities[0].auth.value: secret name \"bad-name\" must match",
            ),
            (
                sf(json!({"auth": {"header": "Authorization", "value": "Bearer fixed"}})),
                "capabilities[0].auth.value: must contain a {SECRET_NAME} placeholder",
            ),
            (
                sf(json!({"rate_limit": {"max_calls": 0, "window_seconds": 60}})),
                "capabilities[0].rate_limit.max_calls: must be 1..1000000",
            ),
            (
                sf(json!({"extra_headers": {"X": "y"}})),
                "capabilities[0].extra_headers: not supported",
            ),
            (
                sf(json!({"surprise": 1})),
                "capabilities[0].surprise: unknown field `surprise`",
            ),
            (
                json!({"description": "d", "capabilities": [{"name": "a.x",
                    "endpoint": "https://h/{id}", "method": "GET", "params": {"id": {"in": "cookie"}}}]}),
                "capabilities[0].params.id.in: \"cookie\" is not one of path, query, body, header",
            ),
            (
                json!({"description": "d", "capabilities": [
                    {"name": "a.get", "endpoint": "https://h/x", "method": "GET"},
                    {"name": "b.get", "endpoint": "https://h/y", "method": "GET"}]}),
                "capabilities[1].name: two capabilities are called \"get\"",
            ),
            (
                json!({"description": "d", "capabilities": [{"name": "x", "method": "GET"}]}),
                "capabilities[0].endpoint: required for an api-gateway capability",
            ),
            (
                json!({"description": "d", "capabilities": "all"}),
                "capabilities: invalid type: string \"all\", expected a sequence",
            ),
        ] {
            let got = err(body.clone());
            assert!(
                got.starts_with(expected),
                "{body}\n got: {got}\nwant: {expected}"
            );
        }
    }

    #[test]
    fn malformed_json_names_the_request_body() {
        let e = parse_request(b"{\"description\": ").expect_err("refused");
        assert!(
            e.to_string().starts_with("request body: not valid JSON"),
            "{e}"
        );
        let e = parse_request(b"{} trailing").expect_err("refused");
        assert!(
            e.to_string().starts_with("request body: not valid JSON"),
            "{e}"
        );
    }

    #[test]
    fn an_intent_maps_to_a_spec_without_capabilities_whose_secrets_are_its_hints() {
        let m = map(
            json!({"intent": [{"name": "github", "goal": "list my repos",
            "docUrls": ["https://docs.example/api.json"], "secretHints": ["GITHUB_TOKEN"],
            "operations": ["GET /user/repos"]}]}),
        )
        .expect("mapped");
        assert!(m.spec.capabilities.is_empty());
        assert_eq!(m.spec.secrets, vec!["GITHUB_TOKEN".to_owned()]);
        assert_eq!(m.spec.description, "list my repos");
        assert_eq!(
            m.spec.intent[0].operations,
            vec!["GET /user/repos".to_owned()]
        );
        let e = map(json!({"description": "d", "intent": [{"name": "github", "goal": "list"}]}))
            .expect_err("no docUrls");
        assert!(
            e.to_string()
                .starts_with("intent[0]: missing field `docUrls`"),
            "{e}"
        );
        let e = map(json!({"description": "d", "capabilities": [{"name": "a"}],
            "intent": [{"name": "g", "goal": "l", "docUrls": ["https://d.example/a"]}]}))
        .expect_err("both");
        assert!(
            e.to_string()
                .starts_with("intent: send intent or capabilities, not both"),
            "{e}"
        );
    }
}
