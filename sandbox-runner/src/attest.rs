//! Quote providers: where the runner gets the TDX quote that attests its result (and its
//! enclave key): dstack's guest agent (`GetQuote`), Confidential Containers' attestation agent
//! (`/aa/evidence`), Linux configfs-tsm, or none.
//!
//! Every provider is handed the 64-byte report data defined in
//! [`oauth3_protocol::attestation`] and returns the quote as it got it (with dstack's event
//! log). The runner does not judge the quote: `kubectl oauth3 verify` does, offline, against
//! Intel's root of trust and the owner's measurement policy. A provider that is configured but
//! cannot give a quote is an error, never a silent `none`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use oauth3_crds::{Attestation, AttestationKind, AttestationProvider};
use oauth3_protocol::attestation::{
    REPORT_DATA_LEN, coco_runtime_data, quote_report_data, statement_report_data,
};
use serde::Deserialize;

use crate::host::BoxFuture;
use crate::local_http::{self, Endpoint, LocalHttpError, Request};

/// Largest quote accepted from a provider (configfs-tsm's `outblob` is at most 32 KiB).
const MAX_QUOTE_BYTES: usize = 64 * 1024;

/// What a provider returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The raw quote.
    pub quote: Vec<u8>,
    /// The provider's event log, as it gave it (dstack: JSON text; CoCo: `cc_eventlog`).
    pub event_log: Option<String>,
}

/// Why no quote could be had. Never carries a secret (quotes and report data are public).
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The configured endpoint is not usable.
    #[error("quote provider {provider}: endpoint {endpoint:?} is invalid: {reason}")]
    Endpoint {
        /// The provider.
        provider: &'static str,
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: &'static str,
    },
    /// Talking to the provider failed.
    #[error("quote provider {provider}: {source}")]
    Exchange {
        /// The provider.
        provider: &'static str,
        /// What failed.
        #[source]
        source: LocalHttpError,
    },
    /// The provider answered with an error status.
    #[error("quote provider {provider}: {step} answered HTTP {status}: {message}")]
    Status {
        /// The provider.
        provider: &'static str,
        /// The request.
        step: &'static str,
        /// The HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The provider's answer could not be understood.
    #[error("quote provider {provider}: {reason}")]
    Response {
        /// The provider.
        provider: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A configfs-tsm file could not be used.
    #[error("quote provider tsm: {step} {path}: {source}")]
    Tsm {
        /// What was being done.
        step: &'static str,
        /// The file or directory.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// A source of TDX quotes over caller-chosen report data.
pub trait QuoteProvider: Send + Sync {
    /// Which provider this is.
    fn kind(&self) -> AttestationProvider;
    /// A quote whose report data binds `report_data` (see
    /// [`oauth3_protocol::attestation::quote_report_data`] for the bytes it carries).
    fn quote(
        &self,
        report_data: [u8; REPORT_DATA_LEN],
    ) -> BoxFuture<'_, Result<Evidence, AttestError>>;
}

/// The attestation of a result whose statement digest is `statement_digest`: `none` without a
/// provider, else the provider's quote over the statement binding.
///
/// # Errors
/// When the configured provider gives no quote.
pub async fn attest_statement(
    provider: Option<&dyn QuoteProvider>,
    statement_digest: &str,
) -> Result<Attestation, AttestError> {
    let Some(provider) = provider else {
        return Ok(Attestation {
            statement_digest: Some(statement_digest.to_owned()),
            ..Attestation::none()
        });
    };
    let data = statement_report_data(statement_digest);
    let evidence = provider.quote(data).await?;
    Ok(Attestation {
        statement_digest: Some(statement_digest.to_owned()),
        ..attestation_of(provider.kind(), &data, evidence)
    })
}

/// The attestation record of `evidence` from `kind` over `report_data` (a statement's or the
/// enclave key's binding, see [`oauth3_protocol::attestation`]), without a statement digest.
pub fn attestation_of(
    kind: AttestationProvider,
    report_data: &[u8; REPORT_DATA_LEN],
    evidence: Evidence,
) -> Attestation {
    Attestation {
        kind: AttestationKind::Tdx,
        provider: Some(kind),
        quote: Some(base64::engine::general_purpose::STANDARD.encode(&evidence.quote)),
        report_data: Some(hex::encode(quote_report_data(
            report_data,
            kind == AttestationProvider::Coco,
        ))),
        statement_digest: None,
        event_log: evidence.event_log,
    }
}

fn endpoint_of(provider: &'static str, endpoint: &str) -> Result<Endpoint, AttestError> {
    local_http::parse_endpoint(endpoint).map_err(|reason| AttestError::Endpoint {
        provider,
        endpoint: endpoint.to_owned(),
        reason,
    })
}

fn check_size(provider: &'static str, quote: &[u8]) -> Result<(), AttestError> {
    if quote.is_empty() {
        return Err(AttestError::Response {
            provider,
            reason: "the quote is empty".to_owned(),
        });
    }
    if quote.len() > MAX_QUOTE_BYTES {
        return Err(AttestError::Response {
            provider,
            reason: format!("the quote is larger than {MAX_QUOTE_BYTES} bytes"),
        });
    }
    Ok(())
}

const DSTACK: &str = "dstack";
const COCO: &str = "coco";
const TSM: &str = "tsm";

/// dstack's guest agent: `POST http://dstack/GetQuote {"report_data": "<hex>"}`; the report
/// data is used as given. The answer's `event_log` (which replays to RTMR3 and names the app's
/// compose hash) is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DstackQuotes {
    /// A unix socket path, or an `http://host:port` base URL.
    pub endpoint: String,
}

#[derive(Deserialize)]
struct GetQuoteResponse {
    quote: String,
    #[serde(default)]
    event_log: Option<String>,
}

impl DstackQuotes {
    async fn fetch(&self, report_data: [u8; REPORT_DATA_LEN]) -> Result<Evidence, AttestError> {
        let endpoint = endpoint_of(DSTACK, &self.endpoint)?;
        let body = serde_json::json!({"report_data": hex::encode(report_data)}).to_string();
        let response = local_http::exchange(
            &endpoint,
            &Request {
                method: "POST",
                path: "/GetQuote",
                unix_host: "dstack",
                json_body: Some(body.as_bytes()),
            },
        )
        .await
        .map_err(|source| AttestError::Exchange {
            provider: DSTACK,
            source,
        })?;
        if response.status != 200 {
            return Err(AttestError::Status {
                provider: DSTACK,
                step: "GetQuote",
                status: response.status,
                message: crate::secrets::provider::error_message(&response.body),
            });
        }
        let parsed: GetQuoteResponse =
            serde_json::from_slice(&response.body).map_err(|_| AttestError::Response {
                provider: DSTACK,
                reason: "the GetQuote answer is not JSON with a `quote` field".to_owned(),
            })?;
        let text = parsed.quote.trim();
        let quote = hex::decode(text.strip_prefix("0x").unwrap_or(text)).map_err(|_| {
            AttestError::Response {
                provider: DSTACK,
                reason: "the GetQuote `quote` is not hexadecimal".to_owned(),
            }
        })?;
        check_size(DSTACK, &quote)?;
        Ok(Evidence {
            quote,
            event_log: parsed.event_log.filter(|l| !l.is_empty()),
        })
    }
}

impl QuoteProvider for DstackQuotes {
    fn kind(&self) -> AttestationProvider {
        AttestationProvider::Dstack
    }

    fn quote(
        &self,
        report_data: [u8; REPORT_DATA_LEN],
    ) -> BoxFuture<'_, Result<Evidence, AttestError>> {
        Box::pin(self.fetch(report_data))
    }
}

/// Confidential Containers' attestation agent through the in-guest API server:
/// `GET <url>/aa/evidence?runtime_data=<hex of the first 32 report-data bytes>` (the agent
/// reads runtime data as text of at most 64 bytes). TDX evidence is JSON with a base64
/// `quote` and, when present, a base64 `cc_eventlog`, which is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CocoQuotes {
    /// Base URL, e.g. `http://127.0.0.1:8006`.
    pub base_url: String,
}

#[derive(Deserialize)]
struct CocoEvidence {
    quote: String,
    #[serde(default)]
    cc_eventlog: Option<String>,
}

impl CocoQuotes {
    async fn fetch(&self, report_data: [u8; REPORT_DATA_LEN]) -> Result<Evidence, AttestError> {
        let endpoint = endpoint_of(COCO, &self.base_url)?;
        if !matches!(endpoint, Endpoint::Tcp { .. }) {
            return Err(AttestError::Endpoint {
                provider: COCO,
                endpoint: self.base_url.clone(),
                reason: "the attestation agent's API server must be an http:// URL",
            });
        }
        let path = format!(
            "/aa/evidence?runtime_data={}",
            coco_runtime_data(&report_data)
        );
        let response = local_http::exchange(
            &endpoint,
            &Request {
                method: "GET",
                path: &path,
                unix_host: "localhost",
                json_body: None,
            },
        )
        .await
        .map_err(|source| AttestError::Exchange {
            provider: COCO,
            source,
        })?;
        if response.status != 200 {
            return Err(AttestError::Status {
                provider: COCO,
                step: "getting evidence",
                status: response.status,
                message: crate::secrets::provider::error_message(&response.body),
            });
        }
        let parsed: CocoEvidence =
            serde_json::from_slice(&response.body).map_err(|_| AttestError::Response {
                provider: COCO,
                reason: "the evidence is not TDX evidence (JSON with a base64 `quote`); is the \
                         pod a TDX guest?"
                    .to_owned(),
            })?;
        let quote = base64::engine::general_purpose::STANDARD
            .decode(parsed.quote.trim())
            .map_err(|_| AttestError::Response {
                provider: COCO,
                reason: "the evidence's `quote` is not base64".to_owned(),
            })?;
        check_size(COCO, &quote)?;
        Ok(Evidence {
            quote,
            event_log: parsed.cc_eventlog.filter(|l| !l.is_empty()),
        })
    }
}

impl QuoteProvider for CocoQuotes {
    fn kind(&self) -> AttestationProvider {
        AttestationProvider::Coco
    }

    fn quote(
        &self,
        report_data: [u8; REPORT_DATA_LEN],
    ) -> BoxFuture<'_, Result<Evidence, AttestError>> {
        Box::pin(self.fetch(report_data))
    }
}

/// Linux configfs-tsm: in a report entry, write the report data to `inblob` and read the quote
/// from `outblob`; `generation` (one more per write) proves no other writer came between.
/// `dir` is either the report root (`/sys/kernel/config/tsm/report`), in which the runner
/// creates its own entry and removes it afterwards, or an existing entry (it has an `inblob`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmQuotes {
    /// The report root or one entry.
    pub dir: PathBuf,
}

static TSM_ENTRY: AtomicU64 = AtomicU64::new(0);

fn tsm_err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AttestError {
    let path = path.display().to_string();
    move |source| AttestError::Tsm { step, path, source }
}

fn read_generation(entry: &Path) -> Result<u64, AttestError> {
    let path = entry.join("generation");
    let text = std::fs::read_to_string(&path).map_err(tsm_err("reading", &path))?;
    text.trim().parse().map_err(|_| AttestError::Response {
        provider: TSM,
        reason: format!("{} is not a number", path.display()),
    })
}

/// One report from `entry` (blocking file IO; configfs generates the quote on read).
fn tsm_report(entry: &Path, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, AttestError> {
    let provider_path = entry.join("provider");
    if let Ok(name) = std::fs::read_to_string(&provider_path)
        && name.trim() != "tdx_guest"
    {
        return Err(AttestError::Response {
            provider: TSM,
            reason: format!(
                "{} says {:?}, not tdx_guest: this is not a TDX guest",
                provider_path.display(),
                name.trim()
            ),
        });
    }
    let before = read_generation(entry)?;
    let inblob = entry.join("inblob");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&inblob)
        .and_then(|mut f| std::io::Write::write_all(&mut f, report_data))
        .map_err(tsm_err("writing", &inblob))?;
    let outblob = entry.join("outblob");
    let quote = std::fs::read(&outblob).map_err(tsm_err("reading", &outblob))?;
    let after = read_generation(entry)?;
    if after != before + 1 {
        return Err(AttestError::Response {
            provider: TSM,
            reason: format!(
                "another writer used report entry {} at the same time (generation {before} -> \
                 {after}); the quote may not be over this report data",
                entry.display()
            ),
        });
    }
    check_size(TSM, &quote)?;
    Ok(Evidence {
        quote,
        event_log: None,
    })
}

impl TsmQuotes {
    fn report(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, AttestError> {
        if self.dir.join("inblob").exists() {
            return tsm_report(&self.dir, report_data);
        }
        let entry = self.dir.join(format!(
            "oauth3-{}-{}",
            std::process::id(),
            TSM_ENTRY.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&entry).map_err(tsm_err("creating report entry", &entry))?;
        let result = if entry.join("inblob").exists() {
            tsm_report(&entry, report_data)
        } else {
            Err(AttestError::Response {
                provider: TSM,
                reason: format!(
                    "{} is not a configfs-tsm report directory (a new entry has no inblob); is \
                     configfs mounted and the kernel 6.7 or newer?",
                    self.dir.display()
                ),
            })
        };
        let _ = std::fs::remove_dir(&entry);
        result
    }
}

impl QuoteProvider for TsmQuotes {
    fn kind(&self) -> AttestationProvider {
        AttestationProvider::Tsm
    }

    fn quote(
        &self,
        report_data: [u8; REPORT_DATA_LEN],
    ) -> BoxFuture<'_, Result<Evidence, AttestError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.report(&report_data))
                .await
                .map_err(|e| AttestError::Response {
                    provider: TSM,
                    reason: format!("the report task failed: {e}"),
                })?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_provider_the_statement_is_recorded_unattested() {
        let a = attest_statement(None, "sha256:ab").await.expect("none");
        assert_eq!(a.kind, AttestationKind::None);
        assert_eq!(a.statement_digest.as_deref(), Some("sha256:ab"));
        assert!(a.quote.is_none() && a.report_data.is_none());
    }

    #[test]
    fn a_directory_that_is_not_configfs_tsm_is_named_and_left_clean() {
        let dir = std::env::temp_dir().join(format!("oauth3-tsm-root-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let err = TsmQuotes { dir: dir.clone() }
            .report(&[0; REPORT_DATA_LEN])
            .expect_err("not configfs");
        assert!(
            err.to_string().contains("not a configfs-tsm report"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&dir).expect("read").count(), 0);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn an_empty_or_huge_quote_is_refused() {
        assert!(check_size(DSTACK, &[]).is_err());
        assert!(check_size(DSTACK, &vec![0; MAX_QUOTE_BYTES + 1]).is_err());
        assert!(check_size(DSTACK, &[1]).is_ok());
    }
}
