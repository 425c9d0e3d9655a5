//! Command-line settings of the Execution side of the operator (launcher, result callback,
//! deadlines, TTL) and the start-up that turns them into a running controller. The binary
//! flattens [`ExecutionArgs`] into its own flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::{Args, ValueEnum};

use crate::Context;
use crate::callback::{CallbackState, router};
use crate::execution::controller::{ExecutionConfig, ExecutionContext, LauncherKind};
use crate::launcher::pod::{PodKeyProvider, PodLaunchConfig};
use crate::launcher::process::{ProcessLauncher, ProcessLauncherConfig};

/// Which launcher runs sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LauncherChoice {
    /// A confidential-container Pod per Execution (Kata on Intel TDX by default).
    Pod,
    /// The runner as a local child process: development and tests only, no TEE.
    Process,
}

/// Flags of the Execution controller and the result callback.
#[derive(Debug, Clone, Args)]
pub struct ExecutionArgs {
    /// How sandboxes run: `pod` (confidential containers) or `process` (local child process,
    /// development only: no TEE, results carry `attestation.kind: none`).
    #[arg(long, value_enum, default_value_t = LauncherChoice::Pod, env = "OAUTH3_LAUNCHER")]
    pub launcher: LauncherChoice,
    /// process launcher: path of the `oauth3-sandbox-runner` binary.
    #[arg(
        long,
        env = "OAUTH3_RUNNER_BINARY",
        default_value = "oauth3-sandbox-runner"
    )]
    pub runner_binary: PathBuf,
    /// process launcher: an extra argument for `oauth3-sandbox-runner run` (repeatable), e.g.
    /// `--runner-arg=--key-provider --runner-arg=dev ...`.
    #[arg(long = "runner-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub runner_args: Vec<String>,
    /// pod launcher: RuntimeClass of sandbox Pods.
    #[arg(long, env = "OAUTH3_RUNTIME_CLASS", default_value = "kata-qemu-tdx")]
    pub runtime_class: String,
    /// pod launcher: runner image.
    #[arg(
        long,
        env = "OAUTH3_RUNNER_IMAGE",
        default_value = "ghcr.io/oauth3/sandbox-runner:latest"
    )]
    pub runner_image: String,
    /// pod launcher: key provider inside the TEE, `kbs` or `dstack`.
    #[arg(long, env = "OAUTH3_KEY_PROVIDER", default_value = "kbs")]
    pub key_provider: String,
    /// pod launcher: namespace of the operator (for the sandbox NetworkPolicy's callback rule).
    #[arg(long, env = "POD_NAMESPACE", default_value = "oauth3-system")]
    pub operator_namespace: String,
    /// Address the result callback listens on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "OAUTH3_CALLBACK_ADDR", default_value = "0.0.0.0:8443")]
    pub callback_addr: String,
    /// URL runners use to reach the callback. Default: `http://<the bound address>` (fine for
    /// the process launcher; sandbox Pods need an https URL of the operator's Service).
    #[arg(long, env = "OAUTH3_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// Seconds added to an Execution's timeoutSeconds before the operator gives up waiting
    /// for its result and marks it TimedOut.
    #[arg(long, env = "OAUTH3_DEADLINE_GRACE_SECONDS", default_value_t = 30)]
    pub deadline_grace_seconds: u64,
    /// How long finished Executions are kept before they are deleted (`30m`, `24h`, `7d`).
    #[arg(long, env = "OAUTH3_EXECUTION_TTL", default_value = "24h")]
    pub execution_ttl: String,
}

/// The Execution side, ready to run: the controller context, the callback listener (already
/// bound, so its address is known) and the callback router.
pub struct ExecutionSide {
    /// Context of the Execution controller.
    pub context: Arc<ExecutionContext>,
    /// The bound callback listener.
    pub listener: tokio::net::TcpListener,
    /// The callback router.
    pub router: Router,
}

/// Binds the callback listener and builds the Execution controller's context from `args`.
///
/// # Errors
/// A message naming the flag at fault.
pub async fn execution_side(
    args: &ExecutionArgs,
    ctx: Arc<Context>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<ExecutionSide, String> {
    let ttl = oauth3_crds::parse_duration(&args.execution_ttl)
        .map_err(|e| format!("--execution-ttl: {e}"))?;
    let listener = tokio::net::TcpListener::bind(&args.callback_addr)
        .await
        .map_err(|e| format!("--callback-addr {}: {e}", args.callback_addr))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--callback-addr: {e}"))?;
    let callback_base_url = args
        .callback_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    let launcher = match args.launcher {
        LauncherChoice::Process => {
            LauncherKind::Process(ProcessLauncher::new(ProcessLauncherConfig {
                binary: args.runner_binary.clone(),
                extra_args: args.runner_args.clone(),
            }))
        }
        LauncherChoice::Pod => {
            let key_provider = match args.key_provider.as_str() {
                "kbs" => PodKeyProvider::Kbs {
                    url: "http://127.0.0.1:8006".into(),
                },
                "dstack" => PodKeyProvider::Dstack {
                    socket: "/var/run/dstack.sock".into(),
                },
                other => return Err(format!("--key-provider {other}: use kbs or dstack")),
            };
            LauncherKind::Pod(Box::new(PodLaunchConfig {
                runtime_class_name: args.runtime_class.clone(),
                image: args.runner_image.clone(),
                key_provider,
                operator_namespace: args.operator_namespace.clone(),
                callback_port: i32::from(bound.port()),
                ..PodLaunchConfig::default()
            }))
        }
    };
    tracing::info!(callback = %callback_base_url, launcher = ?args.launcher, "execution side ready");
    let context = Arc::new(ExecutionContext {
        ctx: ctx.clone(),
        config: ExecutionConfig {
            launcher,
            callback_base_url,
            deadline_grace: Duration::from_secs(args.deadline_grace_seconds),
            ttl,
        },
        metrics,
    });
    Ok(ExecutionSide {
        context,
        listener,
        router: router(Arc::new(CallbackState { ctx })),
    })
}
