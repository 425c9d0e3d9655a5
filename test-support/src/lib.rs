//! Test support shared by every oauth3 test crate (the runner's, the operator's and the
//! cross-crate `tests/`): [`fixtures`] (Permit and Execution builders), [`upstream`] (a real HTTPS upstream on loopback that records what it
//! received), [`docs`] (a doc server and a Messages API server for the intent drafter), [`tdx`] (a real TDX sample quote with its collateral, and stand-ins of the
//! dstack, Confidential Containers and configfs-tsm quote providers), [`sse`] (an HTTPS event-stream upstream that sends events with gaps), [`pccs`] (a stand-in PCCS
//! serving that collateral), [`oidc`] (a real OpenID provider on loopback with the device grant
//! and rotating refresh tokens), [`free_port`] and
//! [`wait_until`] (the one polling waiter).

#![allow(clippy::unwrap_used)]

pub mod docs;
pub mod fixtures;
pub mod oidc;
pub mod pccs;
pub mod sse;
pub mod tdx;
pub mod upstream;

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

pub use docs::{DocServer, MessagesServer, ModelAnswer, github_openapi};
pub use fixtures::{ExecutionFixture, PermitFixture};
pub use oidc::OidcProvider;
pub use upstream::{Recorded, Upstream};

/// A loopback TCP port that was free a moment ago (for a child process to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `probe` every 100 ms until it yields `Ok`, for at most `limit`; panics naming
/// `what` and the last thing `probe` saw (its `Err`) when it never does. The one polling
/// waiter of the test suites.
pub async fn wait_until<T, D, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    D: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, D>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(seen) => assert!(
                start.elapsed() < limit,
                "{what}: not reached within {limit:?}; last seen: {seen:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_what_the_probe_found() {
        let mut calls = 0;
        let got = wait_until("the third try", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { if n == 3 { Ok(n) } else { Err(n) } }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "never: not reached within 150ms; last seen: \"still no\"")]
    async fn wait_until_names_what_never_happened_and_what_it_saw() {
        wait_until("never", Duration::from_millis(150), || async {
            Err::<(), _>("still no")
        })
        .await;
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
