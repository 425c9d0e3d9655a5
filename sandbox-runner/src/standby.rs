//! A pool member's wait for its run (see [`oauth3_protocol::standby`]): ask the operator's
//! standby endpoint, with the member's token, until it answers with a bundle (run it), says the
//! member is retired (exit without running), or refuses the member. Nothing is ever pushed
//! into the member: it only asks, over the same TLS rules as the result callback (https, or
//! http on loopback; the standby file's own CA trusted for it alone; no redirects).

use std::time::Duration;

use oauth3_protocol::standby::{POLL_HOLD_MS, Standby, StandbyAnswer};

use crate::callback::{CallbackError, callback_client, post_json};

/// First pause after a transient failure; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause between two asks after transient failures.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// How a member's wait ended.
#[derive(Debug)]
pub enum Waited {
    /// The run bundle (JSON text, not yet validated).
    Bundle(String),
    /// The operator retired the member: nothing to run.
    Retired,
}

/// Why a member stopped waiting without a bundle.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    /// The standby file's URL or CA material is unusable.
    #[error("the standby endpoint: {0}")]
    Client(#[from] CallbackError),
    /// The operator does not know this member with this token (HTTP status).
    #[error("the operator refused this member (HTTP {0})")]
    Refused(u16),
}

/// Asks the standby endpoint of `standby` until a bundle or a retirement comes; transport
/// failures and other answers are retried with backoff (the operator may be restarting).
/// Each ask is held by the operator up to [`POLL_HOLD_MS`]; `progress` is told of each
/// transient failure (for the member's log).
///
/// # Errors
/// [`StandbyError::Client`] for an unusable standby file, [`StandbyError::Refused`] when the
/// operator refuses the member.
pub async fn wait_for_bundle(
    standby: &Standby,
    ca_pems: &[Vec<u8>],
    mut progress: impl FnMut(&str),
) -> Result<Waited, StandbyError> {
    let hold = Duration::from_millis(POLL_HOLD_MS) + Duration::from_secs(10);
    let client = callback_client(standby, ca_pems, hold)?;
    let mut pause = FIRST_PAUSE;
    loop {
        let asked = post_json(&client, &standby.url, &standby.token, Vec::new()).await;
        let failure = match asked {
            Ok((status, body)) => match StandbyAnswer::of(status.as_u16()) {
                StandbyAnswer::Bundle => match String::from_utf8(body) {
                    Ok(text) => return Ok(Waited::Bundle(text)),
                    Err(_) => "the bundle is not UTF-8".to_owned(),
                },
                StandbyAnswer::Wait => {
                    pause = FIRST_PAUSE;
                    continue;
                }
                StandbyAnswer::Retired => return Ok(Waited::Retired),
                StandbyAnswer::Refused => return Err(StandbyError::Refused(status.as_u16())),
                StandbyAnswer::Transient => format!("HTTP {}", status.as_u16()),
            },
            Err(e) => e,
        };
        progress(&format!("asking for the run again in {pause:?}: {failure}"));
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
