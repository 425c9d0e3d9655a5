//! The `process` launcher: runs the sandbox runner binary as a local child process with the
//! same bundle a pod would get (development, `make demo`, end-to-end tests). It gives no TEE:
//! results carry `attestation.kind: none` (`--attestation none`, passed explicitly) unless a
//! quote provider is configured (a runner on a confidential VM, or a test's stand-in).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::launcher::{LaunchError, Launched};
use oauth3_protocol::Bundle;
use oauth3_protocol::runner_args::QuoteProviderEndpoint;

/// Settings of the process launcher.
#[derive(Debug, Clone)]
pub struct ProcessLauncherConfig {
    /// The `oauth3-sandbox-runner` binary.
    pub binary: PathBuf,
    /// Arguments placed before `run --bundle -` (e.g. a key provider for development:
    /// `--key-provider dev --dev-key-file F --insecure-dev-key`).
    pub extra_args: Vec<String>,
    /// The runner's quote provider (`--attestation ...`, always passed).
    pub attestation: QuoteProviderEndpoint,
}

/// Launches runners as child processes; the bundle goes over standard input, never to disk.
#[derive(Debug, Clone)]
pub struct ProcessLauncher {
    config: Arc<ProcessLauncherConfig>,
}

impl ProcessLauncher {
    /// A launcher with `config`.
    pub fn new(config: ProcessLauncherConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// `--attestation ...` for the runner; a dstack socket already among the extra arguments
    /// is not passed twice.
    fn attestation_args(&self) -> Vec<String> {
        use oauth3_protocol::runner_args::{DSTACK_ENDPOINT, KeyProviderEndpoint};
        let socket_given = self
            .config
            .extra_args
            .iter()
            .any(|a| a == DSTACK_ENDPOINT || a.starts_with("--dstack-endpoint="));
        let key = socket_given.then(|| KeyProviderEndpoint::Dstack {
            socket: String::new(),
        });
        self.config.attestation.args(key.as_ref())
    }

    /// Starts the runner for `bundle` and returns at once; the child is reaped in the
    /// background (its exit status is logged, its output discarded: the result goes to the
    /// callback).
    ///
    /// # Errors
    /// [`LaunchError::Spawn`] when the binary cannot be started or the bundle not handed over.
    pub async fn launch(&self, bundle: &Bundle) -> Result<Launched, LaunchError> {
        self.launch_watched(bundle)
            .await
            .map(|(launched, _)| launched)
    }

    /// Like [`Self::launch`], and also tells how the runner ended once it has: the receiver
    /// gets e.g. `exit status: 3` (or why waiting for it failed).
    ///
    /// # Errors
    /// [`LaunchError::Spawn`] when the binary cannot be started or the bundle not handed over.
    pub async fn launch_watched(
        &self,
        bundle: &Bundle,
    ) -> Result<(Launched, tokio::sync::oneshot::Receiver<String>), LaunchError> {
        let body = serde_json::to_vec(bundle)
            .map_err(|e| LaunchError::Spawn(format!("serialising the bundle: {e}")))?;
        let mut child = tokio::process::Command::new(&self.config.binary)
            .arg("run")
            .args(&self.config.extra_args)
            .args(self.attestation_args())
            .args(["--bundle", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                LaunchError::Spawn(format!("starting {}: {e}", self.config.binary.display()))
            })?;
        let pid = child.id().unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&body).await.map_err(|e| {
                LaunchError::Spawn(format!("handing the bundle to runner {pid}: {e}"))
            })?;
            drop(stdin);
        }
        let execution = format!("{}/{}", bundle.execution.namespace, bundle.execution.name);
        let (exited_tx, exited) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let how = match child.wait_with_output().await {
                Ok(out) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    tracing::info!(%execution, pid, status = %out.status, stderr = %stderr.trim(), "runner exited");
                    out.status.to_string()
                }
                Err(e) => {
                    tracing::warn!(%execution, pid, error = %e, "waiting for the runner");
                    format!("could not be waited for ({e})")
                }
            };
            let _ = exited_tx.send(how);
        });
        Ok((
            Launched {
                handle: format!("process/{pid}"),
            },
            exited,
        ))
    }
}

/// A credential proxy (`oauth3-sandbox-runner serve`) started as a child process.
#[derive(Debug)]
pub struct ServeChild {
    /// The child's process id.
    pub pid: u32,
    /// `http://127.0.0.1:<port>`: where it answers (loopback, plain HTTP).
    pub endpoint: String,
    /// Gets the exit status code (`None`: killed by a signal or not waitable) and the last
    /// line the proxy wrote to standard error, once it ended.
    pub exited: tokio::sync::oneshot::Receiver<(Option<i32>, String)>,
}

/// How long a started proxy has to say where it listens.
pub const SERVE_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

impl ProcessLauncher {
    /// Starts `oauth3-sandbox-runner serve` for `bundle` on a free loopback port (plain HTTP:
    /// the process launcher is for development) and waits until it listens. The bundle goes
    /// over standard input; the per-call audit lines on standard output are discarded (the
    /// proxy reports its calls to the operator).
    ///
    /// # Errors
    /// [`LaunchError::Spawn`] when the binary cannot be started, or it ends or stays silent
    /// before it listens (with what it wrote).
    pub async fn launch_serve(
        &self,
        bundle: &oauth3_protocol::proxy::ServeBundle,
        label: &str,
    ) -> Result<ServeChild, LaunchError> {
        use tokio::io::AsyncBufReadExt;
        let body = serde_json::to_vec(bundle)
            .map_err(|e| LaunchError::Spawn(format!("serialising the serve bundle: {e}")))?;
        let mut child = tokio::process::Command::new(&self.config.binary)
            .arg("serve")
            .args(&self.config.extra_args)
            .args([
                "--bundle",
                "-",
                "--listen",
                "127.0.0.1:0",
                "--insecure-plain-http",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                LaunchError::Spawn(format!("starting {}: {e}", self.config.binary.display()))
            })?;
        let pid = child.id().unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&body).await.map_err(|e| {
                LaunchError::Spawn(format!("handing the serve bundle to proxy {pid}: {e}"))
            })?;
            drop(stdin);
        }
        let Some(stderr) = child.stderr.take() else {
            return Err(LaunchError::Spawn(
                "the proxy's standard error is not open".into(),
            ));
        };
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let listening = tokio::time::timeout(SERVE_START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("serving on ") {
                    return Some(url.trim().to_owned());
                }
                said.push(line);
            }
            None
        })
        .await;
        let endpoint = match listening {
            Ok(Some(url)) => url,
            Ok(None) => {
                let status = child
                    .wait()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                return Err(LaunchError::Spawn(format!(
                    "the proxy ended before it listened ({status}): {}",
                    said.join("; ")
                )));
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(LaunchError::Spawn(format!(
                    "the proxy did not listen within {} s",
                    SERVE_START_TIMEOUT.as_secs()
                )));
            }
        };
        let (exited_tx, exited) = tokio::sync::oneshot::channel();
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut last = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(permit = %label, pid, "proxy: {line}");
                last = line;
            }
            let code = match child.wait().await {
                Ok(status) => status.code(),
                Err(e) => {
                    tracing::warn!(permit = %label, pid, error = %e, "waiting for the proxy");
                    None
                }
            };
            tracing::info!(permit = %label, pid, ?code, "proxy exited");
            let _ = exited_tx.send((code, last));
        });
        Ok(ServeChild {
            pid,
            endpoint,
            exited,
        })
    }
}

/// Asks process `pid` to stop (SIGTERM), as Kubernetes stops a container.
pub fn terminate(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}
