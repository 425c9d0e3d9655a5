//! The operator run in-process for tests, through the same [`oauth3_operator::run`] as the
//! binary (flags, leader election on the namespace, metrics, both controllers and the result
//! callback), on a namespace, with either launcher, stoppable.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser;
use oauth3_operator::config::Config;
use oauth3_operator::launcher::pod::{PodKeyProvider, PodLaunchConfig, PodQuoteProvider};
use oauth3_operator::launcher::process::ProcessLauncherConfig;
use oauth3_operator::{Listeners, run};
use tokio::sync::oneshot;

/// How long [`InProcessOperator::stop`] waits for the operator to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the in-process operator runs sandboxes: the settings are passed as the operator's own
/// flags, so only what a flag can say is taken.
#[derive(Debug, Clone)]
pub enum Launcher {
    /// `--launcher process` with this runner binary and its extra arguments.
    Process(ProcessLauncherConfig),
    /// `--launcher pod` with this runtime class, image, key provider, resources and operator
    /// namespace; runners are told the callback's `http://` loopback address. The other fields
    /// must be the defaults (no flag sets them); the deadline grace comes from `grace`.
    Pod(Box<PodLaunchConfig>),
    /// The operator's flags for the launcher, as given (the real-node tier: the pod launcher
    /// with a dstack socket, callback TLS and egress settings no [`PodLaunchConfig`] field
    /// maps to alone). The callback address comes from the listener.
    Flags(Vec<String>),
}

/// A running operator (both controllers + callback server + metrics) that can be stopped.
pub struct InProcessOperator {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessOperator {
    /// Starts the operator on `ns` with `launcher`, the callback on `listener` (runners are
    /// told `http://<its address>`), deadline grace `grace` and Execution TTL `ttl`. It holds
    /// its own Lease in `ns`, and serves metrics on a free loopback port.
    ///
    /// # Panics
    /// When the listener has no local address, the flags are refused, or (in the operator's
    /// task, with the reason) the operator cannot start.
    pub fn start(
        client: &kube::Client,
        ns: &str,
        listener: tokio::net::TcpListener,
        launcher: Launcher,
        grace: Duration,
        ttl: Duration,
    ) -> Self {
        Self::start_with_flags(client, ns, listener, launcher, grace, ttl, &[])
    }

    /// [`InProcessOperator::start`] with more operator flags (`--draft-doc-hosts=...`).
    ///
    /// # Panics
    /// As [`InProcessOperator::start`].
    pub fn start_with_flags(
        client: &kube::Client,
        ns: &str,
        listener: tokio::net::TcpListener,
        launcher: Launcher,
        grace: Duration,
        ttl: Duration,
        extra: &[String],
    ) -> Self {
        let callback = listener.local_addr().expect("callback listener address");
        let mut all = flags(ns, callback, &launcher, grace, ttl);
        all.extend(extra.iter().cloned());
        let config = Config::try_parse_from(all)
            .unwrap_or_else(|e| panic!("in-process operator flags: {e}"));
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .expect("binding the metrics listener");
        let listeners = Listeners {
            metrics,
            callback: listener,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let client = client.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = run(config, client, listeners, shutdown).await {
                panic!("the in-process operator failed: {e}");
            }
        });
        Self { stop, task }
    }

    /// Stops the operator and waits (up to 30 s) for it to end: controllers finish, the Lease
    /// is released and the usage counters still pending are written, as the binary does on
    /// shutdown.
    ///
    /// # Panics
    /// When the operator failed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(STOP_TIMEOUT, self.task).await {
            Ok(result) => result.expect("the in-process operator ended cleanly"),
            Err(_) => eprintln!("the in-process operator did not stop within {STOP_TIMEOUT:?}"),
        }
    }
}

/// The operator flags for `launcher` on `ns` (pure but for the identity counter).
fn flags(
    ns: &str,
    callback: std::net::SocketAddr,
    launcher: &Launcher,
    grace: Duration,
    ttl: Duration,
) -> Vec<String> {
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let identity = format!(
        "in-process-{}-{}",
        std::process::id(),
        STARTED.fetch_add(1, Ordering::Relaxed)
    );
    let mut flags: Vec<String> = [
        "oauth3-operator",
        "--namespace",
        ns,
        "--lease-namespace",
        ns,
        "--identity",
        &identity,
        "--metrics-addr",
        "127.0.0.1:0",
        "--callback-addr",
        &callback.to_string(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    flags.push(format!("--deadline-grace={}ms", grace.as_millis()));
    flags.push(format!("--execution-ttl={}ms", ttl.as_millis()));
    match launcher {
        Launcher::Process(p) => {
            flags.push("--launcher=process".into());
            flags.push(format!("--runner-binary={}", p.binary.display()));
            flags.extend(p.extra_args.iter().map(|a| format!("--runner-arg={a}")));
            flags.extend(attestation_flags(&p.attestation));
        }
        Launcher::Pod(p) => {
            let defaults = PodLaunchConfig::default();
            assert_eq!(
                (&p.image_pull_policy, &p.operator_pod_labels),
                (&defaults.image_pull_policy, &defaults.operator_pod_labels),
                "no operator flag sets these PodLaunchConfig fields"
            );
            let key_provider = match &p.key_provider {
                kbs @ PodKeyProvider::Kbs { .. } if *kbs == defaults.key_provider => "kbs",
                PodKeyProvider::Dstack { socket } if socket == "/var/run/dstack.sock" => "dstack",
                other => panic!("no operator flag sets the key provider {other:?}"),
            };
            flags.extend([
                "--launcher=pod".to_owned(),
                format!("--runtime-class={}", p.runtime_class_name),
                format!("--runner-image={}", p.image),
                format!("--key-provider={key_provider}"),
                format!("--sandbox-cpu={}", p.cpu),
                format!("--sandbox-memory={}", p.memory),
                format!("--operator-namespace={}", p.operator_namespace),
                format!("--egress-policy={}", p.egress.as_str()),
                format!("--callback-url=http://{callback}"),
            ]);
            flags.extend(attestation_flags(&p.quote_provider));
        }
        Launcher::Flags(extra) => flags.extend(extra.iter().cloned()),
    }
    flags
}

/// `--attestation` (and its endpoint) for `quotes`.
fn attestation_flags(quotes: &PodQuoteProvider) -> Vec<String> {
    let endpoint = match quotes {
        PodQuoteProvider::None => None,
        PodQuoteProvider::Dstack { socket } => Some(socket),
        PodQuoteProvider::Coco { url } => Some(url),
        PodQuoteProvider::Tsm { dir } => Some(dir),
    };
    let mut flags = vec![format!("--attestation={}", quotes.name())];
    flags.extend(endpoint.map(|e| format!("--attestation-endpoint={e}")));
    flags
}

/// The process launcher's runner for tests: the workspace's runner binary with the development
/// key in `dir/dev.key` (hex) and the upstream CA in `dir/ca.pem`, no quote provider.
pub fn dev_runner(dir: &std::path::Path) -> ProcessLauncherConfig {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    ProcessLauncherConfig {
        binary: crate::workspace_binary("oauth3-sandbox-runner", "oauth3-sandbox-runner"),
        extra_args: vec![
            "--key-provider".into(),
            "dev".into(),
            "--dev-key-file".into(),
            d("dev.key"),
            "--insecure-dev-key".into(),
            "--ca-file".into(),
            d("ca.pem"),
        ],
        attestation: PodQuoteProvider::None,
    }
}
