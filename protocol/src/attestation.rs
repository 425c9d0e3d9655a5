//! The 64-byte `report_data` an attestation quote carries, defined once: what a runner asks
//! its quote provider to bind, and what `kubectl oauth3 verify` and `seal --attestation`
//! recompute.
//!
//! `report_data = SHA-512(tag || "\n" || value)`, where for a **result** the tag is
//! [`STATEMENT_TAG`] and the value the result's statement digest as text (`sha256:<hex>`),
//! and for the **enclave key** the tag is [`ENCLAVE_KEY_TAG`] and the value the X25519 public
//! key as 64 lower-case hex characters. The two tags keep a quote over a key from ever
//! passing for a quote over a result, and the other way round. The test vector below is the
//! one documented in `sandbox-runner/README.md`.
//!
//! Where a quote provider takes text rather than bytes (Confidential Containers' attestation
//! agent reads `runtime_data` as a UTF-8 query value of at most 64 bytes), the runner sends
//! the lower-case hex of the first 32 bytes of the report data, and the quote's REPORTDATA
//! holds those 64 ASCII characters: [`quote_report_data`] says which bytes a quote from each
//! provider must carry.

use sha2::{Digest, Sha512};

/// Domain tag of the report data that binds a result's statement digest.
pub const STATEMENT_TAG: &str = "oauth3.dev/v1alpha1/statement";
/// Domain tag of the report data that binds the enclave's sealed-secret public key.
pub const ENCLAVE_KEY_TAG: &str = "oauth3.dev/v1alpha1/enclave-key";

/// Length of a TDX report data field.
pub const REPORT_DATA_LEN: usize = 64;

fn tagged(tag: &str, value: &str) -> [u8; REPORT_DATA_LEN] {
    let mut hasher = Sha512::new();
    hasher.update(tag.as_bytes());
    hasher.update(b"\n");
    hasher.update(value.as_bytes());
    hasher.finalize().into()
}

/// The report data that binds a result whose statement digest is `statement_digest`
/// (`sha256:<hex>`, exactly as in the result).
pub fn statement_report_data(statement_digest: &str) -> [u8; REPORT_DATA_LEN] {
    tagged(STATEMENT_TAG, statement_digest)
}

/// The report data that binds the enclave's X25519 public key.
pub fn enclave_key_report_data(public_key: &[u8; 32]) -> [u8; REPORT_DATA_LEN] {
    tagged(ENCLAVE_KEY_TAG, &hex::encode(public_key))
}

/// What a quote provider is handed to bind `report_data` (see [`quote_report_data`]).
pub fn coco_runtime_data(report_data: &[u8; REPORT_DATA_LEN]) -> String {
    hex::encode(&report_data[..32])
}

/// The 64 REPORTDATA bytes a quote over `report_data` carries when it comes from a provider
/// that takes text (`text_provider`: Confidential Containers' attestation agent), or exactly
/// `report_data` otherwise (dstack, configfs-tsm).
pub fn quote_report_data(
    report_data: &[u8; REPORT_DATA_LEN],
    text_provider: bool,
) -> [u8; REPORT_DATA_LEN] {
    if !text_provider {
        return *report_data;
    }
    let mut out = [0u8; REPORT_DATA_LEN];
    out.copy_from_slice(coco_runtime_data(report_data).as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statement digest of the documented vector: `sha256("")`.
    const VECTOR_DIGEST: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn the_statement_binding_matches_the_documented_test_vector() {
        assert_eq!(
            hex::encode(statement_report_data(VECTOR_DIGEST)),
            "ad1aa0ccc9cd7f30675eda7e185a1dc586bd9012af1203c3fe278ddd8f3098ad\
             2c5f8ef216cd1204673aa6173c47c4acfe147cf478adcea4207ffcbb75608c10"
        );
    }

    #[test]
    fn the_key_binding_matches_the_documented_test_vector() {
        assert_eq!(
            hex::encode(enclave_key_report_data(&[0x11; 32])),
            "55b70cc551e70de43724141aa6721eb5b4df618320a392f809568e34c39a50b7\
             0a7ea0d1104fd26f665027fd2a3ff8901f44dfb9710a486757c33d5a22d633c6"
        );
    }

    #[test]
    fn a_text_provider_carries_the_hex_of_the_first_half() {
        let data = statement_report_data(VECTOR_DIGEST);
        let quoted = quote_report_data(&data, true);
        assert_eq!(&quoted[..], coco_runtime_data(&data).as_bytes());
        assert_eq!(&quoted[..8], b"ad1aa0cc");
        assert_eq!(quote_report_data(&data, false), data);
    }

    #[test]
    fn a_key_quote_never_passes_for_a_statement_quote() {
        let key = [0xab; 32];
        assert_ne!(
            enclave_key_report_data(&key),
            statement_report_data(&hex::encode(key))
        );
        assert_ne!(
            statement_report_data(VECTOR_DIGEST),
            statement_report_data(&VECTOR_DIGEST.replace('e', "f"))
        );
    }
}
