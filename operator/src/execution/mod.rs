//! The Execution controller's decisions. `admission` decides whether an Execution may run.

pub mod admission;
pub mod bundle;
pub mod controller;
