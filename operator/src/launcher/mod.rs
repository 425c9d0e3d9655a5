//! Launchers start the sandbox runner for an Execution. `pod` runs it in a confidential
//! container (Kata on Intel TDX); its desired objects are built by pure functions here.

pub mod pod;
