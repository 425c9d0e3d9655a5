//! Forwarding for the credential proxy: a call decided, credentialed and sent exactly as the
//! same capability call from code (the same [`ScopedFetch::prepare`], request headers, address
//! guard and same-origin redirect rule), whose final answer is handed back with its body
//! unread, for the proxy to stream through its redaction, instead of read into a value.

use std::time::Instant;

use oauth3_crds::CallRecord;

use super::{NotSent, Ready, ScopedFetch, redirect};
use crate::host::CapabilityCall;

/// What forwarding one call produced. Every variant carries the call's (redacted) record.
#[derive(Debug)]
pub enum Forwarded {
    /// The policy (or the rate limit, a missing secret, the address guard) refused the call;
    /// nothing was sent. `record.reason` says why.
    Denied(CallRecord),
    /// The call was allowed but did not get an answer (transport failure, an unusable
    /// credential). `record.reason` says why.
    Failed(CallRecord),
    /// The upstream answered (after any same-origin redirects); its body is unread.
    Answered {
        /// The answer; its headers are the upstream's, unredacted.
        response: reqwest::Response,
        /// The record of the final hop.
        record: CallRecord,
    },
}

impl ScopedFetch {
    /// Decides, credentials and sends `call` like [`crate::host::CapabilityHost::call`], and
    /// returns the upstream's answer unread (any status: a 4xx of the upstream is the
    /// client's to see).
    pub async fn forward(&self, call: CapabilityCall) -> Forwarded {
        let started = Instant::now();
        let Ready {
            mut req,
            credential,
        } = match self.prepare(&call, started).await {
            Ok(ready) => ready,
            Err(record) => return Forwarded::Denied(record),
        };
        let mut redirects = 0;
        loop {
            let hop_started = if redirects == 0 {
                started
            } else {
                Instant::now()
            };
            let response = match self.send_head(&req, credential.as_ref()).await {
                Ok(r) => r,
                Err(NotSent::Refused(denial)) => {
                    return Forwarded::Denied(self.deny_record(denial, hop_started));
                }
                Err(NotSent::Failed { status, reason }) => {
                    return Forwarded::Failed(self.record_sent(
                        &req,
                        status,
                        Some(reason),
                        hop_started,
                    ));
                }
            };
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|l| l.to_str().map(str::to_owned));
            match location {
                Some(Ok(location)) if response.status().is_redirection() => {
                    self.record_sent(
                        &req,
                        Some(status),
                        Some(format!("redirect {status}")),
                        hop_started,
                    );
                    redirects += 1;
                    match redirect::next_hop(&self.policy, &req, status, &location, redirects) {
                        Ok(next) => req = next,
                        Err(denial) => {
                            return Forwarded::Denied(self.deny_record(denial, Instant::now()));
                        }
                    }
                }
                Some(Err(_)) if response.status().is_redirection() => {
                    let denial = super::denial_for(
                        &req,
                        format!(
                            "redirect for {} refused: Location is not valid text",
                            req.capability
                        ),
                    );
                    return Forwarded::Denied(self.deny_record(denial, hop_started));
                }
                _ => {
                    let record = self.record_sent(&req, Some(status), None, hop_started);
                    return Forwarded::Answered { response, record };
                }
            }
        }
    }
}
