//! Posting a run's result to the operator's result endpoint: https only (http on loopback),
//! the bundle's one-time token as the bearer, the callback's own CA trusted for it alone, no
//! redirects, retried while the endpoint is restarting.

use std::time::Duration;

use oauth3_protocol::RunResult;
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
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| CallbackError::Client(e.to_string()))?;
    let body = serde_json::to_vec(result).map_err(|e| CallbackError::Send(e.to_string()))?;
    // Transport failures and 5xx answers are retried (the operator may be restarting or
    // busy); any other answer is final. A retry after a lost 2xx answer meets 409 (the result
    // is already recorded), which is reported as such.
    let mut delay = Duration::from_millis(500);
    let mut last = CallbackError::Send("not attempted".to_owned());
    for attempt in 0..CALLBACK_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
        let sent = client
            .post(&callback.url)
            .bearer_auth(callback.token.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) if response.status().is_server_error() => {
                last = CallbackError::Status(response.status().as_u16());
            }
            Ok(response) => return Err(CallbackError::Status(response.status().as_u16())),
            Err(e) => last = CallbackError::Send(e.without_url().to_string()),
        }
    }
    Err(last)
}

/// How many times the result is offered to the callback before giving up.
pub const CALLBACK_ATTEMPTS: u32 = 5;
