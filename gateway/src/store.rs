//! Every Kubernetes call the gateway makes for a request, in the caller's namespace only: find
//! an object by its request id (a label), create Permits, Executions and sealed Secrets, and
//! wait for an object's answer to become final (a watch on that one object, from the
//! resourceVersion that was read, so no change between the read and the watch is missed).

use std::fmt::Debug;
use std::time::Duration;

use futures::TryStreamExt;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, Resource, ResourceExt};
use oauth3_crds::constants::LABEL_REQUEST_ID;
use oauth3_crds::{Execution, Permit};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::answer::is_terminal;
use crate::error::{ApiError, ApiResult};
use crate::ids::{IdKind, RequestId};

/// The gateway's Kubernetes access.
#[derive(Clone)]
pub struct Store {
    client: Client,
}

/// The object a request id names.
#[derive(Debug, Clone)]
pub enum Found {
    /// A Permit request.
    Permit(Box<Permit>),
    /// An Execution.
    Execution(Box<Execution>),
}

impl Store {
    /// Uses `client` (the gateway's own identity).
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Permits of `ns`.
    pub fn permits(&self, ns: &str) -> Api<Permit> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Executions of `ns`.
    pub fn executions(&self, ns: &str) -> Api<Execution> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The object `id` names in `ns`.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when `ns` holds none (whatever other namespaces hold).
    pub async fn find(&self, ns: &str, id: &RequestId) -> ApiResult<Found> {
        Ok(match id.kind {
            IdKind::Permit => Found::Permit(Box::new(self.find_in(&self.permits(ns), id).await?)),
            IdKind::Execution => {
                Found::Execution(Box::new(self.find_in(&self.executions(ns), id).await?))
            }
        })
    }

    async fn find_in<K>(&self, api: &Api<K>, id: &RequestId) -> ApiResult<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        // The gateway names what it creates after the id, so one GET finds it; only Permits
        // the client named itself (`permit_id`) need the label lookup, a list whose cost
        // grows with the namespace.
        let by_name = api
            .get_opt(&id.object_name())
            .await
            .map_err(ApiError::kube(format!("looking up request {id}")))?;
        if let Some(found) = by_name.filter(|o| {
            o.meta()
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_REQUEST_ID))
                .is_some_and(|v| *v == id.as_label())
        }) {
            return Ok(found);
        }
        let lp = ListParams::default()
            .labels(&format!("{LABEL_REQUEST_ID}={}", id.as_label()))
            .limit(2);
        let list = api
            .list(&lp)
            .await
            .map_err(ApiError::kube(format!("looking up request {id}")))?;
        let mut items = list.items.into_iter();
        match (items.next(), items.next()) {
            (Some(one), None) => Ok(one),
            (None, _) => Err(ApiError::NotFound(format!("request {id} not found"))),
            (Some(_), Some(_)) => Err(ApiError::Conflict(format!(
                "request {id} names more than one object; refusing to guess"
            ))),
        }
    }

    /// The Permit named `name` in `ns`.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when there is none.
    pub async fn permit(&self, ns: &str, name: &str) -> ApiResult<Permit> {
        self.permits(ns)
            .get_opt(name)
            .await
            .map_err(ApiError::kube(format!("reading Permit {name}")))?
            .ok_or_else(|| ApiError::NotFound(format!("Permit {name} not found")))
    }

    /// Creates `object` in `ns`; the API server's validation errors become 400s naming the
    /// field, an existing name a 409.
    ///
    /// # Errors
    /// As above, or the API failure.
    pub async fn create<K>(&self, ns: &str, object: &K, what: &str) -> ApiResult<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let pp = PostParams {
            field_manager: Some(oauth3_crds::constants::GATEWAY_FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.create(&pp, object).await.map_err(|e| match e {
            kube::Error::Api(s) if s.is_invalid() => {
                let field = s
                    .details
                    .as_ref()
                    .and_then(|d| d.causes.first())
                    .map(|c| c.field.clone())
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| "spec".into());
                ApiError::bad(
                    field,
                    format!("the API server refused the {what}: {}", s.message),
                )
            }
            kube::Error::Api(s) if s.is_already_exists() => {
                ApiError::Conflict(format!("{what} {} already exists", object.name_any()))
            }
            other => ApiError::Kube {
                step: format!("creating the {what}"),
                source: other,
            },
        })
    }

    /// Waits up to `bound` for `status` of `current` to become final, watching that one
    /// object; returns the object as last seen. Answers at once when the status is already
    /// final. Intermediate changes (`approved` -> `executing`) do not end the hold: clients
    /// poll again after a pause when they get a status that is not final, so waking them for
    /// one only delays the result.
    ///
    /// # Errors
    /// When the watch cannot be started.
    pub async fn wait_until_final<K>(
        &self,
        api: &Api<K>,
        current: K,
        bound: Duration,
        status: fn(&K) -> &'static str,
    ) -> ApiResult<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        if is_terminal(status(&current)) || bound.is_zero() {
            return Ok(current);
        }
        let deadline = Instant::now() + bound;
        let name = current.name_any();
        let mut version = current.resource_version().unwrap_or_default();
        let mut latest = current;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(latest);
            }
            let secs = u32::try_from(left.as_secs() + 1).unwrap_or(290).min(290);
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(secs);
            let stream = api
                .watch(&wp, &version)
                .await
                .map_err(ApiError::kube(format!("watching {name}")))?;
            let mut stream = std::pin::pin!(stream);
            loop {
                match tokio::time::timeout_at(deadline, stream.try_next()).await {
                    Err(_) => return Ok(latest),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, object = %name, "watch ended; resuming");
                        break;
                    }
                    Ok(Ok(None)) => break,
                    Ok(Ok(Some(event))) => match event {
                        WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                            version = o.resource_version().unwrap_or_default();
                            latest = o;
                            if is_terminal(status(&latest)) {
                                return Ok(latest);
                            }
                        }
                        WatchEvent::Deleted(_) => return Ok(latest),
                        WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                        WatchEvent::Error(e) => {
                            tracing::debug!(code = e.code, object = %name, "watch error; re-reading");
                            let Some(now) = api
                                .get_opt(&name)
                                .await
                                .map_err(ApiError::kube(format!("reading {name}")))?
                            else {
                                return Ok(latest);
                            };
                            version = now.resource_version().unwrap_or_default();
                            latest = now;
                            if is_terminal(status(&latest)) {
                                return Ok(latest);
                            }
                            break;
                        }
                    },
                }
            }
            // Do not spin if the API server keeps closing the watch at once.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
