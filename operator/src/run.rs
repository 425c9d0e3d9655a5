//! The one wiring of the operator: from parsed [`Config`] and already-bound [`Listeners`] to
//! everything running (metrics and health, the result callback, leader election, and while
//! leading the Permit and Execution controllers and the Telegram bot) until shutdown. The
//! binary, the test harness and the benchmarks all start the operator through [`run`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use kube::{Api, Client};
use oauth3_crds::{Execution, Permit};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::execution::result::{self as callback, CallbackState};
use crate::execution::{ExecutionContext, run_execution_controller};
use crate::http::{
    DEFAULT_API_FRESHNESS, DEFAULT_PROBE_INTERVAL, Health, HttpError, HttpState, probe_api_server,
};
use crate::leader::{LeaderElector, LeaderError, StopSignal, run_while_leading};
use crate::metrics::Metrics;
use crate::telegram::bot::BotScope;
use crate::telegram::{TelegramConfig, TelegramError};
use crate::{Context, permit};

/// How many rounds the usage counters still pending at shutdown get to be written.
const SHUTDOWN_FLUSH_ROUNDS: usize = 5;

/// The sockets the operator serves on, bound by the caller (so tests can bind port 0 and know
/// the addresses before anything runs).
#[derive(Debug)]
pub struct Listeners {
    /// `/metrics`, `/healthz` and `/readyz` (`--metrics-addr`).
    pub metrics: TcpListener,
    /// The result callback (`--callback-addr`).
    pub callback: TcpListener,
}

impl Listeners {
    /// Binds `--metrics-addr` and `--callback-addr`.
    ///
    /// # Errors
    /// [`RunError::Bind`] naming the flag whose address could not be bound.
    pub async fn bind(config: &Config) -> Result<Self, RunError> {
        let metrics = TcpListener::bind(config.metrics_addr)
            .await
            .map_err(|source| RunError::Bind {
                flag: "--metrics-addr",
                addr: config.metrics_addr.to_string(),
                source,
            })?;
        let callback = TcpListener::bind(&config.execution.callback_addr)
            .await
            .map_err(|source| RunError::Bind {
                flag: "--callback-addr",
                addr: config.execution.callback_addr.clone(),
                source,
            })?;
        Ok(Self { metrics, callback })
    }
}

/// Why the operator could not start, or a server of it failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Binding a listener failed.
    #[error("binding {flag} {addr}: {source}")]
    Bind {
        /// The flag naming the address.
        flag: &'static str,
        /// The address.
        addr: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A listener has no local address.
    #[error("reading the address of the {listener} listener: {source}")]
    LocalAddr {
        /// Which listener.
        listener: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A flag has a bad value.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A Telegram flag has a bad value or the token file cannot be read.
    #[error(transparent)]
    Telegram(#[from] TelegramError),
    /// The leader election flags cannot give a safe election.
    #[error("configuring leader election: {0}")]
    Leader(#[source] LeaderError),
    /// Serving `/metrics`, `/healthz` and `/readyz` failed.
    #[error("serving /metrics, /healthz and /readyz: {0}")]
    Http(#[source] HttpError),
    /// Serving the result callback failed.
    #[error("serving the result callback: {0}")]
    Callback(#[source] std::io::Error),
    /// A task of the operator panicked.
    #[error("the {task} task: {source}")]
    Task {
        /// Which task.
        task: &'static str,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Runs the operator as `config` says on `listeners` until `shutdown` resolves: serves
/// metrics and health and the result callback on every replica; with leader election runs the
/// controllers (and the Telegram bot when configured) only while holding the Lease, and
/// releases it after they stopped. On shutdown the controllers finish in-flight reconciles,
/// the servers stop, and usage counters still pending are written.
///
/// # Errors
/// [`RunError`] for bad settings (before anything starts) or a failed server.
pub async fn run(
    config: Config,
    client: Client,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let telegram = TelegramConfig::from_args(&config.telegram)?;
    let elector = match config.leader.leader_config() {
        Some(leader) => Some(LeaderElector::new(client.clone(), leader).map_err(RunError::Leader)?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let mut context = Context::new(client.clone());
    context.drafting = config.draft.drafting()?.map(Arc::new);
    let egress = crate::egress::resolve(config.execution.egress_policy, &client).await;
    if config.execution.launcher == crate::config::LauncherChoice::Pod {
        tracing::info!(egress = egress.as_str(), "sandbox egress policy");
        context.egress = Some(egress);
    } else if config.execution.sandbox_pools {
        tracing::warn!("--sandbox-pools needs --launcher pod: SandboxPools are not run");
    }
    context.pools = Arc::new(crate::pool::Pools::new(metrics.clone()));
    let ctx = Arc::new(context);
    let callback = CallbackServer::new(
        &config,
        listeners.callback,
        ctx.clone(),
        metrics.clone(),
        egress,
    )?;
    let stopping = Stopping::on(shutdown);

    let elector = elector.map(|e| e.with_metrics(metrics.clone()));
    let mut health = Health::new(DEFAULT_API_FRESHNESS);
    if let Some(elector) = &elector {
        health = health.with_elector(elector.subscribe());
    }
    let health = Arc::new(health);
    let http = serve_http(
        listeners.metrics,
        metrics.clone(),
        health.clone(),
        &stopping,
    )?;
    tokio::spawn(probe_api_server(
        client.clone(),
        health,
        DEFAULT_PROBE_INTERVAL,
        stopping.future(),
    ));
    let ectx = callback.context.clone();
    let callback = callback.spawn(&stopping);

    let leader_work = LeaderWork {
        namespace: config.namespace.clone(),
        client: client.clone(),
        ctx: ctx.clone(),
        ectx,
        metrics: metrics.clone(),
        telegram,
        scope: BotScope {
            namespace: config.namespace.clone(),
            operator_namespace: config.execution.operator_namespace.clone(),
        },
    };
    lead_while_elected(elector, metrics, &stopping, leader_work).await?;

    http.await
        .map_err(|source| RunError::Task {
            task: "HTTP server",
            source,
        })?
        .map_err(RunError::Http)?;
    callback
        .await
        .map_err(|source| RunError::Task {
            task: "callback server",
            source,
        })?
        .map_err(RunError::Callback)?;
    // Counters of the last moments (results recorded while stopping) are written, not lost.
    if !ctx.usage.flush_all(SHUTDOWN_FLUSH_ROUNDS).await {
        tracing::warn!("some Permit usage counters could not be written before stopping");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The shutdown future, shared: each [`Stopping::future`] resolves once it has.
#[derive(Clone)]
struct Stopping(watch::Receiver<bool>);

impl Stopping {
    fn on(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
        Self(rx)
    }

    fn future(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            // A dropped sender also means "stop".
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until shutdown.
fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stopping: &Stopping,
) -> Result<JoinHandle<Result<(), HttpError>>, RunError> {
    let addr = local_addr(&listener, "metrics")?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    let app = crate::http::router(HttpState { metrics, health });
    Ok(tokio::spawn(crate::http::serve(
        listener,
        app,
        stopping.future(),
    )))
}

fn local_addr(listener: &TcpListener, name: &'static str) -> Result<SocketAddr, RunError> {
    listener.local_addr().map_err(|source| RunError::LocalAddr {
        listener: name,
        source,
    })
}

/// The result callback, configured and ready to serve, and the Execution controller's context
/// that tells runners where it is.
struct CallbackServer {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    context: Arc<ExecutionContext>,
}

impl CallbackServer {
    fn new(
        config: &Config,
        listener: TcpListener,
        ctx: Arc<Context>,
        metrics: Arc<Metrics>,
        egress: crate::egress::EgressMode,
    ) -> Result<Self, RunError> {
        let args = &config.execution;
        let bound = local_addr(&listener, "callback")?;
        let tls = match (&args.callback_tls_cert, &args.callback_tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::server_config(cert, key).map_err(ConfigError::CallbackTls)?)
            }
            _ => None,
        };
        let execution = args.execution_config(bound, tls.is_some(), egress)?;
        tracing::info!(
            callback = %execution.callback_base_url,
            launcher = ?args.launcher,
            "execution side ready"
        );
        let router = callback::router(Arc::new(CallbackState::new(ctx.clone())));
        let context = Arc::new(ExecutionContext {
            ctx,
            config: execution,
            metrics,
        });
        Ok(Self {
            listener,
            tls,
            router,
            context,
        })
    }

    fn spawn(self, stopping: &Stopping) -> JoinHandle<std::io::Result<()>> {
        let addr = self.listener.local_addr().ok();
        tracing::info!(
            ?addr,
            tls = self.tls.is_some(),
            "serving the result callback"
        );
        match self.tls {
            Some(tls) => tokio::spawn(callback::serve_tls(
                self.listener,
                tls,
                self.router,
                stopping.future(),
            )),
            None => tokio::spawn(callback::serve(
                self.listener,
                self.router,
                stopping.future(),
            )),
        }
    }
}

/// What runs only on the leader: the Permit and Execution controllers and the Telegram bot.
#[derive(Clone)]
struct LeaderWork {
    namespace: Option<String>,
    client: Client,
    ctx: Arc<Context>,
    ectx: Arc<ExecutionContext>,
    metrics: Arc<Metrics>,
    telegram: Option<TelegramConfig>,
    scope: BotScope,
}

impl LeaderWork {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Runs the controllers and the bot until `stop`.
    async fn run(self, stop: StopSignal) {
        tracing::info!(
            namespace = self.namespace.as_deref().unwrap_or("(all)"),
            "starting the Permit, Execution, proxy and pool controllers"
        );
        let permits = permit::run_permit_controller(
            self.api::<Permit>(),
            self.ctx.clone(),
            self.metrics.clone(),
            stop.clone().wait(),
        );
        let executions = run_execution_controller(
            self.api::<Execution>(),
            self.ectx.clone(),
            stop.clone().wait(),
        );
        let proxies = crate::proxy::run_proxy_controller(
            self.api::<Permit>(),
            Arc::new(crate::proxy::ProxyContext::new(self.ectx.clone())),
            stop.clone().wait(),
        );
        // SandboxPools need sandbox Pods: they run only under the pod launcher.
        let pools_stop = stop.clone();
        let pools = async {
            if let (crate::launcher::Launcher::Pod(pod), true) =
                (&self.ectx.config.launcher, self.ectx.config.pools)
            {
                let config = crate::pool::PoolConfig {
                    pod: (**pod).clone(),
                    callback_base_url: self.ectx.config.callback_base_url.clone(),
                    callback_ca_pem: self.ectx.config.callback_ca_pem.clone(),
                    check_in_within: self.ectx.config.pool_check_in,
                };
                crate::pool::run_pool_controller(
                    self.api::<oauth3_crds::SandboxPool>(),
                    self.api::<k8s_openapi::api::core::v1::Pod>(),
                    Arc::new(crate::pool::PoolContext::new(self.ctx.clone(), config)),
                    pools_stop.wait(),
                )
                .await;
            }
        };
        // The Telegram bot polls the Bot API only while leading: two pollers would fight over
        // getUpdates.
        let bot = async {
            if let Some(config) = self.telegram.clone() {
                crate::telegram::bot::run(
                    config,
                    self.client.clone(),
                    self.scope.clone(),
                    stop.wait(),
                )
                .await;
            }
        };
        tokio::join!(permits, executions, proxies, pools, bot);
    }
}

/// Runs `work` while this replica leads (always, without an elector) until shutdown; with an
/// elector, releases the Lease only after the work stopped, so two leaders never overlap.
async fn lead_while_elected(
    elector: Option<LeaderElector>,
    metrics: Arc<Metrics>,
    stopping: &Stopping,
    work: LeaderWork,
) -> Result<(), RunError> {
    let start = move |stop: StopSignal| work.clone().run(stop);
    match elector {
        Some(elector) => {
            tracing::info!(identity = %elector.config().identity, "leader election on");
            let leading = elector.subscribe();
            let (release_tx, release_rx) = oneshot::channel::<()>();
            let elector = tokio::spawn(elector.run(async {
                let _ = release_rx.await;
            }));
            run_while_leading(leading, stopping.future(), start).await;
            let _ = release_tx.send(());
            elector.await.map_err(|source| RunError::Task {
                task: "leader elector",
                source,
            })
        }
        None => {
            metrics.set_leader(true);
            let (_always, leading) = watch::channel(true);
            run_while_leading(leading, stopping.future(), start).await;
            Ok(())
        }
    }
}
