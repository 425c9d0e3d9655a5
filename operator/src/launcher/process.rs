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
