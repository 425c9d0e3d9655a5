//! oauth3 operator: controllers for Permits and Executions, their shared context, status
//! conditions and errors; launchers; the plain-words Permit description; the kubectl plugin;
//! the flags ([`config`]) and the one wiring that runs it all ([`run()`], in `run.rs`).
//!
//! Modules: `approval` (the approval rules, pure), `cache` (lean watch caches), `config` (flags,
//! one duration grammar, enums for kinds), `conditions` (the one condition helper), `context` (shared reconcile state),
//! `describe` (a Permit in plain words), `draft` (drafting capabilities from an intent), `error`, `execution` (the Execution driver, its
//! decisions and status, the result endpoint), `http` (metrics and health), `launcher` (pod and
//! process launchers: all sandbox IO), `leader` (Lease election), `login`
//! (the device-flow sign-in of `kubectl oauth3 login`), `metrics`, `permit` (the
//! Permit controller), `plugin` (`kubectl oauth3`), `pool` (SandboxPools: standby members, claims,
//! the standby endpoint), `status_write` (the one guarded status
//! write), `telegram` (owner approvals on Telegram), `tls` (the result endpoint's HTTPS),
//! `usage` (the batched usage ledger), `verify` (offline verification of attested results
//! and enclave keys), `run` (the wiring).

pub mod approval;
pub mod cache;
pub mod conditions;
pub mod config;
pub mod conn_guard;
pub mod context;
pub mod describe;
pub mod draft;
pub mod egress;
pub mod error;
pub mod execution;
pub mod http;
pub mod launcher;
pub mod leader;
pub mod login;
pub mod metrics;
pub mod permit;
pub mod plugin;
pub mod pool;
pub mod proxy;
mod run;
pub(crate) mod status_write;
pub mod telegram;
pub mod tls;
pub mod usage;
pub mod verify;
pub mod web_sign_in;

pub use context::{Clock, Context};
pub use error::Error;
pub use permit::{permit_controller, run_permit_controller};
pub use run::{Listeners, RunError, run};
