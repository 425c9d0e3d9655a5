//! Typed endpoints: `name(p1, p2, ..., {others})` against one URL template and method.

use std::borrow::Cow;
use std::collections::BTreeMap;

use oauth3_crds::{HttpMethod, ParamLocation, ParamSpec};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use regex::Regex;
use serde_json::{Map, Value};
use url::Url;

use super::{
    CompiledCapability, PolicyError, PreparedRequest, append_query, body, denial, headers, kind,
    parse_origin, path,
};

/// Everything except RFC 3986 unreserved characters is encoded in a path parameter, so a
/// value is always exactly one segment (`/` becomes `%2F`, `%` becomes `%25`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Param(String),
}

#[derive(Debug, Clone)]
struct Param {
    location: ParamLocation,
    required: bool,
    pattern: Option<Regex>,
}

/// A compiled typed endpoint.
#[derive(Debug, Clone)]
pub(crate) struct TypedEndpoint {
    base: Url,
    method: HttpMethod,
    /// Path template segments (after the leading `/`), each a list of parts.
    segments: Vec<Vec<Part>>,
    /// Path parameter names in the order they appear.
    path_params: Vec<String>,
    params: BTreeMap<String, Param>,
}

fn split_template(seg: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = seg;
    while let Some(start) = rest.find("%7B") {
        if start > 0 {
            parts.push(Part::Lit(rest[..start].to_owned()));
        }
        let after = &rest[start + 3..];
        let end = after
            .find("%7D")
            .ok_or_else(|| format!("unclosed {{ in segment {seg}"))?;
        parts.push(Part::Param(after[..end].to_owned()));
        rest = &after[end + 3..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_owned()));
    }
    Ok(parts)
}

fn scalar_string(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// How a typed endpoint is called, for denials: `name(p1, p2, {...})`.
struct Signature<'a> {
    name: &'a str,
    path_params: &'a [String],
}

impl std::fmt::Display for Signature<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(", self.name)?;
        for p in self.path_params {
            write!(f, "{p}, ")?;
        }
        f.write_str("{...})")
    }
}

impl TypedEndpoint {
    /// Compiles the template and parameter declarations.
    pub(crate) fn compile(
        name: &str,
        endpoint: &str,
        method: HttpMethod,
        params: &BTreeMap<String, ParamSpec>,
        auth_header: Option<&str>,
    ) -> Result<Self, PolicyError> {
        let base = parse_origin(name, endpoint)?;
        let bad_url = |reason: String| PolicyError::BadUrl {
            name: name.to_owned(),
            reason,
        };
        let bad_param = |param: &str, reason: String| PolicyError::BadParam {
            name: name.to_owned(),
            param: param.to_owned(),
            reason,
        };
        let path = base.path().strip_prefix('/').unwrap_or(base.path());
        let mut segments = Vec::new();
        let mut path_params = Vec::new();
        if !path.is_empty() {
            for seg in path.split('/') {
                let lower = seg.to_ascii_lowercase();
                if lower.contains("%2f") || lower.contains("%5c") {
                    return Err(bad_url(format!("encoded slash in segment {seg}")));
                }
                let parts = split_template(seg).map_err(bad_url)?;
                for p in &parts {
                    if let Part::Param(n) = p {
                        if path_params.contains(n) {
                            return Err(bad_url(format!(
                                "placeholder {{{n}}} appears more than once"
                            )));
                        }
                        path_params.push(n.clone());
                    }
                }
                segments.push(parts);
            }
        }
        let mut compiled = BTreeMap::new();
        for (pname, spec) in params {
            let is_path = path_params.contains(pname);
            if is_path != (spec.location == ParamLocation::Path) {
                return Err(bad_param(
                    pname,
                    "params with in: path and {placeholders} in endpoint must correspond".into(),
                ));
            }
            if spec.location == ParamLocation::Header
                && let Some(why) = headers::forbidden_reason(pname, auth_header)
            {
                return Err(bad_param(pname, format!("header not allowed: {why}")));
            }
            let pattern = spec
                .pattern
                .as_ref()
                .map(|p| Regex::new(&format!("^(?:{p})$")))
                .transpose()
                .map_err(|e| bad_param(pname, e.to_string()))?;
            compiled.insert(
                pname.clone(),
                Param {
                    location: spec.location,
                    required: spec.required || spec.location == ParamLocation::Path,
                    pattern,
                },
            );
        }
        if let Some(missing) = path_params.iter().find(|p| !compiled.contains_key(*p)) {
            return Err(bad_param(
                missing,
                "placeholder is not declared in params".into(),
            ));
        }
        Ok(Self {
            base,
            method,
            segments,
            path_params,
            params: compiled,
        })
    }

    /// The endpoint URL (its origin is the capability's).
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }

    /// The one method.
    pub(crate) fn path_params(&self) -> &[String] {
        &self.path_params
    }

    pub(crate) fn method(&self) -> HttpMethod {
        self.method
    }

    /// Whether a canonical path fits the template (parameters match one non-empty segment
    /// piece), for redirect checks.
    pub(crate) fn matches_path(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let got: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        got.len() == self.segments.len()
            && got.iter().zip(&self.segments).all(|(seg, parts)| {
                !path::is_dot_segment(seg)
                    && !path::contains_ignore_ascii_case(seg, "%2f")
                    && !path::contains_ignore_ascii_case(seg, "%5c")
                    && match_parts(parts, seg)
            })
    }

    /// Decides one call.
    pub(crate) fn decide(
        &self,
        cap: &CompiledCapability,
        args: &[Value],
    ) -> Result<PreparedRequest, super::Denial> {
        let name = cap.name.as_str();
        let method = self.method.as_str();
        // Only denials show the template and the signature: built on demand, never on the
        // way to an allowed request.
        let template = || self.base.as_str().replace("%7B", "{").replace("%7D", "}");
        let deny = |url: &str, reason: String| denial(name, method, url, reason);
        let signature = Signature {
            name,
            path_params: &self.path_params,
        };
        let n = self.path_params.len();
        let mut values: BTreeMap<&str, &Value> = BTreeMap::new();
        for (i, p) in self.path_params.iter().enumerate() {
            match args.get(i) {
                Some(v @ (Value::String(_) | Value::Number(_))) => {
                    values.insert(p, v);
                }
                Some(other) if !other.is_object() && !other.is_null() => {
                    return Err(deny(
                        &template(),
                        format!(
                            "path param {p} for {name} must be a string or number; got {}",
                            kind(other)
                        ),
                    ));
                }
                _ => {
                    return Err(deny(
                        &template(),
                        format!(
                            "missing required path param {p} for {name}; called as {signature}"
                        ),
                    ));
                }
            }
        }
        if args.len() > n + 1 {
            return Err(deny(
                &template(),
                format!(
                    "{name} takes at most {} arguments; called as {signature}",
                    n + 1
                ),
            ));
        }
        match args.get(n) {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) => {
                for (k, v) in o {
                    match self.params.get(k.as_str()) {
                        Some(p) if p.location != ParamLocation::Path => {
                            if !v.is_null() {
                                values.insert(k, v);
                            }
                        }
                        Some(_) => {
                            return Err(deny(
                                &template(),
                                format!(
                                    "path param {k} for {name} must be passed positionally; called as {signature}"
                                ),
                            ));
                        }
                        None => {
                            let allowed: Vec<&str> = self
                                .params
                                .iter()
                                .filter(|(_, p)| p.location != ParamLocation::Path)
                                .map(|(k, _)| k.as_str())
                                .collect();
                            return Err(deny(
                                &template(),
                                format!(
                                    "unknown param {k} for {name}; allowed: {}",
                                    if allowed.is_empty() {
                                        "none".to_owned()
                                    } else {
                                        allowed.join(", ")
                                    }
                                ),
                            ));
                        }
                    }
                }
            }
            Some(other) => {
                return Err(deny(
                    &template(),
                    format!(
                        "the argument after the path params of {name} must be an object; got {}; called as {signature}",
                        kind(other)
                    ),
                ));
            }
        }
        for (pname, p) in &self.params {
            let v = values.get(pname.as_str());
            if p.required && v.is_none() {
                return Err(deny(
                    &template(),
                    format!("missing required param {pname} for {name}"),
                ));
            }
            if let (Some(re), Some(v)) = (&p.pattern, v) {
                let ok = scalar_string(v).is_some_and(|s| re.is_match(&s));
                if !ok {
                    return Err(deny(
                        &template(),
                        format!(
                            "param {pname} for {name} does not match its pattern {}",
                            re.as_str()
                        ),
                    ));
                }
            }
        }
        // Path.
        let mut path = String::new();
        for parts in &self.segments {
            path.push('/');
            for part in parts {
                match part {
                    Part::Lit(l) => path.push_str(l),
                    Part::Param(p) => {
                        let raw = values
                            .get(p.as_str())
                            .and_then(|v| scalar_string(v))
                            .unwrap_or_default();
                        if raw.is_empty() || raw == "." || raw == ".." {
                            return Err(deny(
                                &template(),
                                format!("path param {p} for {name} must not be empty, . or .."),
                            ));
                        }
                        path.extend(utf8_percent_encode(&raw, SEGMENT));
                    }
                }
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        let mut url = self.base.clone();
        url.set_path(&path);
        if url.path() != path || url.origin() != self.base.origin() {
            return Err(deny(
                url.as_str(),
                format!("the URL for {name} did not canonicalise to the template"),
            ));
        }
        // Query, body, headers.
        let mut body_obj = Map::new();
        let mut hdrs = Vec::new();
        for (pname, p) in &self.params {
            let Some(v) = values.get(pname.as_str()) else {
                continue;
            };
            match p.location {
                ParamLocation::Path => {}
                ParamLocation::Query => {
                    append_query(&mut url, pname, v, name).map_err(|r| deny(&template(), r))?;
                }
                ParamLocation::Body => {
                    body_obj.insert(pname.clone(), (*v).clone());
                }
                ParamLocation::Header => {
                    let s = scalar_string(v).ok_or_else(|| {
                        deny(
                            &template(),
                            format!("header param {pname} for {name} must be a string or number"),
                        )
                    })?;
                    headers::check(pname, &s, name, cap.auth_header.as_deref(), false)
                        .map_err(|r| deny(&template(), r))?;
                    hdrs.push((pname.clone(), s.into_owned()));
                }
            }
        }
        let (body, content_type) = if body_obj.is_empty() {
            (None, None)
        } else {
            let (b, ct) = body::encode(&Value::Object(body_obj), &cap.body, name)
                .map_err(|r| deny(url.as_str(), r))?;
            (Some(b), Some(ct))
        };
        Ok(PreparedRequest {
            capability: name.to_owned(),
            method: self.method,
            url,
            headers: hdrs,
            body,
            content_type,
            auth: cap.auth.clone(),
            cookies: cap.cookies.clone(),
        })
    }
}

fn match_parts(parts: &[Part], seg: &str) -> bool {
    match parts.split_first() {
        None => seg.is_empty(),
        Some((Part::Lit(l), rest)) => seg
            .strip_prefix(l.as_str())
            .is_some_and(|s| match_parts(rest, s)),
        Some((Part::Param(_), rest)) => {
            (1..=seg.len()).any(|i| seg.is_char_boundary(i) && match_parts(rest, &seg[i..]))
        }
    }
}
