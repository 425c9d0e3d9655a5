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
use crate::identity::{Caller, Right};
use crate::routes::{Body, body_bytes};

/// Seals `value` as secret `name` to `key` and stores only the sealed Secret in the owner's
/// namespace; returns the Secret's object name. No error quotes the value.
async fn seal_and_store(
    gw: &Gateway,
    owner: &Caller,
    key: &[u8; 32],
    name: &str,
    value: &str,
) -> ApiResult<String> {
    let sealed = oauth3_operator::plugin::sealed_secret(&owner.namespace, name, value, key)
        .map_err(|_| ApiError::Internal(format!("sealing {name} failed")))?;
    let object_name = secret_object_name(name);
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
    Ok(object_name)
}

fn enclave_key(gw: &Gateway) -> ApiResult<[u8; 32]> {
    gw.enclave_key().copied().ok_or_else(|| {
        ApiError::Unavailable(
            "no enclave public key configured (--enclave-public-key); seal with kubectl oauth3 seal"
                .into(),
        )
    })
}

/// The owner's request as a plain JSON object (so no parse error can quote a value) with no
/// field outside `fields`, and the enclave key to seal to.
async fn owner_request(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Body,
    fields: &[&str],
) -> ApiResult<(Caller, [u8; 32], serde_json::Map<String, Value>)> {
    let owner = gw.caller_with(headers, Right::CreateSecrets).await?;
    let key = enclave_key(gw)?;
    let body = body_bytes(gw, body)?;
    let expected = fields.join(", ");
    let object: serde_json::Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad(
            "request body",
            format!("must be a JSON object with {expected}"),
        )
    })?;
    if let Some(k) = object.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(ApiError::bad(
            k.clone(),
            format!("unknown field; expected {expected}"),
        ));
    }
    Ok((owner, key, object))
}

/// The secret name of an upload for `domain`: `COOKIES_` + the domain without a leading
/// `www.`, upper case, `.` and `-` as `_` (`www.example-site.com` ->
/// `COOKIES_EXAMPLE_SITE_COM`).
#[must_use]
pub fn cookie_secret_name(domain: &str) -> String {
    let d = domain.strip_prefix("www.").unwrap_or(domain);
    format!(
        "COOKIES_{}",
        d.to_ascii_uppercase().replace(['.', '-'], "_")
    )
}

/// `POST /cookies/upload {domain, cookies: [...], user_agent?}` (owner only): the cookies (as
/// a browser's cookie exporter gives them) become a cookie jar, sealed on arrival as the secret
/// `COOKIES_<DOMAIN>`, which a capability names in `cookies` (permit dialect:
/// `cookie_secret`). Every cookie must belong to `domain` (the domain itself, a subdomain, or
/// a parent domain of it); the runner later sends each only where RFC 6265 sends it.
///
/// # Errors
/// 400 naming the field (never quoting a value), 401/403, 503 without an enclave key.
pub async fn upload_cookies(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let (owner, key, object) =
        owner_request(&gw, &headers, body, &["domain", "cookies", "user_agent"]).await?;
    let domain = object
        .get("domain")
        .and_then(Value::as_str)
        .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
        .filter(|d| {
            d.contains('.')
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                })
        })
        .ok_or_else(|| ApiError::bad("domain", "required: a host name such as example.com"))?;
    let cookies = object
        .get("cookies")
        .filter(|c| c.is_array())
        .ok_or_else(|| ApiError::bad("cookies", "required: a list of cookies"))?;
    let jar = oauth3_protocol::cookies::CookieJar::parse(&cookies.to_string()).map_err(|e| {
        let (field, why) = e.split_once(": ").unwrap_or(("cookies", e.as_str()));
        ApiError::bad(field.to_owned(), why.to_owned())
    })?;
    let bare = domain.strip_prefix("www.").unwrap_or(&domain).to_owned();
    if let Some((i, c)) = jar.cookies.iter().enumerate().find(|(_, c)| {
        let d = c.domain.as_str();
        !(d == bare || d.ends_with(&format!(".{bare}")) || bare.ends_with(&format!(".{d}")))
    }) {
        return Err(ApiError::bad(
            format!("cookies[{i}].domain"),
            format!(
                "{} is not {bare}, a subdomain or a parent of it: upload each site's cookies on their own",
                c.domain
            ),
        ));
    }
    let name = cookie_secret_name(&bare);
    if !is_secret_name(&name) {
        return Err(ApiError::bad(
            "domain",
            format!("makes the secret name {name}, which does not match {SECRET_NAME_PATTERN}"),
        ));
    }
    let count = jar.cookies.len();
    let object_name = seal_and_store(&gw, &owner, &key, &name, &jar.to_json()).await?;
    drop(object);
    tracing::info!(namespace = %owner.namespace, secret = %name, cookies = count, by = %owner.user, "cookie jar sealed and stored");
    Ok(Json(json!({
        "success": true, "secret_name": name, "name": name, "secret": object_name,
        "sealed": true, "cookies": count,
    })))
}

/// `POST /secrets`.
///
/// # Errors
/// 400 naming the field (never quoting the value), 401/403, 503 without an enclave key.
pub async fn store(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let (owner, key, object) = owner_request(&gw, &headers, body, &["name", "value"]).await?;
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
    let object_name = seal_and_store(&gw, &owner, &key, &name, value).await?;
    drop(object);
    tracing::info!(namespace = %owner.namespace, secret = %name, by = %owner.user, "sealed secret stored");
    Ok(Json(
        json!({"success": true, "name": name, "secret": object_name, "sealed": true}),
    ))
}
