//! The gateway's flags (each also an `OAUTH3_GATEWAY_*` environment variable), with the
//! operator's duration grammar (`500ms`, `50s`, `10m`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use oauth3_operator::config::parse_duration;

/// The longest long-poll hold allowed: clients' own timeouts and proxies in front must not cut
/// a held answer.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(120);

/// `oauth3-gateway`: the HTTP API agents speak, translated to Permits and Executions.
#[derive(Debug, Clone, Parser)]
#[command(name = "oauth3-gateway", version, about, long_about = None)]
pub struct Config {
    /// Address to serve the API and the approval page on.
    #[arg(long, env = "OAUTH3_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// The gateway's public base URL (e.g. `https://oauth3.example.com`), used in
    /// `approval_url` and `status_url`. Without it those URLs are left out of answers.
    #[arg(long, env = "OAUTH3_GATEWAY_PUBLIC_URL", value_parser = public_url)]
    pub public_url: Option<String>,

    /// Longest time `GET /execute/:id/status?wait=true` holds an answer that has not changed
    /// (under 120s; final answers are never held).
    #[arg(
        long,
        env = "OAUTH3_GATEWAY_LONG_POLL",
        default_value = "50s",
        value_parser = long_poll
    )]
    pub long_poll: Duration,

    /// How long the API server's answers about a token (TokenReview, SubjectAccessReview) are
    /// reused. `0s` asks every time.
    #[arg(
        long,
        env = "OAUTH3_GATEWAY_AUTH_CACHE_TTL",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub auth_cache_ttl: Duration,

    /// `timeoutSeconds` of the Executions the gateway creates.
    #[arg(long, env = "OAUTH3_GATEWAY_EXECUTION_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(i32).range(1..=3600))]
    pub execution_timeout: i32,

    /// Largest request body accepted, in bytes (Execution code is at most 256 KiB).
    #[arg(
        long,
        env = "OAUTH3_GATEWAY_MAX_BODY_BYTES",
        default_value_t = 1_048_576
    )]
    pub max_body_bytes: usize,

    /// The enclave's X25519 public key (64 hex characters) that `POST /secrets` seals values
    /// to. Without it, `POST /secrets` answers 503 and owners seal with `kubectl oauth3 seal`.
    #[arg(long, env = "OAUTH3_GATEWAY_ENCLAVE_PUBLIC_KEY")]
    pub enclave_public_key: Option<String>,

    /// Turns on self-service `POST /signup`: each signup gets a new namespace named this prefix
    /// plus 8 random hex characters, with a ServiceAccount bound to `oauth3-agent`, and a
    /// token for it. Off when unset. Signup can never create an owner.
    #[arg(long, env = "OAUTH3_GATEWAY_SIGNUP_NAMESPACE_PREFIX", value_parser = namespace_prefix)]
    pub signup_namespace_prefix: Option<String>,

    /// Lifetime of the tokens `POST /signup` returns (at least 10m, the API server's minimum).
    #[arg(
        long,
        env = "OAUTH3_GATEWAY_SIGNUP_TOKEN_LIFETIME",
        default_value = "24h",
        value_parser = token_lifetime
    )]
    pub signup_token_lifetime: Duration,

    /// An authorization server whose tokens `/mcp` accepts, named in its OAuth
    /// protected-resource metadata (`/.well-known/oauth-protected-resource/mcp`) for MCP
    /// clients to sign in with: the issuer of the cluster's OIDC sign-in, for example.
    /// Repeatable (comma-separated in the environment). Unset: the issuer of the cluster's
    /// service-account tokens, as the API server announces it.
    #[arg(long = "mcp-authorization-server", env = "OAUTH3_GATEWAY_MCP_AUTHORIZATION_SERVERS",
          value_delimiter = ',', value_parser = public_url)]
    pub mcp_authorization_servers: Vec<String>,

    /// PEM file of the CA that signed the certificates of the credential proxies' `https`
    /// endpoints (`status.proxy.endpoint`; the operator's callback CA for Pod proxies).
    /// Trusted in addition to the system's roots. Loopback `http` endpoints need none.
    #[arg(long, env = "OAUTH3_GATEWAY_PROXY_CA_FILE")]
    pub proxy_ca_file: Option<std::path::PathBuf>,

    /// Longest time a call to an idle-stopped credential proxy waits for it to be started
    /// again (the operator restarts it when the gateway sets the wake annotation).
    #[arg(
        long,
        env = "OAUTH3_GATEWAY_PROXY_WAKE_TIMEOUT",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub proxy_wake_timeout: Duration,

    /// Log filter (`info`, `oauth3_gateway=debug`, ...).
    #[arg(long, env = "OAUTH3_GATEWAY_LOG", default_value = "info")]
    pub log: String,

    /// Drafting for `POST /draft` (a preview; the operator drafts the Permits themselves): the
    /// operator's `--draft-*` flags. Off (503) until `--draft-doc-hosts` names a host.
    #[command(flatten)]
    pub draft: oauth3_operator::config::DraftArgs,
}

fn long_poll(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value).map_err(|e| e.to_string())?;
    if d >= MAX_LONG_POLL {
        return Err(format!(
            "{value} is too long: the long-poll hold must stay under 120s"
        ));
    }
    Ok(d)
}

fn namespace_prefix(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 40
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && value.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?}: 1-40 lower-case letters, digits and -, starting with a letter (8 hex characters are appended)"
        ))
    }
}

fn token_lifetime(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(600) {
        return Err(format!("{value} is too short: tokens last at least 10m"));
    }
    Ok(d)
}

fn public_url(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|e| format!("{value:?}: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(format!("{value:?}: must be an http(s) URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{value:?}: must not have a query or fragment"));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_50s_hold_and_a_10s_cache() {
        let c = Config::try_parse_from(["oauth3-gateway"]).expect("defaults");
        assert_eq!(c.long_poll, Duration::from_secs(50));
        assert_eq!(c.auth_cache_ttl, Duration::from_secs(10));
        assert_eq!(c.public_url, None);
        assert_eq!(c.proxy_wake_timeout, Duration::from_secs(30));
        assert_eq!(c.proxy_ca_file, None);
    }

    #[test]
    fn a_hold_of_120s_or_more_is_refused() {
        let e =
            Config::try_parse_from(["oauth3-gateway", "--long-poll", "120s"]).expect_err("refused");
        assert!(e.to_string().contains("under 120s"), "{e}");
        let c = Config::try_parse_from(["oauth3-gateway", "--long-poll", "2s"]).expect("ok");
        assert_eq!(c.long_poll, Duration::from_secs(2));
    }

    #[test]
    fn signup_is_off_unless_a_namespace_prefix_is_given() {
        let c = Config::try_parse_from(["oauth3-gateway"]).expect("defaults");
        assert_eq!(c.signup_namespace_prefix, None);
        let c = Config::try_parse_from(["oauth3-gateway", "--signup-namespace-prefix", "tenant-"])
            .expect("ok");
        assert_eq!(c.signup_namespace_prefix.as_deref(), Some("tenant-"));
        for bad in ["Tenant-", "-x", "a_b", ""] {
            assert!(
                Config::try_parse_from(["oauth3-gateway", "--signup-namespace-prefix", bad])
                    .is_err(),
                "{bad}"
            );
        }
        assert!(
            Config::try_parse_from(["oauth3-gateway", "--signup-token-lifetime", "5m"]).is_err()
        );
    }

    #[test]
    fn the_public_url_is_an_origin_without_query() {
        let c = Config::try_parse_from(["oauth3-gateway", "--public-url", "https://g.example/"])
            .expect("ok");
        assert_eq!(c.public_url.as_deref(), Some("https://g.example"));
        assert!(
            Config::try_parse_from(["oauth3-gateway", "--public-url", "https://g/?x=1"]).is_err()
        );
    }
}
