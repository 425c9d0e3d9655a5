//! `oauth3-sandbox-runner`: the command line of the sandbox runner (thin; the work is in the
//! library).
//!
//! Exit codes: 0 the code succeeded (and the result was delivered); 1 the code failed, timed
//! out or was denied, or the callback could not be reached; 2 usage or bundle errors.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use oauth3_protocol::attestation::enclave_key_report_data;
use oauth3_protocol::proxy::ServeBundle;
use oauth3_protocol::runner_args::{DEFAULT_AA_URL, DEFAULT_TSM_REPORT_DIR};
use oauth3_sandbox_runner::attest::{CocoQuotes, DstackQuotes, QuoteProvider, TsmQuotes};
use oauth3_sandbox_runner::bundle::{Bundle, sealed_secrets_from_dir};
use oauth3_sandbox_runner::callback::post_result;
use oauth3_sandbox_runner::proxy::auth::{OperatorReview, TokenFile};
use oauth3_sandbox_runner::proxy::{Proxy, ProxyOptions, StopReason};
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_sandbox_runner::run::{
    BackendOptions, HostInputs, RunnerDeps, run_bundle, scoped_fetch, unseal_with,
};
use oauth3_sandbox_runner::secrets::{DevKey, DevProvider, DstackProvider, KbsProvider};

/// Runs agent JavaScript from an oauth3 run bundle in a QuickJS sandbox that can reach the
/// outside only through the capabilities of an approved Permit, and reports the result.
#[derive(Debug, Parser)]
#[command(name = "oauth3-sandbox-runner", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a bundle: validate it, unseal its secrets, run the code, write the result JSON and
    /// POST it to the bundle's callback (with `Authorization: Bearer <callback.token>`).
    /// Exit code 0 when the code succeeded, 1 when it failed, timed out or was denied (or the
    /// callback failed), 2 for usage or bundle errors.
    Run(RunArgs),
    /// Serve a proxied Permit: forward HTTPS requests `/<capability>/<path>` as capability calls
    /// of the serve bundle's approved Permit (the same policy, credential injection, oauth2
    /// refresh and redaction as a run), streaming answers, until stopped (SIGTERM or Ctrl-C),
    /// the approval's expiry (`notAfter`) or the idle timeout. Each call is printed to standard
    /// output as one JSON line (`ProxyCall`). Exit code 0 when it stopped, 1 when it could not
    /// start (unsealing, binding, TLS), 2 for usage or bundle errors.
    Serve(ServeArgs),
    /// Check a bundle without running it and print its code and Permit digests as JSON.
    /// Exit code 0 when valid, 2 otherwise.
    Validate {
        /// Path of the bundle JSON, or `-` for standard input.
        #[arg(long, value_name = "PATH")]
        bundle: PathBuf,
    },
    /// Print the X25519 public key (64 hex characters) of the key that opens sealed secrets,
    /// as the selected key provider yields it. Owners seal secrets to this key
    /// (`kubectl oauth3 seal --public-key ...`). With --attest (and --attestation naming a
    /// quote provider), print JSON instead: the key and a TDX quote whose report data binds it
    /// (`kubectl oauth3 seal --attestation FILE --policy FILE` checks it before sealing).
    PublicKey {
        #[command(flatten)]
        keys: KeyProviderArgs,
        #[command(flatten)]
        quotes: QuoteProviderArgs,
        /// Print the key with a quote over it, as JSON `{publicKey, attestation}`.
        #[arg(long)]
        attest: bool,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Path of the bundle JSON, or `-` for standard input.
    #[arg(long, value_name = "PATH", required_unless_present = "standby")]
    bundle: Option<PathBuf>,

    /// Run as a pool member: instead of --bundle, wait for the run bundle at the standby
    /// endpoint named in this standby file (`{url, token, caPem}`), asking until an Execution
    /// claims this member (exit 0 without running when the operator retires it, or on
    /// SIGTERM while waiting).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["bundle", "sealed_dir"])]
    standby: Option<PathBuf>,

    /// Write the result JSON to this file instead of standard output.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,

    #[command(flatten)]
    keys: KeyProviderArgs,

    #[command(flatten)]
    quotes: QuoteProviderArgs,

    /// Directory with one file per sealed secret (file name = secret name, content = envelope),
    /// as projected into sandbox Pods; added to the bundle's `sealedSecrets`.
    #[arg(long, value_name = "DIR")]
    sealed_dir: Option<PathBuf>,

    /// Extra PEM file of CA certificates to trust for the callback (and upstream) TLS, on top
    /// of the web PKI roots built into the runner. Repeatable.
    #[arg(long = "ca-file", value_name = "PEM")]
    ca_files: Vec<PathBuf>,

    /// Refresh an oauth2 credential's access token before a call when it expires within this
    /// many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = oauth3_sandbox_runner::oauth::DEFAULT_REFRESH_LEAD_SECONDS)]
    oauth_refresh_lead: i64,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Path of the serve bundle JSON (`oauth3_protocol::proxy::ServeBundle`), or `-` for
    /// standard input.
    #[arg(long, value_name = "PATH")]
    bundle: PathBuf,

    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    listen: std::net::SocketAddr,

    /// PEM certificate chain of the HTTPS endpoint.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of the HTTPS endpoint.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Serve plain HTTP instead of HTTPS; only with a loopback --listen address
    /// (development).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_plain_http: bool,

    /// File of accepted client tokens, one `sha256:<hex of the token> <identity>` per line
    /// (development). Without it, the operator reviews each client token over the bundle's
    /// callback (TokenReview and SubjectAccessReview on `permits/proxy`).
    #[arg(long, value_name = "PATH")]
    client_token_file: Option<PathBuf>,

    #[command(flatten)]
    keys: KeyProviderArgs,

    /// Directory with one file per sealed secret, as projected into Pods; added to the
    /// bundle's `sealedSecrets`.
    #[arg(long, value_name = "DIR")]
    sealed_dir: Option<PathBuf>,

    /// Extra PEM file of CA certificates to trust for upstream TLS. Repeatable.
    #[arg(long = "ca-file", value_name = "PEM")]
    ca_files: Vec<PathBuf>,

    /// Refresh an oauth2 access token before a call when it expires within this many
    /// seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = oauth3_sandbox_runner::oauth::DEFAULT_REFRESH_LEAD_SECONDS)]
    oauth_refresh_lead: i64,

    /// Longest one upstream request may take, its streamed answer included.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    upstream_timeout: u64,

    /// How long calls in flight may go on once the proxy stops before their streams are cut.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    stop_grace: u64,
}

/// Where the key that opens sealed secrets comes from.
#[derive(Debug, Args)]
struct KeyProviderArgs {
    /// Key provider for sealed secrets: `dstack` (the dstack guest agent), `kbs` (the
    /// Confidential Containers key broker's local resource endpoint) or `dev` (a software
    /// key from --dev-key-file; insecure, needs --insecure-dev-key).
    #[arg(long, value_enum, default_value_t = KeyProvider::Dstack, value_name = "PROVIDER")]
    key_provider: KeyProvider,

    /// Socket path of the dstack guest agent (with --key-provider dstack).
    #[arg(long, value_name = "PATH", default_value = "/var/run/dstack.sock")]
    dstack_endpoint: PathBuf,

    /// URL of the KBS local resource endpoint (with --key-provider kbs).
    #[arg(long, value_name = "URL")]
    kbs_url: Option<String>,

    /// File holding the development private key (with --key-provider dev).
    #[arg(long, value_name = "PATH")]
    dev_key_file: Option<PathBuf>,

    /// Allow --key-provider dev: secrets are then protected by a key on disk, not by a TEE.
    /// Never use outside development.
    #[arg(long)]
    insecure_dev_key: bool,
}

/// Where the quote that attests results comes from.
#[derive(Debug, Args)]
struct QuoteProviderArgs {
    /// Quote provider that attests every result (required with `run`): `dstack` (the guest
    /// agent's GetQuote over --dstack-endpoint), `coco` (Confidential Containers' attestation
    /// agent at --aa-url), `tsm` (Linux configfs-tsm at --tsm-report-dir) or `none` (no TEE:
    /// results say `attestation.kind: none`). A provider that cannot give a quote fails the
    /// run; `none` is never chosen for you.
    #[arg(long, value_enum, value_name = "PROVIDER")]
    attestation: Option<Attestation>,

    /// Base URL of the in-guest API server serving `/aa/evidence` (with --attestation coco).
    #[arg(long, value_name = "URL", default_value = DEFAULT_AA_URL)]
    aa_url: String,

    /// The configfs-tsm report directory, or one report entry in it (with --attestation tsm).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TSM_REPORT_DIR)]
    tsm_report_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Attestation {
    None,
    Dstack,
    Coco,
    Tsm,
}

impl QuoteProviderArgs {
    /// The quote provider the flags select (`None` for `--attestation none`).
    fn provider(&self, dstack_endpoint: &Path) -> Result<Option<Box<dyn QuoteProvider>>, String> {
        let Some(choice) = self.attestation else {
            return Err(
                "--attestation is required: name the quote provider (dstack, coco, tsm), or \
                 `none` outside a TEE"
                    .to_owned(),
            );
        };
        Ok(match choice {
            Attestation::None => None,
            Attestation::Dstack => Some(Box::new(DstackQuotes {
                endpoint: dstack_endpoint.to_string_lossy().into_owned(),
            })),
            Attestation::Coco => Some(Box::new(CocoQuotes {
                base_url: self.aa_url.clone(),
            })),
            Attestation::Tsm => Some(Box::new(TsmQuotes {
                dir: self.tsm_report_dir.clone(),
            })),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KeyProvider {
    Dstack,
    Kbs,
    Dev,
}

impl KeyProviderArgs {
    /// Usage errors in the key-provider flags.
    fn check(&self) -> Result<(), String> {
        match self.key_provider {
            KeyProvider::Dev if !self.insecure_dev_key => {
                Err("--key-provider dev needs --insecure-dev-key".to_owned())
            }
            KeyProvider::Dev if self.dev_key_file.is_none() => {
                Err("--key-provider dev needs --dev-key-file".to_owned())
            }
            KeyProvider::Kbs if self.kbs_url.is_none() => {
                Err("--key-provider kbs needs --kbs-url".to_owned())
            }
            _ => Ok(()),
        }
    }
}

impl KeyProviderArgs {
    /// The key provider the flags select.
    fn provider(&self) -> Result<Box<dyn oauth3_sandbox_runner::secrets::KeyProvider>, String> {
        self.check()?;
        Ok(match self.key_provider {
            KeyProvider::Dstack => Box::new(DstackProvider::new(
                self.dstack_endpoint.to_string_lossy().into_owned(),
            )),
            KeyProvider::Kbs => {
                Box::new(KbsProvider::new(self.kbs_url.clone().unwrap_or_default()))
            }
            KeyProvider::Dev => {
                let file = self.dev_key_file.clone().unwrap_or_default();
                Box::new(
                    DevProvider::new(DevKey::File(file), self.insecure_dev_key)
                        .map_err(|e| e.to_string())?,
                )
            }
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Validate { bundle } => validate(&bundle),
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Serve(args) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(serve(args)),
            Err(e) => {
                eprintln!("error: starting the async runtime: {e}");
                ExitCode::from(1)
            }
        },
        Command::PublicKey {
            keys,
            quotes,
            attest,
        } => runtime.block_on(public_key(&keys, &quotes, attest)),
    }
}

async fn public_key(keys: &KeyProviderArgs, quotes: &QuoteProviderArgs, attest: bool) -> ExitCode {
    let provider = match keys.provider() {
        Ok(p) => p,
        Err(e) => return usage_error(e),
    };
    let quotes = if attest {
        match quotes.provider(&keys.dstack_endpoint) {
            Ok(Some(q)) => Some(q),
            Ok(None) => return usage_error("--attest needs --attestation dstack, coco or tsm"),
            Err(e) => return usage_error(e),
        }
    } else {
        None
    };
    let public = match provider.secret_key().await {
        Ok(key) => *key.public_key().as_bytes(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(quotes) = quotes else {
        println!("{}", hex::encode(public));
        return ExitCode::SUCCESS;
    };
    let report_data = enclave_key_report_data(&public);
    match quotes.quote(report_data).await {
        Ok(evidence) => {
            let attestation = oauth3_sandbox_runner::attest::attestation_of(
                quotes.kind(),
                &report_data,
                evidence,
            );
            let out = serde_json::json!({
                "publicKey": hex::encode(public),
                "attestation": attestation,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: attesting the public key: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn read_bundle(path: &Path) -> Result<Bundle, String> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the bundle from standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("reading the bundle {}: {e}", path.display()))?
    };
    Bundle::from_json(&text).map_err(|e| format!("invalid bundle: {e}"))
}

fn validate(path: &Path) -> ExitCode {
    let bundle = match read_bundle(path) {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    match bundle.validate() {
        Ok(digests) => {
            let text = serde_json::to_string_pretty(&digests).unwrap_or_default();
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(format!("invalid bundle: {e}")),
    }
}

async fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = args.keys.check() {
        return usage_error(e);
    }
    let quotes = match args.quotes.provider(&args.keys.dstack_endpoint) {
        Ok(q) => q,
        Err(e) => return usage_error(e),
    };
    let mut ca_pems = Vec::new();
    for path in &args.ca_files {
        match std::fs::read(path) {
            Ok(pem) => ca_pems.push(pem),
            Err(e) => return usage_error(format!("reading --ca-file {}: {e}", path.display())),
        }
    }
    let read = match (&args.bundle, &args.standby) {
        (Some(path), _) => read_bundle(path),
        (None, Some(standby)) => match standby_bundle(standby, &ca_pems).await {
            Ok(Some(bundle)) => bundle,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
        (None, None) => Err("--bundle or --standby is required".to_owned()),
    };
    let mut bundle = match read {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    if let Some(dir) = &args.sealed_dir {
        match sealed_secrets_from_dir(dir) {
            Ok(found) => bundle.sealed_secrets.extend(found),
            Err(e) => return usage_error(e),
        }
    }
    // A bundle that parses but does not validate still gets a result: `run_bundle` refuses it
    // as `Denied` with the reason, which is written and posted like any other result (so the
    // Execution says why instead of "exited without reporting a result"); the exit code stays
    // 2, a bundle error.
    let refused = bundle.validate().err();
    if let Some(e) = &refused {
        eprintln!("error: invalid bundle: {e}");
    }

    let provider = match args.keys.provider() {
        Ok(p) => p,
        Err(e) => return usage_error(e),
    };
    let refresh_coordinator = match bundle
        .callback
        .as_ref()
        .map(|c| oauth3_sandbox_runner::callback::CallbackCoordinator::new(c, &ca_pems))
    {
        Some(Ok(c)) => Some(std::sync::Arc::new(c)
            as std::sync::Arc<dyn oauth3_sandbox_runner::oauth::RefreshCoordinator>),
        Some(Err(e)) => {
            eprintln!("error: the callback cannot coordinate oauth2 refreshes: {e}");
            None
        }
        None => None,
    };
    let deps = RunnerDeps::enforcing(
        provider,
        BackendOptions {
            extra_root_certs_pem: ca_pems.clone(),
            oauth_refresh_lead_seconds: Some(args.oauth_refresh_lead),
            refresh_coordinator,
            connect_grace: args
                .standby
                .is_some()
                .then_some(oauth3_protocol::standby::EGRESS_SETTLE),
        },
    )
    .with_quotes(quotes);
    let result = run_bundle(&bundle, &deps).await;

    let text = match serde_json::to_string_pretty(&result) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: serialising the result: {e}");
            return ExitCode::from(1);
        }
    };
    let written = match &args.out {
        Some(path) => std::fs::write(path, format!("{text}\n"))
            .map_err(|e| format!("writing {}: {e}", path.display())),
        None => writeln!(std::io::stdout().lock(), "{text}")
            .map_err(|e| format!("writing the result: {e}")),
    };
    let mut code = if refused.is_some() {
        2
    } else {
        result.exit_code()
    };
    if let Err(e) = written {
        eprintln!("error: {e}");
        code = 1;
    }
    if let Some(callback) = &bundle.callback
        && let Err(e) = post_result(callback, &result, &ca_pems).await
    {
        eprintln!("error: {e}");
        code = 1;
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// A pool member's bundle: asked for at the standby endpoint of the standby file at `path`
/// until it comes (`Ok(Some(Ok(bundle)))`, or `Ok(Some(Err(_)))` when it does not parse);
/// `Ok(None)` when the member was retired or stopped (SIGTERM) while it waited.
async fn standby_bundle(
    path: &Path,
    ca_pems: &[Vec<u8>],
) -> Result<Option<Result<Bundle, String>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the standby file {}: {e}", path.display()))?;
    let standby: oauth3_protocol::standby::Standby = serde_json::from_str(&text)
        .map_err(|e| format!("invalid standby file {}: {e}", path.display()))?;
    let waited = tokio::select! {
        waited = oauth3_sandbox_runner::standby::wait_for_bundle(&standby, ca_pems, |note| eprintln!("{note}")) => waited,
        () = wait_for_signal() => return Ok(None),
    };
    match waited.map_err(|e| e.to_string())? {
        oauth3_sandbox_runner::standby::Waited::Bundle(text) => Ok(Some(
            Bundle::from_json(&text).map_err(|e| format!("invalid bundle: {e}")),
        )),
        oauth3_sandbox_runner::standby::Waited::Retired => {
            eprintln!("retired by the operator before any run: exiting");
            Ok(None)
        }
    }
}

fn read_text(path: &Path, what: &str) -> Result<String, String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the {what} from standard input: {e}"))?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("reading the {what} {}: {e}", path.display()))
    }
}

/// Everything `serve` needs before it listens; `Err` is (exit code, message).
async fn serve_setup(
    args: &ServeArgs,
) -> Result<
    (
        Arc<Proxy>,
        Option<tokio_rustls::TlsAcceptor>,
        Option<oauth3_sandbox_runner::proxy::report::CallReporter>,
    ),
    (u8, String),
> {
    let usage = |m: String| (2u8, m);
    args.keys.check().map_err(usage)?;
    if args.insecure_plain_http && !args.listen.ip().is_loopback() {
        return Err(usage(format!(
            "--insecure-plain-http needs a loopback --listen address; {} is not",
            args.listen
        )));
    }
    if !args.insecure_plain_http && args.tls_cert.is_none() {
        return Err(usage(
            "serve needs --tls-cert and --tls-key (or --insecure-plain-http on loopback)"
                .to_owned(),
        ));
    }
    let text = read_text(&args.bundle, "serve bundle").map_err(usage)?;
    let mut bundle =
        ServeBundle::from_json(&text).map_err(|e| usage(format!("invalid serve bundle: {e}")))?;
    if let Some(dir) = &args.sealed_dir {
        bundle
            .sealed_secrets
            .extend(sealed_secrets_from_dir(dir).map_err(|e| usage(e.to_string()))?);
    }
    bundle
        .validate()
        .map_err(|e| usage(format!("invalid serve bundle: {e}")))?;
    let mut ca_pems = Vec::new();
    for path in &args.ca_files {
        ca_pems.push(
            std::fs::read(path)
                .map_err(|e| usage(format!("reading --ca-file {}: {e}", path.display())))?,
        );
    }
    // Who may call: a local token file (development) or, without one, the operator's review
    // over the bundle's callback channel.
    let auth: Box<dyn oauth3_sandbox_runner::proxy::auth::ClientAuth> =
        match (&args.client_token_file, &bundle.callback) {
            (Some(file), _) => Box::new(TokenFile::read(file).map_err(|e| usage(e.to_string()))?),
            (None, Some(callback)) => Box::new(
                OperatorReview::new(callback, &bundle.namespace, &bundle.permit.name, &ca_pems)
                    .map_err(|e| usage(format!("invalid serve bundle: {e}")))?,
            ),
            (None, None) => {
                return Err(usage(
                    "serve needs --client-token-file (the file of accepted client token \
                     digests) or a bundle with a callback (the operator reviews tokens)"
                        .to_owned(),
                ));
            }
        };
    // Call records go to the operator when there is one to tell.
    let reporter = match &bundle.callback {
        Some(callback) => Some(
            oauth3_sandbox_runner::proxy::report::CallReporter::new(
                callback,
                &bundle.namespace,
                &bundle.permit.name,
                &ca_pems,
            )
            .map_err(|e| usage(format!("invalid serve bundle: {e}")))?,
        ),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(oauth3_sandbox_runner::proxy::tls_acceptor(cert, key).map_err(usage)?)
        }
        _ => None,
    };
    let provider: Arc<dyn oauth3_sandbox_runner::secrets::KeyProvider> =
        Arc::from(args.keys.provider().map_err(usage)?);
    let failed = |m: String| (1u8, m);
    let secrets = unseal_with(
        provider.as_ref(),
        &bundle.namespace,
        &bundle.permit.spec.secrets,
        &bundle.sealed_secrets,
    )
    .await
    .map_err(|e| failed(e.to_string()))?;
    let redactor = Arc::new(Redactor::for_secrets(&secrets));
    // oauth2 refreshes are serialised with the Permit's runs and written back sealed, through
    // the operator, as a run's are.
    let refresh_coordinator = match &bundle.callback {
        Some(callback) => Some(Arc::new(
            oauth3_sandbox_runner::callback::CallbackCoordinator::for_proxy(
                callback,
                &bundle.namespace,
                &bundle.permit.name,
                &ca_pems,
            )
            .map_err(|e| usage(format!("invalid serve bundle: {e}")))?,
        )
            as Arc<dyn oauth3_sandbox_runner::oauth::RefreshCoordinator>),
        None => None,
    };
    let options = BackendOptions {
        extra_root_certs_pem: ca_pems,
        oauth_refresh_lead_seconds: Some(args.oauth_refresh_lead),
        refresh_coordinator,
        connect_grace: None,
    };
    let fetch = scoped_fetch(
        &HostInputs {
            namespace: &bundle.namespace,
            spec: &bundle.permit.spec,
            sealed: &bundle.sealed_secrets,
            max_calls: usize::MAX,
            rate_budget: &bundle.rate_budget,
            request_timeout: Some(Duration::from_secs(args.upstream_timeout)),
        },
        &secrets,
        &redactor,
        &provider,
        &options,
    )
    .map_err(|e| failed(e.to_string()))?
    .without_call_log();
    let limits = bundle
        .limits()
        .map_err(|e| usage(format!("invalid serve bundle: {e}")))?;
    let proxy = Proxy::new(
        fetch,
        redactor,
        auth,
        ProxyOptions {
            limits,
            callers: bundle.callers().to_vec(),
            not_after: bundle.not_after.and_then(|ms| {
                u64::try_from(ms)
                    .ok()
                    .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms))
            }),
            stop_grace: Duration::from_secs(args.stop_grace),
            permit_digest: bundle.permit.spec_digest.clone(),
            ..ProxyOptions::default()
        },
    )
    .with_audit(Box::new(|call| {
        if let Ok(line) = serde_json::to_string(call) {
            println!("{line}");
        }
    }));
    Ok((Arc::new(proxy), tls, reporter))
}

async fn serve(args: ServeArgs) -> ExitCode {
    let (proxy, tls, reporter) = match serve_setup(&args).await {
        Ok(ready) => ready,
        Err((code, message)) => {
            eprintln!("error: {message}");
            return ExitCode::from(code);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: listening on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    match listener.local_addr() {
        Ok(addr) => eprintln!("serving on {scheme}://{addr}"),
        Err(_) => eprintln!("serving on {scheme}://{}", args.listen),
    }
    let stopper = Arc::clone(&proxy);
    tokio::spawn(async move {
        wait_for_signal().await;
        stopper.stop(StopReason::Stopped);
    });
    let reporting = reporter.map(|r| tokio::spawn(r.run(Arc::clone(&proxy))));
    let reason = oauth3_sandbox_runner::proxy::serve(listener, tls, proxy).await;
    if let Some(reporting) = reporting {
        let _ = reporting.await;
    }
    eprintln!("stopped: {}", reason.describe());
    match reason {
        StopReason::Stopped => ExitCode::SUCCESS,
        StopReason::Idle => ExitCode::from(oauth3_protocol::proxy::EXIT_IDLE),
        StopReason::Expired => ExitCode::from(oauth3_protocol::proxy::EXIT_EXPIRED),
    }
}

/// Resolves on SIGTERM (how Kubernetes and the process launcher stop a proxy) or Ctrl-C.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
