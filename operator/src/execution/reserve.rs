//! Budget reservations on a Permit: where a launch is bound by a limit (`maxExecutions`, or a
//! `once` code trust to consume), it first takes its slot with its own guarded write, so two
//! launches can never both take the last one. Unlimited launches are counted in batches by the
//! usage ledger instead ([`crate::usage`]).

use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use oauth3_crds::{Permit, TrustLevel};
use serde_json::json;

use super::ExecutionError;
use crate::Context;
use crate::status_write::{Guarded, write_status};

/// How often a reservation is tried against other writers of the Permit's status.
const ATTEMPTS: usize = 50;

/// Whether launching under `permit` must first reserve budget on it: when `maxExecutions` is
/// set, or a `once` code trust has to be consumed. Those are limits, so they are enforced with
/// a serialised counter (the Permit's resourceVersion); otherwise the count is informational.
pub(crate) fn needs_reservation(permit: &Permit, code_digest: &str) -> bool {
    permit.spec.max_executions.is_some()
        || permit.status.as_ref().is_some_and(|s| {
            s.trusted_code
                .iter()
                .any(|t| t.level == TrustLevel::Once && t.code_digest == code_digest)
        })
}

/// The status change that reserves one Execution on `permit` (pure): `usage.executions` + 1
/// and a matching `once` code trust removed; `None` when `maxExecutions` is used up.
pub(crate) fn reservation(permit: &Permit, code_digest: &str) -> Option<serde_json::Value> {
    let status = permit.status.clone().unwrap_or_default();
    let usage = status.usage.clone().unwrap_or_default();
    if let Some(max) = permit.spec.max_executions
        && usage.executions >= max
    {
        return None;
    }
    let mut change = json!({
        "usage": {"executions": usage.executions + 1, "calls": usage.calls,
            "rateBudget": usage.rate_budget, "at": usage.at},
    });
    let remaining: Vec<_> = status
        .trusted_code
        .iter()
        .filter(|t| !(t.level == TrustLevel::Once && t.code_digest == code_digest))
        .cloned()
        .collect();
    if remaining.len() != status.trusted_code.len() {
        change["trustedCode"] = json!(remaining);
    }
    Some(change)
}

/// What a reservation came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// The slot is taken: launch.
    Reserved,
    /// `maxExecutions` is used up: refuse.
    Exhausted,
    /// The Permit was deleted meanwhile: decide again (admission then refuses it).
    PermitGone,
}

/// Counts one Execution on the Permit and consumes a matching `once` code trust, guarded by the
/// Permit's resourceVersion: conflicts are retried with fresh reads and the budget is
/// re-checked each time.
///
/// # Errors
/// [`ExecutionError::Api`] when the Permit cannot be read or written.
pub(crate) async fn reserve_execution(
    ctx: &Context,
    namespace: &str,
    permit: &Permit,
    code_digest: &str,
) -> Result<Reservation, ExecutionError> {
    let api: Api<Permit> = Api::namespaced(ctx.client.clone(), namespace);
    let name = permit.name_any();
    let err = |source| ExecutionError::Api {
        step: "reserving an Execution on the Permit",
        key: format!("{namespace}/{name}"),
        source,
    };
    let mut current = permit.clone();
    for attempt in 0..ATTEMPTS {
        let Some(change) = reservation(&current, code_digest) else {
            return Ok(Reservation::Exhausted);
        };
        match write_status(&api, &current, &change, None)
            .await
            .map_err(err)?
        {
            Guarded::Written => return Ok(Reservation::Reserved),
            Guarded::Gone => return Ok(Reservation::PermitGone),
            Guarded::Conflict if attempt + 1 < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(u64::from(rand::random::<u8>() % 20)))
                    .await;
                current = api.get(&name).await.map_err(err)?;
            }
            Guarded::Conflict => break,
        }
    }
    Err(ExecutionError::Contended {
        step: "reserving an Execution on the Permit",
        key: format!("{namespace}/{name}"),
        attempts: ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth3_crds::permit::TrustedCode;
    use oauth3_crds::{PermitStatus, PermitUsage};
    use oauth3_test_support::PermitFixture;

    fn permit(max: Option<i64>, used: i64, trusted: Vec<TrustedCode>) -> Permit {
        let fixture = PermitFixture::api("https://api.example");
        let mut p = match max {
            Some(max) => fixture.max_executions(max).permit("p"),
            None => fixture.permit("p"),
        };
        p.status = Some(PermitStatus {
            usage: Some(PermitUsage {
                executions: used,
                ..PermitUsage::default()
            }),
            trusted_code: trusted,
            ..PermitStatus::default()
        });
        p
    }

    fn once(digest: &str) -> TrustedCode {
        serde_json::from_value(
            json!({"codeDigest": digest, "level": "once", "by": "o", "at": "2026-01-01T00:00:00Z"}),
        )
        .expect("trust")
    }

    #[test]
    fn a_limit_or_a_once_trust_needs_a_reservation_otherwise_not() {
        assert!(needs_reservation(&permit(Some(3), 0, vec![]), "sha256:a"));
        assert!(needs_reservation(
            &permit(None, 0, vec![once("sha256:a")]),
            "sha256:a"
        ));
        assert!(!needs_reservation(
            &permit(None, 0, vec![once("sha256:b")]),
            "sha256:a"
        ));
        assert!(!needs_reservation(&permit(None, 5, vec![]), "sha256:a"));
    }

    #[test]
    fn a_reservation_counts_one_and_consumes_only_the_matching_once_trust() {
        let p = permit(Some(3), 2, vec![once("sha256:a"), once("sha256:b")]);
        let change = reservation(&p, "sha256:a").expect("a slot is left");
        assert_eq!(change["usage"]["executions"], 3);
        let left = change["trustedCode"].as_array().expect("trusts");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["codeDigest"], "sha256:b");
        assert!(reservation(&permit(Some(3), 3, vec![]), "sha256:a").is_none());
        assert!(
            reservation(&permit(None, 0, vec![]), "sha256:a")
                .expect("no limit")
                .get("trustedCode")
                .is_none()
        );
    }
}
