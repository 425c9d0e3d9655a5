//! Cookie jars: the secret a capability's `cookies` names, and which of its cookies a request
//! may carry (RFC 6265 §5.4: domain-match, path-match, `Secure` only over https, not expired).
//! Never by suffix: a cookie for `example.com` goes to `api.example.com`, never to
//! `evilexample.com`.
//!
//! The stored form (what `POST /cookies/upload` seals) is canonical JSON:
//! `{"cookies": [{"name", "value", "domain", "hostOnly", "path", "secure", "expires"}]}`.
//! [`CookieJar::parse`] also reads what browsers' cookie exporters write: a bare list, or
//! `{"cookies": [...], "user_agent": ...}`, with `expirationDate` (seconds, fractional) for
//! `expires`, a leading dot on `domain` and `hostOnly` absent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most cookies one jar may hold.
pub const MAX_COOKIES: usize = 200;

/// One cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cookie {
    /// Name (a token: no separators, no control characters).
    pub name: String,
    /// Value (cookie-octets: no `"`, `,`, `;`, `\`, spaces or control characters).
    pub value: String,
    /// The domain, lower case, without a leading dot.
    pub domain: String,
    /// Sent to `domain` exactly (a cookie set without a Domain attribute), not to its
    /// subdomains.
    pub host_only: bool,
    /// The path it is sent under (default `/`).
    pub path: String,
    /// Sent only over https.
    pub secure: bool,
    /// Unix seconds after which it is not sent; `None`: a session cookie, never expires here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

/// A cookie jar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieJar {
    /// The cookies.
    pub cookies: Vec<Cookie>,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn is_cookie_value(s: &str) -> bool {
    let inner = s
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(s);
    inner
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\",;\\".contains(&b))
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl CookieJar {
    /// Reads a jar; errors name the cookie and the field (never a value).
    ///
    /// # Errors
    /// `cookies[i].field: what is wrong`.
    pub fn parse(text: &str) -> Result<CookieJar, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let list = match &v {
            Value::Array(a) => a,
            Value::Object(o) => o
                .get("cookies")
                .and_then(Value::as_array)
                .ok_or("an object needs a cookies list")?,
            _ => return Err("a list of cookies, or {\"cookies\": [...]}".into()),
        };
        if list.is_empty() {
            return Err("cookies: the jar is empty".into());
        }
        if list.len() > MAX_COOKIES {
            return Err(format!("cookies: at most {MAX_COOKIES}"));
        }
        let mut cookies = Vec::with_capacity(list.len());
        for (i, c) in list.iter().enumerate() {
            let at = |f: &str| format!("cookies[{i}].{f}");
            let text = |f: &str| c.get(f).and_then(Value::as_str);
            let name = text("name").ok_or_else(|| format!("{}: required", at("name")))?;
            if !is_token(name) {
                return Err(format!(
                    "{}: must be a token (no spaces, separators or control characters)",
                    at("name")
                ));
            }
            let value = text("value").ok_or_else(|| format!("{}: required", at("value")))?;
            if !is_cookie_value(value) {
                return Err(format!(
                    "{}: must not contain spaces, quotes, commas, semicolons, backslashes or control characters",
                    at("value")
                ));
            }
            let raw_domain = text("domain").ok_or_else(|| format!("{}: required", at("domain")))?;
            let dotted = raw_domain.starts_with('.');
            let domain = raw_domain.trim_start_matches('.').to_ascii_lowercase();
            if !is_domain(&domain) {
                return Err(format!(
                    "{}: must be a host name such as example.com",
                    at("domain")
                ));
            }
            let host_only = match c.get("hostOnly") {
                Some(Value::Bool(b)) => *b && !dotted,
                None => false,
                Some(_) => return Err(format!("{}: must be true or false", at("hostOnly"))),
            };
            let path = text("path").unwrap_or("/");
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b';') {
                return Err(format!(
                    "{}: must start with / (no ; or control characters)",
                    at("path")
                ));
            }
            let secure = match c.get("secure") {
                Some(Value::Bool(b)) => *b,
                None => false,
                Some(_) => return Err(format!("{}: must be true or false", at("secure"))),
            };
            let expires = match c.get("expires").or_else(|| c.get("expirationDate")) {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => n
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64),
                Some(_) => {
                    return Err(format!("{}: Unix seconds (a number)", at("expires")));
                }
            };
            cookies.push(Cookie {
                name: name.to_owned(),
                value: value.to_owned(),
                domain,
                host_only,
                path: path.to_owned(),
                secure,
                expires,
            });
        }
        Ok(CookieJar { cookies })
    }

    /// The canonical JSON text of the jar (what is sealed).
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `Cookie` header a request to `url` at `now` (Unix seconds) may carry, or `None`
    /// when no cookie of the jar goes there. Longer paths first (RFC 6265 §5.4 step 2).
    #[must_use]
    pub fn header_for(&self, url: &url::Url, now: i64) -> Option<String> {
        let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let https = url.scheme() == "https";
        let path = url.path();
        let mut chosen: Vec<&Cookie> = self
            .cookies
            .iter()
            .filter(|c| domain_match(host, c))
            .filter(|c| path_match(path, &c.path))
            .filter(|c| https || !c.secure)
            .filter(|c| c.expires.is_none_or(|e| e > now))
            .collect();
        if chosen.is_empty() {
            return None;
        }
        chosen.sort_by_key(|c| std::cmp::Reverse(c.path.len()));
        Some(
            chosen
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// Every cookie value (what outputs are redacted of).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.cookies.iter().map(|c| c.value.as_str())
    }
}

/// RFC 6265 §5.1.3: identical, or (not host-only, host is a name not an IP address) the host
/// ends with "." + domain.
fn domain_match(host: &str, c: &Cookie) -> bool {
    if host == c.domain {
        return true;
    }
    if c.host_only || host.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    host.strip_suffix(c.domain.as_str())
        .is_some_and(|rest| rest.ends_with('.'))
}

/// RFC 6265 §5.1.4.
fn path_match(request: &str, cookie: &str) -> bool {
    request == cookie
        || (request.starts_with(cookie)
            && (cookie.ends_with('/') || request[cookie.len()..].starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> url::Url {
        url::Url::parse(u).expect("url")
    }

    fn jar(v: Value) -> CookieJar {
        CookieJar::parse(&v.to_string()).expect("jar")
    }

    #[test]
    fn cookies_go_to_their_domain_and_its_subdomains_never_by_suffix() {
        let j = jar(serde_json::json!([{"name": "sid", "value": "abc", "domain": ".example.com"}]));
        assert_eq!(
            j.header_for(&url("https://example.com/"), 0).as_deref(),
            Some("sid=abc")
        );
        assert_eq!(
            j.header_for(&url("https://api.example.com/x"), 0)
                .as_deref(),
            Some("sid=abc")
        );
        assert_eq!(j.header_for(&url("https://evilexample.com/"), 0), None);
        assert_eq!(j.header_for(&url("https://example.com.evil.org/"), 0), None);
        assert_eq!(
            j.header_for(&url("https://API.EXAMPLE.COM./"), 0)
                .as_deref(),
            Some("sid=abc")
        );
    }

    #[test]
    fn host_only_cookies_go_to_that_host_only() {
        let j = jar(serde_json::json!({"cookies": [
            {"name": "h", "value": "1", "domain": "example.com", "hostOnly": true}]}));
        assert!(j.header_for(&url("https://example.com/"), 0).is_some());
        assert_eq!(j.header_for(&url("https://api.example.com/"), 0), None);
    }

    #[test]
    fn path_secure_and_expiry_are_kept() {
        let j = jar(serde_json::json!([
            {"name": "p", "value": "1", "domain": "example.com", "path": "/api"},
            {"name": "s", "value": "2", "domain": "example.com", "secure": true},
            {"name": "old", "value": "3", "domain": "example.com", "expirationDate": 100.5},
            {"name": "root", "value": "4", "domain": "example.com"}
        ]));
        assert_eq!(
            j.header_for(&url("https://example.com/api/x"), 50)
                .as_deref(),
            Some("p=1; s=2; old=3; root=4")
        );
        assert_eq!(
            j.header_for(&url("https://example.com/apix"), 200)
                .as_deref(),
            Some("s=2; root=4"),
            "/apix is not under /api; old expired"
        );
        assert_eq!(
            j.header_for(&url("http://example.com/api"), 200).as_deref(),
            Some("p=1; root=4"),
            "Secure only over https"
        );
    }

    #[test]
    fn ip_hosts_match_only_exactly() {
        let j = jar(
            serde_json::json!([{"name": "a", "value": "1", "domain": "127.0.0.1"},
                                       {"name": "b", "value": "2", "domain": "0.0.1"}]),
        );
        assert_eq!(
            j.header_for(&url("https://127.0.0.1:8443/"), 0).as_deref(),
            Some("a=1")
        );
    }

    #[test]
    fn bad_jars_are_refused_naming_the_cookie_and_field_never_the_value() {
        for (v, needle) in [
            (serde_json::json!([]), "empty"),
            (
                serde_json::json!([{"name": "a b", "value": "1", "domain": "x.com"}]),
                "cookies[0].name",
            ),
            (
                serde_json::json!([{"name": "a", "value": "v;injected=1", "domain": "x.com"}]),
                "cookies[0].value",
            ),
            (
                serde_json::json!([{"name": "a", "value": "1"}]),
                "cookies[0].domain: required",
            ),
            (
                serde_json::json!([{"name": "a", "value": "1", "domain": "*.x.com"}]),
                "cookies[0].domain",
            ),
            (
                serde_json::json!([{"name": "a", "value": "1", "domain": "x.com", "path": "api"}]),
                "cookies[0].path",
            ),
            (serde_json::json!({"other": 1}), "cookies list"),
        ] {
            let e = CookieJar::parse(&v.to_string()).expect_err("refused");
            assert!(e.contains(needle), "{v}: {e}");
            assert!(!e.contains("injected"), "{e}");
        }
    }

    #[test]
    fn the_canonical_form_reads_back_the_same() {
        let j = jar(
            serde_json::json!({"cookies": [{"name": "a", "value": "1", "domain": ".X.com",
            "expirationDate": 1e9, "secure": true}], "user_agent": "ua"}),
        );
        assert_eq!(CookieJar::parse(&j.to_json()).expect("canonical"), j);
        assert_eq!(j.cookies[0].domain, "x.com");
        assert!(!j.cookies[0].host_only);
    }
}
