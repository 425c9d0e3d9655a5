//! The fetch form: the code's own `fetch(url, init)`, decided against the capabilities that
//! list the URL's host.
//!
//! The URL is checked as written before the URL parser sees it (control characters, spaces,
//! backslashes, scheme-relative or scheme-less forms are refused), its path then goes through
//! the same textual checks and canonicalisation as a scoped-fetch path ([`path::resolve`]:
//! `.`/`..` segments raw or percent-encoded, encoded slashes, empty segments, malformed
//! escapes are refused), and the canonical URL is matched against the capability's hosts,
//! methods, path globs, query and body rules. The URL that is matched is the URL that is sent.
//!
//! Hosts are matched exactly on the parsed host (the `url` crate lower-cases names and writes
//! IP addresses in their canonical form, so `API.GITHUB.COM`, `0x7f.1` and `2130706433` are
//! seen as what they are); a host with a trailing dot or with userinfo is refused.

use std::collections::BTreeSet;

use oauth3_crds::{HttpMethod, SecretBinding, SecretLocation};
use serde_json::Value;
use url::Url;

use super::path::{self, Glob};
use super::{
    CompiledBody, CompiledCapability, Denial, Form, PolicyError, PreparedRequest, body,
    host_is_loopback, method_list,
};
use crate::host::{FetchBody, FetchRequest};

/// One `hosts` entry, compiled: the host as the URL parser writes it and the port (`None`:
/// the scheme's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostEntry {
    source: String,
    host: url::Host<String>,
    port: Option<u16>,
}

impl HostEntry {
    fn compile(cap: &str, entry: &str) -> Result<Self, PolicyError> {
        let bad = |reason: &str| PolicyError::BadUrl {
            name: cap.to_owned(),
            reason: format!("hosts entry {entry:?}: {reason}"),
        };
        if entry.is_empty()
            || entry.ends_with('.')
            || entry
                .bytes()
                .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:[]".contains(&b)))
        {
            return Err(bad(
                "must be a lower-case host name or IP address with an optional :port",
            ));
        }
        let url = Url::parse(&format!("https://{entry}/"))
            .map_err(|e| bad(&format!("does not parse as a host: {e}")))?;
        let host = url
            .host()
            .map(|h| h.to_owned())
            .ok_or_else(|| bad("has no host"))?;
        let written = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        // `:443` is the default and disappears when parsed; anything else that changes
        // (e.g. `0x7f.1` becoming `127.0.0.1`) is a host the owner did not read as written.
        if written != entry && written != entry.trim_end_matches(":443") {
            return Err(bad(&format!(
                "is written {written} once parsed; write it that way"
            )));
        }
        Ok(Self {
            source: entry.to_owned(),
            host,
            port: url.port().filter(|&p| p != 443),
        })
    }

    /// Whether `url` (http or https) is at this host and port.
    fn matches(&self, url: &Url) -> bool {
        let Some(host) = url.host() else {
            return false;
        };
        if host.to_owned() != self.host {
            return false;
        }
        let default = if url.scheme() == "http" { 80 } else { 443 };
        url.port_or_known_default() == Some(self.port.unwrap_or(default))
    }
}

/// One secret binding, compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledBinding {
    /// The secret's name.
    pub(crate) secret: String,
    hosts: Vec<HostEntry>,
    /// Where it may go.
    pub(crate) locations: BTreeSet<SecretLocation>,
    /// The headers that may carry it, lower case.
    pub(crate) headers: BTreeSet<String>,
}

impl CompiledBinding {
    /// The hosts as written in the Permit.
    pub(crate) fn host_list(&self) -> Vec<&str> {
        self.hosts.iter().map(|h| h.source.as_str()).collect()
    }

    /// Whether the secret may be sent to `url`'s host in `location` (for a header, in the
    /// header `header`).
    pub(crate) fn allows(&self, url: &Url, location: SecretLocation, header: Option<&str>) -> bool {
        self.locations.contains(&location)
            && self.hosts.iter().any(|h| h.matches(url))
            && header.is_none_or(|h| self.headers.contains(&h.to_ascii_lowercase()))
    }
}

/// The fetch form, compiled.
#[derive(Debug, Clone)]
pub(crate) struct FetchRules {
    hosts: Vec<HostEntry>,
    globs: Vec<Glob>,
    methods: BTreeSet<HttpMethod>,
    /// `None`: any query parameter.
    query_allow: Option<BTreeSet<String>>,
    pub(crate) bindings: Vec<CompiledBinding>,
}

impl FetchRules {
    pub(crate) fn compile(
        cap: &str,
        hosts: &[String],
        paths: &[String],
        methods: &[HttpMethod],
        query: Option<&oauth3_crds::QueryRules>,
        bindings: &[SecretBinding],
    ) -> Result<Self, PolicyError> {
        let hosts = hosts
            .iter()
            .map(|h| HostEntry::compile(cap, h))
            .collect::<Result<Vec<_>, _>>()?;
        let base = Url::parse("https://fetch.invalid/").map_err(|e| PolicyError::BadUrl {
            name: cap.to_owned(),
            reason: e.to_string(),
        })?;
        let all = ["/**".to_owned()];
        let paths = if paths.is_empty() { &all[..] } else { paths };
        let globs = paths
            .iter()
            .map(|g| {
                Glob::compile(&base, "", g).map_err(|reason| PolicyError::BadGlob {
                    name: cap.to_owned(),
                    glob: g.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bindings = bindings
            .iter()
            .map(|b| {
                let compiled = b
                    .hosts
                    .iter()
                    .map(|h| HostEntry::compile(cap, h))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(stray) = compiled.iter().find(|h| !hosts.contains(h)) {
                    return Err(PolicyError::BadUrl {
                        name: cap.to_owned(),
                        reason: format!(
                            "secretBindings host {} of {} is not one of the capability's hosts",
                            stray.source, b.secret
                        ),
                    });
                }
                if let Some(h) = b
                    .headers
                    .iter()
                    .find(|h| oauth3_crds::headers::auth_header_refusal(h).is_some())
                {
                    return Err(PolicyError::BadAuth {
                        name: cap.to_owned(),
                        field: "secretBindings.headers",
                        reason: if h.is_empty() {
                            "must not be empty"
                        } else {
                            "must not be a header the runner sets itself"
                        },
                    });
                }
                Ok(CompiledBinding {
                    secret: b.secret.clone(),
                    hosts: compiled,
                    locations: b.locations.iter().copied().collect(),
                    headers: b.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            hosts,
            globs,
            methods: methods.iter().copied().collect(),
            query_allow: query.map(|q| q.allow.iter().cloned().collect()),
            bindings,
        })
    }

    /// Whether some entry of `hosts` is `url`'s host and port.
    pub(crate) fn has_host(&self, url: &Url) -> bool {
        self.hosts.iter().any(|h| h.matches(url))
    }

    /// The hosts as written in the Permit.
    pub(crate) fn host_list(&self) -> Vec<&str> {
        self.hosts.iter().map(|h| h.source.as_str()).collect()
    }

    /// Whether `url`'s canonical path matches a glob.
    pub(crate) fn allows_path(&self, url: &Url) -> bool {
        path::check_canonical(url, "").is_ok_and(|rel| self.globs.iter().any(|g| g.matches(&rel)))
    }

    pub(crate) fn allows_method(&self, method: HttpMethod) -> bool {
        self.methods.contains(&method)
    }
}

fn deny(method: &str, url: &str, reason: String) -> Denial {
    Denial {
        capability: "fetch".to_owned(),
        method: method.to_owned(),
        url: url.to_owned(),
        reason: format!("fetch {method} {url} refused: {reason}"),
    }
}

/// Splits an absolute `http(s)://` URL as written into (scheme, authority, path, query),
/// without interpreting anything; the fragment is dropped (it is never sent).
fn split_raw(raw: &str) -> Result<(&str, &str, &str, Option<&str>), String> {
    let (scheme, rest) = raw
        .split_once("://")
        .filter(|(s, _)| s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("http"))
        .ok_or_else(|| {
            "the URL must be absolute and start with https:// (or http:// for a loopback host)"
                .to_owned()
        })?;
    let rest = rest.split('#').next().unwrap_or_default();
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    Ok((scheme, authority, path, query))
}

/// The textual checks on the URL as the code wrote it.
fn check_raw(raw: &str) -> Result<(), String> {
    if let Some(c) = raw.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "the URL contains U+{:04X} (control characters and spaces are not allowed; percent-encode them)",
            u32::from(c)
        ));
    }
    if raw.contains('\\') {
        return Err("the URL contains a backslash".to_owned());
    }
    Ok(())
}

/// The URL of a fetch request, parsed and checked: an absolute http(s) URL without userinfo,
/// http only to a loopback host, its path canonical (scoped-fetch rules) and its query as
/// written. Relative `location`s are resolved against `base` (redirects).
pub(crate) fn fetch_url(raw: &str, base: Option<&Url>) -> Result<Url, String> {
    check_raw(raw)?;
    let absolute;
    let raw = match base {
        Some(base) if !raw.contains("://") => {
            absolute = base
                .join(raw)
                .map_err(|e| format!("bad location {raw:?}: {e}"))?;
            absolute.as_str()
        }
        _ => raw,
    };
    let (_, authority, raw_path, raw_query) = split_raw(raw)?;
    if authority.contains('@') {
        return Err("userinfo (user:password@) is not allowed in the URL".to_owned());
    }
    let parsed = Url::parse(raw).map_err(|e| format!("the URL does not parse: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("userinfo (user:password@) is not allowed in the URL".to_owned());
    }
    let Some(host) = parsed.host_str() else {
        return Err("the URL has no host".to_owned());
    };
    if host.ends_with('.') {
        return Err(format!(
            "the host {host} ends with a dot; write it without the dot, as the Permit lists it"
        ));
    }
    if parsed.scheme() == "http" && !host_is_loopback(&parsed) {
        return Err("plain http is allowed only to loopback hosts; use https".to_owned());
    }
    let mut origin = parsed.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    let raw_path = if raw_path.is_empty() { "/" } else { raw_path };
    let mut url = path::resolve(&origin, "", raw_path)?.url;
    if let Some(q) = raw_query.filter(|q| !q.is_empty()) {
        url.set_query(Some(q));
    }
    Ok(url)
}

/// Whether `name` is a JSON media type (`application/json`, `application/*+json`).
fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether `content_type` is `text/plain` (any parameters).
fn is_text_plain(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("text/plain")
}

/// Checks one header the code set (a fetch capability's code may send its own
/// `Authorization` and `Cookie`, which carry its bound placeholders).
fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.contains(['\r', '\n', '\0']) || value.contains(['\r', '\n', '\0']) {
        return Err("CR, LF and NUL are not allowed in header names or values".to_owned());
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("header name {name:?} is not a valid token"));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("header {name}: control characters in the value"));
    }
    if oauth3_crds::headers::is_runner_set(name)
        && !oauth3_crds::headers::CREDENTIAL_HEADERS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "header {name} is set by the runner only (method-override, forwarding, hop-by-hop and framing headers)"
        ));
    }
    Ok(())
}

/// The body bytes of a fetch request.
fn body_bytes(body: &FetchBody) -> Result<Vec<u8>, String> {
    match body {
        FetchBody::Text(t) => Ok(t.as_bytes().to_vec()),
        FetchBody::Base64(b) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("the body from the sandbox is not base64: {e}"))
        }
    }
}

/// Decides one request against one fetch capability whose hosts include the URL's.
fn decide_one(
    cap: &CompiledCapability,
    rules: &FetchRules,
    method: HttpMethod,
    url: &Url,
    request: &FetchRequest,
) -> Result<PreparedRequest, String> {
    let name = cap.name.as_str();
    if !rules.methods.contains(&method) {
        return Err(format!(
            "method {method} not allowed for {name}; allowed: {}",
            method_list(&rules.methods)
        ));
    }
    if !rules.allows_path(url) {
        return Err(format!(
            "path {} not allowed for {name}; allowed: {}",
            url.path(),
            rules
                .globs
                .iter()
                .map(|g| g.source())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(allow) = &rules.query_allow
        && let Some((k, _)) = url.query_pairs().find(|(k, _)| !allow.contains(k.as_ref()))
    {
        let allowed = if allow.is_empty() {
            "none".to_owned()
        } else {
            allow.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        return Err(format!(
            "query param {k} not allowed for {name}; allowed: {allowed}"
        ));
    }
    let mut headers = Vec::with_capacity(request.headers.len());
    let mut content_type = None;
    for (k, v) in &request.headers {
        check_header(k, v).map_err(|r| format!("{r} (capability {name})"))?;
        if k.eq_ignore_ascii_case("content-type") {
            content_type = Some(v.clone());
        } else {
            headers.push((k.clone(), v.clone()));
        }
    }
    let body = match &request.body {
        None => None,
        Some(_) if matches!(method, HttpMethod::GET | HttpMethod::HEAD) => {
            return Err(format!("a {method} request cannot have a body"));
        }
        Some(b) => Some(encode_body(
            &body_bytes(b)?,
            &cap.body,
            content_type.as_deref(),
            name,
        )?),
    };
    let (body, content_type) = match body {
        Some((bytes, ct)) => (Some(bytes), Some(ct)),
        None => (None, content_type),
    };
    Ok(PreparedRequest {
        capability: name.to_owned(),
        method,
        url: url.clone(),
        headers,
        body,
        content_type,
        auth: None,
        cookies: None,
    })
}

/// Applies the body rules to the bytes the code sends: JSON (checked by the same key rules as
/// scoped fetch, sent as written) unless `body.allowRaw`; the code's content type is kept when
/// it is a JSON type (or `text/plain` over a JSON body), or any type with `allowRaw`.
fn encode_body(
    bytes: &[u8],
    rules: &CompiledBody,
    content_type: Option<&str>,
    cap: &str,
) -> Result<(Vec<u8>, String), String> {
    // `text/plain` is what fetch() sends for a string body the code did not label, as in
    // `body: JSON.stringify(x)`: accepted when the body is JSON (and checked as JSON).
    if let Some(ct) = content_type
        && !rules.allow_raw
        && !is_json_type(ct)
        && !(is_text_plain(ct) && serde_json::from_slice::<Value>(bytes).is_ok())
    {
        return Err(format!(
            "Content-Type {ct} not allowed for {cap}: bodies are JSON only (the capability's body.allowRaw allows others)"
        ));
    }
    let (bytes, json_type) = match std::str::from_utf8(bytes) {
        Ok(text) => body::encode(&Value::String(text.to_owned()), rules, cap)?,
        Err(_) if rules.allow_raw => {
            if bytes.len() > rules.max_bytes {
                return Err(format!(
                    "body for {cap} is {} bytes; allowed: at most {} bytes",
                    bytes.len(),
                    rules.max_bytes
                ));
            }
            (bytes.to_vec(), "application/octet-stream".to_owned())
        }
        Err(_) => {
            return Err(format!(
                "body for {cap} must be JSON; this capability does not allow raw bodies"
            ));
        }
    };
    Ok((bytes, content_type.map_or(json_type, str::to_owned)))
}

/// Decides a `fetch()` of the code: the first fetch capability (in the Permit's order) whose
/// hosts include the URL's and whose rules allow the request. `Ok` is exactly what will be
/// sent, before placeholders are replaced.
pub(crate) fn decide(
    caps: &[CompiledCapability],
    request: &FetchRequest,
) -> Result<PreparedRequest, Denial> {
    let shown = request.method.to_ascii_uppercase();
    let url = fetch_url(&request.url, None).map_err(|r| deny(&shown, &request.url, r))?;
    let method = HttpMethod::parse(&request.method).ok_or_else(|| {
        deny(
            &shown,
            url.as_str(),
            format!(
                "method {shown} is not one a capability may allow (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)"
            ),
        )
    })?;
    let mut first_reason = None;
    let mut all_hosts = Vec::new();
    for cap in caps {
        let Form::Fetch(rules) = &cap.form else {
            continue;
        };
        all_hosts.extend(rules.host_list());
        if !rules.has_host(&url) {
            continue;
        }
        match decide_one(cap, rules, method, &url, request) {
            Ok(prepared) => return Ok(prepared),
            Err(reason) => {
                first_reason.get_or_insert((cap.name.clone(), reason));
            }
        }
    }
    match first_reason {
        Some((cap, reason)) => Err(Denial {
            capability: cap,
            ..deny(method.as_str(), url.as_str(), reason)
        }),
        None => Err(deny(
            method.as_str(),
            url.as_str(),
            format!(
                "host {} is not in the hosts of a fetch capability; allowed: {}",
                authority(&url),
                if all_hosts.is_empty() {
                    "none (the Permit has no fetch capability)".to_owned()
                } else {
                    all_hosts.join(", ")
                }
            ),
        )),
    }
}

/// `host` or `host:port` of `url` as the Permit would write it.
pub(crate) fn authority(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

/// The next hop of a followed redirect: `location` resolved against the request's URL and
/// decided again in full (host, method, path and query rules), so a redirect reaches only
/// what a request written by the code could. The body goes along only when the method does.
pub(crate) fn redirect(
    caps: &[CompiledCapability],
    req: &PreparedRequest,
    method: HttpMethod,
    keep_body: bool,
    location: &str,
) -> Result<PreparedRequest, Denial> {
    let next = fetch_url(location, Some(&req.url)).map_err(|r| {
        deny(
            method.as_str(),
            req.url.as_str(),
            format!("redirect refused: {r}"),
        )
    })?;
    let mut headers = req.headers.clone();
    if let Some(ct) = &req.content_type
        && keep_body
    {
        headers.push(("content-type".to_owned(), ct.clone()));
    }
    let request =
        FetchRequest {
            url: next.as_str().to_owned(),
            method: method.as_str().to_owned(),
            headers,
            body: req.body.as_ref().filter(|_| keep_body).map(|b| {
                match String::from_utf8(b.clone()) {
                    Ok(t) => FetchBody::Text(t),
                    Err(e) => {
                        use base64::Engine as _;
                        FetchBody::Base64(
                            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                        )
                    }
                }
            }),
            redirect: crate::host::RedirectMode::Follow,
        };
    decide(caps, &request).map_err(|d| Denial {
        reason: format!("redirect from {} refused: {}", req.url, d.reason),
        ..d
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_entries_compile_to_what_they_read_as() {
        let e = HostEntry::compile("c", "api.github.com").expect("host");
        assert!(e.matches(&Url::parse("https://API.GitHub.com/x").expect("url")));
        assert!(!e.matches(&Url::parse("https://api.github.com:8443/x").expect("url")));
        let p = HostEntry::compile("c", "127.0.0.1:8443").expect("host");
        assert!(p.matches(&Url::parse("https://127.0.0.1:8443/").expect("url")));
        assert!(p.matches(&Url::parse("http://2130706433:8443/").expect("url")));
        assert!(!p.matches(&Url::parse("https://127.0.0.1/").expect("url")));
        for bad in [
            "API.github.com",
            "api.github.com.",
            "*.github.com",
            "0x7f.1",
            "a/b",
            "",
        ] {
            assert!(HostEntry::compile("c", bad).is_err(), "{bad:?} accepted");
        }
        let v6 = HostEntry::compile("c", "[::1]:9").expect("ipv6");
        assert!(v6.matches(&Url::parse("http://[0:0::1]:9/").expect("url")));
    }

    #[test]
    fn fetch_urls_are_checked_as_written_and_canonical() {
        let ok = fetch_url("https://api.github.com/user/repos?per_page=5#frag", None).expect("ok");
        assert_eq!(ok.as_str(), "https://api.github.com/user/repos?per_page=5");
        for (bad, why) in [
            ("https://api.github.com/a/../b", "segment"),
            ("https://api.github.com/a/%2e%2e/b", "segment"),
            ("https://api.github.com/a%2fb", "slash"),
            ("https://api.github.com\\@evil.example/", "backslash"),
            ("https://api.github.com/a\\b", "backslash"),
            ("https://user:pw@api.github.com/", "userinfo"),
            ("https://api.github.com./", "dot"),
            ("https:api.github.com/", "absolute"),
            ("//api.github.com/", "absolute"),
            ("http://api.github.com/", "loopback"),
            ("https://api.github.com/a b", "U+0020"),
            ("https://api.github.com/a\tb", "U+0009"),
        ] {
            let e = fetch_url(bad, None).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
