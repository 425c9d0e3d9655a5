//! Owner approvals on Telegram: configuration, and the bot that sends each pending Permit (and,
//! with `codeReview: perCode`, each new code digest) to the owner with inline buttons, records
//! the owner's tap in the Permit's status, times out unanswered requests to Denied and answers
//! `/pending` and `/revoke` in the chat.
//!
//! Pure parts: [`callback_data`] (button payloads), [`message`] (what the owner sees),
//! [`decide`] (tap or timeout -> what to write), [`state`] (what was sent). The Bot API and
//! Kubernetes side is [`bot`]; it runs only while this replica leads.

pub mod bot;
pub mod callback_data;
pub mod decide;
pub mod message;
pub mod state;

use std::time::Duration;

use crate::config::TelegramArgs;

/// Field manager of the status writes and state records the Telegram channel makes.
pub const TELEGRAM_FIELD_MANAGER: &str = "oauth3-telegram";

/// Name of the ConfigMap (in the operator's namespace) that records what was sent.
pub const STATE_CONFIGMAP: &str = "oauth3-telegram-state";

/// The public Bot API.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";

/// Why the Telegram channel could not be configured or a step of it failed.
#[derive(Debug, thiserror::Error)]
pub enum TelegramError {
    /// A flag has a bad value; the message names the flag and the rule.
    #[error("{flag}: {rule}")]
    Config {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        rule: String,
    },
    /// A Bot API call failed (the token is never part of the message).
    #[error("Bot API {method}: {message}")]
    BotApi {
        /// The Bot API method.
        method: &'static str,
        /// What went wrong, token redacted.
        message: String,
    },
    /// A Kubernetes API call failed.
    #[error("{step}: {source}")]
    Kube {
        /// What was being done.
        step: String,
        /// The error.
        source: kube::Error,
    },
    /// The object changed between read and write; nothing was written.
    #[error("{0} changed while the decision was being recorded")]
    Conflict(String),
    /// A decision could not be computed (e.g. the spec cannot be digested).
    #[error("{0}")]
    Decision(String),
}

/// The bot token. Never printed: `Debug` shows `<redacted>`.
#[derive(Clone)]
pub struct BotToken(String);

impl BotToken {
    /// Wraps a token.
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token itself, for the Bot API client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token replaced by `<token>`.
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.0, "<token>")
    }
}

impl std::fmt::Debug for BotToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BotToken(<redacted>)")
    }
}

/// A validated Telegram configuration.
#[derive(Debug, Clone)]
pub struct TelegramConfig {
    /// The bot token.
    pub token: BotToken,
    /// Bot API base URL.
    pub api_url: url::Url,
    /// The owner's chat.
    pub chat_id: i64,
    /// Users whose taps count.
    pub owner_ids: Vec<u64>,
    /// Pending longer than this: recorded Denied.
    pub approval_timeout: Duration,
    /// Poll interval.
    pub poll_interval: Duration,
    /// The gateway's public URL, for one-time sign-in links to its approval page.
    pub web_url: Option<url::Url>,
}

fn config_err(flag: &'static str, rule: impl Into<String>) -> TelegramError {
    TelegramError::Config {
        flag,
        rule: rule.into(),
    }
}

impl TelegramConfig {
    /// Validates the flags and reads the token file. `Ok(None)` when no token file is given
    /// (the channel is off).
    ///
    /// # Errors
    /// [`TelegramError::Config`] naming the flag and the rule.
    pub fn from_args(args: &TelegramArgs) -> Result<Option<Self>, TelegramError> {
        let Some(path) = &args.telegram_token_file else {
            return Ok(None);
        };
        let raw = std::fs::read_to_string(path).map_err(|e| {
            config_err(
                "--telegram-token-file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let token = raw.trim().to_owned();
        if token.is_empty() || token.contains(char::is_whitespace) || token.contains('/') {
            return Err(config_err(
                "--telegram-token-file",
                format!(
                    "{} must hold the bot token from BotFather (one line, no spaces or /)",
                    path.display()
                ),
            ));
        }
        Self::parse(BotToken::new(token), args).map(Some)
    }

    /// Validates everything but the token file (pure).
    ///
    /// # Errors
    /// [`TelegramError::Config`] naming the flag and the rule.
    pub fn parse(token: BotToken, args: &TelegramArgs) -> Result<Self, TelegramError> {
        let api_url = url::Url::parse(&args.telegram_api_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                config_err(
                    "--telegram-api-url",
                    format!(
                        "{:?} is not an http(s) URL with a host, e.g. {DEFAULT_API_URL}",
                        args.telegram_api_url
                    ),
                )
            })?;
        let chat = args.telegram_chat_id.as_deref().ok_or_else(|| {
            config_err(
                "--telegram-chat-id",
                "required with --telegram-token-file: the chat the bot writes to",
            )
        })?;
        let chat_id = chat.trim().parse::<i64>().map_err(|_| {
            config_err(
                "--telegram-chat-id",
                format!("{chat:?} is not a Telegram chat id (an integer, negative for groups)"),
            )
        })?;
        let owners = args.telegram_owner_ids.as_deref().unwrap_or("");
        let owner_ids = owners
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                    config_err(
                        "--telegram-owner-ids",
                        format!("{s:?} is not a Telegram user id (a positive integer)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if owner_ids.is_empty() {
            return Err(config_err(
                "--telegram-owner-ids",
                "required with --telegram-token-file: at least one user id whose taps count",
            ));
        }
        let approval_timeout = Some(args.telegram_approval_timeout)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                config_err(
                    "--telegram-approval-timeout",
                    "must be more than zero, such as 30m, 24h or 7d",
                )
            })?;
        let poll_interval = Some(args.telegram_poll_interval)
            .filter(|d| *d >= Duration::from_millis(100))
            .ok_or_else(|| {
                config_err(
                    "--telegram-poll-interval",
                    "must be at least 100ms, such as 2s",
                )
            })?;
        let web_url = match args.telegram_web_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(
                url::Url::parse(raw)
                    .ok()
                    .filter(|u| {
                        matches!(u.scheme(), "http" | "https")
                            && u.host().is_some()
                            && u.query().is_none()
                            && u.fragment().is_none()
                            && u.username().is_empty()
                            && u.password().is_none()
                    })
                    .ok_or_else(|| {
                        config_err(
                            "--telegram-web-url",
                            format!(
                                "{raw:?} is not the gateway's public URL: an http(s) URL with a host and no credentials, query or fragment, e.g. https://oauth3.example.com"
                            ),
                        )
                    })?,
            ),
        };
        Ok(Self {
            token,
            api_url,
            chat_id,
            owner_ids,
            approval_timeout,
            poll_interval,
            web_url,
        })
    }

    /// Whether a tap or command from `user` in `chat` counts (pure).
    pub fn is_owner(&self, user: u64, chat: i64) -> bool {
        chat == self.chat_id && self.owner_ids.contains(&user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TelegramArgs {
        TelegramArgs {
            telegram_token_file: None,
            telegram_api_url: DEFAULT_API_URL.into(),
            telegram_chat_id: Some("-1001".into()),
            telegram_owner_ids: Some("42, 43".into()),
            telegram_approval_timeout: Duration::from_secs(86_400),
            telegram_poll_interval: Duration::from_secs(2),
            telegram_web_url: None,
        }
    }

    fn token() -> BotToken {
        BotToken::new("123:secret-token".into())
    }

    #[test]
    fn valid_flags_parse_into_a_config() {
        let c = TelegramConfig::parse(token(), &args()).expect("valid");
        assert_eq!(c.chat_id, -1001);
        assert_eq!(c.owner_ids, [42, 43]);
        assert_eq!(c.approval_timeout, Duration::from_secs(86_400));
        assert_eq!(
            c.web_url, None,
            "no sign-in links unless the gateway's URL is given"
        );
        let mut with_web = args();
        with_web.telegram_web_url = Some("https://gw.example/".into());
        let c2 = TelegramConfig::parse(token(), &with_web).expect("valid");
        assert_eq!(
            c2.web_url.map(String::from).as_deref(),
            Some("https://gw.example/")
        );
        assert!(c.is_owner(42, -1001));
        assert!(
            !c.is_owner(42, 5),
            "the owner in another chat does not count"
        );
        assert!(
            !c.is_owner(7, -1001),
            "another user in the chat does not count"
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        type Change = fn(&mut TelegramArgs);
        let cases: [(Change, &str); 10] = [
            (
                |a| a.telegram_web_url = Some("ftp://gw.example".into()),
                "--telegram-web-url",
            ),
            (
                |a| a.telegram_web_url = Some("https://gw.example/?next=x".into()),
                "--telegram-web-url",
            ),
            (
                |a| a.telegram_web_url = Some("https://u:p@gw.example".into()),
                "--telegram-web-url",
            ),
            (
                |a| a.telegram_api_url = "ftp://x".into(),
                "--telegram-api-url",
            ),
            (|a| a.telegram_chat_id = None, "--telegram-chat-id"),
            (
                |a| a.telegram_chat_id = Some("me".into()),
                "--telegram-chat-id",
            ),
            (
                |a| a.telegram_owner_ids = Some("42,bob".into()),
                "--telegram-owner-ids",
            ),
            (|a| a.telegram_owner_ids = None, "--telegram-owner-ids"),
            (
                |a| a.telegram_approval_timeout = Duration::ZERO,
                "--telegram-approval-timeout",
            ),
            (
                |a| a.telegram_poll_interval = Duration::from_millis(50),
                "--telegram-poll-interval",
            ),
        ];
        for (change, flag) in cases {
            let mut a = args();
            change(&mut a);
            let err = TelegramConfig::parse(token(), &a)
                .expect_err(flag)
                .to_string();
            assert!(err.starts_with(flag), "{err}");
        }
    }

    #[test]
    fn the_token_never_shows_in_debug_output_or_redacted_text() {
        let c = TelegramConfig::parse(token(), &args()).expect("valid");
        assert!(!format!("{c:?}").contains("secret-token"));
        assert_eq!(
            c.token.redact("GET /bot123:secret-token/getMe failed"),
            "GET /bot<token>/getMe failed"
        );
    }

    #[test]
    fn no_token_file_means_the_channel_is_off() {
        assert!(TelegramConfig::from_args(&args()).expect("off").is_none());
    }
}
