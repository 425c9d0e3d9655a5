//! Fetching a quote's collateral from a PCCS (Intel's Provisioning Certificate Caching
//! Service, API v4), for `kubectl oauth3 verify --pccs-url` and `seal --attestation
//! --pccs-url`.
//!
//! For a TDX quote the client reads the platform's FMSPC and PCK CA (processor or platform)
//! from the PCK certificate chain the quote carries, then asks the PCCS for
//! - `GET {base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der` (the PCK CRL; its issuer
//!   chain in the `SGX-PCK-CRL-Issuer-Chain` header),
//! - `GET {base}/tdx/certification/v4/tcb?fmspc={fmspc}` (TCB info and its signature; issuer
//!   chain in `TCB-Info-Issuer-Chain`),
//! - `GET {base}/tdx/certification/v4/qe/identity` (QE identity; issuer chain in
//!   `SGX-Enclave-Identity-Issuer-Chain`),
//! - `GET {base}/sgx/certification/v4/rootcacrl` (Intel's root CA CRL, hex or DER),
//!
//! and assembles the collateral `dcap-qvl` verifies against. What a PCCS hands back is not
//! trusted: every part is signed by Intel and checked by the verification that follows; the
//! PCCS can only make verification fail, never pass. Still the client is strict: `https`
//! only (plain `http` only to a loopback address), no redirects, a time limit and a size cap
//! on every answer, and errors that name the URL and what was wrong.
//!
//! The signed TCB info and QE identity are kept byte for byte as the PCCS sent them (the
//! signature covers those bytes; re-serialising JSON would break it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Quote;
use serde::{Deserialize, Serialize};

/// The most a single PCCS answer may carry (the real ones are a few KiB to ~100 KiB).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Default time limit per request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why collateral could not be fetched. Every message names the URL or the part.
#[derive(Debug, thiserror::Error)]
pub enum PccsError {
    /// The PCCS URL itself is unusable.
    #[error("--pccs-url {url}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The quote does not say which platform it is from.
    #[error("the quote's PCK certificate chain does not name its platform: {0}")]
    Quote(String),
    /// A request failed (connection, TLS, time limit) or was answered with an error.
    #[error("PCCS request GET {url}: {why}")]
    Request {
        /// The URL asked.
        url: String,
        /// What happened.
        why: String,
    },
    /// An answer did not hold what the PCCS API defines.
    #[error("PCCS answer to GET {url}: {why}")]
    Answer {
        /// The URL asked.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// The collateral cache could not be read or written.
    #[error("--collateral-cache {path}: {why}")]
    Cache {
        /// The cache directory.
        path: String,
        /// What failed.
        why: String,
    },
}

/// A PCCS client: base URL, trust and limits.
#[derive(Debug, Clone)]
pub struct PccsClient {
    base: url::Url,
    http: reqwest::Client,
    cache: Option<PathBuf>,
}

impl PccsClient {
    /// A client for the PCCS at `base` (`https://host[:port][/prefix]`; a trailing
    /// `/sgx/certification/v4` or `/tdx/certification/v4` is accepted and dropped), trusting
    /// the web PKI roots plus `extra_ca_pem` (a private PCCS's CA), with `timeout` per request.
    ///
    /// # Errors
    /// [`PccsError::Url`] for a URL that is not `https` (or `http` to a loopback address),
    /// carries credentials, a query or a fragment; unusable CA PEM.
    pub fn new(
        base: &str,
        extra_ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<PccsClient, PccsError> {
        let bad = |why: &str| PccsError::Url {
            url: base.to_owned(),
            why: why.to_owned(),
        };
        let mut url = url::Url::parse(base).map_err(|e| bad(&format!("not a URL: {e}")))?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => return Err(bad("the URL has no host")),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(bad(
                    "plain http is accepted only to a loopback address; use https",
                ));
            }
            other => return Err(bad(&format!("scheme {other:?} is not https"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in the URL are not accepted"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("the URL must not carry a query or a fragment"));
        }
        let path = url.path().trim_end_matches('/');
        let path = path
            .strip_suffix("/sgx/certification/v4")
            .or_else(|| path.strip_suffix("/tdx/certification/v4"))
            .unwrap_or(path)
            .to_owned();
        url.set_path(&format!("{path}/"));

        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            let mut added = 0;
            for cert in rustls_pemfile_certs(pem).map_err(|e| bad(&e))? {
                roots
                    .add(cert)
                    .map_err(|e| bad(&format!("--pccs-ca: unusable certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(bad("--pccs-ca holds no PEM certificate"));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .build()
            .map_err(|e| bad(&format!("HTTP client set-up: {e}")))?;
        Ok(PccsClient {
            base: url,
            http,
            cache: None,
        })
    }

    /// Keeps fetched collateral in `dir` (one file per platform: FMSPC and CA) and reuses it
    /// until the earliest `nextUpdate` of its TCB info and QE identity.
    #[must_use]
    pub fn with_cache(mut self, dir: impl Into<PathBuf>) -> PccsClient {
        self.cache = Some(dir.into());
        self
    }

    /// The collateral for `quote`, checked at time `now` (Unix seconds) for cache freshness.
    ///
    /// # Errors
    /// See [`PccsError`].
    pub async fn collateral_for(
        &self,
        quote: &[u8],
        now: u64,
    ) -> Result<QuoteCollateralV3, PccsError> {
        let (fmspc, ca) = platform_of(quote)?;
        if let Some(dir) = &self.cache
            && let Some(hit) = read_cache(dir, &fmspc, ca, now)?
        {
            return Ok(hit);
        }
        let collateral = self.fetch(&fmspc, ca).await?;
        if let Some(dir) = &self.cache {
            write_cache(dir, &fmspc, ca, &collateral)?;
        }
        Ok(collateral)
    }

    async fn fetch(&self, fmspc: &str, ca: &str) -> Result<QuoteCollateralV3, PccsError> {
        let pck = self
            .get(&format!("sgx/certification/v4/pckcrl?ca={ca}&encoding=der"))
            .await?;
        let pck_crl_issuer_chain = pck.chain("SGX-PCK-CRL-Issuer-Chain")?;
        let tcb = self
            .get(&format!("tdx/certification/v4/tcb?fmspc={fmspc}"))
            .await?;
        // PCCS v4 names it TCB-Info-Issuer-Chain; older caches SGX-TCB-Info-Issuer-Chain.
        let tcb_info_issuer_chain = if tcb.headers.contains_key("sgx-tcb-info-issuer-chain")
            && !tcb.headers.contains_key("tcb-info-issuer-chain")
        {
            tcb.chain("SGX-TCB-Info-Issuer-Chain")?
        } else {
            tcb.chain("TCB-Info-Issuer-Chain")?
        };
        let (tcb_info, tcb_info_signature) = tcb.signed("tcbInfo")?;
        let qe = self.get("tdx/certification/v4/qe/identity").await?;
        let qe_identity_issuer_chain = qe.chain("SGX-Enclave-Identity-Issuer-Chain")?;
        let (qe_identity, qe_identity_signature) = qe.signed("enclaveIdentity")?;
        let root = self.get("sgx/certification/v4/rootcacrl").await?;
        // A PCCS answers the root CA CRL hex-encoded; Intel's PCS and some caches in DER.
        let root_ca_crl = std::str::from_utf8(&root.body)
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
            .unwrap_or(root.body);
        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl: pck.body,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        })
    }

    async fn get(&self, path: &str) -> Result<Answer, PccsError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| PccsError::Url {
                url: self.base.to_string(),
                why: e.to_string(),
            })?
            .to_string();
        let fail = |why: String| PccsError::Request {
            url: url.clone(),
            why,
        };
        let mut response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(fail(format!(
                "answered {status} (a redirect{}); redirects are not followed: pass the \
                 PCCS's own URL",
                response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(|l| format!(" to {l}"))
                    .unwrap_or_default()
            )));
        }
        if !status.is_success() {
            return Err(fail(format!("answered {status}")));
        }
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.into())))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(fail(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { url, headers, body })
    }
}

struct Answer {
    url: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn bad(&self, why: String) -> PccsError {
        PccsError::Answer {
            url: self.url.clone(),
            why,
        }
    }

    /// An issuer chain header: URL-encoded PEM.
    fn chain(&self, name: &str) -> Result<String, PccsError> {
        let raw = self
            .headers
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| self.bad(format!("the {name} header is missing")))?;
        let pem = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| self.bad(format!("the {name} header is not URL-encoded UTF-8")))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(self.bad(format!("the {name} header holds no PEM certificate")));
        }
        Ok(pem.into_owned())
    }

    /// `{"<field>": {...signed JSON...}, "signature": "<hex>"}`: the signed part byte for byte.
    fn signed(&self, field: &str) -> Result<(String, Vec<u8>), PccsError> {
        let text = std::str::from_utf8(&self.body)
            .map_err(|_| self.bad("the body is not UTF-8".into()))?;
        let members = top_level_members(text)
            .map_err(|e| self.bad(format!("the body is not a JSON object: {e}")))?;
        let raw = |name: &str| {
            members
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| self.bad(format!("the body has no {name:?}")))
        };
        let part = raw(field)?;
        if !part.starts_with('{') {
            return Err(self.bad(format!("{field:?} is not a JSON object")));
        }
        let signature: String = serde_json::from_str(raw("signature")?)
            .map_err(|_| self.bad("\"signature\" is not a string".into()))?;
        let signature =
            hex::decode(&signature).map_err(|_| self.bad("\"signature\" is not hex".into()))?;
        Ok((part.to_owned(), signature))
    }
}

/// The members of a JSON object, each value as the exact text it has in `text` (what a
/// signature covers), keys unescaped.
fn top_level_members(text: &str) -> Result<Vec<(String, &str)>, String> {
    fn skip_ws(text: &str, at: usize) -> usize {
        at + text[at..].len() - text[at..].trim_start().len()
    }
    /// The length of the one JSON value at the start of `rest`.
    fn value_len(rest: &str) -> Result<usize, String> {
        let mut values =
            serde_json::Deserializer::from_str(rest).into_iter::<serde::de::IgnoredAny>();
        match values.next() {
            Some(Ok(_)) => Ok(values.byte_offset()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("a value is missing".into()),
        }
    }
    let mut members = Vec::new();
    let mut at = skip_ws(text, 0);
    if !text[at..].starts_with('{') {
        return Err("it does not start with '{'".into());
    }
    at = skip_ws(text, at + 1);
    if text[at..].starts_with('}') {
        at += 1;
    } else {
        loop {
            let len = value_len(&text[at..])?;
            let key: String = serde_json::from_str(&text[at..at + len])
                .map_err(|_| format!("a key at byte {at} is not a string"))?;
            at = skip_ws(text, at + len);
            if !text[at..].starts_with(':') {
                return Err(format!("expected ':' at byte {at}"));
            }
            at = skip_ws(text, at + 1);
            let len = value_len(&text[at..])?;
            members.push((key, &text[at..at + len]));
            at = skip_ws(text, at + len);
            match text[at..].chars().next() {
                Some(',') => at = skip_ws(text, at + 1),
                Some('}') => {
                    at += 1;
                    break;
                }
                _ => return Err(format!("expected ',' or '}}' at byte {at}")),
            }
        }
    }
    if !text[at..].trim().is_empty() {
        return Err(format!("unexpected text after the object at byte {at}"));
    }
    Ok(members)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--pccs-ca: not PEM certificates: {e}"))
}

/// The quote's platform: FMSPC (upper-case hex) and PCK CA (`processor` or `platform`).
///
/// # Errors
/// [`PccsError::Quote`] when the quote does not parse or carries no PCK certificate chain.
pub fn platform_of(quote: &[u8]) -> Result<(String, &'static str), PccsError> {
    let parsed = Quote::parse(quote).map_err(|e| PccsError::Quote(format!("{e:#}")))?;
    let fmspc =
        dcap_qvl::intel::quote_fmspc(&parsed).map_err(|e| PccsError::Quote(format!("{e:#}")))?;
    let ca = dcap_qvl::intel::quote_ca(&parsed).map_err(|e| PccsError::Quote(format!("{e:#}")))?;
    Ok((hex::encode_upper(fmspc), ca.as_id_str()))
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    fmspc: String,
    ca: String,
    /// Unix seconds: the earliest `nextUpdate` of the TCB info and QE identity.
    valid_until: u64,
    collateral: QuoteCollateralV3,
}

fn cache_file(dir: &Path, fmspc: &str, ca: &str) -> PathBuf {
    dir.join(format!("tdx-{fmspc}-{ca}.json"))
}

fn cache_err(dir: &Path, why: String) -> PccsError {
    PccsError::Cache {
        path: dir.display().to_string(),
        why,
    }
}

fn read_cache(
    dir: &Path,
    fmspc: &str,
    ca: &str,
    now: u64,
) -> Result<Option<QuoteCollateralV3>, PccsError> {
    let file = cache_file(dir, fmspc, ca);
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cache_err(dir, format!("reading {}: {e}", file.display()))),
    };
    // A damaged entry is refetched, never trusted or fatal.
    let Ok(entry) = serde_json::from_slice::<CacheEntry>(&text) else {
        return Ok(None);
    };
    if entry.fmspc != fmspc || entry.ca != ca || now >= entry.valid_until {
        return Ok(None);
    }
    Ok(Some(entry.collateral))
}

fn write_cache(
    dir: &Path,
    fmspc: &str,
    ca: &str,
    collateral: &QuoteCollateralV3,
) -> Result<(), PccsError> {
    let valid_until = next_update(collateral).ok_or_else(|| {
        cache_err(
            dir,
            "the collateral's TCB info or QE identity has no readable nextUpdate".into(),
        )
    })?;
    let entry = CacheEntry {
        fmspc: fmspc.to_owned(),
        ca: ca.to_owned(),
        valid_until,
        collateral: collateral.clone(),
    };
    std::fs::create_dir_all(dir).map_err(|e| cache_err(dir, format!("creating it: {e}")))?;
    let file = cache_file(dir, fmspc, ca);
    let tmp = file.with_extension("json.tmp");
    let bytes = serde_json::to_vec(&entry).map_err(|e| cache_err(dir, e.to_string()))?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| cache_err(dir, format!("writing {}: {e}", file.display())))
}

/// The earliest `nextUpdate` (Unix seconds) of the collateral's TCB info and QE identity.
#[must_use]
pub fn next_update(collateral: &QuoteCollateralV3) -> Option<u64> {
    let of = |json: &str| -> Option<u64> {
        #[derive(Deserialize)]
        struct Dated {
            #[serde(rename = "nextUpdate")]
            next_update: String,
        }
        let dated: Dated = serde_json::from_str(json).ok()?;
        let ts: k8s_openapi::jiff::Timestamp = dated.next_update.parse().ok()?;
        u64::try_from(ts.as_second()).ok()
    };
    Some(of(&collateral.tcb_info)?.min(of(&collateral.qe_identity)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_are_refused() {
        for (url, why) in [
            ("http://pccs.example.com", "loopback"),
            ("ftp://127.0.0.1/", "not https"),
            ("https://u:p@pccs.example.com", "credentials"),
            ("https://pccs.example.com/?x=1", "query"),
            ("not a url", "not a URL"),
        ] {
            let e = PccsClient::new(url, None, DEFAULT_TIMEOUT)
                .expect_err("refused")
                .to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn signed_parts_are_kept_byte_for_byte() {
        let body =
            r#" { "tcbInfo" : {"b":1, "a":[2,{"c":"}"}]} ,"signature":"0aff", "x\"y": null } "#;
        let members = top_level_members(body).expect("members");
        assert_eq!(
            members[0],
            ("tcbInfo".to_owned(), r#"{"b":1, "a":[2,{"c":"}"}]}"#)
        );
        assert_eq!(members[1], ("signature".to_owned(), r#""0aff""#));
        assert_eq!(members[2], ("x\"y".to_owned(), "null"));
        for bad in [
            "[]",
            "{\"a\":1",
            "{\"a\" 1}",
            "{1:2}",
            "{\"a\":1} x",
            "{\"a\":}",
        ] {
            assert!(top_level_members(bad).is_err(), "{bad}");
        }
        assert!(top_level_members("{}").expect("empty").is_empty());
    }

    #[test]
    fn base_url_suffixes_are_dropped() {
        for url in [
            "https://pccs.example.com",
            "https://pccs.example.com/",
            "https://pccs.example.com/sgx/certification/v4",
            "https://pccs.example.com/tdx/certification/v4/",
        ] {
            let c = PccsClient::new(url, None, DEFAULT_TIMEOUT).expect("accepted");
            assert_eq!(c.base.as_str(), "https://pccs.example.com/", "{url}");
        }
        let c =
            PccsClient::new("http://127.0.0.1:8081/pccs", None, DEFAULT_TIMEOUT).expect("accepted");
        assert_eq!(c.base.as_str(), "http://127.0.0.1:8081/pccs/");
    }
}
