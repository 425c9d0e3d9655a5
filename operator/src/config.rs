//! The operator's flags (`oauth3-operator --help`) and what they mean: one duration grammar for
//! every duration flag, enums for the launcher and key-provider kinds, and the checks that turn
//! the Execution flags into the Execution controller's settings.
//!
//! Every flag also reads an environment variable (named in `--help`); the chart passes flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, ValueEnum};

use crate::egress::{EgressChoice, EgressMode};
use crate::execution::ExecutionConfig;
use crate::launcher::Launcher;
use crate::launcher::pod::{PodKeyProvider, PodLaunchConfig, PodQuoteProvider};
use crate::launcher::process::{ProcessLauncher, ProcessLauncherConfig};
use crate::leader::{LEASE_NAME, LeaderConfig, default_identity};

/// The forms every duration flag accepts, in words (error messages and `--help` say this).
pub const DURATION_FORMS: &str =
    "an integer and one unit of ms, s, m, h or d, e.g. 500ms, 15s, 10m, 1h or 7d";

/// Address of the `/metrics`, `/healthz` and `/readyz` endpoints by default.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:8080";
/// Address of the result callback by default.
pub const DEFAULT_CALLBACK_ADDR: &str = "0.0.0.0:8443";

/// oauth3 operator: keeps Permit status true to each Permit's spec and its owner's decision,
/// runs admitted Executions in sandboxes (confidential-container Pods, or local processes for
/// development) and records their results. Of several replicas, only the holder of the
/// `oauth3-operator` Lease reconciles; the others stand by and take over when it goes away.
/// Every replica serves the result callback.
///
/// Durations are an integer and one unit of ms, s, m, h or d: 500ms, 15s, 10m, 1h, 7d.
#[derive(Parser, Debug, Clone)]
#[command(name = "oauth3-operator", version)]
pub struct Config {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "OAUTH3_NAMESPACE")]
    pub namespace: Option<String>,
    /// Leader election.
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints (`127.0.0.1:0` picks a
    /// free port).
    #[arg(long, env = "OAUTH3_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Log filter, in `RUST_LOG` syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
    /// The Execution controller and the result callback.
    #[command(flatten)]
    pub execution: ExecutionArgs,
    /// The Telegram approval channel.
    #[command(flatten)]
    pub telegram: TelegramArgs,
    /// Drafting capabilities from a Permit's intent.
    #[command(flatten)]
    pub draft: DraftArgs,
}

/// Which drafter turns an intent into capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DrafterChoice {
    /// Deterministic, from the API's OpenAPI 3.x or Swagger 2 description.
    Openapi,
    /// A language model behind an Anthropic Messages or OpenAI Chat Completions compatible
    /// endpoint (`--draft-llm-url`, `--draft-llm-model`, `--draft-llm-key-file`).
    Llm,
}

/// Flags of intent drafting. Off (intents wait, `AwaitingDraft`) until `--draft-doc-hosts`
/// names at least one host.
#[derive(Debug, Clone, Args)]
pub struct DraftArgs {
    /// Which drafter proposes the capabilities of an intent.
    #[arg(long, value_enum, env = "OAUTH3_DRAFTER", default_value_t = DrafterChoice::Openapi)]
    pub drafter: DrafterChoice,
    /// The only hosts API documents are fetched from (comma-separated `host` for port 443 or
    /// `host:port`). An intent's doc URL elsewhere is refused before any request, as is any
    /// host that resolves to a private, loopback, link-local (metadata) or other non-public
    /// address. Default: none, drafting is off.
    #[arg(
        long,
        env = "OAUTH3_DRAFT_DOC_HOSTS",
        value_name = "HOST,HOST",
        value_delimiter = ','
    )]
    pub draft_doc_hosts: Vec<String>,
    /// The largest document fetched, in bytes (GitHub's description is about 13 MB).
    #[arg(long, env = "OAUTH3_DRAFT_DOC_MAX_BYTES", default_value_t = 32 << 20)]
    pub draft_doc_max_bytes: u64,
    /// How long fetching one document, or one model answer, may take.
    #[arg(long, env = "OAUTH3_DRAFT_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub draft_timeout: Duration,
    /// Extra CA certificates (PEM) trusted for doc hosts and the model endpoint, besides
    /// the web PKI roots.
    #[arg(long, env = "OAUTH3_DRAFT_CA_FILE", value_name = "PEM")]
    pub draft_ca_file: Option<PathBuf>,
    /// Development and tests only: also fetch documents from loopback addresses (still only
    /// from `--draft-doc-hosts`), plain http allowed there. Never in production.
    #[arg(long, env = "OAUTH3_INSECURE_DRAFT_DOCS_ON_LOOPBACK")]
    pub insecure_draft_docs_on_loopback: bool,
    /// `--drafter llm`: the endpoint's base URL.
    #[arg(long, env = "OAUTH3_DRAFT_LLM_URL", value_name = "URL")]
    pub draft_llm_url: Option<String>,
    /// `--drafter llm`: the protocol it speaks.
    #[arg(long, value_enum, env = "OAUTH3_DRAFT_LLM_API", default_value_t = crate::draft::llm::LlmApi::Anthropic)]
    pub draft_llm_api: crate::draft::llm::LlmApi,
    /// `--drafter llm`: the model.
    #[arg(long, env = "OAUTH3_DRAFT_LLM_MODEL")]
    pub draft_llm_model: Option<String>,
    /// `--drafter llm`: the file holding the API key (a mounted Secret).
    #[arg(long, env = "OAUTH3_DRAFT_LLM_KEY_FILE", value_name = "PATH")]
    pub draft_llm_key_file: Option<PathBuf>,
    /// `--drafter llm`: how many bytes of each document go into the prompt.
    #[arg(
        long,
        env = "OAUTH3_DRAFT_LLM_MAX_DOC_BYTES",
        default_value_t = 200_000
    )]
    pub draft_llm_max_doc_bytes: usize,
}

impl DraftArgs {
    /// The drafting these flags configure, or `None` when no doc host is allowed.
    ///
    /// # Errors
    /// [`ConfigError::Draft`] naming the flag at fault.
    pub fn drafting(&self) -> Result<Option<crate::draft::Drafting>, ConfigError> {
        use crate::draft::{AnyDrafter, Drafting, OpenApiDrafter, fetch, llm};
        if self.draft_doc_hosts.iter().all(|h| h.trim().is_empty()) {
            return Ok(None);
        }
        let bad = |flag: &'static str, why: String| ConfigError::Draft { flag, why };
        let extra_ca_pem = match &self.draft_ca_file {
            Some(p) => Some(
                std::fs::read(p)
                    .map_err(|e| bad("--draft-ca-file", format!("{}: {e}", p.display())))?,
            ),
            None => None,
        };
        let config = fetch::FetchConfig {
            allowed_hosts: self
                .draft_doc_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            insecure_loopback: self.insecure_draft_docs_on_loopback,
            max_bytes: self.draft_doc_max_bytes,
            timeout: self.draft_timeout,
            extra_ca_pem,
        };
        let fetcher = fetch::DocFetcher::new(config).map_err(|why| bad("--draft-ca-file", why))?;
        let drafter = match self.drafter {
            DrafterChoice::Openapi => AnyDrafter::OpenApi(OpenApiDrafter),
            DrafterChoice::Llm => {
                let url = self
                    .draft_llm_url
                    .clone()
                    .ok_or_else(|| bad("--draft-llm-url", "required with --drafter llm".into()))?;
                let model = self.draft_llm_model.clone().ok_or_else(|| {
                    bad("--draft-llm-model", "required with --drafter llm".into())
                })?;
                let path = self.draft_llm_key_file.as_ref().ok_or_else(|| {
                    bad("--draft-llm-key-file", "required with --drafter llm".into())
                })?;
                let key = std::fs::read_to_string(path)
                    .map_err(|e| bad("--draft-llm-key-file", format!("{}: {e}", path.display())))?;
                let http = reqwest::Client::builder()
                    .tls_backend_preconfigured(fetcher.tls_config())
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .build()
                    .map_err(|e| bad("--draft-llm-url", format!("HTTP client set-up: {e}")))?;
                AnyDrafter::Llm(llm::LlmDrafter {
                    url,
                    model,
                    api: self.draft_llm_api,
                    key: zeroize::Zeroizing::new(key.trim().to_owned()),
                    timeout: self.draft_timeout,
                    max_doc_bytes: self.draft_llm_max_doc_bytes,
                    http,
                })
            }
        };
        Ok(Some(Drafting { fetcher, drafter }))
    }
}

/// Flags of leader election.
#[derive(Debug, Clone, Args)]
pub struct LeaderArgs {
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
    pub leader_elect: bool,
    /// Namespace of the leader election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (default: `$POD_NAME`, else hostname-pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long the Lease stays valid after a renewal (whole seconds, at least 1s).
    #[arg(
        long,
        env = "OAUTH3_LEASE_DURATION",
        value_name = "DURATION",
        default_value = "15s",
        value_parser = parse_duration
    )]
    pub lease_duration: Duration,
    /// How often the leader renews the Lease (shorter than `--lease-duration`).
    #[arg(
        long,
        env = "OAUTH3_LEASE_RENEW_INTERVAL",
        value_name = "DURATION",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub lease_renew_interval: Duration,
    /// How often a standby tries to take the Lease (and the pause after a failed request).
    #[arg(
        long,
        env = "OAUTH3_LEASE_RETRY_INTERVAL",
        value_name = "DURATION",
        default_value = "2s",
        value_parser = parse_duration
    )]
    pub lease_retry_interval: Duration,
}

impl LeaderArgs {
    /// The leader election settings, `None` with `--leader-elect=false` (pure but for the
    /// default identity, which reads `$POD_NAME` and the hostname).
    pub fn leader_config(&self) -> Option<LeaderConfig> {
        self.leader_elect.then(|| LeaderConfig {
            lease_name: LEASE_NAME.to_owned(),
            namespace: self.lease_namespace.clone(),
            identity: self.identity.clone().unwrap_or_else(default_identity),
            lease_duration: self.lease_duration,
            renew_interval: self.lease_renew_interval,
            retry_interval: self.lease_retry_interval,
        })
    }
}

/// Which launcher runs sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LauncherChoice {
    /// A confidential-container Pod per Execution (Kata on Intel TDX by default).
    Pod,
    /// The runner as a local child process: development and tests only, no TEE.
    Process,
}

/// Where runners in sandbox Pods get their unsealing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyProviderChoice {
    /// The Confidential Containers Key Broker Service, through the in-guest attestation agent.
    Kbs,
    /// The dstack guest agent's socket.
    Dstack,
}

impl KeyProviderChoice {
    /// The key provider runners in Pods are told about: where each kind is reached inside the
    /// TEE (`dstack_socket`: the dstack guest agent's socket, on the node and in the Pod).
    pub fn pod_key_provider(self, dstack_socket: &str) -> PodKeyProvider {
        match self {
            Self::Kbs => PodKeyProvider::Kbs {
                url: "http://127.0.0.1:8006".into(),
            },
            Self::Dstack => PodKeyProvider::Dstack {
                socket: dstack_socket.to_owned(),
            },
        }
    }
}

/// Which quote provider runners attest their results with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttestationChoice {
    /// No quote (results say `attestation.kind: none`).
    None,
    /// The dstack guest agent's `GetQuote`.
    Dstack,
    /// Confidential Containers' attestation agent (`/aa/evidence`).
    Coco,
    /// Linux configfs-tsm.
    Tsm,
}

impl AttestationChoice {
    /// The quote provider with `endpoint` (or the provider's default place inside the TEE).
    pub fn endpoint(self, endpoint: Option<&str>) -> PodQuoteProvider {
        use oauth3_protocol::runner_args::{
            DEFAULT_AA_URL, DEFAULT_DSTACK_SOCKET, DEFAULT_TSM_REPORT_DIR,
        };
        let at = |default: &str| endpoint.unwrap_or(default).to_owned();
        match self {
            Self::None => PodQuoteProvider::None,
            Self::Dstack => PodQuoteProvider::Dstack {
                socket: at(DEFAULT_DSTACK_SOCKET),
            },
            Self::Coco => PodQuoteProvider::Coco {
                url: at(DEFAULT_AA_URL),
            },
            Self::Tsm => PodQuoteProvider::Tsm {
                dir: at(DEFAULT_TSM_REPORT_DIR),
            },
        }
    }
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
    /// `--runner-arg=--key-provider --runner-arg=dev ...` (default: none).
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
    /// pod launcher: key provider inside the TEE.
    #[arg(long, value_enum, env = "OAUTH3_KEY_PROVIDER", default_value_t = KeyProviderChoice::Kbs)]
    pub key_provider: KeyProviderChoice,
    /// Quote provider runners attest results with: `none`, `dstack`, `coco` or `tsm`. Default:
    /// with `--launcher pod`, the one matching the key provider (`kbs` -> `coco`, `dstack` ->
    /// `dstack`); with `--launcher process`, `none`. A runner whose provider gives no quote
    /// fails the run.
    #[arg(long, value_enum, env = "OAUTH3_ATTESTATION")]
    pub attestation: Option<AttestationChoice>,
    /// Where the quote provider is reached by the runner (a socket path, URL or configfs-tsm
    /// directory); default: the provider's standard place.
    #[arg(long, value_name = "PATH|URL", env = "OAUTH3_ATTESTATION_ENDPOINT")]
    pub attestation_endpoint: Option<String>,
    /// pod launcher: CPU limit (and request) of each sandbox Pod's runner, a Kubernetes
    /// quantity (`500m`, `1`).
    #[arg(long, env = "OAUTH3_SANDBOX_CPU", default_value = "500m", value_parser = quantity)]
    pub sandbox_cpu: String,
    /// pod launcher: memory limit (and request) of each sandbox Pod's runner, a Kubernetes
    /// quantity (`256Mi`, `1Gi`). A runner above it is killed and its Execution ends `Failed`
    /// (`SandboxFailed`, `OOMKilled`).
    #[arg(long, env = "OAUTH3_SANDBOX_MEMORY", default_value = "256Mi", value_parser = quantity)]
    pub sandbox_memory: String,
    /// pod launcher: how each sandbox Pod's egress is limited to its Permit's hosts: `cilium`
    /// (CiliumNetworkPolicy by host name), `kubernetes` (NetworkPolicy with the addresses the
    /// hosts resolve to at launch, public addresses only), `open` (any public address on 443;
    /// the runner's checks only), `auto` (`cilium` when the cluster serves
    /// CiliumNetworkPolicy, else `kubernetes`).
    #[arg(long, value_enum, env = "OAUTH3_EGRESS_POLICY", default_value_t = EgressChoice::Auto)]
    pub egress_policy: EgressChoice,
    /// pod launcher: namespace of the operator (for the sandbox NetworkPolicy's callback rule).
    #[arg(long, env = "POD_NAMESPACE", default_value = "oauth3-system")]
    pub operator_namespace: String,
    /// pod launcher: where the dstack guest agent's socket is, on the node and in the Pod
    /// (with `--key-provider dstack`, and the default endpoint of `--attestation dstack`).
    #[arg(
        long,
        env = "OAUTH3_DSTACK_SOCKET",
        value_name = "PATH",
        default_value = oauth3_protocol::runner_args::DEFAULT_DSTACK_SOCKET
    )]
    pub dstack_socket: String,
    /// pod launcher: allow sandbox Pods to reach the result callback at these addresses (an
    /// IPv4 or IPv6 CIDR, repeatable) instead of at the operator's Pods: for an operator that
    /// runs with hostNetwork or outside the cluster's Pod network. Default: the operator's Pods
    /// (namespace `--operator-namespace`, label `app.kubernetes.io/name=oauth3-operator`).
    #[arg(long = "callback-egress-cidr", value_name = "CIDR", value_parser = cidr_arg)]
    pub callback_egress_cidrs: Vec<String>,
    /// pod launcher: PEM CA certificate(s) sandbox runners trust for upstream APIs besides the
    /// web PKI roots built into the runner (a private PKI). Handed to each run in its bundle
    /// Secret. Whoever controls this file can intercept every sandbox's upstream TLS,
    /// credentials included: in a confidential deployment leave it unset. Default: none.
    #[arg(long, env = "OAUTH3_SANDBOX_CA_FILE", value_name = "PEM")]
    pub sandbox_ca_file: Option<PathBuf>,
    /// Address the result callback listens on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "OAUTH3_CALLBACK_ADDR", default_value = DEFAULT_CALLBACK_ADDR)]
    pub callback_addr: String,
    /// URL runners use to reach the callback. Default: `http(s)://<the bound address>` (fine
    /// for the process launcher). Required with `--launcher pod`: the https URL of the
    /// operator's callback Service, e.g. `https://oauth3-callback.oauth3-system.svc:8443`.
    #[arg(long, env = "OAUTH3_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// PEM certificate chain the callback serves HTTPS with (e.g. `tls.crt` of a mounted
    /// `kubernetes.io/tls` Secret; reloaded when the file changes). Needs `--callback-tls-key`.
    /// Default: none, the callback serves plain HTTP.
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
    /// Added to an Execution's timeoutSeconds before the operator gives up waiting for its
    /// result and marks it TimedOut (and, for sandbox Pods, to their activeDeadlineSeconds).
    #[arg(
        long,
        env = "OAUTH3_DEADLINE_GRACE",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub deadline_grace: Duration,
    /// How long finished Executions are kept before they are deleted (more than zero).
    #[arg(
        long,
        env = "OAUTH3_EXECUTION_TTL",
        value_name = "DURATION",
        default_value = "24h",
        value_parser = parse_duration
    )]
    pub execution_ttl: Duration,
    /// pod launcher: run SandboxPools, booted idle sandbox Pods that Executions start on
    /// instead of a fresh Pod. The operator then reads the Permit's sealed Secrets (ciphertext
    /// only) to put them in a member's bundle, since a booted member has no projection.
    #[arg(long, env = "OAUTH3_SANDBOX_POOLS")]
    pub sandbox_pools: bool,
    /// How long a SandboxPool member may take, from its creation, to boot and first ask for a
    /// run with its token (check in). Only a member that checked in is claimed; one that has
    /// not by then (never scheduled, stuck booting, or unable to reach the callback) is deleted
    /// and replaced, with a `MemberSilent` Event on its pool.
    #[arg(
        long,
        env = "OAUTH3_POOL_CHECK_IN",
        value_name = "DURATION",
        default_value = "2m",
        value_parser = parse_duration
    )]
    pub pool_check_in: Duration,
}

/// Flags of the Telegram approval channel. Off when no token file is given.
#[derive(Debug, Clone, Args)]
pub struct TelegramArgs {
    /// File holding the Telegram bot token (from BotFather), e.g. a mounted Kubernetes
    /// Secret. Default: none, the Telegram channel is off.
    #[arg(long, env = "OAUTH3_TELEGRAM_TOKEN_FILE", value_name = "PATH")]
    pub telegram_token_file: Option<PathBuf>,
    /// Base URL of the Bot API.
    #[arg(long, env = "OAUTH3_TELEGRAM_API_URL", value_name = "URL", default_value = crate::telegram::DEFAULT_API_URL)]
    pub telegram_api_url: String,
    /// The chat the bot writes to and takes decisions from (a user id for a private chat,
    /// a negative id for a group). Required with `--telegram-token-file`.
    #[arg(
        long,
        env = "OAUTH3_TELEGRAM_CHAT_ID",
        value_name = "ID",
        allow_hyphen_values = true
    )]
    pub telegram_chat_id: Option<String>,
    /// Telegram user ids whose taps and commands count (comma-separated). Required with
    /// `--telegram-token-file`.
    #[arg(long, env = "OAUTH3_TELEGRAM_OWNER_IDS", value_name = "ID,ID")]
    pub telegram_owner_ids: Option<String>,
    /// How long a request may wait for the owner before it is recorded Denied (more than
    /// zero).
    #[arg(
        long,
        env = "OAUTH3_TELEGRAM_APPROVAL_TIMEOUT",
        value_name = "DURATION",
        default_value = "24h",
        value_parser = parse_duration
    )]
    pub telegram_approval_timeout: Duration,
    /// How often pending requests are looked for and the Bot API is polled (at least 100ms).
    #[arg(
        long,
        env = "OAUTH3_TELEGRAM_POLL_INTERVAL",
        value_name = "DURATION",
        default_value = "2s",
        value_parser = parse_duration
    )]
    pub telegram_poll_interval: Duration,
    /// The oauth3-gateway's public URL (its `--public-url`). When set, each request gets an
    /// "Open on the web" button: the owner who taps it receives a one-time sign-in link (valid
    /// 15 minutes) to the gateway's approval page, where the whole request is shown and
    /// deciding needs no Kubernetes token. Default: none, no button.
    #[arg(long, env = "OAUTH3_TELEGRAM_WEB_URL", value_name = "URL")]
    pub telegram_web_url: Option<String>,
}

/// A duration flag's value does not follow the one grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration: write {DURATION_FORMS}")]
pub struct DurationSyntax(String);

/// Parses a duration flag: `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d` (pure). The
/// one grammar of every duration flag; zero is a duration (flags that need more say so).
///
/// # Errors
/// [`DurationSyntax`] for anything else (spaces, signs, fractions, bare numbers, two units,
/// upper case, a value too large for a duration).
pub fn parse_duration(value: &str) -> Result<Duration, DurationSyntax> {
    oauth3_crds::split_duration(value)
        .and_then(|(n, unit)| unit.times(n))
        .ok_or_else(|| DurationSyntax(value.to_owned()))
}

/// Why the flags cannot configure the operator; each names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The pod launcher needs `--callback-url`.
    #[error(
        "--callback-url is required with --launcher pod: the https URL at which sandbox Pods \
         reach this operator's callback Service"
    )]
    CallbackUrlRequired,
    /// Runners would refuse the callback URL.
    #[error("--callback-url {url}: {rule}")]
    CallbackUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        rule: &'static str,
    },
    /// The callback CA file could not be read.
    #[error("--callback-ca-file {}: {source}", path.display())]
    ReadCallbackCa {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox CA file could not be read.
    #[error("--sandbox-ca-file {}: {source}", path.display())]
    ReadSandboxCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The sandbox CA file holds no certificate.
    #[error("--sandbox-ca-file {}: no PEM CERTIFICATE block", path.display())]
    NoSandboxCa {
        /// The file.
        path: PathBuf,
    },
    /// The callback CA file holds no certificate.
    #[error("--callback-ca-file {}: no PEM CERTIFICATE block", path.display())]
    NoCallbackCa {
        /// The file.
        path: PathBuf,
    },
    /// The callback's certificate or key cannot be used.
    #[error("--callback-tls-cert: {0}")]
    CallbackTls(#[source] crate::tls::TlsError),
    /// A drafting flag has a bad value.
    #[error("{flag}: {why}")]
    Draft {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A duration flag that must be positive is zero.
    #[error("{flag}: must be more than zero")]
    ZeroDuration {
        /// The flag.
        flag: &'static str,
    },
}

impl ExecutionArgs {
    /// The Execution controller's settings for a callback bound at `bound` (serving HTTPS when
    /// `tls`): the launcher, the URL runners call back to, the CA they trust for it, the
    /// deadline grace and the TTL. Reads only the CA file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag at fault.
    pub fn execution_config(
        &self,
        bound: SocketAddr,
        tls: bool,
        egress: EgressMode,
    ) -> Result<ExecutionConfig, ConfigError> {
        if self.execution_ttl.is_zero() {
            return Err(ConfigError::ZeroDuration {
                flag: "--execution-ttl",
            });
        }
        let mut launcher = self.launcher_for(bound.port(), egress);
        if let (Launcher::Pod(pod), Some(path)) = (&mut launcher, &self.sandbox_ca_file) {
            pod.upstream_ca_pem = Some(read_pem(
                path,
                |path, source| ConfigError::ReadSandboxCa { path, source },
                |path| ConfigError::NoSandboxCa { path },
            )?);
        }
        Ok(ExecutionConfig {
            launcher,
            callback_base_url: callback_url(self, bound, tls)?,
            callback_ca_pem: callback_ca_pem(self)?,
            deadline_grace: self.deadline_grace,
            ttl: self.execution_ttl,
            pools: self.sandbox_pools,
            pool_check_in: self.pool_check_in,
        })
    }

    /// The quote provider runners are told about (see `--attestation`; pure).
    pub fn quote_provider(&self) -> PodQuoteProvider {
        let choice = self
            .attestation
            .unwrap_or(match (self.launcher, self.key_provider) {
                (LauncherChoice::Process, _) => AttestationChoice::None,
                (LauncherChoice::Pod, KeyProviderChoice::Kbs) => AttestationChoice::Coco,
                (LauncherChoice::Pod, KeyProviderChoice::Dstack) => AttestationChoice::Dstack,
            });
        let endpoint = match (choice, &self.attestation_endpoint) {
            (_, Some(e)) => Some(e.as_str()),
            (AttestationChoice::Dstack, None) => Some(self.dstack_socket.as_str()),
            (_, None) => None,
        };
        choice.endpoint(endpoint)
    }

    /// The launcher the flags choose; sandbox Pods reach the callback on `callback_port` and
    /// are walled in by `egress` (`--egress-policy` resolved) (pure).
    pub fn launcher_for(&self, callback_port: u16, egress: EgressMode) -> Launcher {
        match self.launcher {
            LauncherChoice::Process => {
                Launcher::Process(ProcessLauncher::new(ProcessLauncherConfig {
                    binary: self.runner_binary.clone(),
                    extra_args: self.runner_args.clone(),
                    attestation: self.quote_provider(),
                }))
            }
            LauncherChoice::Pod => Launcher::Pod(Box::new(PodLaunchConfig {
                runtime_class_name: self.runtime_class.clone(),
                image: self.runner_image.clone(),
                key_provider: self.key_provider.pod_key_provider(&self.dstack_socket),
                quote_provider: self.quote_provider(),
                operator_namespace: self.operator_namespace.clone(),
                callback_port: i32::from(callback_port),
                callback_cidrs: self.callback_egress_cidrs.clone(),
                cpu: self.sandbox_cpu.clone(),
                memory: self.sandbox_memory.clone(),
                deadline_grace_seconds: i64::try_from(self.deadline_grace.as_secs())
                    .unwrap_or(i64::MAX),
                egress,
                ..PodLaunchConfig::default()
            })),
        }
    }
}

/// The URL runners reach the callback at (pure): `--callback-url`, else the bound address.
/// Refused when runners would refuse it (plain http off loopback: the bearer token would
/// cross the network in clear) and, for the pod launcher, when none is given.
///
/// # Errors
/// [`ConfigError::CallbackUrlRequired`] or [`ConfigError::CallbackUrl`] naming the rule.
pub fn callback_url(
    args: &ExecutionArgs,
    bound: SocketAddr,
    tls: bool,
) -> Result<String, ConfigError> {
    let url = match &args.callback_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None if args.launcher == LauncherChoice::Pod => {
            return Err(ConfigError::CallbackUrlRequired);
        }
        None => format!("{}://{bound}", if tls { "https" } else { "http" }),
    };
    if !oauth3_protocol::callback::callback_url_allowed(&url) {
        return Err(ConfigError::CallbackUrl {
            url,
            rule: "must be https (plain http only on loopback), or runners refuse to send \
                   their result",
        });
    }
    if tls && url.starts_with("http://") {
        return Err(ConfigError::CallbackUrl {
            url,
            rule: "plain http, but the callback serves HTTPS (--callback-tls-cert); use https",
        });
    }
    Ok(url)
}

/// The PEM runners trust for the callback: `--callback-ca-file`, else next to the serving
/// certificate `ca.crt`, else the serving certificate itself; none without TLS.
///
/// # Errors
/// [`ConfigError`] naming the file that could not be read or holds no certificate.
fn callback_ca_pem(args: &ExecutionArgs) -> Result<Option<String>, ConfigError> {
    let path = match (&args.callback_ca_file, &args.callback_tls_cert) {
        (Some(ca), _) => ca.clone(),
        (None, Some(cert)) => {
            let ca = cert.with_file_name("ca.crt");
            if ca.is_file() { ca } else { cert.clone() }
        }
        (None, None) => return Ok(None),
    };
    read_pem(
        &path,
        |path, source| ConfigError::ReadCallbackCa { path, source },
        |path| ConfigError::NoCallbackCa { path },
    )
    .map(Some)
}

/// A PEM file that must hold at least one certificate, with the flag's own errors.
fn read_pem(
    path: &std::path::Path,
    unreadable: impl FnOnce(PathBuf, std::io::Error) -> ConfigError,
    empty: impl FnOnce(PathBuf) -> ConfigError,
) -> Result<String, ConfigError> {
    let pem =
        std::fs::read_to_string(path).map_err(|source| unreadable(path.to_owned(), source))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(empty(path.to_owned()));
    }
    Ok(pem)
}

/// A CIDR as `--callback-egress-cidr` takes it: an IP address with a prefix length that fits
/// it (`10.88.0.1/32`, `fd00::/64`); a bare address means the address alone.
///
/// # Errors
/// What is wrong, in words.
pub fn cidr_arg(value: &str) -> Result<String, String> {
    let (ip, len) = value.split_once('/').unwrap_or((value, ""));
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("{value:?} is not an IP address with an optional /prefix"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = if len.is_empty() {
        max
    } else {
        len.parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{value:?}: the prefix length must be 0 to {max}"))?
    };
    Ok(format!("{ip}/{len}"))
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
    use clap::CommandFactory;

    fn parse(flags: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("oauth3-operator").chain(flags.iter().copied()))
    }

    fn config(flags: &[&str]) -> Config {
        parse(flags).expect("flags parse")
    }

    fn args(flags: &[&str]) -> ExecutionArgs {
        config(flags).execution
    }

    fn refused(flags: &[&str]) -> String {
        parse(flags)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    fn bound() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8443))
    }

    #[test]
    fn every_unit_of_the_duration_grammar_is_accepted() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("15s", Duration::from_secs(15)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("0s", Duration::ZERO),
            ("1500ms", Duration::from_millis(1500)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn anything_but_an_integer_and_one_unit_is_refused_naming_the_forms() {
        for bad in [
            "",
            "15",
            "s",
            "fast",
            "1.5s",
            "-1s",
            "+1s",
            " 15s",
            "15s ",
            "15 s",
            "15S",
            "1h30m",
            "15sec",
            "1w",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!(
                    "{bad:?} is not a duration: write an integer and one unit of ms, s, m, h \
                     or d, e.g. 500ms, 15s, 10m, 1h or 7d"
                )
            );
        }
    }

    #[test]
    fn every_duration_flag_uses_the_one_grammar_and_names_itself_when_refusing() {
        let flags = [
            "--lease-duration",
            "--lease-renew-interval",
            "--lease-retry-interval",
            "--deadline-grace",
            "--execution-ttl",
            "--telegram-approval-timeout",
            "--telegram-poll-interval",
        ];
        for flag in flags {
            let c = config(&[flag, "1m"]);
            let got = [
                c.leader.lease_duration,
                c.leader.lease_renew_interval,
                c.leader.lease_retry_interval,
                c.execution.deadline_grace,
                c.execution.execution_ttl,
                c.telegram.telegram_approval_timeout,
                c.telegram.telegram_poll_interval,
            ];
            assert!(got.contains(&Duration::from_secs(60)), "{flag} 1m: {got:?}");
            let err = refused(&[flag, "soon"]);
            assert!(
                err.contains(flag) && err.contains("500ms, 15s, 10m, 1h or 7d"),
                "{flag}: {err}"
            );
            let err = refused(&[flag, "2"]);
            assert!(
                err.contains(flag),
                "a bare number is refused for {flag}: {err}"
            );
        }
    }

    #[test]
    fn the_defaults_are_those_in_the_help_text() {
        let c = config(&[]);
        assert_eq!(c.namespace, None);
        assert!(c.leader.leader_elect);
        assert_eq!(c.leader.lease_duration, Duration::from_secs(15));
        assert_eq!(c.leader.lease_renew_interval, Duration::from_secs(5));
        assert_eq!(c.leader.lease_retry_interval, Duration::from_secs(2));
        assert_eq!(c.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
        assert_eq!(c.execution.launcher, LauncherChoice::Pod);
        assert_eq!(c.execution.key_provider, KeyProviderChoice::Kbs);
        assert_eq!(c.execution.callback_addr, DEFAULT_CALLBACK_ADDR);
        assert_eq!(c.execution.deadline_grace, Duration::from_secs(30));
        assert_eq!(c.execution.execution_ttl, Duration::from_secs(86_400));
        assert_eq!(
            c.telegram.telegram_approval_timeout,
            Duration::from_secs(86_400)
        );
        assert_eq!(c.telegram.telegram_poll_interval, Duration::from_secs(2));
        let help = Config::command().render_long_help().to_string();
        for shown in [
            "[default: 15s]",
            "[default: 5s]",
            "[default: 2s]",
            "[default: 30s]",
            "[default: 24h]",
            "[default: kbs]",
            "[default: pod]",
            "[default: 0.0.0.0:8080]",
            "[default: 0.0.0.0:8443]",
            "500ms, 15s, 10m, 1h, 7d",
        ] {
            assert!(help.contains(shown), "--help shows {shown}:\n{help}");
        }
    }

    #[test]
    fn the_quote_provider_follows_the_launcher_and_key_provider_unless_named() {
        let c = config(&[]);
        assert_eq!(
            c.execution.quote_provider(),
            PodQuoteProvider::Coco {
                url: "http://127.0.0.1:8006".into()
            }
        );
        let c = config(&["--key-provider", "dstack"]);
        assert!(matches!(
            c.execution.quote_provider(),
            PodQuoteProvider::Dstack { .. }
        ));
        let c = config(&["--launcher", "process"]);
        assert_eq!(c.execution.quote_provider(), PodQuoteProvider::None);
        let c = config(&[
            "--launcher",
            "process",
            "--attestation",
            "tsm",
            "--attestation-endpoint",
            "/tmp/tsm",
        ]);
        assert_eq!(
            c.execution.quote_provider(),
            PodQuoteProvider::Tsm {
                dir: "/tmp/tsm".into()
            }
        );
    }

    #[test]
    fn the_forms_the_chart_demo_and_tests_pass_are_accepted() {
        // charts/oauth3 (values.yaml defaults), tests/src/telegram.rs, operator/tests/leader.rs.
        let c = config(&[
            "--leader-elect=true",
            "--lease-duration=15s",
            "--lease-renew-interval=5s",
            "--lease-retry-interval=2s",
            "--deadline-grace=30s",
            "--execution-ttl=24h",
            "--telegram-approval-timeout=3s",
            "--telegram-poll-interval=300ms",
        ]);
        assert_eq!(
            c.telegram.telegram_poll_interval,
            Duration::from_millis(300)
        );
        let c = config(&["--lease-renew-interval", "500ms", "--leader-elect=false"]);
        assert_eq!(c.leader.lease_renew_interval, Duration::from_millis(500));
        assert!(c.leader.leader_config().is_none());
    }

    #[test]
    fn kinds_are_enums_and_unknown_kinds_are_refused_with_the_choices() {
        assert_eq!(
            args(&["--launcher", "process"]).launcher,
            LauncherChoice::Process
        );
        assert_eq!(
            args(&["--key-provider", "dstack"]).key_provider,
            KeyProviderChoice::Dstack
        );
        assert_eq!(
            KeyProviderChoice::Dstack.pod_key_provider("/var/run/dstack.sock"),
            PodKeyProvider::Dstack {
                socket: "/var/run/dstack.sock".into()
            }
        );
        let err = refused(&["--key-provider", "vault"]);
        assert!(
            err.contains("--key-provider") && err.contains("kbs") && err.contains("dstack"),
            "{err}"
        );
        let err = refused(&["--launcher", "vm"]);
        assert!(
            err.contains("--launcher") && err.contains("pod") && err.contains("process"),
            "{err}"
        );
    }

    #[test]
    fn the_pod_launcher_takes_its_settings_from_the_flags() {
        let a = args(&[
            "--key-provider",
            "dstack",
            "--deadline-grace",
            "45s",
            "--sandbox-cpu",
            "1",
        ]);
        let Launcher::Pod(pod) = a.launcher_for(9443, EgressMode::Kubernetes) else {
            panic!("the pod launcher");
        };
        assert_eq!(pod.callback_port, 9443);
        assert_eq!(pod.deadline_grace_seconds, 45);
        assert_eq!(pod.cpu, "1");
        assert_eq!(pod.runtime_class_name, "kata-qemu-tdx");
        assert!(matches!(pod.key_provider, PodKeyProvider::Dstack { .. }));
    }

    #[test]
    fn callback_egress_cidrs_are_addresses_with_a_fitting_prefix() {
        assert_eq!(cidr_arg("10.88.0.1").as_deref(), Ok("10.88.0.1/32"));
        assert_eq!(cidr_arg("10.88.0.0/16").as_deref(), Ok("10.88.0.0/16"));
        assert_eq!(cidr_arg("fd00::/64").as_deref(), Ok("fd00::/64"));
        for bad in [
            "10.88.0.1/33",
            "fd00::/129",
            "oauth3-callback",
            "10.88.0.1/x",
            "",
        ] {
            assert!(cidr_arg(bad).is_err(), "{bad:?} accepted");
        }
        let a = args(&[
            "--callback-egress-cidr",
            "10.88.0.1",
            "--dstack-socket",
            "/run/d.sock",
            "--key-provider",
            "dstack",
            "--attestation",
            "dstack",
        ]);
        let Launcher::Pod(pod) = a.launcher_for(9443, EgressMode::Kubernetes) else {
            panic!("the pod launcher");
        };
        assert_eq!(pod.callback_cidrs, ["10.88.0.1/32"]);
        assert_eq!(
            pod.key_provider,
            PodKeyProvider::Dstack {
                socket: "/run/d.sock".into()
            }
        );
        assert_eq!(
            pod.quote_provider,
            PodQuoteProvider::Dstack {
                socket: "/run/d.sock".into()
            }
        );
        let err = refused(&["--callback-egress-cidr", "10.0.0.0/40"]);
        assert!(err.contains("--callback-egress-cidr"), "{err}");
    }

    #[test]
    fn a_sandbox_ca_file_is_read_into_the_pod_launcher_or_refused_naming_the_flag() {
        let dir = std::env::temp_dir().join(format!("oauth3-sandbox-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (good, empty) = (dir.join("ca.pem"), dir.join("empty.pem"));
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("ca");
        std::fs::write(&empty, "not a certificate").expect("empty");
        let flags = |path: &std::path::Path| {
            args(&[
                "--callback-url",
                "https://cb.example:8443",
                "--sandbox-ca-file",
                path.to_str().expect("utf-8"),
            ])
        };
        let config = flags(&good)
            .execution_config(bound(), true, EgressMode::Kubernetes)
            .expect("config");
        let Launcher::Pod(pod) = config.launcher else {
            panic!("the pod launcher");
        };
        assert!(
            pod.upstream_ca_pem
                .is_some_and(|p| p.contains("BEGIN CERTIFICATE"))
        );
        for bad in [empty, dir.join("missing.pem")] {
            let err = flags(&bad)
                .execution_config(bound(), true, EgressMode::Kubernetes)
                .expect_err("refused");
            assert!(err.to_string().starts_with("--sandbox-ca-file"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_zero_execution_ttl_is_refused_naming_the_flag() {
        let a = args(&["--launcher", "process", "--execution-ttl", "0s"]);
        let err = a
            .execution_config(bound(), false, EgressMode::Kubernetes)
            .expect_err("zero ttl");
        assert!(err.to_string().starts_with("--execution-ttl"), "{err}");
    }

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
        let err = refused(&["--sandbox-memory", "lots"]);
        assert!(
            err.contains("--sandbox-memory") && err.contains("\"lots\""),
            "{err}"
        );
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
        let err = callback_url(&args(&["--launcher", "pod"]), bound(), true)
            .expect_err("none")
            .to_string();
        assert!(err.contains("--callback-url is required"), "{err}");
        let err = callback_url(
            &args(&["--callback-url", "http://oauth3.oauth3-system.svc:8443"]),
            bound(),
            false,
        )
        .expect_err("plain http off loopback")
        .to_string();
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
        let err = callback_url(&a, bound(), true)
            .expect_err("mismatch")
            .to_string();
        assert!(err.contains("serves HTTPS"), "{err}");
    }

    #[test]
    fn the_tls_key_and_certificate_come_together() {
        let err = refused(&["--callback-tls-cert", "/c.pem"]);
        assert!(
            err.contains("--callback-tls-key"),
            "a certificate without a key is refused: {err}"
        );
    }

    #[test]
    fn the_flag_definitions_are_consistent() {
        Config::command().debug_assert();
    }
}
