//! Header rules: which agent headers are refused (credentials, method overrides, routing,
//! framing: the list is [`oauth3_crds::headers`], shared with the Permit schema) and what a
//! valid header looks like.

/// Whether `name` is an RFC 9110 token.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why a header name is refused, if it is (the name is not checked for syntax here).
/// `auth_header` is lower case (as compiled); `name` is compared case-insensitively without
/// allocating.
pub(crate) fn forbidden_reason(name: &str, auth_header: Option<&str>) -> Option<&'static str> {
    if auth_header.is_some_and(|a| a.eq_ignore_ascii_case(name)) {
        return Some("it carries this capability's credential, which the runner injects");
    }
    if oauth3_crds::headers::is_runner_set(name) {
        return Some(
            "credential, method-override, forwarding, hop-by-hop and framing headers are set by the runner only",
        );
    }
    None
}

/// Checks one agent header; `Err` is the denial reason. `content_type_ok` is whether the
/// capability lets the agent choose a body's content type (`body.allowRaw`).
pub(crate) fn check(
    name: &str,
    value: &str,
    cap: &str,
    auth_header: Option<&str>,
    content_type_ok: bool,
) -> Result<(), String> {
    if name.contains(['\r', '\n', '\0']) || value.contains(['\r', '\n', '\0']) {
        return Err(format!(
            "header {:?} for {cap} rejected: CR, LF and NUL are not allowed in header names or values",
            name.escape_debug().to_string()
        ));
    }
    if !is_token(name) {
        return Err(format!(
            "header name {name:?} for {cap} is not a valid token"
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "header {name} for {cap} rejected: control characters in the value"
        ));
    }
    if let Some(why) = forbidden_reason(name, auth_header) {
        return Err(format!("header {name} not allowed for {cap}: {why}"));
    }
    if name.eq_ignore_ascii_case("content-type") && !content_type_ok {
        return Err(format!(
            "header {name} not allowed for {cap}: the body's content type is set by the runner (only capabilities with body.allowRaw accept one)"
        ));
    }
    Ok(())
}
