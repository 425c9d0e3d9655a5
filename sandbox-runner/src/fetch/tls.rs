//! TLS roots: the web PKI trust anchors compiled into the runner plus extra PEM roots, and
//! the client configuration the scoped fetch connects with.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::FetchError;

/// The Mozilla root programme's trust anchors compiled into the binary (no files are read:
/// a sandbox trusts the same roots whatever image it runs in, and starts without parsing a
/// certificate directory) plus the certificates of each PEM bundle in `extra_pems`.
///
/// # Errors
/// `(index, reason)` of the first bundle that is not PEM certificates or holds none.
pub fn web_pki_roots_and(extra_pems: &[&[u8]]) -> Result<rustls::RootCertStore, (usize, String)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for (index, pem) in extra_pems.iter().enumerate() {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (index, e.to_string()))?;
        if certs.is_empty() {
            return Err((index, "no CERTIFICATE block".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| (index, e.to_string()))?;
        }
    }
    Ok(roots)
}

/// The upstream TLS configuration: ring, safe protocol versions, the web PKI roots plus
/// `extra_pems`, HTTP/1.1 only.
///
/// # Errors
/// [`FetchError::RootCert`] for an unusable extra root, [`FetchError::Tls`] otherwise.
pub(crate) fn client_config(extra_pems: &[Vec<u8>]) -> Result<rustls::ClientConfig, FetchError> {
    let extra: Vec<&[u8]> = extra_pems.iter().map(Vec::as_slice).collect();
    let roots = web_pki_roots_and(&extra)
        .map_err(|(index, reason)| FetchError::RootCert { index, reason })?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| FetchError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}
