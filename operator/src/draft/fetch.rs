//! Fetching API descriptions for the drafter: only from the doc hosts the cluster admin allows
//! (`--draft-doc-hosts`), never from private, loopback, link-local (metadata) or other
//! non-public addresses (except loopback under the explicitly insecure development flag), no
//! redirects, streamed with a size cap, and cached by URL and digest.
//!
//! Every refusal happens before any request is sent: the URL is checked, its host matched
//! against the allow-list, the name resolved and every address checked, and the connection is
//! then pinned to those checked addresses (no second lookup can rebind it).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a fetched document is reused for the same URL.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
/// How many documents are kept.
pub const CACHE_ENTRIES: usize = 16;

/// Why a document was not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL does not parse or has a scheme, userinfo or host the drafter refuses.
    #[error("{url}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The host is not one of `--draft-doc-hosts`.
    #[error("{url}: host {host} is not an allowed doc host (--draft-doc-hosts: {allowed})")]
    HostNotAllowed {
        /// The URL.
        url: String,
        /// Its `host:port`.
        host: String,
        /// The allow-list.
        allowed: String,
    },
    /// The host resolves to an address the drafter never reaches.
    #[error(
        "{url}: {host} resolves to {ip}, which is {why}; documents are fetched only from public addresses"
    )]
    PrivateAddress {
        /// The URL.
        url: String,
        /// The host.
        host: String,
        /// The address.
        ip: IpAddr,
        /// Which kind of address.
        why: &'static str,
    },
    /// Resolving, connecting or reading failed, or the server did not answer 200.
    #[error("{url}: {why}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The document is larger than `--draft-doc-max-bytes`.
    #[error("{url}: the document is larger than {max} bytes (--draft-doc-max-bytes)")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        max: u64,
    },
}

/// A fetched document.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The URL it came from.
    pub url: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its bytes.
    pub bytes: Arc<Vec<u8>>,
}

/// Fetch settings (from the `--draft-doc-*` flags).
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Allowed `host` (port 443) or `host:port` entries, lower case.
    pub allowed_hosts: Vec<String>,
    /// Development only: also fetch from loopback addresses (and over plain http there).
    pub insecure_loopback: bool,
    /// The largest document, in bytes.
    pub max_bytes: u64,
    /// How long one fetch may take.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) trusted besides the web PKI roots.
    pub extra_ca_pem: Option<Vec<u8>>,
}

/// Fetches documents as [`FetchConfig`] allows, with a cache.
pub struct DocFetcher {
    config: FetchConfig,
    tls: rustls::ClientConfig,
    cache: Mutex<HashMap<String, (Instant, Fetched)>>,
}

impl std::fmt::Debug for DocFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocFetcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A URL the drafter may fetch: its scheme, host and port, checked against the allow-list
/// (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    /// The parsed URL.
    pub url: url::Url,
    /// The host as written (lower case; IPv6 without brackets).
    pub host: String,
    /// The port (explicit or the scheme's default).
    pub port: u16,
}

/// Checks `raw` against the scheme rules and `allowed` hosts (pure, no lookup).
///
/// # Errors
/// [`FetchError::BadUrl`] or [`FetchError::HostNotAllowed`].
pub fn check_url(raw: &str, config: &FetchConfig) -> Result<CheckedUrl, FetchError> {
    let bad = |why: &str| FetchError::BadUrl {
        url: raw.to_owned(),
        why: why.to_owned(),
    };
    let url = url::Url::parse(raw).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain userinfo (user:password@)"));
    }
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad(&format!("scheme {} is not https", url.scheme())));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(bad("has no host")),
    };
    let port = url.port_or_known_default().unwrap_or(443);
    match url.scheme() {
        "https" => {}
        "http" if config.insecure_loopback && is_loopback_name(&host) => {}
        "http" => {
            return Err(bad(
                "must use https (plain http only to loopback under --insecure-draft-docs-on-loopback)",
            ));
        }
        other => return Err(bad(&format!("scheme {other} is not https"))),
    }
    let written = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let default_port = port == 443 && url.scheme() == "https";
    let allowed = config.allowed_hosts.iter().any(|h| {
        let h = h.to_ascii_lowercase();
        h == written || (default_port && (h == host || format!("[{host}]") == h))
    });
    if !allowed {
        return Err(FetchError::HostNotAllowed {
            url: raw.to_owned(),
            host: written,
            allowed: if config.allowed_hosts.is_empty() {
                "none".to_owned()
            } else {
                config.allowed_hosts.join(",")
            },
        });
    }
    Ok(CheckedUrl { url, host, port })
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether the drafter may connect to `ip` (pure): public unicast only, or loopback under the
/// insecure development flag.
///
/// # Errors
/// Which kind of address it is.
pub fn check_doc_address(ip: IpAddr, insecure_loopback: bool) -> Result<(), &'static str> {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if insecure_loopback && mapped.is_loopback() {
        return Ok(());
    }
    crate::egress::check_address(ip)
}

impl DocFetcher {
    /// A fetcher with `config`.
    ///
    /// # Errors
    /// When the extra CA holds no usable certificate.
    pub fn new(config: FetchConfig) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &config.extra_ca_pem {
            use rustls::pki_types::pem::PemObject as _;
            let mut added = 0;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("--draft-doc-ca-file: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--draft-doc-ca-file: unusable certificate: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("--draft-doc-ca-file holds no PEM certificate".to_owned());
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            config,
            tls,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The TLS settings (the web PKI roots and the extra CA), for the model endpoint too.
    pub fn tls_config(&self) -> rustls::ClientConfig {
        self.tls.clone()
    }

    /// The settings.
    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Fetches `raw` (or returns it from the cache).
    ///
    /// # Errors
    /// [`FetchError`]: refusals happen before any request.
    pub async fn fetch(&self, raw: &str) -> Result<Fetched, FetchError> {
        let checked = check_url(raw, &self.config)?;
        if let Some(hit) = self.cached(raw) {
            return Ok(hit);
        }
        let addrs = self.resolve(raw, &checked).await?;
        let fetched = self.download(raw, &checked, &addrs).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        // Same bytes under another URL share one copy (the cache is by digest too).
        let shared = cache
            .values()
            .find(|(_, f)| f.digest == fetched.digest)
            .map(|(_, f)| f.bytes.clone());
        let fetched = Fetched {
            bytes: shared.unwrap_or(fetched.bytes),
            ..fetched
        };
        cache.insert(raw.to_owned(), (Instant::now(), fetched.clone()));
        Ok(fetched)
    }

    fn cached(&self, raw: &str) -> Option<Fetched> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(raw)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, f)| f.clone())
    }

    async fn resolve(
        &self,
        raw: &str,
        checked: &CheckedUrl,
    ) -> Result<Vec<SocketAddr>, FetchError> {
        let addrs: Vec<SocketAddr> = match checked.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, checked.port)],
            Err(_) => tokio::net::lookup_host((checked.host.as_str(), checked.port))
                .await
                .map_err(|e| FetchError::Fetch {
                    url: raw.to_owned(),
                    why: format!("resolving {}: {e}", checked.host),
                })?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(FetchError::Fetch {
                url: raw.to_owned(),
                why: format!("{} resolves to no address", checked.host),
            });
        }
        for a in &addrs {
            check_doc_address(a.ip(), self.config.insecure_loopback).map_err(|why| {
                FetchError::PrivateAddress {
                    url: raw.to_owned(),
                    host: checked.host.clone(),
                    ip: a.ip(),
                    why,
                }
            })?;
        }
        Ok(addrs)
    }

    async fn download(
        &self,
        raw: &str,
        checked: &CheckedUrl,
        addrs: &[SocketAddr],
    ) -> Result<Fetched, FetchError> {
        let failed = |why: String| FetchError::Fetch {
            url: raw.to_owned(),
            why,
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(self.config.timeout)
            .resolve_to_addrs(&checked.host, addrs)
            .build()
            .map_err(|e| failed(format!("HTTP client set-up: {e}")))?;
        let mut response = client
            .get(checked.url.clone())
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| failed(format!("request failed: {e}")))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(failed(format!(
                "answered {} (redirects are not followed)",
                response.status()
            )));
        }
        let max = self.config.max_bytes;
        if response.content_length().is_some_and(|n| n > max) {
            return Err(FetchError::TooLarge {
                url: raw.to_owned(),
                max,
            });
        }
        let mut bytes = Vec::new();
        let mut hasher = Sha256::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(format!("reading the body: {e}")))?
        {
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(FetchError::TooLarge {
                    url: raw.to_owned(),
                    max,
                });
            }
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            url: raw.to_owned(),
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
            bytes: Arc::new(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hosts: &[&str], loopback: bool) -> FetchConfig {
        FetchConfig {
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            insecure_loopback: loopback,
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(5),
            extra_ca_pem: None,
        }
    }

    #[test]
    fn only_allowed_hosts_pass_the_url_check() {
        let c = config(&["raw.githubusercontent.com", "127.0.0.1:8443"], false);
        check_url("https://raw.githubusercontent.com/x/api.json", &c).expect("allowed");
        check_url("https://127.0.0.1:8443/api.json", &c).expect("allowed with port");
        for (url, want) in [
            ("https://evil.example/api.json", "not an allowed doc host"),
            (
                "https://raw.githubusercontent.com:444/x",
                "not an allowed doc host",
            ),
            ("https://127.0.0.1:8444/api.json", "not an allowed doc host"),
            ("http://raw.githubusercontent.com/x", "must use https"),
            ("https://u:p@raw.githubusercontent.com/x", "userinfo"),
            ("file:///etc/passwd", "scheme file"),
        ] {
            let err = check_url(url, &c).expect_err(url).to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
    }

    #[test]
    fn private_loopback_and_metadata_addresses_are_refused_unless_loopback_is_allowed_for_dev() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "::1",
            "fd00::1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(check_doc_address(ip, false).is_err(), "{ip}");
        }
        check_doc_address("140.82.112.6".parse().expect("ip"), false).expect("public");
        check_doc_address("127.0.0.1".parse().expect("ip"), true).expect("dev loopback");
        assert!(check_doc_address("169.254.169.254".parse().expect("ip"), true).is_err());
    }
}
