//! `POST /secrets {name, value}` (owner only): the value is sealed to the enclave key on
//! arrival and only the sealed Secret (type `oauth3.dev/sealed`) is stored, exactly as
//! `kubectl oauth3 seal --apply` makes it. The value is never logged, stored in the clear or
//! echoed, and no error message quotes it. The gateway does see the plaintext for the length
//! of the request: owners who do not run it inside the TEE should seal with `kubectl oauth3
//! seal` instead.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use oauth3_crds::constants::{GATEWAY_FIELD_MANAGER, SECRET_NAME_PATTERN, secret_object_name};
use serde_json::{Value, json};

use crate::Gateway;
use crate::capability::is_secret_name;
use crate::error::{ApiError, ApiResult};
use crate::identity::Right;
use crate::routes::{Body, body_bytes};

/// `POST /secrets`.
///
/// # Errors
/// 400 naming the field (never quoting the value), 401/403, 503 without an enclave key.
pub async fn store(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let owner = gw.caller_with(&headers, Right::CreateSecrets).await?;
    let key = *gw.enclave_key().ok_or_else(|| {
        ApiError::Unavailable(
            "no enclave public key configured (--enclave-public-key); seal with kubectl oauth3 seal"
                .into(),
        )
    })?;
    let body = body_bytes(&gw, body)?;
    // Read as a plain object so no parse error can quote the value.
    let object: serde_json::Map<String, Value> = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad("request body", "must be a JSON object {name, value}"))?;
    if let Some(k) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "name" | "value"))
    {
        return Err(ApiError::bad(
            k.clone(),
            "unknown field; expected name and value",
        ));
    }
    let name = match object.get("name") {
        Some(Value::String(n)) if is_secret_name(n) => n.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::bad(
                "name",
                format!("must match {SECRET_NAME_PATTERN} (e.g. GITHUB_TOKEN)"),
            ));
        }
        _ => return Err(ApiError::bad("name", "required: a string")),
    };
    let value = match object.get("value") {
        Some(Value::String(v)) if !v.is_empty() => v.as_str(),
        _ => return Err(ApiError::bad("value", "required: a non-empty string")),
    };
    let sealed = oauth3_operator::plugin::sealed_secret(&owner.namespace, &name, value, &key)
        .map_err(|_| ApiError::Internal(format!("sealing {name} failed")))?;
    drop(object);
    let object_name = secret_object_name(&name);
    Api::<Secret>::namespaced(gw.store().client().clone(), &owner.namespace)
        .patch(
            &object_name,
            &PatchParams::apply(GATEWAY_FIELD_MANAGER).force(),
            &Patch::Apply(&sealed),
        )
        .await
        .map_err(ApiError::kube(format!(
            "storing the sealed Secret {object_name}"
        )))?;
    tracing::info!(namespace = %owner.namespace, secret = %name, by = %owner.user, "sealed secret stored");
    Ok(Json(
        json!({"success": true, "name": name, "secret": object_name, "sealed": true}),
    ))
}
