//! Key providers against local stand-ins: a dstack guest agent on a unix socket (and over TCP,
//! like its simulator) and a Confidential Containers resource endpoint on loopback TCP.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crypto_box::SecretKey;
use oauth3_sandbox_runner::secrets::{
    DstackProvider, KbsProvider, KeyProvider, SealedSecret, SecretsError, seal, unseal_permitted,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

/// What a stand-in received.
#[derive(Debug, Clone, Default)]
struct Recorded {
    request_line: String,
    host: String,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Recorded>>>;

/// A canned answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: Vec<u8>,
    chunked: bool,
}

impl Reply {
    fn json(status: u16, value: serde_json::Value) -> Self {
        Self {
            status,
            body: value.to_string().into_bytes(),
            chunked: false,
        }
    }

    fn bytes(status: u16, body: &[u8]) -> Self {
        Self {
            status,
            body: body.to_vec(),
            chunked: false,
        }
    }

    fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, reply: Reply, log: Log) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).await.expect("read request");
        assert!(n > 0, "client closed before sending a full request");
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8(raw[..head_end].to_vec()).expect("utf-8 head");
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    while raw.len() < head_end + 4 + length {
        let n = stream.read(&mut buf).await.expect("read body");
        assert!(n > 0, "client closed mid-body");
        raw.extend_from_slice(&buf[..n]);
    }
    log.lock().expect("log lock").push(Recorded {
        request_line: head.lines().next().unwrap_or_default().to_owned(),
        host: header("host"),
        body: raw[head_end + 4..head_end + 4 + length].to_vec(),
    });
    let mut response = if reply.chunked {
        format!(
            "HTTP/1.1 {} X\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            reply.status,
            reply.body.len()
        )
        .into_bytes()
    } else {
        format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.status,
            reply.body.len()
        )
        .into_bytes()
    };
    response.extend_from_slice(&reply.body);
    if reply.chunked {
        response.extend_from_slice(b"\r\n0\r\n\r\n");
    }
    stream.write_all(&response).await.expect("write response");
    stream.shutdown().await.ok();
}

/// A temporary directory removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Serves `reply` on a fresh unix socket; returns its path (inside a directory removed when the
/// returned guard drops) and the request log.
fn unix_stand_in(reply: Reply) -> (TempDir, String, Log) {
    let dir = std::env::temp_dir().join(format!(
        "oauth3-kp-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("dstack.sock");
    let listener = UnixListener::bind(&path).expect("bind unix socket");
    let log: Log = Arc::default();
    let server_log = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream, reply.clone(), server_log.clone()));
        }
    });
    let socket = path.display().to_string();
    (TempDir(dir), socket, log)
}

/// Serves `reply` on 127.0.0.1 port 0; returns `http://127.0.0.1:<port>` and the request log.
async fn tcp_stand_in(reply: Reply) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
    let addr = listener.local_addr().expect("local addr");
    let log: Log = Arc::default();
    let server_log = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream, reply.clone(), server_log.clone()));
        }
    });
    (format!("http://{addr}"), log)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

fn recorded(log: &Log) -> Vec<Recorded> {
    log.lock().expect("log lock").clone()
}

/// Seals a value to `key`'s public key and opens it through `provider`.
async fn round_trip_through(provider: &dyn KeyProvider, key: [u8; 32]) -> String {
    let public = *SecretKey::from(key).public_key().as_bytes();
    let sealed = vec![SealedSecret {
        name: "TOKEN".to_owned(),
        envelope: seal(&public, "ns", "TOKEN", "value-from-the-enclave").expect("seal"),
    }];
    let opened = unseal_permitted(provider, "ns", &["TOKEN".to_owned()], &sealed)
        .await
        .expect("opens with the provider's key");
    opened["TOKEN"].to_string()
}

const DSTACK_KEY: [u8; 32] = [0x5a; 32];

#[tokio::test]
async fn dstack_get_key_over_unix_socket_sends_path_purpose_algorithm_and_yields_the_key() {
    let (_dir, socket, log) = unix_stand_in(Reply::json(
        200,
        serde_json::json!({"key": hex::encode(DSTACK_KEY), "signature_chain": ["aa", "bb"]}),
    ));
    let provider = DstackProvider::new(socket.clone());
    assert_eq!(provider.name(), "dstack");

    let key = provider.secret_key().await.expect("GetKey succeeds");
    assert_eq!(key.to_bytes(), DSTACK_KEY);
    assert_eq!(
        round_trip_through(&provider, DSTACK_KEY).await,
        "value-from-the-enclave"
    );

    let requests = recorded(&log);
    assert_eq!(requests.len(), 2, "one GetKey per secret_key call");
    let first = &requests[0];
    assert_eq!(first.request_line, "POST /GetKey HTTP/1.1");
    assert_eq!(first.host, "dstack");
    let body: serde_json::Value = serde_json::from_slice(&first.body).expect("json body");
    assert_eq!(
        body,
        serde_json::json!({
            "path": "oauth3/sealed-secrets/v1",
            "purpose": "oauth3-sealed-secrets",
            "algorithm": "secp256k1"
        })
    );
}

#[tokio::test]
async fn dstack_longer_key_is_reduced_with_sha256_and_custom_path_is_sent() {
    use sha2::Digest;
    let long_key = [0x11u8; 64];
    let (_dir, socket, log) = unix_stand_in(
        Reply::json(200, serde_json::json!({"key": hex::encode(long_key)})).chunked(),
    );
    let provider = DstackProvider::new(socket.clone()).with_key_path("custom/path");
    let key = provider.secret_key().await.expect("GetKey succeeds");
    let expected: [u8; 32] = sha2::Sha256::digest(long_key).into();
    assert_eq!(key.to_bytes(), expected);
    let body: serde_json::Value =
        serde_json::from_slice(&recorded(&log)[0].body).expect("json body");
    assert_eq!(body["path"], "custom/path");
}

#[tokio::test]
async fn dstack_error_answer_is_reported_with_provider_step_status_and_message() {
    let (_dir, socket, log) = unix_stand_in(Reply::json(
        500,
        serde_json::json!({"error": "app is not allowed to derive keys"}),
    ));
    let provider = DstackProvider::new(socket.clone());
    let err = provider.secret_key().await.expect_err("500 fails");
    let text = err.to_string();
    assert!(matches!(
        err,
        SecretsError::ProviderStatus { status: 500, .. }
    ));
    for part in [
        "dstack",
        "GetKey",
        "500",
        "app is not allowed to derive keys",
    ] {
        assert!(text.contains(part), "{text} should contain {part}");
    }
    assert_eq!(recorded(&log).len(), 1);
}

#[tokio::test]
async fn dstack_answer_without_a_key_is_refused_without_echoing_it() {
    let leaked = hex::encode([0x77u8; 32]);
    let (_dir, socket, _log) = unix_stand_in(Reply::json(200, serde_json::json!({"kee": leaked})));
    let provider = DstackProvider::new(socket.clone());
    let err = provider.secret_key().await.expect_err("no key field");
    assert!(matches!(
        err,
        SecretsError::ProviderResponse {
            provider: "dstack",
            ..
        }
    ));
    assert!(!err.to_string().contains(&leaked));
    assert!(!format!("{err:?}").contains(&leaked));
}

#[tokio::test]
async fn dstack_missing_socket_is_a_connect_error_naming_provider_and_path() {
    let provider = DstackProvider::new("/nonexistent/oauth3/dstack.sock");
    let err = provider.secret_key().await.expect_err("no socket");
    assert!(matches!(err, SecretsError::ProviderConnect { .. }));
    let text = err.to_string();
    assert!(text.contains("dstack") && text.contains("/nonexistent/oauth3/dstack.sock"));
}

#[tokio::test]
async fn dstack_over_http_endpoint_uses_tcp() {
    let (base, log) = tcp_stand_in(Reply::json(
        200,
        serde_json::json!({"key": hex::encode(DSTACK_KEY), "signature_chain": []}),
    ))
    .await;
    let provider = DstackProvider::new(base.clone());
    let key = provider.secret_key().await.expect("GetKey over tcp");
    assert_eq!(key.to_bytes(), DSTACK_KEY);
    let requests = recorded(&log);
    assert_eq!(requests[0].request_line, "POST /GetKey HTTP/1.1");
    assert_eq!(requests[0].host, base.trim_start_matches("http://"));
}

const KBS_KEY: [u8; 32] = [0xc3; 32];

#[tokio::test]
async fn kbs_resource_with_raw_key_bytes_yields_the_key() {
    let (base, log) = tcp_stand_in(Reply::bytes(200, &KBS_KEY)).await;
    let provider = KbsProvider::new(base);
    assert_eq!(provider.name(), "kbs");
    assert_eq!(
        round_trip_through(&provider, KBS_KEY).await,
        "value-from-the-enclave"
    );
    let requests = recorded(&log);
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].request_line,
        "GET /cdh/resource/default/oauth3/sealing-key HTTP/1.1"
    );
    assert!(requests[0].body.is_empty());
}

#[tokio::test]
async fn kbs_resource_with_hex_key_and_custom_resource_yields_the_key() {
    let (base, log) = tcp_stand_in(Reply::bytes(200, hex::encode(KBS_KEY).as_bytes())).await;
    let provider = KbsProvider::new(base).with_resource("repo/keys/v2");
    let key = provider.secret_key().await.expect("hex key accepted");
    assert_eq!(key.to_bytes(), KBS_KEY);
    assert_eq!(
        recorded(&log)[0].request_line,
        "GET /cdh/resource/repo/keys/v2 HTTP/1.1"
    );
}

#[tokio::test]
async fn kbs_missing_resource_is_an_error_naming_provider_and_status() {
    let (base, _log) = tcp_stand_in(Reply::bytes(404, b"resource not found")).await;
    let provider = KbsProvider::new(base);
    let err = provider.secret_key().await.expect_err("404 fails");
    assert!(matches!(
        err,
        SecretsError::ProviderStatus { status: 404, .. }
    ));
    let text = err.to_string();
    assert!(text.contains("kbs") && text.contains("404"), "{text}");
}

#[tokio::test]
async fn kbs_answer_of_the_wrong_size_is_refused_without_echoing_it() {
    let (base, _log) = tcp_stand_in(Reply::bytes(200, b"0123456789abcdef-not-a-key")).await;
    let err = KbsProvider::new(base)
        .secret_key()
        .await
        .expect_err("wrong size");
    assert!(matches!(
        err,
        SecretsError::KeyMaterial {
            provider: "kbs",
            ..
        }
    ));
    assert!(!err.to_string().contains("not-a-key"));
}

#[tokio::test]
async fn failing_provider_means_no_secret_is_unsealed() {
    let (_dir, socket, _log) =
        unix_stand_in(Reply::json(500, serde_json::json!({"error": "down"})));
    let provider = DstackProvider::new(socket.clone());
    let public = *SecretKey::from(DSTACK_KEY).public_key().as_bytes();
    let sealed = vec![SealedSecret {
        name: "TOKEN".to_owned(),
        envelope: seal(&public, "ns", "TOKEN", "never-opened").expect("seal"),
    }];
    let err = unseal_permitted(&provider, "ns", &["TOKEN".to_owned()], &sealed)
        .await
        .expect_err("provider down");
    assert!(!err.to_string().contains("never-opened"));
    assert!(err.to_string().contains("dstack"));
}
