//! Posting a run's result to the operator's result endpoint: https only (http on loopback),
//! the bundle's one-time token as the bearer, the callback's own CA trusted for it alone, no
//! redirects, offered again with backoff while the endpoint is unreachable or busy, until the
//! Execution's deadline and the late-result window after it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth3_protocol::RunResult;
use oauth3_protocol::bundle::{DEFAULT_RESULT_GRACE_MS, LATE_RESULT_WINDOW_MS};
use oauth3_protocol::callback::callback_url_allowed;

use crate::bundle::Callback;

/// Failures posting the result to the callback.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The callback URL is not https (or http on loopback).
    #[error("callback.url: must be https (http only on loopback), got {0}")]
    InsecureUrl(String),
    /// A CA file is not PEM certificates.
    #[error("reading CA certificates: {0}")]
    CaCertificates(String),
    /// The HTTP client could not be built.
    #[error("building the callback client: {0}")]
    Client(String),
    /// The request failed.
    #[error("posting the result to the callback: {0}")]
    Send(String),
    /// The callback answered with a non-success status.
    #[error("the callback answered HTTP {0}")]
    Status(u16),
    /// The result was offered until the deadline (and the late-result window) passed.
    #[error("gave up after {attempts} attempt(s) at the deadline; last: {last}")]
    GaveUp {
        /// How many times it was offered.
        attempts: u32,
        /// Why the last offer failed.
        last: Box<CallbackError>,
    },
}

/// POSTs `result` as JSON to `callback.url` with `Authorization: Bearer <token>`, trusting
/// the web PKI roots built into the runner plus `ca_pems` (PEM bundles) plus the bundle's own
/// `callback.caPem`.
/// Redirects are not followed, so the token goes nowhere else.
///
/// # Errors
/// A refused URL, bad CA material, a transport failure or a non-2xx answer.
pub async fn post_result(
    callback: &Callback,
    result: &RunResult,
    ca_pems: &[Vec<u8>],
) -> Result<(), CallbackError> {
    let client = callback_client(callback, ca_pems, Duration::from_secs(30))?;
    let body = serde_json::to_vec(result).map_err(|e| CallbackError::Send(e.to_string()))?;
    let until = retry_until(callback);
    // Transport failures, 5xx, 408 and 429 answers are retried with backoff until the
    // Execution's deadline and a little after (the operator may be restarting, the API server
    // away, the endpoint busy); any other answer is final. A retry after a lost 2xx answer
    // meets 409 (the result is already recorded), which is reported as such.
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let sent = client
            .post(&callback.url)
            .bearer_auth(callback.token.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let last = match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) if retryable(response.status()) => {
                CallbackError::Status(response.status().as_u16())
            }
            Ok(response) => return Err(CallbackError::Status(response.status().as_u16())),
            // A certificate the runner does not trust will not become trusted by waiting: the
            // token is never offered to it again.
            Err(e) if is_certificate_error(&e) => {
                return Err(CallbackError::Send(e.without_url().to_string()));
            }
            Err(e) => CallbackError::Send(e.without_url().to_string()),
        };
        let now = SystemTime::now();
        if now + delay > until {
            return Err(CallbackError::GaveUp {
                attempts: attempt,
                last: Box::new(last),
            });
        }
        eprintln!("offering the result again in {delay:?} (attempt {attempt}: {last})");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// The client that talks to the run's callback: the web PKI roots plus `ca_pems` plus the
/// bundle's own `callback.caPem`, no redirects (the token goes nowhere else), `timeout`.
pub(crate) fn callback_client(
    callback: &Callback,
    ca_pems: &[Vec<u8>],
    timeout: Duration,
) -> Result<reqwest::Client, CallbackError> {
    if !callback_url_allowed(&callback.url) {
        return Err(CallbackError::InsecureUrl(callback.url.clone()));
    }
    let own = callback.ca_pem.as_ref().map(|p| p.as_bytes());
    let pems: Vec<&[u8]> = ca_pems.iter().map(Vec::as_slice).chain(own).collect();
    let roots = crate::fetch::web_pki_roots_and(&pems).map_err(|(index, reason)| {
        CallbackError::CaCertificates(format!("bundle {index}: {reason}"))
    })?;
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CallbackError::Client(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .map_err(|e| CallbackError::Client(e.to_string()))
}

/// POSTs a JSON `body` to the operator at `url` with the run's callback `token`; the status
/// and the whole answer. Errors never carry the URL (it may hold a token).
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    token: &str,
    body: Vec<u8>,
) -> Result<(reqwest::StatusCode, Vec<u8>), String> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| e.without_url().to_string())?;
    Ok((status, bytes.to_vec()))
}

/// Serialises oauth2 refreshes through the operator, over the run's callback channel (the
/// credential endpoints beside its result URL, with the run's bearer token).
pub struct CallbackCoordinator {
    client: reqwest::Client,
    endpoints: CredentialEndpoints,
    token: zeroize::Zeroizing<String>,
}

/// Where the credential endpoints are.
enum CredentialEndpoints {
    /// Beside a run's result URL.
    Run(String),
    /// `{origin}{PROXY_CREDENTIALS_PATH}/<namespace>/<permit>` for a Permit's proxy.
    Proxy(String),
}

impl CallbackCoordinator {
    /// A coordinator for the run whose callback is `callback`.
    ///
    /// # Errors
    /// A refused URL or bad CA material.
    pub fn new(callback: &Callback, ca_pems: &[Vec<u8>]) -> Result<Self, CallbackError> {
        Ok(Self {
            client: callback_client(callback, ca_pems, Duration::from_secs(20))?,
            endpoints: CredentialEndpoints::Run(callback.url.clone()),
            token: callback.token.clone(),
        })
    }

    /// A coordinator for the credential proxy of `namespace/permit` whose callback is
    /// `callback` (its credential endpoints are below the callback's origin).
    ///
    /// # Errors
    /// A refused URL or bad CA material.
    pub fn for_proxy(
        callback: &Callback,
        namespace: &str,
        permit: &str,
        ca_pems: &[Vec<u8>],
    ) -> Result<Self, CallbackError> {
        let base = crate::proxy::auth::channel_url(
            &callback.url,
            oauth3_protocol::callback::PROXY_CREDENTIALS_PATH,
            namespace,
            permit,
        )
        .map_err(CallbackError::Client)?;
        Ok(Self {
            client: callback_client(callback, ca_pems, Duration::from_secs(20))?,
            endpoints: CredentialEndpoints::Proxy(base),
            token: callback.token.clone(),
        })
    }

    async fn post(&self, secret: &str, action: &str, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let url = match &self.endpoints {
            CredentialEndpoints::Run(result_url) => {
                oauth3_protocol::callback::credential_url(result_url, secret, action)
                    .ok_or_else(|| "the callback URL is not a result URL".to_owned())?
            }
            CredentialEndpoints::Proxy(base) => format!("{base}/{secret}/{action}"),
        };
        let (status, bytes) = post_json(&self.client, url, &self.token, body).await?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(format!(
                "the operator answered HTTP {}: {text}",
                status.as_u16()
            ));
        }
        Ok(bytes)
    }
}

impl crate::oauth::RefreshCoordinator for CallbackCoordinator {
    fn lease<'a>(
        &'a self,
        name: &'a str,
        held: &'a str,
    ) -> crate::host::BoxFuture<'a, Result<crate::oauth::LeaseAnswer, String>> {
        Box::pin(async move {
            use oauth3_protocol::oauth2::{LeaseRequest, LeaseResponse};
            let body = serde_json::to_vec(&LeaseRequest {
                held: held.to_owned(),
            })
            .map_err(|e| e.to_string())?;
            let answer = self
                .post(name, oauth3_protocol::callback::ACTION_LEASE, body)
                .await?;
            let answer: LeaseResponse =
                serde_json::from_slice(&answer).map_err(|_| "the lease answer is malformed")?;
            Ok(match answer {
                LeaseResponse::Granted { .. } => crate::oauth::LeaseAnswer::Granted,
                LeaseResponse::Newer { envelope } => crate::oauth::LeaseAnswer::Newer(envelope),
                LeaseResponse::Wait { retry_after_ms } => crate::oauth::LeaseAnswer::Wait(
                    Duration::from_millis(retry_after_ms.clamp(50, 5000)),
                ),
            })
        })
    }

    fn publish<'a>(
        &'a self,
        update: &'a oauth3_protocol::oauth2::SealedUpdate,
    ) -> crate::host::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let body = serde_json::to_vec(update).map_err(|e| e.to_string())?;
            self.post(&update.name, oauth3_protocol::callback::ACTION_SEALED, body)
                .await
                .map(|_| ())
        })
    }
}

/// Whether the request failed because the endpoint's certificate was not accepted.
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if matches!(
            tls,
            Some(
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
            )
        ) {
            return true;
        }
        source = err.source();
    }
    false
}

fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// Until when the result is offered: the bundle's deadline plus the late-result window; when
/// the bundle names no deadline, [`DEFAULT_RESULT_GRACE_MS`] from now (the run is over).
pub fn retry_until(callback: &Callback) -> SystemTime {
    match callback.deadline_unix_ms {
        Some(ms) => {
            UNIX_EPOCH + Duration::from_millis(ms) + Duration::from_millis(LATE_RESULT_WINDOW_MS)
        }
        None => SystemTime::now() + Duration::from_millis(DEFAULT_RESULT_GRACE_MS),
    }
}

/// The first wait before offering the result again; it doubles up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two offers of the result.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
