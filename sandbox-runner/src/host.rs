//! The boundary between the JavaScript sandbox and the enforcement path.
//!
//! The sandbox (`sandbox` module) knows nothing about HTTP, policy or secrets (it holds only
//! the run's redactor, to scrub console output as it is captured): each capability function
//! it exposes to JavaScript forwards its arguments to a [`CapabilityHost`]. The scoped
//! fetch (`fetch` module) implements the host: it decides every call against the compiled
//! policy, injects credentials and sends the request. Keeping this seam narrow means the
//! sandbox cannot reach the network or a secret by any path other than this trait.

use std::future::Future;
use std::pin::Pin;

use oauth3_crds::CallRecord;

/// One call from JavaScript: `github('GET', '/x', {query})` arrives as capability `github` with
/// `args = ["GET", "/x", {"query": ...}]` (JSON values, exactly as the script passed them).
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityCall {
    /// The capability (function) name.
    pub capability: String,
    /// The arguments, converted from JavaScript values to JSON.
    pub args: Vec<serde_json::Value>,
}

/// What a call resolves to in JavaScript.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutcome {
    /// The promise resolves with this value (JSON body as a value, text as a string, binary
    /// as `{contentType, base64}`); see the fetch module for the exact shape.
    Value(serde_json::Value),
    /// The promise rejects with an `Error` whose message is this text (e.g. the policy's
    /// reason for a denial). Never contains a secret (the scoped fetch redacts it).
    Error(String),
}

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Handles capability calls for the sandbox.
pub trait CapabilityHost: Send + Sync {
    /// The capability names to expose as global async functions, in a stable order.
    fn capabilities(&self) -> Vec<String>;

    /// Performs one call. Implementations record it (see [`CapabilityHost::calls`]).
    fn call(&self, call: CapabilityCall) -> BoxFuture<'_, CallOutcome>;

    /// Every call attempted so far, allowed or denied, in order.
    fn calls(&self) -> Vec<CallRecord>;
}
