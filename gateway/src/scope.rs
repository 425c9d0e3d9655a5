//! `POST /scope` (the skill dialect's session request): a description, the hosts and secrets a
//! skill needs, its constraints and (usually) the skill's code become one Permit that the
//! owner approves like any other. What each part becomes:
//! - every `networks` host (and every `@network` of the code): a scoped-fetch capability
//!   `https://<host>/**` with every method, named after the host (`api.github.com` ->
//!   `api_github_com`);
//! - `secrets` and the code's `@secrets`: `spec.secrets` (their union: what the owner is shown
//!   is what may be used);
//! - `skill_code`: `spec.pinnedCode`, the digest of exactly the JavaScript the gateway will run
//!   for that code, so the approval covers those bytes and no other code runs under it;
//! - typed constraints (`regex`, `predicate`): `spec.argRules`, checked on every run's args
//!   by the operator and the runner; plain strings and `natural_language` ones:
//!   `spec.unenforcedConstraints`, shown to the owner marked NOT ENFORCED.
//!
//! The Permit's name is the session: the client's `session_id` (a DNS label in the caller's
//! namespace; an existing one is a 409, never another tenant's), else a fresh id.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use kube::ResourceExt;
use oauth3_crds::constants::{
    ANNOTATION_APPROVAL_REF, ANNOTATION_PINNED_CODE, ANNOTATION_SOURCE_DIGEST,
    ANNOTATION_STATUS_TOKEN, LABEL_REQUEST_ID, MAX_PINNED_CODE_ANNOTATION,
};
use oauth3_crds::{Permit, PermitSpec, is_sandbox_name, spec_digest};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::capability::parse_json;
use crate::error::{ApiError, ApiResult};
use crate::identity::{Caller, Right};
use crate::ids::{IdKind, RequestId, is_dns_label, new_token, token_digest};
use crate::routes::{
    Body, PreparedSkill, Refusal, body_bytes, prepare_skill_code, skill_code_to_run, skill_digest,
};

/// The most hosts one scope may name.
const MAX_NETWORKS: usize = 16;

/// The body of `POST /scope`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRequest {
    /// What the session is for (shown to the owner).
    #[serde(default)]
    pub description: Option<String>,
    /// Strings (not enforced) or typed constraints.
    #[serde(default)]
    pub constraints: Vec<Value>,
    /// Secret names.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Host names the code may call.
    #[serde(default)]
    pub networks: Vec<String>,
    /// The skill's code (TypeScript): pinned.
    #[serde(default)]
    pub skill_code: Option<String>,
    /// The session (Permit) name to use.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// `host` or `host:port`, lower-case DNS labels; `Err` says what is wrong.
fn check_host(host: &str) -> Result<(), &'static str> {
    if host.contains("://") || host.contains('/') {
        return Err("a host name only, without scheme or path (e.g. api.github.com)");
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err("the port must be a number 1-65535");
    }
    if name.contains('*') {
        return Err("wildcards are not allowed: name each host");
    }
    let labels: Vec<&str> = name.split('.').collect();
    let ok = name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    // The last label of a DNS name is never all digits; of an IPv4 address it is.
    let numeric = labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    // `localhost` (development: the runner reaches loopback only for loopback hosts).
    if (ok && !numeric) || name == "localhost" {
        Ok(())
    } else {
        Err(
            "must be a lower-case DNS name with a dot, e.g. api.github.com (no trailing dot, no IP address; localhost for development)",
        )
    }
}

/// The capability (function) name for `host`: `api.github.com` -> `api_github_com`.
fn function_name(host: &str, taken: &[String]) -> String {
    let mut name: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) || is_sandbox_name(&name) {
        name = format!("host_{name}");
    }
    let mut unique = name.clone();
    let mut n = 2;
    while taken.contains(&unique) {
        unique = format!("{name}_{n}");
        n += 1;
    }
    unique
}

/// One constraint as an arg rule (`Ok(Some)`), an unenforced text (`Ok(None)` with the text
/// pushed), or a 400 naming `constraints[i]`.
fn constraint(i: usize, c: &Value, unenforced: &mut Vec<String>) -> ApiResult<Option<Value>> {
    let field = format!("constraints[{i}]");
    let bad = |why: &str| ApiError::bad(field.clone(), why.to_owned());
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match c {
        Value::String(s) if !s.trim().is_empty() => {
            unenforced.push(s.trim().to_owned());
            return Ok(None);
        }
        Value::Object(_) => {}
        _ => return Err(bad("a non-empty string, or an object with a type")),
    }
    let rationale = text(c.get("rationale"));
    match c.get("type").and_then(Value::as_str) {
        Some("natural_language") => {
            let rule = text(c.get("rule"))
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| bad("natural_language needs rule: the constraint in words"))?;
            unenforced.push(match rationale {
                Some(r) => format!("{rule} (why: {r})"),
                None => rule,
            });
            Ok(None)
        }
        Some("regex") => {
            let param =
                text(c.get("param")).ok_or_else(|| bad("regex needs param: the arg name"))?;
            let pattern = text(c.get("pattern")).ok_or_else(|| bad("regex needs pattern"))?;
            regex::Regex::new(&pattern)
                .map_err(|e| bad(&format!("pattern does not compile: {e}")))?;
            Ok(Some(
                json!({"arg": param, "regex": pattern, "rationale": rationale}),
            ))
        }
        Some("predicate") => {
            let param =
                text(c.get("param")).ok_or_else(|| bad("predicate needs param: the arg name"))?;
            let value = c
                .get("value")
                .cloned()
                .ok_or_else(|| bad("predicate needs value"))?;
            let op = match c.get("op").and_then(Value::as_str) {
                Some("==") => "eq",
                Some("!=") => "ne",
                Some("<") => "lt",
                Some("<=") => "le",
                Some(">") => "gt",
                Some(">=") => "ge",
                Some("in") => "in",
                Some("prefix") => "prefix",
                Some("suffix") => "suffix",
                _ => {
                    return Err(bad(
                        "predicate op must be one of ==, !=, <, <=, >, >=, in, prefix, suffix",
                    ));
                }
            };
            if op == "in" && !value.is_array() {
                return Err(bad("predicate op in needs a list as value"));
            }
            Ok(Some(
                json!({"arg": param, "op": op, "value": value, "rationale": rationale}),
            ))
        }
        _ => Err(bad(
            "type must be regex, predicate or natural_language (or send a plain string)",
        )),
    }
}

/// A session Permit as created: the Permit, its request id and the tokens of its URLs.
pub(crate) struct Session {
    pub(crate) permit: Permit,
    pub(crate) id: RequestId,
    pub(crate) status_token: String,
    pub(crate) approval_ref: String,
    /// The skill code, its types removed, when the session pins one.
    pub(crate) skill: Option<PreparedSkill>,
}

/// `POST /scope`: a session Permit request.
///
/// # Errors
/// 400 naming the field (nothing created), 409 for a session name in use, 401/403.
pub async fn scope(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let caller = gw.caller_with(&headers, Right::CreatePermits).await?;
    let body = body_bytes(&gw, body)?;
    let req: ScopeRequest = parse_json(&body)?;
    let session = match create_session(&gw, &caller, &req).await? {
        Ok(s) => s,
        Err(refusal) => {
            return Ok(Json(json!({
                "status": "denied",
                "error": format!("skill_code: {}", refusal.0),
            })));
        }
    };
    let created = &session.permit;
    let digest = spec_digest(&created.spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut out = json!({
        "request_id": session.id.as_label(),
        "status": "pending_scope",
        "session_id": created.name_any(),
        "permit_id": created.name_any(),
        "capabilities": created.spec.capabilities.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "secrets": created.spec.secrets,
        "pinned_code": created.spec.pinned_code,
        "spec_digest": digest,
        "message": "Session requested; the owner must approve it. Poll status_url (or GET /execute/<request_id>/status?wait=true), then POST /execute with this session_id.",
    });
    if let Some(u) = gw.approval_url(&caller.namespace, &session.id, &session.approval_ref) {
        out["approval_url"] = json!(u);
    }
    if let Some(u) = gw.status_url(&caller.namespace, &session.id, &session.status_token) {
        out["status_url"] = json!(u);
    }
    Ok(Json(out))
}

/// Makes and creates the session Permit `req` asks for, in the caller's namespace.
///
/// # Errors
/// 400 naming the field (nothing created), 409 for a session name in use.
pub(crate) async fn create_session(
    gw: &Gateway,
    caller: &Caller,
    req: &ScopeRequest,
) -> ApiResult<Result<Session, Refusal>> {
    let description = req
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::bad("description", "required: what the session is for"))?;
    if description.chars().count() > 2000 {
        return Err(ApiError::bad("description", "at most 2000 characters"));
    }
    let meta = req
        .skill_code
        .as_deref()
        .map(crate::skill::metadata)
        .unwrap_or_default();
    let mut hosts: Vec<String> = Vec::new();
    for (i, h) in req.networks.iter().enumerate() {
        check_host(h).map_err(|why| ApiError::bad(format!("networks[{i}]"), why))?;
        if !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    for h in &meta.networks {
        check_host(h).map_err(|why| ApiError::bad("skill_code", format!("@network {h}: {why}")))?;
        if !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    if hosts.len() > MAX_NETWORKS {
        return Err(ApiError::bad(
            "networks",
            format!("at most {MAX_NETWORKS} hosts"),
        ));
    }
    let mut secrets: Vec<String> = Vec::new();
    for name in req.secrets.iter().chain(&meta.secrets) {
        if !secrets.contains(name) {
            secrets.push(name.clone());
        }
    }
    let mut arg_rules = Vec::new();
    let mut unenforced = Vec::new();
    for (i, c) in req.constraints.iter().enumerate() {
        if let Some(rule) = constraint(i, c, &mut unenforced)? {
            arg_rules.push(rule);
        }
    }
    let mut names: Vec<String> = Vec::new();
    let capabilities: Vec<Value> = hosts
        .iter()
        .map(|h| {
            let name = function_name(h, &names);
            names.push(name.clone());
            json!({"name": name, "baseUrl": format!("https://{h}"), "paths": ["/**"],
                   "methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]})
        })
        .collect();
    // The same hosts for the code's own fetch(), with each secret bound to them: in the
    // Authorization header, the only place a placeholder becomes the secret.
    let mut capabilities = capabilities;
    if !hosts.is_empty() {
        let mut name = "fetch".to_owned();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("fetch_{n}");
            n += 1;
        }
        let bindings: Vec<Value> = secrets
            .iter()
            .map(|s| json!({"secret": s, "hosts": hosts, "in": ["header"], "headers": ["Authorization"]}))
            .collect();
        capabilities.push(json!({"name": name, "hosts": hosts,
            "methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            "secretBindings": bindings}));
    }
    if capabilities.is_empty() && req.skill_code.is_none() {
        return Err(ApiError::bad(
            "networks",
            "name at least one host, or send skill_code (approved code that calls nothing)",
        ));
    }
    let mut spec_json = json!({
        "description": description,
        "capabilities": capabilities,
        "secrets": secrets,
        "argRules": arg_rules,
        "unenforcedConstraints": unenforced,
    });
    // Any name or value the schema refuses is named here, before anything is created.
    let mut spec: PermitSpec = serde_json::from_value(spec_json.clone())
        .map_err(|e| ApiError::bad("request", format!("does not make a Permit: {e}")))?;
    let mut source_digest = None;
    let mut pinned_text = None;
    let mut prepared = None;
    if let Some(code) = &req.skill_code {
        let skill = match prepare_skill_code(code, &spec)? {
            Ok(s) => s,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let run = skill_code_to_run(&spec, &BTreeMap::new(), &skill.source);
        spec_json["pinnedCode"] = json!([skill_digest(&run)]);
        if run.len() <= MAX_PINNED_CODE_ANNOTATION {
            pinned_text = Some(run);
        }
        spec = serde_json::from_value(spec_json)
            .map_err(|e| ApiError::Internal(format!("pinning the code: {e}")))?;
        source_digest = Some(oauth3_crds::code_digest(code));
        prepared = Some(skill);
    }
    let extra = source_digest
        .map(|d| (ANNOTATION_SOURCE_DIGEST.to_owned(), d))
        .into_iter()
        .chain(pinned_text.map(|c| (ANNOTATION_PINNED_CODE.to_owned(), c)))
        .collect();
    let mut session = permit_request("session_id", req.session_id.as_deref(), spec, extra)?;
    session.skill = prepared;
    session.permit = gw
        .store()
        .create(&caller.namespace, &session.permit, "Permit")
        .await?;
    tracing::info!(namespace = %caller.namespace, permit = %session.permit.name_any(), request = %session.id, by = %caller.user, "session requested");
    Ok(Ok(session))
}

/// A Permit request, not stored yet: the Permit named `asked` (a DNS label, else the request
/// id's name), labelled with its request id and annotated with the digests of its status
/// token and approval reference (and `extra`), with those tokens.
///
/// # Errors
/// 400 naming `field` when `asked` is not a DNS label.
pub(crate) fn permit_request(
    field: &str,
    asked: Option<&str>,
    spec: PermitSpec,
    extra: BTreeMap<String, String>,
) -> ApiResult<Session> {
    let id = RequestId::new(IdKind::Permit);
    let name = match asked {
        Some(s) if is_dns_label(s) => s.to_owned(),
        Some(_) => {
            return Err(ApiError::bad(
                field,
                "must be a DNS label: 1-63 lower-case letters, digits and -, not starting or ending with -",
            ));
        }
        None => id.object_name(),
    };
    let status_token = new_token();
    let approval_ref = new_token();
    let mut permit = Permit::new(&name, spec);
    permit.metadata.labels = Some([(LABEL_REQUEST_ID.to_owned(), id.as_label())].into());
    let mut annotations = extra;
    annotations.insert(
        ANNOTATION_STATUS_TOKEN.to_owned(),
        token_digest(&status_token),
    );
    annotations.insert(
        ANNOTATION_APPROVAL_REF.to_owned(),
        token_digest(&approval_ref),
    );
    permit.metadata.annotations = Some(annotations);
    Ok(Session {
        permit,
        id,
        status_token,
        approval_ref,
        skill: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_plain_dns_names() {
        for ok in [
            "api.github.com",
            "api.github.com:8443",
            "a-b.example.org",
            "localhost:8443",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("https://api.github.com", "without scheme"),
            ("api.github.com/repos", "without scheme or path"),
            ("*.github.com", "wildcards"),
            ("API.GITHUB.COM", "lower-case"),
            ("api.github.com.", "lower-case DNS name"),
            ("localhost.", "with a dot"),
            ("intranet", "with a dot"),
            ("127.0.0.1", "no IP"),
            ("api.github.com:0", "port"),
            ("a..b", "DNS name"),
        ] {
            let e = check_host(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn function_names_are_identifiers_and_unique() {
        assert_eq!(function_name("api.github.com", &[]), "api_github_com");
        assert_eq!(function_name("1password.com", &[]), "host_1password_com");
        assert_eq!(
            function_name("api.github.com:8443", &["api_github_com_8443".into()]),
            "api_github_com_8443_2"
        );
    }

    #[test]
    fn constraints_become_rules_or_unenforced_text() {
        let mut unenforced = Vec::new();
        let regex =
            json!({"type": "regex", "param": "owner", "pattern": "amiller", "rationale": "mine"});
        assert_eq!(
            constraint(0, &regex, &mut unenforced).expect("ok"),
            Some(json!({"arg": "owner", "regex": "amiller", "rationale": "mine"}))
        );
        let pred = json!({"type": "predicate", "param": "count", "op": "<=", "value": 10});
        assert_eq!(
            constraint(1, &pred, &mut unenforced).expect("ok"),
            Some(json!({"arg": "count", "op": "le", "value": 10, "rationale": null}))
        );
        assert_eq!(
            constraint(2, &json!("be nice"), &mut unenforced).expect("ok"),
            None
        );
        let nl = json!({"type": "natural_language", "rule": "only public repos", "rationale": "privacy"});
        assert_eq!(constraint(3, &nl, &mut unenforced).expect("ok"), None);
        assert_eq!(unenforced, ["be nice", "only public repos (why: privacy)"]);
        for (c, why) in [
            (
                json!({"type": "regex", "param": "a", "pattern": "("}),
                "does not compile",
            ),
            (
                json!({"type": "predicate", "param": "a", "op": "~", "value": 1}),
                "op must be",
            ),
            (
                json!({"type": "predicate", "param": "a", "op": "in", "value": 1}),
                "a list",
            ),
            (json!({"type": "eval", "code": "1"}), "type must be"),
            (json!(""), "non-empty string"),
            (json!(5), "non-empty string"),
        ] {
            let e = constraint(7, &c, &mut unenforced)
                .expect_err("refused")
                .to_string();
            assert!(e.contains("constraints[7]") && e.contains(why), "{c}: {e}");
        }
    }
}
