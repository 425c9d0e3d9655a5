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
    Decision, PLUGIN_FIELD_MANAGER, Plugin, PluginError, parse_public_key, sealed_secret,
};

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
    /// Show an Execution's phase, output, result and call log.
    Logs {
        /// Execution name.
        execution: String,
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
            required_unless_present = "public_key_file"
        )]
        public_key: Option<String>,
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

async fn run(cli: Cli) -> Result<String, PluginError> {
    match cli.command {
        Command::Seal {
            name,
            public_key,
            public_key_file,
            from_literal,
            from_file,
            apply,
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
                },
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
}

async fn seal(namespace: Option<String>, args: SealArgs) -> Result<String, PluginError> {
    let SealArgs {
        name,
        public_key,
        public_key_file,
        from_literal,
        from_file,
        apply,
    } = args;
    {
        let key_text = match (public_key, public_key_file) {
            (Some(k), _) => k,
            (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| {
                PluginError::Local(format!("reading --public-key-file {}: {e}", f.display()))
            })?,
            (None, None) => {
                return Err(PluginError::Usage(
                    "--public-key or --public-key-file is required".into(),
                ));
            }
        };
        let key = parse_public_key(&key_text)?;
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
        let (client, ns) = if apply {
            let (c, ns) = connect(namespace).await?;
            (Some(c), ns)
        } else {
            (None, namespace.unwrap_or_else(|| "default".into()))
        };
        let secret = sealed_secret(&ns, &name, &value, &key)?;
        match client {
            Some(client) => {
                let secret_name = secret.metadata.name.clone().unwrap_or_default();
                Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, &ns)
                    .patch(
                        &secret_name,
                        &PatchParams::apply(PLUGIN_FIELD_MANAGER),
                        &Patch::Apply(&secret),
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
            None => serde_yaml::to_string(&secret).map_err(|e| PluginError::Local(e.to_string())),
        }
    }
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
        Command::Logs { execution } => plugin.logs(&execution).await,
        Command::Seal { .. } => Err(PluginError::Usage("seal does not talk to a Permit".into())),
    }
}
