//! The real backends behind [`RunnerDeps`]: a key provider opens the Permit's sealed secrets,
//! [`ScopedFetch`] enforces the compiled policy on every call, and [`Redactor`] scrubs every
//! secret (in all its encodings) from what leaves the runner.

use std::sync::Arc;

use crate::bundle::Bundle;
use crate::fetch::{FetchConfig, ScopedFetch};
use crate::host::{BoxFuture, CapabilityHost};
use crate::policy::Policy;
use crate::redact::Redactor;
use crate::runner::{RunnerDeps, Secrets, Unsealer};
use crate::secrets::{KeyProvider, SealedSecret, unseal_permitted};

/// Opens sealed secrets with a [`KeyProvider`], and only those the Permit names.
pub struct ProviderUnsealer {
    provider: Box<dyn KeyProvider>,
}

impl ProviderUnsealer {
    /// Wraps a key provider.
    pub fn new(provider: Box<dyn KeyProvider>) -> Self {
        Self { provider }
    }
}

impl Unsealer for ProviderUnsealer {
    fn unseal<'a>(&'a self, bundle: &'a Bundle) -> BoxFuture<'a, Result<Secrets, String>> {
        Box::pin(async move {
            let sealed: Vec<SealedSecret> = bundle
                .sealed_secrets
                .iter()
                .map(|s| SealedSecret {
                    name: s.name.clone(),
                    envelope: s.envelope.clone(),
                })
                .collect();
            unseal_permitted(
                self.provider.as_ref(),
                &bundle.execution.namespace,
                &bundle.permit.spec.secrets,
                &sealed,
            )
            .await
            .map_err(|e| {
                format!(
                    "unsealing secrets with the {} key provider: {e}",
                    self.provider.name()
                )
            })
        })
    }
}

/// Settings of the enforcing backend that come from the command line, not the bundle.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Extra PEM roots trusted for upstream TLS (development and tests).
    pub extra_root_certs_pem: Vec<Vec<u8>>,
}

/// Runner dependencies that enforce: `provider` unseals, [`ScopedFetch`] decides and sends,
/// [`Redactor`] scrubs outputs.
pub fn enforcing(provider: Box<dyn KeyProvider>, options: BackendOptions) -> RunnerDeps {
    RunnerDeps {
        unsealer: Box::new(ProviderUnsealer::new(provider)),
        make_host: Box::new(move |bundle, secrets| {
            let policy = Policy::compile(&bundle.permit.spec)
                .map_err(|e| format!("compiling the Permit's policy: {e}"))?;
            let config = FetchConfig {
                extra_root_certs_pem: options.extra_root_certs_pem.clone(),
                max_calls: usize::try_from(bundle.limits.max_calls).unwrap_or(usize::MAX),
                rate_budget: bundle.rate_budget.clone(),
                ..FetchConfig::default()
            };
            let fetch = ScopedFetch::new(policy, secrets.clone(), config)
                .map_err(|e| format!("building the scoped fetch: {e}"))?;
            Ok(Arc::new(fetch) as Arc<dyn CapabilityHost>)
        }),
        redact: Box::new(|secrets, text| {
            Redactor::new(secrets.values().map(|s| s.as_str())).redact(text)
        }),
    }
}
