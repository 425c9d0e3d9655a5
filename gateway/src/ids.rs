//! Request ids and the per-request tokens (pure apart from randomness).
//!
//! A request id is `permit_<16 lowercase hex>` (a Permit request) or `exec_<16 lowercase hex>`
//! (an Execution): URL-path-safe, as clients interpolate it raw. It is the value of the label
//! [`LABEL_REQUEST_ID`](oauth3_crds::constants::LABEL_REQUEST_ID) on the object, which is
//! looked up in the caller's namespace only. Anything else in an id position (`..`, `/`, `%`,
//! upper case, another length) is refused before any API call.
//!
//! Tokens are 32 random bytes as 64 lowercase hex; only their SHA-256 is stored (in an
//! annotation), so the object never holds a usable token.

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// What a request id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A Permit request (`permit_...`).
    Permit,
    /// An Execution (`exec_...`).
    Execution,
}

/// A parsed, well-formed request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    /// Which kind of object it names.
    pub kind: IdKind,
    hex: String,
}

impl RequestId {
    /// A fresh random id of `kind`.
    pub fn new(kind: IdKind) -> Self {
        let mut bytes = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self {
            kind,
            hex: hex::encode(bytes),
        }
    }

    /// Parses an id from a URL path; the error names `field` and the expected form.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] for anything but `permit_<16 hex>` or `exec_<16 hex>`.
    pub fn parse(text: &str, field: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::bad(
                field,
                "must be permit_ or exec_ followed by 16 lowercase hex characters",
            )
        };
        let (kind, hex) = if let Some(h) = text.strip_prefix("permit_") {
            (IdKind::Permit, h)
        } else if let Some(h) = text.strip_prefix("exec_") {
            (IdKind::Execution, h)
        } else {
            return Err(bad());
        };
        if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        Ok(Self {
            kind,
            hex: hex.to_owned(),
        })
    }

    /// The id as clients see it (and as the label value).
    pub fn as_label(&self) -> String {
        match self.kind {
            IdKind::Permit => format!("permit_{}", self.hex),
            IdKind::Execution => format!("exec_{}", self.hex),
        }
    }

    /// The object name the gateway gives a new object for this id (`permit-<hex>`,
    /// `exec-<hex>`).
    pub fn object_name(&self) -> String {
        self.as_label().replace('_', "-")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_label())
    }
}

/// A fresh random token: 64 lowercase hex characters.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The hex SHA-256 of `token`, as stored in annotations.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` is the one whose digest is `stored` (compared as digests, so the time taken
/// says nothing about the stored value).
pub fn token_matches(token: &str, stored: Option<&str>) -> bool {
    let Some(stored) = stored else {
        return false;
    };
    let given = token_digest(token);
    given.len() == stored.len()
        && given
            .bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Whether `name` is a valid Kubernetes object name or namespace (an RFC 1123 label).
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_map_to_dns_names() {
        let id = RequestId::new(IdKind::Execution);
        let parsed = RequestId::parse(&id.as_label(), "id").expect("parses");
        assert_eq!(parsed, id);
        assert!(id.object_name().starts_with("exec-"));
        assert!(is_dns_label(&id.object_name()));
    }

    #[test]
    fn anything_but_a_well_formed_id_is_refused_naming_the_field() {
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            "permit_",
            "permit_0123456789abcdeF",
            "permit_0123456789abcde",
            "exec_0123456789abcdef0",
            "exec_0123456789abcde/",
            "exec_%2e%2e456789abcdef",
            "session_0123456789abcdef",
            "permit-0123456789abcdef",
        ] {
            let err = RequestId::parse(bad, "id").expect_err(bad);
            assert!(err.to_string().starts_with("id: must be permit_"), "{err}");
        }
    }

    #[test]
    fn tokens_match_only_their_digest() {
        let t = new_token();
        assert_eq!(t.len(), 64);
        let d = token_digest(&t);
        assert!(token_matches(&t, Some(&d)));
        assert!(!token_matches(&new_token(), Some(&d)));
        assert!(!token_matches(&t, None));
        assert!(!token_matches("", Some(&d)));
    }
}
