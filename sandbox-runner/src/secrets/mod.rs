//! Sealed secrets: the envelope format, the key providers that yield the enclave key, and
//! unsealing exactly the secrets a Permit names.
//!
//! Nothing in this module ever puts a secret value or key material into an error, a `Debug`
//! rendering or a log line: errors name the step that failed and the (non-secret) Secret,
//! provider or endpoint involved.

pub mod provider;

use std::collections::BTreeMap;

use zeroize::Zeroizing;

pub use oauth3_protocol::envelope::{EnvelopeError, key_id, seal, unseal};
pub use provider::{DevKey, DevProvider, DstackProvider, KbsProvider, KeyProvider};

/// Why sealing, opening or fetching the enclave key failed. Never carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Sealing or opening an envelope failed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A permitted secret has no sealed envelope.
    #[error("unsealing permitted secrets: no sealed envelope for permitted secret {name:?}")]
    MissingSecret {
        /// The Secret name the Permit names.
        name: String,
    },
    /// More than one envelope was supplied for a permitted secret.
    #[error("unsealing permitted secrets: more than one sealed envelope for secret {name:?}")]
    DuplicateSecret {
        /// The Secret name.
        name: String,
    },
    /// Opening one permitted secret failed.
    #[error("unsealing secret {name:?}: {source}")]
    UnsealSecret {
        /// The Secret name.
        name: String,
        /// Why it failed.
        source: EnvelopeError,
    },
    /// The key provider's endpoint is not usable.
    #[error("key provider {provider}: endpoint {endpoint:?} is invalid: {reason}")]
    ProviderEndpoint {
        /// The provider (`dstack`, `kbs`, `dev`).
        provider: &'static str,
        /// The configured endpoint.
        endpoint: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// Connecting to the key provider failed.
    #[error("key provider {provider}: connecting to {endpoint} failed: {source}")]
    ProviderConnect {
        /// The provider.
        provider: &'static str,
        /// The endpoint connected to.
        endpoint: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Sending the request or reading the response failed.
    #[error("key provider {provider}: {step} failed: {source}")]
    ProviderExchange {
        /// The provider.
        provider: &'static str,
        /// `sending the request` or `reading the response`.
        step: &'static str,
        /// The IO error.
        source: std::io::Error,
    },
    /// The key provider did not answer in time.
    #[error("key provider {provider}: no answer within {seconds}s")]
    ProviderTimeout {
        /// The provider.
        provider: &'static str,
        /// The time limit.
        seconds: u64,
    },
    /// The key provider answered with an error status.
    #[error("key provider {provider}: {step} answered HTTP {status}: {message}")]
    ProviderStatus {
        /// The provider.
        provider: &'static str,
        /// The request made (e.g. `GetKey`).
        step: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's error message (never key material: only error bodies are shown).
        message: String,
    },
    /// The key provider's response could not be understood.
    #[error("key provider {provider}: reading the response: {reason}")]
    ProviderResponse {
        /// The provider.
        provider: &'static str,
        /// What is wrong with it (never its content).
        reason: &'static str,
    },
    /// The key material is not a usable 32-byte key.
    #[error("key provider {provider}: the key material is unusable: {reason}")]
    KeyMaterial {
        /// The provider.
        provider: &'static str,
        /// What is wrong with it (never its content).
        reason: &'static str,
    },
    /// The development key provider was requested without the explicit insecure flag.
    #[error(
        "key provider dev: a software key gives no confidentiality; refusing it unless the runner is started with --insecure-dev-key"
    )]
    DevKeyRefused,
    /// Reading the development key file failed.
    #[error("key provider dev: reading key file {path:?} failed: {source}")]
    DevKeyRead {
        /// The key file.
        path: std::path::PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

impl SecretsError {
    /// The error of a failed exchange with `provider`'s local endpoint.
    pub(crate) fn exchange(provider: &'static str, e: crate::local_http::LocalHttpError) -> Self {
        use crate::local_http::LocalHttpError as E;
        match e {
            E::Connect { endpoint, source } => Self::ProviderConnect {
                provider,
                endpoint,
                source,
            },
            E::Exchange { step, source } => Self::ProviderExchange {
                provider,
                step,
                source,
            },
            E::Timeout { seconds } => Self::ProviderTimeout { provider, seconds },
            E::Response(reason) => Self::ProviderResponse { provider, reason },
        }
    }
}

/// One sealed Secret as projected into the runner: its name and its envelope string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// The Secret name, as named in the Permit's `secrets`.
    pub name: String,
    /// The envelope (`oauth3-sealed:v1:...`); ciphertext only, safe to print.
    pub envelope: String,
}

/// Unseals the secrets named in `permitted`, and only those.
///
/// Envelopes for other names are ignored and never opened. A permitted name without an
/// envelope, with more than one, or whose envelope is bound to another namespace or name fails
/// the whole call (fail closed). The provider is asked for the key only when something is
/// permitted.
pub async fn unseal_permitted(
    provider: &dyn KeyProvider,
    namespace: &str,
    permitted: &[String],
    sealed: &[SealedSecret],
) -> Result<BTreeMap<String, Zeroizing<String>>, SecretsError> {
    let mut chosen: BTreeMap<&str, &SealedSecret> = BTreeMap::new();
    for name in permitted {
        let mut matching = sealed.iter().filter(|s| &s.name == name);
        let first = matching
            .next()
            .ok_or_else(|| SecretsError::MissingSecret { name: name.clone() })?;
        if matching.next().is_some() {
            return Err(SecretsError::DuplicateSecret { name: name.clone() });
        }
        chosen.insert(name, first);
    }
    let mut opened = BTreeMap::new();
    if chosen.is_empty() {
        return Ok(opened);
    }
    let key = provider.secret_key().await?;
    for (name, secret) in chosen {
        let value = unseal(&key, &secret.envelope, namespace, name).map_err(|source| {
            SecretsError::UnsealSecret {
                name: name.to_owned(),
                source,
            }
        })?;
        opened.insert(name.to_owned(), value);
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crypto_box::SecretKey;

    use super::*;
    use crate::host::BoxFuture;

    /// A provider with a fixed key that counts how often it is asked.
    struct FixedProvider {
        key: [u8; 32],
        asked: AtomicUsize,
    }

    impl FixedProvider {
        fn new(byte: u8) -> Self {
            Self {
                key: [byte; 32],
                asked: AtomicUsize::new(0),
            }
        }

        fn public(&self) -> [u8; 32] {
            *SecretKey::from(self.key).public_key().as_bytes()
        }
    }

    impl KeyProvider for FixedProvider {
        fn name(&self) -> &'static str {
            "fixed"
        }

        fn secret_key(&self) -> BoxFuture<'_, Result<SecretKey, SecretsError>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let key = SecretKey::from(self.key);
            Box::pin(async move { Ok(key) })
        }
    }

    fn sealed(provider: &FixedProvider, ns: &str, name: &str, value: &str) -> SealedSecret {
        SealedSecret {
            name: name.to_owned(),
            envelope: seal(&provider.public(), ns, name, value).expect("seals"),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn only_permitted_secrets_are_unsealed_and_others_are_never_opened() {
        let provider = FixedProvider::new(11);
        let secrets = vec![
            sealed(&provider, "ns", "GITHUB_TOKEN", "ghp-value"),
            SealedSecret {
                name: "NOT_PERMITTED".to_owned(),
                envelope: "garbage that would fail to open".to_owned(),
            },
        ];
        let opened = unseal_permitted(&provider, "ns", &names(&["GITHUB_TOKEN"]), &secrets)
            .await
            .expect("permitted secret opens; the garbage one is never touched");
        assert_eq!(opened.len(), 1);
        assert_eq!(opened["GITHUB_TOKEN"].as_str(), "ghp-value");
        assert!(!opened.contains_key("NOT_PERMITTED"));
    }

    #[tokio::test]
    async fn permitted_secret_without_envelope_is_an_error_naming_it() {
        let provider = FixedProvider::new(12);
        let secrets = vec![sealed(&provider, "ns", "A", "value-a")];
        let err = unseal_permitted(&provider, "ns", &names(&["A", "MISSING_ONE"]), &secrets)
            .await
            .expect_err("missing secret fails closed");
        assert!(err.to_string().contains("MISSING_ONE"), "{err}");
        assert_eq!(
            provider.asked.load(Ordering::SeqCst),
            0,
            "the key is not fetched when the inputs are already wrong"
        );
    }

    #[tokio::test]
    async fn envelope_moved_to_another_name_is_refused() {
        let provider = FixedProvider::new(13);
        let mut moved = sealed(&provider, "ns", "ORIGINAL", "moved-value");
        moved.name = "TARGET".to_owned();
        let err = unseal_permitted(&provider, "ns", &names(&["TARGET"]), &[moved])
            .await
            .expect_err("moved envelope refused");
        assert!(err.to_string().contains("TARGET"));
        assert!(!err.to_string().contains("moved-value"));
        assert!(!format!("{err:?}").contains("moved-value"));
    }

    #[tokio::test]
    async fn envelope_from_another_namespace_is_refused() {
        let provider = FixedProvider::new(14);
        let secrets = vec![sealed(&provider, "other-ns", "TOKEN", "ns-value")];
        let err = unseal_permitted(&provider, "ns", &names(&["TOKEN"]), &secrets)
            .await
            .expect_err("other namespace refused");
        assert!(matches!(err, SecretsError::UnsealSecret { .. }));
        assert!(err.to_string().contains("other-ns"));
    }

    #[tokio::test]
    async fn nothing_permitted_means_the_key_is_never_fetched() {
        let provider = FixedProvider::new(15);
        let secrets = vec![sealed(&provider, "ns", "A", "value-a")];
        let opened = unseal_permitted(&provider, "ns", &[], &secrets)
            .await
            .expect("nothing to do");
        assert!(opened.is_empty());
        assert_eq!(provider.asked.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn two_envelopes_for_one_permitted_name_fail_closed() {
        let provider = FixedProvider::new(16);
        let secrets = vec![
            sealed(&provider, "ns", "A", "value-1"),
            sealed(&provider, "ns", "A", "value-2"),
        ];
        let err = unseal_permitted(&provider, "ns", &names(&["A"]), &secrets)
            .await
            .expect_err("ambiguous");
        assert!(matches!(err, SecretsError::DuplicateSecret { .. }));
    }
}
