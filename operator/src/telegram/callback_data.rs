//! The `callback_data` of the inline buttons: a fixed-size, versioned encoding of the action,
//! a tag of the Permit's uid and a prefix of the spec digest (Permit requests) or code digest
//! (code requests). 58 bytes whatever the names, within Telegram's 64. A tap is acted on only
//! when the tag and prefix still match what is current, so an outdated message can never
//! approve something else.

use sha2::{Digest as _, Sha256};

/// Telegram's limit on `callback_data`.
pub const MAX_CALLBACK_DATA: usize = 64;

const VERSION: char = '1';
const UID_TAG_LEN: usize = 32;
const DIGEST_PREFIX_LEN: usize = 24;
const ENCODED_LEN: usize = 2 + UID_TAG_LEN + DIGEST_PREFIX_LEN;

/// What a button does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Approve the Permit's current spec for its `validFor`.
    ApprovePermit,
    /// Deny the Permit's current spec.
    DenyPermit,
    /// Trust the code for one Execution.
    TrustOnce,
    /// Trust the code for 24 hours.
    TrustDay,
    /// Trust the code until revoked.
    TrustAlways,
    /// Refuse the code: the Executions waiting for it are denied.
    DenyCode,
    /// Send the tapping owner a one-time sign-in link to the web page of a Permit request.
    OpenWebPermit,
    /// Send the tapping owner a one-time sign-in link to the web page of a code request.
    OpenWebCode,
}

impl Action {
    fn code(self) -> char {
        match self {
            Self::ApprovePermit => 'a',
            Self::DenyPermit => 'd',
            Self::TrustOnce => 'o',
            Self::TrustDay => 'h',
            Self::TrustAlways => 'w',
            Self::DenyCode => 'x',
            Self::OpenWebPermit => 'p',
            Self::OpenWebCode => 'c',
        }
    }

    fn from_code(c: char) -> Option<Self> {
        Some(match c {
            'a' => Self::ApprovePermit,
            'd' => Self::DenyPermit,
            'o' => Self::TrustOnce,
            'h' => Self::TrustDay,
            'w' => Self::TrustAlways,
            'x' => Self::DenyCode,
            'p' => Self::OpenWebPermit,
            'c' => Self::OpenWebCode,
            _ => return None,
        })
    }

    /// Whether the action answers a code request (rather than a Permit request).
    pub fn is_code(self) -> bool {
        !matches!(
            self,
            Self::ApprovePermit | Self::DenyPermit | Self::OpenWebPermit
        )
    }

    /// Whether the action asks for a web sign-in link (and decides nothing itself).
    pub fn is_open_web(self) -> bool {
        matches!(self, Self::OpenWebPermit | Self::OpenWebCode)
    }
}

/// A decoded button payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// What the button does.
    pub action: Action,
    /// [`uid_tag`] of the Permit.
    pub uid_tag: String,
    /// The first hex digits of the spec digest (Permit) or code digest (code).
    pub digest_prefix: String,
}

/// A fixed-length tag of a Permit uid (hex of its SHA-256, shortened).
pub fn uid_tag(uid: &str) -> String {
    let mut tag = hex::encode(Sha256::digest(uid.as_bytes()));
    tag.truncate(UID_TAG_LEN);
    tag
}

/// The prefix of a `sha256:<hex>` digest that buttons carry.
pub fn digest_prefix(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(DIGEST_PREFIX_LEN).collect()
}

/// Whether `digest` (`sha256:<hex>`) is the one a button's `prefix` was made from.
pub fn digest_matches(digest: &str, prefix: &str) -> bool {
    prefix.len() == DIGEST_PREFIX_LEN && digest_prefix(digest) == prefix
}

/// Encodes a button for `action` on the Permit with `uid`, bound to `digest`.
pub fn encode(action: Action, uid: &str, digest: &str) -> String {
    format!(
        "{VERSION}{}{}{}",
        action.code(),
        uid_tag(uid),
        digest_prefix(digest)
    )
}

/// Decodes a button payload; `None` for anything this version did not make.
pub fn decode(data: &str) -> Option<Tap> {
    if data.len() != ENCODED_LEN || !data.is_ascii() {
        return None;
    }
    let mut chars = data.chars();
    if chars.next()? != VERSION {
        return None;
    }
    let action = Action::from_code(chars.next()?)?;
    let rest = &data[2..];
    if !rest
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some(Tap {
        action,
        uid_tag: rest[..UID_TAG_LEN].to_owned(),
        digest_prefix: rest[UID_TAG_LEN..].to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn every_button_round_trips_within_telegrams_64_bytes() {
        for action in [
            Action::ApprovePermit,
            Action::DenyPermit,
            Action::TrustOnce,
            Action::TrustDay,
            Action::TrustAlways,
            Action::DenyCode,
            Action::OpenWebPermit,
            Action::OpenWebCode,
        ] {
            let uid = "a-very-long-uid-".repeat(40);
            let data = encode(action, &uid, DIGEST);
            assert!(data.len() <= MAX_CALLBACK_DATA, "{} bytes", data.len());
            let tap = decode(&data).expect("decodes");
            assert_eq!(tap.action, action);
            assert_eq!(tap.uid_tag, uid_tag(&uid));
            assert!(digest_matches(DIGEST, &tap.digest_prefix));
        }
    }

    #[test]
    fn a_button_does_not_match_another_digest_or_uid() {
        let tap = decode(&encode(Action::ApprovePermit, "uid-1", DIGEST)).expect("decodes");
        let other = "sha256:1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert!(!digest_matches(other, &tap.digest_prefix));
        assert_ne!(tap.uid_tag, uid_tag("uid-2"));
        assert!(
            !digest_matches(DIGEST, "0123"),
            "a short prefix never matches"
        );
    }

    #[test]
    fn foreign_or_malformed_payloads_are_rejected() {
        let good = encode(Action::DenyPermit, "u", DIGEST);
        for bad in [
            String::new(),
            "hello".to_owned(),
            format!("2{}", &good[1..]),
            format!("1z{}", &good[2..]),
            format!("{}X", &good[..good.len() - 1]),
            format!("{good}0"),
        ] {
            assert_eq!(decode(&bad), None, "{bad:?}");
        }
    }
}
