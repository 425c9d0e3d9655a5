//! The standby contract: how a pool member (a booted sandbox runner with no bundle, no secrets
//! and no Permit) waits for the one run it will ever get.
//!
//! The member asks; nothing is pushed into it. It POSTs (empty body) to
//! `{base}{STANDBY_PATH}/{namespace}/{member}` with `Authorization: Bearer <member token>`,
//! the token its pool gave it in its standby file, and the operator answers:
//! - `200` with the run bundle (JSON, [`crate::Bundle`]) once an Execution has claimed the
//!   member *and* the Execution's egress policy selects it: the member runs it exactly as
//!   `run --bundle` would, reports to the bundle's callback with the bundle's own token, and
//!   exits;
//! - `204` when no run is there yet (the operator held the request up to [`POLL_HOLD_MS`]): ask
//!   again at once;
//! - `410` when the member is retired (its pool shrank or was deleted, or its claim was
//!   withdrawn): exit without running anything;
//! - `401` for a token that is not the member's; `404` for a member the operator does not
//!   know; other answers are transient: ask again with backoff.
//!
//! A bundle is delivered once: a member that asks again after its bundle went out gets `410`.

use crate::bundle::Callback;

/// Path of a member's standby endpoint, below the callback's base URL.
pub const STANDBY_PATH: &str = "/v1/standby";
/// The runner flag naming the standby file (instead of `--bundle`).
pub const STANDBY_FLAG: &str = "--standby";
/// File name of the standby file in a member's Secret and directory.
pub const STANDBY_FILE: &str = "standby.json";
/// How long the operator holds one standby request before answering `204` (below the
/// callback's 15 s limit on a connection that sends nothing).
pub const POLL_HOLD_MS: u64 = 10_000;

/// How long a member, once it has its bundle, tries again a connection the network refused:
/// the node may take a moment to enforce the Execution's egress policy (written before the
/// bundle was handed over) on a Pod that already runs.
pub const EGRESS_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The standby file: where the member asks (`url`, its standby endpoint), with which token,
/// trusting which CA for it (the same shape and rules as a bundle's callback; `deadlineUnixMs`
/// is unused).
pub type Standby = Callback;

/// The standby endpoint of member `member` of a pool in `namespace` under `base_url`.
pub fn standby_url(base_url: &str, namespace: &str, member: &str) -> String {
    format!(
        "{}{STANDBY_PATH}/{namespace}/{member}",
        base_url.trim_end_matches('/')
    )
}

/// What a standby request's answer tells the member to do (from its HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyAnswer {
    /// `200`: the body is the run bundle.
    Bundle,
    /// `204`: nothing yet; ask again now.
    Wait,
    /// `410`: retired; exit without running.
    Retired,
    /// `401`/`403`/`404`: this member is not known with this token; exit (a member cannot fix
    /// that by asking again).
    Refused,
    /// Anything else: ask again after a pause.
    Transient,
}

impl StandbyAnswer {
    /// The meaning of HTTP status `status`.
    pub fn of(status: u16) -> Self {
        match status {
            200 => Self::Bundle,
            204 => Self::Wait,
            410 => Self::Retired,
            401 | 403 | 404 => Self::Refused,
            _ => Self::Transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standby_url_is_below_the_callback_base() {
        assert_eq!(
            standby_url("https://op.oauth3-system.svc:8443/", "team", "pool-a-x7k2p"),
            "https://op.oauth3-system.svc:8443/v1/standby/team/pool-a-x7k2p"
        );
    }

    #[test]
    fn answers_map_to_what_the_member_does() {
        assert_eq!(StandbyAnswer::of(200), StandbyAnswer::Bundle);
        assert_eq!(StandbyAnswer::of(204), StandbyAnswer::Wait);
        assert_eq!(StandbyAnswer::of(410), StandbyAnswer::Retired);
        for refused in [401, 403, 404] {
            assert_eq!(StandbyAnswer::of(refused), StandbyAnswer::Refused);
        }
        for transient in [500, 502, 503, 429, 408, 409] {
            assert_eq!(StandbyAnswer::of(transient), StandbyAnswer::Transient);
        }
    }
}
