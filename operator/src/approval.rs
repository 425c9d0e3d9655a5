//! The approval rules (pure): the `status.approval` a decision records and the
//! `status.trustedCode` list a code trust leaves, shared by every approval channel (the
//! kubectl plugin, the Telegram bot) so each records exactly the same thing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use oauth3_crds::permit::TrustedCode;
use oauth3_crds::{
    Approval, ApprovalDecision, ApprovalVia, DigestError, DurationError, GlobError, PathGlob,
    Permit, TrustLevel, parse_duration, spec_digest,
};

/// Why a decision could not be built from a Permit (the schema prevents both).
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The spec could not be digested.
    #[error("spec: computing its digest: {0}")]
    Digest(#[from] DigestError),
    /// `spec.validFor` is not a duration.
    #[error("spec.validFor: {0}")]
    ValidFor(#[from] DurationError),
    /// `spec.validFor` reaches past the representable time.
    #[error("spec.validFor: {0} is out of range")]
    ValidForRange(String),
    /// The spec states an intent and no successful draft for it is in status yet.
    #[error(
        "status.draft: the intent has no successful draft for the current spec yet; nothing can be approved (see kubectl oauth3 get)"
    )]
    NoDraft,
    /// A path glob the runner would refuse (stored before the schema refused it): approving
    /// it would show the owner a reading that no run can have.
    #[error("spec.capabilities[{capability}].paths[{path}]: {source}")]
    Glob {
        /// Index of the capability.
        capability: usize,
        /// Index of the path.
        path: usize,
        /// Why.
        source: GlobError,
    },
}

/// Which Permit decision to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Approve the current spec.
    Approve,
    /// Deny the current spec.
    Deny,
    /// Withdraw the approval.
    Revoke,
}

/// The `status.approval` to record for `decision` on `permit` by `by` through `via` at `now`
/// (pure).
///
/// # Errors
/// [`ApprovalError`] when the spec cannot be digested or its `validFor` cannot be parsed (the
/// schema prevents both).
pub fn approval_for(
    permit: &Permit,
    decision: Decision,
    by: &str,
    via: ApprovalVia,
    now: Timestamp,
) -> Result<Approval, ApprovalError> {
    let spec = permit.effective_spec();
    let digest = spec_digest(&spec)?;
    let expires_at = match decision {
        Decision::Approve => {
            if !permit.spec.intent.is_empty() && permit.usable_draft().is_none() {
                return Err(ApprovalError::NoDraft);
            }
            for (capability, cap) in spec.capabilities.iter().enumerate() {
                for (path, glob) in cap.paths.iter().enumerate() {
                    PathGlob::parse(glob).map_err(|source| ApprovalError::Glob {
                        capability,
                        path,
                        source,
                    })?;
                }
            }
            let out_of_range = || ApprovalError::ValidForRange(permit.spec.valid_for.clone());
            let valid = parse_duration(&permit.spec.valid_for)?;
            let valid = SignedDuration::try_from(valid).map_err(|_| out_of_range())?;
            Some(Time(now.checked_add(valid).map_err(|_| out_of_range())?))
        }
        Decision::Deny | Decision::Revoke => None,
    };
    Ok(Approval {
        decision: match decision {
            Decision::Approve => ApprovalDecision::Approved,
            Decision::Deny => ApprovalDecision::Denied,
            Decision::Revoke => ApprovalDecision::Revoked,
        },
        by: by.to_owned(),
        via,
        at: Time(now),
        expires_at,
        spec_digest: digest,
        reason: None,
    })
}

/// The `status.trustedCode` list after trusting `digest` at `level` (pure). Replaces an earlier
/// entry for the same digest; drops expired 24h entries.
pub fn trust_code(
    current: &[TrustedCode],
    digest: &str,
    level: TrustLevel,
    by: &str,
    now: Timestamp,
) -> Vec<TrustedCode> {
    let mut list: Vec<TrustedCode> = current
        .iter()
        .filter(|t| t.code_digest != digest)
        .filter(|t| t.level != TrustLevel::Day || t.expires_at.as_ref().is_some_and(|e| e.0 > now))
        .cloned()
        .collect();
    let expires_at = (level == TrustLevel::Day)
        .then(|| {
            now.checked_add(SignedDuration::from_hours(24))
                .ok()
                .map(Time)
        })
        .flatten();
    list.insert(
        0,
        TrustedCode {
            code_digest: digest.to_owned(),
            level,
            by: by.to_owned(),
            at: Time(now),
            expires_at,
        },
    );
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth3_crds::PermitSpec;
    use serde_json::json;

    fn permit() -> Permit {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "d", "validFor": "2h",
            "capabilities": [{"name": "gh", "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"]}]
        }))
        .expect("spec");
        Permit::new("gh", spec)
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    #[test]
    fn an_approval_binds_the_current_digest_and_lasts_valid_for() {
        let p = permit();
        let a = approval_for(
            &p,
            Decision::Approve,
            "alice",
            ApprovalVia::Kubectl,
            t(1_000),
        )
        .expect("approval");
        assert_eq!(a.decision, ApprovalDecision::Approved);
        assert_eq!(a.spec_digest, spec_digest(&p.spec).expect("digest"));
        assert_eq!(a.expires_at.map(|e| e.0), Some(t(1_000 + 7_200)));
        assert_eq!((a.by.as_str(), a.via), ("alice", ApprovalVia::Kubectl));
        let d = approval_for(
            &p,
            Decision::Revoke,
            "alice",
            ApprovalVia::Kubectl,
            t(1_000),
        )
        .expect("revoke");
        assert_eq!(
            (d.decision, d.expires_at),
            (ApprovalDecision::Revoked, None)
        );
    }

    #[test]
    fn a_glob_the_runner_refuses_cannot_be_approved_but_can_be_denied() {
        let mut p = permit();
        p.spec.capabilities[0].paths = vec!["/x".into(), "/repos/o/r/issues**".into()];
        let err = approval_for(&p, Decision::Approve, "alice", ApprovalVia::Kubectl, t(1))
            .expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("spec.capabilities[0].paths[1]: segment \"issues**\": ** must be a whole path segment"),
            "{err}"
        );
        approval_for(&p, Decision::Deny, "alice", ApprovalVia::Kubectl, t(1)).expect("deny");
    }

    #[test]
    fn trusting_code_replaces_its_old_entry_and_drops_expired_day_trust() {
        let old = trust_code(&[], "sha256:a", TrustLevel::Day, "bob", t(0));
        assert_eq!(old[0].expires_at.as_ref().map(|e| e.0), Some(t(86_400)));
        let list = trust_code(&old, "sha256:b", TrustLevel::Always, "bob", t(100));
        assert_eq!(
            list.iter()
                .map(|t| t.code_digest.as_str())
                .collect::<Vec<_>>(),
            ["sha256:b", "sha256:a"]
        );
        let later = trust_code(&list, "sha256:b", TrustLevel::Once, "bob", t(90_000));
        assert_eq!(
            later.len(),
            1,
            "expired 24h trust is dropped and b replaced: {later:?}"
        );
        assert_eq!(later[0].level, TrustLevel::Once);
    }
}
