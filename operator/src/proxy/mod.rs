//! The credential proxies: one `oauth3-sandbox-runner serve` per approved Permit with
//! `spec.proxy.enabled`, started, watched and stopped by this controller (leader only).
//!
//! Reconcile shape: observe (the Permit from the watch cache, the proxy this operator runs
//! for it) -> what should run ([`wanted`], pure) -> start or stop -> the guarded write of
//! `status.proxy` (field manager [`PROXY_FIELD_MANAGER`]) -> Events `ProxyStarted`,
//! `ProxyStopped`, `ProxyFailed`.
//!
//! A proxy runs while the Permit is `Approved` under the digest it was started for; the
//! revocation, expiry, a spec change or `spec.proxy.enabled: false` stop it within a
//! reconcile (the proxy also refuses calls past the approval's expiry itself, and the
//! operator's token review refuses clients of a Permit no longer approved). A proxy that idled
//! out (`idleTimeout`) stays stopped until the Permit's [`ANNOTATION_PROXY_WAKE`] names a time
//! after it stopped (the gateway sets it when a call comes). One that failed is started again
//! after [`FAILED_RETRY`].
//!
//! The process launcher runs the proxy as a local child (development); the pod launcher runs
//! it as a confidential sandbox Pod with a Service, a bundle Secret and a NetworkPolicy, all
//! owned by the Permit (see [`pods`]), its state read back from the Pod, never remembered.

pub mod channel;
pub mod pods;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use oauth3_crds::constants::{ANNOTATION_PROXY_WAKE, LABEL_PROXY, PROXY_FIELD_MANAGER};
use oauth3_crds::{Permit, PermitPhase, ProxyPhase, ProxyStatus};
use oauth3_protocol::callback::token_digest;
use oauth3_protocol::proxy::{EXIT_EXPIRED, EXIT_IDLE, ServeBundle};
use oauth3_protocol::{Callback, PermitRef};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::execution::ExecutionContext;
use crate::launcher::process::{ProcessLauncher, terminate};
use crate::launcher::{Launcher, SealedEnvelopes};
use crate::status_write::{Guarded, publish, write_status};

/// Reasons of `status.proxy` (one word each, as conditions have).
pub mod reason {
    /// Running.
    pub const SERVING: &str = "Serving";
    /// `spec.proxy.enabled` is not true.
    pub const DISABLED: &str = "Disabled";
    /// The owner revoked the approval.
    pub const REVOKED: &str = "Revoked";
    /// The owner denied the spec.
    pub const DENIED: &str = "Denied";
    /// No approval for the current spec.
    pub const NOT_APPROVED: &str = "NotApproved";
    /// The approval expired.
    pub const EXPIRED: &str = "Expired";
    /// No call for `idleTimeout`.
    pub const IDLE: &str = "Idle";
    /// The proxy could not be started or ended on its own.
    pub const FAILED: &str = "Failed";
    /// Being started (pod launcher: the Pod is created, scheduled or not yet ready).
    pub const STARTING: &str = "Starting";
    /// The operator stopped (its proxies stop with it).
    pub const OPERATOR_STOPPED: &str = "OperatorStopped";
}

/// Event reasons.
pub const EVENT_STARTED: &str = "ProxyStarted";
/// Event reason of a stop.
pub const EVENT_STOPPED: &str = "ProxyStopped";
/// Event reason of a failed start or an unexpected end.
pub const EVENT_FAILED: &str = "ProxyFailed";

/// How long a failed proxy stays stopped before it is started again.
pub const FAILED_RETRY: Duration = Duration::from_secs(30);

/// How often a running proxy's Permit is looked at when nothing changes.
pub const RESYNC: Duration = Duration::from_secs(300);

/// What should be true of a Permit's proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Nothing: no proxy was ever asked for, none runs.
    Nothing,
    /// Running, enforcing `digest`.
    Run {
        /// The approved spec digest.
        digest: String,
    },
    /// Not running, for this reason.
    Stop {
        /// One of [`reason`].
        reason: &'static str,
        /// In words.
        message: String,
    },
}

/// What should be true of `permit`'s proxy at `now` (pure).
pub fn wanted(permit: &Permit, now: Timestamp) -> Want {
    let spec = permit.effective_spec();
    let enabled = spec.proxy.as_ref().is_some_and(|p| p.enabled);
    let status = permit.status.clone().unwrap_or_default();
    let stop = |reason, message: &str| Want::Stop {
        reason,
        message: message.to_owned(),
    };
    if !enabled {
        return if status.proxy.is_some() {
            stop(
                reason::DISABLED,
                "spec.proxy.enabled is not true: no calls without code",
            )
        } else {
            Want::Nothing
        };
    }
    match status.phase {
        Some(PermitPhase::Approved) => {}
        Some(PermitPhase::Revoked) => {
            return stop(reason::REVOKED, "the owner revoked the Permit's approval");
        }
        Some(PermitPhase::Expired) => {
            return stop(reason::EXPIRED, "the Permit's approval expired");
        }
        Some(PermitPhase::Denied) => return stop(reason::DENIED, "the owner denied the Permit"),
        Some(PermitPhase::Pending) | None => {
            return stop(
                reason::NOT_APPROVED,
                "the Permit's current spec is not approved",
            );
        }
    }
    let Some(approval) = status.approval.as_ref() else {
        return stop(
            reason::NOT_APPROVED,
            "the Permit's current spec is not approved",
        );
    };
    if approval.expires_at.as_ref().is_some_and(|t| t.0 <= now) {
        return stop(reason::EXPIRED, "the Permit's approval expired");
    }
    if status.spec_digest.as_deref() != Some(approval.spec_digest.as_str()) {
        return stop(
            reason::NOT_APPROVED,
            "the Permit's current spec is not approved",
        );
    }
    if let Some(proxy) = &status.proxy
        && proxy.phase == ProxyPhase::Stopped
        && proxy.spec_digest.as_deref() == Some(approval.spec_digest.as_str())
    {
        let stopped = proxy.stopped_at.as_ref().map(|t| t.0);
        let woken = wake_time(permit).is_some_and(|w| stopped.is_none_or(|s| w > s));
        match proxy.reason.as_deref() {
            Some(reason::IDLE) if !woken => {
                return stop(
                    reason::IDLE,
                    proxy
                        .message
                        .as_deref()
                        .unwrap_or("stopped after its idle timeout"),
                );
            }
            Some(reason::FAILED)
                if !woken
                    && stopped.is_some_and(|s| {
                        now.duration_since(s).as_secs_f64() < FAILED_RETRY.as_secs_f64()
                    }) =>
            {
                return stop(
                    reason::FAILED,
                    proxy.message.as_deref().unwrap_or("the proxy failed"),
                );
            }
            _ => {}
        }
    }
    Want::Run {
        digest: approval.spec_digest.clone(),
    }
}

/// The time in the Permit's wake annotation, if it holds one.
fn wake_time(permit: &Permit) -> Option<Timestamp> {
    permit
        .annotations()
        .get(ANNOTATION_PROXY_WAKE)
        .and_then(|v| v.parse::<Timestamp>().ok())
}

/// A proxy this operator runs.
#[derive(Debug, Clone)]
struct Running {
    pid: u32,
    endpoint: String,
    token_digest: String,
    spec_digest: String,
    started_at: Timestamp,
    /// Set once it ended: its exit code and last words.
    exited: Option<(Option<i32>, String)>,
}

impl Running {
    fn handle(&self) -> String {
        format!("process/{}", self.pid)
    }
}

type Key = (String, String);

/// The proxies this operator runs, and the channel that wakes their Permit's reconcile when
/// one ends.
pub struct ProxyContext {
    /// The Execution side's settings (launcher, callback URL and CA) and the shared context.
    pub ectx: Arc<ExecutionContext>,
    running: Arc<Mutex<HashMap<Key, Running>>>,
    ended_tx: mpsc::UnboundedSender<ObjectRef<Permit>>,
    ended_rx: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<Permit>>>>,
}

impl ProxyContext {
    /// A context over the Execution side's settings.
    pub fn new(ectx: Arc<ExecutionContext>) -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Self {
            ectx,
            running: Arc::new(Mutex::new(HashMap::new())),
            ended_tx,
            ended_rx: Mutex::new(Some(ended_rx)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops every proxy this operator runs (at shutdown or when it stops leading).
    pub fn stop_all(&self) -> Vec<(String, String)> {
        let mut running = self.lock();
        for r in running.values().filter(|r| r.exited.is_none()) {
            terminate(r.pid);
        }
        running.drain().map(|(k, _)| k).collect()
    }
}

/// Why a proxy reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A Kubernetes API call failed.
    #[error("{step} for Permit {key}: {source}")]
    Api {
        /// What was being done.
        step: &'static str,
        /// namespace/name.
        key: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

/// The `status.proxy` merge patch: every field present, `null` where unset, so the patch
/// replaces the whole object.
fn status_patch(proxy: &ProxyStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(proxy).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for key in [
            "endpoint",
            "certificate",
            "handle",
            "specDigest",
            "tokenDigest",
            "startedAt",
            "stoppedAt",
            "reason",
            "message",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "proxy": value })
}

fn ready_status(r: &Running) -> ProxyStatus {
    ProxyStatus {
        phase: ProxyPhase::Ready,
        endpoint: Some(r.endpoint.clone()),
        certificate: None,
        handle: Some(r.handle()),
        spec_digest: Some(r.spec_digest.clone()),
        token_digest: Some(r.token_digest.clone()),
        started_at: Some(Time(r.started_at)),
        stopped_at: None,
        reason: Some(reason::SERVING.to_owned()),
        message: None,
    }
}

fn stopped_status(
    previous: Option<&ProxyStatus>,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> ProxyStatus {
    ProxyStatus {
        phase: ProxyPhase::Stopped,
        endpoint: None,
        certificate: None,
        handle: None,
        spec_digest: previous.and_then(|p| p.spec_digest.clone()),
        token_digest: None,
        started_at: previous.and_then(|p| p.started_at.clone()),
        stopped_at: Some(Time(now)),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
    }
}

/// Why a proxy process ended, from its exit code and last line.
fn exit_reason(code: Option<i32>, last: &str) -> (&'static str, String) {
    match code.and_then(|c| u8::try_from(c).ok()) {
        Some(EXIT_IDLE) => (reason::IDLE, "stopped after its idle timeout".to_owned()),
        Some(EXIT_EXPIRED) => (reason::EXPIRED, "the Permit's approval expired".to_owned()),
        _ => {
            let how = code.map_or("a signal".to_owned(), |c| format!("exit status {c}"));
            let last = last.trim().trim_start_matches("error: ");
            (
                reason::FAILED,
                format!("the proxy ended on its own ({how}): {last}"),
            )
        }
    }
}

/// Reconciles the proxy of one Permit.
///
/// # Errors
/// [`ProxyError`] when the API server could not be asked or written.
pub async fn reconcile(permit: Arc<Permit>, pctx: Arc<ProxyContext>) -> Result<Action, ProxyError> {
    let ctx = &pctx.ectx.ctx;
    let name = permit.name_any();
    let namespace = permit.namespace().unwrap_or_default();
    let key = (namespace.clone(), name.clone());
    let now = ctx.now();
    let p = Proxied {
        api: Api::namespaced(ctx.client.clone(), &namespace),
        permit: &permit,
        label: format!("{namespace}/{name}"),
        current: permit.status.as_ref().and_then(|s| s.proxy.clone()),
        recorder: &ctx.recorder,
    };
    let launcher = match &pctx.ectx.config.launcher {
        Launcher::Pod(config) => {
            return pods::reconcile(&pctx, &p, config, wanted(&permit, now), now).await;
        }
        Launcher::Process(launcher) => launcher,
    };
    let current = p.current.clone();

    // A proxy of ours that ended on its own: record why, once.
    let ended = {
        let mut running = pctx.lock();
        match running.get(&key) {
            Some(r) if r.exited.is_some() => running.remove(&key),
            _ => None,
        }
    };
    if let Some(r) = ended {
        let (code, last) = r.exited.clone().unwrap_or_default();
        if current.as_ref().and_then(|c| c.token_digest.as_deref()) == Some(&r.token_digest) {
            let (why, message) = exit_reason(code, &last);
            p.ended(why, message, now).await?;
        }
        // Decide again on the status as written.
        return Ok(RETRY_SOON);
    }

    let want = wanted(&permit, now);
    let mine = pctx.lock().get(&key).cloned();
    match want {
        Want::Nothing => Ok(Action::await_change()),
        Want::Stop {
            reason: why,
            message,
        } => {
            if let Some(r) = &mine {
                terminate(r.pid);
                pctx.lock().remove(&key);
                tracing::info!(permit = %p.label, pid = r.pid, reason = why, "stopping the proxy");
            }
            p.stopped(why, &message, now).await
        }
        Want::Run { digest } => {
            let next = requeue_at_expiry(&permit, now);
            if let Some(r) = mine.filter(|r| r.spec_digest == digest) {
                let shown = ready_status(&r);
                if current.as_ref() != Some(&shown) {
                    // Started, or the status was lost or overwritten: show what runs.
                    let fresh = current.as_ref().and_then(|c| c.token_digest.as_deref())
                        != Some(r.token_digest.as_str());
                    match p.write(shown).await? {
                        Guarded::Written if fresh => p.started(&r.endpoint, &r.handle()).await,
                        Guarded::Written => {}
                        Guarded::Conflict | Guarded::Gone => return Ok(RETRY_SOON),
                    }
                }
                return Ok(next);
            }
            if let Some(old) = pctx.lock().remove(&key) {
                // Started for another digest: the approval moved on.
                terminate(old.pid);
            }
            match start(&pctx, launcher, &permit, &digest, now).await {
                Ok(_) => Ok(RETRY_SOON),
                Err(Started::Unusable(message)) => p.failed_to_start(&digest, &message, now).await,
                Err(Started::Api(source)) => Err(ProxyError::Api {
                    step: "reading the sealed Secrets",
                    key: p.label.clone(),
                    source,
                }),
            }
        }
    }
}

/// How soon a reconcile looks again after its own write or start.
const RETRY_SOON: Action = Action::requeue(Duration::from_millis(300));

/// One reconcile's view of a Permit's proxy status, and its writes and Events (both
/// launchers).
struct Proxied<'a> {
    api: Api<Permit>,
    permit: &'a Permit,
    /// namespace/name.
    label: String,
    /// `status.proxy` as read.
    current: Option<ProxyStatus>,
    recorder: &'a kube::runtime::events::Recorder,
}

impl Proxied<'_> {
    /// The guarded write of `status.proxy`.
    async fn write(&self, status: ProxyStatus) -> Result<Guarded, ProxyError> {
        write_status(
            &self.api,
            self.permit,
            &status_patch(&status),
            Some(PROXY_FIELD_MANAGER),
        )
        .await
        .map_err(|source| ProxyError::Api {
            step: "writing status.proxy",
            key: self.label.clone(),
            source,
        })
    }

    async fn event(&self, type_: EventType, reason: &str, message: String) {
        publish(self.recorder, self.permit, type_, reason, message).await;
    }

    /// `ProxyStarted`, naming where it serves and for whom.
    async fn started(&self, endpoint: &str, handle: &str) {
        let callers = self
            .permit
            .effective_spec()
            .proxy
            .as_ref()
            .map(|p| p.callers.join(", "))
            .unwrap_or_default();
        self.event(
            EventType::Normal,
            EVENT_STARTED,
            format!("serving at {endpoint} ({handle}) for {callers}"),
        )
        .await;
    }

    /// Records that the proxy ended on its own (`why` from [`exit_reason`]), once.
    async fn ended(
        &self,
        why: &'static str,
        message: String,
        now: Timestamp,
    ) -> Result<(), ProxyError> {
        let written = self
            .write(stopped_status(self.current.as_ref(), why, &message, now))
            .await?;
        if written.written() {
            let (type_, event) = if why == reason::FAILED {
                (EventType::Warning, EVENT_FAILED)
            } else {
                (EventType::Normal, EVENT_STOPPED)
            };
            self.event(type_, event, message).await;
        }
        Ok(())
    }

    /// Shows the proxy stopped for `why` (the proxy itself is already stopped), once.
    async fn stopped(
        &self,
        why: &'static str,
        message: &str,
        now: Timestamp,
    ) -> Result<Action, ProxyError> {
        let current = self.current.as_ref();
        let already = current
            .is_some_and(|c| c.phase == ProxyPhase::Stopped && c.reason.as_deref() == Some(why));
        if current.is_some() && !already {
            let written = self
                .write(stopped_status(current, why, message, now))
                .await?;
            if !written.written() {
                return Ok(RETRY_SOON);
            }
            self.event(
                EventType::Normal,
                EVENT_STOPPED,
                format!("the proxy stopped: {message}"),
            )
            .await;
        }
        Ok(Action::await_change())
    }

    /// Shows that the proxy for `digest` could not be started, and why; tried again after
    /// [`FAILED_RETRY`].
    async fn failed_to_start(
        &self,
        digest: &str,
        message: &str,
        now: Timestamp,
    ) -> Result<Action, ProxyError> {
        let current = self.current.as_ref();
        let already = current.is_some_and(|c| {
            c.phase == ProxyPhase::Stopped
                && c.reason.as_deref() == Some(reason::FAILED)
                && c.message.as_deref() == Some(message)
        });
        if !already {
            let mut status = stopped_status(current, reason::FAILED, message, now);
            status.spec_digest = Some(digest.to_owned());
            if self.write(status).await?.written() {
                self.event(
                    EventType::Warning,
                    EVENT_FAILED,
                    format!("the proxy could not be started: {message}"),
                )
                .await;
            }
        }
        Ok(Action::requeue(FAILED_RETRY))
    }
}

/// Requeue at the approval's expiry (the Permit controller moves the phase then too), or
/// after [`RESYNC`].
fn requeue_at_expiry(permit: &Permit, now: Timestamp) -> Action {
    let expiry = permit
        .status
        .as_ref()
        .and_then(|s| s.approval.as_ref())
        .and_then(|a| a.expires_at.as_ref())
        .map(|t| t.0.duration_since(now).as_secs_f64());
    match expiry {
        Some(s) if s > 0.0 && s < RESYNC.as_secs_f64() => {
            Action::requeue(Duration::from_secs_f64(s) + Duration::from_millis(100))
        }
        _ => Action::requeue(RESYNC),
    }
}

/// Why a proxy was not started.
enum Started {
    /// Its inputs are unusable (a sealed Secret missing, the binary failing): in words.
    Unusable(String),
    /// The API server could not be read.
    Api(kube::Error),
}

/// The serve bundle of `permit` approved under `digest`, with the callback `token`.
pub fn serve_bundle(
    permit: &Permit,
    digest: &str,
    sealed: Vec<oauth3_protocol::SealedSecretRef>,
    callback_base_url: &str,
    callback_ca_pem: Option<String>,
    token: Zeroizing<String>,
    now: Timestamp,
) -> ServeBundle {
    let not_after = permit
        .status
        .as_ref()
        .and_then(|s| s.approval.as_ref())
        .and_then(|a| a.expires_at.as_ref())
        .map(|t| t.0.as_millisecond());
    ServeBundle {
        namespace: permit.namespace().unwrap_or_default(),
        permit: PermitRef {
            name: permit.name_any(),
            spec: permit.effective_spec().into_owned(),
            spec_digest: digest.to_owned(),
        },
        sealed_secrets: sealed,
        rate_budget: crate::execution::decide::refilled_budget(permit, now),
        not_after,
        callback: Some(Callback {
            url: callback_base_url.trim_end_matches('/').to_owned(),
            token,
            ca_pem: callback_ca_pem,
            deadline_unix_ms: None,
        }),
    }
}

async fn start(
    pctx: &ProxyContext,
    launcher: &ProcessLauncher,
    permit: &Permit,
    digest: &str,
    now: Timestamp,
) -> Result<Running, Started> {
    let ectx = &pctx.ectx;
    let namespace = permit.namespace().unwrap_or_default();
    let sealed = match ectx
        .config
        .launcher
        .sealed_envelopes(&ectx.ctx.client, &namespace, permit)
        .await
        .map_err(Started::Api)?
    {
        SealedEnvelopes::Found(s) => s,
        SealedEnvelopes::Unusable(e) => return Err(Started::Unusable(e.to_string())),
    };
    let mut overlaid = permit.clone();
    ectx.ctx.usage.overlay(&mut overlaid);
    let token = Zeroizing::new(hex::encode(rand::random::<[u8; 32]>()));
    let token_digest = token_digest(&token);
    let bundle = serve_bundle(
        &overlaid,
        digest,
        sealed,
        &ectx.config.callback_base_url,
        ectx.config.callback_ca_pem.clone(),
        token,
        now,
    );
    let label = format!("{namespace}/{}", permit.name_any());
    let child = launcher
        .launch_serve(&bundle, &label)
        .await
        .map_err(|e| Started::Unusable(e.to_string()))?;
    tracing::info!(permit = %label, pid = child.pid, endpoint = %child.endpoint, "proxy started");
    let key = (namespace, permit.name_any());
    let exited = child.exited;
    let running = Running {
        pid: child.pid,
        endpoint: child.endpoint,
        token_digest: token_digest.clone(),
        spec_digest: digest.to_owned(),
        started_at: now,
        exited: None,
    };
    // Known before it can end, so its end is never missed.
    pctx.lock().insert(key.clone(), running.clone());
    // When it ends, note how and look at its Permit again.
    let (tx, permit_ref) = (pctx.ended_tx.clone(), ObjectRef::from_obj(permit));
    let map = Arc::clone(&pctx.running);
    tokio::spawn(async move {
        let how = exited.await.unwrap_or((None, String::new()));
        if let Some(r) = map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
            .filter(|r| r.token_digest == token_digest)
        {
            r.exited = Some(how);
        }
        let _ = tx.send(permit_ref);
    });
    Ok(running)
}

/// The proxy controller over `api`, until `shutdown`; every proxy process it runs is stopped
/// then (proxy Pods keep running: the next operator, or leader, adopts them).
pub async fn run_proxy_controller(
    api: Api<Permit>,
    pctx: Arc<ProxyContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ended = pctx
        .ended_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let pods: Option<Api<Pod>> = matches!(pctx.ectx.config.launcher, Launcher::Pod(_)).then(|| {
        let client = api.clone().into_client();
        match api.namespace() {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        }
    });
    let (store, stream) = crate::cache::lean_watch(api);
    let mut controller = Controller::for_stream(stream, store).graceful_shutdown_on(shutdown);
    if let Some(pods) = pods {
        // A proxy Pod's changes (scheduled, ready, ended) wake its Permit; the reconcile reads
        // the Pod itself, so a store that lags never makes it start a second one.
        let (_, trigger) = crate::cache::lean_watch_with(
            pods,
            kube::runtime::watcher::Config::default().labels(LABEL_PROXY),
        );
        controller = controller.owns_stream(trigger);
    }
    if let Some(ended) = ended {
        controller = controller.reconcile_on(tokio_stream_from(ended));
    }
    controller
        .run(
            reconcile,
            |permit, error, pctx: Arc<ProxyContext>| {
                let delay = pctx.ectx.ctx.failure_backoff(&format!(
                    "proxy/{}/{}",
                    permit.namespace().unwrap_or_default(),
                    permit.name_any()
                ));
                tracing::warn!(error = %error, retry_in = ?delay, "proxy reconcile failed");
                Action::requeue(delay)
            },
            pctx.clone(),
        )
        .for_each(|_| async {})
        .await;
    let stopped = pctx.stop_all();
    if !stopped.is_empty() {
        tracing::info!(count = stopped.len(), "stopped the credential proxies");
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth3_crds::{Approval, ApprovalDecision, ApprovalVia, PermitStatus};

    const DIGEST: &str = "sha256:ab";

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn permit(enabled: bool, phase: Option<PermitPhase>, proxy: Option<ProxyStatus>) -> Permit {
        let spec = serde_json::from_value(serde_json::json!({
            "description": "d",
            "capabilities": [{"name": "api", "baseUrl": "https://api.example", "paths": ["/x"],
                "methods": ["GET"]}],
            "proxy": {"enabled": enabled, "callers": ["u"]}
        }))
        .expect("spec");
        let mut p = Permit::new("p", spec);
        p.status = Some(PermitStatus {
            phase,
            spec_digest: Some(DIGEST.into()),
            approval: Some(Approval {
                decision: ApprovalDecision::Approved,
                by: "owner".into(),
                via: ApprovalVia::Kubectl,
                at: Time(at(0)),
                expires_at: Some(Time(at(3600))),
                spec_digest: DIGEST.into(),
                reason: None,
            }),
            proxy,
            ..PermitStatus::default()
        });
        p
    }

    fn stopped(reason: &str, stopped_at: i64) -> ProxyStatus {
        let mut s = stopped_status(None, reason, "m", at(stopped_at));
        s.spec_digest = Some(DIGEST.into());
        s
    }

    fn reason_of(w: &Want) -> Option<&'static str> {
        match w {
            Want::Stop { reason, .. } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn a_proxy_runs_only_while_the_approval_holds() {
        let run = Want::Run {
            digest: DIGEST.into(),
        };
        assert_eq!(
            wanted(&permit(true, Some(PermitPhase::Approved), None), at(10)),
            run
        );
        assert_eq!(
            wanted(&permit(false, Some(PermitPhase::Approved), None), at(10)),
            Want::Nothing,
            "never asked for: nothing to do or show"
        );
        let was = Some(ready_status(&Running {
            pid: 1,
            endpoint: "http://127.0.0.1:1".into(),
            token_digest: "t".into(),
            spec_digest: DIGEST.into(),
            started_at: at(1),
            exited: None,
        }));
        for (enabled, phase, reason) in [
            (false, Some(PermitPhase::Approved), reason::DISABLED),
            (true, Some(PermitPhase::Revoked), reason::REVOKED),
            (true, Some(PermitPhase::Expired), reason::EXPIRED),
            (true, Some(PermitPhase::Denied), reason::DENIED),
            (true, Some(PermitPhase::Pending), reason::NOT_APPROVED),
            (true, None, reason::NOT_APPROVED),
        ] {
            let w = wanted(&permit(enabled, phase, was.clone()), at(10));
            assert_eq!(reason_of(&w), Some(reason), "{phase:?} {enabled}");
        }
        // Past the expiry, even before the Permit controller moved the phase.
        let w = wanted(&permit(true, Some(PermitPhase::Approved), None), at(3600));
        assert_eq!(reason_of(&w), Some(reason::EXPIRED));
        // A spec changed after the approval.
        let mut changed = permit(true, Some(PermitPhase::Approved), None);
        changed.status.as_mut().expect("status").spec_digest = Some("sha256:cd".into());
        assert_eq!(
            reason_of(&wanted(&changed, at(10))),
            Some(reason::NOT_APPROVED)
        );
    }

    #[test]
    fn an_idle_proxy_waits_for_a_wake_later_than_its_stop_and_a_failed_one_for_the_retry() {
        let idle = permit(
            true,
            Some(PermitPhase::Approved),
            Some(stopped(reason::IDLE, 100)),
        );
        assert_eq!(reason_of(&wanted(&idle, at(1000))), Some(reason::IDLE));
        let mut woken = idle.clone();
        woken
            .annotations_mut()
            .insert(ANNOTATION_PROXY_WAKE.into(), at(101).to_string());
        assert!(matches!(wanted(&woken, at(102)), Want::Run { .. }));
        let mut stale = idle.clone();
        stale
            .annotations_mut()
            .insert(ANNOTATION_PROXY_WAKE.into(), at(99).to_string());
        assert_eq!(reason_of(&wanted(&stale, at(102))), Some(reason::IDLE));
        let mut junk = idle;
        junk.annotations_mut()
            .insert(ANNOTATION_PROXY_WAKE.into(), "soon".into());
        assert_eq!(reason_of(&wanted(&junk, at(102))), Some(reason::IDLE));

        let failed = permit(
            true,
            Some(PermitPhase::Approved),
            Some(stopped(reason::FAILED, 100)),
        );
        assert_eq!(reason_of(&wanted(&failed, at(110))), Some(reason::FAILED));
        assert!(matches!(wanted(&failed, at(131)), Want::Run { .. }));
        // Stopped by a revocation, then approved again: runs at once.
        let again = permit(
            true,
            Some(PermitPhase::Approved),
            Some(stopped(reason::REVOKED, 100)),
        );
        assert!(matches!(wanted(&again, at(101)), Want::Run { .. }));
    }

    #[test]
    fn an_ended_proxy_says_why() {
        assert_eq!(exit_reason(Some(i32::from(EXIT_IDLE)), "").0, reason::IDLE);
        assert_eq!(
            exit_reason(Some(i32::from(EXIT_EXPIRED)), "").0,
            reason::EXPIRED
        );
        let (why, message) = exit_reason(Some(1), "error: unsealing API_TOKEN: wrong key");
        assert_eq!(why, reason::FAILED);
        assert_eq!(
            message,
            "the proxy ended on its own (exit status 1): unsealing API_TOKEN: wrong key"
        );
        assert!(exit_reason(None, "").1.contains("a signal"));
    }

    #[test]
    fn the_status_patch_clears_what_a_stopped_proxy_no_longer_has() {
        let patch = status_patch(&stopped(reason::REVOKED, 1));
        let proxy = &patch["proxy"];
        assert_eq!(proxy["phase"], "Stopped");
        assert!(proxy["endpoint"].is_null() && proxy["tokenDigest"].is_null());
        assert!(proxy.as_object().expect("object").contains_key("endpoint"));
    }
}
