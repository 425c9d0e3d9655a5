//! The operator run in-process for tests: both controllers and the result callback on a
//! namespace, with any launcher, stoppable.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use oauth3_operator::execution::result::{CallbackState, router, serve};
use oauth3_operator::execution::{ExecutionConfig, ExecutionContext, run_execution_controller};
use oauth3_operator::launcher::Launcher;
use oauth3_operator::{Context, run_permit_controller};
use tokio::sync::watch;

/// A running operator (both controllers + callback server) that can be stopped.
pub struct InProcessOperator {
    ctx: Arc<Context>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcessOperator {
    /// Starts the Permit and Execution controllers on `ns` with `launcher`, and the callback
    /// on `listener` (runners are told `http://<its address>`).
    ///
    /// # Panics
    /// When the listener has no local address.
    pub fn start(
        client: &kube::Client,
        ns: &str,
        listener: tokio::net::TcpListener,
        launcher: Launcher,
        grace: Duration,
        ttl: Duration,
    ) -> Self {
        let (stop, rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let ctx = Arc::new(Context::new(client.clone()));
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let ectx = Arc::new(ExecutionContext {
            ctx: ctx.clone(),
            config: ExecutionConfig {
                launcher,
                callback_base_url: base,
                callback_ca_pem: None,
                deadline_grace: grace,
                ttl,
            },
            metrics: Arc::new(oauth3_operator::metrics::Metrics::new()),
        });
        let cb = router(Arc::new(CallbackState { ctx: ctx.clone() }));
        let tasks = vec![
            tokio::spawn(run_permit_controller(
                Api::namespaced(client.clone(), ns),
                ctx.clone(),
                stopped(),
            )),
            tokio::spawn(run_execution_controller(
                Api::namespaced(client.clone(), ns),
                ectx,
                stopped(),
            )),
            tokio::spawn({
                let s = stopped();
                async move {
                    let _ = serve(listener, cb, s).await;
                }
            }),
        ];
        Self { ctx, stop, tasks }
    }

    /// Stops everything and waits (up to 10 s per task) for it to end, then writes the usage
    /// counters still pending, as the operator binary does on shutdown.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.ctx.usage.flush_all(5).await;
    }
}
