//! The host side of the code's `fetch()`: decided by the policy's fetch form, placeholders
//! replaced where bindings allow (see [`super::placeholder`]), sent through the same guarded
//! clients as capability calls, and answered as a WHATWG-shaped response (any status; a
//! non-2xx answer is a response, not an error).
//!
//! Per request: the call budget, the policy ([`Policy::decide_fetch`]), the rate limit of the
//! capability that allowed it, then the placeholders; a refusal at any step sends nothing.
//! Redirects: `follow` decides every hop again in full (host, method, path, query) and
//! replaces the placeholders again for the new host, so a redirect to a host a binding does
//! not name refuses the request instead of carrying the secret there; `manual` hands the 3xx
//! to the code; `error` rejects. The response's headers and body are redacted of every secret
//! before the code sees them; `Set-Cookie` is not shown to the code.

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::redirect::{MAX_REDIRECTS, method_after_redirect};
use super::{ScopedFetch, SendOutcome, denial_for};
use crate::host::{CallOutcome, FetchRequest, FetchResponse, RedirectMode};
use crate::policy::{Denial, PreparedRequest};
use crate::redact::REDACTED;

impl ScopedFetch {
    /// One `fetch()` of the code.
    pub(super) async fn run_fetch(&self, request: Value) -> CallOutcome {
        let started = Instant::now();
        let request: FetchRequest = match serde_json::from_value(request) {
            Ok(r) => r,
            Err(e) => {
                return self.deny(
                    Denial {
                        capability: "fetch".to_owned(),
                        method: String::new(),
                        url: String::new(),
                        reason: format!("fetch: the request could not be read: {e}"),
                    },
                    started,
                );
            }
        };
        let attempt = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if attempt >= self.max_calls {
            return self.deny(
                Denial {
                    capability: "fetch".to_owned(),
                    method: request.method.to_ascii_uppercase(),
                    url: String::new(),
                    reason: format!(
                        "call limit of {} calls per execution exceeded; nothing was sent",
                        self.max_calls
                    ),
                },
                started,
            );
        }
        let mut req = match self.policy.decide_fetch(&request) {
            Ok(r) => r,
            Err(d) => return self.deny(d, started),
        };
        if let Err(reason) = super::lock(&self.limiter).try_acquire(&req.capability, Instant::now())
        {
            return self.deny(denial_for(&req, reason), started);
        }
        let mut hops = 0;
        loop {
            let hop_started = if hops == 0 { started } else { Instant::now() };
            let bindings = self.policy.bindings(&req.capability);
            let secrets = match self.call_secrets(&req.capability).await {
                Ok(s) => s,
                Err(reason) => {
                    return self.deny(
                        denial_for(&req, format!("{reason}; nothing was sent")),
                        hop_started,
                    );
                }
            };
            let substituted = match self.placeholders.substitute(&req, bindings, &secrets) {
                Ok(s) => s,
                Err(reason) => {
                    return self.deny(
                        denial_for(
                            &req,
                            format!(
                                "fetch {} {} refused: {reason}; nothing was sent",
                                req.method, req.url
                            ),
                        ),
                        hop_started,
                    );
                }
            };
            let outcome = self
                .send_once(substituted.as_ref().unwrap_or(&req), None)
                .await;
            match outcome {
                SendOutcome::Refused(d) => {
                    return self.deny(denial_for(&req, d.reason), hop_started);
                }
                SendOutcome::Failed { status, reason } => {
                    return self.fail(&req, status, reason, hop_started);
                }
                SendOutcome::Redirect {
                    status,
                    location,
                    headers,
                } => match request.redirect {
                    RedirectMode::Manual => {
                        return self.respond(&req, status, &headers, &[], hops > 0, hop_started);
                    }
                    RedirectMode::Error => {
                        return self.fail(
                            &req,
                            Some(status),
                            format!(
                                "fetch {} {}: the answer is a redirect ({status}) and init.redirect is 'error'",
                                req.method, req.url
                            ),
                            hop_started,
                        );
                    }
                    RedirectMode::Follow => {
                        self.record_sent(
                            &req,
                            Some(status),
                            Some(format!("redirect {status}")),
                            hop_started,
                        );
                        hops += 1;
                        if hops > MAX_REDIRECTS {
                            return self.deny(
                                denial_for(
                                    &req,
                                    format!(
                                        "fetch: more than {MAX_REDIRECTS} redirects; not followed"
                                    ),
                                ),
                                Instant::now(),
                            );
                        }
                        let (method, keep_body) = method_after_redirect(status, req.method);
                        match self
                            .policy
                            .fetch_redirect(&req, method, keep_body, &location)
                        {
                            Ok(next) => req = next,
                            Err(d) => return self.deny(d, Instant::now()),
                        }
                    }
                },
                SendOutcome::Answered {
                    status,
                    body,
                    headers,
                    ..
                } => return self.respond(&req, status, &headers, &body, hops > 0, hop_started),
            }
        }
    }

    /// The response the code sees, redacted, and its call record.
    fn respond(
        &self,
        req: &PreparedRequest,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        redirected: bool,
        started: Instant,
    ) -> CallOutcome {
        self.record_sent(req, Some(status), None, started);
        let headers = headers
            .iter()
            .filter(|(k, _)| *k != reqwest::header::SET_COOKIE && k.as_str() != "set-cookie2")
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    self.redactor.redact(&String::from_utf8_lossy(v.as_bytes())),
                )
            })
            .collect();
        let response = FetchResponse {
            status,
            status_text: reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or_default()
                .to_owned(),
            url: self.redactor.redact(req.url.as_str()),
            redirected,
            headers,
            body_base64: STANDARD.encode(redact_bytes(&self.redactor, body)),
        };
        match serde_json::to_value(response) {
            Ok(v) => CallOutcome::Value(v),
            Err(e) => CallOutcome::Error(format!("fetch: the response could not be encoded: {e}")),
        }
    }
}

/// `body` with every form of every secret replaced: as text when it is UTF-8; otherwise
/// each secret's raw bytes are replaced (binary bodies carry secrets as bytes or not at all
/// in a form a redactor could know).
fn redact_bytes(redactor: &crate::redact::Redactor, body: &[u8]) -> Vec<u8> {
    if redactor.is_empty() {
        return body.to_vec();
    }
    match std::str::from_utf8(body) {
        Ok(text) => redactor.redact(text).into_bytes(),
        Err(_) => {
            let lossy = String::from_utf8_lossy(body);
            if redactor.redact(&lossy) == lossy {
                return body.to_vec();
            }
            // Some secret is in the bytes: keep only what decodes, redacted.
            let mut out = redactor.redact(&lossy).into_bytes();
            if out.is_empty() {
                out.extend_from_slice(REDACTED.as_bytes());
            }
            out
        }
    }
}
