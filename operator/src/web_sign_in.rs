//! One-time sign-in links to the web approval page, minted on Telegram.
//!
//! An owner who taps "Open on the web" under a request gets a link
//! `<web URL>/signin/<namespace>/<permit>?code=<64 hex>`. The bot keeps only the code's SHA-256
//! (with who asked, what for and until when) in the Permit's `status.webSignIn`; the code
//! itself is only in the owner's chat. The gateway shows the page for a valid code and, on the
//! owner's decision, records it as the Telegram owner and clears the record in one status write
//! guarded by the `resourceVersion` it checked: a link decides once, before it lapses, and only
//! the request (spec digest or code digest) it was made for.
//!
//! Who can make a record: only writers of `permits/status` (the bot, owners). Such a writer
//! can already record a decision directly, so a record it forges grants nothing new.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::Api;
use kube::{Client, ResourceExt};
use oauth3_crds::{
    Approval, ApprovalVia, Permit, TrustLevel, WebSignIn, WebSignInRequest, spec_digest,
};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::approval::{Decision, approval_for, trust_code};
use crate::status_write::{Guarded, write_status};

/// How long a sign-in link works after it was minted.
pub const LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// Field manager of the gateway's sign-in writes.
pub const SIGN_IN_FIELD_MANAGER: &str = "oauth3-web-sign-in";

/// Tries of a decision when the Permit changed meanwhile for another reason.
const TRIES: usize = 4;

/// Lowercase hex SHA-256 of `code`.
pub fn code_sha256(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

/// A fresh code (32 random bytes as 64 lowercase hex) and the record that accepts it (pure
/// apart from randomness).
pub fn mint(
    by: &str,
    request: WebSignInRequest,
    digest: &str,
    now: Timestamp,
) -> (String, WebSignIn) {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let code = hex::encode(bytes);
    let ttl = SignedDuration::try_from(LINK_TTL).unwrap_or(SignedDuration::from_mins(15));
    let record = WebSignIn {
        code_sha256: code_sha256(&code),
        by: by.to_owned(),
        request,
        digest: digest.to_owned(),
        expires_at: Time(now.checked_add(ttl).unwrap_or(now)),
    };
    (code, record)
}

/// The link for `code` under the gateway at `base` (an origin, maybe with a path prefix).
pub fn link(base: &url::Url, namespace: &str, name: &str, code: &str) -> String {
    format!(
        "{}/signin/{namespace}/{name}?code={code}",
        base.as_str().trim_end_matches('/')
    )
}

/// Why a sign-in code is refused. Every message is safe to show whoever holds the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No record, or a code that is not the record's (used, replaced, never made or mistyped).
    #[error(
        "this sign-in link is not valid: it was used already, replaced by a newer link, or never made; tap \"Open on the web\" in Telegram for a new one"
    )]
    Invalid,
    /// The record lapsed.
    #[error("this sign-in link expired at {0}; tap \"Open on the web\" in Telegram for a new one")]
    Expired(String),
    /// The request changed since the link was made.
    #[error("{0}")]
    Outdated(String),
}

/// Whether two equal-length hex strings are equal, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The record `code` opens on `permit` at `now`, or why not (pure). For a Permit request the
/// spec must still be the one the link was made for and still wait for a decision.
///
/// # Errors
/// [`Refused`], with a message for the holder of the link.
pub fn check<'a>(permit: &'a Permit, code: &str, now: Timestamp) -> Result<&'a WebSignIn, Refused> {
    let record = permit
        .status
        .as_ref()
        .and_then(|s| s.web_sign_in.as_ref())
        .ok_or(Refused::Invalid)?;
    let valid_form = code.len() == 64 && code.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_form || !same(&code_sha256(code), &record.code_sha256) {
        return Err(Refused::Invalid);
    }
    if record.expires_at.0 <= now {
        return Err(Refused::Expired(record.expires_at.0.to_string()));
    }
    if record.request == WebSignInRequest::Permit {
        let current =
            spec_digest(&permit.effective_spec()).map_err(|e| Refused::Outdated(e.to_string()))?;
        if current != record.digest {
            return Err(Refused::Outdated(
                "the Permit's spec changed after this link was made; the new spec is sent on Telegram separately"
                    .into(),
            ));
        }
        if let Some(a) = permit.status.as_ref().and_then(|s| s.approval.as_ref())
            && a.spec_digest == current
        {
            return Err(Refused::Outdated(format!(
                "this request was already decided ({:?} by {})",
                a.decision, a.by
            )));
        }
    }
    Ok(record)
}

/// What the owner chose on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Approve the Permit's spec.
    Approve,
    /// Deny the Permit's spec.
    Deny,
    /// Trust the link's code digest at this level.
    Trust(TrustLevel),
}

/// What was recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// The Permit decision.
    Decision(Approval),
    /// The code digest trusted, by whom.
    Trust {
        /// The digest.
        code_digest: String,
        /// The level.
        level: TrustLevel,
        /// Who (the record's `by`).
        by: String,
    },
}

/// Why a signed-in decision was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The Permit does not exist.
    #[error("Permit {0} not found")]
    NotFound(String),
    /// The code is refused.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The choice does not fit the request (e.g. approving a spec with a code link).
    #[error("{0}")]
    Choice(String),
    /// The Permit kept changing; nothing was written.
    #[error("Permit {0} kept changing while the decision was being recorded; look again")]
    Conflict(String),
    /// A Kubernetes API call failed.
    #[error("{step}: {source}")]
    Api {
        /// What was being done.
        step: String,
        /// The error.
        source: kube::Error,
    },
}

/// The status merge that records `choice` under `record` and clears the record (pure).
///
/// # Errors
/// [`SignInError::Choice`] when the choice does not fit the link.
pub fn outcome(
    permit: &Permit,
    record: &WebSignIn,
    choice: Choice,
    now: Timestamp,
) -> Result<(serde_json::Value, Recorded), SignInError> {
    match (record.request, choice) {
        (WebSignInRequest::Permit, Choice::Approve | Choice::Deny) => {
            let decision = if choice == Choice::Approve {
                Decision::Approve
            } else {
                Decision::Deny
            };
            let approval = approval_for(permit, decision, &record.by, ApprovalVia::Web, now)
                .map_err(|e| SignInError::Choice(e.to_string()))?;
            Ok((
                json!({"approval": approval, "webSignIn": null}),
                Recorded::Decision(approval),
            ))
        }
        (WebSignInRequest::Code, Choice::Trust(level)) => {
            let current = permit
                .status
                .as_ref()
                .map(|s| s.trusted_code.clone())
                .unwrap_or_default();
            let list = trust_code(&current, &record.digest, level, &record.by, now);
            Ok((
                json!({"trustedCode": list, "webSignIn": null}),
                Recorded::Trust {
                    code_digest: record.digest.clone(),
                    level,
                    by: record.by.clone(),
                },
            ))
        }
        (WebSignInRequest::Permit, Choice::Trust(_)) => Err(SignInError::Choice(
            "this link decides the Permit's spec: approve or deny".into(),
        )),
        (WebSignInRequest::Code, _) => Err(SignInError::Choice(
            "this link trusts a piece of code: once, for 24h or always".into(),
        )),
    }
}

/// Reads Permit `namespace/name`, checks `code`, records `choice` and clears the record, in one
/// write guarded by the `resourceVersion` that was checked (read again and re-checked if the
/// Permit changed meanwhile, so a second use of the same code always finds it gone).
///
/// # Errors
/// [`SignInError`]; nothing is written on any error.
pub async fn decide(
    client: &Client,
    namespace: &str,
    name: &str,
    code: &str,
    choice: Choice,
) -> Result<Recorded, SignInError> {
    let api: Api<Permit> = Api::namespaced(client.clone(), namespace);
    let full = format!("{namespace}/{name}");
    for _ in 0..TRIES {
        let permit = api
            .get_opt(name)
            .await
            .map_err(|source| SignInError::Api {
                step: format!("reading Permit {full}"),
                source,
            })?
            .ok_or_else(|| SignInError::NotFound(full.clone()))?;
        let now = Timestamp::now();
        let record = check(&permit, code, now)?;
        let (status, recorded) = outcome(&permit, record, choice, now)?;
        match write_status(&api, &permit, &status, Some(SIGN_IN_FIELD_MANAGER)).await {
            Ok(Guarded::Written) => {
                tracing::info!(permit = %full, by = %record.by, uid = %permit.uid().unwrap_or_default(), "decision recorded through a web sign-in link");
                return Ok(recorded);
            }
            Ok(Guarded::Conflict) => {}
            Ok(Guarded::Gone) => return Err(SignInError::NotFound(full)),
            Err(source) => {
                return Err(SignInError::Api {
                    step: format!("recording the decision on Permit {full}"),
                    source,
                });
            }
        }
    }
    Err(SignInError::Conflict(full))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth3_crds::{ApprovalDecision, PermitSpec, PermitStatus};

    fn permit() -> Permit {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "d", "validFor": "2h",
            "capabilities": [{"name": "gh", "baseUrl": "https://api.github.com", "paths": ["/x"], "methods": ["GET"]}]
        }))
        .expect("spec");
        Permit::new("p", spec)
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("time")
    }

    fn with(record: WebSignIn) -> Permit {
        let mut p = permit();
        p.status = Some(PermitStatus {
            web_sign_in: Some(record),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_minted_code_opens_only_its_own_record_and_only_before_it_lapses() {
        let p = permit();
        let digest = spec_digest(&p.spec).expect("digest");
        let (code, record) = mint("telegram:42", WebSignInRequest::Permit, &digest, t(1_000));
        assert_eq!(code.len(), 64);
        assert_ne!(record.code_sha256, code, "only the hash is stored");
        let p = with(record);
        assert!(check(&p, &code, t(1_001)).is_ok());
        let mut wrong = code.clone().into_bytes();
        wrong[10] = if wrong[10] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).expect("hex");
        assert_eq!(check(&p, &wrong, t(1_001)), Err(Refused::Invalid));
        assert_eq!(check(&p, "", t(1_001)), Err(Refused::Invalid));
        assert_eq!(
            check(&p, &code.to_uppercase(), t(1_001)),
            Err(Refused::Invalid)
        );
        assert!(matches!(
            check(&p, &code, t(1_000 + 15 * 60)),
            Err(Refused::Expired(_))
        ));
        assert_eq!(check(&permit(), &code, t(1_001)), Err(Refused::Invalid));
    }

    #[test]
    fn a_link_for_an_earlier_spec_or_a_decided_request_is_refused() {
        let p = permit();
        let (code, record) = mint("telegram:42", WebSignInRequest::Permit, "sha256:old", t(0));
        let stale = with(record);
        assert!(
            matches!(check(&stale, &code, t(1)), Err(Refused::Outdated(m)) if m.contains("spec changed"))
        );
        let digest = spec_digest(&p.spec).expect("digest");
        let (code, record) = mint("telegram:42", WebSignInRequest::Permit, &digest, t(0));
        let mut decided = with(record);
        let approval = approval_for(
            &decided,
            Decision::Deny,
            "kube:alice",
            ApprovalVia::Kubectl,
            t(0),
        )
        .expect("approval");
        decided.status.as_mut().expect("status").approval = Some(approval);
        assert!(
            matches!(check(&decided, &code, t(1)), Err(Refused::Outdated(m)) if m.contains("already decided"))
        );
    }

    #[test]
    fn the_outcome_records_the_telegram_owner_and_clears_the_record() {
        let p = permit();
        let digest = spec_digest(&p.spec).expect("digest");
        let (_, record) = mint("telegram:42", WebSignInRequest::Permit, &digest, t(0));
        let (status, recorded) = outcome(&p, &record, Choice::Approve, t(5)).expect("outcome");
        assert_eq!(status["webSignIn"], serde_json::Value::Null);
        assert!(
            status
                .as_object()
                .expect("object")
                .contains_key("webSignIn")
        );
        let Recorded::Decision(a) = recorded else {
            panic!("a decision");
        };
        assert_eq!(
            (a.decision, a.via, a.by.as_str()),
            (ApprovalDecision::Approved, ApprovalVia::Web, "telegram:42")
        );
        assert_eq!(a.spec_digest, digest);
        assert!(matches!(
            outcome(&p, &record, Choice::Trust(TrustLevel::Always), t(5)),
            Err(SignInError::Choice(_))
        ));
        let (_, code_record) = mint("telegram:42", WebSignInRequest::Code, "sha256:c0de", t(0));
        let (status, _) =
            outcome(&p, &code_record, Choice::Trust(TrustLevel::Day), t(5)).expect("trust");
        assert_eq!(status["trustedCode"][0]["codeDigest"], "sha256:c0de");
        assert_eq!(status["trustedCode"][0]["by"], "telegram:42");
        assert!(matches!(
            outcome(&p, &code_record, Choice::Approve, t(5)),
            Err(SignInError::Choice(_))
        ));
    }

    #[test]
    fn links_join_the_base_and_the_request() {
        let base = url::Url::parse("https://gw.example/oauth3/").expect("url");
        assert_eq!(
            link(&base, "team-a", "p1", "ab"),
            "https://gw.example/oauth3/signin/team-a/p1?code=ab"
        );
        let base = url::Url::parse("https://gw.example").expect("url");
        assert_eq!(
            link(&base, "n", "p", "c"),
            "https://gw.example/signin/n/p?code=c"
        );
    }
}
