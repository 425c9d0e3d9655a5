//! Request-body rules: encoding, key allow/deny lists (dotted paths), size cap.

use serde_json::Value;

use super::{CompiledBody, kind};

/// Content type of JSON bodies.
pub(crate) const JSON: &str = "application/json";
/// Content type of raw bodies (unless the agent sets one, which `allowRaw` permits).
pub(crate) const RAW: &str = "text/plain; charset=utf-8";

/// Encodes a body argument and checks it; returns the bytes and content type.
pub(crate) fn encode(
    body: &Value,
    rules: &CompiledBody,
    cap: &str,
) -> Result<(Vec<u8>, String), String> {
    let (bytes, parsed, ct) = match body {
        Value::Object(_) | Value::Array(_) => (
            serde_json::to_vec(body).map_err(|e| format!("body for {cap}: {e}"))?,
            Some(body.clone()),
            JSON,
        ),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v) => (s.as_bytes().to_vec(), Some(v), JSON),
            Err(_) if rules.allow_raw => (s.as_bytes().to_vec(), None, RAW),
            Err(_) => {
                return Err(format!(
                    "body for {cap} must be JSON (an object, an array or a JSON string); this capability does not allow raw bodies"
                ));
            }
        },
        other => {
            return Err(format!(
                "body for {cap} must be an object, an array or a string; got {}",
                kind(other)
            ));
        }
    };
    if bytes.len() > rules.max_bytes {
        return Err(format!(
            "body for {cap} is {} bytes; allowed: at most {} bytes",
            bytes.len(),
            rules.max_bytes
        ));
    }
    if let Some(v) = parsed {
        check_keys(&v, rules, cap)?;
    }
    Ok((bytes, ct.to_owned()))
}

/// Checks JSON keys against `allowKeys` and `denyKeys`.
pub(crate) fn check_keys(v: &Value, rules: &CompiledBody, cap: &str) -> Result<(), String> {
    if rules.allow_keys.is_none() && rules.deny_keys.is_empty() {
        return Ok(());
    }
    walk(v, "", rules, cap, true)
}

fn under(path: &str, key: &str) -> bool {
    path == key
        || path
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('.'))
}

fn walk(
    v: &Value,
    prefix: &str,
    rules: &CompiledBody,
    cap: &str,
    check_allow: bool,
) -> Result<(), String> {
    match v {
        Value::Array(items) => {
            for item in items {
                walk(item, prefix, rules, cap, check_allow)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, child) in map {
                if k.contains('.') {
                    return Err(format!(
                        "body key {k:?} for {cap} contains a dot, which key rules cannot tell from nesting"
                    ));
                }
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if let Some(d) = rules.deny_keys.iter().find(|d| under(&path, d)) {
                    return Err(format!(
                        "body key {path} is denied for {cap} (denyKeys: {d})"
                    ));
                }
                let mut recurse_allow = false;
                if check_allow && let Some(allow) = &rules.allow_keys {
                    if allow.iter().any(|a| under(&path, a)) {
                        recurse_allow = false;
                    } else if allow.iter().any(|a| under(a, &path))
                        && matches!(child, Value::Object(_) | Value::Array(_))
                    {
                        recurse_allow = true;
                    } else {
                        return Err(format!(
                            "body key {path} not allowed for {cap}; allowed: {}",
                            allow.join(", ")
                        ));
                    }
                }
                walk(child, &path, rules, cap, recurse_allow)?;
            }
            Ok(())
        }
        _ => {
            if check_allow && !prefix.is_empty() {
                // A parent of an allowed key that holds an array of scalars.
                return Err(format!(
                    "body key {prefix} for {cap} may only hold the allowed nested keys"
                ));
            }
            Ok(())
        }
    }
}
