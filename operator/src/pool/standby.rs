//! The standby endpoint (`POST {STANDBY_PATH}/{namespace}/{member}`, see
//! [`oauth3_protocol::standby`]): where a pool member asks for its run, on every replica.
//!
//! The member is known by its token: the Pod must be a pool member whose
//! [`ANNOTATION_STANDBY_TOKEN`] is the digest of the bearer token (compared in constant time);
//! anything else is refused before anything about the member is told. Then:
//! - a bundle this replica's launch offered ([`super::Pools::offer`], made only after the claim,
//!   the Execution's egress policy and its launch lock were written) is handed over at once;
//! - otherwise the member's claim is read from the API (a replica that did not launch it, or a
//!   member asking again after a lost answer): the member must carry the Execution's uid label,
//!   the Execution must be `Running` with the launch record naming this member, and its bundle
//!   Secret and egress policy must exist and be the Execution's; only then is the bundle
//!   handed over. A bundle only ever goes to the member its Execution's launch record names.
//! - A member of an Execution that ended, or being deleted, is told it is retired (`410`);
//!   an idle one waits up to [`POLL_HOLD_MS`] and is told to ask again (`204`).
//! - A member's first ask is its check-in: [`ANNOTATION_STANDBY_CHECKED_IN`] is written on its
//!   Pod before it waits, and only a member that checked in is ever claimed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use oauth3_crds::constants::{
    ANNOTATION_EXECUTION_NAME, ANNOTATION_STANDBY_CHECKED_IN, ANNOTATION_STANDBY_TOKEN,
    LABEL_EXECUTION, LABEL_POOL,
};
use oauth3_crds::{Execution, ExecutionPhase};
use oauth3_protocol::callback::token_matches;
use oauth3_protocol::standby::POLL_HOLD_MS;

use crate::egress::EgressMode;
use crate::execution::result::{CallbackState, bearer, could_exist};
use crate::launcher::pod::{BUNDLE_FILE, run_object_name};
use crate::status_write::is_not_found;

/// How often a waiting member's claim is read from the API (when no offer of this replica
/// wakes it first).
pub const RECHECK: Duration = Duration::from_millis(500);

/// What the member is told.
#[derive(Debug)]
enum Answer {
    Bundle(Arc<String>),
    Wait,
    Retired(&'static str),
    Refused(StatusCode, &'static str),
    Unavailable(String),
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Self::Bundle(bundle) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                bundle.as_str().to_owned(),
            )
                .into_response(),
            Self::Wait => StatusCode::NO_CONTENT.into_response(),
            Self::Retired(why) => (StatusCode::GONE, why).into_response(),
            Self::Refused(status, why) => (status, why).into_response(),
            Self::Unavailable(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
        }
    }
}

/// `POST {STANDBY_PATH}/{namespace}/{member}`.
pub async fn ask(
    State(state): State<Arc<CallbackState>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = bearer(&headers).map(str::to_owned) else {
        return Answer::Refused(StatusCode::UNAUTHORIZED, "missing bearer token").into_response();
    };
    if !could_exist(&namespace, &name) {
        return Answer::Refused(StatusCode::NOT_FOUND, "no such pool member").into_response();
    }
    answer(&state, &namespace, &name, &token)
        .await
        .into_response()
}

async fn answer(state: &CallbackState, namespace: &str, name: &str, token: &str) -> Answer {
    let ctx = &state.ctx;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let hold = tokio::time::Instant::now() + Duration::from_millis(POLL_HOLD_MS);
    let mut pod = match pods.get_opt(name).await {
        Ok(Some(pod)) => pod,
        Ok(None) => return Answer::Refused(StatusCode::NOT_FOUND, "no such pool member"),
        Err(e) => return Answer::Unavailable(format!("reading the member: {e}")),
    };
    let recorded = pod
        .annotations()
        .get(ANNOTATION_STANDBY_TOKEN)
        .cloned()
        .unwrap_or_default();
    if !pod.labels().contains_key(LABEL_POOL) || !token_matches(token, &recorded) {
        tracing::warn!(member = %format!("{namespace}/{name}"), "standby request refused: token does not match");
        return Answer::Refused(StatusCode::UNAUTHORIZED, "token does not match this member");
    }
    if !super::checked_in(&pod)
        && !pod.labels().contains_key(LABEL_EXECUTION)
        && pod.metadata.deletion_timestamp.is_none()
    {
        // The first ask: from now on the member may be claimed.
        let mark = serde_json::json!({"metadata": {"annotations": {
            ANNOTATION_STANDBY_CHECKED_IN: ctx.now().to_string(),
        }}});
        match pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&mark))
            .await
        {
            Ok(patched) => {
                tracing::debug!(member = %format!("{namespace}/{name}"), "pool member checked in");
                pod = patched;
            }
            Err(e) => return Answer::Unavailable(format!("recording the member's check-in: {e}")),
        }
    }
    loop {
        let offered = ctx.pools.offered();
        if let Some(bundle) = ctx.pools.take(namespace, name, ctx.now_precise()) {
            tracing::info!(member = %format!("{namespace}/{name}"), "bundle handed to pool member");
            return Answer::Bundle(bundle);
        }
        if pod.metadata.deletion_timestamp.is_some() {
            return Answer::Retired("this member is being deleted");
        }
        if pod.labels().contains_key(LABEL_EXECUTION) {
            match claimed_bundle(state, &pod).await {
                Ok(Some(bundle)) => return Answer::Bundle(bundle),
                Ok(None) => {}
                Err(answer) => return answer,
            }
        }
        let now = tokio::time::Instant::now();
        if now >= hold {
            return Answer::Wait;
        }
        let pause = RECHECK.min(hold - now);
        tokio::select! {
            () = offered => {}
            () = tokio::time::sleep(pause) => {
                pod = match pods.get_opt(name).await {
                    Ok(Some(pod)) => pod,
                    Ok(None) => return Answer::Retired("this member was deleted"),
                    Err(e) => return Answer::Unavailable(format!("reading the member: {e}")),
                };
            }
        }
    }
}

/// The bundle of the Execution that claimed `pod`, read from the API, once its launch lock
/// names the member and its egress policy exists; `Ok(None)` while the launch is still being
/// written; `Err` (retired) when the Execution is gone or no longer runs.
async fn claimed_bundle(state: &CallbackState, pod: &Pod) -> Result<Option<Arc<String>>, Answer> {
    let ctx = &state.ctx;
    let namespace = pod.namespace().unwrap_or_default();
    let uid = pod
        .labels()
        .get(LABEL_EXECUTION)
        .cloned()
        .unwrap_or_default();
    let Some(exec_name) = pod.annotations().get(ANNOTATION_EXECUTION_NAME).cloned() else {
        return Ok(None);
    };
    let unavailable =
        |what: &str, e: kube::Error| Answer::Unavailable(format!("reading {what}: {e}"));
    let executions: Api<Execution> = Api::namespaced(ctx.client.clone(), &namespace);
    let exec = match executions.get_opt(&exec_name).await {
        Ok(Some(exec)) => exec,
        Ok(None) => {
            return Err(Answer::Retired(
                "the Execution that claimed this member is gone",
            ));
        }
        Err(e) => return Err(unavailable("the Execution", e)),
    };
    if exec.metadata.uid.as_deref() != Some(uid.as_str()) {
        return Err(Answer::Retired(
            "the Execution that claimed this member is gone",
        ));
    }
    let status = exec.status.clone().unwrap_or_default();
    let names_member = status.pod_name.as_deref() == Some(&format!("pod/{}", pod.name_any()));
    match status.phase {
        Some(ExecutionPhase::Running) if names_member => {}
        Some(ExecutionPhase::Running) => {
            return Err(Answer::Retired("the Execution runs elsewhere"));
        }
        Some(p) if p.is_terminal() => {
            return Err(Answer::Retired(
                "the Execution that claimed this member ended",
            ));
        }
        // Claimed, the launch lock not written yet.
        _ => return Ok(None),
    }
    let object = run_object_name(&exec_name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = match secrets.get_opt(&object).await {
        Ok(Some(secret)) => secret,
        Ok(None) => return Ok(None),
        Err(e) => return Err(unavailable("the bundle Secret", e)),
    };
    if secret.labels().get(LABEL_EXECUTION) != Some(&uid) {
        return Ok(None);
    }
    if !policy_exists(ctx, &namespace, &object, &uid).await? {
        return Ok(None);
    }
    let Some(bundle) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(BUNDLE_FILE))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    else {
        return Ok(None);
    };
    // The sealed envelopes go only this way, read now.
    let names = exec
        .status
        .as_ref()
        .map(|_| ())
        .and_then(|()| serde_json::from_str::<oauth3_protocol::Bundle>(&bundle).ok())
        .map(|b| b.permit.spec.secrets)
        .unwrap_or_default();
    let envelopes =
        match crate::launcher::read_sealed_envelopes(&ctx.client, &namespace, &names).await {
            Ok(crate::launcher::SealedEnvelopes::Found(found)) => found,
            Ok(crate::launcher::SealedEnvelopes::Unusable(_)) => {
                return Err(Answer::Retired("a sealed Secret of the run is missing"));
            }
            Err(e) => return Err(unavailable("the sealed Secrets", e)),
        };
    let Some(bundle) = super::with_envelopes(&bundle, envelopes) else {
        return Ok(None);
    };
    // The leader, which offered it in memory, learns that the member did ask.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let mark = serde_json::json!({"metadata": {"annotations": {
        oauth3_crds::constants::ANNOTATION_BUNDLE_TAKEN: ctx.now().to_string(),
    }}});
    if let Err(e) = pods
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&mark),
        )
        .await
    {
        tracing::warn!(member = %pod.name_any(), error = %e, "marking a member's bundle as taken");
    }
    Ok(Some(Arc::new(bundle)))
}

/// Whether the Execution's egress policy `name` (of the kind this operator writes) exists and
/// is the Execution's (its uid label).
async fn policy_exists(
    ctx: &crate::Context,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<bool, Answer> {
    let found = if ctx.egress == Some(EgressMode::Cilium) {
        let api: Api<DynamicObject> = Api::namespaced_with(
            ctx.client.clone(),
            namespace,
            &crate::launcher::cilium_policy_resource(),
        );
        api.get_opt(name)
            .await
            .map(|p| p.map(|p| p.labels().get(LABEL_EXECUTION).cloned()))
    } else {
        let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map(|p| p.map(|p| p.labels().get(LABEL_EXECUTION).cloned()))
    };
    match found {
        Ok(Some(Some(label))) => Ok(label == uid),
        Ok(_) => Ok(false),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(Answer::Unavailable(format!(
            "reading the egress policy: {e}"
        ))),
    }
}
