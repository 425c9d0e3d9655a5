//! Who may call the proxy: the client's token reviewed by a [`ClientAuth`], the answer cached
//! briefly by token digest (never by the token itself).
//!
//! [`TokenFile`] is the local review (development): a file of `sha256:<hex> <identity>`
//! lines, one per accepted token. [`OperatorReview`] asks the operator over the run's callback
//! channel ([`oauth3_protocol::proxy::REVIEW_PATH`], the callback token as bearer), which
//! answers with TokenReview and SubjectAccessReview on `permits/proxy`: the runner itself
//! never holds API-server credentials.

use std::collections::HashMap;
use std::path::Path;

use oauth3_protocol::callback::token_digest;
use oauth3_protocol::proxy::{REVIEW_PATH, RefusalKind, ReviewAnswer, ReviewRequest};
use zeroize::Zeroizing;

use crate::bundle::Callback;
use crate::callback::CallbackError;

use crate::host::BoxFuture;

/// A refused client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRefusal {
    /// `unauthenticated` or `forbidden`.
    pub kind: RefusalKind,
    /// Why, safe to show (never the token).
    pub reason: String,
}

/// Reviews client tokens.
pub trait ClientAuth: Send + Sync {
    /// The identity `token` authenticates, if it may call this Permit's proxy.
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<String, AuthRefusal>>;
}

/// Why a token file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Reading the file failed.
    #[error("reading the client token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `sha256:<64 hex> <identity>`.
    #[error("client token file line {line}: expected `sha256:<64 hex digits> <identity>`")]
    Line {
        /// 1-based line number.
        line: usize,
    },
}

/// Accepts the tokens whose digests a file lists, each as its identity.
#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    identities: HashMap<String, String>,
}

impl TokenFile {
    /// Parses `sha256:<hex> <identity>` lines (blank lines and `#` comments skipped).
    ///
    /// # Errors
    /// The first malformed line.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut identities = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || TokenFileError::Line { line: i + 1 };
            let (digest, identity) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
            let hex = digest.strip_prefix("sha256:").ok_or_else(bad)?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            identities.insert(
                format!("sha256:{}", hex.to_ascii_lowercase()),
                identity.trim().to_owned(),
            );
        }
        Ok(Self { identities })
    }

    /// Reads and parses `path`.
    ///
    /// # Errors
    /// Unreadable file or a malformed line.
    pub fn read(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The line that accepts `token` as `identity` (what to write into the file).
    pub fn line_for(token: &str, identity: &str) -> String {
        format!("{} {identity}", token_digest(token))
    }
}

impl ClientAuth for TokenFile {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<String, AuthRefusal>> {
        Box::pin(async move {
            self.identities
                .get(&token_digest(token))
                .cloned()
                .ok_or_else(|| AuthRefusal {
                    kind: RefusalKind::Unauthenticated,
                    reason: "the token is not accepted by this proxy".to_owned(),
                })
        })
    }
}

/// The URL below the callback's origin where the operator reviews client tokens of
/// `namespace/permit`: `{origin}{REVIEW_PATH}/<namespace>/<permit>`.
///
/// # Errors
/// The callback URL is not an absolute URL.
pub fn review_url(callback_url: &str, namespace: &str, permit: &str) -> Result<String, String> {
    channel_url(callback_url, REVIEW_PATH, namespace, permit)
}

/// `{origin of callback_url}{path}/<namespace>/<permit>`: where a proxy talks to the operator.
///
/// # Errors
/// The callback URL is not an absolute URL.
pub fn channel_url(
    callback_url: &str,
    path: &str,
    namespace: &str,
    permit: &str,
) -> Result<String, String> {
    let mut url = url::Url::parse(callback_url)
        .map_err(|e| format!("callback.url: not an absolute URL ({e})"))?;
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| "callback.url: cannot carry a path".to_owned())?
        .clear()
        .extend(path.trim_start_matches('/').split('/'))
        .push(namespace)
        .push(permit);
    Ok(url.to_string())
}

/// Reviews client tokens by asking the operator (`POST {REVIEW_PATH}/<namespace>/<permit>`
/// with a [`ReviewRequest`], the callback token as bearer, the callback's CA trusted, no
/// redirects). An operator that cannot be reached or answers badly refuses the call as
/// `failed` (not cached, so the next call asks again); the client token is never logged.
pub struct OperatorReview {
    client: reqwest::Client,
    url: String,
    token: Zeroizing<String>,
}

impl std::fmt::Debug for OperatorReview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorReview")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl OperatorReview {
    /// A review of `namespace/permit`'s callers through `callback`, trusting `ca_pems` on top
    /// of the callback's own CA.
    ///
    /// # Errors
    /// A refused callback URL or bad CA material.
    pub fn new(
        callback: &Callback,
        namespace: &str,
        permit: &str,
        ca_pems: &[Vec<u8>],
    ) -> Result<Self, CallbackError> {
        let client = crate::callback::callback_client(
            callback,
            ca_pems,
            std::time::Duration::from_secs(10),
        )?;
        let url = review_url(&callback.url, namespace, permit).map_err(CallbackError::Client)?;
        Ok(Self {
            client,
            url,
            token: callback.token.clone(),
        })
    }

    async fn ask(&self, token: &str) -> Result<ReviewAnswer, String> {
        let body = serde_json::to_vec(&ReviewRequest {
            token: token.to_owned(),
        })
        .map_err(|e| e.to_string())?;
        let (status, bytes) =
            crate::callback::post_json(&self.client, &self.url, &self.token, body).await?;
        if !status.is_success() {
            return Err(format!("the operator answered HTTP {}", status.as_u16()));
        }
        serde_json::from_slice(&bytes).map_err(|_| "the operator's answer is malformed".to_owned())
    }
}

impl ClientAuth for OperatorReview {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<String, AuthRefusal>> {
        Box::pin(async move {
            let answer = self.ask(token).await.map_err(|why| AuthRefusal {
                kind: RefusalKind::Failed,
                reason: format!("the token could not be reviewed: {why}"),
            })?;
            match (answer.allowed, answer.identity) {
                (true, Some(identity)) => Ok(identity),
                (true, None) => Err(AuthRefusal {
                    kind: RefusalKind::Failed,
                    reason: "the operator allowed the token without naming who it is".to_owned(),
                }),
                (false, _) => Err(AuthRefusal {
                    kind: match answer.refusal {
                        Some(RefusalKind::Forbidden) => RefusalKind::Forbidden,
                        _ => RefusalKind::Unauthenticated,
                    },
                    reason: answer
                        .reason
                        .unwrap_or_else(|| "the token was not accepted".to_owned()),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_file_accepts_listed_tokens_only() {
        let file = TokenFile::parse(&format!(
            "# agents\n{}\n\n",
            TokenFile::line_for("tok-1", "system:serviceaccount:ns:agent")
        ))
        .expect("parses");
        assert_eq!(
            file.review("tok-1").await,
            Ok("system:serviceaccount:ns:agent".to_owned())
        );
        let refused = file.review("tok-2").await.expect_err("refused");
        assert_eq!(refused.kind, RefusalKind::Unauthenticated);
        assert!(!refused.reason.contains("tok-2"));
    }

    #[test]
    fn the_review_url_sits_below_the_callback_origin() {
        assert_eq!(
            review_url(
                "https://oauth3-operator.oauth3:8443/v1/results/default/x?a=1",
                "team-a",
                "openai"
            ),
            Ok("https://oauth3-operator.oauth3:8443/v1/proxy-review/team-a/openai".to_owned())
        );
        assert!(review_url("not a url", "a", "b").is_err());
    }

    #[test]
    fn a_malformed_token_file_names_the_line() {
        let e = TokenFile::parse("\nplain-token me\n").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "client token file line 2: expected `sha256:<64 hex digits> <identity>`"
        );
    }
}
