//! The one validator every draft passes, whichever drafter made it (pure): it refuses what
//! the schema would refuse and narrows the proposal to what the intent asked for. A drafter
//! (the `llm` one above all, whose documents may carry prompt injection) can never widen a
//! draft beyond these rules:
//! - only typed-endpoint and scoped-fetch capabilities (no `fetch` form, no cookies), each to
//!   a server origin the intent's documents declare, https (http only to loopback);
//! - write methods (POST, PUT, PATCH) only when the intent's goal mutates or its operations
//!   name a write method; DELETE only when the goal says delete or remove;
//! - no `**` path glob unless the intent writes `**` itself;
//! - credentials only from the intent's `secretHints` (listed in `spec.secrets`);
//! - names unique JavaScript identifiers that no sandbox global shadows.

use std::collections::BTreeSet;

use oauth3_crds::{Capability, CapabilityForm, HttpMethod, ParamLocation, PathGlob, PermitSpec};

use super::Proposal;

/// The most capabilities a Permit holds (the schema's `maxItems`).
const MAX_CAPABILITIES: usize = 128;

/// Words of a goal that mean it changes something.
const WRITE_WORDS: &[&str] = &[
    "create", "add", "post", "update", "edit", "change", "set", "write", "send", "comment",
    "close", "reopen", "merge", "upload", "publish", "label", "assign", "file", "open", "put",
    "patch", "delete", "remove", "star", "fork", "submit", "modify", "rename", "move",
];

/// Words of a goal that mean it deletes something.
const DELETE_WORDS: &[&str] = &["delete", "remove", "destroy", "erase"];

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Which methods the spec's intents allow (pure).
pub fn allowed_methods(spec: &PermitSpec) -> BTreeSet<HttpMethod> {
    let mut allowed: BTreeSet<HttpMethod> =
        [HttpMethod::GET, HttpMethod::HEAD, HttpMethod::OPTIONS].into();
    for intent in &spec.intent {
        let goal = words(&intent.goal);
        let has = |list: &[&str]| {
            goal.iter().any(|w| {
                list.iter().any(|l| {
                    w == l || w.strip_suffix('s') == Some(l) || w.strip_suffix("es") == Some(l)
                })
            })
        };
        if has(WRITE_WORDS) {
            allowed.extend([HttpMethod::POST, HttpMethod::PUT, HttpMethod::PATCH]);
        }
        if has(DELETE_WORDS) {
            allowed.insert(HttpMethod::DELETE);
        }
        for op in &intent.operations {
            if let Some(m) = op.split_whitespace().next().and_then(HttpMethod::parse)
                && m != HttpMethod::DELETE
            {
                allowed.insert(m);
            } else if op.split_whitespace().next().and_then(HttpMethod::parse)
                == Some(HttpMethod::DELETE)
                && has(DELETE_WORDS)
            {
                allowed.insert(HttpMethod::DELETE);
            }
        }
    }
    allowed
}

fn asks_double_star(spec: &PermitSpec) -> bool {
    spec.intent
        .iter()
        .any(|i| i.goal.contains("**") || i.operations.iter().any(|o| o.contains("**")))
}

/// The origin (`scheme://host[:port]`) of a URL, if it is one a capability may name.
fn origin(raw: &str) -> Result<String, String> {
    let u = url::Url::parse(raw).map_err(|e| format!("not an absolute URL: {e}"))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not contain userinfo".to_owned());
    }
    if u.query().is_some() || u.fragment().is_some() || raw.contains('?') || raw.contains('#') {
        return Err("must not contain a query or fragment".to_owned());
    }
    let host = u.host_str().ok_or("has no host")?.to_owned();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match u.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("must use https (http only for loopback)".to_owned()),
    }
    Ok(u.origin().ascii_serialization())
}

/// Validates and narrows `proposal` for `spec`, whose documents declare the API `origins`
/// (pure). On refusal returns the proposal's notes with the reasons, each naming
/// `draft.capabilities[i]` and the rule.
///
/// # Errors
/// The proposal back (for its notes) and the reasons.
pub fn narrow(
    spec: &PermitSpec,
    origins: &[String],
    proposal: Proposal,
) -> Result<Proposal, (Proposal, Vec<String>)> {
    let methods = allowed_methods(spec);
    let double_star = asks_double_star(spec);
    let hints: BTreeSet<&String> = spec
        .intent
        .iter()
        .flat_map(|i| &i.secret_hints)
        .filter(|h| spec.secrets.contains(h))
        .collect();
    let mut out = Proposal {
        capabilities: Vec::new(),
        sources: Vec::new(),
        rationale: proposal.rationale.clone(),
        not_allowed: proposal.not_allowed.clone(),
    };
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    for (i, mut cap) in proposal.capabilities.into_iter().enumerate() {
        let at = format!("draft.capabilities[{i}] ({})", cap.name);
        match check_one(
            &mut cap,
            &methods,
            double_star,
            &hints,
            origins,
            &mut out.not_allowed,
        ) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(why) => {
                errors.push(format!("{at}.{why}"));
                continue;
            }
        }
        if !names.insert(cap.name.clone()) {
            errors.push(format!("{at}.name: must be unique"));
            continue;
        }
        if let Some(s) = proposal.sources.iter().find(|s| s.capability == cap.name) {
            out.sources.push(s.clone());
        }
        out.capabilities.push(cap);
    }
    if out.capabilities.len() > MAX_CAPABILITIES {
        errors.push(format!(
            "draft.capabilities: {} capabilities, at most {MAX_CAPABILITIES}",
            out.capabilities.len()
        ));
    }
    if errors.is_empty() && out.capabilities.is_empty() {
        errors.push(
            "draft.capabilities: nothing is left to allow once narrowed to the intent".to_owned(),
        );
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err((out, errors))
    }
}

/// Checks one capability, narrowing it in place: `Ok(false)` drops it (noted), `Err` names
/// the field and the rule.
fn check_one(
    cap: &mut Capability,
    methods: &BTreeSet<HttpMethod>,
    double_star: bool,
    hints: &BTreeSet<&String>,
    origins: &[String],
    notes: &mut Vec<String>,
) -> Result<bool, String> {
    let name_ok = !cap.name.is_empty()
        && cap.name.len() <= 64
        && cap.name.chars().enumerate().all(|(k, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == '$' || (k > 0 && c.is_ascii_digit())
        });
    if !name_ok || oauth3_crds::is_sandbox_name(&cap.name) {
        return Err("name: must be a JavaScript identifier of at most 64 characters that no sandbox global or reserved word shadows".to_owned());
    }
    if cap.cookies.is_some() || !cap.secret_bindings.is_empty() {
        return Err("cookies: a draft never sends cookies or bound secrets".to_owned());
    }
    let name = cap.name.clone();
    let url = match cap.form() {
        Some(CapabilityForm::Fetch { .. }) => {
            notes.push(format!("{name}: a fetch capability (hosts) is never drafted"));
            return Ok(false);
        }
        None => return Err("baseUrl: set exactly one of baseUrl (scoped fetch) or endpoint (typed endpoint), with method for an endpoint".to_owned()),
        Some(CapabilityForm::ScopedFetch { base_url, .. }) => base_url.to_owned(),
        Some(CapabilityForm::TypedEndpoint { endpoint, .. }) => endpoint.to_owned(),
    };
    let field = if cap.endpoint.is_some() {
        "endpoint"
    } else {
        "baseUrl"
    };
    let o = origin(&url).map_err(|why| format!("{field}: {why}"))?;
    if !origins.contains(&o) {
        return Err(format!(
            "{field}: {o} is not a server the intent's documents declare ({})",
            if origins.is_empty() {
                "none".to_owned()
            } else {
                origins.join(", ")
            }
        ));
    }
    if url.split('/').any(|s| {
        s == "." || s == ".." || s.eq_ignore_ascii_case("%2e") || s.eq_ignore_ascii_case("%2e%2e")
    }) {
        return Err(format!("{field}: must not contain . or .. segments"));
    }
    if let Some(auth) = &cap.auth {
        let placeholders = crate::describe::path_placeholders(&auth.value);
        if placeholders.is_empty() || placeholders.iter().any(|p| !hints.iter().any(|h| *h == p)) {
            return Err("auth.value: every {NAME} must be one of the intent's secretHints (listed in spec.secrets), and one is required".to_owned());
        }
        if auth.value.chars().any(char::is_control) {
            return Err("auth.value: must not contain control characters".to_owned());
        }
        if let Some(h) = &auth.header
            && !(h.eq_ignore_ascii_case("authorization")
                || h.to_ascii_lowercase().starts_with("x-"))
        {
            return Err(format!(
                "auth.header: {h} is neither Authorization nor an X- header"
            ));
        }
    }
    if let Some(method) = cap.method {
        if !methods.contains(&method) {
            notes.push(format!("{name}: {method} is not allowed (the intent's goal does not ask to change anything of that kind)"));
            return Ok(false);
        }
        let placeholders = crate::describe::path_placeholders(&url);
        for p in &placeholders {
            if cap.params.get(p).map(|s| s.location) != Some(ParamLocation::Path) {
                return Err(format!(
                    "endpoint: {{{p}}} must be declared in params with in: path"
                ));
            }
        }
        let mut dropped = Vec::new();
        cap.params.retain(|k, s| {
            let keep = match s.location {
                ParamLocation::Path => placeholders.contains(k),
                ParamLocation::Header => false,
                _ => true,
            };
            if !keep {
                dropped.push(k.clone());
            }
            keep
        });
        if !dropped.is_empty() {
            notes.push(format!("{name}: parameters {} are not allowed (header parameters, or path parameters the endpoint does not use)", dropped.join(", ")));
        }
        if cap.params.len() > 32 {
            return Err("params: at most 32".to_owned());
        }
    } else {
        let before: Vec<HttpMethod> = cap.methods.clone();
        cap.methods.retain(|m| methods.contains(m));
        for m in before.iter().filter(|m| !cap.methods.contains(m)) {
            notes.push(format!(
                "{name}: {m} is not allowed (the intent's goal does not ask for it)"
            ));
        }
        let before = cap.paths.clone();
        cap.paths
            .retain(|p| double_star || !p.split('/').any(|s| s == "**"));
        for p in before.iter().filter(|p| !cap.paths.contains(p)) {
            notes.push(format!(
                "{name}: the path {p} (** matches everything below; the intent did not ask for it)"
            ));
        }
        for (k, p) in cap.paths.iter().enumerate() {
            PathGlob::parse(p).map_err(|e| format!("paths[{k}]: {e}"))?;
        }
        if cap.methods.is_empty() || cap.paths.is_empty() {
            notes.push(format!("{name}: nothing left once narrowed"));
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(goal: &str) -> PermitSpec {
        serde_json::from_value(json!({
            "description": "d", "capabilities": [], "secrets": ["TOKEN"],
            "intent": [{"name": "gh", "goal": goal, "docUrls": ["https://d.example/a.json"], "secretHints": ["TOKEN"]}]
        }))
        .expect("spec")
    }

    fn cap(v: serde_json::Value) -> Capability {
        serde_json::from_value(v).expect("cap")
    }

    fn origins() -> Vec<String> {
        vec!["https://api.example.com".into()]
    }

    #[test]
    fn writes_and_double_star_beyond_the_goal_are_narrowed_away() {
        let p = Proposal {
            capabilities: vec![cap(
                json!({"name": "api", "baseUrl": "https://api.example.com",
                "paths": ["/repos/a/b/issues", "/**"], "methods": ["GET", "DELETE", "POST"],
                "auth": {"header": "Authorization", "value": "Bearer {TOKEN}"}}),
            )],
            ..Proposal::default()
        };
        let out = narrow(&spec("list my repositories"), &origins(), p).expect("narrowed");
        let c = &out.capabilities[0];
        assert_eq!(c.methods, vec![HttpMethod::GET]);
        assert_eq!(c.paths, vec!["/repos/a/b/issues".to_owned()]);
        assert!(
            out.not_allowed.iter().any(|n| n.contains("DELETE")),
            "{:?}",
            out.not_allowed
        );
        assert!(
            out.not_allowed.iter().any(|n| n.contains("/**")),
            "{:?}",
            out.not_allowed
        );
    }

    #[test]
    fn other_hosts_secrets_and_fetch_forms_are_refused() {
        let other = Proposal {
            capabilities: vec![cap(
                json!({"name": "api", "endpoint": "https://evil.example/x", "method": "GET"}),
            )],
            ..Proposal::default()
        };
        let (_, errs) = narrow(&spec("read"), &origins(), other).expect_err("refused");
        assert!(
            errs[0].contains(
                "endpoint: https://evil.example is not a server the intent's documents declare"
            ),
            "{errs:?}"
        );
        let secret = Proposal {
            capabilities: vec![cap(
                json!({"name": "api", "endpoint": "https://api.example.com/x", "method": "GET",
                "auth": {"header": "Authorization", "value": "Bearer {OTHER}"}}),
            )],
            ..Proposal::default()
        };
        let (_, errs) = narrow(&spec("read"), &origins(), secret).expect_err("refused");
        assert!(errs[0].contains("auth.value"), "{errs:?}");
        let fetch = Proposal {
            capabilities: vec![cap(
                json!({"name": "f", "hosts": ["api.example.com"], "methods": ["GET"]}),
            )],
            ..Proposal::default()
        };
        let (_, errs) = narrow(&spec("read"), &origins(), fetch).expect_err("nothing left");
        assert!(errs[0].contains("nothing is left"), "{errs:?}");
    }

    #[test]
    fn a_goal_that_creates_allows_post_but_not_delete() {
        let m = allowed_methods(&spec("create issues on amiller/test"));
        assert!(m.contains(&HttpMethod::POST) && !m.contains(&HttpMethod::DELETE));
        assert!(allowed_methods(&spec("delete stale branches")).contains(&HttpMethod::DELETE));
        assert!(!allowed_methods(&spec("list my repos")).contains(&HttpMethod::POST));
    }
}
