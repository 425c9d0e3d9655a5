//! The `Permit` resource: what an agent may call, how, and with which of the owner's secrets.
//!
//! Field doc comments become `kubectl explain` text. Validation that must hold for every stored
//! object lives in the schema (OpenAPI + CEL rules with messages) so the API server rejects a
//! bad Permit on `kubectl apply`; the sandbox runner re-checks everything it relies on.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::constants::{DEFAULT_BODY_MAX_BYTES, DEFAULT_VALID_FOR};
use crate::glob::{GLOB_DOUBLE_STAR_MESSAGE, GLOB_DOUBLE_STAR_RULE};
use crate::headers::{
    AUTH_HEADER_MESSAGE, BINDING_HEADERS_MESSAGE, HEADER_PARAMS_MESSAGE, auth_header_rule,
    binding_headers_rule, header_params_rule,
};
use crate::schema::{
    BINDING_HOSTS_WITHIN, BINDINGS_NEED_HOSTS, ENDPOINT_PARAMS_DECLARED, ENDPOINT_PARAMS_ONCE,
    ENDPOINT_PATH_PARAMS_USED, FETCH_FIELDS, FETCH_HOSTS_MESSAGE, FORM_EXCLUSIVE,
    NO_CONTROL_CHARACTERS, SCOPED_FETCH_FIELDS, TYPED_ENDPOINT_FIELDS, URL_ABSOLUTE, URL_HTTPS,
    URL_NO_QUERY, URL_NO_USERINFO, VALID_FOR_AT_MOST_365D, capability_name_rule, fetch_hosts_rule,
};

/// A request by an agent to call HTTP APIs with an owner's secrets. The owner approves or
/// denies it; approval binds the exact spec (`status.specDigest`), so any change to the spec
/// after approval voids it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "oauth3.dev",
    version = "v1alpha1",
    kind = "Permit",
    doc = "A request by an agent to call HTTP APIs with an owner's secrets, approved or denied by the owner. See spec for what it allows and status for the decision.",
    plural = "permits",
    singular = "permit",
    shortname = "pmt",
    category = "oauth3",
    namespaced,
    status = "PermitStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Pending, Approved, Denied, Expired or Revoked"}"#,
    printcolumn = r#"{"name":"Capabilities","type":"integer","jsonPath":".status.capabilityCount","description":"Number of capabilities requested"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.approval.expiresAt","description":"When the approval lapses"}"#,
    printcolumn = r#"{"name":"Proxy","type":"string","jsonPath":".status.proxy.phase","description":"The credential proxy: Starting, Ready or Stopped (spec.proxy)","priority":1}"#,
    printcolumn = r#"{"name":"Description","type":"string","jsonPath":".spec.description","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "self.capabilities.all(c, !has(c.auth) || c.auth.value.findAll('\\\\{[^{}]*\\\\}').all(m, m.substring(1, m.size() - 1) in self.secrets))"
).message("every {NAME} placeholder in capabilities[].auth.value must be listed in spec.secrets").field_path(".secrets"))]
#[x_kube(validation = Rule::new(
    "self.capabilities.all(c, !has(c.cookies) || c.cookies in self.secrets)"
).message("every capabilities[].cookies must be listed in spec.secrets").field_path(".secrets"))]
#[x_kube(validation = Rule::new(
    "self.capabilities.all(c, !has(c.secretBindings) || c.secretBindings.all(b, b.secret in self.secrets))"
).message("every capabilities[].secretBindings[].secret must be listed in spec.secrets").field_path(".secrets"))]
#[x_kube(validation = Rule::new(
    "size(self.capabilities) >= 1 || (has(self.pinnedCode) && size(self.pinnedCode) >= 1) || (has(self.intent) && size(self.intent) >= 1)"
).message("at least one capability is required (none only with pinnedCode: approved code that calls nothing, or with intent: capabilities the operator drafts)").field_path(".capabilities"))]
#[x_kube(validation = Rule::new(
    "!has(self.intent) || size(self.intent) == 0 || size(self.capabilities) == 0"
).message("set intent or capabilities, not both: the operator drafts the capabilities of an intent into status.draft for the owner to approve").field_path(".intent"))]
#[x_kube(validation = Rule::new(
    "!has(self.intent) || self.intent.all(i, !has(i.secretHints) || i.secretHints.all(s, s in self.secrets))"
).message("every intent[].secretHints entry must be listed in spec.secrets").field_path(".secrets"))]
#[serde(rename_all = "camelCase")]
pub struct PermitSpec {
    /// What the agent wants to do and why, in the agent's words. Shown to the approver
    /// verbatim next to the exact rules below.
    #[schemars(length(min = 1, max = 2000))]
    pub description: String,

    /// The calls the agent may make. Three forms: scoped fetch (`baseUrl` + `paths` +
    /// `methods`) and typed endpoint (`endpoint` + `method` + `params`) each become one async
    /// JavaScript function named `name`; fetch (`hosts` + `methods`, optional `paths` and
    /// `secretBindings`) lets the code's own `fetch()` reach those hosts. Names are unique. At
    /// least one, except under `pinnedCode` (approved code that calls nothing, only computes
    /// on its args).
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub capabilities: Vec<Capability>,

    /// Names of the owner's secrets the capabilities may inject, in environment-variable
    /// style (e.g. `GITHUB_TOKEN`: a capital letter first, then capitals, digits and `_`, ending
    /// in a capital or digit). Each refers to a sealed Secret (type `oauth3.dev/sealed`) in this
    /// namespace whose name is the lower-cased secret name with `_` replaced by `-`
    /// (`github-token`). Only these are ever unsealed, and only inside the sandbox.
    #[serde(default)]
    #[schemars(length(max = 32), inner(pattern(r"^[A-Z]([A-Z0-9_]{0,61}[A-Z0-9])?$")))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub secrets: Vec<String>,

    /// How long an approval lasts, as a number and a unit: `s`, `m`, `h` or `d` (e.g. `30m`,
    /// `24h`, `7d`). At most 365 days. Defaults to 24h.
    #[serde(default = "default_valid_for")]
    #[schemars(length(max = 16), pattern(r"^[1-9][0-9]{0,5}(s|m|h|d)$"))]
    #[x_kube(validation = Rule::new(VALID_FOR_AT_MOST_365D).message("must be at most 365 days (365d, 8760h, 525600m or 31536000s)"))]
    pub valid_for: String,

    /// The most Executions that may run under one approval. Unset means no cap beyond rate
    /// limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_executions: Option<i64>,

    /// Whether each new piece of code needs the owner's approval too. `none`: any code may use
    /// the approved capabilities. `perCode`: every new code digest (sha256 of
    /// `Execution.spec.code`) is shown to the owner, who trusts it once, for 24h, or always.
    #[serde(default)]
    pub code_review: CodeReview,

    /// Evidence every result must carry. `tdx`: an Execution whose result is not backed by a
    /// TDX quote (from the runner's quote provider, over the result's statement) ends `Failed`
    /// with reason `NotAttested`, its result withheld. Unset: results are kept either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_attestation: Option<RequiredAttestation>,

    /// The only code that may run under this Permit, by digest (`sha256:<64 hex>` of
    /// `Execution.spec.code`, as `kubectl oauth3 logs` and `status.codeDigest` show it). Set:
    /// the owner approves these exact pieces of code with the spec, and an Execution with any
    /// other code ends `Denied` (`CodeNotPinned`) before a sandbox starts. Empty: any code
    /// (subject to `codeReview`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(pattern(r"^sha256:[0-9a-f]{64}$")))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub pinned_code: Vec<String>,

    /// Rules every Execution's `args` must satisfy, checked before a sandbox starts: an
    /// Execution whose args break one ends `Failed` (`ArgsRefused`, naming the arg and the
    /// rule). Each rule is about one top-level key of `args` and is either a `regex` the
    /// whole value must match or an `op` with a `value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub arg_rules: Vec<ArgRule>,

    /// Constraints the agent stated that oauth3 cannot check (natural language, e.g. "only
    /// public repositories"). Shown to the owner marked NOT ENFORCED; they change nothing
    /// about what may run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 500)))]
    pub unenforced_constraints: Vec<String>,

    /// What the agent wants to do, instead of `capabilities`: each intent states a goal, the
    /// API's documentation and the secrets it needs. The operator's drafter (trusted: it reads
    /// only the goal and the documents, fetched from the admin's allowed doc hosts) proposes
    /// the capabilities in `status.draft`; the owner approves the Permit with the drafted
    /// capabilities, and the sandbox runs exactly those. The agent never writes the draft.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub intent: Vec<Intent>,

    /// Calls without code: with `enabled: true`, the approved capabilities may also be called
    /// directly (by SDKs, IDEs, agent frameworks) through a long-running credential proxy in
    /// the TEE, with the same policy, credential injection and rate limits, by the `callers`
    /// named here only. The owner approves this with the rest of the spec. Unset: only
    /// Executions run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
}

/// The credential proxy of a Permit (`spec.proxy`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || size(self.callers) >= 1").message("spec.proxy.callers must name at least one caller when the proxy is enabled").field_path(".callers"))]
pub struct ProxySpec {
    /// Whether the proxy runs once the Permit is approved.
    #[serde(default)]
    pub enabled: bool,

    /// Kubernetes user names that may call (as a TokenReview reports them, e.g.
    /// `system:serviceaccount:agents:coder`). Each also needs RBAC `create` on
    /// `permits/proxy` for this Permit. The owner sees exactly these.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub callers: Vec<String>,

    /// Most calls in flight at once; further calls get HTTP 429 (1 to 10000; default 64).
    #[serde(default = "default_max_concurrent_calls")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent_calls: u32,

    /// Time without a call after which the proxy stops (a number and s, m, h or d; default
    /// 15m).
    #[serde(default = "default_idle_timeout")]
    #[schemars(length(max = 16), pattern(r"^[1-9][0-9]{0,5}(s|m|h|d)$"))]
    pub idle_timeout: String,
}

fn default_max_concurrent_calls() -> u32 {
    64
}

fn default_idle_timeout() -> String {
    "15m".to_owned()
}

/// One goal of an agent (`spec.intent[]`), drafted into capabilities by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    /// The capability name (a JavaScript identifier) the drafted capability gets; with several
    /// operations, each capability is this name followed by the operation's own name.
    #[schemars(length(min = 1, max = 40), pattern(r"^[A-Za-z_$][A-Za-z0-9_$]*$"))]
    pub name: String,

    /// What the agent wants to do, in its words (`create issues on amiller/test`). Shown to
    /// the owner; the `llm` drafter reads it, the `openapi` drafter uses it only to allow
    /// write methods when `operations` names none.
    #[schemars(length(min = 1, max = 1000))]
    pub goal: String,

    /// The API's machine-readable description (OpenAPI 3.x or Swagger 2 JSON), by https URL.
    /// Fetched only from the doc hosts the cluster admin allows (`--draft-doc-hosts`), never
    /// from private, loopback or metadata addresses.
    #[schemars(length(min = 1, max = 4), inner(length(min = 1, max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(u, u.startsWith('https://') || u.startsWith('http://'))").message("each docUrls entry must be an http(s) URL"))]
    pub doc_urls: Vec<String>,

    /// The secrets (listed in `spec.secrets`) the drafted capabilities may inject as their
    /// credential; the first is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), inner(pattern(r"^[A-Z]([A-Z0-9_]{0,61}[A-Z0-9])?$")))]
    pub secret_hints: Vec<String>,

    /// The operations wanted, each an operationId (`issues/create`), `METHOD /path` as the
    /// document writes it (`POST /repos/{owner}/{repo}/issues`) or `tag:NAME` (every
    /// operation with that tag). The `openapi` drafter needs them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 300)))]
    pub operations: Vec<String>,

    /// Fixed values of path parameters (`owner: amiller`): each becomes a literal path segment
    /// of the drafted endpoint, so the code cannot choose another.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[A-Za-z0-9._~-]+$"}))]
    pub constraints: BTreeMap<String, String>,
}

/// The capabilities the operator's drafter proposed for `spec.intent` (`status.draft`),
/// written only by the operator. The owner approves the Permit with these capabilities in
/// place of `spec.capabilities`; `status.specDigest` covers them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Draft {
    /// Which drafter proposed it: `openapi` or `llm`.
    pub drafter: String,
    /// The digest of the spec (with its intent) the draft was made for; a spec change makes a
    /// new draft.
    pub source_digest: String,
    /// The proposed capabilities; empty when the draft failed (see `errors`).
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub capabilities: Vec<Capability>,
    /// Which document (and operation) each capability came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub sources: Vec<DraftSource>,
    /// The documents the drafter read, with the SHA-256 of their bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub documents: Vec<DraftDocument>,
    /// Why the drafter proposed what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    /// What the drafter chose not to allow (narrowed or refused), in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub not_allowed: Vec<String>,
    /// Why the draft failed, each naming the field and the rule; a draft with errors is
    /// never approved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub errors: Vec<String>,
    /// When the draft was made.
    pub at: Time,
}

/// Where one drafted capability came from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DraftSource {
    /// The drafted capability's name.
    pub capability: String,
    /// The document's URL.
    pub document: String,
    /// The operation in it (`issues/create: POST /repos/{owner}/{repo}/issues`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// A document a drafter read.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DraftDocument {
    /// Its URL.
    pub url: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
}

impl Permit {
    /// The spec the owner approves and the runner enforces: the spec itself, or for a spec
    /// with `intent`, the spec with the capabilities of a successful `status.draft` made for
    /// this very spec (none otherwise: nothing can be approved or run until a draft is made).
    /// Every digest, description and bundle is computed from this.
    pub fn effective_spec(&self) -> std::borrow::Cow<'_, PermitSpec> {
        if self.spec.intent.is_empty() {
            return std::borrow::Cow::Borrowed(&self.spec);
        }
        let mut spec = self.spec.clone();
        spec.capabilities = self
            .usable_draft()
            .map(|d| d.capabilities.clone())
            .unwrap_or_default();
        std::borrow::Cow::Owned(spec)
    }

    /// The draft in status if it was made for the current spec and succeeded.
    pub fn usable_draft(&self) -> Option<&Draft> {
        let draft = self.status.as_ref()?.draft.as_ref()?;
        let current = crate::digest::spec_digest(&self.spec).ok()?;
        (draft.source_digest == current
            && draft.errors.is_empty()
            && !draft.capabilities.is_empty())
        .then_some(draft)
    }
}

/// A rule on one argument of every Execution (`spec.argRules[]`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.regex) != has(self.op)").message("set exactly one of regex or op")
)]
#[serde(rename_all = "camelCase")]
pub struct ArgRule {
    /// The top-level key of `args` the rule is about. The arg must be present.
    #[schemars(length(min = 1, max = 63), pattern(r"^[A-Za-z_][A-Za-z0-9_-]*$"))]
    pub arg: String,

    /// A regular expression (Rust `regex` syntax) the whole value must match: it is anchored at
    /// both ends. Numbers and booleans are matched as their JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub regex: Option<String>,

    /// A comparison with `value`: `eq`, `ne`, `lt`, `le`, `gt`, `ge` (numbers, or strings
    /// that are numbers), `in` / `notIn` (`value` is a list), `prefix` / `suffix` (strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<ArgOp>,

    /// What `op` compares with (required with `op`: a rule without it refuses every run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::execution::any_json")]
    pub value: Option<serde_json::Value>,

    /// Why the rule exists, in the requester's words; shown to the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub rationale: Option<String>,
}

/// The comparison of an [`ArgRule`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub enum ArgOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Prefix,
    Suffix,
}

/// The attestation a Permit requires of every result.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RequiredAttestation {
    /// A TDX quote over the result's statement digest.
    Tdx,
}

fn default_valid_for() -> String {
    DEFAULT_VALID_FOR.to_owned()
}

/// One capability: what the sandboxed code may call.
///
/// Scoped fetch (`baseUrl` set) is called as `name(method, path, {query, body, headers})`;
/// typed endpoint (`endpoint` set) as `name(pathParam1, pathParam2, ..., {otherParams})`;
/// fetch (`hosts` set) through the global `fetch(url, init)` of the code, to those hosts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new(FORM_EXCLUSIVE).message("set exactly one of baseUrl (scoped fetch), endpoint (typed endpoint) or hosts (fetch)"),
    validation = Rule::new(FETCH_FIELDS).message("a fetch capability (hosts) needs methods and must not set method, params, auth or cookies (its secrets are sent only where secretBindings allow)"),
    validation = Rule::new(BINDINGS_NEED_HOSTS).message("secretBindings belong to fetch capabilities (hosts); scoped-fetch and typed-endpoint capabilities inject secrets with auth").field_path(".secretBindings"),
    validation = Rule::new(BINDING_HOSTS_WITHIN).message("every secretBindings[].hosts entry must be one of the capability's hosts").field_path(".secretBindings"),
    validation = Rule::new(capability_name_rule()).message("must not be a JavaScript reserved word or a name the sandbox defines (a global such as args, console, Object or parseInt, or an Object.prototype property such as __proto__, constructor or toString)").field_path(".name"),
    validation = Rule::new(SCOPED_FETCH_FIELDS).message("a scoped-fetch capability (baseUrl) needs paths and methods and must not set method or params"),
    validation = Rule::new(TYPED_ENDPOINT_FIELDS).message("a typed-endpoint capability (endpoint) needs method and must not set paths, methods or query"),
    validation = Rule::new(ENDPOINT_PARAMS_DECLARED).message("every {placeholder} in endpoint must be declared in params with in: path").field_path(".endpoint"),
    validation = Rule::new(ENDPOINT_PATH_PARAMS_USED).message("every param with in: path must appear as {name} in endpoint").field_path(".params"),
    validation = Rule::new(ENDPOINT_PARAMS_ONCE).message("each {placeholder} may appear only once in endpoint (a path param is one positional argument)").field_path(".endpoint"),
    validation = Rule::new("!has(self.cookies) || !has(self.auth) || !has(self.auth.header) || self.auth.header.lowerAscii() != 'cookie'").message("set cookies or an auth.header of Cookie, not both").field_path(".cookies")
)]
#[serde(rename_all = "camelCase")]
pub struct Capability {
    /// The JavaScript function name: a letter, `_` or `$` first, then letters, digits, `_`,
    /// `$`; not a JavaScript reserved word and not a sandbox global (`args`, `console`, ...).
    /// A fetch capability is no function: its name labels its calls in the call log and rate
    /// limits (`fetch` itself is a fine name for one).
    #[schemars(length(min = 1, max = 64), pattern(r"^[A-Za-z_$][A-Za-z0-9_$]*$"))]
    pub name: String,

    /// Fetch: the hosts the code's `fetch()` may reach, each a lower-case host name or IP
    /// address with an optional `:port` (`api.github.com`, `127.0.0.1:8443`). Over https
    /// (port 443 unless written); http only to loopback hosts. A request to any other host,
    /// or to one of these written differently (a trailing dot, userinfo), is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 261)))]
    #[x_kube(validation = Rule::new(fetch_hosts_rule()).message(FETCH_HOSTS_MESSAGE))]
    pub hosts: Vec<String>,

    /// Fetch: which of `spec.secrets` the code may send, to which of `hosts` and where in the
    /// request. The code reads a secret as `Deno.env.get('NAME')` or `process.env.NAME` and
    /// gets an opaque placeholder; the runner puts the real value in its place only in a
    /// request the rest of the capability allowed, to a host and in a part (`in`) the binding
    /// names. A placeholder anywhere else refuses the request before anything is sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub secret_bindings: Vec<SecretBinding>,

    /// Scoped fetch: the origin (and optional path prefix) every call is resolved against,
    /// e.g. `https://api.github.com`. https only; http only for loopback (127.0.0.0/8, ::1,
    /// localhost) during development. No user:password@, query or fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(
        validation = Rule::new(URL_ABSOLUTE).message("must be an absolute URL with a host, e.g. https://api.example.com"),
        validation = Rule::new(URL_HTTPS).message("must use https (http is allowed only for loopback: 127.0.0.0/8, ::1, localhost)"),
        validation = Rule::new(URL_NO_USERINFO).message("must not contain userinfo (user:password@)"),
        validation = Rule::new(URL_NO_QUERY).message("must not contain a query (?) or fragment (#)")
    )]
    pub base_url: Option<String>,

    /// Scoped fetch and fetch: globs on the canonical request path (relative to the host;
    /// for fetch, unset means every path, `/**`). Each starts
    /// with `/`. A whole segment `**` matches any number of segments, including none
    /// (`/repos/o/r/issues/**` is `/repos/o/r/issues` and everything below it); a whole segment
    /// `*` exactly one segment; a `*` inside a segment (`*.json`) any characters within that one
    /// segment. `**` inside a segment (`issues**`, `***`) is refused, as are `.`/`..` segments
    /// (raw or percent-encoded) and backslashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 256), pattern(r"^/[^?#\\\x00-\x20\x7f]*$"))
    )]
    #[x_kube(
        validation = Rule::new(
        "self.all(p, !p.matches('(?i)(^|/)(\\\\.|%2e){1,2}(/|$)'))"
    ).message("paths must not contain . or .. segments (raw or percent-encoded)"),
        validation = Rule::new(GLOB_DOUBLE_STAR_RULE).message(GLOB_DOUBLE_STAR_MESSAGE)
    )]
    pub paths: Vec<String>,

    /// Scoped fetch and fetch: HTTP methods allowed, upper case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub methods: Vec<HttpMethod>,

    /// Scoped fetch and fetch: which query parameters the code may send. Parameters not
    /// listed are rejected. Unset: none at all for scoped fetch; any for fetch (whose code
    /// writes its own URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<QueryRules>,

    /// Rules for request bodies (both forms). Unset: JSON bodies of any shape up to 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyRules>,

    /// How a secret is injected into every request of this capability. The agent's own
    /// credential headers are always dropped, never merged with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// A secret holding a cookie jar (as `POST /cookies/upload` of the agent gateway seals
    /// it): on every request the runner sends, as the `Cookie` header, only the jar's cookies
    /// that RFC 6265 sends to that URL: domain-match (the cookie's domain or its subdomains,
    /// never a mere suffix such as `evilexample.com` for `example.com`; host-only cookies to
    /// their host alone), path-match, `Secure` ones only over https, none past its expiry.
    /// Must be listed in `spec.secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[A-Z]([A-Z0-9_]{0,61}[A-Z0-9])?$")
    )]
    pub cookies: Option<String>,

    /// At most `requests` calls per `perSeconds`, counted per Permit across Executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// Link to the API's documentation, shown to the approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(URL_ABSOLUTE).message("must be an absolute URL with a host"))]
    pub doc_url: Option<String>,

    /// Typed endpoint: URL template with `{param}` placeholders in the path, e.g.
    /// `https://api.github.com/repos/{owner}/{repo}/issues`. Same scheme and host rules as
    /// baseUrl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(
        validation = Rule::new(URL_ABSOLUTE).message("must be an absolute URL with a host, e.g. https://api.example.com/v1/{id}"),
        validation = Rule::new(URL_HTTPS).message("must use https (http is allowed only for loopback: 127.0.0.0/8, ::1, localhost)"),
        validation = Rule::new(URL_NO_USERINFO).message("must not contain userinfo (user:password@)"),
        validation = Rule::new(URL_NO_QUERY).message("must not contain a query (?) or fragment (#); declare query parameters in params"),
        validation = Rule::new("!self.matches('(?i)/(\\\\.|%2e){1,2}(/|$)')").message("must not contain . or .. path segments")
    )]
    pub endpoint: Option<String>,

    /// Typed endpoint: the one HTTP method it calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,

    /// Typed endpoint: the function's parameters and where each goes. Path parameters are
    /// positional arguments in the order they appear in `endpoint`; the others are fields of
    /// a trailing options object.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new(header_params_rule()).message(HEADER_PARAMS_MESSAGE))]
    pub params: BTreeMap<String, ParamSpec>,
}

/// The two forms a capability takes, as a typed view of [`Capability`]'s optional fields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CapabilityForm<'a> {
    /// `name(method, path, {query, body, headers})` under `base_url`, limited by path globs.
    ScopedFetch {
        /// Origin and optional path prefix.
        base_url: &'a str,
        /// Path globs.
        paths: &'a [String],
        /// Allowed methods.
        methods: &'a [HttpMethod],
    },
    /// The code's own `fetch()` to `hosts`, limited by methods and path globs.
    Fetch {
        /// Hosts (`host` or `host:port`).
        hosts: &'a [String],
        /// Path globs (empty: every path).
        paths: &'a [String],
        /// Allowed methods.
        methods: &'a [HttpMethod],
        /// Where each secret's placeholder may be replaced by the secret.
        bindings: &'a [SecretBinding],
    },
    /// `name(pathParams..., {others})` against a single URL template and method.
    TypedEndpoint {
        /// URL template with `{param}` placeholders.
        endpoint: &'a str,
        /// The method.
        method: HttpMethod,
        /// Parameter declarations.
        params: &'a BTreeMap<String, ParamSpec>,
    },
}

impl Capability {
    /// The capability's form, or `None` if it has none or several of `baseUrl`, `endpoint`
    /// and `hosts`, which the schema rejects.
    pub fn form(&self) -> Option<CapabilityForm<'_>> {
        if !self.hosts.is_empty() {
            return (self.base_url.is_none() && self.endpoint.is_none()).then_some(
                CapabilityForm::Fetch {
                    hosts: &self.hosts,
                    paths: &self.paths,
                    methods: &self.methods,
                    bindings: &self.secret_bindings,
                },
            );
        }
        match (&self.base_url, &self.endpoint, self.method) {
            (Some(base_url), None, _) => Some(CapabilityForm::ScopedFetch {
                base_url,
                paths: &self.paths,
                methods: &self.methods,
            }),
            (None, Some(endpoint), Some(method)) => Some(CapabilityForm::TypedEndpoint {
                endpoint,
                method,
                params: &self.params,
            }),
            _ => None,
        }
    }
}

/// Where a fetch capability may send one secret (`capabilities[].secretBindings[]`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretBinding {
    /// The secret (listed in `spec.secrets`) whose placeholder the code may send.
    #[schemars(
        length(min = 1, max = 63),
        pattern(r"^[A-Z]([A-Z0-9_]{0,61}[A-Z0-9])?$")
    )]
    pub secret: String,

    /// The hosts it may be sent to, each one of the capability's `hosts`.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 261)))]
    pub hosts: Vec<String>,

    /// The parts of the request the secret may be in: `header` (one of `headers`, including
    /// `Authorization: Basic` built with `btoa`), `query` (a query parameter's value) and
    /// `body`. Defaults to `[header]`. Never the URL path.
    #[serde(rename = "in", default = "default_binding_in")]
    #[schemars(length(min = 1, max = 3))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub locations: Vec<SecretLocation>,

    /// With `in: header`, the request headers that may carry it (any case). Defaults to
    /// `[Authorization]`; APIs that take a key in their own header name it
    /// (`[X-Api-Key]`). Never a header the runner sets itself (`Host`, `Content-Length`,
    /// forwarding, `Proxy-*`, ...).
    #[serde(default = "default_binding_headers")]
    #[schemars(
        length(min = 1, max = 8),
        inner(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))
    )]
    #[x_kube(validation = Rule::new(binding_headers_rule()).message(BINDING_HEADERS_MESSAGE))]
    pub headers: Vec<String>,
}

fn default_binding_in() -> Vec<SecretLocation> {
    vec![SecretLocation::Header]
}

fn default_binding_headers() -> Vec<String> {
    vec!["Authorization".to_owned()]
}

/// A part of a request a bound secret may be sent in.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum SecretLocation {
    Header,
    Query,
    Body,
}

impl SecretLocation {
    /// The word in `in`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Query => "query",
            Self::Body => "body",
        }
    }
}

/// HTTP methods a capability may allow.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[allow(clippy::upper_case_acronyms, missing_docs)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
}

impl HttpMethod {
    /// The method's canonical upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GET => "GET",
            Self::HEAD => "HEAD",
            Self::POST => "POST",
            Self::PUT => "PUT",
            Self::PATCH => "PATCH",
            Self::DELETE => "DELETE",
            Self::OPTIONS => "OPTIONS",
        }
    }

    /// Parses a method name case-insensitively (`get` and `GET` are the same method).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::GET,
            Self::HEAD,
            Self::POST,
            Self::PUT,
            Self::PATCH,
            Self::DELETE,
            Self::OPTIONS,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which query parameters a scoped-fetch capability accepts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueryRules {
    /// Parameter names the code may send; any other parameter rejects the call.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    pub allow: Vec<String>,
}

/// Rules for request bodies.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BodyRules {
    /// If set, only these keys may appear in a JSON object body. Nested keys are written as
    /// dotted paths (`labels`, `author.name`); a listed key allows everything beneath it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 256)))]
    pub allow_keys: Option<Vec<String>>,

    /// Keys (dotted paths) that must never appear, checked after `allowKeys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(min = 1, max = 256)))]
    pub deny_keys: Vec<String>,

    /// Largest body in bytes. Defaults to 65536; at most 10 MiB.
    #[serde(default = "default_body_max")]
    #[schemars(range(min = 0, max = 10_485_760))]
    pub max_bytes: i32,

    /// Allow bodies that are not JSON (sent as-is, only size-checked). Off by default: a
    /// body that does not parse as JSON is rejected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_raw: bool,
}

fn default_body_max() -> i32 {
    DEFAULT_BODY_MAX_BYTES
}

/// How a secret is injected into requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.header) != has(self.queryParam)").message("set exactly one of header or queryParam"))]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The header that carries the credential, e.g. `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    #[x_kube(validation = Rule::new(auth_header_rule()).message(AUTH_HEADER_MESSAGE))]
    pub header: Option<String>,

    /// The query parameter that carries the credential, for APIs that want `?key=...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9._~-]+$"))]
    pub query_param: Option<String>,

    /// The value template; `{NAME}` is replaced inside the sandbox by the unsealed secret
    /// `NAME`, which must be listed in `spec.secrets`. E.g. `Bearer {GITHUB_TOKEN}`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(
        validation = Rule::new("self.matches('\\\\{[A-Z][A-Z0-9_]*\\\\}')").message("must contain at least one {SECRET_NAME} placeholder"),
        validation = Rule::new(NO_CONTROL_CHARACTERS).message("must not contain control characters (CR, LF, NUL, tab, ...): it becomes an HTTP header or query value")
    )]
    pub value: String,
}

/// A token-bucket rate limit.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Calls allowed per window; at least 1.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests: i32,
    /// Window length in seconds; at least 1.
    #[schemars(range(min = 1, max = 86_400))]
    pub per_seconds: i32,
}

/// One parameter of a typed endpoint.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParamSpec {
    /// Where the value goes: `path` (a `{placeholder}` in endpoint), `query`, `body` (a key
    /// of the JSON object body) or `header`.
    #[serde(rename = "in")]
    pub location: ParamLocation,

    /// Whether the call fails when the parameter is missing. Path parameters are always
    /// required.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,

    /// Optional regular expression the (string) value must match in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub pattern: Option<String>,
}

/// Where a typed-endpoint parameter is placed in the request.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub enum ParamLocation {
    Path,
    Query,
    Body,
    Header,
}

/// Whether code needs approval as well as the Permit.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum CodeReview {
    /// Any code may use the approved capabilities.
    #[default]
    None,
    /// Each new code digest must be trusted by the owner (once, for 24h, or always).
    PerCode,
}

/// Observed state of a Permit, written only by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PermitStatus {
    /// Where the Permit stands: `Pending`, `Approved`, `Denied`, `Expired` or `Revoked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PermitPhase>,
    /// `sha256:<hex>` of the canonical spec; an approval is valid only for this digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
    /// Number of capabilities, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_count: Option<i32>,
    /// Where the sandbox of an Execution under this Permit may connect, in words, as the
    /// operator enforces it (its `--egress-policy`), e.g. `only api.github.com:443 (by name),
    /// DNS and the operator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The owner's decision, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Usage under the current approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<PermitUsage>,
    /// Code digests the owner trusts (codeReview perCode), newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_code: Vec<TrustedCode>,
    /// The one-time web sign-in an owner asked for on Telegram, if one is outstanding: the
    /// owner's link opens the gateway's approval page and decides without a Kubernetes
    /// token. Only the code's SHA-256 is kept here; the code is only in the owner's chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_sign_in: Option<WebSignIn>,
    /// The capabilities drafted for `spec.intent`, written only by the operator (an agent
    /// has no access to status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<Draft>,
    /// The credential proxy of an approved Permit with `spec.proxy.enabled`: whether it runs,
    /// where it is reached, and why it stopped. Written only by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions (`Ready`, `Approved`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Lifecycle phase of a Permit.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum PermitPhase {
    Pending,
    Approved,
    Denied,
    Expired,
    Revoked,
}

/// An owner's recorded decision on a Permit.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// `Approved`, `Denied` or `Revoked`.
    pub decision: ApprovalDecision,
    /// Who decided (Telegram user id, Kubernetes user name).
    pub by: String,
    /// Through which channel.
    pub via: ApprovalVia,
    /// When the decision was made.
    pub at: Time,
    /// When an approval lapses (`at` + `validFor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// The spec digest the decision applies to.
    pub spec_digest: String,
    /// Why the decision was made when nobody made it by hand (e.g. the owner did not answer
    /// on Telegram before the approval timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An owner's decision on a Permit.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApprovalDecision {
    /// The spec with `specDigest` may be used until `expiresAt`.
    Approved,
    /// The owner refused the spec with `specDigest`.
    Denied,
    /// The owner withdrew an earlier approval; nothing may run until a new approval.
    Revoked,
}

/// The channel an approval came through.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub enum ApprovalVia {
    Telegram,
    Kubectl,
    Web,
}

/// How long a code digest is trusted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TrustLevel {
    /// For one Execution only; no record is kept.
    Once,
    /// For 24 hours.
    #[serde(rename = "24h")]
    Day,
    /// Until revoked.
    Always,
}

/// A code digest the owner trusts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrustedCode {
    /// `sha256:<hex>` of the code.
    pub code_digest: String,
    /// `24h` or `always`.
    pub level: TrustLevel,
    /// Who trusted it.
    pub by: String,
    /// When.
    pub at: Time,
    /// When the trust lapses (level `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// A one-time sign-in link to the web approval page, minted by the Telegram bot for an owner
/// who tapped "Open on the web". The gateway accepts the link's code once, before
/// `expiresAt`, and only for the request it was made for; it records the decision as `by` and
/// clears this record in the same guarded write.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebSignIn {
    /// Lowercase hex SHA-256 of the link's code.
    pub code_sha256: String,
    /// Who asked for the link (`telegram:<user id>`); the decision is recorded as them.
    pub by: String,
    /// What the link decides: the Permit's spec, or a code digest under it.
    pub request: WebSignInRequest,
    /// The spec digest (`Permit`) or code digest (`Code`) the link was made for; a link for
    /// anything else is refused.
    pub digest: String,
    /// When the link lapses.
    pub expires_at: Time,
}

/// What a web sign-in decides.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum WebSignInRequest {
    Permit,
    Code,
}

/// Where a Permit's credential proxy stands (`status.proxy.phase`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyPhase {
    /// Started, not yet answering.
    Starting,
    /// Answering calls at `endpoint`.
    Ready,
    /// Not running: see `reason` (`Revoked`, `Expired`, `Idle`, `Disabled`, `Failed`, ...).
    Stopped,
}

/// The credential proxy of a Permit (`status.proxy`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// `Starting`, `Ready` or `Stopped`.
    pub phase: ProxyPhase,
    /// The URL clients (and the gateway) call, e.g.
    /// `https://oauth3-proxy-openai.agents.svc:8443`; set while `Starting` or `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// PEM certificate the proxy's HTTPS endpoint presents (pod launcher): clients and the
    /// gateway trust exactly this certificate for `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// `pod/<name>` or `process/<pid>` of the running proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// The spec digest the proxy enforces (the approved one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
    /// `sha256:<hex>` of the proxy's callback token (the token itself is only in the proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_digest: Option<String>,
    /// When this proxy was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it stopped (with `phase: Stopped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Time>,
    /// One word for why it stopped or is not ready, e.g. `Revoked`, `Expired`, `Idle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reason in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Usage counters under the current approval.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PermitUsage {
    /// Executions started under the current approval.
    pub executions: i64,
    /// Capability calls made under the current approval.
    pub calls: i64,
    /// Remaining rate-limit tokens per capability at `at`, carried across Executions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_budget: BTreeMap<String, f64>,
    /// When `rateBudget` was measured (the end of the last run that reported it); the next
    /// launch refills each capability's tokens for the time since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_method_parse_is_case_insensitive_and_canonical_upper_case() {
        assert_eq!(HttpMethod::parse("get"), Some(HttpMethod::GET));
        assert_eq!(
            HttpMethod::parse("Patch").map(HttpMethod::as_str),
            Some("PATCH")
        );
        assert_eq!(HttpMethod::parse("TRACE"), None);
        assert_eq!(HttpMethod::parse(""), None);
    }

    #[test]
    fn capability_form_distinguishes_scoped_fetch_and_typed_endpoint() {
        let fetch: Capability = serde_json::from_value(serde_json::json!({
            "name": "gh", "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"]
        }))
        .expect("valid capability");
        assert!(matches!(
            fetch.form(),
            Some(CapabilityForm::ScopedFetch { .. })
        ));

        let typed: Capability = serde_json::from_value(serde_json::json!({
            "name": "createIssue", "endpoint": "https://api.github.com/repos/{o}/issues",
            "method": "POST", "params": {"o": {"in": "path"}}
        }))
        .expect("valid capability");
        match typed.form() {
            Some(CapabilityForm::TypedEndpoint { method, params, .. }) => {
                assert_eq!(method, HttpMethod::POST);
                assert_eq!(params["o"].location, ParamLocation::Path);
            }
            other => panic!("expected typed endpoint, got {other:?}"),
        }

        let neither: Capability =
            serde_json::from_value(serde_json::json!({"name": "x"})).expect("parses");
        assert_eq!(neither.form(), None);
    }

    #[test]
    fn the_effective_spec_of_an_intent_holds_only_a_successful_draft_made_for_this_spec() {
        let spec: PermitSpec = serde_json::from_value(serde_json::json!({
            "description": "d", "capabilities": [], "secrets": ["T"],
            "intent": [{"name": "gh", "goal": "list", "docUrls": ["https://d.example/a.json"], "secretHints": ["T"]}]
        }))
        .expect("spec");
        let cap: Capability = serde_json::from_value(serde_json::json!({
            "name": "gh", "endpoint": "https://api.example.com/x", "method": "GET"
        }))
        .expect("cap");
        let draft = |source: String, errors: Vec<String>| Draft {
            drafter: "openapi".into(),
            source_digest: source,
            capabilities: vec![cap.clone()],
            sources: vec![],
            documents: vec![],
            rationale: None,
            not_allowed: vec![],
            errors,
            at: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        };
        let mut p = Permit::new("p", spec.clone());
        assert!(p.effective_spec().capabilities.is_empty(), "no draft yet");
        let digest = crate::spec_digest(&spec).expect("digest");
        p.status = Some(PermitStatus {
            draft: Some(draft(digest.clone(), vec![])),
            ..Default::default()
        });
        assert_eq!(p.effective_spec().capabilities, vec![cap.clone()]);
        p.status = Some(PermitStatus {
            draft: Some(draft(digest, vec!["bad".into()])),
            ..Default::default()
        });
        assert!(p.effective_spec().capabilities.is_empty(), "a failed draft");
        p.status = Some(PermitStatus {
            draft: Some(draft("sha256:other".into(), vec![])),
            ..Default::default()
        });
        assert!(
            p.effective_spec().capabilities.is_empty(),
            "a draft of another spec"
        );
        let plain = Permit::new(
            "q",
            PermitSpec {
                intent: vec![],
                capabilities: vec![cap.clone()],
                ..spec
            },
        );
        assert_eq!(plain.effective_spec().capabilities, vec![cap]);
    }

    #[test]
    fn permit_spec_defaults_are_applied_on_deserialise() {
        let spec: PermitSpec = serde_json::from_value(serde_json::json!({
            "description": "d",
            "capabilities": [{"name": "gh", "baseUrl": "https://a.example", "paths": ["/"], "methods": ["GET"]}]
        }))
        .expect("valid spec");
        assert_eq!(spec.valid_for, "24h");
        assert_eq!(spec.code_review, CodeReview::None);
        assert!(spec.secrets.is_empty());
    }
}
