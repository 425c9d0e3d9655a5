//! The runner's command line as launchers write it: the flag names a Pod's `args` and the
//! runner's own parser must agree on, and the key providers a runner in a TEE can use.

/// The subcommand that runs a bundle.
pub const RUN: &str = "run";
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

/// The arguments of `oauth3-sandbox-runner` that run the bundle at `bundle_path` with the
/// sealed secrets projected under `sealed_dir`, opened with `key`.
pub fn run_args(bundle_path: &str, sealed_dir: &str, key: &KeyProviderEndpoint) -> Vec<String> {
    let mut args = vec![
        RUN.to_owned(),
        BUNDLE.to_owned(),
        bundle_path.to_owned(),
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
    fn the_run_arguments_name_the_bundle_the_sealed_dir_and_the_provider() {
        let args = run_args(
            "/b/bundle.json",
            "/s",
            &KeyProviderEndpoint::Dstack {
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
                "/var/run/dstack.sock"
            ]
        );
    }
}
