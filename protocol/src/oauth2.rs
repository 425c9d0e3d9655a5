//! The `oauth2` sealed credential: the token set an owner signs in for once (`kubectl oauth3
//! login`) and the runner refreshes inside the TEE, and the rules its token endpoint obeys.
//!
//! The token set is the `value` of an ordinary sealed envelope (see [`crate::envelope`]): a
//! JSON object whose `type` is `oauth2`. The token endpoint is part of what the owner sealed;
//! nothing the agent or the Permit says can change where a refresh goes.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The `type` of an oauth2 token set.
pub const OAUTH2_TYPE: &str = "oauth2";
/// Annotation on a sealed Secret holding an oauth2 credential: its kind (`oauth2`).
pub const ANNOTATION_CREDENTIAL_KIND: &str = "oauth3.dev/credential-kind";
/// Annotation: when the sealed access token expires (RFC 3339; informational, not secret).
pub const ANNOTATION_EXPIRES_AT: &str = "oauth3.dev/oauth2-expires-at";
/// Annotation: who last wrote the token set (`login` or `tee`).
pub const ANNOTATION_REFRESHED_BY: &str = "oauth3.dev/oauth2-refreshed-by";
/// Annotation: the refresh token's generation, counted up by every write back.
pub const ANNOTATION_GENERATION: &str = "oauth3.dev/oauth2-generation";
/// Largest sealed token set accepted, in bytes of JSON.
pub const MAX_TOKEN_SET_BYTES: usize = 16 * 1024;

/// An OAuth 2.0 token set and where to refresh it. No `Debug`: it holds the tokens.
#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TokenSet {
    /// Always [`OAUTH2_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The current access token.
    pub access_token: Zeroizing<String>,
    /// The refresh token, if the provider issued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Zeroizing<String>>,
    /// When the access token expires, in Unix seconds (absent: unknown, never refreshed
    /// for age alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The token endpoint refreshes are sent to (https, or http on a loopback host).
    pub token_endpoint: String,
    /// The OAuth client id.
    pub client_id: String,
    /// The client secret, for providers that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Zeroizing<String>>,
    /// The scopes granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The issuer (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// Why a token set or its endpoint is unusable. Never holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenSetError {
    /// The value is not a token set.
    #[error("the oauth2 token set is malformed: {0}")]
    Malformed(String),
    /// The token endpoint breaks a rule.
    #[error("token_endpoint {url:?} is refused: {rule}")]
    Endpoint {
        /// The endpoint.
        url: String,
        /// The rule it breaks.
        rule: &'static str,
    },
}

impl TokenSet {
    /// Whether a sealed value is an oauth2 token set (a JSON object whose `type` is `oauth2`),
    /// without parsing it fully.
    pub fn looks_like(value: &str) -> bool {
        let t = value.trim_start();
        t.starts_with('{') && t.contains("\"type\"") && t.contains("\"oauth2\"")
    }

    /// Parses and checks a sealed value: the fields, the type and the token endpoint.
    ///
    /// # Errors
    /// [`TokenSetError`] naming the field and the rule.
    pub fn parse(value: &str) -> Result<Self, TokenSetError> {
        if value.len() > MAX_TOKEN_SET_BYTES {
            return Err(TokenSetError::Malformed(format!(
                "it is larger than {MAX_TOKEN_SET_BYTES} bytes"
            )));
        }
        let set: Self = serde_json::from_str(value).map_err(|e| {
            // serde's message names the field; it quotes no value for these types.
            TokenSetError::Malformed(format!("line {} column {}: {}", e.line(), e.column(), {
                let m = e.to_string();
                m.split(" at line").next().unwrap_or_default().to_owned()
            }))
        })?;
        if set.kind != OAUTH2_TYPE {
            return Err(TokenSetError::Malformed("type must be \"oauth2\"".into()));
        }
        if set.access_token.is_empty() {
            return Err(TokenSetError::Malformed(
                "access_token must not be empty".into(),
            ));
        }
        if set.client_id.is_empty() {
            return Err(TokenSetError::Malformed(
                "client_id must not be empty".into(),
            ));
        }
        check_token_endpoint(&set.token_endpoint)?;
        Ok(set)
    }

    /// The token set as the JSON text that is sealed.
    pub fn to_json(&self) -> Zeroizing<String> {
        Zeroizing::new(serde_json::to_string(self).unwrap_or_default())
    }

    /// Whether the access token is expired or expires within `lead_seconds` of `now`.
    pub fn is_due(&self, now: i64, lead_seconds: i64) -> bool {
        self.expires_at
            .is_some_and(|at| at <= now.saturating_add(lead_seconds))
    }

    /// The secret strings of the set (access token, refresh token, client secret), for
    /// redaction.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.access_token.as_str())
            .chain(self.refresh_token.as_deref().map(String::as_str))
            .chain(self.client_secret.as_deref().map(String::as_str))
    }
}

/// A token endpoint's answer, success or error (RFC 6749 §5.1 / §5.2; the device grant's
/// polls, RFC 8628 §3.5, answer the same way). No `Debug`: it holds tokens.
#[derive(Deserialize)]
pub struct TokenAnswer {
    /// The access token (success).
    pub access_token: Option<Zeroizing<String>>,
    /// The refresh token (success, when the server issues one).
    pub refresh_token: Option<Zeroizing<String>>,
    /// Seconds the access token lives.
    pub expires_in: Option<i64>,
    /// The scopes granted.
    pub scope: Option<String>,
    /// The error code (error).
    pub error: Option<String>,
    /// The server's words about the error.
    pub error_description: Option<String>,
}

/// The token endpoint rule: an absolute `https://` URL with a host, no user info and no
/// fragment; `http://` only for a loopback host (development, like a capability's `baseUrl`).
///
/// # Errors
/// [`TokenSetError::Endpoint`] naming the rule.
pub fn check_token_endpoint(url: &str) -> Result<url::Url, TokenSetError> {
    let bad = |rule| TokenSetError::Endpoint {
        url: url.to_owned(),
        rule,
    };
    let parsed = url::Url::parse(url).map_err(|_| bad("it is not an absolute URL"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("it must not carry user info"));
    }
    if parsed.fragment().is_some() {
        return Err(bad("it must not have a fragment"));
    }
    let loopback = match parsed.host() {
        Some(url::Host::Domain(h)) => h == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(bad("it has no host")),
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        "http" => Err(bad(
            "it must be https (plain http only to a loopback host, for development)",
        )),
        _ => Err(bad("it must be https")),
    }
}

/// Whether a token endpoint's host is loopback (development: its DNS answers may be loopback).
pub fn is_loopback_endpoint(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(h)) => h == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// One re-sealed credential in a run's result (and posted as soon as it was refreshed): the
/// new envelope, sealed by the runner to its own enclave key, and the non-secret facts the
/// operator records beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedUpdate {
    /// The secret's name as the Permit lists it.
    pub name: String,
    /// The new envelope (ciphertext only).
    pub envelope: String,
    /// When the new access token expires (Unix seconds), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// `sha256:<hex>` of the envelope the refresh started from: the operator writes the update
    /// only over that envelope, so an older token set never replaces a newer one.
    pub replaces: String,
}

/// A run's request for a credential's refresh lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRequest {
    /// `sha256:<hex>` of the envelope the run holds.
    pub held: String,
}

/// The operator's answer to a [`LeaseRequest`]: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LeaseResponse {
    /// This run holds the lease until `untilUnixMs`: refresh and hand the result over.
    Granted {
        /// When the lease lapses.
        until_unix_ms: i64,
    },
    /// The Secret holds a newer envelope than the run's (another run refreshed): use it.
    Newer {
        /// The newest envelope (ciphertext).
        envelope: String,
    },
    /// Another run holds the lease: ask again after this many milliseconds.
    Wait {
        /// Milliseconds to wait.
        retry_after_ms: u64,
    },
}

/// `sha256:<hex>` of an envelope string (what [`SealedUpdate::replaces`] names).
pub fn envelope_digest(envelope: &str) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(envelope.trim().as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(endpoint: &str) -> String {
        serde_json::json!({"type": "oauth2", "access_token": "at-1234", "refresh_token": "rt-5678",
            "expires_at": 100, "token_endpoint": endpoint, "client_id": "cli"})
        .to_string()
    }

    #[test]
    fn token_endpoints_must_be_https_except_on_loopback() {
        for ok in [
            "https://oauth2.example/token",
            "http://127.0.0.1:9/token",
            "http://localhost/t",
            "http://[::1]:8/t",
        ] {
            assert!(TokenSet::parse(&set(ok)).is_ok(), "{ok}");
        }
        for (bad, rule) in [
            ("http://10.0.0.1/token", "must be https"),
            ("http://oauth2.example/token", "must be https"),
            ("ftp://127.0.0.1/", "must be https"),
            ("https://u:p@oauth2.example/", "user info"),
            ("/token", "absolute"),
        ] {
            let e = TokenSet::parse(&set(bad))
                .err()
                .expect("refused")
                .to_string();
            assert!(
                e.contains("token_endpoint") && e.contains(rule),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn malformed_sets_name_the_field_and_never_a_token() {
        let e =
            TokenSet::parse(r#"{"type":"oauth2","access_token":"secret-at-99","client_id":"c"}"#)
                .err()
                .expect("no endpoint")
                .to_string();
        assert!(e.contains("token_endpoint"), "{e}");
        assert!(!e.contains("secret-at-99"), "{e}");
        assert!(TokenSet::looks_like(&set("https://a.example/t")));
        assert!(!TokenSet::looks_like("ghp_plain"));
    }

    /// The oauth2 test vector published in `sandbox-runner/SEALED-SECRETS.md`.
    const VECTOR: &str = "oauth3-sealed:v1:1a92f23852dc908d:OSm4ahT-yZQ1hiUCAzuzmRc5Lt2zWeRQZGk5TmHn9HBvlkX7k2FSwKm_PHQpF5X3QHhaEjj0irZL-GERZmM5jSzOaKi4OyeJAzfdALbtpYYiZrhoNVzpFOi_6AKSlFQtnnDFWbSAS6iguTC7GoxUIK9E8Sh5q3Mf3GWjeLXSQO6GMLYZh8l-bjpAHv1SZbCgeJkRZ7zJmN5vTFoY8RVPiTC_UCyj77II4hReCsSk1j4PXhirpVOgSmrJw8mK6fDZmCZIEOYWRcIx1HvB5KaL4KgV7-Y9J14_WVFiqIlCMwVKbMZe-RybvJNcv4SO3Oc0TTqlIUNBFPgBqaM904MAry4uoE-aIS01WWY2vw7W-zJ5IsHrrak4E3mEytTzrpVYXVe5wbL6FDaO-LeDq2VbZAcToQuLrkroi3Izob4t76qBrDg8rdnZzJhF8fwv_1xfP-HMK_aQe9thqRVSvuSaV9505x_WxhEOCELxRggiihOGhQR39Gt1YLlVDuSy07bey-y2YQDr9t0XRyL_jYTI5F6q5C1nwJU";

    #[test]
    fn the_published_oauth2_test_vector_opens_to_its_token_set() {
        let key = crypto_box::SecretKey::from([1u8; 32]);
        let value = crate::envelope::unseal(&key, VECTOR, "demo", "GITHUB").expect("opens");
        let set = TokenSet::parse(&value).expect("a token set");
        assert_eq!(set.access_token.as_str(), "gho_exampleAccess0123");
        assert_eq!(
            set.refresh_token.as_deref().map(String::as_str),
            Some("ghr_exampleRefresh4567")
        );
        assert_eq!(set.expires_at, Some(1_767_225_600));
        assert_eq!(
            set.token_endpoint,
            "https://github.com/login/oauth/access_token"
        );
        assert_eq!(set.client_id, "Iv1.example");
        assert_eq!(set.scopes, ["repo"]);
        assert_eq!(set.issuer.as_deref(), Some("https://github.com"));
        assert!(set.client_secret.is_none());
    }

    #[test]
    fn a_token_is_due_when_expired_or_within_the_lead() {
        let s = TokenSet::parse(&set("https://a.example/t")).expect("parses");
        assert!(s.is_due(100, 0));
        assert!(s.is_due(0, 120));
        assert!(!s.is_due(0, 99));
    }
}
