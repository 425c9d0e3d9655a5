//! What a running proxy asks the operator, on the callback server (every replica serves it):
//!
//! - `POST {REVIEW_PATH}/<namespace>/<permit>`: who a client token is and whether it may call.
//!   TokenReview, then a SubjectAccessReview of `create` on `permits/proxy` for this Permit
//!   (group `oauth3.dev`), answered only while the Permit's approval holds.
//! - `POST {CALLS_PATH}/<namespace>/<permit>`: a batch of call records. They are appended to
//!   the Permit's audit log (a ConfigMap owned by the Permit, the latest
//!   [`MAX_PROXY_AUDIT_LINES`] lines, read by `kubectl oauth3 logs permit/NAME`) and counted in
//!   its usage and rate budget through the usage ledger, as an Execution's calls are. The
//!   answer is the Permit's rate budget now, so the proxy and the Executions share one limit.
//!
//! Both take the proxy's callback token as bearer, checked against `status.proxy.tokenDigest`
//! before anything else is read or told; the client token in a review is never logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use oauth3_crds::constants::{
    GROUP, MANAGED_BY, MAX_PROXY_AUDIT_LINES, PROXY_AUDIT_KEY, proxy_audit_object_name,
};
use oauth3_crds::{CallDecision, Permit};
use oauth3_protocol::callback::token_matches;
use oauth3_protocol::proxy::{
    CallBatch, CallBatchAnswer, MAX_REVIEW_TTL_SECONDS, PROXY_SUBRESOURCE, PROXY_VERB, ProxyCall,
    RefusalKind, ReviewAnswer, ReviewRequest,
};

use super::{Want, wanted};
use crate::execution::result::{
    CallbackError, CallbackState, bearer, could_exist, read_body_limited,
};
use crate::usage::UsageDelta;

/// Largest review body (a token is a few KiB).
const MAX_REVIEW_BYTES: usize = 64 * 1024;
/// Largest call batch (the proxy keeps at most 10,000 records between two reports).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes of audit log kept in the ConfigMap (its limit is 1 MiB).
pub const MAX_AUDIT_BYTES: usize = 900 * 1024;
/// Guarded writes tried per batch before the proxy is told to send it again.
const AUDIT_ATTEMPTS: usize = 5;

/// The Permit a proxy speaks for, once its callback token matched.
async fn proxy_permit(
    state: &CallbackState,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
) -> Result<Permit, CallbackError> {
    let key = format!("{namespace}/{name}");
    if !could_exist(namespace, name) {
        return Err(CallbackError::NotFound(key));
    }
    let token = bearer(headers).ok_or(CallbackError::Unauthenticated)?;
    let api: Api<Permit> = Api::namespaced(state.ctx.client.clone(), namespace);
    let permit = api
        .get_opt(name)
        .await?
        .ok_or_else(|| CallbackError::NotFound(key.clone()))?;
    let digest = permit
        .status
        .as_ref()
        .and_then(|s| s.proxy.as_ref())
        .and_then(|p| p.token_digest.as_deref())
        .unwrap_or_default();
    if digest.is_empty() || !token_matches(token, digest) {
        tracing::warn!(permit = %key, "proxy channel refused: token does not match");
        return Err(CallbackError::BadToken);
    }
    Ok(permit)
}

fn refused(kind: RefusalKind, reason: String, ttl_seconds: u64) -> Json<ReviewAnswer> {
    Json(ReviewAnswer {
        allowed: false,
        identity: None,
        refusal: Some(kind),
        reason: Some(reason),
        ttl_seconds,
    })
}

/// `POST {REVIEW_PATH}/<namespace>/<permit>`.
pub async fn review(
    State(state): State<Arc<CallbackState>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ReviewAnswer>, CallbackError> {
    let permit = proxy_permit(&state, &namespace, &name, &headers).await?;
    let body = read_body_limited(&state, body, MAX_REVIEW_BYTES).await?;
    let request: ReviewRequest = serde_json::from_slice(&body)
        .map_err(|e| CallbackError::BadResult(format!("not a review request: {e}")))?;
    if let Want::Stop { message, .. } = wanted(&permit, state.ctx.now()) {
        return Ok(refused(
            RefusalKind::Forbidden,
            format!("Permit {namespace}/{name} takes no calls: {message}"),
            0,
        ));
    }
    let client = state.ctx.client.clone();
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: request.token.clone(),
            audiences: None,
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    let status = answer.status.unwrap_or_default();
    let user = status
        .user
        .filter(|_| status.authenticated == Some(true))
        .filter(|u| u.username.as_deref().is_some_and(|n| !n.is_empty()));
    let Some(user) = user else {
        return Ok(refused(
            RefusalKind::Unauthenticated,
            "the API server does not accept the token".to_owned(),
            MAX_REVIEW_TTL_SECONDS,
        ));
    };
    let username = user.username.clone().unwrap_or_default();
    let access = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.clone()),
                verb: Some(PROXY_VERB.to_owned()),
                group: Some(GROUP.to_owned()),
                resource: Some("permits".to_owned()),
                subresource: Some(PROXY_SUBRESOURCE.to_owned()),
                name: Some(name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let allowed = Api::<SubjectAccessReview>::all(client)
        .create(&PostParams::default(), &access)
        .await?
        .status
        .is_some_and(|s| s.allowed);
    if !allowed {
        return Ok(refused(
            RefusalKind::Forbidden,
            format!(
                "{username} may not {PROXY_VERB} permits/{PROXY_SUBRESOURCE} {name} in namespace {namespace} (RBAC)"
            ),
            MAX_REVIEW_TTL_SECONDS,
        ));
    }
    Ok(Json(ReviewAnswer {
        allowed: true,
        identity: Some(username),
        refusal: None,
        reason: None,
        ttl_seconds: MAX_REVIEW_TTL_SECONDS,
    }))
}

/// `POST {CALLS_PATH}/<namespace>/<permit>`.
pub async fn calls(
    State(state): State<Arc<CallbackState>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CallbackError> {
    let permit = proxy_permit(&state, &namespace, &name, &headers).await?;
    let body = read_body_limited(&state, body, MAX_BATCH_BYTES).await?;
    let batch: CallBatch = serde_json::from_slice(&body)
        .map_err(|e| CallbackError::BadResult(format!("not a call batch: {e}")))?;
    let enforced = permit
        .status
        .as_ref()
        .and_then(|s| s.proxy.as_ref())
        .and_then(|p| p.spec_digest.as_deref());
    if enforced != Some(batch.permit_digest.as_str()) {
        return Err(CallbackError::BadResult(format!(
            "the batch is for spec digest {}, the proxy was started for another",
            batch.permit_digest
        )));
    }
    if !batch.calls.is_empty() || batch.dropped > 0 {
        let lines = audit_lines(&batch, state.ctx.now().as_millisecond());
        if !append_audit(&state, &permit, &lines).await? {
            return Ok((
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log kept changing; send the batch again",
            )
                .into_response());
        }
        let (calls, spent) = spent(&batch.calls);
        state.ctx.usage.record(
            &namespace,
            &name,
            UsageDelta {
                calls,
                spent,
                ..UsageDelta::default()
            },
        );
    }
    let mut now_permit = permit;
    state.ctx.usage.overlay(&mut now_permit);
    let rate_budget = crate::execution::decide::refilled_budget(&now_permit, state.ctx.now());
    Ok(Json(CallBatchAnswer { rate_budget }).into_response())
}

/// The allowed calls of a batch and the rate-limit tokens they took, per capability.
fn spent(calls: &[ProxyCall]) -> (i64, BTreeMap<String, f64>) {
    let mut spent = BTreeMap::new();
    let mut n = 0i64;
    for c in calls.iter().filter(|c| c.decision == CallDecision::Allowed) {
        n += 1;
        *spent.entry(c.capability.clone()).or_insert(0.0) += 1.0;
    }
    (n, spent)
}

/// One JSON line per call, and one for the calls the proxy could not keep.
fn audit_lines(batch: &CallBatch, now_ms: i64) -> Vec<String> {
    let mut lines: Vec<String> = batch
        .calls
        .iter()
        .filter_map(|c| serde_json::to_string(c).ok())
        .collect();
    if batch.dropped > 0 {
        lines.push(serde_json::json!({"atMs": now_ms, "dropped": batch.dropped}).to_string());
    }
    lines
}

/// `log` with `lines` appended, cut to the newest [`MAX_PROXY_AUDIT_LINES`] lines and
/// [`MAX_AUDIT_BYTES`] (pure).
pub fn appended(log: &str, lines: &[String]) -> String {
    let mut all: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    all.extend(lines.iter().map(String::as_str));
    let mut keep = all.len().saturating_sub(MAX_PROXY_AUDIT_LINES);
    let mut bytes: usize = all[keep..].iter().map(|l| l.len() + 1).sum();
    while bytes > MAX_AUDIT_BYTES && keep < all.len() {
        bytes -= all[keep].len() + 1;
        keep += 1;
    }
    let mut out = all[keep..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Appends `lines` to the Permit's audit ConfigMap (created, owned by the Permit, when
/// missing), guarded by its resourceVersion. `false`: it kept changing.
async fn append_audit(
    state: &CallbackState,
    permit: &Permit,
    lines: &[String],
) -> Result<bool, kube::Error> {
    let namespace = permit.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(state.ctx.client.clone(), &namespace);
    let object = proxy_audit_object_name(&permit.name_any());
    for _ in 0..AUDIT_ATTEMPTS {
        let result = match api.get_opt(&object).await? {
            Some(mut cm) => {
                let data = cm.data.get_or_insert_with(Default::default);
                let log = data.get(PROXY_AUDIT_KEY).cloned().unwrap_or_default();
                data.insert(PROXY_AUDIT_KEY.to_owned(), appended(&log, lines));
                api.replace(&object, &PostParams::default(), &cm).await
            }
            None => {
                let owner = OwnerReference {
                    api_version: Permit::api_version(&()).into_owned(),
                    kind: Permit::kind(&()).into_owned(),
                    name: permit.name_any(),
                    uid: permit.uid().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: None,
                };
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(object.clone()),
                        namespace: Some(namespace.clone()),
                        labels: Some(
                            [
                                (
                                    "app.kubernetes.io/managed-by".to_owned(),
                                    MANAGED_BY.to_owned(),
                                ),
                                (
                                    oauth3_crds::constants::LABEL_PROXY.to_owned(),
                                    permit.name_any().chars().take(63).collect(),
                                ),
                            ]
                            .into(),
                        ),
                        owner_references: Some(vec![owner]),
                        ..Default::default()
                    },
                    data: Some([(PROXY_AUDIT_KEY.to_owned(), appended("", lines))].into()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &cm).await
            }
        };
        match result {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() || s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(cap: &str, decision: CallDecision) -> ProxyCall {
        ProxyCall {
            at_ms: 1,
            identity: "system:serviceaccount:a:b".into(),
            capability: cap.into(),
            method: "GET".into(),
            url: "https://api.example/x".into(),
            status: Some(200),
            decision,
            reason: None,
            duration_ms: 3,
        }
    }

    #[test]
    fn only_allowed_calls_are_counted_and_spend_their_capabilitys_tokens() {
        let (n, spent) = spent(&[
            call("a", CallDecision::Allowed),
            call("a", CallDecision::Allowed),
            call("b", CallDecision::Denied),
            call("c", CallDecision::Allowed),
        ]);
        assert_eq!(n, 3);
        assert_eq!(spent, [("a".into(), 2.0), ("c".into(), 1.0)].into());
    }

    #[test]
    fn the_audit_log_keeps_the_newest_lines_within_its_limits() {
        let lines: Vec<String> = (0..MAX_PROXY_AUDIT_LINES + 5)
            .map(|i| format!("{{\"n\":{i}}}"))
            .collect();
        let log = appended("{\"n\":-1}\n", &lines);
        let kept: Vec<&str> = log.lines().collect();
        assert_eq!(kept.len(), MAX_PROXY_AUDIT_LINES);
        assert_eq!(kept[0], "{\"n\":5}");
        assert_eq!(
            *kept.last().expect("last"),
            format!("{{\"n\":{}}}", MAX_PROXY_AUDIT_LINES + 4)
        );
        let big = vec!["x".repeat(100_000); 20];
        let log = appended("", &big);
        assert!(log.len() <= MAX_AUDIT_BYTES, "{}", log.len());
        assert_eq!(log.lines().count(), 9);
        let batch = CallBatch {
            permit_digest: "d".into(),
            calls: vec![call("a", CallDecision::Allowed)],
            dropped: 2,
        };
        let lines = audit_lines(&batch, 7);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].contains("\"dropped\":2"), "{lines:?}");
    }
}
