//! The policy engine: compiles a Permit's capabilities once and decides every call from
//! JavaScript, purely (no IO, no clock except the injected one of [`RateLimiter`]).
//!
//! # JavaScript call convention
//!
//! **Scoped fetch** (`baseUrl` set): `name(method, path, {query, body, headers})`.
//! - `method` is case-insensitive (`get` is `GET`) and must be one of `methods`.
//! - `path` is relative to the path of `baseUrl`: with `baseUrl: https://h/v3`, the call
//!   `name('GET', '/messages')` requests `https://h/v3/messages`. The globs in `paths` are
//!   matched against this *relative* path (`/messages`), so a Permit reads the same whatever
//!   prefix its `baseUrl` carries. `path` must start with `/` and must not contain `?`, `#`,
//!   backslashes (raw or `%5c`), encoded slashes (`%2f`), `.`/`..` segments (raw or `%2e`),
//!   empty segments (`//`), control characters or malformed percent escapes.
//! - `query` is an object whose values are strings, numbers, booleans or arrays of them; every
//!   name must be listed in `query.allow`.
//! - `body`: an object or array is sent as JSON; a string must parse as JSON unless
//!   `body.allowRaw` (then it is sent as-is); anything else is rejected. JSON object keys are
//!   checked recursively as dotted paths against `allowKeys` (a listed key allows everything
//!   beneath it; arrays of objects are checked element by element) and `denyKeys`; the
//!   serialized body may not exceed `maxBytes` (default 65536).
//! - `headers` is an object of string values. Headers that carry credentials or change the
//!   request's meaning are **rejected** (not silently dropped, so an agent learns why its call
//!   failed): `Authorization`, `Proxy-*`, `Cookie`, `Set-Cookie`, `Host`,
//!   `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`, `X-Original-URL`,
//!   `X-Rewrite-URL`, `X-Real-IP`, `X-Forwarded-*`, `Forwarded`, hop-by-hop headers (`Connection`, `Keep-Alive`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`), `Content-Length`, `Expect`, the capability's own auth
//!   header, and `Content-Type` unless `body.allowRaw`. Names or values containing CR, LF or
//!   NUL are rejected.
//!
//! **Typed endpoint** (`endpoint` set): `name(p1, p2, ..., {others})`. Path parameters are
//! positional, in the order their `{placeholder}` appears in `endpoint`; then an optional
//! object holds the query, body and header parameters. Missing required parameters, unknown
//! parameters and values not matching `pattern` (a full match) are denials. Each path value
//! (a string or number) is percent-encoded as exactly one segment; the values `.` and `..`
//! and the empty string are rejected.
//!
//! Every accepted call becomes a [`PreparedRequest`] that is exactly what will be sent; the
//! URL is canonicalised with the `url` crate and its scheme, host and port must equal the
//! capability's. Every denial names the rule and what is allowed, e.g.
//! `method DELETE not allowed for github; allowed: GET, POST`.

mod body;
mod headers;
mod path;
mod rate;
mod typed;
mod web;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use oauth3_crds::{AuthSpec, BodyRules, Capability, CapabilityForm, HttpMethod, PermitSpec};
use serde_json::Value;
use url::Url;

pub use rate::RateLimiter;

use path::Glob;
use typed::TypedEndpoint;
use web::FetchRules;
pub(crate) use web::{CompiledBinding, authority};

/// Why a Permit could not be compiled into a [`Policy`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    /// Two capabilities share a name.
    #[error("capability {0} is defined twice")]
    DuplicateName(String),
    /// A capability sets neither or both of `baseUrl` and `endpoint`.
    #[error("capability {0} must set exactly one of baseUrl or endpoint (endpoint needs method)")]
    NoForm(String),
    /// `baseUrl` or `endpoint` is not an acceptable absolute URL.
    #[error("capability {name}: parsing its URL failed: {reason}")]
    BadUrl {
        /// Capability name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `auth` cannot be injected as written.
    #[error("capability {name}: auth.{field}: {reason}")]
    BadAuth {
        /// Capability name.
        name: String,
        /// `header` or `value`.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A path glob is malformed.
    #[error("capability {name}: compiling path glob {glob} failed: {reason}")]
    BadGlob {
        /// Capability name.
        name: String,
        /// The glob.
        glob: String,
        /// What is wrong.
        reason: String,
    },
    /// A typed-endpoint parameter declaration is unusable.
    #[error("capability {name}: compiling param {param} failed: {reason}")]
    BadParam {
        /// Capability name.
        name: String,
        /// Parameter name.
        param: String,
        /// What is wrong.
        reason: String,
    },
}

/// A call the policy refused, in words an agent can act on. Never contains a secret: the
/// policy never sees one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The capability called.
    pub capability: String,
    /// The method as understood (upper case), or as given when it was not understood.
    pub method: String,
    /// The canonical URL when one was built, else what the agent asked for.
    pub url: String,
    /// The rule that refused the call and what it allows.
    pub reason: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Denial {}

/// An allowed call: exactly what will be sent (before credentials are injected).
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRequest {
    /// The capability called.
    pub capability: String,
    /// The method.
    pub method: HttpMethod,
    /// The canonical, final URL (no credentials).
    pub url: Url,
    /// Agent headers that passed the header rules.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Option<Vec<u8>>,
    /// The body's content type.
    pub content_type: Option<String>,
    /// How to inject the credential; the fetch fills in the template.
    pub auth: Option<AuthSpec>,
    /// The cookie-jar secret whose matching cookies go in the `Cookie` header.
    pub cookies: Option<String>,
}

/// The body rules in force for a capability (the Permit's, or the defaults).
#[derive(Debug, Clone)]
pub(crate) struct CompiledBody {
    allow_keys: Option<Vec<String>>,
    deny_keys: Vec<String>,
    max_bytes: usize,
    allow_raw: bool,
}

impl CompiledBody {
    fn from_rules(rules: Option<&BodyRules>) -> Self {
        match rules {
            Some(r) => Self {
                allow_keys: r.allow_keys.clone(),
                deny_keys: r.deny_keys.clone(),
                max_bytes: usize::try_from(r.max_bytes).unwrap_or(0),
                allow_raw: r.allow_raw,
            },
            None => Self {
                allow_keys: None,
                deny_keys: Vec::new(),
                max_bytes: usize::try_from(oauth3_crds::constants::DEFAULT_BODY_MAX_BYTES)
                    .unwrap_or(65_536),
                allow_raw: false,
            },
        }
    }
}

/// The scoped-fetch form, compiled.
#[derive(Debug, Clone)]
struct ScopedFetchRules {
    base: Url,
    /// The base path without a trailing slash (`""` for `https://h` or `https://h/`).
    base_path: String,
    globs: Vec<Glob>,
    methods: BTreeSet<HttpMethod>,
    query_allow: BTreeSet<String>,
}

#[derive(Debug, Clone)]
enum Form {
    Scoped(ScopedFetchRules),
    Typed(TypedEndpoint),
    Fetch(FetchRules),
}

#[derive(Debug, Clone)]
struct CompiledCapability {
    name: String,
    form: Form,
    body: CompiledBody,
    auth: Option<AuthSpec>,
    cookies: Option<String>,
    rate_limit: Option<(f64, f64)>,
    /// Lower-cased header names the agent may not send for this capability.
    auth_header: Option<String>,
    loopback: bool,
}

impl CompiledCapability {
    /// The one origin of a scoped-fetch or typed-endpoint capability (a fetch capability has
    /// several hosts and none).
    fn origin_url(&self) -> Option<&Url> {
        match &self.form {
            Form::Scoped(s) => Some(&s.base),
            Form::Typed(t) => Some(t.base()),
            Form::Fetch(_) => None,
        }
    }
}

/// How a capability is called, for clients that send HTTP requests instead of calling it from
/// code (the credential proxy, see [`oauth3_protocol::proxy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallShape {
    /// `baseUrl`: `name(method, path, {query, body, headers})`.
    Scoped,
    /// `endpoint`: `name(p1, ..., {others})`, the path parameters in this order.
    Typed {
        /// The endpoint's method.
        method: HttpMethod,
        /// Path parameter names in the order they are passed.
        path_params: Vec<String>,
    },
    /// `hosts`: a `fetch()` capability.
    Fetch,
}

/// A compiled Permit: decides every capability call.
#[derive(Debug, Clone)]
pub struct Policy {
    caps: Vec<CompiledCapability>,
    /// Capability name to position in `caps` (hashed: one lookup per call, whatever the
    /// Permit's size).
    index: HashMap<String, usize>,
}

/// Parses `baseUrl`/`endpoint`: absolute, http(s), a host, no userinfo, query or fragment;
/// plain http only for loopback.
pub(crate) fn parse_origin(name: &str, raw: &str) -> Result<Url, PolicyError> {
    let bad = |reason: &str| PolicyError::BadUrl {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if url.host().is_none() {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("userinfo is not allowed"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("query and fragment are not allowed"));
    }
    match url.scheme() {
        "https" => {}
        "http" if host_is_loopback(&url) => {}
        "http" => return Err(bad("http is allowed only for loopback hosts")),
        _ => return Err(bad("scheme must be https")),
    }
    Ok(url)
}

/// Whether the URL's host is loopback (127.0.0.0/8, ::1, `localhost`).
pub(crate) fn host_is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => false,
    }
}

/// Checks `auth` by the schema's rules: a header the runner does not set itself, and a value
/// with no control characters (it becomes a header or query value).
fn check_auth(cap: &Capability) -> Result<(), PolicyError> {
    let Some(auth) = &cap.auth else {
        return Ok(());
    };
    let bad = |field, reason| PolicyError::BadAuth {
        name: cap.name.clone(),
        field,
        reason,
    };
    if let Some(why) = auth
        .header
        .as_deref()
        .and_then(oauth3_crds::headers::auth_header_refusal)
    {
        return Err(bad("header", why));
    }
    if auth.value.chars().any(char::is_control) {
        return Err(bad(
            "value",
            "must not contain control characters (CR, LF, NUL, tab, ...)",
        ));
    }
    Ok(())
}

fn compile_capability(cap: &Capability) -> Result<CompiledCapability, PolicyError> {
    check_auth(cap)?;
    let auth_header = cap
        .auth
        .as_ref()
        .and_then(|a| a.header.as_ref())
        .map(|h| h.to_ascii_lowercase());
    let body = CompiledBody::from_rules(cap.body.as_ref());
    let form = match cap.form() {
        Some(CapabilityForm::ScopedFetch {
            base_url,
            paths,
            methods,
        }) => {
            let base = parse_origin(&cap.name, base_url)?;
            let base_path = base.path().trim_end_matches('/').to_owned();
            let globs = paths
                .iter()
                .map(|g| {
                    Glob::compile(&base, &base_path, g).map_err(|reason| PolicyError::BadGlob {
                        name: cap.name.clone(),
                        glob: g.clone(),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Form::Scoped(ScopedFetchRules {
                base,
                base_path,
                globs,
                methods: methods.iter().copied().collect(),
                query_allow: cap
                    .query
                    .as_ref()
                    .map(|q| q.allow.iter().cloned().collect())
                    .unwrap_or_default(),
            })
        }
        Some(CapabilityForm::TypedEndpoint {
            endpoint,
            method,
            params,
        }) => Form::Typed(TypedEndpoint::compile(
            &cap.name,
            endpoint,
            method,
            params,
            auth_header.as_deref(),
        )?),
        Some(CapabilityForm::Fetch {
            hosts,
            paths,
            methods,
            bindings,
        }) => Form::Fetch(FetchRules::compile(
            &cap.name,
            hosts,
            paths,
            methods,
            cap.query.as_ref(),
            bindings,
        )?),
        None => return Err(PolicyError::NoForm(cap.name.clone())),
    };
    let mut compiled = CompiledCapability {
        name: cap.name.clone(),
        form,
        body,
        auth: cap.auth.clone(),
        cookies: cap.cookies.clone(),
        rate_limit: cap.rate_limit.as_ref().map(|r| {
            (
                f64::from(r.requests.max(1)),
                f64::from(r.per_seconds.max(1)),
            )
        }),
        auth_header,
        loopback: false,
    };
    compiled.loopback = compiled.origin_url().is_some_and(host_is_loopback);
    Ok(compiled)
}

fn denial(cap: &str, method: &str, url: &str, reason: impl Into<String>) -> Denial {
    Denial {
        capability: cap.to_owned(),
        method: method.to_owned(),
        url: url.to_owned(),
        reason: reason.into(),
    }
}

fn method_list(methods: &BTreeSet<HttpMethod>) -> String {
    methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Describes a JSON value's type for denial messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Appends query parameters after checking names against `allowed`; values are scalars or
/// arrays of scalars. Every value is checked before any is appended.
pub(crate) fn append_query(
    url: &mut Url,
    name: &str,
    value: &Value,
    cap: &str,
) -> Result<(), String> {
    let items = match value {
        Value::Array(items) => items.as_slice(),
        other => std::slice::from_ref(other),
    };
    if let Some(other) = items
        .iter()
        .find(|v| !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)))
    {
        return Err(format!(
            "query param {name} for {cap} must be a string, number, boolean or an array of them; got {}",
            kind(other)
        ));
    }
    let mut pairs = url.query_pairs_mut();
    for v in items {
        let text: Cow<'_, str> = match v {
            Value::String(s) => Cow::Borrowed(s),
            Value::Number(n) => Cow::Owned(n.to_string()),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            _ => continue,
        };
        pairs.append_pair(name, &text);
    }
    drop(pairs);
    Ok(())
}

impl Policy {
    /// Compiles every capability of the Permit. Fails on anything the schema should have
    /// rejected; the runner does not trust that it did.
    pub fn compile(spec: &PermitSpec) -> Result<Policy, PolicyError> {
        let mut caps = Vec::with_capacity(spec.capabilities.len());
        let mut index = HashMap::with_capacity(spec.capabilities.len());
        for cap in &spec.capabilities {
            if index.insert(cap.name.clone(), caps.len()).is_some() {
                return Err(PolicyError::DuplicateName(cap.name.clone()));
            }
            caps.push(compile_capability(cap)?);
        }
        Ok(Policy { caps, index })
    }

    /// How `capability` is called (`None` for a name the Permit does not have).
    pub fn call_shape(&self, capability: &str) -> Option<CallShape> {
        Some(match &self.get(capability)?.form {
            Form::Scoped(_) => CallShape::Scoped,
            Form::Typed(t) => CallShape::Typed {
                method: t.method(),
                path_params: t.path_params().to_vec(),
            },
            Form::Fetch(_) => CallShape::Fetch,
        })
    }

    /// The capability names, in the Permit's order.
    pub fn capability_names(&self) -> Vec<String> {
        self.caps.iter().map(|c| c.name.clone()).collect()
    }

    /// The names that become JavaScript functions (every form but fetch), in the Permit's
    /// order.
    pub fn function_names(&self) -> Vec<String> {
        self.caps
            .iter()
            .filter(|c| !matches!(c.form, Form::Fetch(_)))
            .map(|c| c.name.clone())
            .collect()
    }

    /// Whether the Permit has a fetch capability (the code gets a global `fetch`).
    pub fn has_fetch(&self) -> bool {
        self.caps.iter().any(|c| matches!(c.form, Form::Fetch(_)))
    }

    /// The secrets fetch capabilities bind (each gets a placeholder), sorted.
    pub fn bound_secrets(&self) -> BTreeSet<String> {
        self.caps
            .iter()
            .filter_map(|c| match &c.form {
                Form::Fetch(f) => Some(f.bindings.iter().map(|b| b.secret.clone())),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Whether calls of `capability` can carry the secret `name`: its `auth` template has a
    /// `{name}` placeholder, or one of its fetch bindings names it.
    pub fn uses_secret(&self, capability: &str, name: &str) -> bool {
        let Some(cap) = self.get(capability) else {
            return false;
        };
        let in_template = cap
            .auth
            .as_ref()
            .is_some_and(|a| a.value.contains(&format!("{{{name}}}")));
        in_template || self.bindings(capability).iter().any(|b| b.secret == name)
    }

    /// The secret bindings of fetch capability `capability` (none for other forms).
    pub(crate) fn bindings(&self, capability: &str) -> &[web::CompiledBinding] {
        match self.get(capability).map(|c| &c.form) {
            Some(Form::Fetch(f)) => &f.bindings,
            _ => &[],
        }
    }

    /// Decides a `fetch()` of the code (see [`web`]). `Ok` is exactly what will be sent,
    /// before placeholders are replaced by secrets.
    pub fn decide_fetch(
        &self,
        request: &crate::host::FetchRequest,
    ) -> Result<PreparedRequest, Denial> {
        web::decide(&self.caps, request)
    }

    /// The next hop of a redirect that a `fetch()` follows, decided again in full.
    pub fn fetch_redirect(
        &self,
        req: &PreparedRequest,
        method: HttpMethod,
        keep_body: bool,
        location: &str,
    ) -> Result<PreparedRequest, Denial> {
        web::redirect(&self.caps, req, method, keep_body, location)
    }

    fn get(&self, capability: &str) -> Option<&CompiledCapability> {
        self.index.get(capability).map(|&i| &self.caps[i])
    }

    fn rate_limited(&self) -> impl Iterator<Item = (&str, (f64, f64))> {
        self.caps
            .iter()
            .filter_map(|c| c.rate_limit.map(|r| (c.name.as_str(), r)))
    }

    /// Whether `method` is one the capability may use (for redirects that change method).
    pub fn allows_method(&self, capability: &str, method: HttpMethod) -> bool {
        match self.get(capability).map(|c| &c.form) {
            Some(Form::Scoped(s)) => s.methods.contains(&method),
            Some(Form::Typed(t)) => t.method() == method,
            Some(Form::Fetch(f)) => f.allows_method(method),
            None => false,
        }
    }

    /// Interprets the JS call convention (see the module docs) and decides. `Ok` is exactly
    /// what will be sent, before credentials are injected.
    pub fn decide(&self, capability: &str, args: &[Value]) -> Result<PreparedRequest, Denial> {
        let Some(cap) = self.get(capability) else {
            return Err(denial(
                capability,
                "",
                "",
                format!(
                    "unknown capability {capability}; available: {}",
                    self.capability_names().join(", ")
                ),
            ));
        };
        match &cap.form {
            Form::Scoped(rules) => decide_scoped(cap, rules, args),
            Form::Typed(t) => t.decide(cap, args),
            Form::Fetch(_) => Err(denial(
                capability,
                "",
                "",
                format!(
                    "{capability} is a fetch capability: call fetch(url, init), not {capability}()"
                ),
            )),
        }
    }

    /// Same-origin redirect re-check: `Ok(url)` only if `location` (relative or absolute)
    /// resolves to the same scheme, host and port and the capability's policy allows the
    /// path. The query of the location is kept (it is the server's choice); the fragment is
    /// dropped.
    pub fn check_redirect(&self, req: &PreparedRequest, location: &str) -> Result<Url, Denial> {
        let deny = |reason: String| {
            denial(
                &req.capability,
                req.method.as_str(),
                req.url.as_str(),
                reason,
            )
        };
        let Some(cap) = self.get(&req.capability) else {
            return Err(deny(format!("unknown capability {}", req.capability)));
        };
        if location
            .chars()
            .any(|c| c.is_control() || c == '\\' || c == ' ')
        {
            return Err(deny(format!(
                "redirect for {} refused: location contains control characters, spaces or backslashes",
                cap.name
            )));
        }
        let mut next = req.url.join(location).map_err(|e| {
            deny(format!(
                "redirect for {} refused: bad location: {e}",
                cap.name
            ))
        })?;
        next.set_fragment(None);
        let Some(origin) = cap.origin_url() else {
            return Err(deny(format!(
                "{} is a fetch capability: its redirects are decided as fetches",
                cap.name
            )));
        };
        if next.scheme() != origin.scheme()
            || next.host() != origin.host()
            || next.port_or_known_default() != origin.port_or_known_default()
        {
            return Err(deny(format!(
                "redirect for {} to another origin refused: {}://{}; allowed origin: {}",
                cap.name,
                next.scheme(),
                next.host_str().unwrap_or(""),
                origin.origin().ascii_serialization()
            )));
        }
        if !next.username().is_empty() || next.password().is_some() {
            return Err(deny(format!(
                "redirect for {} refused: userinfo in location",
                cap.name
            )));
        }
        let allowed = match &cap.form {
            Form::Scoped(s) => path::check_canonical(&next, &s.base_path)
                .is_ok_and(|rel| s.globs.iter().any(|g| g.matches(&rel))),
            Form::Typed(t) => t.matches_path(next.path()),
            Form::Fetch(_) => false,
        };
        if !allowed {
            return Err(deny(format!(
                "redirect for {} to path {} refused: not allowed by the capability's paths",
                cap.name,
                next.path()
            )));
        }
        Ok(next)
    }

    /// True when the capability's baseUrl/endpoint host is loopback (development), which
    /// alone permits DNS answers in loopback and private ranges.
    ///
    /// For a fetch capability it is the host of the request (`url`): a loopback entry never
    /// lets a request to one of its other hosts resolve to a private address.
    pub fn allows_private_addresses(&self, capability: &str, url: &Url) -> bool {
        self.get(capability).is_some_and(|c| match &c.form {
            Form::Fetch(f) => host_is_loopback(url) && f.has_host(url),
            _ => c.loopback,
        })
    }
}

fn decide_scoped(
    cap: &CompiledCapability,
    rules: &ScopedFetchRules,
    args: &[Value],
) -> Result<PreparedRequest, Denial> {
    let name = cap.name.as_str();
    let raw_method = match args.first() {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(denial(
                name,
                "",
                "",
                format!(
                    "{name} is called as {name}(method, path, {{query, body, headers}}); the method must be a string"
                ),
            ));
        }
    };
    let raw_path = match args.get(1) {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(denial(
                name,
                raw_method,
                "",
                format!(
                    "{name} is called as {name}(method, path, {{query, body, headers}}); the path must be a string"
                ),
            ));
        }
    };
    let parsed_method = HttpMethod::parse(raw_method);
    let shown_method: &str = match parsed_method {
        Some(m) => m.as_str(),
        None => raw_method,
    };
    let deny = |url: &str, reason: String| denial(name, shown_method, url, reason);
    let method = parsed_method
        .filter(|m| rules.methods.contains(m))
        .ok_or_else(|| {
            deny(
                raw_path,
                format!(
                    "method {shown_method} not allowed for {name}; allowed: {}",
                    method_list(&rules.methods)
                ),
            )
        })?;
    if args.len() > 3 {
        return Err(deny(
            raw_path,
            format!(
                "{name} takes at most 3 arguments (method, path, {{query, body, headers}}); got {}",
                args.len()
            ),
        ));
    }
    let options = match args.get(2) {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(other) => {
            return Err(deny(
                raw_path,
                format!(
                    "the third argument of {name} must be an object {{query, body, headers}}; got {}",
                    kind(other)
                ),
            ));
        }
    };
    if let Some(o) = options
        && let Some(k) = o
            .keys()
            .find(|k| !matches!(k.as_str(), "query" | "body" | "headers"))
    {
        return Err(deny(
            raw_path,
            format!("unknown option {k} for {name}; allowed: query, body, headers"),
        ));
    }
    let checked = path::resolve(&rules.base, &rules.base_path, raw_path).map_err(|r| {
        deny(
            raw_path,
            format!("path {raw_path:?} rejected for {name}: {r}"),
        )
    })?;
    let relative = checked.relative();
    if !rules.globs.iter().any(|g| g.matches(&relative)) {
        return Err(deny(
            checked.url.as_str(),
            format!(
                "path {} not allowed for {name}; allowed: {}",
                relative.joined(),
                rules
                    .globs
                    .iter()
                    .map(|g| g.source())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut url = checked.url;
    let opt = |k: &str| options.and_then(|o| o.get(k)).filter(|v| !v.is_null());
    if let Some(q) = opt("query") {
        let Value::Object(q) = q else {
            return Err(deny(
                url.as_str(),
                format!("query for {name} must be an object; got {}", kind(q)),
            ));
        };
        for (k, v) in q {
            if !rules.query_allow.contains(k) {
                let allowed = if rules.query_allow.is_empty() {
                    "none".to_owned()
                } else {
                    rules
                        .query_allow
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(deny(
                    url.as_str(),
                    format!("query param {k} not allowed for {name}; allowed: {allowed}"),
                ));
            }
            append_query(&mut url, k, v, name).map_err(|r| deny(url.as_str(), r))?;
        }
    }
    let (body, mut content_type) = match opt("body") {
        Some(b) => {
            let (bytes, ct) =
                body::encode(b, &cap.body, name).map_err(|r| deny(url.as_str(), r))?;
            (Some(bytes), Some(ct))
        }
        None => (None, None),
    };
    let mut headers = Vec::new();
    if let Some(h) = opt("headers") {
        let Value::Object(h) = h else {
            return Err(deny(
                url.as_str(),
                format!("headers for {name} must be an object; got {}", kind(h)),
            ));
        };
        for (k, v) in h {
            let Value::String(v) = v else {
                return Err(deny(
                    url.as_str(),
                    format!("header {k} for {name} must be a string; got {}", kind(v)),
                ));
            };
            headers::check(k, v, name, cap.auth_header.as_deref(), cap.body.allow_raw)
                .map_err(|r| deny(url.as_str(), r))?;
            if k.eq_ignore_ascii_case("content-type") {
                content_type = Some(v.clone());
            } else {
                headers.push((k.clone(), v.clone()));
            }
        }
    }
    Ok(PreparedRequest {
        capability: name.to_owned(),
        method,
        url,
        headers,
        body,
        content_type,
        auth: cap.auth.clone(),
        cookies: cap.cookies.clone(),
    })
}
