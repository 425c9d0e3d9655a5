//! A real HTTPS upstream on 127.0.0.1:0 for fetch tests: a CA and a leaf certificate made at
//! start, every request recorded, answers by route.
//!
//! Routes (any method): `/v1/text` (text), `/v1/binary` (octet-stream), `/v1/echo-auth` (JSON
//! echoing the `Authorization` header and the `key` query param), `/v1/redirect?to=<url>`
//! (302 to `to`), `/v1/large` (256 KiB), `/v1/missing` (404), anything else: JSON
//! `{"path": ..., "method": ...}`.
//!
//! Echoes of the credential (the `key` query param, else the `Authorization` header without
//! `Bearer `), the way a careless or hostile upstream hands it back: `/v1/echo-number`
//! (`{"pin": <credential as a bare JSON number>}`), `/v1/echo-key` (the credential and its
//! hex form as object keys), `/v1/echo-split` (`{"parts": [first half, second half]}`) and
//! `/v1/echo-error?pad=<n>` (404 whose body is `n` bytes of `x` then the credential) and
//! `/v1/echo-header` (the credential in an `X-Echo-Credential` and a `Set-Cookie` header).
//!
//! Each request carries the instant it arrived ([`Recorded::received_at`]) and wakes
//! [`Upstream::wait_for_requests`], so benchmarks can time a client up to the moment its
//! request reached the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub path_and_query: String,
    /// Headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// When the request head had been read (before its body).
    pub received_at: Instant,
}

impl Recorded {
    /// All values of a header.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A running upstream.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA certificate that signed its leaf, PEM.
    pub ca_pem: Vec<u8>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    arrived: Arc<Notify>,
}

impl Upstream {
    /// Starts a server on 127.0.0.1:0 with a fresh CA and a leaf for 127.0.0.1 and localhost.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, &["127.0.0.1", "localhost", "upstream.test"])
    }

    /// Starts a server on `listener` (bound anywhere, e.g. inside a network namespace) with a
    /// fresh CA and a leaf for `names`.
    pub fn start_on(listener: TcpListener, names: &[&str]) -> Upstream {
        let (acceptor, ca_pem) = test_tls(names);
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let recorded = requests.clone();
        let notify = arrived.clone();
        serve_tls(listener, acceptor, move |req| {
            handle(req, recorded.clone(), notify.clone())
        });
        Upstream {
            addr,
            ca_pem,
            requests,
            arrived,
        }
    }

    /// `https://<address>:<port>` (`https://127.0.0.1:<port>` for [`Upstream::start`]).
    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// Asserts that nothing reached the upstream: what every bypass test must show.
    pub fn assert_nothing_received(&self, why: &str) {
        let got = self.requests();
        assert!(
            got.is_empty(),
            "{why}: the upstream received {} request(s): {:?}",
            got.len(),
            got.iter()
                .map(|r| format!("{} {}", r.method, r.path_and_query))
                .collect::<Vec<_>>()
        );
    }

    /// Asserts that exactly `count` requests reached the upstream, and returns them.
    pub fn assert_received(&self, count: usize, why: &str) -> Vec<Recorded> {
        let got = self.requests();
        assert_eq!(
            got.len(),
            count,
            "{why}: {:?}",
            got.iter()
                .map(|r| format!("{} {}", r.method, r.path_and_query))
                .collect::<Vec<_>>()
        );
        got
    }

    /// Waits until at least `count` requests have been received in total.
    pub async fn wait_for_requests(&self, count: usize) {
        loop {
            let notified = self.arrived.notified();
            if self.requests.lock().expect("requests lock").len() >= count {
                return;
            }
            notified.await;
        }
    }
}

/// Serves HTTP/1.1 over TLS on `listener` until the runtime ends, answering each request with
/// `handler`.
pub fn serve_tls<H, F>(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            // Answers go out at once, not after the client's delayed ACK.
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
}

/// A TLS acceptor with a fresh CA and a leaf for `names` (IP addresses or DNS names), and
/// that CA's certificate as PEM: what a client under test is told to trust.
pub fn test_tls(names: &[&str]) -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "oauth3 test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("leaf params");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .expect("server cert");
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        ca.pem().into_bytes(),
    )
}

fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("response")
}

async fn handle(
    req: Request<Incoming>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    arrived: Arc<Notify>,
) -> Response<Full<Bytes>> {
    let received_at = Instant::now();
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let rec = Recorded {
        method: method.clone(),
        path_and_query,
        headers,
        body,
        received_at,
    };
    recorded.lock().expect("requests lock").push(rec.clone());
    arrived.notify_waiters();
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let credential = param("key").unwrap_or_else(|| {
        rec.header_values("authorization")
            .first()
            .map(|v| v.trim_start_matches("Bearer ").to_owned())
            .unwrap_or_default()
    });
    match path.as_str() {
        "/v1/echo-number" => response(
            200,
            "application/json",
            format!(r#"{{"pin": {credential}}}"#),
        ),
        "/v1/echo-key" => {
            let hex = hex::encode(&credential);
            let v = serde_json::json!({
                credential.clone(): true,
                "nested": {credential.clone(): {hex.clone(): 1}},
                "list": [{hex: credential.len()}],
            });
            response(200, "application/json", v.to_string())
        }
        "/v1/echo-split" => {
            let half = credential.len() / 2;
            let (a, b) = credential.split_at(half);
            let v = serde_json::json!({"parts": [a, b]});
            response(200, "application/json", v.to_string())
        }
        "/v1/echo-error" => {
            let pad = param("pad").and_then(|p| p.parse().ok()).unwrap_or(0);
            response(
                404,
                "text/plain",
                format!("{}{credential}", "x".repeat(pad)),
            )
        }
        "/v1/echo-header" => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-echo-credential", credential.as_str())
            .header("set-cookie", format!("session={credential}; Secure"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("echo-header"),
        "/v1/text" => response(200, "text/plain; charset=utf-8", "hello"),
        "/v1/binary" => response(200, "application/octet-stream", vec![0u8, 1, 2, 255]),
        "/v1/echo-auth" => {
            let v = serde_json::json!({
                "authorization": rec.header_values("authorization"),
                "key": param("key"),
            });
            response(200, "application/json", v.to_string())
        }
        "/v1/redirect" => Response::builder()
            .status(302)
            .header("location", param("to").unwrap_or_default())
            .body(Full::new(Bytes::new()))
            .expect("redirect"),
        "/v1/large" => response(200, "text/plain", vec![b'x'; 256 * 1024]),
        "/v1/missing" => response(404, "text/plain", "no such thing here"),
        _ => response(
            200,
            "application/json",
            serde_json::json!({"path": path, "method": method}).to_string(),
        ),
    }
}
