//! The one guarded status write, for every resource and every writer: a merge patch of
//! `status` that carries the `resourceVersion` the writer decided on. If anyone changed the
//! object since (another replica, the result endpoint, the Telegram bot, an owner's
//! `kubectl oauth3`), the API server answers 409 and the write is reported as
//! [`Guarded::Conflict`]: someone else decided; the writer reads again and re-decides instead
//! of overwriting. The Permit controller's server-side apply of the fields it alone owns is
//! the only status write that does not pass here (it never decides against another writer).

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What became of a guarded write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guarded {
    /// Written.
    Written,
    /// The object changed since it was read: someone else decided; look again.
    Conflict,
    /// The object no longer exists.
    Gone,
}

impl Guarded {
    /// Whether the write happened (and so its Event should be published).
    pub(crate) fn written(self) -> bool {
        self == Self::Written
    }
}

/// Whether `error` is the API server's 409 Conflict.
pub(crate) fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.is_conflict())
}

/// Whether `error` is the API server's 404 Not Found.
pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.is_not_found())
}

/// Merges `status` into the status of `object` as it was read (guarded by its
/// `resourceVersion`), recorded under `field_manager` when given.
///
/// # Errors
/// Any API failure other than a conflict or the object being gone.
pub(crate) async fn write_status<K>(
    api: &Api<K>,
    object: &K,
    status: &impl Serialize,
    field_manager: Option<&str>,
) -> Result<Guarded, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": object.resource_version()},
        "status": status,
    });
    let params = PatchParams {
        field_manager: field_manager.map(str::to_owned),
        ..PatchParams::default()
    };
    match api
        .patch_status(&object.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Guarded::Written),
        Err(e) if is_conflict(&e) => Ok(Guarded::Conflict),
        Err(e) if is_not_found(&e) => Ok(Guarded::Gone),
        Err(e) => Err(e),
    }
}

/// Publishes an Event about `object` (best effort: a failure is logged, never returned).
pub(crate) async fn publish<K>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: reason.to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(
            object = %format!("{}/{}", object.meta().namespace.as_deref().unwrap_or_default(), object.meta().name.as_deref().unwrap_or_default()),
            reason,
            error = %e,
            "publishing an event"
        );
    }
}
