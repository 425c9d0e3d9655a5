//! Command-line settings of the Execution side of the operator (launcher, result callback,
//! deadlines, TTL) and the start-up that turns them into a running controller. The binary
//! flattens [`ExecutionArgs`] into its own flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clap::{Args, ValueEnum};

use crate::Context;
use crate::execution::result::{CallbackState, router};
use crate::execution::{ExecutionConfig, ExecutionContext};
use crate::launcher::Launcher;
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
    /// pod launcher: CPU limit (and request) of each sandbox Pod's runner, a Kubernetes
    /// quantity (`500m`, `1`).
    #[arg(long, env = "OAUTH3_SANDBOX_CPU", default_value = "500m", value_parser = quantity)]
    pub sandbox_cpu: String,
    /// pod launcher: memory limit (and request) of each sandbox Pod's runner, a Kubernetes
    /// quantity (`256Mi`, `1Gi`). A runner above it is killed and its Execution ends `Failed`
    /// (`SandboxFailed`, `OOMKilled`).
    #[arg(long, env = "OAUTH3_SANDBOX_MEMORY", default_value = "256Mi", value_parser = quantity)]
    pub sandbox_memory: String,
    /// pod launcher: namespace of the operator (for the sandbox NetworkPolicy's callback rule).
    #[arg(long, env = "POD_NAMESPACE", default_value = "oauth3-system")]
    pub operator_namespace: String,
    /// Address the result callback listens on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "OAUTH3_CALLBACK_ADDR", default_value = "0.0.0.0:8443")]
    pub callback_addr: String,
    /// URL runners use to reach the callback. Default: `http(s)://<the bound address>` (fine
    /// for the process launcher). Required with `--launcher pod`: the https URL of the
    /// operator's callback Service, e.g. `https://oauth3-callback.oauth3-system.svc:8443`.
    #[arg(long, env = "OAUTH3_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// PEM certificate chain the callback serves HTTPS with (e.g. `tls.crt` of a mounted
    /// `kubernetes.io/tls` Secret; reloaded when the file changes). Needs `--callback-tls-key`.
    #[arg(
        long,
        env = "OAUTH3_CALLBACK_TLS_CERT",
        value_name = "PEM",
        requires = "callback_tls_key"
    )]
    pub callback_tls_cert: Option<PathBuf>,
    /// PEM private key of `--callback-tls-cert`.
    #[arg(
        long,
        env = "OAUTH3_CALLBACK_TLS_KEY",
        value_name = "PEM",
        requires = "callback_tls_cert"
    )]
    pub callback_tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that sandbox runners trust for the callback only (handed over in
    /// each run bundle). Default: none beyond the web PKI roots built into the runner, or with
    /// `--callback-tls-cert` the `ca.crt` next to it when present, else the certificate itself.
    #[arg(long, env = "OAUTH3_CALLBACK_CA_FILE", value_name = "PEM")]
    pub callback_ca_file: Option<PathBuf>,
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
    /// TLS configuration when the callback serves HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
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
    let tls = match (&args.callback_tls_cert, &args.callback_tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::server_config(cert, key)
                .map_err(|e| format!("--callback-tls-cert: {e}"))?,
        ),
        _ => None,
    };
    let callback_base_url = callback_url(args, bound, tls.is_some())?;
    let callback_ca_pem = callback_ca_pem(args)?;
    let launcher = match args.launcher {
        LauncherChoice::Process => Launcher::Process(ProcessLauncher::new(ProcessLauncherConfig {
            binary: args.runner_binary.clone(),
            extra_args: args.runner_args.clone(),
        })),
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
            Launcher::Pod(Box::new(PodLaunchConfig {
                runtime_class_name: args.runtime_class.clone(),
                image: args.runner_image.clone(),
                key_provider,
                operator_namespace: args.operator_namespace.clone(),
                callback_port: i32::from(bound.port()),
                cpu: args.sandbox_cpu.clone(),
                memory: args.sandbox_memory.clone(),
                deadline_grace_seconds: i64::try_from(args.deadline_grace_seconds)
                    .unwrap_or(i64::MAX),
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
            callback_ca_pem,
            deadline_grace: Duration::from_secs(args.deadline_grace_seconds),
            ttl,
        },
        metrics,
    });
    Ok(ExecutionSide {
        context,
        listener,
        tls,
        router: router(Arc::new(CallbackState { ctx })),
    })
}

/// The URL runners reach the callback at (pure): `--callback-url`, else the bound address.
/// Refused when runners would refuse it (plain http off loopback: the bearer token would
/// cross the network in clear) and, for the pod launcher, when none is given.
///
/// # Errors
/// A message naming `--callback-url` and the rule.
pub fn callback_url(
    args: &ExecutionArgs,
    bound: std::net::SocketAddr,
    tls: bool,
) -> Result<String, String> {
    let url = match &args.callback_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None if args.launcher == LauncherChoice::Pod => {
            return Err(
                "--callback-url is required with --launcher pod: the https URL at which \
                 sandbox Pods reach this operator's callback Service"
                    .into(),
            );
        }
        None => format!("{}://{bound}", if tls { "https" } else { "http" }),
    };
    if !oauth3_protocol::callback::callback_url_allowed(&url) {
        return Err(format!(
            "--callback-url {url}: must be https (plain http only on loopback), or runners \
             refuse to send their result"
        ));
    }
    if tls && url.starts_with("http://") {
        return Err(format!(
            "--callback-url {url}: plain http, but the callback serves HTTPS \
             (--callback-tls-cert); use https"
        ));
    }
    Ok(url)
}

/// The PEM runners trust for the callback: `--callback-ca-file`, else next to the serving
/// certificate `ca.crt`, else the serving certificate itself; none without TLS.
///
/// # Errors
/// A message naming the file that could not be read or holds no certificate.
fn callback_ca_pem(args: &ExecutionArgs) -> Result<Option<String>, String> {
    let path = match (&args.callback_ca_file, &args.callback_tls_cert) {
        (Some(ca), _) => ca.clone(),
        (None, Some(cert)) => {
            let ca = cert.with_file_name("ca.crt");
            if ca.is_file() { ca } else { cert.clone() }
        }
        (None, None) => return Ok(None),
    };
    let pem = std::fs::read_to_string(&path)
        .map_err(|e| format!("--callback-ca-file {}: {e}", path.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "--callback-ca-file {}: no PEM CERTIFICATE block",
            path.display()
        ));
    }
    Ok(Some(pem))
}

/// A Kubernetes resource quantity as Pods take it: a decimal number and an optional suffix
/// (`m`, `k`, `M`, `G`, `T`, `P`, `E`, `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`).
///
/// # Errors
/// What is wrong, in words.
pub fn quantity(value: &str) -> Result<String, String> {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suffix| value.strip_suffix(suffix))
        .unwrap_or(value);
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match fraction {
        None => digits(whole),
        Some(f) => (whole.is_empty() || digits(whole)) && digits(f),
    };
    if !ok || number.bytes().all(|b| b == b'0' || b == b'.') {
        return Err(format!(
            "{value:?} is not a positive Kubernetes quantity (e.g. 500m, 1, 256Mi, 1Gi)"
        ));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn sandbox_resources_are_kubernetes_quantities() {
        for good in ["500m", "1", "0.5", "256Mi", "1Gi", "2G", "1.5Gi"] {
            assert_eq!(quantity(good).as_deref(), Ok(good));
        }
        for bad in [
            "", "Mi", "-1", "1 Gi", "1GB", "abc", "0", "0Mi", "1.", "1e3x",
        ] {
            let err = quantity(bad).expect_err(bad);
            assert!(err.contains("not a positive Kubernetes quantity"), "{err}");
        }
        let a = args(&["--sandbox-memory", "1Gi"]);
        assert_eq!(
            (a.sandbox_cpu.as_str(), a.sandbox_memory.as_str()),
            ("500m", "1Gi")
        );
        let err = Flags::try_parse_from(["oauth3-operator", "--sandbox-memory", "lots"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("--sandbox-memory") && err.contains("\"lots\""),
            "{err}"
        );
    }

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        execution: ExecutionArgs,
    }

    fn args(flags: &[&str]) -> ExecutionArgs {
        Flags::try_parse_from(std::iter::once("oauth3-operator").chain(flags.iter().copied()))
            .expect("flags parse")
            .execution
    }

    fn bound() -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], 8443))
    }

    #[test]
    fn the_process_launcher_defaults_to_the_bound_address_in_the_matching_scheme() {
        let a = args(&["--launcher", "process"]);
        assert_eq!(
            callback_url(&a, bound(), false).expect("ok"),
            "http://127.0.0.1:8443"
        );
        assert_eq!(
            callback_url(&a, bound(), true).expect("ok"),
            "https://127.0.0.1:8443"
        );
    }

    #[test]
    fn the_pod_launcher_needs_an_explicit_https_callback_url() {
        let err = callback_url(&args(&["--launcher", "pod"]), bound(), true).expect_err("none");
        assert!(err.contains("--callback-url is required"), "{err}");
        let err = callback_url(
            &args(&["--callback-url", "http://oauth3.oauth3-system.svc:8443"]),
            bound(),
            false,
        )
        .expect_err("plain http off loopback");
        assert!(
            err.contains("--callback-url") && err.contains("https"),
            "{err}"
        );
        let ok = callback_url(
            &args(&["--callback-url", "https://oauth3.oauth3-system.svc:8443/"]),
            bound(),
            true,
        )
        .expect("https");
        assert_eq!(ok, "https://oauth3.oauth3-system.svc:8443");
    }

    #[test]
    fn a_plain_http_url_for_an_https_callback_is_refused() {
        let a = args(&[
            "--launcher",
            "process",
            "--callback-url",
            "http://127.0.0.1:8443",
        ]);
        let err = callback_url(&a, bound(), true).expect_err("mismatch");
        assert!(err.contains("serves HTTPS"), "{err}");
    }

    #[test]
    fn the_tls_key_and_certificate_come_together() {
        let err = Flags::try_parse_from(["oauth3-operator", "--callback-tls-cert", "/c.pem"])
            .err()
            .expect("a certificate without a key is refused");
        assert!(err.to_string().contains("--callback-tls-key"), "{err}");
    }
}
