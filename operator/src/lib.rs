//! oauth3 operator: controllers for Permits and Executions, their shared context, status
//! conditions and errors; launchers; the plain-words Permit description; the kubectl plugin.

pub mod cache;
pub mod callback;
pub mod cli;
pub mod conditions;
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
pub mod telegram;
pub mod tls;
pub mod usage;

pub use context::{Clock, Context};
pub use error::Error;
pub use permit::{permit_controller, run_permit_controller};
