//! Servers the intent drafter talks to in tests, real HTTPS servers on 127.0.0.1:0: a doc
//! server that serves API descriptions by path and records every request, and a server
//! speaking the Anthropic Messages API (`POST /v1/messages`) whose answers the test sets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};
use tokio::net::TcpListener;

use crate::upstream::{serve_tls, test_tls};

/// The GitHub OpenAPI description as published in the npm package `@octokit/openapi`
/// (installed by `npm ci` under `tests/openapi-docs`, which this runs once if needed).
///
/// # Panics
/// When npm cannot install it.
pub fn github_openapi() -> Vec<u8> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .join("tests/openapi-docs");
    let file = dir.join("node_modules/@octokit/openapi/generated/api.github.com.json");
    if !file.exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("running npm ci in tests/openapi-docs");
        assert!(status.success(), "npm ci in tests/openapi-docs failed");
    }
    std::fs::read(&file).expect("reading GitHub's OpenAPI description")
}

/// A running doc server.
pub struct DocServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA that signed its certificate, PEM.
    pub ca_pem: Vec<u8>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl DocServer {
    /// Serves `docs` (path -> bytes, e.g. `/github.json`) over HTTPS; anything else is 404.
    pub async fn start(docs: Vec<(&str, Vec<u8>)>) -> DocServer {
        let (acceptor, ca_pem) = test_tls(&["127.0.0.1", "localhost"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let docs: Arc<HashMap<String, Bytes>> = Arc::new(
            docs.into_iter()
                .map(|(p, b)| (p.to_owned(), Bytes::from(b)))
                .collect(),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        serve_tls(
            listener,
            acceptor,
            move |req: Request<hyper::body::Incoming>| {
                let docs = docs.clone();
                let seen = seen.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    seen.lock().expect("lock").push(path.clone());
                    match docs.get(&path) {
                        Some(b) => Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(b.clone()))
                            .expect("response"),
                        None => Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::new()))
                            .expect("response"),
                    }
                }
            },
        );
        DocServer {
            addr,
            ca_pem,
            requests,
        }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// `127.0.0.1:<port>`, as `--draft-doc-hosts` names it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// The paths requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

/// What the Messages API server answers next.
#[derive(Debug, Clone)]
pub enum ModelAnswer {
    /// A text message with this content.
    Text(String),
    /// No answer for this long (longer than the client waits).
    Stall(Duration),
}

/// A running Messages API server.
pub struct MessagesServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA that signed its certificate, PEM.
    pub ca_pem: Vec<u8>,
    answer: Arc<Mutex<ModelAnswer>>,
    prompts: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl MessagesServer {
    /// Starts it, answering `answer` until [`MessagesServer::set`] changes it.
    pub async fn start(answer: ModelAnswer) -> MessagesServer {
        let (acceptor, ca_pem) = test_tls(&["127.0.0.1", "localhost"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answer = Arc::new(Mutex::new(answer));
        let prompts = Arc::new(Mutex::new(Vec::new()));
        let (a, p) = (answer.clone(), prompts.clone());
        serve_tls(
            listener,
            acceptor,
            move |req: Request<hyper::body::Incoming>| {
                let (a, p) = (a.clone(), p.clone());
                async move {
                    let ok_path =
                        req.method() == hyper::Method::POST && req.uri().path() == "/v1/messages";
                    let keyed = req.headers().get("x-api-key").is_some()
                        && req.headers().get("anthropic-version").is_some();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if !ok_path || !keyed || body["model"].as_str().is_none() {
                        return Response::builder()
                            .status(400)
                            .body(Full::new(Bytes::from_static(b"{\"type\":\"error\"}")))
                            .expect("response");
                    }
                    p.lock().expect("lock").push(body);
                    let answer = a.lock().expect("lock").clone();
                    let text = match answer {
                        ModelAnswer::Stall(d) => {
                            tokio::time::sleep(d).await;
                            String::new()
                        }
                        ModelAnswer::Text(t) => t,
                    };
                    let message = serde_json::json!({
                        "id": "msg_test", "type": "message", "role": "assistant", "model": "test",
                        "content": [{"type": "text", "text": text}],
                        "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}
                    });
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(message.to_string())))
                        .expect("response")
                }
            },
        );
        MessagesServer {
            addr,
            ca_pem,
            answer,
            prompts,
        }
    }

    /// Sets the next answers.
    pub fn set(&self, answer: ModelAnswer) {
        *self.answer.lock().expect("lock") = answer;
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The request bodies received.
    pub fn prompts(&self) -> Vec<serde_json::Value> {
        self.prompts.lock().expect("lock").clone()
    }
}
