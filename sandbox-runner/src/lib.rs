//! oauth3 sandbox runner: the only component that ever holds plaintext secrets.
//!
//! Modules: `policy` (pure: compile a Permit, canonicalise and decide requests), `fetch`
//! (the [`host::CapabilityHost`] that enforces policy and sends requests), `sandbox` (QuickJS with
//! no ambient authority), `secrets` (sealed-secret envelopes and key providers), `redact`
//! (scrubbing secret values from every output).

pub mod backend;
pub mod bundle;
pub mod fetch;
pub mod host;
pub mod policy;
pub mod redact;
pub mod runner;
pub mod sandbox;
pub mod secrets;
