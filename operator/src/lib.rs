//! oauth3 operator: controllers for Permits (and, later, Executions), their shared context,
//! status conditions and errors.

pub mod conditions;
pub mod context;
pub mod error;
pub mod permit;

pub use context::{Clock, Context};
pub use error::Error;
pub use permit::{permit_controller, run_permit_controller};
