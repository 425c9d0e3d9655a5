//! Response decoding: what a 2xx body becomes in JavaScript, and the excerpt of a non-2xx
//! body quoted in the error (redacted before it is cut).

use base64::Engine as _;
use serde_json::{Value, json};

use crate::redact::Redactor;

/// How much of a non-2xx body (after redaction) is quoted in the error.
pub const ERROR_BODY_PREFIX: usize = 512;

/// A 2xx body that cannot become a JavaScript value.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The content type says JSON, the body is not.
    #[error("response is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
}

/// Converts a 2xx response body into the value JavaScript receives (before redaction):
/// JSON content types parse, text becomes a string, anything else `{contentType, base64}`,
/// an empty body `null`.
///
/// # Errors
/// [`ResponseError::NotJson`] when a JSON content type carries something else.
pub fn response_value(content_type: Option<&str>, body: &[u8]) -> Result<Value, ResponseError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let essence = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_json = essence == "application/json" || essence.ends_with("+json");
    let is_text = essence.starts_with("text/")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/xml" | "application/javascript" | "application/x-www-form-urlencoded"
        );
    if is_json {
        return serde_json::from_slice(body).map_err(ResponseError::NotJson);
    }
    if is_text || essence.is_empty() {
        if let Ok(s) = std::str::from_utf8(body) {
            return Ok(Value::String(s.to_owned()));
        }
        if is_text {
            return Ok(Value::String(String::from_utf8_lossy(body).into_owned()));
        }
    }
    Ok(json!({
        "contentType": content_type.unwrap_or("application/octet-stream"),
        "base64": base64::engine::general_purpose::STANDARD.encode(body),
    }))
}

/// The first [`ERROR_BODY_PREFIX`] bytes of a non-2xx body as text, redacted before the cut
/// (a secret straddling byte 512 is replaced whole, not cut to a prefix).
pub fn error_excerpt(body: &[u8], redactor: &Redactor) -> String {
    redactor
        .redact_capped(&String::from_utf8_lossy(body), ERROR_BODY_PREFIX)
        .text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_map_to_json_text_or_base64() {
        assert_eq!(
            response_value(Some("application/json; charset=utf-8"), br#"{"a":1}"#).expect("json"),
            json!({"a": 1})
        );
        assert_eq!(
            response_value(Some("text/plain"), b"hi").expect("text"),
            json!("hi")
        );
        assert_eq!(
            response_value(Some("image/png"), &[0, 159, 146, 150]).expect("binary"),
            json!({"contentType": "image/png", "base64": "AJ+Slg=="})
        );
        assert_eq!(response_value(None, b"").expect("empty"), Value::Null);
        assert!(response_value(Some("application/json"), b"{").is_err());
    }

    #[test]
    fn an_error_excerpt_is_redacted_before_it_is_cut() {
        let redactor = Redactor::new(["sk-test-7f3a9c"]);
        for pad in 499..=511 {
            let body = format!("{}sk-test-7f3a9c tail", "x".repeat(pad));
            let excerpt = error_excerpt(body.as_bytes(), &redactor);
            assert!(excerpt.len() <= ERROR_BODY_PREFIX, "{pad}");
            assert!(!excerpt.contains("sk-"), "{pad}: {excerpt}");
        }
        assert_eq!(error_excerpt(b"short", &redactor), "short");
    }
}
