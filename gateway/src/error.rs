//! The gateway's one error type and how it answers. Clients treat every non-2xx answer as
//! fatal, so only malformed requests (4xx naming the field), authentication and authorisation
//! (401/403), unknown ids (404) and the gateway's own failures (5xx) are errors; a policy
//! refusal of a well-formed request is a `200 {status: "denied", error}` answer built
//! elsewhere. Every error body is `{"error": "<message>"}` (plus `field` for bad input). No
//! message ever carries a token or a secret value.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: `field` names what is wrong and `message` the rule.
    #[error("{field}: {message}")]
    BadRequest {
        /// The offending field, as a JSON path (`capabilities[0].scope`) or a request part
        /// (`request body`, `id`).
        field: String,
        /// The rule it breaks.
        message: String,
    },
    /// The request body is larger than the gateway accepts.
    #[error("request body: larger than the {limit} bytes this gateway accepts")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No usable credential.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is authenticated but lacks the rights.
    #[error("{0}")]
    Forbidden(String),
    /// No such request or object in the caller's namespace.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with an existing object.
    #[error("{0}")]
    Conflict(String),
    /// A feature this gateway does not have configured.
    #[error("{0}")]
    Unavailable(String),
    /// A Kubernetes API call failed; `step` says what was being done.
    #[error("{step}: the Kubernetes API failed: {source}")]
    Kube {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// Something the gateway did itself failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A malformed-request error naming `field`.
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Wraps a Kubernetes error from `step`.
    pub fn kube(step: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let step = step.into();
        move |source| Self::Kube { step, source }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Kube { .. } => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = match &self {
            Self::BadRequest { field, .. } => json!({"error": self.to_string(), "field": field}),
            _ => json!({"error": self.to_string()}),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The gateway's result type.
pub type ApiResult<T> = Result<T, ApiError>;
