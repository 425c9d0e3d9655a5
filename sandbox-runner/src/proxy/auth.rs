//! Who may call the proxy: the client's token reviewed by a [`ClientAuth`], the answer cached
//! briefly by token digest (never by the token itself).
//!
//! [`TokenFile`] is the local review (development and the process launcher's tests): a file
//! of `sha256:<hex> <identity>` lines, one per accepted token. The operator review (TokenReview
//! and SubjectAccessReview on `permits/proxy`, asked over the callback channel as
//! [`oauth3_protocol::proxy::REVIEW_PATH`] says) plugs in through the same trait.

use std::collections::HashMap;
use std::path::Path;

use oauth3_protocol::callback::token_digest;
use oauth3_protocol::proxy::RefusalKind;

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
    fn a_malformed_token_file_names_the_line() {
        let e = TokenFile::parse("\nplain-token me\n").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "client token file line 2: expected `sha256:<64 hex digits> <identity>`"
        );
    }
}
