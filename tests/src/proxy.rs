//! A real `oauth3-sandbox-runner serve` for one Permit, started as the operator would start a
//! credential proxy: a serve bundle with the Permit's spec and a secret sealed to the
//! development key, plain HTTP on a loopback port (or HTTPS with a certificate from a CA of
//! the test's), and a client token file (the digests of real ServiceAccount tokens with their
//! user names) instead of the operator's review.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use oauth3_crds::PermitSpec;
use oauth3_sandbox_runner::proxy::auth::TokenFile;
use oauth3_sandbox_runner::secrets::{DevKey, DevProvider, seal};
use oauth3_test_support::{free_port, wait_until};
use serde_json::json;
use zeroize::Zeroizing;

/// A running `serve`; stopped when dropped.
pub struct Serve {
    /// `http://127.0.0.1:<port>` (`https://` with `tls_dir`).
    pub endpoint: String,
    _child: tokio::process::Child,
    dir: PathBuf,
}

/// What a `serve` is started with.
pub struct ServeSpec<'a> {
    /// The Permit's namespace.
    pub namespace: &'a str,
    /// The Permit's name.
    pub permit: &'a str,
    /// Its (approved) spec, with `proxy.enabled`.
    pub spec: &'a PermitSpec,
    /// The secret's name in `spec.secrets` and its value (sealed to `dev_key` here).
    pub secret: (&'a str, &'a str),
    /// The development enclave key.
    pub dev_key: [u8; 32],
    /// Client tokens the proxy accepts, each with the user name it stands for.
    pub tokens: &'a [(&'a str, &'a str)],
    /// PEM CAs of the upstreams.
    pub upstream_cas: &'a [&'a [u8]],
    /// A directory with `tls.crt` and `tls.key` (as [`crate::callback_certificate`] writes
    /// them) to serve HTTPS with; `None`: plain HTTP.
    pub tls_dir: Option<&'a std::path::Path>,
}

impl Serve {
    /// Starts it and waits until it answers.
    ///
    /// # Panics
    /// When it cannot be started or does not answer within 30 s.
    pub async fn start(s: &ServeSpec<'_>) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "oauth3-serve-{}-{}-{}",
            s.namespace,
            s.permit,
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).expect("write");
            p
        };
        let provider = DevProvider::new(DevKey::Hex(Zeroizing::new(hex::encode(s.dev_key))), true)
            .expect("dev provider");
        let envelope =
            seal(&provider.public_key(), s.namespace, s.secret.0, s.secret.1).expect("sealed");
        let bundle = json!({
            "namespace": s.namespace,
            "permit": {"name": s.permit,
                       "specDigest": oauth3_crds::spec_digest(s.spec).expect("digest"),
                       "spec": s.spec},
            "sealedSecrets": [{"name": s.secret.0, "envelope": envelope}]
        });
        let tokens: String = s
            .tokens
            .iter()
            .map(|(t, who)| format!("{}\n", TokenFile::line_for(t, who)))
            .collect();
        let cas: Vec<u8> = s.upstream_cas.concat();
        let port = free_port();
        let mut command = tokio::process::Command::new(crate::workspace_binary(
            "oauth3-sandbox-runner",
            "oauth3-sandbox-runner",
        ));
        command
            .arg("serve")
            .arg("--bundle")
            .arg(file("bundle.json", bundle.to_string().as_bytes()))
            .args(["--listen", &format!("127.0.0.1:{port}")]);
        match s.tls_dir {
            Some(tls) => command
                .arg("--tls-cert")
                .arg(tls.join("tls.crt"))
                .arg("--tls-key")
                .arg(tls.join("tls.key")),
            None => command.arg("--insecure-plain-http"),
        };
        let child = command
            .arg("--client-token-file")
            .arg(file("tokens", tokens.as_bytes()))
            .args(["--key-provider", "dev", "--insecure-dev-key"])
            .arg("--dev-key-file")
            .arg(file("dev.key", hex::encode(s.dev_key).as_bytes()))
            .arg("--ca-file")
            .arg(file("ca.pem", &cas))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("serve starts");
        let scheme = if s.tls_dir.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{port}");
        wait_until(
            "the proxy listens",
            Duration::from_secs(30),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        Self {
            endpoint,
            _child: child,
            dir,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
