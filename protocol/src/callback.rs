//! The result callback's rules: the URL a run posts its result to (and the credential endpoints
//! beside it), which URLs may carry the
//! bearer token, and how the operator checks the token (only its digest is ever stored).

use sha2::{Digest, Sha256};

/// Path of one Execution's result endpoint, below the callback's base URL.
pub const RESULTS_PATH: &str = "/v1/results";

/// Path of one run's oauth2 credential endpoints (refresh lease and immediate write-back),
/// below the callback's base URL: `{CREDENTIALS_PATH}/{namespace}/{name}/{SECRET}/{action}`.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// Path of a credential proxy's oauth2 credential endpoints, below the callback's base URL:
/// `{PROXY_CREDENTIALS_PATH}/{namespace}/{permit}/{SECRET}/{action}` (the proxy's callback
/// token as bearer).
pub const PROXY_CREDENTIALS_PATH: &str = "/v1/proxy-credentials";
/// Action: ask for a credential's refresh lease.
pub const ACTION_LEASE: &str = "lease";
/// Action: hand over a refreshed, re-sealed credential.
pub const ACTION_SEALED: &str = "sealed";

/// The credential endpoint of `secret` for the run whose result URL is `result_url` (as the
/// bundle's callback carries it), or `None` when that is not a result URL.
pub fn credential_url(result_url: &str, secret: &str, action: &str) -> Option<String> {
    let at = result_url.rfind(RESULTS_PATH)?;
    let (base, run) = result_url.split_at(at);
    let run = run.strip_prefix(RESULTS_PATH)?;
    Some(format!("{base}{CREDENTIALS_PATH}{run}/{secret}/{action}"))
}

/// The result URL of the Execution `namespace/name` under `base_url`.
pub fn result_url(base_url: &str, namespace: &str, name: &str) -> String {
    format!(
        "{}{RESULTS_PATH}/{namespace}/{name}",
        base_url.trim_end_matches('/')
    )
}

/// Whether a callback URL may carry the bearer token: https anywhere, http only on loopback.
pub fn callback_url_allowed(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => match url.host() {
            Some(url::Host::Domain(host)) => host == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// `sha256:<hex>` of a callback token: what the launch record stores instead of the token.
pub fn token_digest(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// Compares two strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether `token` is the one whose digest a launch recorded.
pub fn token_matches(token: &str, recorded_digest: &str) -> bool {
    constant_time_eq(&token_digest(token), recorded_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_must_be_https_except_on_loopback() {
        for ok in [
            "https://operator.oauth3:8443/r",
            "http://127.0.0.1:9000/r",
            "http://localhost/r",
            "http://[::1]:1/r",
        ] {
            assert!(callback_url_allowed(ok), "{ok}");
        }
        for bad in [
            "http://operator.oauth3/r",
            "http://10.0.0.1/r",
            "ftp://127.0.0.1/",
            "not a url",
        ] {
            assert!(!callback_url_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn token_digests_compare_in_constant_time_and_exactly() {
        let d = token_digest("t0k3n");
        assert!(constant_time_eq(&d, &token_digest("t0k3n")));
        assert!(!constant_time_eq(&d, &token_digest("t0k3N")));
        assert!(!constant_time_eq(&d, &d[..d.len() - 1]));
        assert!(d.starts_with("sha256:") && d.len() == 71);
        assert!(token_matches("t0k3n", &d));
        assert!(!token_matches("t0k3n ", &d));
    }

    #[test]
    fn credential_urls_sit_beside_the_result_url_of_the_same_run() {
        assert_eq!(
            credential_url(
                "https://op:8443/v1/results/ns/run-1",
                "GITHUB",
                ACTION_LEASE
            )
            .as_deref(),
            Some("https://op:8443/v1/credentials/ns/run-1/GITHUB/lease")
        );
        assert_eq!(
            credential_url("https://op:8443/other", "G", ACTION_LEASE),
            None
        );
    }

    #[test]
    fn the_result_url_names_the_execution_under_the_base() {
        assert_eq!(
            result_url("https://op:8443/", "ns", "run-1"),
            "https://op:8443/v1/results/ns/run-1"
        );
    }
}
