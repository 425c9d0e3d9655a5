//! Plain-words description of exactly what a Permit allows, for the people who approve it
//! (`kubectl oauth3 get`, and the Telegram approval message). Pure: derived from the spec the
//! runner enforces, never from free text other than the agent's own `description`, which is
//! shown quoted and labelled as the agent's words.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;

use oauth3_crds::{
    BodyRules, Capability, CapabilityForm, CodeReview, ParamLocation, PathGlob, Permit, PermitSpec,
};

/// The capability's call signature as the code sees it, e.g. `github(method, path, {query,
/// body, headers})` or `createIssue(owner, repo, {title, body})`.
pub fn signature(cap: &Capability) -> String {
    match cap.form() {
        Some(CapabilityForm::ScopedFetch { .. }) => {
            format!("{}(method, path, {{query, body, headers}})", cap.name)
        }
        Some(CapabilityForm::Fetch { .. }) => {
            format!("{}: the code's own fetch(url, init)", cap.name)
        }
        Some(CapabilityForm::TypedEndpoint {
            endpoint, params, ..
        }) => {
            let mut args: Vec<String> = path_placeholders(endpoint);
            let others: Vec<&str> = params
                .iter()
                .filter(|(_, p)| p.location != ParamLocation::Path)
                .map(|(k, _)| k.as_str())
                .collect();
            if !others.is_empty() {
                args.push(format!("{{{}}}", others.join(", ")));
            }
            format!("{}({})", cap.name, args.join(", "))
        }
        None => format!("{}(?)", cap.name),
    }
}

/// `{name}` placeholders of an endpoint template, in order.
pub fn path_placeholders(endpoint: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = endpoint;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push(rest[start + 1..start + len].to_owned());
        rest = &rest[start + len + 1..];
    }
    out
}

fn body_rules(body: Option<&BodyRules>) -> String {
    let Some(b) = body else {
        return "JSON only, any keys, at most 65536 bytes".to_owned();
    };
    let mut parts = vec![
        if b.allow_raw {
            "JSON or raw bytes"
        } else {
            "JSON only"
        }
        .to_owned(),
    ];
    match &b.allow_keys {
        Some(keys) if keys.is_empty() => parts.push("no keys at all".to_owned()),
        Some(keys) => parts.push(format!("only keys {}", keys.join(", "))),
        None => parts.push("any keys".to_owned()),
    }
    if !b.deny_keys.is_empty() {
        parts.push(format!("never {}", b.deny_keys.join(", ")));
    }
    parts.push(format!("at most {} bytes", b.max_bytes));
    parts.join(", ")
}

fn join_url(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

/// Describes one capability: signature, methods and full URL globs, query/body rules, how the
/// credential is injected, rate limit, documentation link.
pub fn describe_capability(cap: &Capability, out: &mut String) {
    let _ = writeln!(out, "  {}", signature(cap));
    match cap.form() {
        Some(CapabilityForm::ScopedFetch {
            base_url,
            paths,
            methods,
        }) => {
            let methods: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            let _ = writeln!(out, "    methods: {}", methods.join(", "));
            for p in paths {
                let _ = writeln!(out, "    url:     {}", join_url(base_url, p));
                // The reading in words, from the same grammar the runner compiles with (a
                // literal path reads as itself).
                match PathGlob::parse(p) {
                    Ok(_) if !p.contains('*') => {}
                    Ok(glob) => {
                        let _ =
                            writeln!(out, "           = {}", join_url(base_url, &glob.explain()));
                    }
                    Err(e) => {
                        let _ = writeln!(
                            out,
                            "           (invalid, the runner refuses this Permit: {e})"
                        );
                    }
                }
            }
            match &cap.query {
                Some(q) if !q.allow.is_empty() => {
                    let _ = writeln!(out, "    query:   only {}", q.allow.join(", "));
                }
                _ => {
                    let _ = writeln!(out, "    query:   none allowed");
                }
            }
        }
        Some(CapabilityForm::TypedEndpoint {
            endpoint,
            method,
            params,
        }) => {
            let _ = writeln!(out, "    {method} {endpoint}");
            for (name, p) in params {
                let place = match p.location {
                    ParamLocation::Path => "path",
                    ParamLocation::Query => "query",
                    ParamLocation::Body => "body",
                    ParamLocation::Header => "header",
                };
                let req = if p.required || p.location == ParamLocation::Path {
                    ", required"
                } else {
                    ""
                };
                let pat = p
                    .pattern
                    .as_ref()
                    .map(|r| format!(", must match {r}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "    param {name}: in {place}{req}{pat}");
            }
        }
        Some(CapabilityForm::Fetch {
            hosts,
            paths,
            methods,
            bindings,
        }) => {
            describe_fetch(cap, hosts, paths, methods, bindings, out);
        }
        None => {
            let _ = writeln!(
                out,
                "    (invalid: not exactly one of baseUrl, endpoint or hosts)"
            );
        }
    }
    let _ = writeln!(out, "    body:    {}", body_rules(cap.body.as_ref()));
    match &cap.auth {
        Some(a) => {
            let target = match (&a.header, &a.query_param) {
                (Some(h), _) => format!("header {h}"),
                (None, Some(q)) => format!("query parameter {q}"),
                (None, None) => "nowhere".to_owned(),
            };
            let _ = writeln!(
                out,
                "    sends:   {target} = \"{}\" (secret filled in inside the sandbox)",
                a.value
            );
        }
        None if cap.cookies.is_some() || !cap.hosts.is_empty() => {}
        None => {
            let _ = writeln!(out, "    sends:   no credential");
        }
    }
    if let Some(jar) = &cap.cookies {
        let _ = writeln!(
            out,
            "    cookies: from the cookie jar {jar}: each request gets only the cookies a browser would send to its URL (their own domain and its subdomains, path, https for Secure ones, not expired)"
        );
    }
    if let Some(r) = &cap.rate_limit {
        let _ = writeln!(
            out,
            "    limit:   {} calls per {} s, across all Executions",
            r.requests, r.per_seconds
        );
    }
    if let Some(d) = &cap.doc_url {
        let _ = writeln!(out, "    docs:    {d}");
    }
}

/// The fetch form in plain words: "code may call GET/POST https://api.github.com/**" per
/// host and path, the query rule, and each secret binding ("GITHUB_TOKEN may be sent to
/// api.github.com in the Authorization header").
fn describe_fetch(
    cap: &Capability,
    hosts: &[String],
    paths: &[String],
    methods: &[oauth3_crds::HttpMethod],
    bindings: &[oauth3_crds::SecretBinding],
    out: &mut String,
) {
    let methods: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
    let all = ["/**".to_owned()];
    let paths = if paths.is_empty() { &all[..] } else { paths };
    for host in hosts {
        for p in paths {
            let _ = writeln!(
                out,
                "    code may call {} https://{host}{p}",
                methods.join("/")
            );
            match PathGlob::parse(p) {
                Ok(_) if !p.contains('*') => {}
                Ok(glob) => {
                    let _ = writeln!(out, "           = https://{host}{}", glob.explain());
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "           (invalid, the runner refuses this Permit: {e})"
                    );
                }
            }
        }
    }
    match &cap.query {
        Some(q) if q.allow.is_empty() => {
            let _ = writeln!(out, "    query:   none allowed");
        }
        Some(q) => {
            let _ = writeln!(out, "    query:   only {}", q.allow.join(", "));
        }
        None => {
            let _ = writeln!(out, "    query:   any");
        }
    }
    for b in bindings {
        let locations: std::collections::BTreeSet<_> = b.locations.iter().collect();
        let places: Vec<String> = locations
            .into_iter()
            .map(|l| match l {
                oauth3_crds::SecretLocation::Header => {
                    format!("the {} header", b.headers.join(" or "))
                }
                oauth3_crds::SecretLocation::Query => "a query parameter".to_owned(),
                oauth3_crds::SecretLocation::Body => "the body".to_owned(),
            })
            .collect();
        let _ = writeln!(
            out,
            "    secret:  {} may be sent to {} in {} (the code sees only a placeholder)",
            b.secret,
            b.hosts.join(", "),
            places.join(" or ")
        );
    }
    if bindings.is_empty() {
        let _ = writeln!(out, "    secret:  none may be sent");
    }
}

/// Describes a Permit spec in full, for an approver.
pub fn describe_spec(spec: &PermitSpec, digest: &str) -> String {
    describe_spec_with(spec, digest, None)
}

/// What the sealed Secret of a Permit secret says of itself (its non-secret annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFacts {
    /// An oauth2 credential.
    OAuth2 {
        /// When the sealed access token expires, if known.
        expires_at: Option<Timestamp>,
        /// Whether the runner refreshed it inside the TEE (else it is as signed in).
        refreshed_in_tee: bool,
    },
}

impl SecretFacts {
    /// The facts of a sealed Secret, from its annotations (pure); `None` for a plain secret.
    pub fn of(secret: &k8s_openapi::api::core::v1::Secret) -> Option<Self> {
        use oauth3_protocol::oauth2 as o;
        let ann = secret.metadata.annotations.as_ref()?;
        if ann.get(o::ANNOTATION_CREDENTIAL_KIND).map(String::as_str) != Some(o::OAUTH2_TYPE) {
            return None;
        }
        Some(Self::OAuth2 {
            expires_at: ann
                .get(o::ANNOTATION_EXPIRES_AT)
                .and_then(|t| t.parse().ok()),
            refreshed_in_tee: ann.get(o::ANNOTATION_REFRESHED_BY).map(String::as_str)
                == Some("tee"),
        })
    }
}

/// A secret's name as the owner reads it (pure): `GITHUB (OAuth, expires in 41 min, refreshed
/// in the TEE)` for an oauth2 credential, the bare name otherwise.
pub fn secret_label(name: &str, facts: Option<&SecretFacts>, now: Timestamp) -> String {
    let Some(SecretFacts::OAuth2 {
        expires_at,
        refreshed_in_tee,
    }) = facts
    else {
        return name.to_owned();
    };
    let mut parts = vec!["OAuth".to_owned()];
    if let Some(at) = expires_at {
        let secs = at.as_second() - now.as_second();
        let human = |s: i64| {
            if s >= 2 * 3600 {
                format!("{} h", s / 3600)
            } else {
                format!("{} min", (s + 59) / 60)
            }
        };
        parts.push(if secs > 0 {
            format!("expires in {}", human(secs))
        } else {
            format!("expired {} ago", human(-secs))
        });
    }
    parts.push(if *refreshed_in_tee {
        "refreshed in the TEE".to_owned()
    } else {
        "as signed in".to_owned()
    });
    format!("{name} ({})", parts.join(", "))
}

/// The capabilities whose calls can carry secret `name` (its `auth` template names `{name}`,
/// or a fetch binding does), pure.
fn capabilities_using(spec: &PermitSpec, name: &str) -> Vec<String> {
    let needle = format!("{{{name}}}");
    spec.capabilities
        .iter()
        .filter(|c| {
            c.auth.as_ref().is_some_and(|a| a.value.contains(&needle))
                || serde_json::to_value(c).is_ok_and(|v| {
                    v["secretBindings"]
                        .as_array()
                        .is_some_and(|b| b.iter().any(|b| b["secret"] == name))
                })
        })
        .map(|c| c.name.clone())
        .collect()
}

/// [`describe_spec`] with the network rule as the operator enforces it (`status.network`);
/// without it, the hosts the rule is made of.
pub fn describe_spec_with(spec: &PermitSpec, digest: &str, network: Option<&str>) -> String {
    describe_spec_facts(
        spec,
        digest,
        network,
        &BTreeMap::new(),
        Timestamp::UNIX_EPOCH,
    )
}

/// [`describe_spec_with`] with what the sealed Secrets say of themselves at `now`.
pub fn describe_spec_facts(
    spec: &PermitSpec,
    digest: &str,
    network: Option<&str>,
    facts: &BTreeMap<String, SecretFacts>,
    now: Timestamp,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "The agent says: \"{}\"", spec.description);
    let _ = writeln!(out);
    let _ = writeln!(out, "It may call ({}):", spec.capabilities.len());
    for cap in &spec.capabilities {
        describe_capability(cap, &mut out);
    }
    let _ = writeln!(out);
    if spec.secrets.is_empty() {
        let _ = writeln!(out, "Secrets: none");
    } else {
        let labels: Vec<String> = spec
            .secrets
            .iter()
            .map(|n| secret_label(n, facts.get(n), now))
            .collect();
        let _ = writeln!(
            out,
            "Secrets: {} (never visible to the agent or its code)",
            labels.join(", ")
        );
        for name in spec.secrets.iter().filter(|n| facts.contains_key(*n)) {
            let users = capabilities_using(spec, name);
            let _ = writeln!(
                out,
                "  {name} is an OAuth access token, refreshed inside the TEE when it expires; used by: {}",
                if users.is_empty() {
                    "no capability".to_owned()
                } else {
                    users.join(", ")
                }
            );
        }
    }
    let max = spec
        .max_executions
        .map(|m| format!("; at most {m} Executions"))
        .unwrap_or_default();
    let _ = writeln!(out, "Lifetime: {} after approval{max}", spec.valid_for);
    let review = match spec.code_review {
        CodeReview::None => "none: any code may use these calls",
        CodeReview::PerCode => "per code: every new piece of code needs your approval",
    };
    let _ = writeln!(out, "Code review: {review}");
    if let Some(proxy) = spec.proxy.as_ref().filter(|p| p.enabled) {
        let _ = writeln!(
            out,
            "Direct calls: calls may be made directly, without code, by {} (through the credential proxy in the TEE, same rules; at most {} at once; it stops after {} without a call)",
            proxy.callers.join(", "),
            proxy.max_concurrent_calls,
            proxy.idle_timeout
        );
    }
    if !spec.pinned_code.is_empty() {
        let _ = writeln!(
            out,
            "Code: only this code may run (you approve it with this spec): {}",
            spec.pinned_code.join(", ")
        );
    }
    if !spec.arg_rules.is_empty() {
        let _ = writeln!(out, "Argument rules (checked before every run):");
        for rule in &spec.arg_rules {
            let why = rule
                .rationale
                .as_deref()
                .map(|r| format!(" (\"{r}\")"))
                .unwrap_or_default();
            let _ = writeln!(out, "  - {}{why}", oauth3_crds::describe_rule(rule));
        }
    }
    if !spec.unenforced_constraints.is_empty() {
        let _ = writeln!(
            out,
            "Constraints the agent states, NOT ENFORCED (oauth3 cannot check these; only the rules above bind):"
        );
        for c in &spec.unenforced_constraints {
            let _ = writeln!(out, "  - NOT ENFORCED: \"{c}\"");
        }
    }
    if spec.require_attestation.is_some() {
        let _ = writeln!(
            out,
            "Attestation: required (tdx): a result without a TDX quote over it ends Failed"
        );
    }
    let network = network
        .map(str::to_owned)
        .unwrap_or_else(|| crate::egress::describe(spec, None));
    let _ = writeln!(out, "Network: the sandbox may connect to {network}");
    let _ = writeln!(out, "Spec digest: {digest}");
    out
}

/// Describes a stored Permit: header with name, namespace and phase, then [`describe_spec`].
pub fn describe_permit(permit: &Permit, digest: &str) -> String {
    describe_permit_facts(permit, digest, &BTreeMap::new(), Timestamp::UNIX_EPOCH)
}

/// [`describe_permit`] with what the Permit's sealed Secrets say of themselves at `now`.
pub fn describe_permit_facts(
    permit: &Permit,
    digest: &str,
    facts: &BTreeMap<String, SecretFacts>,
    now: Timestamp,
) -> String {
    let status = permit.status.clone().unwrap_or_default();
    let phase = status
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "New".into());
    let until = status
        .approval
        .as_ref()
        .and_then(|a| a.expires_at.as_ref())
        .filter(|_| phase == "Approved")
        .map(|t| format!(" until {}", t.0))
        .unwrap_or_default();
    format!(
        "Permit {} (namespace {}): {phase}{until}\n\n{}{}{}",
        permit.metadata.name.as_deref().unwrap_or("?"),
        permit.metadata.namespace.as_deref().unwrap_or("?"),
        describe_spec_facts(
            &permit.effective_spec(),
            digest,
            status.network.as_deref(),
            facts,
            now
        ),
        intent_text(permit),
        pinned_code_text(permit)
    )
}

/// The agent's intent and the operator's draft of it: the goals, which document each drafted
/// rule came from, what the drafter chose not to allow, and why a draft failed.
fn intent_text(permit: &Permit) -> String {
    let spec = &permit.spec;
    if spec.intent.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nThe agent's intent (the rules above were drafted from it, not written by the agent):"
    );
    for i in &spec.intent {
        let _ = writeln!(out, "  - {}: \"{}\"", i.name, i.goal);
        if !i.operations.is_empty() {
            let _ = writeln!(out, "    operations asked for: {}", i.operations.join(", "));
        }
        if !i.constraints.is_empty() {
            let fixed: Vec<String> = i
                .constraints
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            let _ = writeln!(out, "    fixed: {}", fixed.join(", "));
        }
    }
    let draft = permit.status.as_ref().and_then(|s| s.draft.as_ref());
    let current = oauth3_crds::spec_digest(spec).unwrap_or_default();
    match draft.filter(|d| d.source_digest == current) {
        None => {
            let _ = writeln!(
                out,
                "Draft: not made yet; nothing can be approved until it is."
            );
        }
        Some(d) => {
            let docs: Vec<String> = d
                .documents
                .iter()
                .map(|x| format!("{} ({})", x.url, x.digest))
                .collect();
            let _ = writeln!(
                out,
                "Drafted by the {} drafter from: {}",
                d.drafter,
                docs.join(", ")
            );
            if !d.sources.is_empty() {
                let _ = writeln!(out, "Where each rule came from:");
                for src in &d.sources {
                    let op = src
                        .operation
                        .as_deref()
                        .map(|o| format!(", operation {o}"))
                        .unwrap_or_default();
                    let _ = writeln!(out, "  - {}: {}{op}", src.capability, src.document);
                }
            }
            if let Some(r) = &d.rationale {
                let _ = writeln!(out, "Why:");
                for line in r.lines() {
                    let _ = writeln!(out, "  - {line}");
                }
            }
            if !d.not_allowed.is_empty() {
                let _ = writeln!(out, "Not allowed (the drafter left these out):");
                for n in &d.not_allowed {
                    let _ = writeln!(out, "  - {n}");
                }
            }
            if !d.errors.is_empty() {
                let _ = writeln!(out, "The draft FAILED, nothing can be approved:");
                for e in &d.errors {
                    let _ = writeln!(out, "  - {e}");
                }
            }
        }
    }
    out
}

/// The pinned code as it will run, when the Permit carries it (annotation
/// `oauth3.dev/pinned-code`) and its digest is a pinned one; otherwise how to check it.
fn pinned_code_text(permit: &Permit) -> String {
    if permit.spec.pinned_code.is_empty() {
        return String::new();
    }
    let attached = permit
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(oauth3_crds::constants::ANNOTATION_PINNED_CODE));
    // The annotation carries the text; a pinned digest binds it to its language.
    let pinned = attached.and_then(|code| {
        [
            (oauth3_crds::CodeLanguage::JavaScript, "JavaScript"),
            (oauth3_crds::CodeLanguage::TypeScript, "TypeScript"),
        ]
        .into_iter()
        .map(|(language, name)| (oauth3_crds::code_digest_in(code, language), name))
        .find(|(digest, _)| permit.spec.pinned_code.contains(digest))
        .map(|found| (code, found))
    });
    match (attached, pinned) {
        (Some(_), Some((code, (digest, language)))) => {
            let mut out =
                format!("\nThe pinned code ({language}, {digest}), exactly as it will run:\n");
            for line in code.lines() {
                let _ = writeln!(out, "  | {line}");
            }
            out
        }
        (Some(_), None) => "\nThe code attached to this Permit does not match its pinned digest: do not approve.\n"
            .to_owned(),
        (None, _) => "\nThe pinned code is not attached: get it from the agent and check its digest (sha256 of the code) before you approve.\n"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> PermitSpec {
        serde_json::from_value(json!({
            "description": "Triage bot",
            "capabilities": [
                {"name": "github", "baseUrl": "https://api.github.com/",
                 "paths": ["/repos/o/r/issues", "/repos/o/r/issues/*"], "methods": ["GET", "POST"],
                 "query": {"allow": ["state"]},
                 "body": {"allowKeys": ["title", "body"], "denyKeys": ["assignees"], "maxBytes": 1024},
                 "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"},
                 "rateLimit": {"requests": 30, "perSeconds": 60}},
                {"name": "createIssue", "endpoint": "https://api.github.com/repos/{owner}/{repo}/issues",
                 "method": "POST", "params": {"owner": {"in": "path"}, "repo": {"in": "path"},
                 "title": {"in": "body", "required": true}, "labels": {"in": "body"}}}
            ],
            "secrets": ["GITHUB_TOKEN"],
            "validFor": "7d", "maxExecutions": 5, "codeReview": "perCode"
        }))
        .expect("spec")
    }

    #[test]
    fn direct_calls_name_their_callers_and_only_when_the_proxy_is_enabled() {
        let mut spec = spec();
        assert!(!describe_spec(&spec, "sha256:abc").contains("Direct calls"));
        spec.proxy =
            serde_json::from_value(json!({"enabled": false, "callers": ["a"]})).expect("proxy");
        assert!(!describe_spec(&spec, "sha256:abc").contains("Direct calls"));
        spec.proxy = serde_json::from_value(json!({
            "enabled": true,
            "callers": ["system:serviceaccount:agents:coder", "alice"]
        }))
        .expect("proxy");
        let text = describe_spec(&spec, "sha256:abc");
        assert!(
            text.contains(
                "Direct calls: calls may be made directly, without code, by system:serviceaccount:agents:coder, alice (through the credential proxy in the TEE, same rules; at most 64 at once; it stops after 15m without a call)"
            ),
            "{text}"
        );
    }

    #[test]
    fn pinned_code_arg_rules_and_unenforced_constraints_are_shown_for_what_they_are() {
        let mut spec = spec();
        let plain = describe_spec(&spec, "sha256:abc");
        assert!(!plain.contains("NOT ENFORCED") && !plain.contains("Argument rules"));
        spec.pinned_code = vec![oauth3_crds::code_digest("return 1")];
        spec.arg_rules = serde_json::from_value(json!([
            {"arg": "owner", "regex": "amiller", "rationale": "only my repos"},
            {"arg": "count", "op": "le", "value": 10}
        ]))
        .expect("rules");
        spec.unenforced_constraints = vec!["only public repositories".into()];
        let text = describe_spec(&spec, "sha256:abc");
        for needle in [
            &format!(
                "Code: only this code may run (you approve it with this spec): {}",
                oauth3_crds::code_digest("return 1")
            ),
            "Argument rules (checked before every run):",
            "  - args.owner must match ^(?:amiller)$ (the whole value) (\"only my repos\")",
            "  - args.count must be a number <= 10",
            "  - NOT ENFORCED: \"only public repositories\"",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
    }

    #[test]
    fn a_fetch_capability_reads_as_the_calls_and_where_each_secret_may_go() {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "List repositories",
            "capabilities": [{
                "name": "fetch", "hosts": ["api.github.com", "uploads.github.com"],
                "methods": ["GET", "POST"],
                "secretBindings": [
                    {"secret": "GITHUB_TOKEN", "hosts": ["api.github.com"]},
                    {"secret": "UPLOAD_KEY", "hosts": ["uploads.github.com"], "in": ["query", "header"], "headers": ["X-Api-Key"]}
                ]
            }],
            "secrets": ["GITHUB_TOKEN", "UPLOAD_KEY"]
        }))
        .expect("spec");
        let text = describe_spec(&spec, "sha256:abc");
        for line in [
            "  fetch: the code's own fetch(url, init)",
            "    code may call GET/POST https://api.github.com/**",
            "    code may call GET/POST https://uploads.github.com/**",
            "    query:   any",
            "    secret:  GITHUB_TOKEN may be sent to api.github.com in the Authorization header (the code sees only a placeholder)",
            "    secret:  UPLOAD_KEY may be sent to uploads.github.com in the X-Api-Key header or a query parameter",
        ] {
            assert!(text.contains(line), "{line:?} missing in:\n{text}");
        }
        assert!(!text.contains("no credential"), "{text}");
        let targets: Vec<String> = crate::egress::targets(&spec)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(targets, ["api.github.com:443", "uploads.github.com:443"]);
    }

    #[test]
    fn a_cookie_jar_is_named_with_what_it_sends_where() {
        let mut spec = spec();
        spec.capabilities[0].auth = None;
        spec.capabilities[0].cookies = Some("COOKIES_EXAMPLE_COM".into());
        let text = describe_spec(&spec, "sha256:abc");
        assert!(
            text.contains("    cookies: from the cookie jar COOKIES_EXAMPLE_COM: each request gets only the cookies a browser would send to its URL"),
            "{text}"
        );
    }

    #[test]
    fn an_oauth2_secret_reads_as_oauth_with_its_expiry_and_where_it_was_refreshed() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().expect("time");
        let facts = SecretFacts::OAuth2 {
            expires_at: Some("2026-12-03T12:41:00Z".parse().expect("time")),
            refreshed_in_tee: true,
        };
        assert_eq!(
            secret_label("GITHUB", Some(&facts), now),
            "GITHUB (OAuth, expires in 41 min, refreshed in the TEE)"
        );
        let login = SecretFacts::OAuth2 {
            expires_at: Some("2026-12-03T11:57:00Z".parse().expect("time")),
            refreshed_in_tee: false,
        };
        assert_eq!(
            secret_label("GITHUB", Some(&login), now),
            "GITHUB (OAuth, expired 3 min ago, as signed in)"
        );
        assert_eq!(secret_label("API_TOKEN", None, now), "API_TOKEN");
        let spec: PermitSpec = serde_json::from_value(serde_json::json!({
            "description": "d", "secrets": ["GITHUB", "API_TOKEN"],
            "capabilities": [{"name": "github", "baseUrl": "https://api.github.com", "paths": ["/x"],
                "methods": ["GET"], "auth": {"header": "Authorization", "value": "Bearer {GITHUB}"}}]
        }))
        .expect("spec");
        let text = describe_spec_facts(
            &spec,
            "d",
            None,
            &BTreeMap::from([("GITHUB".to_owned(), facts)]),
            now,
        );
        assert!(
            text.contains("Secrets: GITHUB (OAuth, expires in 41 min, refreshed in the TEE), API_TOKEN (never visible"),
            "{text}"
        );
        assert!(text.contains("GITHUB is an OAuth access token, refreshed inside the TEE when it expires; used by: github"), "{text}");
    }

    #[test]
    fn the_pinned_code_is_shown_only_when_its_digest_matches() {
        let mut spec = spec();
        spec.pinned_code = vec![oauth3_crds::code_digest("return 1;\n")];
        let mut permit = Permit::new("p", spec);
        let text = describe_permit(&permit, "sha256:abc");
        assert!(text.contains("The pinned code is not attached"), "{text}");
        permit.metadata.annotations = Some(
            [(
                oauth3_crds::constants::ANNOTATION_PINNED_CODE.to_owned(),
                "return 1;\n".to_owned(),
            )]
            .into(),
        );
        let text = describe_permit(&permit, "sha256:abc");
        assert!(
            text.contains("exactly as it will run:\n  | return 1;\n"),
            "{text}"
        );
        permit.metadata.annotations = Some(
            [(
                oauth3_crds::constants::ANNOTATION_PINNED_CODE.to_owned(),
                "return 2;\n".to_owned(),
            )]
            .into(),
        );
        let text = describe_permit(&permit, "sha256:abc");
        assert!(
            text.contains("does not match its pinned digest: do not approve"),
            "{text}"
        );
        assert!(!text.contains("return 2"), "{text}");
    }

    #[test]
    fn the_network_rule_is_shown_as_the_operator_enforces_it() {
        let mut permit = Permit::new("p", spec());
        let text = describe_permit(&permit, "sha256:abc");
        assert!(
            text.contains("Network: the sandbox may connect to only api.github.com:443, DNS and the operator (unless the operator runs with --egress-policy open)"),
            "{text}"
        );
        permit.status = Some(oauth3_crds::PermitStatus {
            network: Some(crate::egress::network_text(
                &permit.spec,
                Some(crate::egress::EgressMode::Open),
            )),
            ..Default::default()
        });
        let text = describe_permit(&permit, "sha256:abc");
        assert!(
            text.contains(
                "Network: the sandbox may connect to any public host on 443 (runner checks only)"
            ),
            "{text}"
        );
    }

    #[test]
    fn every_glob_is_spelled_out_in_words_and_an_invalid_one_says_so() {
        let mut spec = spec();
        spec.capabilities[0].paths = vec![
            "/repos/o/r/issues/**".into(),
            "/files/*.json".into(),
            "/repos/o/r/issues**".into(),
        ];
        let text = describe_spec(&spec, "sha256:abc");
        for needle in [
            "url:     https://api.github.com/repos/o/r/issues/**",
            "           = https://api.github.com/repos/o/r/issues and every path below it",
            "           = https://api.github.com/files/<one segment: anything + \".json\">",
            "url:     https://api.github.com/repos/o/r/issues**",
            "(invalid, the runner refuses this Permit: segment \"issues**\": ** must be a whole path segment",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn description_shows_every_rule_an_approver_needs() {
        let text = describe_spec(&spec(), "sha256:abc");
        for needle in [
            "The agent says: \"Triage bot\"",
            "github(method, path, {query, body, headers})",
            "methods: GET, POST",
            "url:     https://api.github.com/repos/o/r/issues\n",
            "url:     https://api.github.com/repos/o/r/issues/*",
            "query:   only state",
            "only keys title, body, never assignees, at most 1024 bytes",
            "header Authorization = \"Bearer {GITHUB_TOKEN}\"",
            "30 calls per 60 s",
            "createIssue(owner, repo, {labels, title})",
            "POST https://api.github.com/repos/{owner}/{repo}/issues",
            "param title: in body, required",
            "Secrets: GITHUB_TOKEN",
            "Lifetime: 7d after approval; at most 5 Executions",
            "every new piece of code needs your approval",
            "Spec digest: sha256:abc",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn no_query_and_default_body_are_spelled_out() {
        let mut s = spec();
        s.capabilities[0].query = None;
        s.capabilities[0].body = None;
        let text = describe_spec(&s, "d");
        assert!(text.contains("query:   none allowed"), "{text}");
        assert!(
            text.contains("JSON only, any keys, at most 65536 bytes"),
            "{text}"
        );
    }

    #[test]
    fn placeholders_come_out_in_template_order() {
        assert_eq!(path_placeholders("https://h/{b}/x/{a}"), ["b", "a"]);
        assert!(path_placeholders("https://h/x").is_empty());
    }
}
