//! Header names the sandbox runner sets itself, in one place: the runner refuses them from
//! agents, and the Permit schema refuses them as `auth.header` and as typed-endpoint header
//! params (a credential sent as `Host` or `Content-Length` is not a credential but a broken or
//! rerouted request).

/// Exact header names (lower case) only the runner sets: credentials, method overrides,
/// routing and forwarding, hop-by-hop and framing headers.
pub const RUNNER_SET_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "set-cookie",
    "host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-real-ip",
    "forwarded",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
];

/// Header name prefixes (lower case) only the runner sets.
pub const RUNNER_SET_HEADER_PREFIXES: &[&str] = &["proxy-", "x-forwarded-"];

/// The runner-set headers a Permit may still name as `auth.header`: they exist to carry
/// credentials.
pub const CREDENTIAL_HEADERS: &[&str] = &["authorization", "cookie"];

/// Whether `name` (any case) is set by the runner only.
pub fn is_runner_set(name: &str) -> bool {
    RUNNER_SET_HEADERS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
        || RUNNER_SET_HEADER_PREFIXES.iter().any(|p| {
            name.get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p))
        })
}

/// Why `name` cannot be a capability's `auth.header`, if it cannot.
pub fn auth_header_refusal(name: &str) -> Option<&'static str> {
    if CREDENTIAL_HEADERS
        .iter()
        .any(|c| c.eq_ignore_ascii_case(name))
    {
        return None;
    }
    if is_runner_set(name) || name.eq_ignore_ascii_case("content-type") {
        return Some(
            "must not be a header the runner sets itself (Host, Content-Length, Transfer-Encoding, Content-Type, Connection, Expect, method-override, forwarding and Proxy-* headers)",
        );
    }
    None
}

/// The CEL rule (on `auth.header`) that is [`auth_header_refusal`].
pub fn auth_header_rule() -> String {
    let refused: Vec<String> = RUNNER_SET_HEADERS
        .iter()
        .filter(|h| !CREDENTIAL_HEADERS.contains(h))
        .chain(std::iter::once(&"content-type"))
        .map(|h| format!("'{h}'"))
        .collect();
    let prefixes: Vec<String> = RUNNER_SET_HEADER_PREFIXES
        .iter()
        .map(|p| format!("!self.lowerAscii().startsWith('{p}')"))
        .collect();
    format!(
        "!(self.lowerAscii() in [{}]) && {}",
        refused.join(", "),
        prefixes.join(" && ")
    )
}

/// The CEL rule (on a typed endpoint's `params`) refusing header params the runner sets.
pub fn header_params_rule() -> String {
    let refused: Vec<String> = RUNNER_SET_HEADERS
        .iter()
        .map(|h| format!("'{h}'"))
        .collect();
    let prefixes: Vec<String> = RUNNER_SET_HEADER_PREFIXES
        .iter()
        .map(|p| format!("k.lowerAscii().startsWith('{p}')"))
        .collect();
    format!(
        "self.all(k, self[k].__in__ != 'header' || !(k.lowerAscii() in [{}] || {}))",
        refused.join(", "),
        prefixes.join(" || ")
    )
}

/// The message of [`auth_header_rule`].
pub const AUTH_HEADER_MESSAGE: &str = "must not be a header the runner sets itself (Host, Content-Length, Transfer-Encoding, Content-Type, Connection, Expect, method-override, forwarding and Proxy-* headers); use Authorization, Cookie or an API-specific header such as X-Api-Key";

/// The CEL rule on a secret binding's `headers`: each may carry a credential
/// ([`auth_header_refusal`] is `None` for it).
pub fn binding_headers_rule() -> String {
    format!(
        "self.all(h, {})",
        auth_header_rule().replace("self.lowerAscii()", "h.lowerAscii()")
    )
}

/// The message of [`binding_headers_rule`].
pub const BINDING_HEADERS_MESSAGE: &str = "secretBindings[].headers must not name a header the runner sets itself (Host, Content-Length, Transfer-Encoding, Content-Type, Connection, Expect, method-override, forwarding and Proxy-* headers); use Authorization, Cookie or an API-specific header such as X-Api-Key";

/// The message of [`header_params_rule`].
pub const HEADER_PARAMS_MESSAGE: &str = "a param with in: header must not name a header the runner sets itself (Authorization, Cookie, Host, Content-Length, Transfer-Encoding, Connection, method-override, forwarding and Proxy-* headers)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_are_allowed_and_framing_ones_refused_in_any_case() {
        for ok in ["Authorization", "cookie", "X-Api-Key", "PRIVATE-TOKEN"] {
            assert_eq!(auth_header_refusal(ok), None, "{ok}");
        }
        for bad in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Content-Type",
            "Proxy-Authorization",
            "X-Forwarded-For",
            "X-HTTP-Method-Override",
        ] {
            assert!(auth_header_refusal(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn the_cel_rules_name_every_runner_set_header() {
        let auth = auth_header_rule();
        let params = header_params_rule();
        for h in RUNNER_SET_HEADERS.iter().chain(RUNNER_SET_HEADER_PREFIXES) {
            assert!(params.contains(&format!("'{h}'")), "{h} missing: {params}");
            if !CREDENTIAL_HEADERS.contains(h) {
                assert!(auth.contains(&format!("'{h}'")), "{h} missing: {auth}");
            }
        }
    }
}
