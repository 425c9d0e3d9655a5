//! The runner's command line as launchers write it: the flag names a Pod's `args` and the
//! runner's own parser must agree on, the key providers a runner in a TEE can use, and the
//! quote providers that attest its results.

/// The subcommand that runs a bundle.
pub const RUN: &str = "run";
/// The subcommand that serves a proxied Permit (the credential proxy).
pub const SERVE: &str = "serve";
/// Address `serve` listens on.
pub const LISTEN: &str = "--listen";
/// PEM certificate chain of `serve`'s HTTPS endpoint.
pub const TLS_CERT: &str = "--tls-cert";
/// PEM private key of `serve`'s HTTPS endpoint.
pub const TLS_KEY: &str = "--tls-key";
/// Path of the bundle JSON.
pub const BUNDLE: &str = "--bundle";
/// Directory of projected sealed secrets (one file per secret).
pub const SEALED_DIR: &str = "--sealed-dir";
/// Which key provider opens the sealed secrets.
pub const KEY_PROVIDER: &str = "--key-provider";
/// URL of the KBS local resource endpoint.
pub const KBS_URL: &str = "--kbs-url";
/// Socket path of the dstack guest agent.
pub const DSTACK_ENDPOINT: &str = "--dstack-endpoint";
/// Which quote provider attests results (`none`, `dstack`, `coco`, `tsm`); always explicit.
pub const ATTESTATION: &str = "--attestation";
/// URL of Confidential Containers' in-guest API server (attestation agent evidence).
pub const AA_URL: &str = "--aa-url";
/// The configfs-tsm report directory (or one report entry in it).
pub const TSM_REPORT_DIR: &str = "--tsm-report-dir";
/// Where Confidential Containers' in-guest API server listens unless configured otherwise.
pub const DEFAULT_AA_URL: &str = "http://127.0.0.1:8006";
/// Where the kernel's configfs-tsm reports live unless configured otherwise.
pub const DEFAULT_TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";
/// Where the dstack guest agent listens unless configured otherwise.
pub const DEFAULT_DSTACK_SOCKET: &str = "/var/run/dstack.sock";
/// Where Confidential Containers' guest resource endpoint listens unless configured otherwise.
pub const DEFAULT_KBS_URL: &str = "http://127.0.0.1:8006";

/// Where a runner inside a TEE gets the key that opens sealed secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProviderEndpoint {
    /// Confidential Containers' guest resource endpoint (inside the Kata guest).
    Kbs {
        /// Base URL of the endpoint, e.g. `http://127.0.0.1:8006`.
        url: String,
    },
    /// The dstack guest agent's socket.
    Dstack {
        /// Socket path (on the node and in the Pod).
        socket: String,
    },
}

impl KeyProviderEndpoint {
    /// The provider's name as `--key-provider` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kbs { .. } => "kbs",
            Self::Dstack { .. } => "dstack",
        }
    }

    /// The flags that select this provider.
    pub fn args(&self) -> [String; 4] {
        let (flag, value) = match self {
            Self::Kbs { url } => (KBS_URL, url),
            Self::Dstack { socket } => (DSTACK_ENDPOINT, socket),
        };
        [
            KEY_PROVIDER.to_owned(),
            self.name().to_owned(),
            flag.to_owned(),
            value.clone(),
        ]
    }
}

/// Where a runner gets the quote that attests its result (and its enclave key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuoteProviderEndpoint {
    /// No quote: the result says `attestation.kind: none` (process launcher, development).
    None,
    /// The dstack guest agent's `GetQuote` (the runner has one dstack socket, shared with the
    /// dstack key provider).
    Dstack {
        /// Socket path.
        socket: String,
    },
    /// Confidential Containers' attestation agent (`/aa/evidence` of the in-guest API server).
    Coco {
        /// Base URL, e.g. `http://127.0.0.1:8006`.
        url: String,
    },
    /// Linux configfs-tsm (`/sys/kernel/config/tsm/report`).
    Tsm {
        /// The report directory (or one report entry in it).
        dir: String,
    },
}

impl QuoteProviderEndpoint {
    /// The provider's name as `--attestation` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Dstack { .. } => "dstack",
            Self::Coco { .. } => "coco",
            Self::Tsm { .. } => "tsm",
        }
    }

    /// The flags that select this provider, given the key provider already on the command
    /// line (a dstack socket is passed once).
    pub fn args(&self, key: Option<&KeyProviderEndpoint>) -> Vec<String> {
        let mut args = vec![ATTESTATION.to_owned(), self.name().to_owned()];
        match self {
            Self::None => {}
            Self::Dstack { socket } => {
                if !matches!(key, Some(KeyProviderEndpoint::Dstack { .. })) {
                    args.extend([DSTACK_ENDPOINT.to_owned(), socket.clone()]);
                }
            }
            Self::Coco { url } => args.extend([AA_URL.to_owned(), url.clone()]),
            Self::Tsm { dir } => args.extend([TSM_REPORT_DIR.to_owned(), dir.clone()]),
        }
        args
    }
}

/// The arguments of `oauth3-sandbox-runner` that run the bundle at `bundle_path` with the
/// sealed secrets projected under `sealed_dir`, opened with `key`, the result attested by
/// `quote`.
pub fn run_args(
    bundle_path: &str,
    sealed_dir: &str,
    key: &KeyProviderEndpoint,
    quote: &QuoteProviderEndpoint,
) -> Vec<String> {
    let mut args = vec![
        RUN.to_owned(),
        BUNDLE.to_owned(),
        bundle_path.to_owned(),
        SEALED_DIR.to_owned(),
        sealed_dir.to_owned(),
    ];
    args.extend(key.args());
    args.extend(quote.args(Some(key)));
    args
}

/// The arguments of `oauth3-sandbox-runner run` for a pool member: wait on the standby
/// endpoint named in the standby file at `standby_path` for its run bundle (the sealed
/// secrets come in the bundle, as ciphertext), then run it like [`run_args`] would, opened with
/// `key`, the result attested by `quote`.
pub fn standby_args(
    standby_path: &str,
    key: &KeyProviderEndpoint,
    quote: &QuoteProviderEndpoint,
) -> Vec<String> {
    let mut args = vec![
        RUN.to_owned(),
        crate::standby::STANDBY_FLAG.to_owned(),
        standby_path.to_owned(),
    ];
    args.extend(key.args());
    args.extend(quote.args(Some(key)));
    args
}

/// The arguments of `oauth3-sandbox-runner serve` that serve the serve bundle at
/// `bundle_path` over HTTPS on `listen` with the certificate and key at `tls`, the sealed
/// secrets projected under `sealed_dir` opened with `key` (a proxy attests nothing: no quote
/// provider).
pub fn serve_args(
    bundle_path: &str,
    sealed_dir: &str,
    key: &KeyProviderEndpoint,
    listen: &str,
    tls: (&str, &str),
) -> Vec<String> {
    let mut args = vec![
        SERVE.to_owned(),
        BUNDLE.to_owned(),
        bundle_path.to_owned(),
        LISTEN.to_owned(),
        listen.to_owned(),
        TLS_CERT.to_owned(),
        tls.0.to_owned(),
        TLS_KEY.to_owned(),
        tls.1.to_owned(),
        SEALED_DIR.to_owned(),
        sealed_dir.to_owned(),
    ];
    args.extend(key.args());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serve_arguments_name_the_bundle_the_listener_the_tls_files_and_the_key_provider() {
        let args = serve_args(
            "/b/bundle.json",
            "/s",
            &KeyProviderEndpoint::Kbs {
                url: DEFAULT_KBS_URL.into(),
            },
            "0.0.0.0:8443",
            ("/b/tls.crt", "/b/tls.key"),
        );
        assert_eq!(
            args,
            [
                "serve",
                "--bundle",
                "/b/bundle.json",
                "--listen",
                "0.0.0.0:8443",
                "--tls-cert",
                "/b/tls.crt",
                "--tls-key",
                "/b/tls.key",
                "--sealed-dir",
                "/s",
                "--key-provider",
                "kbs",
                "--kbs-url",
                "http://127.0.0.1:8006"
            ]
        );
    }

    #[test]
    fn a_pool_member_runs_with_its_standby_file_instead_of_a_bundle() {
        let args = standby_args(
            "/b/standby.json",
            &KeyProviderEndpoint::Kbs {
                url: DEFAULT_KBS_URL.into(),
            },
            &QuoteProviderEndpoint::Coco {
                url: DEFAULT_AA_URL.into(),
            },
        );
        assert_eq!(
            args,
            [
                "run",
                "--standby",
                "/b/standby.json",
                "--key-provider",
                "kbs",
                "--kbs-url",
                "http://127.0.0.1:8006",
                "--attestation",
                "coco",
                "--aa-url",
                "http://127.0.0.1:8006"
            ]
        );
    }

    #[test]
    fn the_run_arguments_name_the_bundle_the_sealed_dir_and_the_provider() {
        let args = run_args(
            "/b/bundle.json",
            "/s",
            &KeyProviderEndpoint::Dstack {
                socket: DEFAULT_DSTACK_SOCKET.into(),
            },
            &QuoteProviderEndpoint::Dstack {
                socket: DEFAULT_DSTACK_SOCKET.into(),
            },
        );
        assert_eq!(
            args,
            [
                "run",
                "--bundle",
                "/b/bundle.json",
                "--sealed-dir",
                "/s",
                "--key-provider",
                "dstack",
                "--dstack-endpoint",
                "/var/run/dstack.sock",
                "--attestation",
                "dstack"
            ]
        );
    }

    #[test]
    fn every_quote_provider_is_named_explicitly_with_its_endpoint() {
        let kbs = KeyProviderEndpoint::Kbs {
            url: DEFAULT_KBS_URL.into(),
        };
        assert_eq!(
            QuoteProviderEndpoint::None.args(Some(&kbs)),
            ["--attestation", "none"]
        );
        assert_eq!(
            QuoteProviderEndpoint::Coco {
                url: DEFAULT_AA_URL.into()
            }
            .args(Some(&kbs)),
            ["--attestation", "coco", "--aa-url", "http://127.0.0.1:8006"]
        );
        assert_eq!(
            QuoteProviderEndpoint::Tsm {
                dir: DEFAULT_TSM_REPORT_DIR.into()
            }
            .args(None),
            [
                "--attestation",
                "tsm",
                "--tsm-report-dir",
                "/sys/kernel/config/tsm/report"
            ]
        );
        assert_eq!(
            QuoteProviderEndpoint::Dstack {
                socket: "/s".into()
            }
            .args(Some(&kbs)),
            ["--attestation", "dstack", "--dstack-endpoint", "/s"]
        );
    }
}
