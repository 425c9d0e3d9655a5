//! Key providers: where the runner's X25519 sealed-secret key comes from (dstack, KBS, dev).
//!
//! Every provider yields the same thing, a [`crypto_box::SecretKey`], behind one trait, so the
//! rest of the runner does not care whether the key was derived by a TEE's key service or read
//! from a development file. Key bytes live only in zeroize-on-drop buffers.

use std::path::PathBuf;

use crypto_box::SecretKey;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::SecretsError;
use crate::host::BoxFuture;
use crate::local_http::{self as http, Endpoint, Request};

/// A source of the enclave's sealed-secret key.
pub trait KeyProvider: Send + Sync {
    /// Short provider name used in errors and logs (`dstack`, `kbs`, `dev`).
    fn name(&self) -> &'static str;
    /// The X25519 secret key sealed secrets are opened with.
    fn secret_key(&self) -> BoxFuture<'_, Result<SecretKey, SecretsError>>;
}

/// Interprets key material as 32 raw bytes or 64 hex characters (surrounding whitespace
/// ignored). Pure.
pub fn key_from_material(
    provider: &'static str,
    material: &[u8],
) -> Result<Zeroizing<[u8; 32]>, SecretsError> {
    let mut key = Zeroizing::new([0u8; 32]);
    if material.len() == 32 {
        key.copy_from_slice(material);
        return Ok(key);
    }
    let trimmed = material.trim_ascii();
    if trimmed.len() == 64 && hex::decode_to_slice(trimmed, &mut key[..]).is_ok() {
        return Ok(key);
    }
    Err(SecretsError::KeyMaterial {
        provider,
        reason: "expected 32 raw bytes or 64 hex characters",
    })
}

/// Turns a dstack-derived key (hex) into a 32-byte X25519 secret: exactly 32 bytes are used
/// as they are; a longer key is reduced with SHA-256; a shorter one is refused. Pure.
pub fn key_from_dstack_hex(hex_key: &str) -> Result<Zeroizing<[u8; 32]>, SecretsError> {
    let text = hex_key.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let bytes = Zeroizing::new(hex::decode(text).map_err(|_| SecretsError::KeyMaterial {
        provider: DSTACK,
        reason: "the key is not hexadecimal",
    })?);
    let mut key = Zeroizing::new([0u8; 32]);
    match bytes.len() {
        32 => key.copy_from_slice(&bytes),
        n if n > 32 => key.copy_from_slice(&Sha256::digest(&bytes[..])),
        _ => {
            return Err(SecretsError::KeyMaterial {
                provider: DSTACK,
                reason: "the key is shorter than 32 bytes",
            });
        }
    }
    Ok(key)
}

const DSTACK: &str = "dstack";
const KBS: &str = "kbs";
const DEV: &str = "dev";

/// The dstack guest agent's `GetKey`: a key derived from the app's identity inside the CVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DstackProvider {
    /// A unix socket path, or an `http://host:port` base URL (e.g. the dstack simulator).
    pub endpoint: String,
    /// The key derivation path passed to `GetKey`.
    pub key_path: String,
}

impl DstackProvider {
    /// The guest agent's default socket.
    pub const DEFAULT_ENDPOINT: &'static str = "/var/run/dstack.sock";
    /// The default derivation path for the sealed-secrets key.
    pub const DEFAULT_KEY_PATH: &'static str = "oauth3/sealed-secrets/v1";
    /// The `purpose` sent with every `GetKey`.
    pub const PURPOSE: &'static str = "oauth3-sealed-secrets";

    /// A provider talking to `endpoint` with the default key path.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            key_path: Self::DEFAULT_KEY_PATH.to_owned(),
        }
    }

    /// The same provider with another key derivation path.
    #[must_use]
    pub fn with_key_path(mut self, key_path: impl Into<String>) -> Self {
        self.key_path = key_path.into();
        self
    }

    /// The JSON body of the `GetKey` request (pure).
    pub fn get_key_request(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.key_path,
            "purpose": Self::PURPOSE,
            "algorithm": "secp256k1",
        })
    }

    async fn fetch(&self) -> Result<SecretKey, SecretsError> {
        let endpoint = endpoint_of(DSTACK, &self.endpoint)?;
        let body = serde_json::to_vec(&self.get_key_request()).map_err(|_| {
            SecretsError::ProviderResponse {
                provider: DSTACK,
                reason: "the GetKey request could not be encoded",
            }
        })?;
        let response = http::exchange(
            &endpoint,
            &Request {
                method: "POST",
                path: "/GetKey",
                unix_host: "dstack",
                json_body: Some(&body),
            },
        )
        .await
        .map_err(|e| SecretsError::exchange(DSTACK, e))?;
        if response.status != 200 {
            return Err(SecretsError::ProviderStatus {
                provider: DSTACK,
                step: "GetKey",
                status: response.status,
                message: error_message(&response.body),
            });
        }
        let parsed: GetKeyResponse =
            serde_json::from_slice(&response.body).map_err(|_| SecretsError::ProviderResponse {
                provider: DSTACK,
                reason: "the GetKey answer is not JSON with a `key` field",
            })?;
        let key = key_from_dstack_hex(&parsed.key)?;
        Ok(SecretKey::from(*key))
    }
}

impl Default for DstackProvider {
    fn default() -> Self {
        Self::new(Self::DEFAULT_ENDPOINT)
    }
}

/// The `GetKey` answer; `signature_chain` (proof the key came from the KMS) is not needed to
/// open secrets and is ignored. No `Debug`: it holds the key.
#[derive(Deserialize)]
struct GetKeyResponse {
    key: Zeroizing<String>,
}

impl KeyProvider for DstackProvider {
    fn name(&self) -> &'static str {
        DSTACK
    }

    fn secret_key(&self) -> BoxFuture<'_, Result<SecretKey, SecretsError>> {
        Box::pin(self.fetch())
    }
}

/// Confidential Containers' guest resource endpoint (`/cdh/resource/<repo>/<type>/<tag>`),
/// which releases a KBS resource to an attested pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsProvider {
    /// Base URL of the endpoint (`http://host:port`).
    pub base_url: String,
    /// The resource, `<repository>/<type>/<tag>`.
    pub resource: String,
}

impl KbsProvider {
    /// The endpoint's default address inside a pod.
    pub const DEFAULT_BASE_URL: &'static str = "http://127.0.0.1:8006";
    /// The default resource holding the sealing key.
    pub const DEFAULT_RESOURCE: &'static str = "default/oauth3/sealing-key";

    /// A provider for `base_url` with the default resource.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            resource: Self::DEFAULT_RESOURCE.to_owned(),
        }
    }

    /// The same provider with another `<repository>/<type>/<tag>` resource.
    #[must_use]
    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    async fn fetch(&self) -> Result<SecretKey, SecretsError> {
        let endpoint = endpoint_of(KBS, &self.base_url)?;
        if !matches!(endpoint, Endpoint::Tcp { .. }) {
            return Err(SecretsError::ProviderEndpoint {
                provider: KBS,
                endpoint: self.base_url.clone(),
                reason: "the resource endpoint must be an http:// URL",
            });
        }
        let resource = self.resource.trim_matches('/');
        if resource.split('/').count() != 3 || resource.split('/').any(str::is_empty) {
            return Err(SecretsError::ProviderEndpoint {
                provider: KBS,
                endpoint: self.resource.clone(),
                reason: "the resource must be <repository>/<type>/<tag>",
            });
        }
        let path = format!("/cdh/resource/{resource}");
        let response = http::exchange(
            &endpoint,
            &Request {
                method: "GET",
                path: &path,
                unix_host: "localhost",
                json_body: None,
            },
        )
        .await
        .map_err(|e| SecretsError::exchange(KBS, e))?;
        if response.status != 200 {
            return Err(SecretsError::ProviderStatus {
                provider: KBS,
                step: "getting the resource",
                status: response.status,
                message: error_message(&response.body),
            });
        }
        let key = key_from_material(KBS, &response.body)?;
        Ok(SecretKey::from(*key))
    }
}

impl Default for KbsProvider {
    fn default() -> Self {
        Self::new(Self::DEFAULT_BASE_URL)
    }
}

impl KeyProvider for KbsProvider {
    fn name(&self) -> &'static str {
        KBS
    }

    fn secret_key(&self) -> BoxFuture<'_, Result<SecretKey, SecretsError>> {
        Box::pin(self.fetch())
    }
}

/// Where a development key comes from. `Debug` never prints the key.
pub enum DevKey {
    /// 64 hex characters.
    Hex(Zeroizing<String>),
    /// A file holding 32 raw bytes or 64 hex characters.
    File(PathBuf),
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hex(_) => f.write_str("DevKey::Hex(<redacted>)"),
            Self::File(path) => f.debug_tuple("DevKey::File").field(path).finish(),
        }
    }
}

/// A software key, for development and tests only: it gives no confidentiality, so it is
/// refused unless the runner was started with `--insecure-dev-key`.
pub struct DevProvider {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DevProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevProvider").finish_non_exhaustive()
    }
}

impl DevProvider {
    /// Loads the key; refuses with [`SecretsError::DevKeyRefused`] unless `insecure` is true.
    pub fn new(key: DevKey, insecure: bool) -> Result<Self, SecretsError> {
        if !insecure {
            return Err(SecretsError::DevKeyRefused);
        }
        let key = match key {
            DevKey::Hex(text) => key_from_material(DEV, text.as_bytes())?,
            DevKey::File(path) => {
                let bytes = Zeroizing::new(std::fs::read(&path).map_err(|source| {
                    SecretsError::DevKeyRead {
                        path: path.clone(),
                        source,
                    }
                })?);
                key_from_material(DEV, &bytes)?
            }
        };
        Ok(Self { key })
    }

    /// The public key to seal secrets to (safe to share).
    pub fn public_key(&self) -> [u8; 32] {
        *SecretKey::from(*self.key).public_key().as_bytes()
    }
}

impl KeyProvider for DevProvider {
    fn name(&self) -> &'static str {
        DEV
    }

    fn secret_key(&self) -> BoxFuture<'_, Result<SecretKey, SecretsError>> {
        let key = SecretKey::from(*self.key);
        Box::pin(async move { Ok(key) })
    }
}

fn endpoint_of(provider: &'static str, endpoint: &str) -> Result<Endpoint, SecretsError> {
    http::parse_endpoint(endpoint).map_err(|reason| SecretsError::ProviderEndpoint {
        provider,
        endpoint: endpoint.to_owned(),
        reason,
    })
}

/// The message of an error answer: the `error` field of a JSON body, else a short, printable
/// prefix of the body. Only ever applied to non-200 answers, which carry no key.
pub(crate) fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return parsed.error;
    }
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_material_accepts_raw_bytes_and_hex() {
        let raw = [0xabu8; 32];
        assert_eq!(*key_from_material("t", &raw).expect("raw"), raw);
        let hex_text = format!("{}\n", hex::encode(raw));
        assert_eq!(
            *key_from_material("t", hex_text.as_bytes()).expect("hex"),
            raw
        );
        let err = key_from_material("t", b"too short").expect_err("short");
        assert!(err.to_string().contains("32 raw bytes or 64 hex"));
        assert!(
            !err.to_string().contains("too short"),
            "content never echoed"
        );
    }

    #[test]
    fn dstack_keys_longer_than_32_bytes_are_reduced_with_sha256() {
        let long = [7u8; 64];
        let key = key_from_dstack_hex(&hex::encode(long)).expect("long key");
        assert_eq!(key.as_slice(), Sha256::digest(long).as_slice());
        let exact = key_from_dstack_hex(&format!("0x{}", hex::encode([9u8; 32]))).expect("exact");
        assert_eq!(*exact, [9u8; 32]);
        assert!(key_from_dstack_hex(&hex::encode([1u8; 16])).is_err());
        assert!(key_from_dstack_hex("zz").is_err());
    }

    #[test]
    fn dev_provider_is_refused_without_the_insecure_flag() {
        let err = DevProvider::new(DevKey::Hex(Zeroizing::new(hex::encode([1u8; 32]))), false)
            .expect_err("refused");
        assert!(err.to_string().contains("--insecure-dev-key"), "{err}");
    }

    #[tokio::test]
    async fn dev_provider_with_the_flag_yields_its_key_and_never_prints_it() {
        let hex_key = hex::encode([0x42u8; 32]);
        let provider =
            DevProvider::new(DevKey::Hex(Zeroizing::new(hex_key.clone())), true).expect("allowed");
        let key = provider.secret_key().await.expect("key");
        assert_eq!(key.to_bytes(), [0x42u8; 32]);
        assert_eq!(provider.public_key(), *key.public_key().as_bytes());
        assert!(!format!("{provider:?}").contains(&hex_key));
        let source = DevKey::Hex(Zeroizing::new(hex_key.clone()));
        assert!(!format!("{source:?}").contains(&hex_key));
    }

    #[test]
    fn dev_provider_reads_a_key_file_and_names_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("oauth3-devkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("key");
        std::fs::write(&file, [5u8; 32]).expect("write key");
        let provider = DevProvider::new(DevKey::File(file.clone()), true).expect("reads");
        assert_eq!(
            provider.public_key(),
            *SecretKey::from([5u8; 32]).public_key().as_bytes()
        );
        let missing = dir.join("missing");
        let err = DevProvider::new(DevKey::File(missing), true).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn dstack_get_key_request_names_path_purpose_and_algorithm() {
        let provider = DstackProvider::default().with_key_path("a/b");
        assert_eq!(provider.endpoint, "/var/run/dstack.sock");
        assert_eq!(
            provider.get_key_request(),
            serde_json::json!({"path": "a/b", "purpose": "oauth3-sealed-secrets", "algorithm": "secp256k1"})
        );
    }

    #[test]
    fn error_message_prefers_the_json_error_field() {
        assert_eq!(error_message(br#"{"error":"no such key"}"#), "no such key");
        assert_eq!(error_message(b"plain\ntext"), "plaintext");
        assert_eq!(error_message(b""), "(empty body)");
    }
}
