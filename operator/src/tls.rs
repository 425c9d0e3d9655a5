//! HTTPS for the result callback: the certificate and key from files (e.g. a mounted
//! `kubernetes.io/tls` Secret), picked up again when the files change (cert-manager rotation
//! needs no restart), and a listener that does TLS handshakes concurrently so one slow client
//! cannot hold up the others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are looked at for changes (at most, on handshakes).
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Why the callback's TLS material could not be used. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("reading the certificate {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key file could not be read, holds no PEM private key, or the key type is unsupported.
    #[error("reading the private key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What was wrong (never the key itself).
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("the private key {key} does not match the certificate {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

/// Reads a PEM certificate chain and its PEM private key into a [`CertifiedKey`].
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Certificate {
        path: cert.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM CERTIFICATE block".into()));
    }
    let key_err = |reason: String| TlsError::Key {
        path: key.to_owned(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|_| key_err("not an RSA, ECDSA or Ed25519 private key".into()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // A key whose public half cannot be derived is accepted (rustls cannot check it).
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(_) => Err(TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        }),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves the certificate from files, reloading it when either file's modification time
/// changes. A reload that fails keeps the previous certificate (and logs why).
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    current: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl ReloadingCert {
    /// Loads the pair once (failing if it is unusable).
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault.
    pub fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let current = Arc::new(load_certified_key(cert, key)?);
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(CertState {
                current,
                stamps: (modified(cert), modified(key)),
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to present now, reloading first if the files changed and the last
    /// look is older than `interval`.
    pub fn current(&self, interval: Duration) -> Arc<CertifiedKey> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.checked.elapsed() >= interval {
            state.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != state.stamps {
                match load_certified_key(&self.cert, &self.key) {
                    Ok(fresh) => {
                        tracing::info!(cert = %self.cert.display(), "callback certificate reloaded");
                        state.current = Arc::new(fresh);
                        state.stamps = stamps;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the previous callback certificate");
                    }
                }
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current(RELOAD_CHECK_INTERVAL))
    }
}

/// A TLS server configuration (HTTP/1.1) presenting the certificate in `cert`/`key`.
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let resolver = Arc::new(ReloadingCert::new(cert, key)?);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An [`axum::serve::Listener`] that accepts TCP connections and hands over only those whose
/// TLS handshake completed (within [`HANDSHAKE_TIMEOUT`]); handshakes run concurrently.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Wraps a bound `listener`.
    ///
    /// # Errors
    /// When the listener has no local address.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "callback: accepting a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "callback: TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "callback: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            ready,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor task ended (it only does when aborted): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!("oauth3-tls-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&d).expect("dir");
            Self(d)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).expect("write");
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = Dir::new("ok");
        let (cert, key) = pair("callback.test");
        let loaded = load_certified_key(&dir.write("c.pem", &cert), &dir.write("k.pem", &key))
            .expect("loads");
        assert_eq!(loaded.cert.len(), 1);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = Dir::new("mismatch");
        let (cert, _) = pair("a.test");
        let (_, other_key) = pair("b.test");
        let err = load_certified_key(&dir.write("c.pem", &cert), &dir.write("k.pem", &other_key))
            .expect_err("mismatch");
        let text = err.to_string();
        assert!(text.contains("does not match"), "{text}");
        assert!(text.contains("c.pem") && text.contains("k.pem"), "{text}");
    }

    #[test]
    fn unusable_files_are_refused_naming_the_file_and_never_showing_key_bytes() {
        let dir = Dir::new("bad");
        let (cert, key) = pair("a.test");
        let c = dir.write("c.pem", &cert);
        let k = dir.write("k.pem", &key);
        let empty = dir.write("empty.pem", "not pem at all\n");
        let err = load_certified_key(&empty, &k).expect_err("no certificate");
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let err = load_certified_key(&c, &empty).expect_err("no key");
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let err = load_certified_key(&c, &dir.0.join("missing.pem")).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        // Key material handed in as the certificate is reported without echoing it.
        let err = load_certified_key(&k, &k).expect_err("a key is no certificate");
        assert!(!err.to_string().contains("PRIVATE KEY-----\n"), "{err}");
    }

    #[test]
    fn a_rotated_certificate_is_served_after_the_files_change() {
        let dir = Dir::new("rotate");
        let (cert, key) = pair("first.test");
        let c = dir.write("c.pem", &cert);
        let k = dir.write("k.pem", &key);
        let reloading = ReloadingCert::new(&c, &k).expect("loads");
        let first = reloading.current(Duration::ZERO);
        // Make sure the new files get a different modification time.
        std::thread::sleep(Duration::from_millis(20));
        let (cert2, key2) = pair("second.test");
        std::fs::write(&k, key2).expect("rotate key");
        std::fs::write(&c, cert2).expect("rotate cert");
        let second = reloading.current(Duration::ZERO);
        assert_ne!(
            first.cert[0], second.cert[0],
            "the new certificate is served"
        );
        // A broken rotation keeps the last good certificate.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&c, "garbage").expect("break");
        let third = reloading.current(Duration::ZERO);
        assert_eq!(second.cert[0], third.cert[0]);
    }
}
