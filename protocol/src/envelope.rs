//! The sealed-secret envelope: seal a value to an enclave public key, open it inside the TEE.
//!
//! Format (see `SEALED-SECRETS.md`): `oauth3-sealed:v1:<kid>:<base64url, no padding, of a
//! libsodium sealed box>`. Sealed boxes carry no associated data, so the context is bound inside
//! the plaintext, a JSON object `{"v":1,"ns":..,"name":..,"kid":..,"value":..}`; [`unseal`]
//! refuses a box whose namespace, name or key id differ from what the caller expects, so a box
//! cannot be moved to another Secret or opened as if it were another one. The prefix is
//! deliberately not `sealed.`, which Confidential Containers' agent would try to unseal itself.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use crypto_box::aead::OsRng;
use crypto_box::{PublicKey, SecretKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Every envelope starts with this prefix.
pub const ENVELOPE_PREFIX: &str = "oauth3-sealed";
/// The only envelope (and plaintext) version understood.
pub const ENVELOPE_VERSION: u8 = 1;

/// Why sealing or opening an envelope failed. Never carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Encoding the plaintext to seal failed.
    #[error("sealing: encoding the plaintext failed")]
    SealEncodePlaintext,
    /// Encrypting the sealed box failed.
    #[error("sealing: encrypting the sealed box failed")]
    SealEncrypt,
    /// The envelope string could not be parsed.
    #[error("parsing the envelope: {reason}")]
    EnvelopeMalformed {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The envelope was sealed to a different key than the one this runner holds.
    #[error(
        "opening the envelope: it was sealed to key {envelope_kid}, this runner holds key {our_kid}"
    )]
    EnvelopeKeyMismatch {
        /// The key id written in the envelope.
        envelope_kid: String,
        /// The key id of the runner's key.
        our_kid: String,
    },
    /// The sealed box did not decrypt (wrong key or tampered).
    #[error("opening the envelope: the sealed box failed authentication (wrong key or tampered)")]
    UnsealDecrypt,
    /// The decrypted plaintext is not the expected JSON object.
    #[error("opening the envelope: the decrypted plaintext is malformed")]
    UnsealDecodePlaintext,
    /// The plaintext is bound to another version, key, namespace or Secret name.
    #[error(
        "opening the envelope: it is bound to {field} {found:?}, expected {expected:?}; refusing to use it"
    )]
    EnvelopeBindingMismatch {
        /// Which bound field differs (`v`, `kid`, `ns` or `name`).
        field: &'static str,
        /// What the caller expected.
        expected: String,
        /// What the envelope is bound to.
        found: String,
    },
}

/// The sealed plaintext. No `Debug`: it holds the secret value.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plaintext<'a> {
    v: u8,
    ns: &'a str,
    name: &'a str,
    kid: &'a str,
    value: &'a str,
}

/// Owned form for opening: strings in a sealed plaintext may carry JSON escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenedPlaintext {
    v: u8,
    ns: String,
    name: String,
    kid: String,
    value: Zeroizing<String>,
}

/// The key id of an X25519 public key: the first 16 hex characters of `sha256(public key)`.
pub fn key_id(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(public_key);
    let mut id = hex::encode(digest);
    id.truncate(16);
    id
}

/// Seals `value` for the Secret `namespace/name` to the enclave key `public_key`.
///
/// Each call produces a different envelope (sealed boxes use an ephemeral key).
pub fn seal(
    public_key: &[u8; 32],
    namespace: &str,
    name: &str,
    value: &str,
) -> Result<String, EnvelopeError> {
    let kid = key_id(public_key);
    let plaintext = Zeroizing::new(
        serde_json::to_vec(&Plaintext {
            v: ENVELOPE_VERSION,
            ns: namespace,
            name,
            kid: &kid,
            value,
        })
        .map_err(|_| EnvelopeError::SealEncodePlaintext)?,
    );
    let sealed = PublicKey::from(*public_key)
        .seal(&mut OsRng, &plaintext)
        .map_err(|_| EnvelopeError::SealEncrypt)?;
    Ok(format!(
        "{ENVELOPE_PREFIX}:v{ENVELOPE_VERSION}:{kid}:{}",
        URL_SAFE_NO_PAD.encode(sealed)
    ))
}

/// The parts of an envelope string, before decryption.
struct ParsedEnvelope<'a> {
    kid: &'a str,
    sealed: Vec<u8>,
}

/// Splits an envelope into key id and sealed box (pure; no key needed).
fn parse(envelope: &str) -> Result<ParsedEnvelope<'_>, EnvelopeError> {
    let malformed = |reason: &'static str| EnvelopeError::EnvelopeMalformed { reason };
    let mut parts = envelope.trim().splitn(4, ':');
    if parts.next() != Some(ENVELOPE_PREFIX) {
        return Err(malformed("it does not start with `oauth3-sealed:`"));
    }
    if parts.next() != Some("v1") {
        return Err(malformed("its version is not v1"));
    }
    let kid = parts.next().ok_or_else(|| malformed("it has no key id"))?;
    if kid.len() != 16 || !kid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("its key id is not 16 hex characters"));
    }
    let body = parts
        .next()
        .ok_or_else(|| malformed("it has no sealed box"))?;
    let sealed = URL_SAFE_NO_PAD
        .decode(body.trim_end_matches('='))
        .map_err(|_| malformed("its sealed box is not base64url"))?;
    Ok(ParsedEnvelope { kid, sealed })
}

/// Opens an envelope sealed for the Secret `namespace/name` with the enclave's secret key.
///
/// Refuses (without returning any plaintext) an envelope sealed to another key, one that fails
/// authentication, and one whose bound namespace, name or key id differ from the expected ones.
pub fn unseal(
    secret_key: &SecretKey,
    envelope: &str,
    namespace: &str,
    name: &str,
) -> Result<Zeroizing<String>, EnvelopeError> {
    let parsed = parse(envelope)?;
    let our_kid = key_id(secret_key.public_key().as_bytes());
    if !parsed.kid.eq_ignore_ascii_case(&our_kid) {
        return Err(EnvelopeError::EnvelopeKeyMismatch {
            envelope_kid: parsed.kid.to_owned(),
            our_kid,
        });
    }
    let plaintext = Zeroizing::new(
        secret_key
            .unseal(&parsed.sealed)
            .map_err(|_| EnvelopeError::UnsealDecrypt)?,
    );
    let opened: OpenedPlaintext =
        serde_json::from_slice(&plaintext).map_err(|_| EnvelopeError::UnsealDecodePlaintext)?;
    check_binding(&opened, &our_kid, namespace, name)?;
    Ok(opened.value)
}

/// The plaintext must name exactly the version, key, namespace and Secret it was opened for.
fn check_binding(
    opened: &OpenedPlaintext,
    our_kid: &str,
    namespace: &str,
    name: &str,
) -> Result<(), EnvelopeError> {
    let mismatch = |field: &'static str, expected: &str, found: &str| {
        Err(EnvelopeError::EnvelopeBindingMismatch {
            field,
            expected: expected.to_owned(),
            found: found.to_owned(),
        })
    };
    if opened.v != ENVELOPE_VERSION {
        return mismatch("v", "1", &opened.v.to_string());
    }
    if opened.kid != our_kid {
        return mismatch("kid", our_kid, &opened.kid);
    }
    if opened.ns != namespace {
        return mismatch("ns", namespace, &opened.ns);
    }
    if opened.name != name {
        return mismatch("name", name, &opened.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_key(byte: u8) -> SecretKey {
        SecretKey::from([byte; 32])
    }

    fn public_of(key: &SecretKey) -> [u8; 32] {
        *key.public_key().as_bytes()
    }

    /// The test vector published in `SEALED-SECRETS.md`.
    const VECTOR_ENVELOPE: &str = "oauth3-sealed:v1:1a92f23852dc908d:-uWAzYx9d1PRs1myRrkfoyy1vJaxLeay2gm4ErodkWO5oqBx_WA3ETSb4y7nBByV5A5HRZNDZsieg6-EW4QKH2zlgZ90HLDmsQvISPt1j57HYkScAKhOwoyvXWd8TFWi2D2p_Rrqd3-fI0fnHa7DLmWRIVUKx5hUfR5KImSWMmUMxTzJUeu8qSeuPd9UxX3rOTyD-tVf8fvX8blF";

    #[test]
    fn published_test_vector_opens_to_its_plaintext() {
        let key = fixed_key(0x01);
        assert_eq!(
            hex::encode(public_of(&key)),
            "a4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a209",
            "public key of 32 bytes of 0x01"
        );
        assert_eq!(key_id(&public_of(&key)), "1a92f23852dc908d");
        let value = unseal(&key, VECTOR_ENVELOPE, "demo", "GITHUB_TOKEN")
            .expect("the published vector opens");
        assert_eq!(value.as_str(), "ghp_exampleTestVector0123456789");
    }

    #[test]
    fn sealed_value_opens_only_for_its_namespace_and_name() {
        let key = fixed_key(7);
        let envelope =
            seal(&public_of(&key), "team-a", "TOKEN", "s3cr3t-value").expect("sealing succeeds");
        let opened = unseal(&key, &envelope, "team-a", "TOKEN").expect("opens for its binding");
        assert_eq!(opened.as_str(), "s3cr3t-value");

        let other_ns = unseal(&key, &envelope, "team-b", "TOKEN").expect_err("other namespace");
        assert!(matches!(
            other_ns,
            EnvelopeError::EnvelopeBindingMismatch { field: "ns", .. }
        ));
        let other_name = unseal(&key, &envelope, "team-a", "OTHER").expect_err("other name");
        assert!(matches!(
            other_name,
            EnvelopeError::EnvelopeBindingMismatch { field: "name", .. }
        ));
        for err in [other_ns, other_name] {
            assert!(!err.to_string().contains("s3cr3t-value"));
            assert!(!format!("{err:?}").contains("s3cr3t-value"));
        }
    }

    #[test]
    fn envelope_never_contains_the_value_and_never_starts_with_sealed_dot() {
        let key = fixed_key(9);
        let envelope = seal(&public_of(&key), "ns", "N", "plain-value-here").expect("seals");
        assert!(envelope.starts_with("oauth3-sealed:v1:"));
        assert!(!envelope.starts_with("sealed."));
        assert!(!envelope.contains("plain-value-here"));
        let again = seal(&public_of(&key), "ns", "N", "plain-value-here").expect("seals");
        assert_ne!(envelope, again, "sealing is randomised");
    }

    #[test]
    fn envelope_for_another_key_is_refused_before_decryption() {
        let ours = fixed_key(1);
        let theirs = fixed_key(2);
        let envelope = seal(&public_of(&theirs), "ns", "N", "value-123").expect("seals");
        let err = unseal(&ours, &envelope, "ns", "N").expect_err("wrong key");
        assert!(matches!(err, EnvelopeError::EnvelopeKeyMismatch { .. }));
    }

    #[test]
    fn envelope_relabelled_with_our_key_id_fails_authentication() {
        let ours = fixed_key(1);
        let theirs = fixed_key(2);
        let envelope = seal(&public_of(&theirs), "ns", "N", "value-123").expect("seals");
        let body = envelope.rsplit(':').next().expect("has a body");
        let forged = format!("oauth3-sealed:v1:{}:{body}", key_id(&public_of(&ours)));
        let err = unseal(&ours, &forged, "ns", "N").expect_err("cannot decrypt");
        assert!(matches!(err, EnvelopeError::UnsealDecrypt));
    }

    #[test]
    fn tampered_sealed_box_is_refused() {
        let key = fixed_key(3);
        let envelope = seal(&public_of(&key), "ns", "N", "value-123").expect("seals");
        let (head, body) = envelope.rsplit_once(':').expect("has a body");
        let mut bytes = URL_SAFE_NO_PAD.decode(body).expect("base64url");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = format!("{head}:{}", URL_SAFE_NO_PAD.encode(bytes));
        let err = unseal(&key, &tampered, "ns", "N").expect_err("tampered");
        assert!(matches!(err, EnvelopeError::UnsealDecrypt));
    }

    #[test]
    fn malformed_envelopes_name_what_is_wrong() {
        let key = fixed_key(4);
        for (envelope, reason_part) in [
            ("sealed.abc", "oauth3-sealed"),
            ("oauth3-sealed:v2:0123456789abcdef:AAAA", "version"),
            ("oauth3-sealed:v1:xyz:AAAA", "key id"),
            ("oauth3-sealed:v1:0123456789abcdef", "sealed box"),
            ("oauth3-sealed:v1:0123456789abcdef:@@@", "base64url"),
        ] {
            let err = unseal(&key, envelope, "ns", "N").expect_err("malformed");
            assert!(
                err.to_string().contains(reason_part),
                "{envelope}: {err} should mention {reason_part}"
            );
        }
    }

    #[test]
    fn key_id_is_sixteen_hex_chars_of_sha256() {
        let id = key_id(&[0u8; 32]);
        assert_eq!(id.len(), 16);
        assert_eq!(id, &hex::encode(Sha256::digest([0u8; 32]))[..16]);
    }

    #[test]
    fn values_with_json_special_characters_round_trip() {
        let key = fixed_key(5);
        let value = "quote\" back\\slash \n newline ünïcode";
        let envelope = seal(&public_of(&key), "ns", "N", value).expect("seals");
        let opened = unseal(&key, &envelope, "ns", "N").expect("opens");
        assert_eq!(opened.as_str(), value);
    }
}
