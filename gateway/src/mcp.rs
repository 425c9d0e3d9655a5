//! The Model Context Protocol at `/mcp` (Streamable HTTP transport, protocol revision
//! 2025-11-25; 2025-06-18 and 2025-03-26 clients are answered in their own revision).
//!
//! - `POST /mcp`: one JSON-RPC message. `initialize` opens a session (`Mcp-Session-Id` in the
//!   answer); every later request names it. Requests are answered with one
//!   `application/json` JSON-RPC response; notifications and responses are taken with 202.
//! - `GET /mcp`: the session's server-to-client stream (`text/event-stream`), which carries
//!   `notifications/tools/list_changed` when the tools the caller may call change.
//! - `DELETE /mcp`: ends the session.
//!
//! Authorization as the protocol describes it: the gateway is an OAuth 2.0 protected resource
//! (RFC 9728). A request without an accepted credential is answered 401 with
//! `WWW-Authenticate: Bearer resource_metadata="<public URL>/.well-known/oauth-protected-resource/mcp"`,
//! and that document names the authorization servers whose tokens are accepted. The
//! credentials are those of the rest of the gateway: Kubernetes tokens the API server accepts
//! (TokenReview), which is also what self-service tenants hold (`POST /signup`); the rights
//! are asked of the API server per call (SubjectAccessReview). A session is bound to the
//! identity and namespace that opened it: the same token (or another of the same identity)
//! must come with every request. oauth3's own tools act with the gateway's own identity, only
//! in the caller's namespace. A capability tool (`<permit>__<capability>`, a typed endpoint of
//! an approved Permit with calls without code whose `spec.proxy.callers` name the caller) is
//! a call to that Permit's credential proxy through the gateway's `/proxy` forwarding, with
//! the caller's own token, which the proxy reviews and removes: a client's token never
//! reaches an upstream API.
//!
//! Tools of oauth3 itself (`request_permit`, `permit_status`, `execute`, `execution_status`)
//! take the CRD types' own fields, with their schemas generated from those types (one
//! source). Failures of a tool (bad input, a policy refusal, a denied Permit) are tool results
//! with `isError: true` and the reason, so a model can correct itself; protocol failures
//! (unknown method or tool, malformed message) are JSON-RPC errors.
//!
//! Stateless like the rest of the gateway: a session id carries the identity, namespace and
//! revision it was opened with (plus 128 random bits), so any replica serves any session, and
//! an id is refused (404) with any other identity's credential. The stream of `GET /mcp` is a
//! watch of the namespace's Permits held by whichever replica serves it. What a replica
//! remembers is only a convenience: sessions ended there (`DELETE`), and the approval links it
//! handed out (which `permit_status` repeats to the session that asked).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use kube::ResourceExt;
use oauth3_crds::{Execution, ExecutionSpec, Permit, PermitSpec, spec_digest};
use serde_json::{Map, Value, json};

use crate::answer::{execution_answer, execution_status, permit_answer, permit_status};
use crate::error::ApiError;
use crate::identity::{Caller, Right};
use crate::ids::{IdKind, RequestId, is_dns_label};
use crate::routes::{Body, Submission, body_bytes, submit};
use crate::scope::permit_request;
use crate::store::Found;
use crate::{Gateway, capability};

/// Where MCP is served.
pub const PATH: &str = "/mcp";
/// The protected-resource metadata document of `/mcp` (RFC 9728, path-specific form).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";
/// The protocol revision this server speaks natively.
pub const LATEST_VERSION: &str = "2025-11-25";
/// Revisions it answers in their own terms (the transport is the same for all three).
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// The session header.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol-version header clients send after `initialize`.
pub const VERSION_HEADER: &str = "mcp-protocol-version";

/// Most ended sessions and handed-out links one replica remembers.
const MAX_REMEMBERED: usize = 10_000;

// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

/// One client's session, carried in its id: who opened it, in which namespace, in which
/// revision. Any replica reads it from the id, so nothing is shared between replicas; the
/// identity in it must be the caller's on every request, so an id is worth nothing without
/// that identity's own credential (and a forged one names only its forger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSession {
    /// The id's random part (128 bits, hex).
    key: String,
    user: String,
    namespace: String,
    version: String,
}

impl McpSession {
    fn new(caller: &Caller, version: &str) -> Self {
        Self {
            key: crate::ids::new_token(),
            user: caller.user.clone(),
            namespace: caller.namespace.clone(),
            version: version.to_owned(),
        }
    }

    /// `<random>.<base64url of {"u": user, "n": namespace, "v": version}>`.
    fn id(&self) -> String {
        use base64::Engine as _;
        let claims = json!({"u": self.user, "n": self.namespace, "v": self.version});
        format!(
            "{}.{}",
            self.key,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn parse(id: &str) -> Option<Self> {
        use base64::Engine as _;
        let (key, claims) = id.split_once('.')?;
        if key.len() < 32 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .ok()?;
        let claims: Value = serde_json::from_slice(&claims).ok()?;
        let field = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let version = field("v")?;
        let (user, namespace) = (field("u")?, field("n")?);
        SUPPORTED_VERSIONS
            .contains(&version.as_str())
            .then(|| Self {
                key: key.to_owned(),
                user,
                namespace,
                version,
            })
    }
}

/// What one replica remembers of sessions: the ids ended here (`DELETE /mcp`) and the
/// approval links it handed out, both bounded. Neither is needed for a session to work on
/// another replica.
#[derive(Default)]
pub struct Sessions {
    ended: Mutex<Bounded<()>>,
    links: Mutex<Bounded<String>>,
}

/// A map that forgets its oldest entries past [`MAX_REMEMBERED`].
struct Bounded<V> {
    map: HashMap<String, V>,
    order: std::collections::VecDeque<String>,
}

impl<V> Default for Bounded<V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }
}

impl<V> Bounded<V> {
    fn insert(&mut self, key: String, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

impl Sessions {
    /// The session `id`, if it is well formed, not ended here, and `caller`'s own.
    fn find(&self, id: &str, caller: &Caller) -> Option<McpSession> {
        let s = McpSession::parse(id)?;
        let ended = lock(&self.ended).map.contains_key(&s.key);
        (!ended && s.user == caller.user && s.namespace == caller.namespace).then_some(s)
    }

    fn end(&self, session: &McpSession) {
        lock(&self.ended).insert(session.key.clone(), ());
    }

    fn remember_link(&self, session: &McpSession, permit: &str, url: String) {
        lock(&self.links).insert(format!("{}/{permit}", session.key), url);
    }

    fn link(&self, session: &McpSession, permit: &str) -> Option<String> {
        lock(&self.links)
            .map
            .get(&format!("{}/{permit}", session.key))
            .cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A JSON-RPC response object.
fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn rpc_error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// A JSON-RPC error answered with an HTTP status (malformed messages, unknown sessions).
fn http_rpc_error(status: StatusCode, id: &Value, code: i64, message: &str) -> Response {
    (status, Json(rpc_error(id, code, message))).into_response()
}

/// The 401 of `/mcp`: the reason, and where the protected-resource metadata is.
fn unauthorized(gw: &Gateway, message: &str) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, Json(json!({"error": message}))).into_response();
    let value = match gw.public_url() {
        Some(base) => {
            format!("Bearer resource_metadata=\"{base}{METADATA_PATH}\", error=\"invalid_token\"")
        }
        None => "Bearer error=\"invalid_token\"".to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// An `Origin` other than the gateway's own is refused (DNS rebinding): browsers send it,
/// other clients do not.
fn origin_allowed(gw: &Gateway, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    gw.public_url().is_some_and(|base| {
        url::Url::parse(base).is_ok_and(|u| u.origin().ascii_serialization() == origin)
    })
}

/// Authenticates a request to `/mcp`, answering the refusal as the protocol asks.
async fn authenticate(gw: &Gateway, headers: &HeaderMap) -> Result<Caller, Response> {
    if !origin_allowed(gw, headers) {
        return Err((
            StatusCode::FORBIDDEN,
            Json(json!({"error": "Origin: not this gateway's origin"})),
        )
            .into_response());
    }
    match gw.caller(headers).await {
        Ok(c) => Ok(c),
        Err(ApiError::Unauthorized(m)) => Err(unauthorized(gw, &m)),
        Err(e) => Err(e.into_response()),
    }
}

/// The session a request names, or the answer for a missing, unknown or foreign one.
fn session_of(
    gw: &Gateway,
    headers: &HeaderMap,
    caller: &Caller,
    id: &Value,
) -> Result<McpSession, Box<Response>> {
    let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(Box::new(http_rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            INVALID_REQUEST,
            "Mcp-Session-Id: required after initialize",
        )));
    };
    match gw.mcp_sessions().find(sid, caller) {
        Some(s) => Ok(s),
        None => Err(Box::new(http_rpc_error(
            StatusCode::NOT_FOUND,
            id,
            INVALID_REQUEST,
            "session not found: it ended, or was opened by another identity; initialize a new one",
        ))),
    }
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: RFC 9728 metadata of `/mcp`.
pub async fn resource_metadata(State(gw): State<Gateway>) -> Response {
    let Some(base) = gw.public_url() else {
        return ApiError::Unavailable(
            "protected-resource metadata: the gateway has no --public-url".into(),
        )
        .into_response();
    };
    let servers = gw.mcp_authorization_servers().await;
    Json(json!({
        "resource": format!("{base}{PATH}"),
        "resource_name": "oauth3 agent gateway",
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_documentation": format!("{base}/"),
    }))
    .into_response()
}

/// `POST /mcp`.
pub async fn post(State(gw): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    let caller = match authenticate(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body: Bytes = match body_bytes(&gw, body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return http_rpc_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                PARSE_ERROR,
                &format!("request body: not JSON: {e}"),
            );
        }
    };
    let Value::Object(message) = message else {
        return http_rpc_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            INVALID_REQUEST,
            "request body: one JSON-RPC message object (batches are not part of this protocol revision)",
        );
    };
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let method = message.get("method").and_then(Value::as_str);
    if message.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return http_rpc_error(
            StatusCode::BAD_REQUEST,
            &id,
            INVALID_REQUEST,
            "jsonrpc: must be \"2.0\"",
        );
    }
    if method == Some("initialize") {
        return initialize(&caller, &id, message.get("params"));
    }
    if let Some(v) = headers.get(VERSION_HEADER) {
        let v = v.to_str().unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&v) {
            return http_rpc_error(
                StatusCode::BAD_REQUEST,
                &id,
                INVALID_REQUEST,
                &format!(
                    "MCP-Protocol-Version: {v:?} is not supported (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            );
        }
    }
    let session = match session_of(&gw, &headers, &caller, &id) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if let Some(v) = headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok())
        && v != session.version
    {
        return http_rpc_error(
            StatusCode::BAD_REQUEST,
            &id,
            INVALID_REQUEST,
            &format!(
                "MCP-Protocol-Version: {v:?}, but this session negotiated {:?}",
                session.version
            ),
        );
    }
    let Some(method) = method else {
        // A response to a request of ours (none are sent) or a malformed message.
        return StatusCode::ACCEPTED.into_response();
    };
    if !message.contains_key("id") {
        // A notification (`notifications/initialized`, `notifications/cancelled`, ...).
        return StatusCode::ACCEPTED.into_response();
    }
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let answer = match method {
        "ping" => rpc_result(&id, json!({})),
        "tools/list" => rpc_result(&id, json!({"tools": tools(&gw, &session).await})),
        "tools/call" => match call_tool(&gw, &caller, &session, &headers, &params).await {
            Ok(result) => rpc_result(&id, result),
            Err((code, message)) => rpc_error(&id, code, message),
        },
        other => rpc_error(&id, METHOD_NOT_FOUND, format!("method not found: {other}")),
    };
    Json(answer).into_response()
}

fn initialize(caller: &Caller, id: &Value, params: Option<&Value>) -> Response {
    if id.is_null() {
        return http_rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            INVALID_REQUEST,
            "initialize: a request with an id",
        );
    }
    let asked = params
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str)
        .unwrap_or(LATEST_VERSION);
    let version = if SUPPORTED_VERSIONS.contains(&asked) {
        asked
    } else {
        LATEST_VERSION
    };
    let sid = McpSession::new(caller, version).id();
    tracing::info!(namespace = %caller.namespace, by = %caller.user, version, "mcp session opened");
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": true}},
        "serverInfo": {
            "name": "oauth3-gateway",
            "title": "oauth3",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "instructions": INSTRUCTIONS,
    });
    let mut response = Json(rpc_result(id, result)).into_response();
    if let Ok(v) = HeaderValue::from_str(&sid) {
        response.headers_mut().insert(SESSION_HEADER, v);
    }
    response
}

const INSTRUCTIONS: &str = "oauth3 lets you call HTTP APIs with an owner's credentials without \
ever seeing them. Ask for a Permit with request_permit (the capabilities you need, or an \
intent), give the owner its approval_url, and wait with permit_status. Once approved, run code \
that calls only the approved capabilities with execute, or call a capability tool directly \
when the Permit allows calls without code.";

/// `GET /mcp`: the session's stream of server notifications.
pub async fn stream(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let caller = match authenticate(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let accepts = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !accepts {
        return (
            StatusCode::NOT_ACCEPTABLE,
            Json(json!({"error": "Accept: text/event-stream is required for GET /mcp"})),
        )
            .into_response();
    }
    let session = match session_of(&gw, &headers, &caller, &Value::Null) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    sse(tool_changes(gw, session.namespace, session.user))
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// `DELETE /mcp`: ends the session.
pub async fn delete(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let caller = match authenticate(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Mcp-Session-Id: required"})),
        )
            .into_response();
    };
    if let Some(session) = gw.mcp_sessions().find(sid, &caller) {
        gw.mcp_sessions().end(&session);
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "session not found"})),
        )
            .into_response()
    }
}

fn list_changed() -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
}

/// `notifications/tools/list_changed` whenever the capability tools of namespace `ns` change
/// (a Permit approved, revoked, expired or deleted): a watch of its Permits for as long as the
/// client holds the stream.
fn tool_changes(
    gw: Gateway,
    ns: String,
    user: String,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    use kube::runtime::watcher;
    let events = watcher::watcher(gw.store().permits(&ns), watcher::Config::default());
    let state = (
        HashMap::<String, Permit>::new(),
        Some(HashMap::<String, Permit>::new()),
        None::<Vec<String>>,
    );
    events
        .scan(state, move |(permits, initial, shown), event| {
            let changed = match event {
                Err(e) => {
                    tracing::debug!(error = %e, namespace = %ns, "mcp tool watch");
                    false
                }
                Ok(event) => {
                    match event {
                        watcher::Event::Init => *initial = Some(HashMap::new()),
                        watcher::Event::InitApply(p) => {
                            if let Some(m) = initial.as_mut() {
                                m.insert(p.name_any(), p);
                            }
                        }
                        watcher::Event::InitDone => {
                            if let Some(m) = initial.take() {
                                *permits = m;
                            }
                        }
                        watcher::Event::Apply(p) => {
                            permits.insert(p.name_any(), p);
                        }
                        watcher::Event::Delete(p) => {
                            permits.remove(&p.name_any());
                        }
                    }
                    if initial.is_some() {
                        false
                    } else {
                        let mut now: Vec<String> = permits
                            .values()
                            .flat_map(|p| capability_tools(p, &user))
                            .map(|t| t.name)
                            .collect();
                        now.sort();
                        let changed = shown.as_ref().is_some_and(|s| *s != now);
                        *shown = Some(now);
                        changed
                    }
                }
            };
            futures::future::ready(Some(changed))
        })
        .filter(|changed| futures::future::ready(*changed))
        .map(|_| Ok(Event::default().data(list_changed().to_string())))
}

/// A tool backed by one capability of an approved Permit.
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityTool {
    /// `<permit>__<capability>`.
    pub name: String,
    /// The Permit.
    pub permit: String,
    /// The capability.
    pub capability: String,
    /// The tool's `tools/list` entry.
    pub listing: Value,
}

/// The capability tools a Permit offers `user`: one per typed-endpoint capability, while the
/// Permit is approved and names `user` among the callers of its calls without code
/// (`spec.proxy`).
pub fn capability_tools(permit: &Permit, user: &str) -> Vec<CapabilityTool> {
    if !calls_without_code(permit, user) {
        return Vec::new();
    }
    permit
        .effective_spec()
        .capabilities
        .iter()
        .filter_map(|c| capability_tool(permit, c))
        .collect()
}

/// Whether `permit` is approved (and not past its expiry) with calls without code that
/// `user` may make.
fn calls_without_code(permit: &Permit, user: &str) -> bool {
    let approved = permit.status.as_ref().is_some_and(|s| {
        s.phase == Some(oauth3_crds::PermitPhase::Approved)
            && s.approval
                .as_ref()
                .and_then(|a| a.expires_at.as_ref())
                .is_none_or(|t| t.0 > k8s_openapi::jiff::Timestamp::now())
    });
    approved
        && permit
            .spec
            .proxy
            .as_ref()
            .is_some_and(|p| p.enabled && p.callers.iter().any(|c| c == user))
}

/// Longest tool name many clients accept (`^[a-zA-Z0-9_-]{1,64}$`).
const MAX_TOOL_NAME: usize = 64;

/// The tool of one typed-endpoint capability of Permit `permit` (whose calls without code
/// the caller may make): named `<permit>__<capability>`, described from the Permit, its input
/// schema from `params`. `None` for the other forms (their calls are whole HTTP requests, not
/// arguments), and for names no client could call (over 64 characters, or a `$` in the
/// capability's name).
pub fn capability_tool(permit: &Permit, cap: &oauth3_crds::Capability) -> Option<CapabilityTool> {
    let oauth3_crds::CapabilityForm::TypedEndpoint {
        endpoint,
        method,
        params,
    } = cap.form()?
    else {
        return None;
    };
    let permit_name = permit.name_any();
    let name = format!("{}__{}", permit_name.replace('.', "-"), cap.name);
    if name.len() > MAX_TOOL_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (param, spec) in params {
        let mut p = Map::new();
        let (what, scalar) = match spec.location {
            oauth3_crds::ParamLocation::Path => ("path parameter", true),
            oauth3_crds::ParamLocation::Query => ("query parameter", true),
            oauth3_crds::ParamLocation::Header => ("header", true),
            oauth3_crds::ParamLocation::Body => ("key of the JSON body", false),
        };
        if scalar {
            p.insert("type".into(), json!(["string", "number", "boolean"]));
        }
        p.insert(
            "description".into(),
            json!(format!(
                "{what} {param}{}",
                if spec.pattern.is_some() {
                    " (must match pattern)"
                } else {
                    ""
                }
            )),
        );
        if let Some(re) = &spec.pattern {
            p.insert("pattern".into(), json!(format!("^(?:{re})$")));
        }
        if spec.location == oauth3_crds::ParamLocation::Path || spec.required {
            required.push(param.clone());
        }
        properties.insert(param.clone(), Value::Object(p));
    }
    let method = method.as_str();
    let mut description = format!(
        "{method} {endpoint}, with the owner's credential injected by oauth3 (you never see it), under Permit {permit_name}: {}",
        permit.spec.description
    );
    if let Some(doc) = &cap.doc_url {
        description.push_str(&format!(" Documentation: {doc}"));
    }
    if let Some(r) = &cap.rate_limit {
        description.push_str(&format!(
            " At most {} calls per {} s.",
            r.requests, r.per_seconds
        ));
    }
    let read_only = matches!(method, "GET" | "HEAD" | "OPTIONS");
    let listing = json!({
        "name": name,
        "title": format!("{} ({permit_name})", cap.name),
        "description": description,
        "inputSchema": {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        },
        "annotations": {
            "readOnlyHint": read_only,
            "destructiveHint": method == "DELETE",
            "idempotentHint": read_only || matches!(method, "PUT" | "DELETE"),
            "openWorldHint": true,
        },
    });
    Some(CapabilityTool {
        name,
        permit: permit_name,
        capability: cap.name.clone(),
        listing,
    })
}

/// Largest upstream answer a capability tool returns to the model (a longer one is cut and
/// says so).
pub const MAX_TOOL_ANSWER_BYTES: usize = 1 << 20;

/// The tool result of a capability call as the proxy answered it: the proxy's own refusal
/// (policy, identity, overload, stopped: `x-oauth3-refusal` and its JSON reason) is an error
/// naming the reason; an upstream answer is the model's content (`structuredContent` when it is
/// JSON), an error when its status is 400 or above.
pub fn capability_result(
    status: u16,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    truncated: bool,
) -> Value {
    if let Some(kind) = headers
        .get(oauth3_protocol::proxy::REFUSAL_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        let reason = serde_json::from_slice::<oauth3_protocol::proxy::Refusal>(body)
            .map(|r| r.reason)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
        return tool_error(format!("refused by oauth3 ({kind}): {reason}"));
    }
    let text = String::from_utf8_lossy(body).into_owned();
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"))
        .then(|| serde_json::from_slice::<Value>(body).ok())
        .flatten();
    let mut text = if truncated {
        format!("{text}\n[cut: the answer is longer than {MAX_TOOL_ANSWER_BYTES} bytes]")
    } else {
        text
    };
    if status >= 400 {
        text = format!("the API answered HTTP {status}: {text}");
    }
    let mut out = json!({
        "content": [{"type": "text", "text": text}],
        "isError": status >= 400,
        "_meta": {"status": status},
    });
    if let Some(Value::Object(o)) = json
        && !truncated
    {
        out["structuredContent"] = Value::Object(o);
    }
    out
}

/// The capability tool `name` of the session's namespace for the session's user: the Permit
/// its name starts with (`<permit>__`, one read through the proxy forwarding's cache), or
/// else any Permit of the namespace offering it (a Permit name with `.`, written `-`).
async fn find_capability_tool(
    gw: &Gateway,
    session: &McpSession,
    name: &str,
) -> Option<CapabilityTool> {
    let (permit, _) = name.split_once("__")?;
    let offered = |p: &Permit| {
        capability_tools(p, &session.user)
            .into_iter()
            .find(|t| t.name == name)
    };
    if let Ok(Some(p)) = gw
        .proxies()
        .cached_permit(gw, &session.namespace, permit)
        .await
        && let Some(tool) = offered(&p)
    {
        return Some(tool);
    }
    let list = gw
        .store()
        .permits(&session.namespace)
        .list(&kube::api::ListParams::default())
        .await
        .ok()?;
    list.items.iter().find_map(offered)
}

/// Calls a capability tool: `POST /<capability>` with the arguments as its JSON body to the
/// Permit's proxy, through the gateway's forwarding (which wakes an idle proxy), with the
/// caller's own `Authorization` header; the answer (at most [`MAX_TOOL_ANSWER_BYTES`]) as the
/// tool result.
async fn call_capability_tool(
    gw: &Gateway,
    session: &McpSession,
    headers: &HeaderMap,
    tool: CapabilityTool,
    args: &Value,
) -> Value {
    use futures::StreamExt as _;
    let mut forwarded = HeaderMap::new();
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        forwarded.insert(header::AUTHORIZATION, a.clone());
    }
    forwarded.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let name = tool.name.clone();
    let call = crate::proxy::Call {
        route: crate::proxy::Route {
            namespace: session.namespace.clone(),
            permit: tool.permit,
            capability: tool.capability,
            rest: String::new(),
        },
        method: axum::http::Method::POST,
        query: None,
        headers: forwarded,
        body: reqwest::Body::from(args.to_string()),
    };
    let response = crate::proxy::call_proxy(gw, call).await;
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                let room = MAX_TOOL_ANSWER_BYTES - bytes.len();
                if c.len() > room {
                    bytes.extend_from_slice(&c[..room]);
                    truncated = true;
                    break;
                }
                bytes.extend_from_slice(&c);
            }
            Err(e) => {
                return tool_error(format!("the answer of {name} was cut off: {e}"));
            }
        }
    }
    capability_result(status, &parts.headers, &bytes, truncated)
}

/// The tools of a session: oauth3's own, then those of the namespace's approved Permits.
async fn tools(gw: &Gateway, session: &McpSession) -> Vec<Value> {
    let mut out = own_tools();
    match gw
        .store()
        .permits(&session.namespace)
        .list(&kube::api::ListParams::default())
        .await
    {
        Ok(list) => out.extend(
            list.items
                .iter()
                .flat_map(|p| capability_tools(p, &session.user))
                .map(|t| t.listing),
        ),
        Err(e) => {
            tracing::warn!(error = %e, namespace = %session.namespace, "listing Permits for mcp tools")
        }
    }
    out
}

/// A JSON Schema of a CRD type, as JSON Schema 2020-12 with every subschema inline.
fn schema_of<T: schemars::JsonSchema>() -> Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().with(|s| {
        s.inline_subschemas = true;
    });
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut v = serde_json::to_value(schema).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("$schema");
        m.remove("title");
    }
    v
}

/// The properties `names` of a type's schema (descriptions included), and the ones of them it
/// requires.
fn properties_of(schema: &Value, names: &[&str]) -> (Map<String, Value>, Vec<String>) {
    let props = schema.get("properties").and_then(Value::as_object);
    let required: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .filter(|n| names.contains(n))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut out = Map::new();
    for n in names {
        if let Some(p) = props.and_then(|p| p.get(*n)) {
            out.insert((*n).to_owned(), p.clone());
        }
    }
    (out, required)
}

fn wait_property() -> Value {
    json!({
        "type": "boolean",
        "description": "Hold the answer until it is final (approved, denied, finished) or the gateway's long-poll bound passes; default true.",
        "default": true
    })
}

/// oauth3's own tools.
pub fn own_tools() -> Vec<Value> {
    let mut permit = schema_of::<PermitSpec>();
    if let Value::Object(m) = &mut permit {
        m.insert("type".into(), json!("object"));
    }
    let execution = schema_of::<ExecutionSpec>();
    let (mut exec_props, exec_required) = properties_of(
        &execution,
        &["permitRef", "code", "language", "args", "timeoutSeconds"],
    );
    exec_props.insert("wait".into(), wait_property());
    vec![
        json!({
            "name": "request_permit",
            "title": "Ask the owner for a Permit",
            "description": "Ask for a Permit: which HTTP APIs you may call, how, with which of the owner's secrets (capabilities), or what you want done (intent, drafted into capabilities for the owner). The owner approves or denies it at approval_url; you never see the secrets. Answers permit_id, request_id, approval_url and status.",
            "inputSchema": permit,
            "annotations": {"readOnlyHint": false, "destructiveHint": false, "idempotentHint": false, "openWorldHint": false},
        }),
        json!({
            "name": "permit_status",
            "title": "A Permit's status",
            "description": "The status of a Permit request: pending (waiting for the owner; approval_url is where the owner decides), completed (approved: run code with execute, or call its capability tools), denied (denied, revoked or expired, with the reason). Waits for the owner by default.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "permit_id": {"type": "string", "description": "The Permit's name (permit_id of request_permit)."},
                    "request_id": {"type": "string", "description": "The request id of request_permit (permit_...), instead of permit_id."},
                    "wait": wait_property(),
                },
            },
            "annotations": {"readOnlyHint": true, "openWorldHint": false},
        }),
        json!({
            "name": "execute",
            "title": "Run code under a Permit",
            "description": "Run JavaScript or TypeScript in a confidential sandbox that may call only the capabilities of an approved Permit (one async function per capability; the runner injects the owner's credentials, which the code never sees). Answers the result (the code's return value), stdout, stderr, the call log and the attestation evidence; waits for the end by default.",
            "inputSchema": {
                "type": "object",
                "properties": exec_props,
                "required": exec_required,
            },
            "annotations": {"readOnlyHint": false, "destructiveHint": true, "idempotentHint": false, "openWorldHint": true},
        }),
        json!({
            "name": "execution_status",
            "title": "An Execution's status and result",
            "description": "The status of an Execution (request_id of execute): approved, executing, pending (its code waits for the owner's review), completed or failed with the result, stdout, call log and attestation, or denied with the reason.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "request_id": {"type": "string", "description": "The request id execute answered (exec_...)."},
                    "wait": wait_property(),
                },
                "required": ["request_id"],
            },
            "annotations": {"readOnlyHint": true, "openWorldHint": false},
        }),
    ]
}

/// A tool's failure, as the result the model reads.
fn tool_error(message: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": message.into()}], "isError": true})
}

/// A tool's answer: the JSON as text and as structured content; an error when `is_error`.
fn tool_answer(answer: Value, is_error: bool) -> Value {
    json!({
        "content": [{"type": "text", "text": answer.to_string()}],
        "structuredContent": answer,
        "isError": is_error,
    })
}

/// An [`ApiError`] of a tool: its message for the model (bad input, refusals, not found).
fn api_error_result(e: &ApiError) -> Value {
    tool_error(e.to_string())
}

type CallResult = Result<Value, (i64, String)>;

async fn call_tool(
    gw: &Gateway,
    caller: &Caller,
    session: &McpSession,
    headers: &HeaderMap,
    params: &Value,
) -> CallResult {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err((INVALID_PARAMS, "tools/call: params.name is required".into()));
    };
    let args = match params.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err((
                INVALID_PARAMS,
                "tools/call: params.arguments must be an object".into(),
            ));
        }
    };
    let answer = match name {
        "request_permit" => request_permit(gw, caller, session, args).await,
        "permit_status" => permit_status_tool(gw, caller, session, &args).await,
        "execute" => execute(gw, caller, args).await,
        "execution_status" => execution_status_tool(gw, caller, &args).await,
        other => {
            return match find_capability_tool(gw, session, other).await {
                Some(tool) => Ok(call_capability_tool(gw, session, headers, tool, &args).await),
                None => Err((INVALID_PARAMS, format!("unknown tool: {other}"))),
            };
        }
    };
    Ok(match answer {
        Ok(v) => v,
        Err(ApiError::Internal(m)) => return Err((INTERNAL_ERROR, m)),
        Err(e) => api_error_result(&e),
    })
}

fn wait_of(args: &Value) -> ApiResult<bool> {
    match args.get("wait") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::bad("wait", "must be true or false")),
    }
}

use crate::error::ApiResult;

async fn request_permit(
    gw: &Gateway,
    caller: &Caller,
    session: &McpSession,
    args: Value,
) -> ApiResult<Value> {
    gw.identity().require(caller, Right::CreatePermits).await?;
    let spec: PermitSpec = capability::from_value_at(args)?;
    let asked = permit_request("permit_id", None, spec, std::collections::BTreeMap::new())?;
    let created = gw
        .store()
        .create(&caller.namespace, &asked.permit, "Permit")
        .await?;
    tracing::info!(namespace = %caller.namespace, permit = %created.name_any(), by = %caller.user, "permit requested over mcp");
    let mut out = permit_answer(&asked.id.as_label(), &created);
    out["capabilities"] = json!(
        created
            .spec
            .capabilities
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    );
    if created.spec.intent.is_empty() {
        out["spec_digest"] =
            json!(spec_digest(&created.spec).map_err(|e| ApiError::Internal(e.to_string()))?);
    }
    if let Some(u) = gw.approval_url(&caller.namespace, &asked.id, &asked.approval_ref) {
        gw.mcp_sessions()
            .remember_link(session, &created.name_any(), u.clone());
        out["approval_url"] = json!(u);
    }
    out["message"] = json!(
        "Requested: give the owner approval_url, then wait with permit_status (it holds until the owner decides)."
    );
    Ok(tool_answer(out, false))
}

async fn permit_status_tool(
    gw: &Gateway,
    caller: &Caller,
    session: &McpSession,
    args: &Value,
) -> ApiResult<Value> {
    gw.identity().require(caller, Right::ReadPermits).await?;
    let wait = wait_of(args)?;
    let permit = match (
        args.get("permit_id").and_then(Value::as_str),
        args.get("request_id").and_then(Value::as_str),
    ) {
        (Some(name), _) => {
            if !is_dns_label(name) {
                return Err(ApiError::bad(
                    "permit_id",
                    "must be a Permit name (a DNS label)",
                ));
            }
            gw.store().permit(&caller.namespace, name).await?
        }
        (None, Some(id)) => {
            let id = RequestId::parse(id, "request_id")?;
            if id.kind != IdKind::Permit {
                return Err(ApiError::bad(
                    "request_id",
                    "an Execution's id: use execution_status",
                ));
            }
            match gw.store().find(&caller.namespace, &id).await? {
                Found::Permit(p) => *p,
                Found::Execution(_) => {
                    return Err(ApiError::bad("request_id", "not a Permit request"));
                }
            }
        }
        (None, None) => {
            return Err(ApiError::bad(
                "permit_id",
                "required: the Permit's name (or request_id)",
            ));
        }
    };
    let bound = if wait { gw.long_poll() } else { Duration::ZERO };
    let permit = gw
        .store()
        .wait_until_final(
            &gw.store().permits(&caller.namespace),
            permit,
            bound,
            permit_status,
        )
        .await?;
    let request_id = permit
        .labels()
        .get(oauth3_crds::constants::LABEL_REQUEST_ID)
        .cloned()
        .unwrap_or_default();
    let mut out = permit_answer(&request_id, &permit);
    let status = permit_status(&permit);
    out["phase"] = json!(permit.status.as_ref().and_then(|s| s.phase));
    if status == "pending" {
        out["message"] =
            json!("Waiting for the owner's decision; call permit_status again to keep waiting.");
        if let Some(u) = gw.mcp_sessions().link(session, &permit.name_any()) {
            out["approval_url"] = json!(u);
        }
    }
    Ok(tool_answer(out, status == "denied"))
}

async fn execute(gw: &Gateway, caller: &Caller, args: Value) -> ApiResult<Value> {
    gw.identity()
        .require(caller, Right::CreateExecutions)
        .await?;
    let wait = wait_of(&args)?;
    let mut fields = match args {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    fields.remove("wait");
    fields
        .entry("timeoutSeconds")
        .or_insert_with(|| json!(gw.execution_timeout()));
    let spec: ExecutionSpec = capability::from_value_at(Value::Object(fields))?;
    if spec.code.trim().is_empty() {
        return Err(ApiError::bad("code", "required: the code to run"));
    }
    if spec.code.chars().count() > oauth3_crds::constants::MAX_CODE_LEN {
        return Err(ApiError::bad(
            "code",
            format!(
                "at most {} characters",
                oauth3_crds::constants::MAX_CODE_LEN
            ),
        ));
    }
    if !is_dns_label(&spec.permit_ref) {
        return Err(ApiError::bad(
            "permitRef",
            "must be a Permit name (a DNS label)",
        ));
    }
    let permit = gw
        .store()
        .permit(&caller.namespace, &spec.permit_ref)
        .await?;
    let args = match spec.args {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v),
        Some(_) => return Err(ApiError::bad("args", "must be a JSON object")),
    };
    let positional: std::collections::BTreeMap<String, Vec<String>> = permit
        .annotations()
        .get(oauth3_crds::constants::ANNOTATION_POSITIONAL_PARAMS)
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    let code = format!(
        "{}{}",
        capability::positional_prelude(&permit.effective_spec(), &positional),
        spec.code
    );
    let submitted = submit(
        gw,
        caller,
        &permit,
        Submission {
            code,
            language: spec.language,
            timeout: spec.timeout_seconds,
            args,
            action_id: "mcp".into(),
            source_digest: None,
            field: "code",
        },
    )
    .await?;
    let answer = match submitted {
        Ok(a) => a,
        Err(denied) => return Ok(tool_answer(denied, true)),
    };
    let id = answer
        .get("request_id")
        .and_then(Value::as_str)
        .map(|s| RequestId::parse(s, "request_id"))
        .transpose()?
        .ok_or_else(|| ApiError::Internal("the submitted Execution has no request id".into()))?;
    execution_answer_tool(gw, caller, &id, wait).await
}

async fn execution_status_tool(gw: &Gateway, caller: &Caller, args: &Value) -> ApiResult<Value> {
    gw.identity().require(caller, Right::ReadExecutions).await?;
    let wait = wait_of(args)?;
    let Some(id) = args.get("request_id").and_then(Value::as_str) else {
        return Err(ApiError::bad(
            "request_id",
            "required: the request id execute answered",
        ));
    };
    let id = RequestId::parse(id, "request_id")?;
    if id.kind != IdKind::Execution {
        return Err(ApiError::bad(
            "request_id",
            "a Permit request's id: use permit_status",
        ));
    }
    execution_answer_tool(gw, caller, &id, wait).await
}

/// An Execution's answer with its call log and attestation, held until final with `wait`.
async fn execution_answer_tool(
    gw: &Gateway,
    caller: &Caller,
    id: &RequestId,
    wait: bool,
) -> ApiResult<Value> {
    let exec = match gw.store().find(&caller.namespace, id).await? {
        Found::Execution(e) => *e,
        Found::Permit(_) => return Err(ApiError::bad("request_id", "not an Execution")),
    };
    let bound = if wait { gw.long_poll() } else { Duration::ZERO };
    let exec: Execution = gw
        .store()
        .wait_until_final(
            &gw.store().executions(&caller.namespace),
            exec,
            bound,
            execution_status,
        )
        .await?;
    let mut out = execution_answer(&id.as_label(), &exec);
    let status = execution_status(&exec);
    if let Some(s) = &exec.status {
        out["calls"] = json!(s.calls);
        if let Some(a) = &s.attestation {
            out["attestation"] = json!(a);
        }
    }
    if !crate::answer::is_terminal(status) {
        out["message"] =
            json!("Not finished yet; call execution_status with this request_id to keep waiting.");
    }
    Ok(tool_answer(out, matches!(status, "failed" | "denied")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_tool_schemas_come_from_the_crd_types() {
        let tools = own_tools();
        let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                "request_permit",
                "permit_status",
                "execute",
                "execution_status"
            ]
        );
        let permit = &tools[0]["inputSchema"];
        assert_eq!(permit["type"], "object");
        // The Permit's fields, with the CRD's own descriptions and rules.
        for field in [
            "description",
            "capabilities",
            "secrets",
            "validFor",
            "intent",
        ] {
            assert!(permit["properties"][field].is_object(), "{field}: {permit}");
        }
        let cap = &permit["properties"]["capabilities"]["items"];
        assert!(
            cap["properties"]["baseUrl"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("origin")),
            "{cap}"
        );
        assert!(!permit.to_string().contains("$ref"), "inline: {permit}");
        let exec = &tools[2]["inputSchema"];
        assert_eq!(exec["required"], json!(["permitRef", "code"]), "{exec}");
        assert!(
            exec["properties"]["code"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("async function")),
            "{exec}"
        );
        for t in &tools {
            assert!(
                t["name"]
                    .as_str()
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')),
                "{t}"
            );
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        }
    }

    fn caller(user: &str, ns: &str) -> Caller {
        Caller {
            user: user.into(),
            uid: None,
            groups: Vec::new(),
            extra: Default::default(),
            namespace: ns.into(),
        }
    }

    #[test]
    fn a_session_id_works_only_with_the_identity_that_opened_it() {
        let alice = caller("system:serviceaccount:a:agent", "a");
        let sessions = Sessions::default();
        let s = McpSession::new(&alice, "2025-06-18");
        let id = s.id();
        assert_eq!(sessions.find(&id, &alice), Some(s.clone()));
        assert_eq!(
            sessions.find(&id, &alice).map(|s| s.version),
            Some("2025-06-18".into())
        );
        // Another identity, or the same one acting in another namespace: not found.
        assert_eq!(
            sessions.find(&id, &caller("system:serviceaccount:b:agent", "b")),
            None
        );
        assert_eq!(
            sessions.find(&id, &caller("system:serviceaccount:a:agent", "b")),
            None
        );
        // Forged or damaged ids.
        let (key, _) = id.split_once('.').expect("two parts");
        for bad in [
            String::new(),
            key.to_owned(),
            format!("{key}.not-base64!"),
            format!("short.{}", id.split_once('.').expect("parts").1),
            McpSession {
                version: "1999-01-01".into(),
                ..s.clone()
            }
            .id(),
        ] {
            assert_eq!(sessions.find(&bad, &alice), None, "{bad}");
        }
        // Ended here: gone here.
        sessions.end(&s);
        assert_eq!(sessions.find(&id, &alice), None);
        let other = McpSession::new(&alice, LATEST_VERSION);
        assert_ne!(other.key, s.key);
        assert!(sessions.find(&other.id(), &alice).is_some());
    }

    #[test]
    fn a_typed_endpoint_becomes_a_tool_with_its_params_as_the_schema() {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "File issues on o/r",
            "secrets": ["GH"],
            "capabilities": [
                {"name": "createIssue", "endpoint": "https://api.github.com/repos/{owner}/{repo}/issues",
                 "method": "POST", "docUrl": "https://docs.github.com/rest/issues",
                 "rateLimit": {"requests": 5, "perSeconds": 60},
                 "params": {"owner": {"in": "path"}, "repo": {"in": "path", "pattern": "[a-z]+"},
                            "title": {"in": "body", "required": true}, "labels": {"in": "body"},
                            "dry": {"in": "query"}}},
                {"name": "items", "baseUrl": "https://api.example.com", "paths": ["/**"], "methods": ["GET"]},
                {"name": "get$", "endpoint": "https://api.example.com/x", "method": "GET"}
            ]
        }))
        .expect("spec");
        let permit = Permit::new("gh-issues", spec);
        let tools: Vec<CapabilityTool> = permit
            .spec
            .capabilities
            .iter()
            .filter_map(|c| capability_tool(&permit, c))
            .collect();
        assert_eq!(
            tools.len(),
            1,
            "only the typed endpoint with a callable name: {tools:?}"
        );
        let t = &tools[0];
        assert_eq!(t.name, "gh-issues__createIssue");
        assert_eq!(
            (t.permit.as_str(), t.capability.as_str()),
            ("gh-issues", "createIssue")
        );
        let l = &t.listing;
        let d = l["description"].as_str().expect("description");
        assert!(
            d.contains("POST https://api.github.com/repos/{owner}/{repo}/issues"),
            "{d}"
        );
        assert!(
            d.contains("File issues on o/r")
                && d.contains("docs.github.com")
                && d.contains("5 calls per 60 s"),
            "{d}"
        );
        let schema = &l["inputSchema"];
        assert_eq!(
            schema["required"],
            json!(["owner", "repo", "title"]),
            "{schema}"
        );
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["repo"]["pattern"], "^(?:[a-z]+)$");
        assert!(
            schema["properties"]["labels"].get("type").is_none(),
            "body values are any JSON"
        );
        assert_eq!(
            schema["properties"]["dry"]["type"],
            json!(["string", "number", "boolean"])
        );
        assert_eq!(l["annotations"]["readOnlyHint"], false);
        // A name past 64 characters is left out rather than cut.
        let long = Permit::new(&"p".repeat(60), permit.spec.clone());
        assert!(capability_tool(&long, &long.spec.capabilities[0]).is_none());
    }

    #[test]
    fn capability_tools_are_offered_only_to_named_callers_of_an_approved_proxied_permit() {
        let agent = "system:serviceaccount:a:agent";
        let permit_with = |proxy: Value, status: Value| -> Permit {
            let mut p: Permit = serde_json::from_value(json!({
                "apiVersion": "oauth3.dev/v1alpha1", "kind": "Permit",
                "metadata": {"name": "gh"},
                "spec": {"description": "d", "proxy": proxy, "capabilities": [
                    {"name": "get", "endpoint": "https://api.example.com/x", "method": "GET"}]},
            }))
            .expect("permit");
            p.status = serde_json::from_value(status).expect("status");
            p
        };
        let approved = |until: &str| {
            json!({"phase": "Approved", "approval": {
            "decision": "Approved", "by": "owner", "at": "2026-01-01T00:00:00Z", "via": "kubectl",
            "specDigest": "sha256:0", "expiresAt": until}})
        };
        let on = json!({"enabled": true, "callers": [agent]});
        let offered = |p: &Permit, user: &str| capability_tools(p, user).len();
        assert_eq!(
            offered(
                &permit_with(on.clone(), approved("2999-01-01T00:00:00Z")),
                agent
            ),
            1
        );
        for (why, p, user) in [
            (
                "another identity",
                permit_with(on.clone(), approved("2999-01-01T00:00:00Z")),
                "system:serviceaccount:b:agent",
            ),
            (
                "expired",
                permit_with(on.clone(), approved("2020-01-01T00:00:00Z")),
                agent,
            ),
            (
                "pending",
                permit_with(on.clone(), json!({"phase": "Pending"})),
                agent,
            ),
            (
                "revoked",
                permit_with(on.clone(), json!({"phase": "Revoked"})),
                agent,
            ),
            (
                "proxy off",
                permit_with(
                    json!({"enabled": false, "callers": [agent]}),
                    approved("2999-01-01T00:00:00Z"),
                ),
                agent,
            ),
        ] {
            assert_eq!(offered(&p, user), 0, "{why}");
        }
    }

    #[test]
    fn a_proxy_refusal_is_an_error_with_its_reason_and_an_upstream_answer_is_content() {
        use oauth3_protocol::proxy::{REFUSAL_HEADER, Refusal, RefusalKind};
        let mut refused = axum::http::HeaderMap::new();
        refused.insert(REFUSAL_HEADER, HeaderValue::from_static("policy"));
        let body = serde_json::to_vec(&Refusal {
            error: RefusalKind::Policy,
            reason: "method DELETE is not allowed".into(),
            capability: Some("getItem".into()),
        })
        .expect("json");
        let r = capability_result(403, &refused, &body, false);
        assert_eq!(r["isError"], true);
        assert_eq!(
            r["content"][0]["text"],
            "refused by oauth3 (policy): method DELETE is not allowed"
        );
        let mut json_answer = axum::http::HeaderMap::new();
        json_answer.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let r = capability_result(200, &json_answer, br#"{"id":7}"#, false);
        assert_eq!(r["isError"], false);
        assert_eq!(r["structuredContent"], json!({"id": 7}));
        // An upstream's own 403 is the API's answer, not oauth3's refusal.
        let r = capability_result(403, &json_answer, br#"{"message":"no"}"#, false);
        assert_eq!(r["isError"], true);
        assert!(
            r["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("the API answered HTTP 403"))
        );
        let r = capability_result(200, &axum::http::HeaderMap::new(), b"xxxx", true);
        assert!(
            r["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("[cut:"))
        );
        assert!(r.get("structuredContent").is_none());
    }

    #[test]
    fn tool_failures_are_results_the_model_reads() {
        let e = ApiError::bad("capabilities[0].baseUrl", "must use https");
        let r = api_error_result(&e);
        assert_eq!(r["isError"], true);
        assert!(
            r["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("capabilities[0].baseUrl") && t.contains("https")),
            "{r}"
        );
        let ok = tool_answer(json!({"status": "completed"}), false);
        assert_eq!(ok["isError"], false);
        assert_eq!(ok["structuredContent"]["status"], "completed");
    }
}
