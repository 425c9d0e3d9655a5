//! A real HTTPS event-stream upstream on 127.0.0.1:0: every request is answered with
//! `text/event-stream`, one event per gap, so a test can tell a client that gets events as
//! they come from one that gets them at the end. It records when it sent each event.
//!
//! Events are `data: {"n": <i>}` for i in 0..count; event 1 carries the request's credential
//! (the `Authorization` header without `Bearer `) as `{"n": 1, "echo": "<credential>"}`, sent
//! in two writes split in the middle of the credential (a secret straddling two chunks).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::channel::Channel;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A running event-stream upstream.
pub struct EventStream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA certificate that signed its leaf, PEM.
    pub ca_pem: Vec<u8>,
    sent: Arc<Mutex<Vec<Instant>>>,
    requests: Arc<Mutex<usize>>,
}

impl EventStream {
    /// Starts a server sending `count` events `gap` apart on every request.
    pub async fn start(count: usize, gap: Duration) -> EventStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (acceptor, ca_pem) = crate::upstream::test_tls(&["127.0.0.1", "localhost"]);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let (sent2, requests2) = (sent.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let (sent, requests) = (sent2.clone(), requests2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        *requests.lock().expect("lock") += 1;
                        let credential = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(|v| v.trim_start_matches("Bearer ").to_owned())
                            .unwrap_or_default();
                        let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
                        let sent = sent.clone();
                        tokio::spawn(async move {
                            for n in 0..count {
                                if n > 0 {
                                    tokio::time::sleep(gap).await;
                                }
                                let ok = if n == 1 {
                                    let half = credential.len() / 2;
                                    let first = format!(
                                        "data: {{\"n\": 1, \"echo\": \"{}",
                                        &credential[..half]
                                    );
                                    let second = format!("{}\"}}\n\n", &credential[half..]);
                                    tx.send_data(Bytes::from(first)).await.is_ok() && {
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                        tx.send_data(Bytes::from(second)).await.is_ok()
                                    }
                                } else {
                                    let event = format!("data: {{\"n\": {n}}}\n\n");
                                    tx.send_data(Bytes::from(event)).await.is_ok()
                                };
                                if !ok {
                                    return;
                                }
                                sent.lock().expect("lock").push(Instant::now());
                            }
                        });
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "text/event-stream")
                                    .header("cache-control", "no-cache")
                                    .body(body)
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        EventStream {
            addr,
            ca_pem,
            sent,
            requests,
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// When each event so far was handed to the connection.
    pub fn sent(&self) -> Vec<Instant> {
        self.sent.lock().expect("lock").clone()
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        *self.requests.lock().expect("lock")
    }
}
