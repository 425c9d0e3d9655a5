//! The run bundle the operator hands the sandbox runner for one Execution (pure).

use k8s_openapi::jiff::Timestamp;
use oauth3_crds::{Execution, Permit};
use oauth3_protocol::callback::result_url;
use oauth3_protocol::{Bundle, BundleLimits, Callback, ExecutionRef, PermitRef, SealedSecretRef};
use zeroize::Zeroizing;

use crate::execution::decide::refilled_budget;

/// Where the runner reports and how it proves it is this run.
#[derive(Clone)]
pub struct CallbackTarget {
    /// Base URL of the operator's result endpoint, e.g. `http://127.0.0.1:8443`.
    pub base_url: String,
    /// PEM certificates the runner trusts for the callback only.
    pub ca_pem: Option<String>,
    /// The one-time token of this run (only its digest is stored).
    pub token: Zeroizing<String>,
    /// The Execution's deadline: the runner offers its result until then (and a little after).
    pub deadline: Timestamp,
}

impl std::fmt::Debug for CallbackTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackTarget")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Builds the bundle of `execution` under the approved `permit` at `now` (the rate budget is
/// refilled up to then). `sealed` holds the envelopes
/// (ciphertext) the runner will open; empty when the launcher projects them itself.
pub fn build_bundle(
    execution: &Execution,
    permit: &Permit,
    permit_digest: &str,
    sealed: Vec<SealedSecretRef>,
    callback: Option<&CallbackTarget>,
    now: Timestamp,
) -> Bundle {
    let namespace = execution.metadata.namespace.clone().unwrap_or_default();
    let name = execution.metadata.name.clone().unwrap_or_default();
    let rate_budget = refilled_budget(permit, now);
    Bundle {
        execution: ExecutionRef {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: execution.metadata.uid.clone().unwrap_or_default(),
        },
        permit: PermitRef {
            name: permit.metadata.name.clone().unwrap_or_default(),
            spec: permit.effective_spec().into_owned(),
            spec_digest: permit_digest.to_owned(),
        },
        code: execution.spec.code.clone(),
        language: execution.spec.language,
        args: execution
            .spec
            .args
            .clone()
            .unwrap_or(serde_json::Value::Null),
        sealed_secrets: sealed,
        limits: BundleLimits {
            timeout_seconds: u64::try_from(execution.spec.timeout_seconds).unwrap_or(30),
            ..BundleLimits::default()
        },
        rate_budget,
        callback: callback.map(|c| Callback {
            url: result_url(&c.base_url, &namespace, &name),
            token: c.token.clone(),
            ca_pem: c.ca_pem.clone(),
            deadline_unix_ms: u64::try_from(c.deadline.as_millisecond()).ok(),
        }),
    }
}
