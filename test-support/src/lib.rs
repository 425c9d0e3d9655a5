//! Test support shared by every oauth3 test crate (the runner's, the operator's and the
//! cross-crate `tests/`): [`fixtures`] (Permit and Execution builders), [`upstream`] (a real HTTPS upstream on loopback that records what it
//! received), [`free_port`] and [`wait_until`] (the one polling waiter).

#![allow(clippy::unwrap_used)]

pub mod fixtures;
pub mod upstream;

use std::future::Future;
use std::time::{Duration, Instant};

pub use fixtures::{ExecutionFixture, PermitFixture};
pub use upstream::{Recorded, Upstream};

/// A loopback TCP port that was free a moment ago (for a child process to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `probe` every 100 ms until it yields `Some`, for at most `limit`; panics naming
/// `what` (and the last thing `probe` saw, through `seen`) when it never does.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not reached within {limit:?}"
        );
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
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "never: not reached within")]
    async fn wait_until_names_what_never_happened() {
        wait_until("never", Duration::from_millis(150), || async { None::<()> }).await;
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
