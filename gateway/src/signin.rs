//! One-time sign-in links from Telegram (`GET`/`POST /signin/:namespace/:permit?code=`).
//!
//! The operator's Telegram bot, when the owner taps "Open on the web", mints a code, keeps its
//! SHA-256 in the Permit's `status.webSignIn` and sends the owner the link. This page shows the
//! request exactly as [`crate::approve`] does and lets the owner decide without a Kubernetes
//! token: the gateway checks the code against the record (constant time, unexpired, for the
//! request as it stands now) and writes the decision as the Telegram owner together with the
//! removal of the record, in one status write guarded by the `resourceVersion` it checked
//! ([`oauth3_operator::web_sign_in::decide`]). A used, replaced, expired or mistyped link
//! decides nothing. Form posts carry the same CSRF protections as the approval page.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use oauth3_crds::{Execution, TrustLevel, WebSignInRequest};
use oauth3_operator::web_sign_in::{self, Choice, Recorded, Refused, SignInError};
use serde::Deserialize;
use serde_json::json;

use crate::Gateway;
use crate::approve::{
    Credential, Form, STYLE, check_csrf, code_page, escape, parse_decide, permit_page, secure,
    trust_level, wants_html,
};
use crate::error::{ApiError, ApiResult};
use crate::ids::is_dns_label;
use crate::routes::{Body, body_bytes};

/// Query of the sign-in routes.
#[derive(Debug, Deserialize)]
pub struct SignInQuery {
    /// The link's code.
    #[serde(default)]
    pub code: Option<String>,
}

/// Whether `name` is a valid Kubernetes object name (DNS subdomain).
fn is_object_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn check_target(ns: &str, name: &str) -> ApiResult<()> {
    if !is_dns_label(ns) {
        return Err(ApiError::bad(
            "namespace",
            "must be a Kubernetes namespace name (lowercase letters, digits and -)",
        ));
    }
    if !is_object_name(name) {
        return Err(ApiError::bad(
            "permit",
            "must be a Kubernetes object name (lowercase letters, digits, - and .)",
        ));
    }
    Ok(())
}

fn refused(r: Refused) -> ApiError {
    match r {
        Refused::Outdated(m) => ApiError::Conflict(m),
        other => ApiError::Forbidden(other.to_string()),
    }
}

/// `err` as a small page for a browser (the JSON error otherwise).
fn answer_error(err: ApiError, headers: &HeaderMap) -> Response {
    if !wants_html(headers) {
        return err.into_response();
    }
    let status = err.status();
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>oauth3: link not usable</title>\
<style>{STYLE}</style></head><body><h1>This link cannot decide anything</h1>\
<p id=\"error\">{}</p><p class=\"note\">Nothing was recorded.</p></body></html>",
        escape(&err.to_string())
    );
    secure((status, Html(page)).into_response())
}

/// An Execution of Permit `name` that waits for the code with `digest`.
async fn waiting_execution(
    gw: &Gateway,
    ns: &str,
    name: &str,
    digest: &str,
) -> ApiResult<Execution> {
    let api: Api<Execution> = Api::namespaced(gw.store().client().clone(), ns);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(ApiError::kube(format!("listing Executions in {ns}")))?;
    list.items
        .into_iter()
        .filter(|e| e.spec.permit_ref == name && e.spec.code_digest() == digest)
        .find(|e| crate::answer::execution_status(e) == "pending")
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "no Execution of Permit {name} waits for this code any more"
            ))
        })
}

/// `GET /signin/:namespace/:permit?code=`: the approval page for a sign-in link.
///
/// # Errors
/// 400 for a malformed namespace or name, 403 for an invalid or expired code, 404 for an
/// unknown Permit, 409 when the request changed since the link was made.
pub async fn page(
    State(gw): State<Gateway>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<SignInQuery>,
    headers: HeaderMap,
) -> Response {
    match show(
        &gw,
        &ns,
        &name,
        q.code.as_deref().unwrap_or_default(),
        &headers,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => answer_error(e, &headers),
    }
}

async fn show(
    gw: &Gateway,
    ns: &str,
    name: &str,
    code: &str,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    check_target(ns, name)?;
    let permit = gw.store().permit(ns, name).await?;
    let record = web_sign_in::check(&permit, code, Timestamp::now()).map_err(refused)?;
    let form = Form {
        action: format!("/signin/{}/{}", escape(ns), escape(name)),
        credential: Credential::SignIn {
            code,
            by: &record.by,
        },
        cookie_path: "/signin",
    };
    let head = json!({"signed_in_as": record.by, "expires_at": record.expires_at.0.to_string()});
    match record.request {
        WebSignInRequest::Permit => permit_page(gw, head, ns, &permit, headers, &form),
        WebSignInRequest::Code => {
            let exec = waiting_execution(gw, ns, name, &record.digest).await?;
            code_page(gw, head, ns, &permit, &exec, headers, &form)
        }
    }
}

/// `POST /signin/:namespace/:permit`: decide with a sign-in link's code (form field or JSON
/// `code`); `action` approve/deny for a Permit request, `level` once/24h/always for code.
///
/// # Errors
/// As [`page`], plus 403 for a failed CSRF check.
pub async fn decide(
    State(gw): State<Gateway>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<SignInQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match record(&gw, &ns, &name, q.code, &headers, body).await {
        Ok(r) => r,
        Err(e) => answer_error(e, &headers),
    }
}

async fn record(
    gw: &Gateway,
    ns: &str,
    name: &str,
    query_code: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    check_target(ns, name)?;
    let body = body_bytes(gw, body)?;
    let req = parse_decide(headers, &body)?;
    if req.from_form {
        check_csrf(gw, headers, &req)?;
    }
    let code = req.code.clone().or(query_code).unwrap_or_default();
    let choice = match (req.level.as_deref(), req.action.as_deref()) {
        (Some(level), _) => Choice::Trust(trust_level(Some(level))?),
        (None, Some("approve")) => Choice::Approve,
        (None, Some("deny")) => Choice::Deny,
        _ => {
            return Err(ApiError::bad(
                "action",
                "must be approve or deny (or a level: once, 24h or always, for code)",
            ));
        }
    };
    let recorded = web_sign_in::decide(gw.store().client(), ns, name, &code, choice)
        .await
        .map_err(|e| match e {
            SignInError::NotFound(m) => ApiError::NotFound(format!("{m} not found")),
            SignInError::Refused(r) => refused(r),
            SignInError::Choice(m) => ApiError::bad("action", m),
            SignInError::Conflict(m) => ApiError::Conflict(format!(
                "Permit {m} kept changing; look again and decide again"
            )),
            SignInError::Api { step, source } => ApiError::Kube { step, source },
        })?;
    let (title, detail, out) = match &recorded {
        Recorded::Decision(a) => {
            let word = match a.decision {
                oauth3_crds::ApprovalDecision::Approved => "approved",
                _ => "denied",
            };
            (
                format!("Permit {name} {word}"),
                format!("Recorded as {}, bound to spec {}.", a.by, a.spec_digest),
                json!({"status": if word == "approved" {"completed"} else {"denied"},
                    "permit_id": name, "by": a.by, "spec_digest": a.spec_digest}),
            )
        }
        Recorded::Trust {
            code_digest,
            level,
            by,
        } => {
            let level = match level {
                TrustLevel::Once => "once",
                TrustLevel::Day => "24h",
                TrustLevel::Always => "always",
            };
            (
                format!("Code {code_digest} approved under Permit {name}"),
                format!("Recorded as {by}, level {level}."),
                json!({"status": "approved", "permit_id": name, "by": by,
                    "code_digest": code_digest, "level": level}),
            )
        }
    };
    tracing::info!(namespace = %ns, permit = %name, "decision recorded through a Telegram sign-in link");
    if !req.from_form {
        return Ok(Json(out).into_response());
    }
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
<style>{STYLE}</style></head><body><h1 id=\"result\">{title}</h1><p>{detail}</p>\
<p class=\"note\">The link is used up; Telegram shows the decision too.</p></body></html>",
        title = escape(&title),
        detail = escape(&detail),
    );
    Ok(secure((StatusCode::OK, Html(page)).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kubernetes_names_reach_the_api() {
        assert!(check_target("team-a", "permit-1.v2").is_ok());
        for (ns, name) in [
            ("Team", "p"),
            ("a/b", "p"),
            ("..", "p"),
            ("a", ""),
            ("a", "P"),
            ("a", "p/../q"),
            ("a", "p%2f"),
            ("a", &"x".repeat(254)),
        ] {
            assert!(check_target(ns, name).is_err(), "{ns}/{name}");
        }
    }
}
