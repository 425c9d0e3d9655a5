//! Telegram test support: the `telegram-test-api` Bot API emulator from npm (installed once
//! with `npm ci` under `tests/telegram-emulator`, started per test on a free loopback port), a
//! client that plays the owner through the emulator's client API (send a command, press a
//! button, read what the bot sent and how it edited it), and the operator binary started with
//! the Telegram flags.

use oauth3_test_support::free_port;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{repo_root, workspace_binary};

/// The bot token the tests use (the emulator accepts any).
pub const TOKEN: &str = "123456:oauth3-test-token";

fn emulator_dir() -> PathBuf {
    repo_root().join("tests").join("telegram-emulator")
}

/// Installs the emulator from the lock file (`npm ci`) unless it is installed already.
///
/// # Panics
/// When npm fails.
pub fn ensure_emulator_installed() {
    crate::npm_ci_once(&emulator_dir(), "telegram-test-api");
}

/// A bot message as the emulator stores it (after any edits).
#[derive(Debug, Clone, PartialEq)]
pub struct BotMessage {
    /// Message id.
    pub message_id: i64,
    /// Chat it was sent to.
    pub chat_id: i64,
    /// Current text.
    pub text: String,
    /// Current inline buttons: (label, callback_data, or the URL of a link button).
    pub buttons: Vec<(String, String)>,
}

impl BotMessage {
    /// The callback data of the button labelled `label`.
    ///
    /// # Panics
    /// When there is no such button.
    pub fn button(&self, label: &str) -> String {
        self.buttons
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no button {label:?} on message: {self:?}"))
    }
}

/// A running emulator; stopped when dropped.
pub struct Emulator {
    child: tokio::process::Child,
    port: u16,
}

fn as_i64(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_default()
}

impl Emulator {
    /// Installs (once) and starts the emulator on a free loopback port.
    ///
    /// # Panics
    /// When it does not start.
    pub async fn start() -> Emulator {
        for _ in 0..5 {
            if let Some(e) = Self::start_on(free_port()).await {
                return e;
            }
        }
        panic!("the Telegram emulator did not start");
    }

    /// Stops the emulator (its messages are lost, as with an outage) and starts a fresh one on
    /// the same port after `down`.
    ///
    /// # Panics
    /// When it does not come back.
    pub async fn restart_after(self, down: Duration) -> Emulator {
        let port = self.port;
        self.stop().await;
        tokio::time::sleep(down).await;
        for _ in 0..20 {
            if let Some(e) = Self::start_on(port).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the Telegram emulator did not come back on port {port}");
    }

    async fn start_on(port: u16) -> Option<Emulator> {
        ensure_emulator_installed();
        {
            let mut child = tokio::process::Command::new("node")
                .arg("start.js")
                .arg(port.to_string())
                .current_dir(emulator_dir())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("starting node");
            let stdout = child.stdout.take().expect("stdout");
            let mut lines = BufReader::new(stdout).lines();
            let ready = tokio::time::timeout(Duration::from_secs(30), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("ready ") {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            if ready {
                return Some(Emulator { child, port });
            }
            let _ = child.kill().await;
        }
        None
    }

    /// The Bot API base URL to give the operator.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the emulator.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// POSTs `body` as JSON to `path` and returns the JSON answer.
    ///
    /// # Panics
    /// When the emulator does not answer with JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Value {
        let body = body.to_string();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connecting to the emulator");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("response");
        let text = String::from_utf8_lossy(&raw);
        let (head, payload) = text.split_once("\r\n\r\n").expect("HTTP response");
        let payload = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(payload)
        } else {
            payload.to_owned()
        };
        serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{path}: {e}: {payload}"))
    }

    /// Every message the bot sent, as it stands now, oldest first.
    pub async fn bot_messages(&self) -> Vec<BotMessage> {
        let history = self
            .post("/getUpdatesHistory", &json!({"token": TOKEN}))
            .await;
        let mut out = Vec::new();
        for item in history["result"].as_array().cloned().unwrap_or_default() {
            let m = &item["message"];
            if m.get("chat_id").is_none() {
                continue; // a user's message or button press
            }
            let buttons = m["reply_markup"]["inline_keyboard"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|row| row.as_array().cloned().unwrap_or_default())
                .map(|b| {
                    (
                        b["text"].as_str().unwrap_or_default().to_owned(),
                        b["callback_data"]
                            .as_str()
                            .or_else(|| b["url"].as_str())
                            .unwrap_or_default()
                            .to_owned(),
                    )
                })
                .collect();
            out.push(BotMessage {
                message_id: as_i64(&item["messageId"]),
                chat_id: as_i64(&m["chat_id"]),
                text: m["text"].as_str().unwrap_or_default().to_owned(),
                buttons,
            });
        }
        out.sort_by_key(|m| m.message_id);
        out
    }

    /// Waits (up to 30 s) until some bot message satisfies `pred`, and returns it.
    ///
    /// # Panics
    /// When none does in time.
    pub async fn wait_message(&self, what: &str, pred: impl Fn(&BotMessage) -> bool) -> BotMessage {
        for _ in 0..300 {
            if let Some(m) = self.bot_messages().await.into_iter().find(|m| pred(m)) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no bot message {what} within 30s; messages: {:#?}",
            self.bot_messages().await
        );
    }

    fn user(user: u64) -> Value {
        json!({"id": user, "is_bot": false, "first_name": format!("user{user}"), "username": format!("user{user}")})
    }

    fn chat(chat: i64) -> Value {
        json!({"id": chat, "type": "private", "first_name": "Owner"})
    }

    /// `user` sends the command `text` (e.g. `/pending`) in `chat`.
    pub async fn command(&self, user: u64, chat: i64, text: &str) {
        let len = text.split_whitespace().next().map_or(0, str::len);
        let msg = json!({
            "botToken": TOKEN, "from": Self::user(user), "chat": Self::chat(chat),
            "date": now_secs(), "text": text,
            "entities": [{"offset": 0, "length": len, "type": "bot_command"}],
        });
        let answer = self.post("/sendCommand", &msg).await;
        assert_eq!(answer["ok"], true, "{answer}");
    }

    /// `user` presses the button with `data` under message `message_id` in `chat`.
    pub async fn tap(&self, user: u64, chat: i64, message_id: i64, data: &str) {
        let q = json!({
            "botToken": TOKEN, "from": Self::user(user),
            "message": {"message_id": message_id, "date": now_secs(), "chat": Self::chat(chat), "text": "request"},
            "data": data,
        });
        let answer = self.post("/sendCallback", &q).await;
        assert_eq!(answer["ok"], true, "{answer}");
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// The operator binary, running against the test cluster; killed when dropped.
pub struct OperatorProcess {
    child: std::process::Child,
    /// Where its log goes.
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts `oauth3-operator` for namespace `ns` (also its own namespace, holding the
    /// Telegram state) with leader election off, free loopback ports, and `extra` flags.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn start(ns: &str, dir: &Path, extra: &[String]) -> OperatorProcess {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("operator-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child =
            std::process::Command::new(workspace_binary("oauth3-operator", "oauth3-operator"))
                .env(
                    "KUBECONFIG",
                    std::env::var("TEST_KUBECONFIG").expect("TEST_KUBECONFIG"),
                )
                .args([
                    "--namespace",
                    ns,
                    "--operator-namespace",
                    ns,
                    "--leader-elect=false",
                ])
                .args([
                    "--metrics-addr",
                    "127.0.0.1:0",
                    "--callback-addr",
                    "127.0.0.1:0",
                ])
                .args(["--launcher", "process", "--log", "info"])
                .args(extra)
                .stdout(file.try_clone().expect("log file"))
                .stderr(file)
                .spawn()
                .expect("starting oauth3-operator");
        OperatorProcess { child, log }
    }

    /// Kills it at once (no graceful shutdown), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Telegram flags for an operator that talks to `emulator` for `chat`, counting taps of
/// `owners`, with the token written to a file in `dir`.
pub fn telegram_flags(
    emulator: &Emulator,
    dir: &Path,
    chat: i64,
    owners: &[u64],
    timeout: &str,
) -> Vec<String> {
    let token = dir.join("telegram-token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    let owners: Vec<String> = owners.iter().map(u64::to_string).collect();
    vec![
        "--telegram-token-file".into(),
        token.to_string_lossy().into_owned(),
        "--telegram-api-url".into(),
        emulator.api_url(),
        format!("--telegram-chat-id={chat}"),
        format!("--telegram-owner-ids={}", owners.join(",")),
        format!("--telegram-approval-timeout={timeout}"),
        "--telegram-poll-interval=300ms".into(),
    ]
}
