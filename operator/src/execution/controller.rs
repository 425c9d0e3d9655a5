//! The Execution controller: admits an Execution against its Permit, launches the runner once,
//! times it out if no result arrives, and garbage-collects finished Executions after a TTL.
//!
//! Reconcile shape: observe (the Execution, its Permit) -> decide (pure [`admit`], phase
//! rules) -> act -> patch status. Every status write is a merge patch guarded by the
//! resourceVersion the decision was made on, so two operators (or an operator and a runner's
//! callback) can never both win: the **launch lock** is the write that moves the Execution to
//! `Running` with a launch record, and it happens *before* the runner is started. A restart
//! after that write finds `Running` and never launches again; if the runner then never
//! reports, the Execution ends `TimedOut` at its deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use oauth3_crds::constants::{
    LABEL_EXECUTION, SEALED_SECRET_KEY, SEALED_SECRET_TYPE, secret_object_name,
};
use oauth3_crds::{Execution, ExecutionPhase, Permit, TrustLevel};
use oauth3_sandbox_runner::bundle::SealedSecretRef;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::Context;
use crate::callback::token_digest;
use crate::execution::admission::{Admission, admit};
use crate::execution::bundle::{CallbackTarget, build_bundle};
use crate::launcher::pod::{
    PodLaunchConfig, desired_network_policy, desired_pod, pod_outcome, pod_waiting, run_object_name,
};
use crate::launcher::process::ProcessLauncher;
use crate::launcher::{LaunchError, Launched};
use crate::metrics::Metrics;
use crate::usage::UsageDelta;
use oauth3_crds::constants::FIELD_MANAGER;
use oauth3_sandbox_runner::bundle::Bundle;

/// How often an Execution waiting for code approval is looked at again.
pub const AWAITING_RECHECK: Duration = Duration::from_secs(5);

/// Which launcher runs the sandbox.
#[derive(Debug, Clone)]
pub enum LauncherKind {
    /// A local child process (development, tests, `make demo`).
    Process(ProcessLauncher),
    /// A confidential-container Pod per Execution (see [`crate::launcher::pod`]).
    Pod(Box<PodLaunchConfig>),
}

/// Settings of the Execution controller.
#[derive(Debug, Clone)]
pub struct ExecutionConfig {
    /// The launcher.
    pub launcher: LauncherKind,
    /// Base URL runners POST results to (the callback server), e.g. `http://127.0.0.1:8443`.
    pub callback_base_url: String,
    /// PEM certificates runners trust for the callback only (when it serves HTTPS with a
    /// certificate outside the web PKI roots built into the runner).
    pub callback_ca_pem: Option<String>,
    /// Added to `timeoutSeconds` for the operator's own deadline.
    pub deadline_grace: Duration,
    /// Finished Executions are deleted this long after completion.
    pub ttl: Duration,
}

/// Context of the Execution controller.
pub struct ExecutionContext {
    /// Shared operator context.
    pub ctx: Arc<Context>,
    /// Settings.
    pub config: ExecutionConfig,
    /// Metrics (launch latency, reconciles, phase counts).
    pub metrics: Arc<Metrics>,
}

/// Why an Execution reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    /// A Kubernetes API call failed.
    #[error("{step} for Execution {key}: {source}")]
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

fn key(exec: &Execution) -> String {
    format!(
        "{}/{}",
        exec.namespace().unwrap_or_default(),
        exec.name_any()
    )
}

/// Maps a failed API call during `step` on `exec` to [`ExecutionError::Api`].
fn api_error(step: &'static str, exec: &Execution) -> impl FnOnce(kube::Error) -> ExecutionError {
    let key = key(exec);
    move |source| ExecutionError::Api { step, key, source }
}

fn to_std(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// Outcome of a guarded status write.
enum Write {
    Done,
    /// The object changed since it was read: someone else decided; look again.
    Conflict,
}

async fn write_status(
    api: &Api<Execution>,
    exec: &Execution,
    status: Value,
    step: &'static str,
) -> Result<Write, ExecutionError> {
    let patch = json!({
        "metadata": {"resourceVersion": exec.resource_version()},
        "status": status,
    });
    match api
        .patch_status(
            &exec.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(Write::Done),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Write::Conflict),
        Err(source) => Err(api_error(step, exec)(source)),
    }
}

async fn publish(ctx: &Context, exec: &Execution, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: reason.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &exec.object_ref(&())).await {
        tracing::warn!(execution = %key(exec), error = %e, "publishing event");
    }
}

pub(crate) fn terminal_status(
    phase: ExecutionPhase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Value {
    json!({
        "phase": phase,
        "reason": reason,
        "message": message,
        "completionTime": Time(now),
        "observedGeneration": generation,
        "conditions": [{
            "type": "Completed", "status": "True", "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": Time(now),
        }],
    })
}

/// Reconciles one Execution.
///
/// # Errors
/// [`ExecutionError`] naming the failed step; retried with backoff.
pub async fn reconcile(
    exec: Arc<Execution>,
    ectx: Arc<ExecutionContext>,
) -> Result<Action, ExecutionError> {
    let ctx = &ectx.ctx;
    let config = &ectx.config;
    let namespace = exec.namespace().unwrap_or_default();
    let api: Api<Execution> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = ctx.now();
    let status = exec.status.clone().unwrap_or_default();
    match status.phase {
        Some(phase) if phase.is_terminal() => {
            let done = status.completion_time.map_or(now, |t| t.0);
            let ttl = SignedDuration::try_from(config.ttl).unwrap_or(SignedDuration::MAX);
            let expiry = done.checked_add(ttl).unwrap_or(Timestamp::MAX);
            if now >= expiry {
                match api.delete(&exec.name_any(), &DeleteParams::default()).await {
                    Ok(_) => tracing::info!(execution = %key(&exec), "deleted after its TTL"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(api_error("deleting after TTL", &exec)(source)),
                }
                return Ok(Action::await_change());
            }
            Ok(Action::requeue(to_std(expiry.duration_since(now))))
        }
        Some(ExecutionPhase::Running) => {
            let deadline = status.launch.as_ref().map_or(now, |l| l.deadline.0);
            let in_pod = status.launch.as_ref().is_some_and(|l| l.launcher == "pod");
            if in_pod {
                match end_if_pod_finished(&exec, ctx, &api, now).await {
                    Ok(Some(action)) => return Ok(action),
                    Ok(None) => {}
                    // Not seeing the Pod (RBAC without pods get/watch, API trouble) must not
                    // keep the deadline from ending the run.
                    Err(e) => {
                        tracing::warn!(execution = %key(&exec), error = %e, "observing the sandbox Pod; the deadline still applies");
                    }
                }
            }
            if now < deadline {
                return Ok(Action::requeue(to_std(deadline.duration_since(now))));
            }
            let mut message =
                "no result arrived before the deadline (timeoutSeconds plus grace)".to_owned();
            if status.reason.as_deref() == Some("SandboxWaiting")
                && let Some(waiting) = status.message.as_deref()
            {
                message.push_str(&format!("; last seen: {waiting}"));
            }
            let message = message.as_str();
            let s = terminal_status(
                ExecutionPhase::TimedOut,
                "DeadlineExceeded",
                message,
                exec.metadata.generation,
                now,
            );
            if let Write::Done = write_status(&api, &exec, s, "recording the timeout").await? {
                publish(
                    ctx,
                    &exec,
                    EventType::Warning,
                    "TimedOut",
                    message.to_owned(),
                )
                .await;
                cleanup_pod(&ctx.client, &exec).await;
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        _ => admit_and_launch(&exec, &ectx, &api, now).await,
    }
}

/// Ends a `Running` Execution whose sandbox Pod finished without reporting (see
/// [`pod_outcome`]): status written (guarded: a result that raced in wins), a Warning Event,
/// the Pod and its bundle Secret deleted. `None` while the Pod may still report; if it is stuck
/// before running (see [`pod_waiting`]) the status message and a Warning Event say why.
async fn end_if_pod_finished(
    exec: &Execution,
    ctx: &Context,
    api: &Api<Execution>,
    now: Timestamp,
) -> Result<Option<Action>, ExecutionError> {
    let namespace = exec.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod = pods
        .get_opt(&run_object_name(&exec.name_any()))
        .await
        .map_err(api_error("reading the sandbox Pod", exec))?;
    if let Some(waiting) = pod.as_ref().and_then(pod_waiting) {
        // Still Running, but say why nothing runs yet (once per change of words).
        let status = exec.status.clone().unwrap_or_default();
        if status.message.as_deref() != Some(waiting.as_str()) {
            let s = json!({"reason": "SandboxWaiting", "message": waiting});
            if let Write::Done = write_status(api, exec, s, "noting the waiting sandbox").await? {
                publish(ctx, exec, EventType::Warning, "SandboxWaiting", waiting).await;
            }
        }
        return Ok(None);
    }
    let Some((phase, reason, message)) = pod.as_ref().and_then(pod_outcome) else {
        return Ok(None);
    };
    let s = terminal_status(phase, reason, &message, exec.metadata.generation, now);
    if let Write::Done = write_status(api, exec, s, "recording the sandbox's end").await? {
        publish(ctx, exec, EventType::Warning, reason, message).await;
        cleanup_pod(&ctx.client, exec).await;
    }
    Ok(Some(Action::requeue(Duration::from_secs(1))))
}

/// Ends an Execution whose runner process exited while it is still `Running` under the launch
/// with `digest` (a runner answers the callback before it exits, so there will be no result):
/// `Failed` (`RunnerExited`), guarded, with a Warning Event. Best effort: otherwise the
/// deadline ends it.
async fn end_if_runner_exited(ctx: &Context, exec: &Execution, digest: &str, message: String) {
    let api: Api<Execution> =
        Api::namespaced(ctx.client.clone(), &exec.namespace().unwrap_or_default());
    let Ok(Some(current)) = api.get_opt(&exec.name_any()).await else {
        return;
    };
    let status = current.status.clone().unwrap_or_default();
    let same_launch = status
        .launch
        .as_ref()
        .is_some_and(|l| l.token_digest == digest);
    if status.phase != Some(ExecutionPhase::Running) || !same_launch {
        return;
    }
    let s = terminal_status(
        ExecutionPhase::Failed,
        "RunnerExited",
        &message,
        current.metadata.generation,
        ctx.now(),
    );
    match write_status(&api, &current, s, "recording the runner's exit").await {
        Ok(Write::Done) => {
            publish(ctx, &current, EventType::Warning, "RunnerExited", message).await;
        }
        Ok(Write::Conflict) => {}
        Err(e) => tracing::warn!(execution = %key(exec), error = %e, "recording the runner's exit"),
    }
}

async fn admit_and_launch(
    exec: &Execution,
    ectx: &ExecutionContext,
    api: &Api<Execution>,
    now: Timestamp,
) -> Result<Action, ExecutionError> {
    let ctx = &ectx.ctx;
    let namespace = exec.namespace().unwrap_or_default();
    let permits: Api<Permit> = Api::namespaced(ctx.client.clone(), &namespace);
    let permit = permits
        .get_opt(&exec.spec.permit_ref)
        .await
        .map_err(api_error("reading the Permit", exec))?;
    // Admission sees the usage as it will be once the ledger has written it (a run that just
    // ended may have used the rate budget up); reservations work on the Permit as stored.
    let seen = permit.clone().map(|mut p| {
        ctx.usage.overlay(&mut p);
        p
    });
    match admit(exec, seen.as_ref(), now) {
        Admission::Refuse { reason, message } => {
            let s = terminal_status(
                ExecutionPhase::Denied,
                reason,
                &message,
                exec.metadata.generation,
                now,
            );
            if let Write::Done = write_status(api, exec, s, "recording the refusal").await? {
                publish(ctx, exec, EventType::Warning, reason, message).await;
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Admission::AwaitApproval { code_digest } => {
            let status = exec.status.clone().unwrap_or_default();
            if status.phase != Some(ExecutionPhase::AwaitingApproval) {
                let message = format!("waiting for the owner to trust code {code_digest}");
                let s = json!({"phase": "AwaitingApproval", "reason": "CodeNotTrusted",
                    "message": message, "codeDigest": code_digest,
                    "observedGeneration": exec.metadata.generation});
                if let Write::Done =
                    write_status(api, exec, s, "recording AwaitingApproval").await?
                {
                    publish(ctx, exec, EventType::Normal, "AwaitingApproval", message).await;
                }
            }
            Ok(Action::requeue(AWAITING_RECHECK))
        }
        Admission::Launch {
            permit_digest,
            code_digest,
        } => {
            let Some(permit) = permit else {
                return Ok(Action::requeue(Duration::from_secs(1)));
            };
            launch(exec, &permit, &permit_digest, &code_digest, ectx, api, now).await
        }
    }
}

/// Reads the envelopes (ciphertext) of the Permit's sealed Secrets.
async fn sealed_envelopes(
    ctx: &Context,
    namespace: &str,
    permit: &Permit,
) -> Result<Vec<SealedSecretRef>, String> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut out = Vec::new();
    for name in &permit.spec.secrets {
        let object = secret_object_name(name);
        let secret = secrets
            .get_opt(&object)
            .await
            .map_err(|e| format!("reading Secret {object}: {e}"))?
            .ok_or_else(|| format!(
                "sealed Secret {object} (for {name}) not found in namespace {namespace}; create it with `kubectl oauth3 seal {name}`"
            ))?;
        if secret.type_.as_deref() != Some(SEALED_SECRET_TYPE) {
            return Err(format!(
                "Secret {object} is not of type {SEALED_SECRET_TYPE}; refusing to use it"
            ));
        }
        let envelope = secret
            .data
            .as_ref()
            .and_then(|d| d.get(SEALED_SECRET_KEY))
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
            .ok_or_else(|| format!("Secret {object} has no `{SEALED_SECRET_KEY}` key"))?;
        out.push(SealedSecretRef {
            name: name.clone(),
            envelope,
        });
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn launch(
    exec: &Execution,
    permit: &Permit,
    permit_digest: &str,
    code_digest: &str,
    ectx: &ExecutionContext,
    api: &Api<Execution>,
    now: Timestamp,
) -> Result<Action, ExecutionError> {
    let ctx = &ectx.ctx;
    let config = &ectx.config;
    let namespace = exec.namespace().unwrap_or_default();
    let generation = exec.metadata.generation;
    let sealed = match &config.launcher {
        LauncherKind::Process(_) => match sealed_envelopes(ctx, &namespace, permit).await {
            Ok(s) => s,
            Err(message) => {
                let s = terminal_status(
                    ExecutionPhase::Failed,
                    "SealedSecretMissing",
                    &message,
                    generation,
                    now,
                );
                if let Write::Done =
                    write_status(api, exec, s, "recording a missing secret").await?
                {
                    publish(
                        ctx,
                        exec,
                        EventType::Warning,
                        "SealedSecretMissing",
                        message,
                    )
                    .await;
                }
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
        },
        // The pod launcher projects the sealed Secrets into the Pod; the kubelet fails the Pod
        // (and so the run) if one is missing.
        LauncherKind::Pod(_) => Vec::new(),
    };
    let strict = needs_reservation(permit, code_digest);
    if strict && !reserve_execution(ctx, &namespace, permit, code_digest).await? {
        let message = format!(
            "Permit {} allows {} Executions per approval and all have been used",
            permit.name_any(),
            permit.spec.max_executions.unwrap_or_default()
        );
        let s = terminal_status(
            ExecutionPhase::Denied,
            "ExecutionBudgetExhausted",
            &message,
            generation,
            now,
        );
        if let Write::Done = write_status(api, exec, s, "recording the refusal").await? {
            publish(
                ctx,
                exec,
                EventType::Warning,
                "ExecutionBudgetExhausted",
                message,
            )
            .await;
        }
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let token = Zeroizing::new(hex::encode(rand::random::<[u8; 32]>()));
    let digest = token_digest(&token);
    let timeout = SignedDuration::from_secs(i64::from(exec.spec.timeout_seconds));
    let grace = SignedDuration::try_from(config.deadline_grace).unwrap_or(SignedDuration::ZERO);
    let deadline = now.checked_add(timeout + grace).unwrap_or(Timestamp::MAX);
    let (launcher, pod_name) = match &config.launcher {
        LauncherKind::Process(_) => ("process", None),
        LauncherKind::Pod(_) => (
            "pod",
            Some(format!("pod/{}", run_object_name(&exec.name_any()))),
        ),
    };
    // The launch lock: only the writer that moves the Execution to Running launches. It is the
    // only write of a launch (the handle of a Pod is known before it exists; a process id is
    // logged and put in the Launched Event): each write per Execution costs the API server.
    let running = json!({
        "phase": "Running", "reason": "Launched",
        "message": format!("the runner is started by the {launcher} launcher; its result is awaited until {deadline}"),
        "permitDigest": permit_digest, "codeDigest": code_digest, "startTime": Time(now),
        "observedGeneration": generation, "podName": pod_name,
        "launch": {"launcher": launcher, "tokenDigest": digest,
                   "launchedAt": Time(now), "deadline": Time(deadline)},
    });
    match api
        .patch_status(
            &exec.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({
                "metadata": {"resourceVersion": exec.resource_version()},
                "status": running,
            })),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        Err(source) => return Err(api_error("recording the launch", exec)(source)),
    };
    if !strict {
        ctx.usage.record(
            &namespace,
            &permit.name_any(),
            UsageDelta {
                executions: 1,
                ..UsageDelta::default()
            },
        );
    }
    let callback = CallbackTarget {
        base_url: config.callback_base_url.clone(),
        ca_pem: config.callback_ca_pem.clone(),
        token,
    };
    // The runner starts from the rate budget the previous runs left, including what is not
    // written to the Permit yet.
    let mut counted = permit.clone();
    ctx.usage.overlay(&mut counted);
    let bundle = build_bundle(exec, &counted, permit_digest, sealed, Some(&callback), now);
    let launched = match &config.launcher {
        LauncherKind::Process(p) => p.launch_watched(&bundle).await.map(|(launched, exited)| {
            let (ctx, exec, digest, handle) = (
                ctx.clone(),
                exec.clone(),
                digest.clone(),
                launched.handle.clone(),
            );
            tokio::spawn(async move {
                if let Ok(how) = exited.await {
                    let message =
                        format!("runner {handle} exited ({how}) without reporting a result");
                    end_if_runner_exited(&ctx, &exec, &digest, message).await;
                }
            });
            launched
        }),
        LauncherKind::Pod(cfg) => launch_pod(ctx, exec, permit, cfg, &bundle).await,
    };
    let name = exec.name_any();
    match launched {
        Ok(l) => {
            let latency = exec
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|c| now.duration_since(c.0).as_secs_f64())
                .unwrap_or_default();
            ectx.metrics
                .observe_launch_latency(Duration::from_secs_f64(latency.max(0.0)));
            tracing::info!(execution = %key(exec), handle = %l.handle, latency_s = latency, "launched");
            publish(
                ctx,
                exec,
                EventType::Normal,
                "Launched",
                format!("runner started ({})", l.handle),
            )
            .await;
        }
        Err(e) => {
            let message = e.to_string();
            let fresh = api
                .get(&name)
                .await
                .map_err(api_error("re-reading after a failed launch", exec))?;
            let s = terminal_status(
                ExecutionPhase::Failed,
                "LaunchFailed",
                &message,
                generation,
                now,
            );
            if let Write::Done = write_status(api, &fresh, s, "recording the failed launch").await?
            {
                publish(ctx, exec, EventType::Warning, "LaunchFailed", message).await;
            }
        }
    }
    Ok(Action::requeue(to_std(deadline.duration_since(now))))
}

/// Applies the bundle Secret, the NetworkPolicy and the Pod of an Execution (server-side
/// apply, one field manager; all owned by the Execution).
async fn launch_pod(
    ctx: &Context,
    exec: &Execution,
    permit: &Permit,
    config: &PodLaunchConfig,
    bundle: &Bundle,
) -> Result<Launched, LaunchError> {
    let namespace = exec.namespace().unwrap_or_default();
    let name = run_object_name(&exec.name_any());
    let pod = desired_pod(exec, permit, config).map_err(|e| LaunchError::Pod(e.to_string()))?;
    let policy =
        desired_network_policy(exec, config).map_err(|e| LaunchError::Pod(e.to_string()))?;
    let owner = pod.metadata.owner_references.clone();
    let body = serde_json::to_string(bundle)
        .map_err(|e| LaunchError::Pod(format!("serialising the bundle: {e}")))?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            owner_references: owner,
            labels: pod.metadata.labels.clone(),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some([(crate::launcher::pod::BUNDLE_FILE.to_owned(), body)].into()),
        ..Default::default()
    };
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .patch(&name, &pp, &Patch::Apply(&secret))
        .await
        .map_err(|e| LaunchError::Pod(format!("applying the bundle Secret {name}: {e}")))?;
    Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
        ctx.client.clone(),
        &namespace,
    )
    .patch(&name, &pp, &Patch::Apply(&policy))
    .await
    .map_err(|e| LaunchError::Pod(format!("applying the NetworkPolicy {name}: {e}")))?;
    Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .patch(&name, &pp, &Patch::Apply(&pod))
        .await
        .map_err(|e| LaunchError::Pod(format!("applying the Pod {name}: {e}")))?;
    Ok(Launched {
        handle: format!("pod/{name}"),
    })
}

/// Deletes the Pod and the bundle Secret (which holds the spent callback token) of a finished
/// pod-launched Execution; the NetworkPolicy goes with the Execution (owner reference).
pub async fn cleanup_pod(client: &kube::Client, exec: &Execution) {
    let uses_pod = exec
        .status
        .as_ref()
        .and_then(|s| s.launch.as_ref())
        .is_some_and(|l| l.launcher == "pod");
    if !uses_pod {
        return;
    }
    let namespace = exec.namespace().unwrap_or_default();
    let name = run_object_name(&exec.name_any());
    let dp = DeleteParams::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for result in [
        pods.delete(&name, &dp).await.map(|_| ()),
        secrets.delete(&name, &dp).await.map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(execution = %key(exec), error = %e, "cleaning up the sandbox"),
        }
    }
}

/// Whether launching under `permit` must first reserve budget on it: when `maxExecutions` is
/// set, or a `once` code trust has to be consumed. Those are limits, so they are enforced with
/// a serialised counter (the Permit's resourceVersion); otherwise the count is informational.
fn needs_reservation(permit: &Permit, code_digest: &str) -> bool {
    permit.spec.max_executions.is_some()
        || permit.status.as_ref().is_some_and(|s| {
            s.trusted_code
                .iter()
                .any(|t| t.level == TrustLevel::Once && t.code_digest == code_digest)
        })
}

/// Counts one Execution on the Permit (`usage.executions`) and consumes a matching `once`
/// code trust, guarded by the Permit's resourceVersion: conflicts are retried with fresh reads
/// and the budget is re-checked each time. `Ok(false)` means the budget is exhausted.
async fn reserve_execution(
    ctx: &Context,
    namespace: &str,
    permit: &Permit,
    code_digest: &str,
) -> Result<bool, ExecutionError> {
    let api: Api<Permit> = Api::namespaced(ctx.client.clone(), namespace);
    let name = permit.name_any();
    let mut current = permit.clone();
    let attempts = 50;
    let err = |source| ExecutionError::Api {
        step: "reserving an Execution on the Permit",
        key: format!("{namespace}/{name}"),
        source,
    };
    for attempt in 0..attempts {
        let status = current.status.clone().unwrap_or_default();
        let usage = status.usage.clone().unwrap_or_default();
        if let Some(max) = current.spec.max_executions
            && usage.executions >= max
        {
            return Ok(false);
        }
        let mut patch = json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "status": {"usage": {"executions": usage.executions + 1, "calls": usage.calls,
                "rateBudget": usage.rate_budget, "at": usage.at}},
        });
        let remaining: Vec<_> = status
            .trusted_code
            .iter()
            .filter(|t| !(t.level == TrustLevel::Once && t.code_digest == code_digest))
            .cloned()
            .collect();
        if remaining.len() != status.trusted_code.len() {
            patch["status"]["trustedCode"] = json!(remaining);
        }
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt + 1 < attempts => {
                tokio::time::sleep(Duration::from_millis(u64::from(rand::random::<u8>() % 20)))
                    .await;
                current = api.get(&name).await.map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
    }
    Ok(true)
}

/// Retry policy: exponential backoff per Execution.
pub fn error_policy(
    exec: Arc<Execution>,
    error: &ExecutionError,
    ectx: Arc<ExecutionContext>,
) -> Action {
    let delay = ectx.ctx.failure_backoff(&key(&exec));
    tracing::warn!(execution = %key(&exec), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The Execution controller over `api`, as a stream of reconcile results. Each reconcile is
/// counted and timed in `ectx.metrics`; the phase gauge is refreshed from the controller's
/// cache every few seconds while the stream runs.
pub fn execution_controller(
    api: Api<Execution>,
    ectx: Arc<ExecutionContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Stream<
    Item = Result<
        (ObjectRef<Execution>, Action),
        controller::Error<ExecutionError, watcher::Error>,
    >,
> {
    let pods: Option<Api<Pod>> = matches!(ectx.config.launcher, LauncherKind::Pod(_)).then(|| {
        let client = api.clone().into_client();
        match api.namespace() {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        }
    });
    let (store, stream) = crate::cache::lean_watch(api);
    let mut controller = Controller::for_stream(stream, store.clone());
    if let Some(pods) = pods {
        // A sandbox Pod's changes wake its Execution, so a Pod the node ended without a result
        // ends the Execution at once instead of at its deadline.
        controller = controller.owns(pods, watcher::Config::default().labels(LABEL_EXECUTION));
    }
    let metrics = ectx.metrics.clone();
    let counter = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let mut counts = std::collections::BTreeMap::<String, i64>::new();
            for phase in [
                "Pending",
                "AwaitingApproval",
                "Running",
                "Succeeded",
                "Failed",
                "Denied",
                "TimedOut",
            ] {
                counts.insert(phase.to_owned(), 0);
            }
            for e in store.state() {
                let phase = e
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .map_or("Pending".to_owned(), |p| format!("{p:?}"));
                *counts.entry(phase).or_default() += 1;
            }
            for (phase, n) in counts {
                metrics.set_executions(&phase, n);
            }
        }
    });
    controller
        .graceful_shutdown_on(async move {
            shutdown.await;
            counter.abort();
        })
        .run(
            |exec, ectx: Arc<ExecutionContext>| async move {
                let metrics = ectx.metrics.clone();
                metrics.instrument("execution", reconcile(exec, ectx)).await
            },
            error_policy,
            ectx,
        )
}

/// Runs the Execution controller over `api` until `shutdown` resolves.
pub async fn run_execution_controller(
    api: Api<Execution>,
    ectx: Arc<ExecutionContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    execution_controller(api, ectx, shutdown)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "execution controller");
            }
        })
        .await;
}
