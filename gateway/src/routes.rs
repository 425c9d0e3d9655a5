//! The permit dialect's handlers: `POST /permit`, `POST /execute`,
//! `GET /execute/:id/status[?wait=true]`, `GET /execute/:id/stdout`,
//! `GET /session/:id/actions`, and the discovery answers (`/`, `/health`, `/plugins`).
//!
//! Each handler authenticates the caller, checks its right in its namespace, then reads or
//! creates objects there only: an id from another namespace is simply not found (404).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::ResourceExt;
use oauth3_crds::constants::{
    ANNOTATION_ACTION_ID, ANNOTATION_APPROVAL_REF, ANNOTATION_POSITIONAL_PARAMS,
    ANNOTATION_SOURCE_DIGEST, ANNOTATION_STATUS_TOKEN, LABEL_PERMIT, LABEL_REQUEST_ID,
    MAX_CODE_LEN,
};
use oauth3_crds::{CodeReview, Execution, ExecutionSpec, PermitPhase, PermitSpec, spec_digest};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::answer::{
    execution_answer, execution_error, execution_status, is_terminal, permit_answer, permit_status,
};
use crate::capability::{client_signature, parse_json, positional_prelude, to_spec};
use crate::error::{ApiError, ApiResult};
use crate::identity::{Caller, NAMESPACE_HEADER, Right, bearer};
use crate::ids::{IdKind, RequestId, is_dns_label, new_token, token_digest, token_matches};
use crate::scope::{ScopeRequest, Session, create_session, permit_request};
use crate::store::Found;
use crate::{Gateway, capability, skill};

/// A request body, or the reason it could not be read (too large).
pub type Body = Result<Bytes, BytesRejection>;

/// The body's bytes; a body over the limit is a 413 naming the limit.
pub(crate) fn body_bytes(gw: &Gateway, body: Body) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge {
                limit: gw.max_body_bytes(),
            }
        } else {
            ApiError::bad("request body", e.body_text())
        }
    })
}

impl Gateway {
    /// The authenticated caller of a request (Bearer token; namespace from the service
    /// account or the `X-OAuth3-Namespace` header).
    ///
    /// # Errors
    /// 401 without a usable token; 400 without a namespace.
    pub async fn caller(&self, headers: &HeaderMap) -> ApiResult<Caller> {
        let token = bearer(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .ok_or_else(|| {
            ApiError::Unauthorized("missing credential: send Authorization: Bearer <token>".into())
        })?;
        let ns = headers
            .get(NAMESPACE_HEADER)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        self.identity().authenticate(token, ns).await
    }

    /// The caller, once it is known to have `right`.
    ///
    /// # Errors
    /// 401, 400 or 403.
    pub async fn caller_with(&self, headers: &HeaderMap, right: Right) -> ApiResult<Caller> {
        let caller = self.caller(headers).await?;
        self.identity().require(&caller, right).await?;
        Ok(caller)
    }

    fn url(&self, path_and_query: &str) -> Option<String> {
        self.public_url()
            .map(|base| format!("{base}{path_and_query}"))
    }

    /// `status_url` of request `id` in `ns` with its read-only token.
    pub fn status_url(&self, ns: &str, id: &RequestId, token: &str) -> Option<String> {
        self.url(&format!(
            "/execute/{id}/status?wait=true&tenant={ns}&token={token}"
        ))
    }

    /// `approval_url` of request `id` in `ns`: a Permit request, or an Execution whose code
    /// waits for review (the reference opens the page; deciding needs an owner's credential).
    pub fn approval_url(&self, ns: &str, id: &RequestId, reference: &str) -> Option<String> {
        self.url(&format!("/approve/{id}?tenant={ns}&token={reference}"))
    }
}

/// `GET /health`.
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /`: what this gateway serves.
pub async fn discovery() -> Json<Value> {
    Json(json!({
        "name": "oauth3-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Ask for a Permit, wait for the owner's approval, run code that calls only the approved capabilities.",
        "authentication": "Authorization: Bearer <Kubernetes token>; X-OAuth3-Namespace: <namespace> for identities that are not service accounts",
        "quick_start": [
            "POST /permit {description, capabilities:[...]} -> {request_id, permit_id, approval_url, status_url}",
            "GET <status_url> (long-polls) -> {status: completed} once the owner approves",
            "POST /execute {permit_id, code, args} -> {request_id, status_url}",
            "GET <status_url> -> {status: completed|failed|denied, result: {success, stdout, stderr, exitCode, duration}}"
        ],
        "endpoints": {
            "POST /permit": "request a Permit (capabilities in the scoped-fetch or api-gateway form, or intent: [{name, goal, docUrls, secretHints, operations, constraints}] for the operator to draft)",
            "POST /draft": "preview what the drafter proposes for intent: [...] (creates nothing)",
            "POST /scope": "request a session for a skill: hosts, secrets, constraints, its code pinned",
            "POST /execute": "run code under a Permit (or skill_code under a session)",
            "GET /execute/:id/status[?wait=true]": "a Permit request's or an Execution's status; wait=true holds until it changes",
            "GET /execute/:id/stdout": "an Execution's stdout as text/plain",
            "GET /session/:permit_id/actions": "the Executions under a Permit",
            "GET /approve/:id": "the owner's approval page",
            "POST /approve/:id": "approve or deny (owner credential required)",
            "GET /signin/:namespace/:permit?code=": "the approval page opened by a one-time sign-in link the owner got on Telegram",
            "POST /signin/:namespace/:permit": "approve or deny with that link (it decides once, for 15 minutes)",
            "POST /secrets": "store a secret, sealed on arrival (owner)",
            "POST /cookies/upload": "store a site's cookies as a sealed cookie jar COOKIES_<DOMAIN> (owner)",
            "POST|GET|DELETE /mcp": "the Model Context Protocol (Streamable HTTP): tools request_permit, permit_status, execute, execution_status",
            "GET /.well-known/oauth-protected-resource/mcp": "the MCP endpoint's OAuth protected-resource metadata",
            "GET /plugins": "the capability forms",
            "GET /health": "liveness"
        },
        "available_plugins": ["scoped-fetch", "api-gateway"]
    }))
}

/// `GET /plugins`: the capability forms with their fields and an example each.
pub async fn plugins() -> Json<Value> {
    Json(json!({"plugins": [
        {
            "type": "scoped-fetch",
            "description": "Calls under one base URL, limited to path globs (* one segment, ** any), methods, body keys and a rate limit. Called as name(method, path, {query, body, headers}).",
            "spec_schema": {
                "name": "string: the function name is the part after the last dot",
                "base_url": "string: https origin and optional path prefix",
                "scope": "string[]: path globs relative to base_url (required, non-empty)",
                "methods": "string[]: allowed methods (absent: every method)",
                "auth": "{header | query_param, value: 'Bearer {SECRET_NAME}'}",
                "cookie_secret": "string: a secret sent as the Cookie header",
                "body_schema": "{allow_keys?: string[], deny_keys?: string[], max_bytes?: number}",
                "rate_limit": "{max_calls: number, window_seconds: number}",
                "query": "{allow: string[]}: query parameters the code may send (absent: none)",
                "doc_url": "string"
            },
            "example_spec": {
                "type": "scoped-fetch", "name": "github", "base_url": "https://api.github.com",
                "scope": ["repos/*/*/issues"], "methods": ["GET"],
                "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"},
                "rate_limit": {"max_calls": 30, "window_seconds": 60}
            }
        },
        {
            "type": "api-gateway",
            "description": "One endpoint template and method; called positionally in the declaration order of params. The default when type is absent.",
            "spec_schema": {
                "name": "string",
                "endpoint": "string: URL template with {param} placeholders",
                "method": "GET | HEAD | POST | PUT | PATCH | DELETE | OPTIONS",
                "params": "{name: {in: path|query|body|header, required?: boolean, pattern?: regex}} (order = argument order)",
                "auth": "{header | query_param, value: 'token {SECRET_NAME}'}",
                "doc_url": "string"
            },
            "example_spec": {
                "name": "github.createIssue",
                "endpoint": "https://api.github.com/repos/{owner}/{repo}/issues", "method": "POST",
                "auth": {"header": "Authorization", "value": "token {GH_TOKEN}"},
                "params": {"owner": {"in": "path"}, "repo": {"in": "path"},
                           "title": {"in": "body"}, "body": {"in": "body"}}
            }
        }
    ]}))
}

/// Any other path: a JSON 404.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; GET / lists them".into())
}

/// `POST /permit`: a Permit request from capability specs.
///
/// # Errors
/// 400 naming the field for bad input (nothing is created), 503 for `intent`, 401/403.
pub async fn create_permit(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let caller = gw.caller_with(&headers, Right::CreatePermits).await?;
    let body = body_bytes(&gw, body)?;
    let request = capability::parse_request(&body)?;
    let mapped = to_spec(&request)?;
    let mut extra = BTreeMap::new();
    if !mapped.positional.is_empty() {
        extra.insert(
            ANNOTATION_POSITIONAL_PARAMS.to_owned(),
            serde_json::to_string(&mapped.positional)
                .map_err(|e| ApiError::Internal(format!("recording argument order: {e}")))?,
        );
    }
    let Session {
        permit,
        id,
        status_token,
        approval_ref,
        ..
    } = permit_request(
        "permit_id",
        request.permit_id.as_deref(),
        mapped.spec.clone(),
        extra,
    )?;
    let name = permit.name_any();
    let created = gw
        .store()
        .create(&caller.namespace, &permit, "Permit")
        .await?;
    tracing::info!(namespace = %caller.namespace, permit = %name, request = %id, by = %caller.user, "permit requested");
    if !created.spec.intent.is_empty() {
        let mut out = json!({
            "request_id": id.as_label(),
            "status": "pending_draft",
            "permit_id": name,
            "capabilities": [],
            "secrets": created.spec.secrets,
            "message": "Permit requested from an intent: the operator drafts its capabilities from the documents, then the owner approves the draft. Poll status_url (or GET /execute/<request_id>/status?wait=true).",
        });
        if let Some(u) = gw.approval_url(&caller.namespace, &id, &approval_ref) {
            out["approval_url"] = json!(u);
        }
        if let Some(u) = gw.status_url(&caller.namespace, &id, &status_token) {
            out["status_url"] = json!(u);
        }
        return Ok(Json(out));
    }
    let digest = spec_digest(&created.spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let capabilities: Vec<Value> = created
        .spec
        .capabilities
        .iter()
        .map(|c| json!({"name": c.name, "signature": client_signature(c, &mapped.positional)}))
        .collect();
    let mut out = json!({
        "request_id": id.as_label(),
        "status": "pending_permit",
        "permit_id": name,
        "capabilities": capabilities,
        "secrets": created.spec.secrets,
        "spec_digest": digest,
        "message": "Permit requested; the owner must approve it. Poll status_url (or GET /execute/<request_id>/status?wait=true).",
    });
    if let Some(u) = gw.approval_url(&caller.namespace, &id, &approval_ref) {
        out["approval_url"] = json!(u);
    }
    if let Some(u) = gw.status_url(&caller.namespace, &id, &status_token) {
        out["status_url"] = json!(u);
    }
    Ok(Json(out))
}

/// The body of `POST /draft`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftRequest {
    /// The intents to draft, as in `POST /permit`.
    pub intent: Vec<oauth3_crds::Intent>,
}

/// `POST /draft {intent: [...]}`: what the drafter would propose for these intents (the
/// capabilities, where each came from, what it left out, or why it failed), creating nothing.
/// A preview for the agent: a Permit's own draft is made by the operator and approved by the
/// owner.
///
/// # Errors
/// 400 naming the field, 401/403, 503 without a drafter (`--draft-doc-hosts`).
pub async fn draft(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let _caller = gw.caller_with(&headers, Right::CreatePermits).await?;
    let body = body_bytes(&gw, body)?;
    let request: DraftRequest = parse_json(&body)?;
    let Some(drafting) = gw.drafting() else {
        return Err(ApiError::Unavailable(
            "draft: no drafter configured on this gateway (--draft-doc-hosts)".into(),
        ));
    };
    let permit = capability::PermitRequest {
        description: None,
        capabilities: None,
        intent: Some(request.intent),
        permit_id: None,
        networks: None,
        valid_for: None,
        max_executions: None,
        code_review: None,
    };
    let spec = to_spec(&permit)?.spec;
    let now = k8s_openapi::jiff::Timestamp::now();
    let d = drafting.draft(&spec, now).await;
    Ok(Json(json!({
        "drafter": d.drafter,
        "ok": d.errors.is_empty(),
        "capabilities": d.capabilities,
        "sources": d.sources,
        "documents": d.documents,
        "rationale": d.rationale,
        "not_allowed": d.not_allowed,
        "errors": d.errors,
    })))
}

/// The body of `POST /execute` (the permit dialect; `session_id`, `skill_code` and `skill_id`
/// are accepted as aliases of `permit_id`, `code` and `action_id`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The Permit to run under.
    #[serde(default)]
    pub permit_id: Option<String>,
    /// Alias of `permit_id`.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The JavaScript: the body of an async function.
    #[serde(default)]
    pub code: Option<String>,
    /// Alias of `code`.
    #[serde(default)]
    pub skill_code: Option<String>,
    /// A label for the run.
    #[serde(default)]
    pub action_id: Option<String>,
    /// Alias of `action_id`.
    #[serde(default)]
    pub skill_id: Option<String>,
    /// A JSON object visible to the code as `args`.
    #[serde(default)]
    pub args: Option<Value>,
    /// Say what would happen, create nothing.
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Secret names (the Permit already names its secrets): must be a subset of them.
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// Code fetched from a URL by the server: refused.
    #[serde(default)]
    pub skill_url: Option<String>,
}

/// `POST /execute`: an Execution under an existing Permit.
///
/// # Errors
/// 400 naming the field, 404 for a Permit not in the caller's namespace, 401/403.
pub async fn execute(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let caller = gw.caller_with(&headers, Right::CreateExecutions).await?;
    let body = body_bytes(&gw, body)?;
    let req: ExecuteRequest = parse_json(&body)?;
    if req.skill_url.is_some() {
        return Err(ApiError::bad(
            "skill_url",
            "not supported: send the code itself in code (the gateway never fetches code)",
        ));
    }
    let (code, field) = match (req.code.as_deref(), req.skill_code.as_deref()) {
        (Some(c), _) => (c, "code"),
        (None, Some(c)) => (c, "skill_code"),
        (None, None) => ("", "code"),
    };
    if code.trim().is_empty() {
        return Err(ApiError::bad(field, "required: the code to run"));
    }
    if code.chars().count() > MAX_CODE_LEN {
        return Err(ApiError::bad(
            field,
            format!("at most {MAX_CODE_LEN} characters"),
        ));
    }
    let args = match &req.args {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(Value::Object(o.clone())),
        Some(_) => return Err(ApiError::bad("args", "must be a JSON object")),
    };
    let action_id = req
        .action_id
        .clone()
        .or(req.skill_id.clone())
        .unwrap_or_else(|| "action".into());
    if action_id.len() > 253 || action_id.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "action_id",
            "at most 253 characters, no control characters",
        ));
    }
    // Skill code without a session: a one-off Permit that pins it, for the owner to approve;
    // the Execution waits for that decision.
    let mut one_off = match (
        req.permit_id.as_deref().or(req.session_id.as_deref()),
        field,
    ) {
        (None, "skill_code") if req.dry_run == Some(true) => {
            return Ok(Json(json!({
                "dry_run": true,
                "would_auto_approve": false,
                "reason": "needs_approval",
                "session_exists": false,
            })));
        }
        (None, "skill_code") => {
            gw.caller_with(&headers, Right::CreatePermits).await?;
            let meta = skill::metadata(code);
            let what = meta
                .description
                .clone()
                .or(meta.skill.clone())
                .unwrap_or_else(|| action_id.clone());
            let ask = ScopeRequest {
                description: Some(format!("Run the skill {what}")),
                constraints: Vec::new(),
                secrets: req.secrets.clone().unwrap_or_default(),
                networks: Vec::new(),
                skill_code: Some(code.to_owned()),
                session_id: None,
            };
            match create_session(&gw, &caller, &ask).await? {
                Ok(session) => Some(session),
                Err(Refusal(error)) => {
                    return Ok(Json(json!({
                        "status": "denied",
                        "error": format!("skill_code: {error}"),
                    })));
                }
            }
        }
        (None, _) => {
            return Err(ApiError::bad(
                "permit_id",
                "required: the Permit to run under",
            ));
        }
        (Some(name), _) if !is_dns_label(name) => {
            return Err(ApiError::bad(
                "permit_id",
                "must be a Permit name (a DNS label)",
            ));
        }
        (Some(_), _) => None,
    };
    let session_name = one_off.as_ref().map(|s| s.permit.name_any());
    let permit_name = session_name
        .as_deref()
        .or(req.permit_id.as_deref())
        .or(req.session_id.as_deref())
        .unwrap_or_default();
    let permit = match &one_off {
        Some(s) => s.permit.clone(),
        None => gw.store().permit(&caller.namespace, permit_name).await?,
    };
    if let Some(asked) = &req.secrets
        && let Some(extra) = asked.iter().find(|s| !permit.spec.secrets.contains(s))
    {
        return Err(ApiError::bad(
            "secrets",
            format!(
                "{extra:?} is not a secret of Permit {permit_name} (it names: {})",
                permit.spec.secrets.join(", ")
            ),
        ));
    }
    // A one-off session has removed the types already, to pin the result.
    let prepared = one_off.as_mut().and_then(|s| s.skill.take());
    let skill = if prepared.is_some() {
        prepared
    } else if field == "skill_code" {
        match prepare_skill(code, &permit.effective_spec(), permit_name)? {
            Ok(s) => Some(s),
            Err(Refusal(error)) => {
                return Ok(Json(json!({
                    "status": "denied",
                    "permit_id": permit_name,
                    "error": format!("skill_code: {error}"),
                })));
            }
        }
    } else {
        None
    };
    if req.dry_run == Some(true) {
        let approved = permit.status.as_ref().and_then(|s| s.phase) == Some(PermitPhase::Approved);
        return Ok(Json(json!({
            "dry_run": true,
            "would_auto_approve": approved && permit.spec.code_review == CodeReview::None,
            "reason": "capability_mode",
            "permit_id": permit_name,
            "permit_status": permit_status(&permit),
        })));
    }
    let positional: BTreeMap<String, Vec<String>> = permit
        .annotations()
        .get(ANNOTATION_POSITIONAL_PARAMS)
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    let (code, timeout, source_digest) = match &skill {
        Some(s) => (
            skill_code_to_run(&permit.effective_spec(), &positional, &s.source),
            s.timeout.unwrap_or(gw.execution_timeout()),
            Some(oauth3_crds::code_digest(code)),
        ),
        None => (
            format!(
                "{}{code}",
                positional_prelude(&permit.effective_spec(), &positional)
            ),
            gw.execution_timeout(),
            None,
        ),
    };
    let language = if skill.is_some() {
        oauth3_crds::CodeLanguage::TypeScript
    } else {
        oauth3_crds::CodeLanguage::JavaScript
    };
    let mut out = match submit(
        &gw,
        &caller,
        &permit,
        Submission {
            code,
            language,
            timeout,
            args,
            action_id,
            source_digest,
            field,
        },
    )
    .await?
    {
        Ok(out) => out,
        Err(denied) => return Ok(Json(denied)),
    };
    if let Some(s) = &one_off {
        // The owner approves the one-off Permit; the run waits for that decision.
        out["session_id"] = json!(permit_name);
        out["message"] = json!(
            "A one-off Permit for this code was requested; the owner must approve it (approval_url). Poll status_url for the result."
        );
        if let Some(u) = gw.approval_url(&caller.namespace, &s.id, &s.approval_ref) {
            out["approval_url"] = json!(u);
        }
    }
    Ok(Json(out))
}

/// What [`submit`] creates an Execution from: the code to run (prelude included), checked
/// already for size and form by the caller.
pub(crate) struct Submission {
    pub(crate) code: String,
    pub(crate) language: oauth3_crds::CodeLanguage,
    pub(crate) timeout: i32,
    pub(crate) args: Option<Value>,
    pub(crate) action_id: String,
    pub(crate) source_digest: Option<String>,
    /// The request field the code came in, for refusals.
    pub(crate) field: &'static str,
}

/// Creates an Execution of `sub` under `permit` in the caller's namespace and answers it
/// (`Ok(answer)` with `status_url` and, for code the owner reviews, `approval_url`), or the
/// policy refusal (`Err(answer)`, nothing created) for code that is not pinned or args that
/// break the Permit's rules.
///
/// # Errors
/// When the Execution cannot be created.
pub(crate) async fn submit(
    gw: &Gateway,
    caller: &Caller,
    permit: &oauth3_crds::Permit,
    sub: Submission,
) -> ApiResult<Result<Value, Value>> {
    let Submission {
        code,
        language,
        timeout,
        args,
        action_id,
        source_digest,
        field,
    } = sub;
    let name = permit.name_any();
    let name = name.as_str();
    // Refused here rather than created to be refused: the operator and the runner check the
    // same rules again.
    let digest = oauth3_crds::code_digest_in(&code, language);
    if !permit.spec.pinned_code.is_empty() && !permit.spec.pinned_code.contains(&digest) {
        return Ok(Err(json!({
            "status": "denied",
            "permit_id": name,
            "error": format!(
                "{field}: this is not the code the owner approved with session {name} \
                 (its digest {digest} is not pinned); send the approved code, or ask for a new \
                 session (POST /scope) with this code"
            ),
        })));
    }
    if let Err(why) = oauth3_crds::check_args(&permit.spec.arg_rules, args.as_ref()) {
        return Ok(Err(json!({
            "status": "denied",
            "permit_id": name,
            "error": format!("args: {why}"),
        })));
    }
    let id = RequestId::new(IdKind::Execution);
    let status_token = new_token();
    // Code the owner must review gets its own approval page.
    let approval_ref = (permit.spec.code_review == CodeReview::PerCode).then(new_token);
    let spec: ExecutionSpec = serde_json::from_value(json!({
        "permitRef": name,
        "code": code,
        "language": language,
        "args": args,
        "timeoutSeconds": timeout,
    }))
    .map_err(|e| ApiError::Internal(format!("building the Execution: {e}")))?;
    let mut exec = Execution::new(&id.object_name(), spec);
    exec.metadata.labels = Some(
        [
            (LABEL_REQUEST_ID.to_owned(), id.as_label()),
            (LABEL_PERMIT.to_owned(), name.to_owned()),
        ]
        .into(),
    );
    exec.metadata.annotations = Some(
        [
            (
                ANNOTATION_STATUS_TOKEN.to_owned(),
                token_digest(&status_token),
            ),
            (ANNOTATION_ACTION_ID.to_owned(), action_id),
        ]
        .into_iter()
        .chain(source_digest.map(|d| (ANNOTATION_SOURCE_DIGEST.to_owned(), d)))
        .chain(
            approval_ref
                .as_deref()
                .map(|r| (ANNOTATION_APPROVAL_REF.to_owned(), token_digest(r))),
        )
        .collect(),
    );
    let created = gw
        .store()
        .create(&caller.namespace, &exec, "Execution")
        .await?;
    tracing::info!(namespace = %caller.namespace, execution = %created.name_any(), permit = %name, by = %caller.user, "execution submitted");
    let mut out = execution_answer(&id.as_label(), &created);
    out["message"] = json!("Submitted; poll status_url for the result.");
    if let Some(u) = gw.status_url(&caller.namespace, &id, &status_token) {
        out["status_url"] = json!(u);
    }
    if let Some(u) = approval_ref
        .as_deref()
        .and_then(|r| gw.approval_url(&caller.namespace, &id, r))
    {
        out["approval_url"] = json!(u);
    }
    Ok(Ok(out))
}

/// A policy refusal of a well-formed request: answered `200 {status: "denied", error}`.
pub(crate) struct Refusal(pub(crate) String);

/// Skill code checked to run under `permit`.
pub(crate) struct PreparedSkill {
    /// The skill as written (TypeScript).
    pub(crate) source: String,
    timeout: Option<i32>,
}

/// The code an Execution runs for skill `source` under `spec` (TypeScript, run with
/// `language: typescript`): the positional prelude of its capabilities, then the skill as
/// written. Deterministic, so a session can pin its digest before the Permit exists.
pub(crate) fn skill_code_to_run(
    spec: &PermitSpec,
    positional: &BTreeMap<String, Vec<String>>,
    source: &str,
) -> String {
    format!("{}{source}", positional_prelude(spec, positional))
}

/// The digest a skill's code to run is pinned and approved by (TypeScript's).
pub(crate) fn skill_digest(code: &str) -> String {
    oauth3_crds::code_digest_in(code, oauth3_crds::CodeLanguage::TypeScript)
}

/// [`prepare_skill`] for a spec that is not stored yet (`POST /scope`).
pub(crate) fn prepare_skill_code(
    code: &str,
    spec: &PermitSpec,
) -> ApiResult<Result<PreparedSkill, Refusal>> {
    prepare_skill(code, spec, "the session")
}

/// Checks skill code against `permit` and removes its types (pure). Code that does not parse
/// is a malformed request (the outer error); code the sandbox cannot run as asked is a
/// refusal.
fn prepare_skill(
    code: &str,
    spec: &PermitSpec,
    permit_name: &str,
) -> ApiResult<Result<PreparedSkill, Refusal>> {
    let meta = skill::metadata(code);
    if let Some(missing) = meta.secrets.iter().find(|s| !spec.secrets.contains(s)) {
        return Ok(Err(Refusal(format!(
            "@secrets {missing} is not a secret of Permit {permit_name} (it names: {}); ask for a Permit that names it",
            spec.secrets.join(", ")
        ))));
    }
    let timeout = match meta.timeout {
        Some(t) if (1..=3600).contains(&t) => Some(t),
        Some(t) => {
            return Err(ApiError::bad(
                "skill_code",
                format!("@timeout {t}: must be 1..3600 seconds"),
            ));
        }
        None => None,
    };
    let has_fetch = spec
        .capabilities
        .iter()
        .any(|c| matches!(c.form(), Some(oauth3_crds::CapabilityForm::Fetch { .. })));
    match skill::check(code, has_fetch) {
        Ok(()) => Ok(Ok(PreparedSkill {
            source: code.to_owned(),
            timeout,
        })),
        Err(e @ skill::SkillError::Syntax(_)) => Err(ApiError::bad("skill_code", e.to_string())),
        Err(e) => Ok(Err(Refusal(e.to_string()))),
    }
}

/// Query of the status routes.
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    /// `true` (or anything starting with it) or `1`: hold until the status changes.
    #[serde(default)]
    pub wait: Option<String>,
    /// The namespace, with `token`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The read-only per-request token of `status_url`.
    #[serde(default)]
    pub token: Option<String>,
    /// Accepted and ignored (the hold is the gateway's).
    #[serde(default)]
    pub timeout: Option<String>,
}

impl StatusQuery {
    fn wait(&self) -> bool {
        self.wait
            .as_deref()
            .is_some_and(|w| w.starts_with("true") || w == "1")
    }
}

/// Finds request `id` for a reader: the Bearer caller (with the read right for its kind) in
/// its namespace, or, without a Bearer, the `tenant` + read-only `token` of `status_url`.
///
/// # Errors
/// 404 when the id is not in that namespace or the token does not match it.
pub(crate) async fn find_for_reader(
    gw: &Gateway,
    headers: &HeaderMap,
    q: &StatusQuery,
    id: &RequestId,
) -> ApiResult<(String, Found)> {
    if headers.contains_key(header::AUTHORIZATION) || q.token.is_none() {
        let right = match id.kind {
            IdKind::Permit => Right::ReadPermits,
            IdKind::Execution => Right::ReadExecutions,
        };
        let caller = gw.caller_with(headers, right).await?;
        let found = gw.store().find(&caller.namespace, id).await?;
        return Ok((caller.namespace, found));
    }
    let not_found = || ApiError::NotFound(format!("request {id} not found"));
    let ns = q
        .tenant
        .as_deref()
        .filter(|t| is_dns_label(t))
        .ok_or_else(not_found)?;
    let token = q.token.as_deref().unwrap_or_default();
    let found = gw.store().find(ns, id).await.map_err(|e| match e {
        ApiError::NotFound(_) => not_found(),
        other => other,
    })?;
    let stored = match &found {
        Found::Permit(p) => p.annotations().get(ANNOTATION_STATUS_TOKEN).cloned(),
        Found::Execution(e) => e.annotations().get(ANNOTATION_STATUS_TOKEN).cloned(),
    };
    if !token_matches(token, stored.as_deref()) {
        return Err(not_found());
    }
    Ok((ns.to_owned(), found))
}

/// `GET /execute/:id/status[?wait=true]`: a Permit request's or an Execution's status. With
/// `wait`, a status that is not final is held until it is final or the long-poll bound
/// passes (then the current state is answered); a final one is answered at once.
///
/// # Errors
/// 400 for a malformed id, 404, 401/403.
pub async fn status(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let id = RequestId::parse(&id, "id")?;
    let (ns, found) = find_for_reader(&gw, &headers, &q, &id).await?;
    let bound = if q.wait() {
        gw.long_poll()
    } else {
        std::time::Duration::ZERO
    };
    let label = id.as_label();
    Ok(Json(match found {
        Found::Permit(p) => {
            let p = gw
                .store()
                .wait_until_final(&gw.store().permits(&ns), *p, bound, permit_status)
                .await?;
            permit_answer(&label, &p)
        }
        Found::Execution(e) => {
            let e = gw
                .store()
                .wait_until_final(&gw.store().executions(&ns), *e, bound, execution_status)
                .await?;
            execution_answer(&label, &e)
        }
    }))
}

/// `GET /execute/:id/stdout`: the finished Execution's stdout as `text/plain`, with
/// `X-Exit-Code`, `X-Duration-Ms` and `X-Success`; 202 with its status while it runs.
///
/// # Errors
/// 400 for a malformed or Permit id, 404, 401/403.
pub async fn stdout(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = RequestId::parse(&id, "id")?;
    if id.kind != IdKind::Execution {
        return Err(ApiError::bad(
            "id",
            "stdout exists only for executions (exec_...)",
        ));
    }
    let (_, found) = find_for_reader(&gw, &headers, &q, &id).await?;
    let Found::Execution(exec) = found else {
        return Err(ApiError::NotFound(format!("request {id} not found")));
    };
    let status = execution_status(&exec);
    if !is_terminal(status) {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"request_id": id.as_label(), "status": status, "message": "Not yet complete"})),
        )
            .into_response());
    }
    let s = exec.status.clone().unwrap_or_default();
    let success = status == "completed";
    let mut response = s.stdout.clone().unwrap_or_default().into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let num =
        |n: i64| HeaderValue::from_str(&n.to_string()).unwrap_or(HeaderValue::from_static("0"));
    h.insert(
        "x-exit-code",
        num(i64::from(s.exit_code.unwrap_or(if success {
            0
        } else {
            1
        }))),
    );
    h.insert("x-duration-ms", num(s.duration_ms.unwrap_or(0)));
    h.insert(
        "x-success",
        HeaderValue::from_static(if success { "true" } else { "false" }),
    );
    Ok(response)
}

/// `GET /session/:permit_id/actions`: the latest 50 Executions the gateway submitted under a
/// Permit, newest first.
///
/// # Errors
/// 400 for a malformed name, 404 for a Permit not in the caller's namespace, 401/403.
pub async fn session_actions(
    State(gw): State<Gateway>,
    Path(permit_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    if !is_dns_label(&permit_id) {
        return Err(ApiError::bad("id", "must be a Permit name (a DNS label)"));
    }
    let caller = gw.caller_with(&headers, Right::ReadExecutions).await?;
    gw.store().permit(&caller.namespace, &permit_id).await?;
    let lp = kube::api::ListParams::default().labels(&format!("{LABEL_PERMIT}={permit_id}"));
    let mut list = gw
        .store()
        .executions(&caller.namespace)
        .list(&lp)
        .await
        .map_err(ApiError::kube(format!(
            "listing the Executions of Permit {permit_id}"
        )))?
        .items;
    list.sort_by_key(|e| std::cmp::Reverse(e.creation_timestamp()));
    let actions: Vec<Value> = list
        .iter()
        .filter(|e| e.spec.permit_ref == permit_id)
        .take(50)
        .map(|e| {
            let id = e
                .labels()
                .get(LABEL_REQUEST_ID)
                .cloned()
                .unwrap_or_default();
            let answer = execution_answer(&id, e);
            json!({
                "id": id,
                "action_id": e.annotations().get(ANNOTATION_ACTION_ID),
                "status": answer["status"],
                "created_at": answer["created_at"],
                "result": answer.get("result"),
                "error": execution_error(e),
            })
        })
        .collect();
    Ok(Json(json!({"permit_id": permit_id, "actions": actions})))
}
