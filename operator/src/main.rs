//! The `oauth3-operator` binary: parses the flags, starts logging, connects to the Kubernetes
//! API, binds the listeners and runs the operator ([`oauth3_operator::run`]) until Ctrl-C or
//! SIGTERM.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::Parser;
use oauth3_operator::config::Config;
use oauth3_operator::{Listeners, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Colours only for a terminal (and never with NO_COLOR): logs collected from a pipe or a
    // container runtime stay plain text.
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log).context("parsing --log")?,
        )
        .init();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (kubeconfig or in-cluster)")?;
    let listeners = Listeners::bind(&config).await?;
    run(config, client, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "listening for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
