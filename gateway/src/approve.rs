//! The owner's web approval page (`GET /approve/:id`) and the decision (`POST /approve/:id`).
//!
//! The page shows exactly what `kubectl oauth3 get` shows (the same function renders it from
//! the same spec). The `token` in `approval_url` is only a reference that opens the page:
//! deciding always needs an owner's credential, a token the API server accepts with the right
//! to patch `permits/status` in the Permit's namespace (entered on the page, or sent as
//! `Authorization: Bearer` / `owner_token` by API clients). An agent's token is refused.
//!
//! Browser protections: the form post must carry a CSRF token equal to the `oauth3_csrf`
//! cookie the page set (`SameSite=Strict`, `HttpOnly`), and a present `Origin` must be the
//! gateway's own; every page is sent with `Referrer-Policy: no-referrer` (the reference in
//! the URL never leaks), a strict Content-Security-Policy (no script at all; the one style
//! block allowed by its hash; forms only to this origin), `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff` and `Cache-Control: no-store`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use kube::ResourceExt;
use oauth3_crds::constants::ANNOTATION_APPROVAL_REF;
use oauth3_crds::{ApprovalDecision, ApprovalVia, Permit, TrustLevel, spec_digest};
use oauth3_operator::plugin::{
    Decision, PluginError, record_decision, record_trust, render_permit,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Gateway;
use crate::answer::permit_status;
use crate::error::{ApiError, ApiResult};
use crate::identity::{NAMESPACE_HEADER, Right, bearer};
use crate::ids::{RequestId, is_dns_label, new_token, token_matches};
use crate::routes::{Body, body_bytes};
use crate::store::Found;

/// Name of the CSRF cookie.
pub const CSRF_COOKIE: &str = "oauth3_csrf";

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:56rem;margin:2rem auto;padding:0 1rem;color:#111}\
pre{background:#f4f4f4;padding:1rem;overflow-x:auto;white-space:pre-wrap;border:1px solid #ddd}\
label{display:block;margin:1rem 0 .25rem}input[type=password]{width:100%;padding:.5rem;font-family:monospace}\
button{margin:1rem 1rem 0 0;padding:.5rem 1.5rem;font-size:1rem}.approve{background:#1a7f37;color:#fff}\
.deny{background:#cf222e;color:#fff}.note{color:#555;font-size:.9rem}";

/// Query of the approval routes.
#[derive(Debug, Deserialize)]
pub struct ApproveQuery {
    /// The Permit's namespace.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The reference from `approval_url` (opens the page; never enough to decide).
    #[serde(default)]
    pub token: Option<String>,
}

fn csp() -> String {
    let hash = base64_std(&Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Adds the page's security headers.
pub(crate) fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if let Ok(v) = HeaderValue::from_str(&csp()) {
        h.insert("content-security-policy", v);
    }
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// HTML-escapes `text`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The request behind an approval reference (a Permit request, or an Execution whose code
/// waits for review), or 404 (for a wrong reference too, so the page says nothing about ids it
/// was not given the reference of).
async fn by_reference(
    gw: &Gateway,
    id: &RequestId,
    q: &ApproveQuery,
) -> ApiResult<(String, Found)> {
    let not_found = || ApiError::NotFound(format!("approval request {id} not found"));
    let ns = q
        .tenant
        .as_deref()
        .filter(|t| is_dns_label(t))
        .ok_or_else(not_found)?;
    let found = gw.store().find(ns, id).await.map_err(|e| match e {
        ApiError::NotFound(_) => not_found(),
        other => other,
    })?;
    let stored = match &found {
        Found::Permit(p) => p.annotations().get(ANNOTATION_APPROVAL_REF).cloned(),
        Found::Execution(e) => e.annotations().get(ANNOTATION_APPROVAL_REF).cloned(),
    };
    if !token_matches(q.token.as_deref().unwrap_or_default(), stored.as_deref()) {
        return Err(not_found());
    }
    Ok((ns.to_owned(), found))
}

/// The trust level of a code approval: `once` (the default), `24h` or `always`.
pub(crate) fn trust_level(level: Option<&str>) -> ApiResult<TrustLevel> {
    match level.unwrap_or("once") {
        "once" => Ok(TrustLevel::Once),
        "24h" => Ok(TrustLevel::Day),
        "always" => Ok(TrustLevel::Always),
        other => Err(ApiError::bad(
            "level",
            format!("{other:?}: must be once, 24h or always"),
        )),
    }
}

pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// `GET /approve/:id?tenant=&token=`: the approval page (HTML for browsers, JSON otherwise).
///
/// # Errors
/// 400 for a malformed id; 404 for an unknown id or a wrong reference.
pub async fn page(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    Query(q): Query<ApproveQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = RequestId::parse(&id, "id")?;
    let (ns, found) = by_reference(&gw, &id, &q).await?;
    let form = Form {
        action: format!(
            "/approve/{}?tenant={}&token={}",
            id.as_label(),
            escape(&ns),
            escape(q.token.as_deref().unwrap_or_default())
        ),
        credential: Credential::OwnerToken,
        cookie_path: "/approve",
    };
    let head = json!({"id": id.as_label()});
    let exec = match found {
        Found::Permit(p) => return permit_page(&gw, head, &ns, &p, &headers, &form),
        Found::Execution(e) => e,
    };
    let permit = gw.store().permit(&ns, &exec.spec.permit_ref).await?;
    code_page(&gw, head, &ns, &permit, &exec, &headers, &form)
}

/// How the page's form proves who decides.
pub(crate) enum Credential<'a> {
    /// The owner types a Kubernetes token with the owner's rights.
    OwnerToken,
    /// A one-time sign-in link from Telegram: the code rides in a hidden field.
    SignIn {
        /// The link's code.
        code: &'a str,
        /// Who the decision is recorded as.
        by: &'a str,
    },
}

/// Where the page's form posts and what it carries.
pub(crate) struct Form<'a> {
    /// The form's `action` (already escaped).
    pub action: String,
    /// How the decider is proven.
    pub credential: Credential<'a>,
    /// The path the CSRF cookie is scoped to.
    pub cookie_path: &'static str,
}

impl Form<'_> {
    /// The form fields that prove the decider.
    fn credential_html(&self, ns: &str) -> String {
        match &self.credential {
            Credential::OwnerToken => format!(
                "<label for=\"owner_token\">Your owner token (a Kubernetes token with the oauth3-owner role in {ns})</label>\
<input type=\"password\" id=\"owner_token\" name=\"owner_token\" autocomplete=\"off\" required>",
                ns = escape(ns)
            ),
            Credential::SignIn { code, by } => format!(
                "<input type=\"hidden\" name=\"code\" value=\"{code}\">\
<p class=\"note\" id=\"signed-in\">Signed in from Telegram as {by}. This link decides once; the decision is recorded as {by}.</p>",
                code = escape(code),
                by = escape(by)
            ),
        }
    }

    fn footer(&self) -> &'static str {
        match self.credential {
            Credential::OwnerToken => {
                "The link you followed only opens this page; deciding needs your own credential."
            }
            Credential::SignIn { .. } => {
                "The link works once and lapses 15 minutes after it was made; do not forward it."
            }
        }
    }
}

/// The CSRF cookie (scoped to `path`) for a page that carries `csrf`.
fn with_csrf_cookie(gw: &Gateway, mut response: Response, csrf: &str, path: &str) -> Response {
    let secure_flag = if gw.public_url().is_some_and(|u| u.starts_with("https://")) {
        "; Secure"
    } else {
        ""
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={csrf}; Path={path}; HttpOnly; SameSite=Strict{secure_flag}"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    secure(response)
}

/// The page for an Execution whose code waits for the owner (`codeReview: perCode`): what the
/// Permit allows, then the code and its digest, and Approve once / 24h / always.
pub(crate) fn code_page(
    gw: &Gateway,
    mut head: Value,
    ns: &str,
    permit: &Permit,
    exec: &oauth3_crds::Execution,
    headers: &HeaderMap,
    form: &Form<'_>,
) -> ApiResult<Response> {
    let text = render_permit(permit).map_err(|e| ApiError::Internal(e.to_string()))?;
    let digest = exec.spec.code_digest();
    let status = crate::answer::execution_status(exec);
    let language = match exec.spec.language {
        oauth3_crds::CodeLanguage::JavaScript => "javascript",
        oauth3_crds::CodeLanguage::TypeScript => "typescript",
    };
    if !wants_html(headers) {
        head["status"] = json!(status);
        head["permit_id"] = json!(permit.name_any());
        head["namespace"] = json!(ns);
        head["code_digest"] = json!(digest);
        head["code"] = json!(exec.spec.code);
        head["language"] = json!(language);
        head["text"] = json!(text);
        return Ok(secure(Json(head).into_response()));
    }
    let csrf = new_token();
    let action = &form.action;
    let credential = form.credential_html(ns);
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Approve code for {name}?</title><style>{STYLE}</style></head><body>\
<h1>Code waiting under Permit {name}</h1>\
<p class=\"note\">The Permit, exactly as <code>kubectl oauth3 -n {ns} get {name}</code> shows it:</p>\
<pre id=\"permit\">{text}</pre>\
<p>The code ({status}, {language}), digest <code id=\"digest\">{digest}</code>:</p><pre id=\"code\">{code}</pre>\
<form method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"action\" value=\"approve\">\
{credential}\
<button type=\"submit\" name=\"level\" value=\"once\" class=\"approve\" id=\"approve\">Approve once</button>\
<button type=\"submit\" name=\"level\" value=\"24h\" class=\"approve\" id=\"approve-24h\">Approve for 24h</button>\
<button type=\"submit\" name=\"level\" value=\"always\" class=\"approve\" id=\"approve-always\">Always</button>\
</form><p class=\"note\">Trust is per digest: one changed byte needs approval again. Not approving leaves the run waiting until its timeout.</p>\
</body></html>",
        name = escape(&permit.name_any()),
        ns = escape(ns),
        text = escape(&text),
        status = escape(status),
        digest = escape(&digest),
        code = escape(&exec.spec.code),
    );
    Ok(with_csrf_cookie(
        gw,
        Html(body).into_response(),
        &csrf,
        form.cookie_path,
    ))
}

/// The page for a Permit request.
pub(crate) fn permit_page(
    gw: &Gateway,
    mut head: Value,
    ns: &str,
    permit: &Permit,
    headers: &HeaderMap,
    form: &Form<'_>,
) -> ApiResult<Response> {
    let text = render_permit(permit).map_err(|e| ApiError::Internal(e.to_string()))?;
    let status = permit_status(permit);
    let ns = ns.to_owned();
    if !wants_html(headers) {
        head["status"] = json!(status);
        head["permit_id"] = json!(permit.name_any());
        head["namespace"] = json!(ns);
        head["spec_digest"] = json!(spec_digest(&permit.effective_spec()).ok());
        head["text"] = json!(text);
        return Ok(secure(Json(head).into_response()));
    }
    let csrf = new_token();
    let action = &form.action;
    let credential = form.credential_html(&ns);
    let footer = form.footer();
    let decided = if status == "pending" {
        String::new()
    } else {
        format!(
            "<p class=\"note\">This request is already decided ({}); deciding again replaces the decision.</p>",
            escape(status)
        )
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Approve {name}?</title><style>{STYLE}</style></head><body>\
<h1>Permit request {name}</h1>\
<p class=\"note\">This is exactly what <code>kubectl oauth3 -n {ns} get {name}</code> shows.</p>\
<pre id=\"permit\">{text}</pre>{decided}\
<form method=\"post\" action=\"{action}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
{credential}\
<button type=\"submit\" name=\"action\" value=\"approve\" class=\"approve\" id=\"approve\">Approve</button>\
<button type=\"submit\" name=\"action\" value=\"deny\" class=\"deny\" id=\"deny\">Deny</button>\
</form><p class=\"note\">{footer}</p>\
</body></html>",
        name = escape(&permit.name_any()),
        ns = escape(&ns),
        text = escape(&text),
    );
    Ok(with_csrf_cookie(
        gw,
        Html(body).into_response(),
        &csrf,
        form.cookie_path,
    ))
}

/// What a decision request carries, from a form or JSON.
#[derive(Debug, Default)]
pub(crate) struct DecideRequest {
    pub(crate) action: Option<String>,
    /// A sign-in link's code.
    pub(crate) code: Option<String>,
    pub(crate) level: Option<String>,
    owner_token: Option<String>,
    csrf: Option<String>,
    pub(crate) from_form: bool,
}

pub(crate) fn parse_decide(headers: &HeaderMap, body: &[u8]) -> ApiResult<DecideRequest> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let mut out = DecideRequest {
            from_form: true,
            ..Default::default()
        };
        for (k, v) in url::form_urlencoded::parse(body) {
            match k.as_ref() {
                "action" => out.action = Some(v.into_owned()),
                "owner_token" => out.owner_token = Some(v.into_owned()),
                "csrf" => out.csrf = Some(v.into_owned()),
                "level" => out.level = Some(v.into_owned()),
                "code" => out.code = Some(v.into_owned()),
                _ => {}
            }
        }
        return Ok(out);
    }
    if !content_type.starts_with("application/json") {
        return Err(ApiError::bad(
            "Content-Type",
            "must be application/json (API clients) or application/x-www-form-urlencoded (the page)",
        ));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct JsonDecide {
        action: Option<String>,
        level: Option<String>,
        owner_token: Option<String>,
        token: Option<String>,
        code: Option<String>,
        secrets: Option<Value>,
    }
    let j: JsonDecide = crate::capability::parse_json(body)?;
    if j.secrets.is_some() {
        return Err(ApiError::bad(
            "secrets",
            "not accepted here: seal secrets with POST /secrets or kubectl oauth3 seal",
        ));
    }
    let _ = j.token;
    Ok(DecideRequest {
        action: j.action,
        level: j.level,
        owner_token: j.owner_token,
        code: j.code,
        csrf: None,
        from_form: false,
    })
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Refuses a form post that is not from the gateway's own page.
pub(crate) fn check_csrf(gw: &Gateway, headers: &HeaderMap, req: &DecideRequest) -> ApiResult<()> {
    let refused = |why: &str| ApiError::Forbidden(format!("CSRF check failed: {why}"));
    let field = req.csrf.as_deref().unwrap_or_default();
    let cookie = cookie(headers, CSRF_COOKIE).unwrap_or_default();
    if field.len() != 64 || cookie.len() != 64 {
        return Err(refused("the form must come from the approval page"));
    }
    if !token_matches(field, Some(&crate::ids::token_digest(&cookie))) {
        return Err(refused(
            "the form's token does not match this browser's cookie",
        ));
    }
    // Browsers say where a request comes from. `Sec-Fetch-Site` must be same-origin (or none,
    // for a request the user made directly); an `Origin` must be ours, except `null`, which
    // is what a same-origin form post carries under `Referrer-Policy: no-referrer`.
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(refused("the form was posted from another site"));
    }
    if let Some(origin) = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null")
    {
        let own = match gw.public_url() {
            Some(u) => url::Url::parse(u)
                .ok()
                .map(|u| u.origin().ascii_serialization()),
            None => headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| format!("http://{h}")),
        };
        if own.as_deref() != Some(origin) {
            return Err(refused("the form was posted from another site"));
        }
    }
    Ok(())
}

/// `POST /approve/:id`: approve or deny, with an owner's credential.
///
/// # Errors
/// 400 for a malformed request, 401 without an owner credential, 403 for a credential without
/// the owner's right or a failed CSRF check, 404 for an unknown request.
pub async fn decide(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    Query(q): Query<ApproveQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = RequestId::parse(&id, "id")?;
    let body = body_bytes(&gw, body)?;
    let req = parse_decide(&headers, &body)?;
    if req.from_form {
        check_csrf(&gw, &headers, &req)?;
    }
    let decision = match req.action.as_deref() {
        Some("approve") => Decision::Approve,
        Some("deny") => Decision::Deny,
        _ => return Err(ApiError::bad("action", "must be approve or deny")),
    };
    let header_token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let owner_token = header_token
        .or(req.owner_token.as_deref().filter(|t| !t.is_empty()))
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "an owner's credential is required to decide (the link's token only opens the page)"
                    .into(),
            )
        })?;
    let ns_hint = q.tenant.clone().or_else(|| {
        headers
            .get(NAMESPACE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let owner = gw
        .identity()
        .authenticate(owner_token, ns_hint.as_deref())
        .await?;
    gw.identity().require(&owner, Right::DecidePermits).await?;
    let permit = match gw.store().find(&owner.namespace, &id).await? {
        Found::Permit(p) => p,
        Found::Execution(exec) => {
            if decision != Decision::Approve {
                return Err(ApiError::bad(
                    "action",
                    "code is approved once, for 24h or always; not approving leaves the run waiting until its timeout",
                ));
            }
            let level = trust_level(req.level.as_deref())?;
            return trust(&gw, &owner, &id, &exec, level, req.from_form).await;
        }
    };
    let name = permit.name_any();
    let digest =
        spec_digest(&permit.effective_spec()).map_err(|e| ApiError::Internal(e.to_string()))?;
    let already = permit
        .status
        .as_ref()
        .and_then(|s| s.approval.as_ref())
        .filter(|a| a.spec_digest == digest)
        .is_some_and(|a| {
            matches!(
                (a.decision, decision),
                (ApprovalDecision::Approved, Decision::Approve)
                    | (ApprovalDecision::Denied, Decision::Deny)
            )
        });
    let status = match decision {
        Decision::Approve => "completed",
        _ => "denied",
    };
    let mut out = json!({"id": id.as_label(), "status": status, "permit_id": name});
    if already {
        out["message"] = json!("Already processed");
    } else {
        record_decision(
            gw.store().client(),
            &owner.namespace,
            &name,
            decision,
            &owner.user,
            ApprovalVia::Web,
        )
        .await
        .map_err(|e| match e {
            PluginError::NotFound { .. } => ApiError::NotFound(format!("request {id} not found")),
            PluginError::Conflict(what) => ApiError::Conflict(format!(
                "{what} changed while the decision was being recorded; look again and decide again"
            )),
            other => ApiError::Internal(other.to_string()),
        })?;
        tracing::info!(namespace = %owner.namespace, permit = %name, by = %owner.user, ?decision, "decision recorded via the gateway");
        out["expanded"] = json!(false);
    }
    if !req.from_form {
        return Ok(Json(out).into_response());
    }
    let word = if status == "completed" {
        "approved"
    } else {
        "denied"
    };
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Permit {name} {word}</title>\
<style>{STYLE}</style></head><body><h1 id=\"result\">Permit {name} {word}</h1>\
<p>Recorded as {by}, bound to spec {digest}.</p></body></html>",
        name = escape(&name),
        by = escape(&owner.user),
        digest = escape(&digest),
    );
    Ok(secure((StatusCode::OK, Html(page)).into_response()))
}

/// Trusts the code of `exec` under its Permit, as `owner`.
async fn trust(
    gw: &Gateway,
    owner: &crate::identity::Caller,
    id: &RequestId,
    exec: &oauth3_crds::Execution,
    level: TrustLevel,
    from_form: bool,
) -> ApiResult<Response> {
    let digest = exec.spec.code_digest();
    let permit = &exec.spec.permit_ref;
    record_trust(
        gw.store().client(),
        &owner.namespace,
        permit,
        &digest,
        level,
        &owner.user,
    )
    .await
    .map_err(|e| match e {
        PluginError::NotFound { .. } => ApiError::NotFound(format!("Permit {permit} not found")),
        PluginError::Usage(m) => ApiError::bad("id", m),
        PluginError::Conflict(what) => ApiError::Conflict(format!(
            "{what} changed while the trust was being recorded; look again and decide again"
        )),
        other => ApiError::Internal(other.to_string()),
    })?;
    tracing::info!(namespace = %owner.namespace, permit = %permit, code = %digest, by = %owner.user, ?level, "code trusted via the gateway");
    if !from_form {
        return Ok(Json(
            json!({"id": id.as_label(), "status": "approved", "permit_id": permit,
            "code_digest": digest}),
        )
        .into_response());
    }
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Code approved</title>\
<style>{STYLE}</style></head><body><h1 id=\"result\">Code {digest} approved under Permit {permit}</h1>\
<p>Recorded as {by}.</p></body></html>",
        digest = escape(&digest),
        permit = escape(permit),
        by = escape(&owner.user),
    );
    Ok(secure((StatusCode::OK, Html(page)).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_everything_the_agent_wrote() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64_std(b""), "");
        assert_eq!(base64_std(b"f"), "Zg==");
        assert_eq!(base64_std(b"fo"), "Zm8=");
        assert_eq!(base64_std(b"foo"), "Zm9v");
        assert_eq!(base64_std(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_policy_allows_no_script_and_only_the_page_style() {
        let p = csp();
        assert!(
            p.starts_with("default-src 'none'; style-src 'sha256-"),
            "{p}"
        );
        assert!(!p.contains("script-src"));
        assert!(!p.contains("unsafe"));
        assert!(p.contains("form-action 'self'") && p.contains("frame-ancestors 'none'"));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x_oauth3_csrf=bad; oauth3_csrf=good"),
        );
        assert_eq!(cookie(&h, CSRF_COOKIE).as_deref(), Some("good"));
    }
}
