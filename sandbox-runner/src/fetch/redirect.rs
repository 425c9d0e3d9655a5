//! Redirect rules: how many hops are followed, which method a hop uses, and whether the
//! target may be reached at all (same origin, re-checked against the policy).

use oauth3_crds::HttpMethod;

use super::denial_for;
use crate::policy::{Denial, Policy, PreparedRequest};

/// Most redirects followed for one call.
pub const MAX_REDIRECTS: usize = 5;

/// The method after a redirect: 303 (and 301/302 after POST) become GET without a body;
/// 307/308 keep method and body.
pub fn method_after_redirect(status: u16, method: HttpMethod) -> (HttpMethod, bool) {
    match (status, method) {
        (303, HttpMethod::HEAD) => (HttpMethod::HEAD, false),
        (303, _) | (301 | 302, HttpMethod::POST) => (HttpMethod::GET, false),
        (301 | 302, m) => (m, m != HttpMethod::GET && m != HttpMethod::HEAD),
        (_, m) => (m, true),
    }
}

/// The request for hop number `hop` (1-based) of `req`, which answered `status` with
/// `location`; or why it may not be followed: too many hops, a target the policy refuses
/// (another origin, a path it does not allow), or a method the capability does not allow.
pub(super) fn next_hop(
    policy: &Policy,
    req: &PreparedRequest,
    status: u16,
    location: &str,
    hop: usize,
) -> Result<PreparedRequest, Denial> {
    if hop > MAX_REDIRECTS {
        return Err(denial_for(
            req,
            format!(
                "{}: more than {MAX_REDIRECTS} redirects; not followed",
                req.capability
            ),
        ));
    }
    let url = policy.check_redirect(req, location).map_err(|mut d| {
        d.url = req
            .url
            .join(location)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| location.to_owned());
        d
    })?;
    let (method, keep_body) = method_after_redirect(status, req.method);
    if !policy.allows_method(&req.capability, method) {
        return Err(denial_for(
            req,
            format!(
                "redirect for {} would use method {method}, which it does not allow",
                req.capability
            ),
        ));
    }
    let mut next = req.clone();
    next.url = url;
    next.method = method;
    if !keep_body {
        next.body = None;
        next.content_type = None;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_methods_follow_http_semantics() {
        assert_eq!(
            method_after_redirect(303, HttpMethod::POST),
            (HttpMethod::GET, false)
        );
        assert_eq!(
            method_after_redirect(302, HttpMethod::POST),
            (HttpMethod::GET, false)
        );
        assert_eq!(
            method_after_redirect(307, HttpMethod::POST),
            (HttpMethod::POST, true)
        );
        assert_eq!(
            method_after_redirect(302, HttpMethod::GET),
            (HttpMethod::GET, false)
        );
    }
}
