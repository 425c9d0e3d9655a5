//! A pool member's run starts right after its Execution's egress policy was written, and the
//! node may take a moment to enforce it: until then the Permit's hosts are refused by the
//! network. With a connect grace (`run --standby`), a connection the network refused is tried
//! again with backoff until the grace ends; nothing is sent on a refused connection, so the
//! upstream sees exactly one request. Without it, the call fails at once and nothing arrives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oauth3_crds::PermitSpec;
use oauth3_sandbox_runner::fetch::{FetchConfig, ScopedFetch};
use oauth3_sandbox_runner::host::{CallOutcome, CapabilityCall, CapabilityHost};
use oauth3_sandbox_runner::policy::Policy;
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_test_support::{Upstream, free_port};
use serde_json::json;
use zeroize::Zeroizing;

const SECRET: &str = "sk-grace-41c2";

/// A host for a Permit whose one capability is at `https://127.0.0.1:{port}/v1`.
fn host(up: &Upstream, port: u16, grace: Option<Duration>) -> ScopedFetch {
    let spec: PermitSpec = serde_json::from_value(json!({
        "description": "late network",
        "secrets": ["API_TOKEN"],
        "capabilities": [{"name": "api", "baseUrl": format!("https://127.0.0.1:{port}/v1"),
            "paths": ["/items"], "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}}]
    }))
    .expect("spec");
    let secrets = BTreeMap::from([("API_TOKEN".to_owned(), Zeroizing::new(SECRET.to_owned()))]);
    let config = FetchConfig {
        extra_root_certs_pem: vec![up.ca_pem.clone()],
        ..FetchConfig::default()
    };
    let redactor = Arc::new(Redactor::for_secrets(&secrets));
    let fetch = ScopedFetch::new(
        Policy::compile(&spec).expect("policy"),
        secrets,
        redactor,
        config,
    )
    .expect("fetch");
    match grace {
        Some(g) => fetch.with_connect_grace(g),
        None => fetch,
    }
}

/// Opens `port` after `after`, forwarding every connection to the upstream (the network
/// letting the Permit's host through once the policy is enforced).
fn open_later(port: u16, to: std::net::SocketAddr, after: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the late port");
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

async fn get_items(host: &ScopedFetch) -> CallOutcome {
    host.call(CapabilityCall {
        capability: "api".into(),
        args: vec![json!("GET"), json!("/items")],
    })
    .await
}

#[tokio::test]
async fn with_a_connect_grace_a_refused_connection_is_tried_again_until_the_network_lets_it_through()
 {
    let up = Upstream::start().await;
    let port = free_port();
    let host = host(&up, port, Some(Duration::from_secs(5)));
    open_later(port, up.addr, Duration::from_millis(400));
    let outcome = get_items(&host).await;
    assert!(
        matches!(outcome, CallOutcome::Value(_)),
        "the call went through once the network allowed it: {outcome:?}"
    );
    let got = up.assert_received(1, "one request, however many connections were refused");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!("Bearer {SECRET}").as_str()]
    );
}

#[tokio::test]
async fn without_a_grace_or_after_it_a_refused_connection_fails_and_nothing_arrives() {
    let up = Upstream::start().await;
    for grace in [None, Some(Duration::from_millis(300))] {
        let port = free_port();
        let host = host(&up, port, grace);
        let outcome = get_items(&host).await;
        let shown = format!("{outcome:?}");
        assert!(
            matches!(outcome, CallOutcome::Error(_)) && shown.contains("Connection refused"),
            "{grace:?}: {shown}"
        );
        assert!(!shown.contains(SECRET));
    }
    up.assert_nothing_received("no port was ever opened");
}
