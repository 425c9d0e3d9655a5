//! The proxy's reports to the operator: every [`REPORT_INTERVAL_MS`] the call records since
//! the last report go to `POST {CALLS_PATH}/<namespace>/<permit>` (the callback token as
//! bearer), where the operator counts them in the Permit's usage and rate budget and appends
//! them to the Permit's audit log. Its answer is the Permit's rate budget as the operator
//! counts it (the Executions' calls too), which the proxy adopts where it is lower: one rate
//! limit across the Permit's Executions and its proxy. A report that fails is kept and sent
//! with the next one; the last report is sent after the proxy stopped.

use std::sync::Arc;
use std::time::Duration;

use oauth3_protocol::Callback;
use oauth3_protocol::proxy::{
    CALLS_PATH, CallBatch, CallBatchAnswer, IDLE_REPORT_EVERY, REPORT_INTERVAL_MS,
};
use zeroize::Zeroizing;

use super::Proxy;
use super::auth::channel_url;
use crate::callback::CallbackError;

/// Posts call batches to the operator.
pub struct CallReporter {
    client: reqwest::Client,
    url: String,
    token: Zeroizing<String>,
}

impl std::fmt::Debug for CallReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallReporter")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl CallReporter {
    /// A reporter for `namespace/permit` over `callback`, trusting `ca_pems` on top of the
    /// callback's own CA.
    ///
    /// # Errors
    /// A refused callback URL or bad CA material.
    pub fn new(
        callback: &Callback,
        namespace: &str,
        permit: &str,
        ca_pems: &[Vec<u8>],
    ) -> Result<Self, CallbackError> {
        let client = crate::callback::callback_client(callback, ca_pems, Duration::from_secs(10))?;
        let url = channel_url(&callback.url, CALLS_PATH, namespace, permit)
            .map_err(CallbackError::Client)?;
        Ok(Self {
            client,
            url,
            token: callback.token.clone(),
        })
    }

    /// Sends one batch; the answer carries the shared rate budget.
    ///
    /// # Errors
    /// The operator could not be reached or did not take the batch.
    pub async fn send(&self, batch: &CallBatch) -> Result<CallBatchAnswer, String> {
        let body = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
        let (status, bytes) =
            crate::callback::post_json(&self.client, &self.url, &self.token, body).await?;
        if !status.is_success() {
            return Err(format!("the operator answered HTTP {}", status.as_u16()));
        }
        serde_json::from_slice(&bytes).map_err(|_| "the operator's answer is malformed".to_owned())
    }

    /// Takes the proxy's calls and sends them; on failure they go back for the next report.
    /// `Ok(true)` when something was sent.
    async fn report(&self, proxy: &Proxy, even_if_empty: bool) -> Result<bool, String> {
        let batch = proxy.take_calls();
        if batch.calls.is_empty() && batch.dropped == 0 && !even_if_empty {
            return Ok(false);
        }
        match self.send(&batch).await {
            Ok(answer) => {
                proxy.cap_budget(&answer.rate_budget);
                Ok(true)
            }
            Err(e) => {
                proxy.requeue(batch);
                Err(e)
            }
        }
    }

    /// Reports until the proxy has stopped and its calls in flight ended (or the stop grace
    /// and a second passed), then sends the last report (tried a few times).
    pub async fn run(self, proxy: Arc<Proxy>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(REPORT_INTERVAL_MS));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut quiet = 0u32;
        let mut stopped_at = None;
        loop {
            ticker.tick().await;
            if proxy.stopped().is_some() {
                let since = *stopped_at.get_or_insert_with(std::time::Instant::now);
                if proxy.in_flight() == 0 || since.elapsed() > proxy.options.stop_grace {
                    break;
                }
            }
            match self.report(&proxy, quiet >= IDLE_REPORT_EVERY).await {
                Ok(true) => quiet = 0,
                Ok(false) => quiet += 1,
                Err(e) => eprintln!("reporting calls to the operator: {e}"),
            }
        }
        for _ in 0..3 {
            match self.report(&proxy, false).await {
                Ok(_) => return,
                Err(e) => {
                    eprintln!("reporting the last calls to the operator: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
