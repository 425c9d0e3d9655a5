//! The SDK's read-only calls: `GET /sessions` (the caller's Permit requests), `GET /me` (who
//! the caller is and what it may do) and `GET /history?limit=N` (its latest Executions). All
//! read the caller's namespace only; the SDK reads no field of them, so they answer 2xx JSON
//! in the shapes the seed services used.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::ListParams;
use oauth3_crds::constants::{ANNOTATION_ACTION_ID, LABEL_REQUEST_ID};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::answer::{execution_answer, permit_status};
use crate::error::{ApiError, ApiResult};
use crate::identity::Right;

fn minutes_since(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> i64 {
    t.map(|t| (Timestamp::now().as_second() - t.0.as_second()) / 60)
        .unwrap_or(0)
}

/// `GET /sessions`: the Permits the gateway made in the caller's namespace.
///
/// # Errors
/// 401/403, or the API failure.
pub async fn sessions(State(gw): State<Gateway>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let caller = gw.caller_with(&headers, Right::ReadPermits).await?;
    let list = gw
        .store()
        .permits(&caller.namespace)
        .list(&ListParams::default().labels(LABEL_REQUEST_ID))
        .await
        .map_err(ApiError::kube("listing Permits"))?;
    let sessions: Vec<Value> = list
        .items
        .iter()
        .map(|p| {
            let created = p.metadata.creation_timestamp.as_ref();
            json!({
                "session_id": p.name_any(),
                "permit_id": p.name_any(),
                "request_id": p.labels().get(LABEL_REQUEST_ID),
                "status": permit_status(p),
                "created_at": created.map(|t| t.0.as_millisecond()),
                "age_minutes": minutes_since(created),
                "policy": {
                    "description": p.spec.description,
                    "secrets": p.spec.secrets,
                    "capabilities": p.spec.capabilities.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                },
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": sessions })))
}

/// `GET /me`: the caller's identity, namespace and roles.
///
/// # Errors
/// 401, or the API failure.
pub async fn me(State(gw): State<Gateway>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let caller = gw.caller(&headers).await?;
    let agent = gw.identity().allowed(&caller, Right::CreatePermits).await?;
    let owner = gw.identity().allowed(&caller, Right::DecidePermits).await?;
    let role = match (agent, owner) {
        (_, true) => "owner",
        (true, false) => "agent",
        (false, false) => "none",
    };
    Ok(Json(json!({
        "tenant_id": caller.namespace,
        "user": caller.user,
        "role": role,
        "can_request": agent,
        "can_approve": owner,
    })))
}

/// Query of `GET /history`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// At most this many (1..500, default 20).
    #[serde(default)]
    pub limit: Option<String>,
}

/// `GET /history?limit=N`: the caller's latest Executions made through the gateway.
///
/// # Errors
/// 400 for a bad limit, 401/403, or the API failure.
pub async fn history(
    State(gw): State<Gateway>,
    Query(q): Query<HistoryQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad("limit", "must be a number from 1 to 500"))?,
    };
    let caller = gw.caller_with(&headers, Right::ReadExecutions).await?;
    let mut list = gw
        .store()
        .executions(&caller.namespace)
        .list(&ListParams::default().labels(LABEL_REQUEST_ID))
        .await
        .map_err(ApiError::kube("listing Executions"))?
        .items;
    list.sort_by_key(|e| std::cmp::Reverse(e.creation_timestamp()));
    let executions: Vec<Value> = list
        .iter()
        .take(limit)
        .map(|e| {
            let id = e
                .labels()
                .get(LABEL_REQUEST_ID)
                .cloned()
                .unwrap_or_default();
            let mut a = execution_answer(&id, e);
            a["action_id"] = json!(e.annotations().get(ANNOTATION_ACTION_ID));
            a
        })
        .collect();
    Ok(Json(json!({"executions": executions, "limit": limit})))
}
