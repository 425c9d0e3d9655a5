//! The `oauth3-operator` binary: serves metrics and health, takes part in leader election and
//! runs the Permit controller while leading, until Ctrl-C or SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use futures::StreamExt;
use kube::runtime::Controller;
use kube::{Api, Client};
use oauth3_crds::Execution;
use oauth3_crds::Permit;
use oauth3_operator::cli::{ExecutionArgs, execution_side};
use oauth3_operator::execution::result as callback;
use oauth3_operator::execution::run_execution_controller;
use oauth3_operator::http::{
    DEFAULT_API_FRESHNESS, DEFAULT_PROBE_INTERVAL, Health, HttpState, probe_api_server, router,
    serve,
};
use oauth3_operator::leader::{
    LEASE_NAME, LeaderConfig, LeaderElector, StopSignal, default_identity, parse_duration,
    run_while_leading,
};
use oauth3_operator::metrics::Metrics;
use oauth3_operator::telegram::bot::BotScope;
use oauth3_operator::telegram::{TelegramArgs, TelegramConfig};
use oauth3_operator::{Context, permit};
use tokio::sync::{oneshot, watch};

/// oauth3 operator: keeps Permit status true to each Permit's spec and its owner's decision,
/// runs admitted Executions in sandboxes (confidential-container Pods, or local processes for
/// development) and records their results. Of several replicas, only the holder of the
/// `oauth3-operator` Lease reconciles; the others stand by and take over when it goes away.
/// Every replica serves the result callback.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "OAUTH3_NAMESPACE")]
    namespace: Option<String>,
    /// Take part in leader election (`--leader-elect=false` to reconcile unconditionally;
    /// run a single replica then).
    #[arg(
        long,
        env = "OAUTH3_LEADER_ELECT",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    leader_elect: bool,
    /// Namespace of the leader election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (default: `$POD_NAME`, else hostname-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease stays valid after a renewal (e.g. `15s`).
    #[arg(long, env = "OAUTH3_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How often the leader renews the Lease (e.g. `5s`, `500ms`).
    #[arg(long, env = "OAUTH3_LEASE_RENEW_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    lease_renew_interval: Duration,
    /// How often a standby tries to take the Lease (e.g. `2s`).
    #[arg(long, env = "OAUTH3_LEASE_RETRY_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    lease_retry_interval: Duration,
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints.
    #[arg(long, env = "OAUTH3_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log filter, in `RUST_LOG` syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    execution: ExecutionArgs,
    #[command(flatten)]
    telegram: TelegramArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("parsing --log")?,
        )
        .init();
    let telegram = TelegramConfig::from_args(&args.telegram).map_err(anyhow::Error::msg)?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (kubeconfig or in-cluster)")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let stopping = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let metrics = Arc::new(Metrics::new());
    let mut health = Health::new(DEFAULT_API_FRESHNESS);
    let elector = if args.leader_elect {
        let config = LeaderConfig {
            lease_name: LEASE_NAME.to_owned(),
            namespace: args.lease_namespace.clone(),
            identity: args.identity.clone().unwrap_or_else(default_identity),
            lease_duration: args.lease_duration,
            renew_interval: args.lease_renew_interval,
            retry_interval: args.lease_retry_interval,
        };
        let elector = LeaderElector::new(client.clone(), config)
            .context("configuring leader election")?
            .with_metrics(metrics.clone());
        health = health.with_elector(elector.subscribe());
        Some(elector)
    } else {
        None
    };
    let health = Arc::new(health);

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let app = router(HttpState {
        metrics: metrics.clone(),
        health: health.clone(),
    });
    let http = tokio::spawn(serve(listener, app, stopping()));
    tokio::spawn(probe_api_server(
        client.clone(),
        health,
        DEFAULT_PROBE_INTERVAL,
        stopping(),
    ));

    let api: Api<Permit> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let executions: Api<Execution> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let ctx = Arc::new(Context::new(client.clone()));
    let side = execution_side(&args.execution, ctx.clone(), metrics.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    tracing::info!(
        addr = %side.listener.local_addr()?,
        tls = side.tls.is_some(),
        "serving the result callback"
    );
    let callback_server = match side.tls {
        Some(tls) => tokio::spawn(callback::serve_tls(
            side.listener,
            tls,
            side.router,
            stopping(),
        )),
        None => tokio::spawn(callback::serve(side.listener, side.router, stopping())),
    };
    let ectx = side.context;
    let usage = ctx.usage.clone();
    let telegram_scope = BotScope {
        namespace: args.namespace.clone(),
        operator_namespace: args.execution.operator_namespace.clone(),
    };
    let controllers = {
        let metrics = metrics.clone();
        let client = client.clone();
        move |stop: StopSignal| {
            tracing::info!(
                namespace = args.namespace.as_deref().unwrap_or("(all)"),
                "starting the Permit and Execution controllers"
            );
            let permits = run_permit_controller(
                api.clone(),
                ctx.clone(),
                metrics.clone(),
                stop.clone().wait(),
            );
            let execs =
                run_execution_controller(executions.clone(), ectx.clone(), stop.clone().wait());
            // The Telegram bot polls the Bot API only while leading: two pollers would fight
            // over getUpdates.
            let bot = telegram.clone().map(|config| {
                oauth3_operator::telegram::bot::run(
                    config,
                    client.clone(),
                    telegram_scope.clone(),
                    stop.wait(),
                )
            });
            async move {
                let bot = async move {
                    if let Some(bot) = bot {
                        bot.await;
                    }
                };
                tokio::join!(permits, execs, bot);
            }
        }
    };

    match elector {
        Some(elector) => {
            tracing::info!(identity = %elector.config().identity, "leader election on");
            let leading = elector.subscribe();
            let (release_tx, release_rx) = oneshot::channel::<()>();
            let elector = tokio::spawn(elector.run(async {
                let _ = release_rx.await;
            }));
            run_while_leading(leading, stopping(), controllers).await;
            // Release the Lease only after the controllers stopped, so two never overlap.
            let _ = release_tx.send(());
            elector.await.context("leader elector task")?;
        }
        None => {
            metrics.set_leader(true);
            let (_always, leading) = watch::channel(true);
            run_while_leading(leading, stopping(), controllers).await;
        }
    }
    http.await.context("HTTP server task")??;
    callback_server.await.context("callback server task")??;
    // Counters of the last moments (results recorded while stopping) are written, not lost.
    if !usage.flush_all(5).await {
        tracing::warn!("some Permit usage counters could not be written before stopping");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Runs the Permit controller until `stop` resolves, counting and timing each reconcile.
async fn run_permit_controller(
    api: Api<Permit>,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // The lean cache, as for Executions: no managedFields or last-applied copies in memory.
    let (store, stream) = oauth3_operator::cache::lean_watch(api);
    Controller::for_stream(stream, store)
        .graceful_shutdown_on(stop)
        .run(
            move |permit, ctx| {
                let metrics = metrics.clone();
                async move {
                    metrics
                        .instrument("permit", permit::reconcile(permit, ctx))
                        .await
                }
            },
            permit::error_policy,
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Ok((permit, action)) => tracing::debug!(permit = %permit, ?action, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "permit controller"),
            }
        })
        .await;
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
