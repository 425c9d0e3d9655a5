//! The Execution wing: the driver that admits an Execution against its Permit, launches the
//! runner once, ends it when its sandbox ends or its deadline passes, and deletes it after a
//! TTL; plus the result endpoint runners report to.
//!
//! Modules: [`decide`] (the next step, pure; admission), [`status`] (every status value, pure),
//! [`reserve`] (serialised budget reservations on the Permit), [`bundle`] (the run bundle,
//! pure), [`result`] (the result endpoint), [`credentials`] (oauth2 credentials written back
//! sealed, refresh leases across runs). Sandbox IO lives in [`crate::launcher`].
//!
//! Reconcile shape: observe (the Execution; its sandbox while Running; its Permit while
//! Pending) -> decide ([`decide::next_step`], [`decide::admit`]) -> act -> write status. Every
//! status write is guarded by the resourceVersion the decision was made on
//! ([`crate::status_write`]), so two operators (or an operator and a runner's result) can never
//! both win: the **launch lock** is the write that moves the Execution to `Running` with a
//! launch record, and it happens *before* the runner is started. A restart after that write
//! finds `Running` and never launches again; if the runner then never reports, the Execution
//! ends `TimedOut` at its deadline.

pub mod bundle;
pub mod credentials;
pub mod decide;
pub mod reserve;
pub mod result;
pub mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use oauth3_crds::constants::LABEL_EXECUTION;
use oauth3_crds::{Execution, ExecutionPhase, Permit};
use oauth3_protocol::callback::token_digest;
use zeroize::Zeroizing;

use crate::Context;
use crate::launcher::process::ProcessLauncher;
use crate::launcher::{self, ExitWatch, Launcher, Sandbox, SealedEnvelopes};
use crate::metrics::Metrics;
use crate::pool::Pick;
use crate::status_write::{Guarded, is_not_found, publish, write_status};
use crate::usage::UsageDelta;
use bundle::{CallbackTarget, build_bundle};
use decide::{Admission, Step, admit, next_step};
use oauth3_protocol::SealedSecretRef;
use status::{Ending, LaunchPlan};

/// How often an Execution waiting for code approval is looked at again.
pub const AWAITING_RECHECK: Duration = Duration::from_secs(5);

/// Settings of the Execution controller.
#[derive(Debug, Clone)]
pub struct ExecutionConfig {
    /// The launcher.
    pub launcher: Launcher,
    /// Base URL runners POST results to (the callback server), e.g. `http://127.0.0.1:8443`.
    pub callback_base_url: String,
    /// PEM certificates runners trust for the callback only (when it serves HTTPS with a
    /// certificate outside the web PKI roots built into the runner).
    pub callback_ca_pem: Option<String>,
    /// Added to `timeoutSeconds` for the operator's own deadline.
    pub deadline_grace: Duration,
    /// Finished Executions are deleted this long after completion.
    pub ttl: Duration,
    /// Whether SandboxPools run (`--sandbox-pools`, pod launcher only).
    pub pools: bool,
    /// How long a pool member has to check in (`--pool-check-in`).
    pub pool_check_in: Duration,
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
    /// Other writers kept changing the object.
    #[error("{step} for {key}: the object kept changing during {attempts} attempts")]
    Contended {
        /// What was being done.
        step: &'static str,
        /// namespace/name.
        key: String,
        /// How often it was tried.
        attempts: usize,
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

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// Ends `exec` (as read) with `ending`, guarded; on success a Warning Event and the sandbox
/// cleaned up. The one way the operator finishes an Execution without a result.
pub(crate) async fn end(
    ctx: &Context,
    api: &Api<Execution>,
    exec: &Execution,
    ending: &Ending,
    step: &'static str,
    field_manager: Option<&str>,
) -> Result<Guarded, ExecutionError> {
    let value = status::ended(exec, ending, ctx.now());
    let written = write_status(api, exec, &value, field_manager)
        .await
        .map_err(api_error(step, exec))?;
    if written.written() {
        publish(
            &ctx.recorder,
            exec,
            EventType::Warning,
            ending.reason.as_str(),
            ending.message.clone(),
        )
        .await;
        launcher::cleanup(&ctx.client, exec).await;
    }
    Ok(written)
}

/// Reconciles one Execution; `pods` is the controller's store of sandbox Pods (pod launcher).
///
/// # Errors
/// [`ExecutionError`] naming the failed step; retried with backoff.
pub async fn reconcile(
    exec: Arc<Execution>,
    ectx: Arc<ExecutionContext>,
    pods: Option<Store<Pod>>,
) -> Result<Action, ExecutionError> {
    let ctx = &ectx.ctx;
    let api: Api<Execution> =
        Api::namespaced(ctx.client.clone(), &exec.namespace().unwrap_or_default());
    let now = ctx.now();
    let running = exec.status.as_ref().and_then(|s| s.phase) == Some(ExecutionPhase::Running);
    let sandbox = if running {
        launcher::observe(pods.as_ref(), &exec)
    } else {
        Sandbox::Unobserved
    };
    recount_usage(ctx, &exec);
    match next_step(&exec, &sandbox, now, ectx.config.ttl) {
        Step::Delete => {
            match api.delete(&exec.name_any(), &DeleteParams::default()).await {
                Ok(_) => tracing::info!(execution = %key(&exec), "deleted after its TTL"),
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(api_error("deleting after TTL", &exec)(source)),
            }
            Ok(Action::await_change())
        }
        Step::KeepUntil(t) | Step::WaitUntil(t) => Ok(Action::requeue(until(now, t))),
        Step::NoteRunning { until: t } => {
            write_status(&api, &exec, &status::sandbox_running(t), None)
                .await
                .map_err(api_error("noting the running sandbox", &exec))?;
            Ok(Action::requeue(until(now, t)))
        }
        Step::NoteWaiting { message, until: t } => {
            let written = write_status(&api, &exec, &status::sandbox_waiting(&message), None)
                .await
                .map_err(api_error("noting the waiting sandbox", &exec))?;
            if written.written() {
                publish(
                    &ctx.recorder,
                    &*exec,
                    EventType::Warning,
                    status::Reason::SandboxWaiting.as_str(),
                    message,
                )
                .await;
            }
            Ok(Action::requeue(until(now, t)))
        }
        Step::End(ending) => {
            end(ctx, &api, &exec, &ending, "recording the end", None).await?;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Step::Admit => admit_and_launch(&exec, &ectx, &api, now).await,
    }
}

/// Counts the calls of a recorded result whose usage is not written yet (`usageCounted:
/// false`) and that no part of this process counts: what an operator that was killed between
/// recording a result and writing the Permit's usage left behind. The calls come off the
/// current rate budget.
fn recount_usage(ctx: &crate::Context, exec: &Execution) {
    let Some(status) = exec.status.as_ref() else {
        return;
    };
    let uid = exec.metadata.uid.as_deref().unwrap_or_default();
    if status.usage_counted != Some(false) || uid.is_empty() || !ctx.usage.claim(uid) {
        return;
    }
    tracing::info!(execution = %key(exec), calls = status.calls.len(), "counting the usage of a result recorded before a restart");
    result::record_usage(
        ctx,
        &exec.namespace().unwrap_or_default(),
        &exec.spec.permit_ref,
        &exec.name_any(),
        &status.calls,
        None,
    );
}

async fn admit_and_launch(
    exec: &Execution,
    ectx: &ExecutionContext,
    api: &Api<Execution>,
    now: Timestamp,
) -> Result<Action, ExecutionError> {
    let ctx = &ectx.ctx;
    let permits: Api<Permit> =
        Api::namespaced(ctx.client.clone(), &exec.namespace().unwrap_or_default());
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
            let ending = Ending::denied(reason, message);
            end(ctx, api, exec, &ending, "recording the refusal", None).await?;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        waiting @ (Admission::AwaitApproval { .. } | Admission::AwaitPermit { .. }) => {
            let (value, message) = match &waiting {
                Admission::AwaitPermit { code_digest } => (
                    status::awaiting_permit(exec, &exec.spec.permit_ref, code_digest),
                    status::awaiting_permit_message(&exec.spec.permit_ref),
                ),
                Admission::AwaitApproval { code_digest } => (
                    status::awaiting_approval(exec, code_digest),
                    status::awaiting_message(code_digest),
                ),
                _ => unreachable!("matched above"),
            };
            let current = exec.status.as_ref();
            let unchanged = current.and_then(|s| s.phase) == Some(ExecutionPhase::AwaitingApproval)
                && current.and_then(|s| s.reason.as_deref()) == value.reason.as_deref();
            if !unchanged {
                let written = write_status(api, exec, &value, None)
                    .await
                    .map_err(api_error("recording AwaitingApproval", exec))?;
                if written.written() {
                    publish(
                        &ctx.recorder,
                        exec,
                        EventType::Normal,
                        "AwaitingApproval",
                        message,
                    )
                    .await;
                }
            }
            Ok(Action::requeue(AWAITING_RECHECK))
        }
        Admission::Launch {
            permit_digest,
            code_digest,
        } => match permit {
            Some(permit) => launch(exec, &permit, permit_digest, code_digest, ectx, api, now).await,
            None => Ok(Action::requeue(Duration::from_secs(1))),
        },
    }
}

/// What a launch needs once it may go ahead: the envelopes for the bundle and whether a
/// reservation already counted it.
struct Cleared {
    sealed: Vec<SealedSecretRef>,
    reserved: bool,
}

/// Launches `exec` under `permit`: clear it (sealed envelopes, the reservation a limit needs),
/// build the bundle and the sandbox objects, take the launch lock, then start the runner.
///
/// With the pod launcher the bundle Secret and the egress policy are created concurrently with
/// the lock write (they start nothing: no Pod exists yet, and only the lock's winner creates
/// it); a launch that loses the lock takes back what it created. With the process launcher
/// the lock is written first and the runner started after it.
async fn launch(
    exec: &Execution,
    permit: &Permit,
    permit_digest: String,
    code_digest: String,
    ectx: &ExecutionContext,
    api: &Api<Execution>,
    now: Timestamp,
) -> Result<Action, ExecutionError> {
    let ctx = &ectx.ctx;
    let namespace = exec.namespace().unwrap_or_default();
    let token = Zeroizing::new(hex::encode(rand::random::<[u8; 32]>()));
    let mut plan = launch_plan(exec, &ectx.config, &token, permit_digest, code_digest, now);
    plan.require_attestation = permit.spec.require_attestation;
    // A pool member is picked (reserved in this operator) before anything is written; it is
    // claimed together with the launch lock, the bundle Secret and the egress policy, while its
    // sealed envelopes are read (a member has no projection: they go with its bundle on the
    // standby endpoint, never into a Secret). A claim that does not take falls back to a
    // fresh Pod.
    let member = match &ectx.config.launcher {
        Launcher::Pod(_) if ectx.config.pools => match ctx.pools.pick(&namespace) {
            Pick::Member(member) => Some(member),
            Pick::Miss { pool } => {
                plan.pool_miss = Some(pool);
                None
            }
            Pick::NoPool => None,
        },
        Launcher::Pod(_) | Launcher::Process(_) => None,
    };
    let forget = |member: &Option<crate::pool::Member>| {
        if let Some(m) = member {
            ctx.pools.forget(&m.namespace, &m.name);
        }
    };
    let cleared = match clear_launch(exec, permit, &plan.code_digest, ectx, api).await {
        Ok(Some(cleared)) => cleared,
        other => {
            forget(&member);
            other?;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    };
    if let Some(m) = &member {
        plan.pod_name = Some(format!("pod/{}", m.name));
        plan.pool = Some(m.pool.clone());
    }
    let prepared = prepare(
        exec,
        permit,
        &plan,
        token,
        cleared.sealed,
        member.as_ref().map(|m| m.name.as_str()),
        ectx,
        now,
    )
    .await;
    let run_for = Duration::from_secs(u64::try_from(exec.spec.timeout_seconds).unwrap_or(0))
        + ectx.config.deadline_grace;
    // The launch lock: only the writer that moves the Execution to Running launches. It is the
    // only write of a launch on the Execution (the handle of a Pod is known before it exists;
    // a process id is logged and put in the Launched Event): each write costs the API server.
    let running = status::running(exec, &plan, now);
    let lock = write_status(api, exec, &running, None);
    let mut on_member = None;
    let (locked, mut ready) = match prepared {
        Ok(Prepared::Pod(objects)) => {
            let claim = async {
                match &member {
                    Some(m) => Some((
                        crate::pool::claim(ctx, m, exec, run_for, now).await,
                        launcher::read_sealed_envelopes(
                            &ctx.client,
                            &namespace,
                            &permit.spec.secrets,
                        )
                        .await,
                    )),
                    None => None,
                }
            };
            let (locked, staging, claimed) = tokio::join!(lock, objects.stage(&ctx.client), claim);
            let claim_took = matches!(&claimed, Some((Ok(()), _)));
            if !matches!(locked, Ok(Guarded::Written)) {
                if let Ok(staged) = &staging {
                    objects.withdraw(&ctx.client, staged).await;
                }
                match (&member, claim_took) {
                    (Some(m), true) => crate::pool::retire(ctx, &m.namespace, &m.name).await,
                    _ => forget(&member),
                }
            }
            on_member = claimed;
            (locked, Ok(Ready::Pod { objects, staging }))
        }
        Ok(Prepared::Process { launcher, bundle }) => {
            (lock.await, Ok(Ready::Process { launcher, bundle }))
        }
        Err(refused) => (lock.await, Err(refused)),
    };
    match locked.map_err(api_error("recording the launch", exec))? {
        Guarded::Written => {}
        Guarded::Conflict | Guarded::Gone => {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
    }
    let mut envelopes = Vec::new();
    if let (Some(m), Some((claimed, sealed))) = (&member, on_member) {
        match (claimed, sealed) {
            (Ok(()), Ok(SealedEnvelopes::Found(found))) => envelopes = found,
            (Ok(()), Ok(SealedEnvelopes::Unusable(e))) => {
                let fresh = api
                    .get(&exec.name_any())
                    .await
                    .map_err(api_error("re-reading after a missing secret", exec))?;
                let ending = decide::sealed_secret_unusable(&e);
                end(
                    ctx,
                    api,
                    &fresh,
                    &ending,
                    "recording a missing secret",
                    None,
                )
                .await?;
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            (Ok(()), Err(e)) => {
                ready = Err(Refused::Launch(launcher::LaunchError::Spawn(format!(
                    "reading the sealed Secrets for pool member {}: {e}",
                    m.name
                ))));
            }
            (Err(e), _) => {
                tracing::info!(execution = %key(exec), error = %e, "pool claim did not take; starting a fresh Pod");
                forget(&member);
                plan.pod_name = ectx.config.launcher.pod_name(&exec.name_any());
                plan.pool = None;
                plan.pool_miss = Some(m.pool.clone());
                plan.pool_claim_failed = Some(e.reason());
                fall_back_to_fresh_pod(api, exec, &plan, now).await?;
                if let Ok(Ready::Pod { objects, .. }) = &mut ready {
                    objects.without_member();
                }
            }
        }
    }
    if !cleared.reserved {
        let delta = UsageDelta {
            executions: 1,
            ..UsageDelta::default()
        };
        ctx.usage.record(
            &exec.namespace().unwrap_or_default(),
            &permit.name_any(),
            delta,
        );
    }
    let deadline = plan.deadline;
    start_runner(exec, ready, &plan, envelopes, ectx, api, now).await?;
    Ok(Action::requeue(until(now, deadline)))
}

/// A launch built before its lock is taken.
enum Prepared {
    /// The process runner and the bundle it gets.
    Process {
        launcher: ProcessLauncher,
        bundle: Box<oauth3_protocol::Bundle>,
    },
    /// The sandbox Pod's objects (the bundle is in its Secret).
    Pod(Box<launcher::PodLaunch>),
}

/// A launch whose lock is taken, ready to start the runner.
enum Ready {
    /// The process runner and the bundle it gets.
    Process {
        launcher: ProcessLauncher,
        bundle: Box<oauth3_protocol::Bundle>,
    },
    /// The sandbox Pod's objects and how staging them went.
    Pod {
        objects: Box<launcher::PodLaunch>,
        staging: Result<launcher::Staging, launcher::LaunchError>,
    },
}

/// The bundle of a launch (from the rate budget the previous runs left, including what is not
/// written to the Permit yet) and, for the pod launcher, the sandbox objects; or why the runner
/// would refuse it (a bundle that does not validate: an object stored before the schema
/// refused it, say) or the sandbox cannot be built.
#[allow(clippy::too_many_arguments)]
async fn prepare(
    exec: &Execution,
    permit: &Permit,
    plan: &LaunchPlan,
    token: Zeroizing<String>,
    sealed: Vec<SealedSecretRef>,
    member: Option<&str>,
    ectx: &ExecutionContext,
    now: Timestamp,
) -> Result<Prepared, Refused> {
    let config = &ectx.config;
    let callback = CallbackTarget {
        base_url: config.callback_base_url.clone(),
        ca_pem: config.callback_ca_pem.clone(),
        token,
        deadline: plan.deadline,
    };
    let mut counted = permit.clone();
    ectx.ctx.usage.overlay(&mut counted);
    let bundle = build_bundle(
        exec,
        &counted,
        &plan.permit_digest,
        sealed,
        Some(&callback),
        now,
    );
    bundle.validate().map_err(Refused::Bundle)?;
    match &config.launcher {
        Launcher::Process(launcher) => Ok(Prepared::Process {
            launcher: launcher.clone(),
            bundle: Box::new(bundle),
        }),
        Launcher::Pod(pod) => {
            launcher::pod_launch(exec, permit, pod, &bundle, &plan.token_digest, member)
                .await
                .map(|objects| Prepared::Pod(Box::new(objects)))
                .map_err(Refused::Launch)
        }
    }
}

/// Whether `exec` may launch now: its sealed Secrets are usable (process runner) and, where a
/// limit needs it, a slot is reserved. `None` when it was ended instead (refused), or when its
/// Permit went away meanwhile (decided again at the next reconcile).
async fn clear_launch(
    exec: &Execution,
    permit: &Permit,
    code_digest: &str,
    ectx: &ExecutionContext,
    api: &Api<Execution>,
) -> Result<Option<Cleared>, ExecutionError> {
    let ctx = &ectx.ctx;
    let namespace = exec.namespace().unwrap_or_default();
    let sealed = match ectx
        .config
        .launcher
        .sealed_envelopes(&ctx.client, &namespace, permit)
        .await
        .map_err(api_error("reading the sealed Secrets", exec))?
    {
        SealedEnvelopes::Found(sealed) => sealed,
        SealedEnvelopes::Unusable(e) => {
            let ending = decide::sealed_secret_unusable(&e);
            end(ctx, api, exec, &ending, "recording a missing secret", None).await?;
            return Ok(None);
        }
    };
    let reserved = reserve::needs_reservation(permit, code_digest);
    if reserved {
        match reserve::reserve_execution(ctx, &namespace, permit, code_digest).await? {
            reserve::Reservation::Reserved => {}
            reserve::Reservation::Exhausted => {
                let ending = decide::budget_spent(permit);
                end(ctx, api, exec, &ending, "recording the refusal", None).await?;
                return Ok(None);
            }
            // Decided again at the next reconcile, where admission finds no Permit.
            reserve::Reservation::PermitGone => return Ok(None),
        }
    }
    Ok(Some(Cleared { sealed, reserved }))
}

/// The launch record of `exec` launched at `now` with `token` (pure).
fn launch_plan(
    exec: &Execution,
    config: &ExecutionConfig,
    token: &str,
    permit_digest: String,
    code_digest: String,
    now: Timestamp,
) -> LaunchPlan {
    let timeout = SignedDuration::from_secs(i64::from(exec.spec.timeout_seconds));
    let grace = SignedDuration::try_from(config.deadline_grace).unwrap_or(SignedDuration::ZERO);
    LaunchPlan {
        launcher: config.launcher.kind(),
        token_digest: token_digest(token),
        deadline: now.checked_add(timeout + grace).unwrap_or(Timestamp::MAX),
        pod_name: config.launcher.pod_name(&exec.name_any()),
        permit_digest,
        code_digest,
        require_attestation: None,
        pool: None,
        pool_miss: None,
        pool_claim_failed: None,
    }
}

/// Why a locked launch did not start a runner.
enum Refused {
    /// The bundle does not validate.
    Bundle(oauth3_protocol::BundleError),
    /// The launcher failed.
    Launch(crate::launcher::LaunchError),
}

/// Starts the runner of a locked launch and publishes the `Launched` Event; a launch that
/// fails ends the Execution.
async fn start_runner(
    exec: &Execution,
    ready: Result<Ready, Refused>,
    plan: &LaunchPlan,
    envelopes: Vec<SealedSecretRef>,
    ectx: &ExecutionContext,
    api: &Api<Execution>,
    now: Timestamp,
) -> Result<(), ExecutionError> {
    let ctx = &ectx.ctx;
    let launched = match ready {
        Err(refused) => Err(refused),
        Ok(Ready::Process { launcher, bundle }) => launcher
            .launch_watched(&bundle)
            .await
            .map(|(launched, exited)| (launched, Some(exited)))
            .map_err(Refused::Launch),
        Ok(Ready::Pod { objects, staging }) => match staging {
            Ok(staging) => objects
                .start(&ctx.client, &staging)
                .await
                .map(|launched| {
                    offer_to_member(ctx, exec, plan, &objects, envelopes);
                    (launched, None)
                })
                .map_err(Refused::Launch),
            Err(e) => Err(Refused::Launch(e)),
        },
    };
    let namespace = exec.namespace().unwrap_or_default();
    match (&plan.pool, &plan.pool_miss) {
        (Some(pool), _) => ctx.pools.count_launch(&namespace, pool, true),
        (None, Some(pool)) => ctx.pools.count_launch(&namespace, pool, false),
        _ => {}
    }
    match launched {
        Ok((launched, exited)) => {
            if let Some(exited) = exited {
                let (handle, digest) = (launched.handle.clone(), plan.token_digest.clone());
                watch_exit(ctx.clone(), exec.clone(), digest, handle, exited);
            }
            let latency = exec
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|c| now.duration_since(c.0).as_secs_f64())
                .unwrap_or_default();
            ectx.metrics
                .observe_launch_latency(Duration::from_secs_f64(latency.max(0.0)));
            tracing::info!(execution = %key(exec), handle = %launched.handle, latency_s = latency, "launched");
            let note = match (&plan.pool, &plan.pool_miss) {
                (Some(_), _) | (None, Some(_)) => format!("runner started: {}", plan.how()),
                _ => format!("runner started ({})", launched.handle),
            };
            let reason = status::Reason::Launched.as_str();
            publish(&ctx.recorder, exec, EventType::Normal, reason, note).await;
        }
        Err(e) => {
            let fresh = api
                .get(&exec.name_any())
                .await
                .map_err(api_error("re-reading after a failed launch", exec))?;
            let ending = match e {
                Refused::Bundle(e) => decide::bundle_refused(&e),
                Refused::Launch(e) => decide::launch_failed(&e),
            };
            end(
                ctx,
                api,
                &fresh,
                &ending,
                "recording the failed launch",
                None,
            )
            .await?;
        }
    }
    Ok(())
}

/// Rewrites the launch record of `exec` (whose lock this launch holds, with no runner started
/// yet) for a fresh Pod: the member's claim did not take.
async fn fall_back_to_fresh_pod(
    api: &Api<Execution>,
    exec: &Execution,
    plan: &LaunchPlan,
    now: Timestamp,
) -> Result<(), ExecutionError> {
    let running = status::running(exec, plan, now);
    let patch = serde_json::json!({"status": {
        "podName": running.pod_name,
        "message": running.message,
        "launch": {"pool": null},
    }});
    api.patch_status(
        &exec.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(drop)
    .map_err(api_error("recording the fresh Pod", exec))
}

/// Offers the bundle of a launch on a claimed pool member to that member (it takes it when it
/// asks the standby endpoint): only now, after the claim, the egress policy and the launch
/// lock were all written.
fn offer_to_member(
    ctx: &Context,
    exec: &Execution,
    plan: &LaunchPlan,
    objects: &launcher::PodLaunch,
    envelopes: Vec<SealedSecretRef>,
) {
    let (Some(member), Some(pool), Some(bundle)) =
        (objects.member(), &plan.pool, objects.bundle_json())
    else {
        return;
    };
    let Some(bundle) = crate::pool::with_envelopes(&bundle, envelopes) else {
        return;
    };
    ctx.pools.offer(
        &exec.namespace().unwrap_or_default(),
        member,
        crate::pool::Offer {
            execution: exec.name_any(),
            offered_at: std::time::Instant::now(),
            bundle: Arc::new(bundle),
            pool: pool.clone(),
            created: exec.metadata.creation_timestamp.as_ref().map(|t| t.0),
        },
    );
}

/// Ends the Execution when its process runner exits while it still waits for the result (a
/// runner answers the result endpoint before it exits, so there will be no result). Best
/// effort: otherwise the deadline ends it.
fn watch_exit(
    ctx: Arc<Context>,
    exec: Execution,
    token_digest: String,
    handle: String,
    exited: ExitWatch,
) {
    tokio::spawn(async move {
        let Ok(how) = exited.await else {
            return;
        };
        let api: Api<Execution> =
            Api::namespaced(ctx.client.clone(), &exec.namespace().unwrap_or_default());
        let Ok(Some(current)) = api.get_opt(&exec.name_any()).await else {
            return;
        };
        let how = format!("runner {handle} exited ({how})");
        if let Some(ending) = decide::runner_exited(&current, &token_digest, &how)
            && let Err(e) = end(
                &ctx,
                &api,
                &current,
                &ending,
                "recording the runner's exit",
                None,
            )
            .await
        {
            tracing::warn!(execution = %key(&exec), error = %e, "recording the runner's exit");
        }
    });
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

/// Refreshes the phase gauge from the controller's cache every few seconds.
fn count_phases(
    store: kube::runtime::reflector::Store<Execution>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let mut counts: std::collections::BTreeMap<&'static str, i64> = ExecutionPhase::ALL
                .iter()
                .map(|p| (p.as_str(), 0))
                .collect();
            for e in store.state() {
                let phase = e
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .unwrap_or(ExecutionPhase::Pending);
                *counts.entry(phase.as_str()).or_default() += 1;
            }
            for (phase, n) in counts {
                metrics.set_executions(phase, n);
            }
        }
    })
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
    let pods: Option<Api<Pod>> = matches!(ectx.config.launcher, Launcher::Pod(_)).then(|| {
        let client = api.clone().into_client();
        match api.namespace() {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        }
    });
    let (store, stream) = crate::cache::lean_watch(api);
    let mut controller = Controller::for_stream(stream, store.clone());
    let mut pod_store = None;
    if let Some(pods) = pods {
        // A sandbox Pod's changes wake its Execution, so a Pod the node ended without a result
        // ends the Execution at once instead of at its deadline; the same watch is the store
        // the reconcile reads the Pod from (no GET per reconcile).
        let (reader, trigger) =
            crate::cache::lean_watch_with(pods, watcher::Config::default().labels(LABEL_EXECUTION));
        controller = controller.owns_stream(trigger);
        pod_store = Some(reader);
    }
    let counter = count_phases(store, ectx.metrics.clone());
    controller
        .graceful_shutdown_on(async move {
            shutdown.await;
            counter.abort();
        })
        .run(
            move |exec, ectx: Arc<ExecutionContext>| {
                let pods = pod_store.clone();
                async move {
                    let metrics = ectx.metrics.clone();
                    metrics
                        .instrument("execution", reconcile(exec, ectx, pods))
                        .await
                }
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
