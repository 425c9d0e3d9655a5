//! The operator's HTTP endpoints over a real socket on port 0: `/healthz` answers while the
//! process runs, `/readyz` reflects API reachability and the elector, `/metrics` serves the
//! Prometheus exposition, and the server stops on shutdown.

use std::sync::Arc;
use std::time::Duration;

use oauth3_operator::http::{Health, HttpState, router, serve};
use oauth3_operator::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A response as read off the wire.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Sends `GET path` over a fresh connection and reads the whole response.
async fn get(addr: std::net::SocketAddr, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connecting");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sending the request");
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut raw))
        .await
        .expect("response within 5s")
        .expect("reading the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

struct Server {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), oauth3_operator::http::HttpError>>,
}

async fn start(metrics: Arc<Metrics>, health: Arc<Health>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        router(HttpState { metrics, health }),
        async move {
            let _ = stopped.await;
        },
    ));
    Server { addr, stop, task }
}

#[tokio::test]
async fn healthz_is_ok_even_before_the_api_server_was_reached() {
    let health = Arc::new(Health::new(Duration::from_secs(30)));
    let server = start(Arc::new(Metrics::new()), health).await;
    let live = get(server.addr, "/healthz").await;
    assert_eq!(live.status, 200);
    let ready = get(server.addr, "/readyz").await;
    assert_eq!(ready.status, 503, "not ready until the API server answered");
    assert!(ready.body.contains("not been reached"), "{}", ready.body);
}

#[tokio::test]
async fn readyz_needs_a_recent_api_success_and_a_running_elector() {
    let (elector, leading) = watch::channel(false);
    let health = Arc::new(Health::new(Duration::from_secs(30)).with_elector(leading));
    let server = start(Arc::new(Metrics::new()), health.clone()).await;

    assert_eq!(get(server.addr, "/readyz").await.status, 503);
    health.record_api_ok();
    let ready = get(server.addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    drop(elector);
    let stopped = get(server.addr, "/readyz").await;
    assert_eq!(stopped.status, 503);
    assert!(stopped.body.contains("elector"), "{}", stopped.body);
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn readyz_turns_unready_when_the_last_api_success_grows_stale() {
    let health = Arc::new(Health::new(Duration::from_millis(100)));
    let server = start(Arc::new(Metrics::new()), health.clone()).await;
    health.record_api_ok();
    assert_eq!(get(server.addr, "/readyz").await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stale = get(server.addr, "/readyz").await;
    assert_eq!(stale.status, 503);
    assert!(stale.body.contains("last reached"), "{}", stale.body);
}

#[tokio::test]
async fn metrics_serves_the_prometheus_text_of_the_shared_registry() {
    let metrics = Arc::new(Metrics::new());
    let server = start(
        metrics.clone(),
        Arc::new(Health::new(Duration::from_secs(30))),
    )
    .await;
    metrics.set_leader(true);
    metrics.record_reconcile("permit", Duration::from_millis(3), true);
    metrics.set_executions("Running", 2);
    let reply = get(server.addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .head
            .contains("content-type: application/openmetrics-text"),
        "{}",
        reply.head
    );
    for line in [
        "oauth3_leader 1",
        "oauth3_reconciles_total{controller=\"permit\"} 1",
        "oauth3_reconcile_errors_total{controller=\"permit\"} 1",
        "oauth3_executions{phase=\"Running\"} 2",
        "# EOF",
    ] {
        assert!(
            reply.body.lines().any(|l| l == line),
            "{line:?} missing:\n{}",
            reply.body
        );
    }
}

#[tokio::test]
async fn the_server_stops_accepting_after_shutdown() {
    let server = start(
        Arc::new(Metrics::new()),
        Arc::new(Health::new(Duration::from_secs(30))),
    )
    .await;
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    server.stop.send(()).expect("server running");
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("stops within 5s")
        .expect("no panic")
        .expect("no serve error");
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let server = start(
        Arc::new(Metrics::new()),
        Arc::new(Health::new(Duration::from_secs(30))),
    )
    .await;
    assert_eq!(get(server.addr, "/debug/secrets").await.status, 404);
}
