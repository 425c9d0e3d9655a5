//! `POST /signup {name?, role?}` (off unless `--signup-namespace-prefix` is set): a new agent
//! tenant. It creates a namespace `<prefix><8 hex>`, a ServiceAccount `agent` in it, a
//! RoleBinding of that account to the `oauth3-agent` ClusterRole, and returns a bound token
//! for it (TokenRequest, `--signup-token-lifetime`) under every field name clients read:
//! `token`, `jwt`, `api_key`, plus `tenant_id` (the namespace) and `tee_url` (the gateway's
//! public URL, when configured). Signup can never create an owner: asking for any role but
//! `agent` is refused, and no owner binding is ever made.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, PostParams};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::error::{ApiError, ApiResult};
use crate::routes::{Body, body_bytes};

/// Signup settings.
#[derive(Debug, Clone)]
pub struct SignupConfig {
    /// Namespace name prefix.
    pub prefix: String,
    /// Token lifetime.
    pub token_lifetime: Duration,
}

/// The ServiceAccount every signed-up tenant gets.
pub const AGENT_ACCOUNT: &str = "agent";
/// The ClusterRole it is bound to.
pub const AGENT_ROLE: &str = "oauth3-agent";

/// The body of `POST /signup` (every field optional; clients send `{"name": "agent"}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// A label for the tenant (kept as an annotation).
    #[serde(default)]
    pub name: Option<String>,
    /// Only `agent` (or absent).
    #[serde(default)]
    pub role: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub email: Option<String>,
}

/// `POST /signup`.
///
/// # Errors
/// 403 when signup is off or an owner is asked for, 400 for a bad body, or the API failure.
pub async fn signup(State(gw): State<Gateway>, body: Body) -> ApiResult<Json<Value>> {
    let Some(config) = gw.signup().cloned() else {
        return Err(ApiError::Forbidden(
            "self-service signup is off on this gateway: ask your admin for a token".into(),
        ));
    };
    let body = body_bytes(&gw, body)?;
    let req: SignupRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SignupRequest::default()
    } else {
        crate::capability::parse_json(&body)?
    };
    match req.role.as_deref() {
        None | Some("agent") => {}
        Some("owner") => {
            return Err(ApiError::Forbidden(
                "role: signup can never create an owner; owners are bound by a cluster admin"
                    .into(),
            ));
        }
        Some(other) => {
            return Err(ApiError::bad(
                "role",
                format!("{other:?}: signup makes agents only (role agent or absent)"),
            ));
        }
    }
    let name = req.name.unwrap_or_else(|| "agent".into());
    if name.chars().count() > 253 || name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "name",
            "at most 253 characters, no control characters",
        ));
    }
    let mut suffix = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut suffix);
    let ns = format!("{}{}", config.prefix, hex::encode(suffix));
    let client = gw.store().client().clone();
    let pp = PostParams {
        field_manager: Some(oauth3_crds::constants::GATEWAY_FIELD_MANAGER.into()),
        ..Default::default()
    };
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns,
            "labels": {"oauth3.dev/tenant": "true", "app.kubernetes.io/managed-by": "oauth3-gateway"},
            "annotations": {"oauth3.dev/tenant-name": name}}
    }))
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Api::<Namespace>::all(client.clone())
        .create(&pp, &namespace)
        .await
        .map_err(ApiError::kube(format!(
            "creating the tenant namespace {ns}"
        )))?;
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT_ACCOUNT}
    }))
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    accounts
        .create(&pp, &sa)
        .await
        .map_err(ApiError::kube(format!(
            "creating the ServiceAccount in {ns}"
        )))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": AGENT_ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": AGENT_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": AGENT_ACCOUNT, "namespace": ns}]
    }))
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .create(&pp, &binding)
        .await
        .map_err(ApiError::kube(format!("binding {AGENT_ROLE} in {ns}")))?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: i64::try_from(config.token_lifetime.as_secs()).ok(),
            bound_object_ref: None,
        }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(AGENT_ACCOUNT, &PostParams::default(), &request)
        .await
        .map_err(ApiError::kube(format!("minting the token in {ns}")))?
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| ApiError::Internal("the API server returned no token".into()))?;
    tracing::info!(namespace = %ns, "tenant signed up");
    let mut out = json!({
        "tenant_id": ns,
        "role": "agent",
        "token": token,
        "jwt": token,
        "api_key": token,
        "expires_in": config.token_lifetime.as_secs(),
        "message": "Send the token as Authorization: Bearer <token>.",
    });
    if let Some(url) = gw.public_url() {
        out["tee_url"] = json!(url);
    }
    Ok(Json(out))
}
