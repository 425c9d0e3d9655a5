//! oauth2 credentials written back sealed, and refreshes serialised across runs.
//!
//! A runner refreshes an oauth2 credential inside the TEE and re-seals the new token set to its
//! own enclave key (see `sandbox-runner/SEALED-SECRETS.md`). Providers that rotate refresh
//! tokens revoke the old one when it is used, so two runs must never refresh one credential
//! with the same refresh token. The operator coordinates them in real time, over each run's
//! authenticated callback channel:
//!
//! - `POST /v1/credentials/{namespace}/{name}/{SECRET}/lease` `{"held": "sha256:.."}`: if the
//!   sealed Secret holds a different envelope than the run's, the answer is that newer envelope
//!   (`newer`); else if another run holds the lease, `wait`; else the run gets the lease
//!   (`granted`), recorded as an annotation on the Secret by a write guarded by the Secret's
//!   resourceVersion, so of two operators or two requests only one wins.
//! - `POST /v1/credentials/{namespace}/{name}/{SECRET}/sealed` (a `SealedUpdate`): the holder
//!   hands the re-sealed set over at once (a crash later cannot lose the new refresh token);
//!   it is written only over the envelope it `replaces`, guarded by the resourceVersion, and
//!   the lease is cleared in the same write.
//!
//! The final result's `sealedUpdates` go through the same write ([`write_back_all`]): an update
//! already written is skipped, one that would replace a newer envelope is dropped. Only a
//! `Running` Execution presenting its own token may ask, only for a secret its Permit lists,
//! and only for a Secret that is an oauth2 credential. Envelopes are ciphertext; no token is
//! ever seen here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use oauth3_crds::constants::{
    ANNOTATION_SECRET_NAME, SEALED_SECRET_KEY, SEALED_SECRET_TYPE, secret_object_name,
};
use oauth3_crds::{Execution, Permit};
use oauth3_protocol::oauth2::{
    ANNOTATION_CREDENTIAL_KIND, ANNOTATION_EXPIRES_AT, ANNOTATION_GENERATION,
    ANNOTATION_REFRESHED_BY, LeaseRequest, LeaseResponse, OAUTH2_TYPE, SealedUpdate,
    envelope_digest,
};

use super::result::{CallbackError, CallbackState, accepting_running, bearer, could_exist};
use crate::status_write::publish;

/// Annotation holding a credential's refresh lease: `<execution uid> <until, Unix ms>`.
pub const ANNOTATION_REFRESH_LEASE: &str = "oauth3.dev/oauth2-refresh-lease";
/// How long a lease lasts (a refresh takes at most 20 s in the runner).
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How long a run waits before asking again while another holds the lease.
pub const LEASE_RETRY: Duration = Duration::from_millis(250);
/// Largest request body of the credential endpoints.
pub const MAX_CREDENTIAL_BODY_BYTES: usize = 64 * 1024;
/// Guarded writes tried before giving up when the Secret keeps changing.
const ATTEMPTS: u32 = 5;
/// Event reason of a credential written back.
pub const CREDENTIAL_REFRESHED: &str = "CredentialRefreshed";

/// What a write-back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBack {
    /// The new envelope is in the Secret.
    Written,
    /// The Secret already holds it.
    AlreadyWritten,
    /// The Secret holds another, newer envelope: the update was dropped.
    Stale,
}

/// Why a credential request was refused. Never carries a token (there is none here).
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The caller is not the run, or the run is not Running.
    #[error(transparent)]
    Callback(#[from] CallbackError),
    /// The secret is not one the run may refresh.
    #[error("secret {0} is not an oauth2 credential this run's Permit lists")]
    NotPermitted(String),
    /// The body is not what the endpoint takes.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The update does not replace the envelope the Secret holds.
    #[error("secret {0} holds a newer envelope than the one this update replaces")]
    Stale(String),
    /// The Secret kept changing.
    #[error("secret {0} kept changing; retry")]
    Busy(String),
    /// The operator may not read or update sealed Secrets.
    #[error(
        "the operator may not read and update the sealed Secret of {0}: install the chart with oauth2.writeBack=true to keep oauth2 credentials alive"
    )]
    NotAllowed(String),
}

/// The Kubernetes API refused the operator's identity.
fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(ae) if ae.reason == "Forbidden")
}

/// An API error of a step on the Secret of `name`.
fn api_error(name: &str, e: kube::Error) -> CredentialError {
    if is_forbidden(&e) {
        CredentialError::NotAllowed(name.to_owned())
    } else {
        CallbackError::Api(e).into()
    }
}

impl IntoResponse for CredentialError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Callback(e) => return CallbackErrorResponse(e).into_response(),
            Self::NotPermitted(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Stale(_) => StatusCode::CONFLICT,
            Self::Busy(_) | Self::NotAllowed(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, self.to_string()).into_response()
    }
}

/// Renders a borrowed [`CallbackError`] as the result endpoint does.
struct CallbackErrorResponse<'a>(&'a CallbackError);

impl IntoResponse for CallbackErrorResponse<'_> {
    fn into_response(self) -> Response {
        let status = self.0.status();
        (status, self.0.to_string()).into_response()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The envelope a sealed Secret holds (pure).
fn envelope_of(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref()?.get(SEALED_SECRET_KEY)?;
    String::from_utf8(data.0.clone()).ok()
}

/// Whether `secret` is the sealed oauth2 credential `name` (pure).
fn is_oauth2_credential(secret: &Secret, name: &str) -> bool {
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    secret.type_.as_deref() == Some(SEALED_SECRET_TYPE)
        && ann.get(ANNOTATION_SECRET_NAME).map(String::as_str) == Some(name)
        && ann.get(ANNOTATION_CREDENTIAL_KIND).map(String::as_str) == Some(OAUTH2_TYPE)
}

/// The lease holder and its end, if the Secret records one (pure).
fn lease_of(secret: &Secret) -> Option<(String, i64)> {
    let ann = secret.metadata.annotations.as_ref()?;
    let (uid, until) = ann.get(ANNOTATION_REFRESH_LEASE)?.split_once(' ')?;
    Some((uid.to_owned(), until.parse().ok()?))
}

/// The key id of an envelope (`oauth3-sealed:v1:<kid>:...`), pure.
fn kid_of(envelope: &str) -> Option<&str> {
    envelope.trim().split(':').nth(2)
}

/// The answer to a lease request over the Secret as read (pure): what to tell the run, and
/// whether to record the lease first.
fn lease_decision(secret: &Secret, uid: &str, held: &str, now_ms: i64) -> (LeaseResponse, bool) {
    let current = envelope_of(secret).unwrap_or_default();
    if envelope_digest(&current) != held {
        return (LeaseResponse::Newer { envelope: current }, false);
    }
    match lease_of(secret) {
        Some((holder, until)) if holder != uid && until > now_ms => (
            LeaseResponse::Wait {
                retry_after_ms: u64::try_from(LEASE_RETRY.as_millis()).unwrap_or(250),
            },
            false,
        ),
        _ => (
            LeaseResponse::Granted {
                until_unix_ms: now_ms + i64::try_from(LEASE_TTL.as_millis()).unwrap_or(60_000),
            },
            true,
        ),
    }
}

/// The Secret with `update` written in (pure): the envelope, its expiry, who refreshed it, the
/// generation counted up, and no lease.
fn with_update(secret: &Secret, update: &SealedUpdate) -> Secret {
    let mut next = secret.clone();
    let data = next.data.get_or_insert_with(BTreeMap::new);
    data.insert(
        SEALED_SECRET_KEY.to_owned(),
        ByteString(update.envelope.trim().as_bytes().to_vec()),
    );
    next.string_data = None;
    let ann = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.remove(ANNOTATION_REFRESH_LEASE);
    ann.insert(ANNOTATION_REFRESHED_BY.to_owned(), "tee".to_owned());
    match update
        .expires_at
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
    {
        Some(at) => ann.insert(ANNOTATION_EXPIRES_AT.to_owned(), at.to_string()),
        None => ann.remove(ANNOTATION_EXPIRES_AT),
    };
    let generation = ann
        .get(ANNOTATION_GENERATION)
        .and_then(|g| g.parse::<u64>().ok())
        .unwrap_or(0);
    ann.insert(
        ANNOTATION_GENERATION.to_owned(),
        (generation + 1).to_string(),
    );
    next
}

/// Writes `update` to the sealed Secret of `update.name` in `namespace`, only over the
/// envelope it replaces, guarded by the resourceVersion read.
///
/// # Errors
/// [`CredentialError`] when the Secret is not an oauth2 credential, the update's key differs
/// from the Secret's, or the Secret kept changing.
pub async fn write_back(
    client: &kube::Client,
    namespace: &str,
    update: &SealedUpdate,
) -> Result<WriteBack, CredentialError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let object = secret_object_name(&update.name);
    for _ in 0..ATTEMPTS {
        let secret = read_credential(&api, &object, &update.name).await?;
        let current = envelope_of(&secret).unwrap_or_default();
        if envelope_digest(&current) == envelope_digest(&update.envelope) {
            return Ok(WriteBack::AlreadyWritten);
        }
        if envelope_digest(&current) != update.replaces {
            return Ok(WriteBack::Stale);
        }
        if kid_of(&current) != kid_of(&update.envelope) {
            return Err(CredentialError::BadRequest(format!(
                "the update of {} is sealed to another key than the Secret",
                update.name
            )));
        }
        match api
            .replace(
                &object,
                &PostParams::default(),
                &with_update(&secret, update),
            )
            .await
        {
            Ok(_) => return Ok(WriteBack::Written),
            Err(e) if crate::status_write::is_conflict(&e) => {}
            Err(e) => return Err(api_error(&update.name, e)),
        }
    }
    Err(CredentialError::Busy(update.name.clone()))
}

async fn read_credential(
    api: &Api<Secret>,
    object: &str,
    name: &str,
) -> Result<Secret, CredentialError> {
    let secret = api
        .get_opt(object)
        .await
        .map_err(|e| api_error(name, e))?
        .ok_or_else(|| CredentialError::NotPermitted(name.to_owned()))?;
    if !is_oauth2_credential(&secret, name) {
        return Err(CredentialError::NotPermitted(name.to_owned()));
    }
    Ok(secret)
}

/// Writes a final result's `sealedUpdates` back (each checked against the Permit); an Event
/// on the Execution says which credentials were refreshed. Failures are logged, never fatal:
/// the result is already recorded.
pub async fn write_back_all(state: &CallbackState, exec: &Execution, updates: &[SealedUpdate]) {
    if updates.is_empty() {
        return;
    }
    let namespace = exec.metadata.namespace.clone().unwrap_or_default();
    let permitted = permit_secrets(&state.ctx.client, &namespace, &exec.spec.permit_ref).await;
    for update in updates {
        if !permitted.contains(&update.name) {
            tracing::warn!(secret = %update.name, "sealed update for a secret the Permit does not list dropped");
            continue;
        }
        match write_back(&state.ctx.client, &namespace, update).await {
            Ok(WriteBack::Written) => refreshed_event(state, exec, &update.name).await,
            Ok(outcome) => {
                tracing::debug!(secret = %update.name, ?outcome, "sealed update not written")
            }
            Err(e) => {
                tracing::warn!(secret = %update.name, error = %e, "sealed update not written")
            }
        }
    }
}

async fn refreshed_event<K>(state: &CallbackState, about: &K, name: &str)
where
    K: kube::Resource<DynamicType = ()>,
{
    publish(
        &state.ctx.recorder,
        about,
        EventType::Normal,
        CREDENTIAL_REFRESHED,
        format!(
            "oauth2 credential {name} refreshed in the TEE; the re-sealed token set is written back"
        ),
    )
    .await;
}

async fn permit_secrets(client: &kube::Client, namespace: &str, permit: &str) -> Vec<String> {
    Api::<Permit>::namespaced(client.clone(), namespace)
        .get_opt(permit)
        .await
        .ok()
        .flatten()
        .map(|p| p.spec.secrets)
        .unwrap_or_default()
}

/// Checks the caller is the Running run `namespace/name` with a Permit listing `secret`; the
/// Execution as read.
async fn authorise(
    state: &CallbackState,
    namespace: &str,
    name: &str,
    secret: &str,
    headers: &HeaderMap,
) -> Result<Execution, CredentialError> {
    let key = format!("{namespace}/{name}");
    if !could_exist(namespace, name) {
        return Err(CallbackError::NotFound(key).into());
    }
    let token = bearer(headers).ok_or(CallbackError::Unauthenticated)?;
    let exec = Api::<Execution>::namespaced(state.ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(CallbackError::Api)?
        .ok_or_else(|| CallbackError::NotFound(key.clone()))?;
    accepting_running(&exec, token, &key)?;
    let permitted = permit_secrets(&state.ctx.client, namespace, &exec.spec.permit_ref).await;
    if !permitted.iter().any(|s| s == secret) {
        return Err(CredentialError::NotPermitted(secret.to_owned()));
    }
    Ok(exec)
}

async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, CredentialError> {
    let bytes = tokio::time::timeout(
        Duration::from_secs(10),
        axum::body::to_bytes(body, MAX_CREDENTIAL_BODY_BYTES),
    )
    .await
    .map_err(|_| CredentialError::BadRequest("the body did not arrive in time".into()))?
    .map_err(|_| CredentialError::BadRequest("the body is unreadable or too large".into()))?;
    serde_json::from_slice(&bytes).map_err(|e| CredentialError::BadRequest(e.to_string()))
}

/// `POST .../{SECRET}/lease`.
pub(crate) async fn lease(
    State(state): State<Arc<CallbackState>>,
    Path((namespace, name, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<LeaseResponse>, CredentialError> {
    let exec = authorise(&state, &namespace, &name, &secret, &headers).await?;
    let uid = exec.metadata.uid.clone().unwrap_or_default();
    grant_lease(&state, &namespace, &name, &secret, &uid, body).await
}

/// `POST {PROXY_CREDENTIALS_PATH}/{namespace}/{permit}/{SECRET}/lease`: the same lease for a
/// Permit's credential proxy (its callback token, a secret its Permit lists).
pub(crate) async fn proxy_lease(
    State(state): State<Arc<CallbackState>>,
    Path((namespace, name, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<LeaseResponse>, CredentialError> {
    let (_, holder) = authorise_proxy(&state, &namespace, &name, &secret, &headers).await?;
    grant_lease(&state, &namespace, &name, &secret, &holder, body).await
}

/// The lease decision for `holder` (a run's uid, or a proxy's), recorded when granted.
async fn grant_lease(
    state: &CallbackState,
    namespace: &str,
    name: &str,
    secret: &str,
    uid: &str,
    body: Body,
) -> Result<axum::Json<LeaseResponse>, CredentialError> {
    let request: LeaseRequest = read_json(body).await?;
    let (secret, uid) = (secret.to_owned(), uid.to_owned());
    let api: Api<Secret> = Api::namespaced(state.ctx.client.clone(), namespace);
    let object = secret_object_name(&secret);
    for _ in 0..ATTEMPTS {
        let current = read_credential(&api, &object, &secret).await?;
        let (answer, record) = lease_decision(&current, &uid, &request.held, now_ms());
        if !record {
            return Ok(axum::Json(answer));
        }
        let LeaseResponse::Granted { until_unix_ms } = answer else {
            return Ok(axum::Json(answer));
        };
        let mut next = current.clone();
        next.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(
                ANNOTATION_REFRESH_LEASE.to_owned(),
                format!("{uid} {until_unix_ms}"),
            );
        match api.replace(&object, &PostParams::default(), &next).await {
            Ok(_) => {
                tracing::info!(holder = %format!("{namespace}/{name}"), %secret, "refresh lease granted");
                return Ok(axum::Json(answer));
            }
            Err(e) if crate::status_write::is_conflict(&e) => {}
            Err(e) => return Err(api_error(&secret, e)),
        }
    }
    Err(CredentialError::Busy(secret))
}

/// `POST .../{SECRET}/sealed`.
pub(crate) async fn sealed(
    State(state): State<Arc<CallbackState>>,
    Path((namespace, name, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, CredentialError> {
    let exec = authorise(&state, &namespace, &name, &secret, &headers).await?;
    take_update(&state, &namespace, &secret, &exec, body).await
}

/// `POST {PROXY_CREDENTIALS_PATH}/{namespace}/{permit}/{SECRET}/sealed`: a proxy's refreshed
/// credential (the Event goes on the Permit).
pub(crate) async fn proxy_sealed(
    State(state): State<Arc<CallbackState>>,
    Path((namespace, name, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, CredentialError> {
    let (permit, _) = authorise_proxy(&state, &namespace, &name, &secret, &headers).await?;
    take_update(&state, &namespace, &secret, &permit, body).await
}

/// Writes the update in `body` for `secret`; an Event on `about` says it was refreshed.
async fn take_update<K>(
    state: &CallbackState,
    namespace: &str,
    secret: &str,
    about: &K,
    body: Body,
) -> Result<StatusCode, CredentialError>
where
    K: kube::Resource<DynamicType = ()>,
{
    let update: SealedUpdate = read_json(body).await?;
    if update.name != secret {
        return Err(CredentialError::BadRequest(format!(
            "the update names {}, the URL {secret}",
            update.name
        )));
    }
    match write_back(&state.ctx.client, namespace, &update).await? {
        WriteBack::Written => {
            refreshed_event(state, about, secret).await;
            Ok(StatusCode::NO_CONTENT)
        }
        WriteBack::AlreadyWritten => Ok(StatusCode::NO_CONTENT),
        WriteBack::Stale => Err(CredentialError::Stale(secret.to_owned())),
    }
}

/// Checks the caller is the running proxy of Permit `namespace/name` (its callback token) and
/// that the Permit lists `secret`; the Permit as read and the lease holder id of this proxy.
async fn authorise_proxy(
    state: &CallbackState,
    namespace: &str,
    name: &str,
    secret: &str,
    headers: &HeaderMap,
) -> Result<(Permit, String), CredentialError> {
    let permit = crate::proxy::channel::proxy_permit(state, namespace, name, headers).await?;
    if !permit.spec.secrets.iter().any(|s| s == secret) {
        return Err(CredentialError::NotPermitted(secret.to_owned()));
    }
    let digest = permit
        .status
        .as_ref()
        .and_then(|s| s.proxy.as_ref())
        .and_then(|p| p.token_digest.clone())
        .unwrap_or_default();
    let holder = format!("proxy-{}", digest.trim_start_matches("sha256:"));
    Ok((permit, holder))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(envelope: &str, lease: Option<&str>) -> Secret {
        let mut ann = BTreeMap::from([
            (ANNOTATION_SECRET_NAME.to_owned(), "GITHUB".to_owned()),
            (
                ANNOTATION_CREDENTIAL_KIND.to_owned(),
                OAUTH2_TYPE.to_owned(),
            ),
        ]);
        if let Some(l) = lease {
            ann.insert(ANNOTATION_REFRESH_LEASE.to_owned(), l.to_owned());
        }
        Secret {
            metadata: kube::api::ObjectMeta {
                annotations: Some(ann),
                ..Default::default()
            },
            type_: Some(SEALED_SECRET_TYPE.to_owned()),
            data: Some(BTreeMap::from([(
                SEALED_SECRET_KEY.to_owned(),
                ByteString(envelope.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn one_run_gets_the_lease_others_wait_and_a_stale_holder_gets_the_newer_envelope() {
        let held = envelope_digest("oauth3-sealed:v1:k:old");
        let free = secret("oauth3-sealed:v1:k:old", None);
        assert!(matches!(
            lease_decision(&free, "a", &held, 1000),
            (LeaseResponse::Granted { .. }, true)
        ));
        let taken = secret("oauth3-sealed:v1:k:old", Some("a 5000"));
        assert!(matches!(
            lease_decision(&taken, "b", &held, 1000),
            (LeaseResponse::Wait { .. }, false)
        ));
        assert!(matches!(
            lease_decision(&taken, "a", &held, 1000),
            (LeaseResponse::Granted { .. }, true)
        ));
        assert!(
            matches!(
                lease_decision(&taken, "b", &held, 6000),
                (LeaseResponse::Granted { .. }, true)
            ),
            "a lapsed lease is taken over"
        );
        let refreshed = secret("oauth3-sealed:v1:k:new", None);
        assert_eq!(
            lease_decision(&refreshed, "b", &held, 1000).0,
            LeaseResponse::Newer {
                envelope: "oauth3-sealed:v1:k:new".into()
            }
        );
    }

    #[test]
    fn a_write_back_replaces_the_envelope_clears_the_lease_and_counts_the_generation() {
        let s = secret("oauth3-sealed:v1:k:old", Some("a 5000"));
        let next = with_update(
            &s,
            &SealedUpdate {
                name: "GITHUB".into(),
                envelope: "oauth3-sealed:v1:k:new".into(),
                expires_at: Some(1_767_225_600),
                replaces: envelope_digest("oauth3-sealed:v1:k:old"),
            },
        );
        assert_eq!(
            envelope_of(&next).as_deref(),
            Some("oauth3-sealed:v1:k:new")
        );
        let ann = next.metadata.annotations.expect("annotations");
        assert!(!ann.contains_key(ANNOTATION_REFRESH_LEASE));
        assert_eq!(ann[ANNOTATION_GENERATION], "1");
        assert_eq!(ann[ANNOTATION_REFRESHED_BY], "tee");
        assert_eq!(ann[ANNOTATION_EXPIRES_AT], "2026-01-01T00:00:00Z");
    }
}
