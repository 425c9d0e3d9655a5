//! Shared test support: a real HTTPS upstream.

pub mod upstream;
