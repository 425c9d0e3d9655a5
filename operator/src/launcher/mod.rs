//! Launchers start the sandbox runner for an Execution. `pod` runs it in a confidential
//! container (Kata on Intel TDX); `process` runs the same binary locally with the same bundle
//! (development and tests).

pub mod pod;
pub mod process;

/// A started runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// `pod/<name>` (also in `status.podName`) or `process/<pid>`; logged and named in the
    /// `Launched` Event.
    pub handle: String,
}

/// Why a runner could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The child process could not be started or given its bundle.
    #[error("launching the runner process: {0}")]
    Spawn(String),
    /// Building or applying the sandbox objects failed.
    #[error("launching the sandbox pod: {0}")]
    Pod(String),
}
