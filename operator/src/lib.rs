//! oauth3 operator: controllers for Permits and Executions, their shared context, status
//! conditions and errors; launchers; the plain-words Permit description; the kubectl plugin;
//! the flags ([`config`]) and the one wiring that runs it all ([`run()`], in `run.rs`).

pub mod cache;
pub mod callback;
pub mod conditions;
pub mod config;
pub mod context;
pub mod describe;
pub mod error;
pub mod execution;
pub mod http;
pub mod launcher;
pub mod leader;
pub mod metrics;
pub mod permit;
pub mod plugin;
mod run;
pub mod telegram;
pub mod tls;
pub mod usage;

pub use context::{Clock, Context};
pub use error::Error;
pub use permit::{permit_controller, run_permit_controller};
pub use run::{Listeners, RunError, run};
