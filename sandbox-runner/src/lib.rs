//! oauth3 sandbox runner: the only component that ever holds plaintext secrets.
//!
//! Modules: `attest` (quote providers: dstack, Confidential Containers, configfs-tsm),
//! `bundle` (the run bundle and its validation), `policy` (pure: compile a Permit,
//! canonicalise and decide requests), `fetch` (the [`host::CapabilityHost`] that enforces
//! policy and sends requests), `host` (the seam between sandbox and enforcement), `sandbox`
//! (QuickJS with no ambient authority), `secrets` (sealed-secret envelopes and key providers),
//! `redact` (the one redaction engine, built once per run, that scrubs secret values from
//! every output), `oauth` (oauth2 credentials refreshed inside the TEE and re-sealed), `local_http` (the small HTTP client for local providers), `run` (one run
//! end to end), `callback` (posting its result) `proxy` (`serve`: the credential proxy
//! that forwards HTTP requests as capability calls) and `standby` (a pool member's wait for its
//! run).

pub mod attest;
pub mod bundle;
pub mod callback;
pub mod fetch;
pub mod host;
pub mod local_http;
pub mod oauth;
pub mod policy;
pub mod proxy;
pub mod redact;
pub mod run;
pub mod sandbox;
pub mod secrets;
pub mod standby;
