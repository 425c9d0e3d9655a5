//! The oauth3 run contract: what the operator hands a sandbox runner and what the runner hands
//! back, shared by the operator, the runner, the kubectl plugin and the gateway.
//!
//! Modules: [`attestation`] (the report data a quote binds), [`bundle`] (the run bundle and its validation), [`result`] (the run result and its
//! statement digest), [`callback`] (where results are posted, which URLs may carry the token,
//! and how the token is checked), [`envelope`] (sealing a secret to the enclave key and opening
//! it), [`oauth2`] (the oauth2 token-set credential, its token endpoint rule and the
//! re-sealed updates a run hands back), [`proxy`] (the credential proxy's URL layout, refusals,
//! token reviews and call-record batches), [`rate`] (the token bucket both sides count with), [`runner_args`] (the runner's
//! command line as launchers write it), [`standby`] (how a pool member waits for its run). No JavaScript engine and no HTTP client here.

pub mod attestation;
pub mod bundle;
pub mod callback;
pub mod cookies;
pub mod envelope;
pub mod oauth2;
pub mod proxy;
pub mod rate;
pub mod result;
pub mod runner_args;
pub mod standby;

pub use bundle::{
    Bundle, BundleError, BundleLimits, Callback, ExecutionRef, PermitRef, SealedSecretRef,
};
pub use result::RunResult;
