//! Canonical digests that bind approvals to exact content.
//!
//! **Spec digest algorithm** (`status.specDigest`, `sha256:<64 hex>`):
//! 1. Take the Permit spec as the API server stores it (defaults applied) and decode it into
//!    [`PermitSpec`]; unknown fields are pruned by the schema, so they cannot hide in it.
//! 2. Normalise order where order has no meaning: `secrets` are sorted (by their bytes), each
//!    capability's `methods` are sorted in the fixed order `GET, HEAD, POST, PUT, PATCH, DELETE,
//!    OPTIONS` (the declaration order of [`crate::HttpMethod`], not alphabetical), and
//!    `capabilities` are sorted by `name` (names are unique). Path globs, body keys
//!    and other lists keep their order.
//! 3. Serialise to canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant
//!    whitespace, strings with serde_json's minimal escaping, integers in plain decimal.
//!    Optional fields that are unset are omitted, so adding a new optional field in a later
//!    version does not change existing digests.
//! 4. Hash `"oauth3.dev/v1alpha1/PermitSpec\n"` followed by that JSON with SHA-256. The prefix
//!    separates Permit digests from any other digest computed the same way.
//!
//! The result is identical for any two specs that differ only in field order, whitespace or
//! the order of set-like lists, and different for any change an approver could care about.
//!
//! **Code digest**: `sha256:` + hex SHA-256 of the UTF-8 bytes of `Execution.spec.code`, with no
//! normalisation: one changed byte is new code.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::permit::PermitSpec;

/// Domain-separation prefix of spec digests.
pub const SPEC_DIGEST_DOMAIN: &str = "oauth3.dev/v1alpha1/PermitSpec\n";

/// Errors computing a digest.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The spec could not be serialised (a bug in the types, never user input).
    #[error("serialising the Permit spec for its digest: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The canonical digest of a Permit spec, `sha256:<hex>`. See the module docs for the algorithm.
///
/// # Errors
/// Only if serialisation fails, which the types rule out.
pub fn spec_digest(spec: &PermitSpec) -> Result<String, DigestError> {
    let mut spec = spec.clone();
    spec.secrets.sort();
    spec.capabilities.sort_by(|a, b| a.name.cmp(&b.name));
    for c in &mut spec.capabilities {
        c.methods.sort();
    }
    let value = serde_json::to_value(&spec)?;
    let mut hasher = Sha256::new();
    hasher.update(SPEC_DIGEST_DOMAIN.as_bytes());
    hasher.update(canonical_json(&value).as_bytes());
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The digest of a piece of code, `sha256:<hex>` of its exact bytes.
pub fn code_digest(code: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(code.as_bytes())))
}

/// Prefix hashed before TypeScript code: the same bytes can mean another program as TypeScript
/// (`a < b > (c)` is a generic call there, two comparisons in JavaScript), so trusting one
/// never trusts the other.
pub const TYPESCRIPT_CODE_DOMAIN: &str = "oauth3 code v1 typescript\n";

/// The digest of code in `language`: [`code_digest`] of the bytes for JavaScript, and for
/// TypeScript `sha256:<hex>` of [`TYPESCRIPT_CODE_DOMAIN`] followed by the bytes.
pub fn code_digest_in(code: &str, language: crate::CodeLanguage) -> String {
    match language {
        crate::CodeLanguage::JavaScript => code_digest(code),
        crate::CodeLanguage::TypeScript => {
            let mut hasher = Sha256::new();
            hasher.update(TYPESCRIPT_CODE_DOMAIN.as_bytes());
            hasher.update(code.as_bytes());
            format!("sha256:{}", hex::encode(hasher.finalize()))
        }
    }
}

/// Canonical JSON text of a value: keys sorted by UTF-8 bytes, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> PermitSpec {
        serde_json::from_value(v).expect("valid spec")
    }

    fn github() -> Value {
        json!({
            "description": "File issues on owner/repo",
            "capabilities": [
                {"name": "github", "baseUrl": "https://api.github.com",
                 "paths": ["/repos/owner/repo/issues", "/repos/owner/repo/issues/*"],
                 "methods": ["GET", "POST"],
                 "auth": {"header": "Authorization", "value": "Bearer {GITHUB_TOKEN}"}},
                {"name": "status", "baseUrl": "https://status.example", "paths": ["/"], "methods": ["GET"]}
            ],
            "secrets": ["GITHUB_TOKEN", "OTHER"],
            "validFor": "24h"
        })
    }

    #[test]
    fn digest_has_the_documented_form() {
        let d = spec_digest(&spec(github())).expect("digest");
        assert!(d.starts_with("sha256:"));
        assert_eq!(d.len(), "sha256:".len() + 64);
        assert!(
            d["sha256:".len()..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn digest_is_stable_across_field_order_and_whitespace() {
        let a = spec(github());
        let text = r#"{ "validFor":"24h","secrets":["GITHUB_TOKEN","OTHER"],
            "capabilities":[{"methods":["GET","POST"],"paths":["/repos/owner/repo/issues","/repos/owner/repo/issues/*"],
            "baseUrl":"https://api.github.com","name":"github",
            "auth":{"value":"Bearer {GITHUB_TOKEN}","header":"Authorization"}},
            {"paths":["/"],"name":"status","methods":["GET"],"baseUrl":"https://status.example"}],
            "description":"File issues on owner/repo" }"#;
        let b: PermitSpec = serde_json::from_str(text).expect("parses");
        assert_eq!(spec_digest(&a).expect("a"), spec_digest(&b).expect("b"));
    }

    #[test]
    fn digest_ignores_order_of_set_like_lists() {
        let mut v = github();
        v["secrets"] = json!(["OTHER", "GITHUB_TOKEN"]);
        v["capabilities"][0]["methods"] = json!(["POST", "GET"]);
        let caps = v["capabilities"].as_array().expect("array").clone();
        v["capabilities"] = json!([caps[1], caps[0]]);
        assert_eq!(
            spec_digest(&spec(v)).expect("reordered"),
            spec_digest(&spec(github())).expect("original")
        );
    }

    #[test]
    fn digest_changes_with_every_meaningful_edit() {
        let base = spec_digest(&spec(github())).expect("base");
        type Edit = Box<dyn Fn(&mut Value)>;
        let edits: Vec<(&str, Edit)> = vec![
            (
                "description",
                Box::new(|v| v["description"] = json!("File issues")),
            ),
            (
                "path",
                Box::new(|v| v["capabilities"][0]["paths"][1] = json!("/repos/owner/repo/**")),
            ),
            (
                "path order",
                Box::new(|v| {
                    v["capabilities"][0]["paths"] =
                        json!(["/repos/owner/repo/issues/*", "/repos/owner/repo/issues"])
                }),
            ),
            (
                "method",
                Box::new(|v| v["capabilities"][0]["methods"] = json!(["GET", "DELETE"])),
            ),
            (
                "baseUrl",
                Box::new(|v| v["capabilities"][0]["baseUrl"] = json!("https://api.github.com/")),
            ),
            (
                "auth",
                Box::new(|v| v["capabilities"][0]["auth"]["value"] = json!("token {GITHUB_TOKEN}")),
            ),
            ("validFor", Box::new(|v| v["validFor"] = json!("25h"))),
            ("maxExecutions", Box::new(|v| v["maxExecutions"] = json!(5))),
            (
                "codeReview",
                Box::new(|v| v["codeReview"] = json!("perCode")),
            ),
            (
                "rateLimit",
                Box::new(|v| {
                    v["capabilities"][1]["rateLimit"] = json!({"requests": 1, "perSeconds": 1})
                }),
            ),
            (
                "secret dropped",
                Box::new(|v| v["secrets"] = json!(["GITHUB_TOKEN"])),
            ),
        ];
        for (what, edit) in edits {
            let mut v = github();
            edit(&mut v);
            assert_ne!(
                spec_digest(&spec(v)).expect("edited"),
                base,
                "edit of {what} kept the digest"
            );
        }
    }

    #[test]
    fn digest_treats_defaults_and_explicit_defaults_alike() {
        let mut explicit = github();
        explicit["codeReview"] = json!("none");
        explicit["validFor"] = json!("24h");
        let mut implicit = github();
        implicit.as_object_mut().expect("object").remove("validFor");
        assert_eq!(
            spec_digest(&spec(explicit)).expect("explicit"),
            spec_digest(&spec(implicit)).expect("implicit")
        );
    }

    #[test]
    fn canonical_json_sorts_keys_recursively_and_has_no_whitespace() {
        let v = json!({"b": {"z": 1, "a": [true, null, "x\"y"]}, "a": 2});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":2,"b":{"a":[true,null,"x\"y"],"z":1}}"#
        );
    }

    #[test]
    fn code_digest_changes_with_one_byte() {
        let a = code_digest("return 1");
        assert_eq!(a, code_digest("return 1"));
        assert_ne!(a, code_digest("return 1 "));
        // Known vector: sha256("") .
        assert_eq!(
            code_digest(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn methods_are_ordered_get_head_post_put_patch_delete_options_in_the_digest() {
        let spec: PermitSpec = serde_json::from_value(json!({
            "description": "d",
            "capabilities": [{"name": "api", "baseUrl": "https://api.example", "paths": ["/"],
                "methods": ["OPTIONS", "DELETE", "PATCH", "PUT", "POST", "HEAD", "GET"]}]
        }))
        .expect("spec");
        let mut value = serde_json::to_value(&spec).expect("json");
        value["capabilities"][0]["methods"] =
            json!(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
        let mut hasher = Sha256::new();
        hasher.update(SPEC_DIGEST_DOMAIN.as_bytes());
        hasher.update(canonical_json(&value).as_bytes());
        let documented = format!("sha256:{}", hex::encode(hasher.finalize()));
        assert_eq!(
            spec_digest(&spec).expect("digest"),
            documented,
            "methods hash in the documented order, not alphabetically"
        );
    }
}
