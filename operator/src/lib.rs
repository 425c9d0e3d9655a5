//! oauth3 operator: controllers for Permits and Executions, launchers, approvals.

pub mod describe;
pub mod execution;
pub mod launcher;
pub mod plugin;
