//! `kubectl-oauth3`: the kubectl plugin for owners and admins (`kubectl oauth3 ...`). Thin:
//! the commands live in `oauth3_operator::plugin`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use oauth3_crds::TrustLevel;
use oauth3_operator::plugin::{
    Decision, PLUGIN_FIELD_MANAGER, Plugin, PluginError, load_collateral, load_key_attestation,
    load_policy, parse_public_key, parse_time, sealed_secret,
};
use oauth3_operator::verify::pccs::PccsClient;
use oauth3_operator::verify::{Inputs, Verification, tdx_quote, verify_execution, verify_key};

/// Approve, deny and revoke oauth3 Permits, trust code, inspect Permits and Executions, and
/// seal secrets for the enclave.
#[derive(Debug, Parser)]
#[command(name = "kubectl-oauth3", bin_name = "kubectl oauth3", version)]
struct Cli {
    /// Namespace (default: the kubeconfig context's namespace).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Level {
    /// Trust the code for one Execution only.
    Once,
    /// Trust the code for 24 hours.
    #[value(name = "24h")]
    Day,
    /// Trust the code until revoked.
    Always,
}

/// What quotes are verified against.
#[derive(Debug, Clone, clap::Args)]
struct CheckArgs {
    /// Measurement policy (YAML or JSON): accepted MRTD/RTMR values, dstack compose hashes and
    /// app ids, TCB statuses. Without it the measurements are not checked (and the verdict
    /// is not "verified").
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Quote collateral as JSON (TCB info, QE identity, CRLs), e.g. saved by a PCCS client.
    #[arg(long, value_name = "FILE", conflicts_with = "pccs_url")]
    collateral: Option<PathBuf>,
    /// Fetch the quote's collateral from this PCCS (Intel's caching service, API v4), e.g.
    /// `https://pccs.example.com:8081`; plain http only to a loopback address. What it answers
    /// is signed by Intel and checked like a file's: a PCCS can make verification fail, never
    /// pass.
    #[arg(long, value_name = "URL")]
    pccs_url: Option<String>,
    /// Trust this CA (PEM) for the PCCS's TLS certificate, besides the web PKI roots (a
    /// private PCCS).
    #[arg(long, value_name = "FILE", requires = "pccs_url")]
    pccs_ca: Option<PathBuf>,
    /// Keep collateral fetched from the PCCS in this directory (one file per platform) and
    /// reuse it until its nextUpdate.
    #[arg(long, value_name = "DIR", requires = "pccs_url")]
    collateral_cache: Option<PathBuf>,
    /// Time limit for each request to the PCCS, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10,
        requires = "pccs_url"
    )]
    pccs_timeout: u64,
    /// Check the collateral's validity at this time (Unix seconds or RFC 3339) instead of now.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
}

struct Loaded {
    policy: Option<oauth3_operator::verify::MeasurementPolicy>,
    collateral: Option<dcap_qvl::QuoteCollateralV3>,
    now: u64,
}

impl CheckArgs {
    /// Reads the policy and the collateral; with --pccs-url, fetches the collateral for
    /// `quote` (when there is a quote to check).
    async fn load(&self, quote: Option<&[u8]>) -> Result<Loaded, PluginError> {
        let now = match &self.at {
            Some(t) => parse_time(t)?,
            None => {
                u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second()).unwrap_or_default()
            }
        };
        let policy = self.policy.as_deref().map(load_policy).transpose()?;
        let collateral = match (&self.pccs_url, quote) {
            (Some(url), Some(quote)) => Some(self.fetch_collateral(url, quote, now).await?),
            _ => self
                .collateral
                .as_deref()
                .map(load_collateral)
                .transpose()?,
        };
        Ok(Loaded {
            policy,
            collateral,
            now,
        })
    }

    async fn fetch_collateral(
        &self,
        url: &str,
        quote: &[u8],
        now: u64,
    ) -> Result<dcap_qvl::QuoteCollateralV3, PluginError> {
        let ca = match &self.pccs_ca {
            Some(f) => Some(std::fs::read(f).map_err(|e| {
                PluginError::Usage(format!("reading --pccs-ca {}: {e}", f.display()))
            })?),
            None => None,
        };
        let mut client = PccsClient::new(
            url,
            ca.as_deref(),
            std::time::Duration::from_secs(self.pccs_timeout.max(1)),
        )
        .map_err(|e| PluginError::Usage(e.to_string()))?;
        if let Some(dir) = &self.collateral_cache {
            client = client.with_cache(dir);
        }
        client
            .collateral_for(quote, now)
            .await
            .map_err(|e| PluginError::Local(format!("fetching the quote's collateral: {e}")))
    }
}

impl Loaded {
    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            collateral: self.collateral.as_ref(),
            policy: self.policy.as_ref(),
            now: self.now,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show exactly what a Permit allows, and its decision state.
    Get {
        /// Permit name.
        permit: String,
    },
    /// Approve a Permit's current spec (for spec.validFor), or with --code trust a piece of
    /// code under a `codeReview: perCode` Permit.
    Approve {
        /// Permit name.
        permit: String,
        /// Trust this code instead of approving the spec: an Execution name or a
        /// `sha256:<hex>` code digest. Only for `codeReview: perCode` Permits.
        #[arg(long, value_name = "EXECUTION|DIGEST")]
        code: Option<String>,
        /// How long the code is trusted (with --code): once, 24h or always.
        #[arg(long, value_enum)]
        level: Option<Level>,
    },
    /// Deny a Permit's current spec.
    Deny {
        /// Permit name.
        permit: String,
    },
    /// Withdraw a Permit's approval, or with --code stop trusting a piece of code.
    Revoke {
        /// Permit name.
        permit: String,
        /// Stop trusting this code (Execution name or `sha256:<hex>` digest).
        #[arg(long, value_name = "EXECUTION|DIGEST")]
        code: Option<String>,
    },
    /// Show an Execution's phase, output, result and call log, or with `permit/NAME` the
    /// audit log of the calls made through a Permit's credential proxy (newest last).
    Logs {
        /// Execution name (or `execution/NAME`), or `permit/NAME`.
        target: String,
        /// With `permit/NAME`: only the last N calls.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Verify an Execution's attested result, offline: the statement recomputed from its
    /// status, the TDX quote's signature chain and TCB status (with dcap-qvl, against the
    /// collateral), the report-data binding, and the measurements against your policy. Prints
    /// one verdict per check; exits 0 only when every check passed, 1 otherwise.
    Verify {
        /// Execution name.
        execution: String,
        #[command(flatten)]
        checks: CheckArgs,
        /// Print the verdicts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign in to an OAuth provider with the device flow (RFC 8628) and seal the token set to
    /// the enclave's public key as an oauth2 credential; print (or apply) the sealed Secret.
    /// The user code and the verification URL are shown on standard error; the tokens never
    /// touch disk in the clear and are never printed.
    Login {
        /// Secret name as Permits list it, e.g. GITHUB.
        name: String,
        /// The OpenID issuer; its endpoints come from OIDC discovery.
        #[arg(
            long,
            value_name = "URL",
            conflicts_with = "provider",
            required_unless_present = "provider"
        )]
        issuer: Option<String>,
        /// A provider whose endpoints are built in.
        #[arg(long, value_enum)]
        provider: Option<oauth3_operator::login::Preset>,
        /// The OAuth client id (a client allowed to use the device flow).
        #[arg(long, value_name = "ID")]
        client_id: String,
        /// File holding the client secret, for providers that require one (sealed with the
        /// tokens: the runner needs it to refresh).
        #[arg(long, value_name = "PATH")]
        client_secret_file: Option<PathBuf>,
        /// A scope to ask for (repeatable; default: the provider's, `openid offline_access`
        /// for an issuer).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// The enclave's X25519 public key, 64 hex characters.
        #[arg(
            long,
            value_name = "HEX",
            conflicts_with = "public_key_file",
            required_unless_present_any = ["public_key_file", "attestation"]
        )]
        public_key: Option<String>,
        /// File holding the enclave's public key (64 hex characters).
        #[arg(long, value_name = "PATH")]
        public_key_file: Option<PathBuf>,
        /// The output of `oauth3-sandbox-runner public-key --attest`; verified (as for `seal`)
        /// before anyone signs in.
        #[arg(long, value_name = "FILE", requires = "policy")]
        attestation: Option<PathBuf>,
        #[command(flatten)]
        checks: CheckArgs,
        /// Extra CA certificates (PEM) trusted for the provider's TLS (a private issuer).
        #[arg(long, value_name = "PEM")]
        ca_file: Option<PathBuf>,
        /// Apply the Secret to the cluster (server-side apply) instead of printing it.
        #[arg(long)]
        apply: bool,
    },
    /// Seal a secret to the enclave's public key and print (or apply) the sealed Secret.
    /// The value is read from --from-literal, --from-file or standard input.
    Seal {
        /// Secret name as Permits list it, e.g. GITHUB_TOKEN.
        name: String,
        /// The enclave's X25519 public key, 64 hex characters.
        #[arg(
            long,
            value_name = "HEX",
            conflicts_with = "public_key_file",
            required_unless_present_any = ["public_key_file", "attestation"]
        )]
        public_key: Option<String>,
        /// The output of `oauth3-sandbox-runner public-key --attest` (the key and a quote over
        /// it). The key is verified before anything is sealed to it: its quote's signature
        /// and TCB (needs --collateral or --pccs-url), its binding, and its measurements
        /// (needs --policy); any failure refuses to seal.
        #[arg(long, value_name = "FILE", requires = "policy")]
        attestation: Option<PathBuf>,
        #[command(flatten)]
        checks: CheckArgs,
        /// File holding the enclave's public key (64 hex characters).
        #[arg(long, value_name = "PATH")]
        public_key_file: Option<PathBuf>,
        /// The value, on the command line (visible in shell history: prefer --from-file).
        #[arg(long, value_name = "VALUE", conflicts_with = "from_file")]
        from_literal: Option<String>,
        /// Read the value from this file (trailing newline removed).
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
        /// Apply the Secret to the cluster (server-side apply) instead of printing it.
        #[arg(long)]
        apply: bool,
    },
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
    if let Command::Verify {
        execution,
        checks,
        json,
    } = &cli.command
    {
        return match runtime.block_on(verify(cli.namespace.clone(), execution, checks)) {
            Ok(v) => {
                let text = if *json {
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                } else {
                    v.render()
                };
                println!("{}", text.trim_end());
                if v.verified {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    match runtime.block_on(run(cli)) {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn level(l: Level) -> TrustLevel {
    match l {
        Level::Once => TrustLevel::Once,
        Level::Day => TrustLevel::Day,
        Level::Always => TrustLevel::Always,
    }
}

async fn connect(namespace: Option<String>) -> Result<(Client, String), PluginError> {
    let client = Client::try_default()
        .await
        .map_err(|e| PluginError::Local(format!("connecting to the cluster (KUBECONFIG): {e}")))?;
    let ns = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    Ok((client, ns))
}

async fn verify(
    namespace: Option<String>,
    execution: &str,
    checks: &CheckArgs,
) -> Result<Verification, PluginError> {
    let (client, ns) = connect(namespace).await?;
    let exec = Plugin::new(client, ns).execution(execution).await?;
    let quote = exec
        .status
        .as_ref()
        .and_then(|s| s.attestation.as_ref())
        .and_then(tdx_quote);
    let loaded = checks.load(quote.as_deref()).await?;
    Ok(verify_execution(&exec, &loaded.inputs()))
}

async fn run(cli: Cli) -> Result<String, PluginError> {
    match cli.command {
        Command::Seal {
            name,
            public_key,
            public_key_file,
            from_literal,
            from_file,
            apply,
            attestation,
            checks,
        } => {
            seal(
                cli.namespace,
                SealArgs {
                    name,
                    public_key,
                    public_key_file,
                    from_literal,
                    from_file,
                    apply,
                    attestation,
                    checks,
                },
            )
            .await
        }
        Command::Login {
            name,
            issuer,
            provider,
            client_id,
            client_secret_file,
            scopes,
            public_key,
            public_key_file,
            attestation,
            checks,
            ca_file,
            apply,
        } => {
            login(
                cli.namespace,
                LoginArgs {
                    name,
                    issuer,
                    provider,
                    client_id,
                    client_secret_file,
                    scopes,
                    ca_file,
                    apply,
                },
                seal_key(public_key, public_key_file, attestation, &checks).await?,
            )
            .await
        }
        other => {
            let (client, ns) = connect(cli.namespace).await?;
            dispatch(Plugin::new(client, ns), other).await
        }
    }
}

struct SealArgs {
    name: String,
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
    from_literal: Option<String>,
    from_file: Option<PathBuf>,
    apply: bool,
    attestation: Option<PathBuf>,
    checks: CheckArgs,
}

/// The key to seal to: from --public-key(-file), or from a verified --attestation.
async fn seal_key(
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
    attestation: Option<PathBuf>,
    checks: &CheckArgs,
) -> Result<[u8; 32], PluginError> {
    let given = match (public_key, public_key_file) {
        (Some(k), _) => Some(k),
        (None, Some(f)) => Some(std::fs::read_to_string(&f).map_err(|e| {
            PluginError::Local(format!("reading --public-key-file {}: {e}", f.display()))
        })?),
        (None, None) => None,
    };
    let Some(file) = attestation else {
        let text = given.ok_or_else(|| {
            PluginError::Usage(
                "--public-key, --public-key-file or --attestation is required".into(),
            )
        })?;
        return parse_public_key(&text);
    };
    let attested = load_key_attestation(&file)?;
    let key = parse_public_key(&attested.public_key)?;
    if let Some(text) = given
        && parse_public_key(&text)? != key
    {
        return Err(PluginError::Usage(format!(
            "--public-key is not the key in --attestation {}",
            file.display()
        )));
    }
    if checks.collateral.is_none() && checks.pccs_url.is_none() {
        return Err(PluginError::Usage(
            "--attestation needs the quote's collateral: --collateral FILE or --pccs-url URL"
                .into(),
        ));
    }
    let quote = tdx_quote(&attested.attestation);
    let loaded = checks.load(quote.as_deref()).await?;
    let verdict = verify_key(&key, &attested.attestation, &loaded.inputs());
    if !verdict.verified {
        return Err(PluginError::Local(format!(
            "refusing to seal to an enclave key that does not verify:\n{}",
            verdict.render().trim_end()
        )));
    }
    Ok(key)
}

async fn seal(namespace: Option<String>, args: SealArgs) -> Result<String, PluginError> {
    let SealArgs {
        name,
        public_key,
        public_key_file,
        from_literal,
        from_file,
        apply,
        attestation,
        checks,
    } = args;
    {
        let key = seal_key(public_key, public_key_file, attestation, &checks).await?;
        let value = match (from_literal, from_file) {
            (Some(v), _) => v,
            (None, Some(f)) => std::fs::read_to_string(&f)
                .map_err(|e| {
                    PluginError::Local(format!("reading --from-file {}: {e}", f.display()))
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            (None, None) => {
                let mut v = String::new();
                std::io::stdin().read_to_string(&mut v).map_err(|e| {
                    PluginError::Local(format!("reading the value from standard input: {e}"))
                })?;
                v.trim_end_matches(['\n', '\r']).to_owned()
            }
        };
        if value.is_empty() {
            return Err(PluginError::Usage("the secret value is empty".into()));
        }
        let (client, ns) = target(namespace, apply).await?;
        // A token set (e.g. from another OAuth client) is sealed as an oauth2 credential.
        let secret = if oauth3_protocol::oauth2::TokenSet::looks_like(&value) {
            oauth3_operator::plugin::sealed_oauth2_secret(&ns, &name, &value, &key)?
        } else {
            sealed_secret(&ns, &name, &value, &key)?
        };
        emit(client, &ns, &secret).await
    }
}

/// Where the Secret goes: the cluster (with --apply) or standard output.
async fn target(
    namespace: Option<String>,
    apply: bool,
) -> Result<(Option<Client>, String), PluginError> {
    if apply {
        let (c, ns) = connect(namespace).await?;
        Ok((Some(c), ns))
    } else {
        Ok((None, namespace.unwrap_or_else(|| "default".into())))
    }
}

/// Applies the sealed Secret (server-side apply) or prints it as YAML.
async fn emit(
    client: Option<Client>,
    ns: &str,
    secret: &k8s_openapi::api::core::v1::Secret,
) -> Result<String, PluginError> {
    match client {
        Some(client) => {
            let secret_name = secret.metadata.name.clone().unwrap_or_default();
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, ns)
                .patch(
                    &secret_name,
                    &PatchParams::apply(PLUGIN_FIELD_MANAGER),
                    &Patch::Apply(secret),
                )
                .await
                .map_err(|source| PluginError::Api {
                    step: format!("applying Secret {secret_name}"),
                    source,
                })?;
            Ok(format!(
                "sealed Secret {secret_name} applied in namespace {ns}"
            ))
        }
        None => serde_yaml::to_string(secret).map_err(|e| PluginError::Local(e.to_string())),
    }
}

struct LoginArgs {
    name: String,
    issuer: Option<String>,
    provider: Option<oauth3_operator::login::Preset>,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    scopes: Vec<String>,
    ca_file: Option<PathBuf>,
    apply: bool,
}

/// The device flow, then the token set sealed to `key` as an oauth2 credential.
async fn login(
    namespace: Option<String>,
    args: LoginArgs,
    key: [u8; 32],
) -> Result<String, PluginError> {
    use oauth3_operator::login as l;
    let local = |e: l::LoginError| PluginError::Local(format!("login {}: {e}", args.name));
    // The name is checked before anyone signs in.
    oauth3_operator::plugin::check_secret_name(&args.name)?;
    let ca =
        match &args.ca_file {
            Some(f) => Some(std::fs::read(f).map_err(|e| {
                PluginError::Local(format!("reading --ca-file {}: {e}", f.display()))
            })?),
            None => None,
        };
    let client_secret = match &args.client_secret_file {
        Some(f) => Some(zeroize::Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| {
                    PluginError::Local(format!("reading --client-secret-file {}: {e}", f.display()))
                })?
                .trim()
                .to_owned(),
        )),
        None => None,
    };
    let http = l::client(ca.as_deref()).map_err(local)?;
    let endpoints = match (&args.issuer, args.provider) {
        (Some(issuer), _) => l::discover(&http, issuer).await.map_err(local)?,
        (None, Some(p)) => p.endpoints(),
        (None, None) => {
            return Err(PluginError::Usage(
                "--issuer or --provider is required".into(),
            ));
        }
    };
    l::check_endpoints(&endpoints).map_err(local)?;
    let scopes = if args.scopes.is_empty() {
        endpoints.default_scopes.clone()
    } else {
        args.scopes.clone()
    };
    // Connect before the sign-in, so a missing cluster fails before the user is asked.
    let (cluster, ns) = target(namespace, args.apply).await?;
    let device = l::start(
        &http,
        &endpoints,
        &args.client_id,
        client_secret.as_ref(),
        &scopes,
    )
    .await
    .map_err(local)?;
    eprint!("{}", l::instructions(&device, &args.name));
    if let Some(qr) = device
        .verification_uri_complete
        .as_deref()
        .and_then(l::terminal_qr)
    {
        eprintln!("{qr}");
    }
    let set = l::poll(
        &http,
        &endpoints,
        &device,
        &args.client_id,
        client_secret.as_ref(),
        &scopes,
        &mut |note| eprintln!("{note}"),
    )
    .await
    .map_err(local)?;
    eprintln!(
        "signed in: {} (sealing the token set to the enclave key; it is not shown)",
        args.name
    );
    let secret =
        oauth3_operator::plugin::sealed_oauth2_secret(&ns, &args.name, &set.to_json(), &key)?;
    emit(cluster, &ns, &secret).await
}

async fn dispatch(plugin: Plugin, command: Command) -> Result<String, PluginError> {
    match command {
        Command::Get { permit } => plugin.get(&permit).await,
        Command::Approve {
            permit,
            code: None,
            level: None,
        } => plugin.decide(&permit, Decision::Approve).await,
        Command::Approve {
            level: Some(_),
            code: None,
            ..
        } => Err(PluginError::Usage(
            "--level applies to code trust (with --code); a Permit approval lasts spec.validFor"
                .into(),
        )),
        Command::Approve {
            permit,
            code: Some(code),
            level,
        } => {
            let l = level
                .ok_or_else(|| PluginError::Usage("--code needs --level once|24h|always".into()))?;
            plugin.trust(&permit, &code, Some(self::level(l))).await
        }
        Command::Deny { permit } => plugin.decide(&permit, Decision::Deny).await,
        Command::Revoke { permit, code: None } => plugin.decide(&permit, Decision::Revoke).await,
        Command::Revoke {
            permit,
            code: Some(code),
        } => plugin.trust(&permit, &code, None).await,
        Command::Logs { target, tail } => match target.split_once('/') {
            Some(("permit" | "permits", name)) => plugin.proxy_logs(name, tail).await,
            Some(("execution" | "executions", name)) => plugin.logs(name).await,
            Some((kind, _)) => Err(PluginError::Usage(format!(
                "logs takes an Execution name, execution/NAME or permit/NAME, not {kind}/..."
            ))),
            None => plugin.logs(&target).await,
        },
        Command::Seal { .. } | Command::Verify { .. } | Command::Login { .. } => Err(
            PluginError::Usage("seal, login and verify are handled before a Permit is read".into()),
        ),
    }
}
