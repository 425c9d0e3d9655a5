//! The operator's error type: one variant per reconcile step that can fail, keeping the source.

/// Why a reconcile (or starting a controller) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace, which namespaced oauth3 resources always have.
    #[error("the {kind} {name} has no namespace")]
    MissingNamespace {
        /// Resource kind.
        kind: &'static str,
        /// Object name.
        name: String,
    },
    /// Removing a decision voided by a spec change failed (a conflict means the status changed
    /// meanwhile; the reconcile is retried with fresh data).
    #[error("removing the voided approval of Permit {namespace}/{name}: {source}")]
    ClearVoidedApproval {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The server-side apply of the Permit status failed.
    #[error("applying the status of Permit {namespace}/{name}: {source}")]
    ApplyPermitStatus {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}
