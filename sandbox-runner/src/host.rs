//! The boundary between the JavaScript sandbox and the enforcement path.
//!
//! The sandbox (`sandbox` module) knows nothing about HTTP, policy or secrets (it holds only
//! the run's redactor, to scrub console output as it is captured): each capability function
//! it exposes to JavaScript forwards its arguments to a [`CapabilityHost`]. The scoped
//! fetch (`fetch` module) implements the host: it decides every call against the compiled
//! policy, injects credentials and sends the request. Keeping this seam narrow means the
//! sandbox cannot reach the network or a secret by any path other than this trait.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use oauth3_crds::CallRecord;
use serde::{Deserialize, Serialize};

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

    /// oauth2 credentials refreshed during the run, re-sealed to the enclave key.
    fn sealed_updates(&self) -> Vec<oauth3_protocol::oauth2::SealedUpdate> {
        Vec::new()
    }

    /// Whether the sandbox gets a global `fetch` (the Permit has a fetch-form capability).
    fn has_fetch(&self) -> bool {
        false
    }

    /// One `fetch()` from JavaScript, normalised by the sandbox's shim to a [`FetchRequest`]
    /// (as JSON). `Value` resolves with a [`FetchResponse`] (as JSON); `Error` rejects the
    /// promise with a `TypeError` carrying the text (a denial names the rule).
    fn fetch(&self, request: serde_json::Value) -> BoxFuture<'_, CallOutcome> {
        let _ = request;
        Box::pin(async {
            CallOutcome::Error(
                "fetch is not available: the Permit has no fetch capability".to_owned(),
            )
        })
    }

    /// What `Deno.env.get(name)` and `process.env[name]` give the code: the run's string
    /// args and an opaque placeholder for each secret a fetch capability binds.
    fn environment(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

/// A `fetch()` call as the sandbox's shim hands it to the host (camelCase JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchRequest {
    /// The URL as the code gave it (a string, or a `URL`/`Request`'s `href`): absolute.
    pub url: String,
    /// The method as given (the shim upper-cases the standard ones, as fetch does).
    pub method: String,
    /// Header name/value pairs in order; names lower-cased by `Headers`.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    #[serde(default)]
    pub body: Option<FetchBody>,
    /// `follow` (default), `manual` (a 3xx comes back as the response) or `error`.
    #[serde(default)]
    pub redirect: RedirectMode,
}

/// A request body: text (strings, `URLSearchParams`, JSON) or bytes (typed arrays,
/// `ArrayBuffer`) as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum FetchBody {
    /// A string body (sent as its UTF-8 bytes).
    Text(String),
    /// Bytes, base64 (standard alphabet, padded).
    Base64(String),
}

/// `init.redirect` of `fetch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    /// Follow redirects the policy allows (each hop is checked again).
    #[default]
    Follow,
    /// Hand a 3xx response to the code as it is.
    Manual,
    /// Reject on a redirect.
    Error,
}

/// What a `fetch()` resolves with, before the shim wraps it in a `Response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchResponse {
    /// The HTTP status.
    pub status: u16,
    /// The reason phrase (`OK`, `Not Found`), empty when unknown.
    pub status_text: String,
    /// The final URL (after redirects).
    pub url: String,
    /// Whether a redirect was followed.
    pub redirected: bool,
    /// Response headers, names lower-cased, in order (redacted).
    pub headers: Vec<(String, String)>,
    /// The body bytes, base64 (redacted of secrets before encoding).
    pub body_base64: String,
}
