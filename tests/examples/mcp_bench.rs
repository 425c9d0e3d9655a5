//! MCP benchmark against a real kube-apiserver (see BENCHMARKS.md, "MCP").
//!
//! `status N`: the same question asked N times both ways, interleaved in one loop so both see
//! the same machine state: the status of a Permit request over the gateway's HTTP API
//! (`GET /execute/<id>/status`) and as the MCP tool call `permit_status` (`POST /mcp`,
//! JSON-RPC, in an open session). The difference is what the MCP layer adds per tool call.
//!
//! ```sh
//! eval "$(make -s cluster-up)"
//! cargo build --release -p oauth3-tests --example mcp_bench
//! TEST_KUBECONFIG=$KUBECONFIG target/release/examples/mcp_bench status 2000
//! ```

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use oauth3_tests::bench::report;
use oauth3_tests::client_or_skip;
use oauth3_tests::gateway::{Http, InProcessGateway, Tenant};
use serde_json::{Value, json};

/// Opens an MCP session for `token`; its id.
async fn session(http: &Http, url: &str, token: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}});
    let a = http.post(url, Some(token), &init).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.header("mcp-session-id").unwrap().to_owned()
}

async fn status(n: usize) {
    let admin = client_or_skip()
        .await
        .expect("a control plane (TEST_KUBECONFIG)");
    let tenant = Tenant::new(&admin, "bench-mcp").await;
    let gw = InProcessGateway::start(&admin, &[]).await;
    let http = Http::new();
    let asked = http
        .post(
            &gw.url("/permit"),
            Some(&tenant.agent),
            &json!({"description": "bench", "capabilities": [{"type": "scoped-fetch",
                "name": "api", "base_url": "https://api.example.com", "scope": ["items"],
                "methods": ["GET"]}]}),
        )
        .await;
    let id = asked.body["request_id"].as_str().unwrap().to_owned();
    let mcp = gw.url("/mcp");
    let sid = session(&http, &mcp, &tenant.agent).await;
    let status_url = gw.url(&format!("/execute/{id}/status"));
    let call = |i: usize| {
        json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": {
            "name": "permit_status", "arguments": {"request_id": id, "wait": false}}})
        .to_string()
        .into_bytes()
    };
    // Warm both paths (connections, the identity caches).
    for i in 0..20 {
        http.get(&status_url, Some(&tenant.agent)).await;
        http.post_raw(
            &mcp,
            Some(&tenant.agent),
            "application/json",
            call(i),
            &[("mcp-session-id", &sid)],
        )
        .await;
    }
    let (mut direct, mut via_mcp, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t0 = Instant::now();
        let a = http.get(&status_url, Some(&tenant.agent)).await;
        let d = t0.elapsed();
        assert_eq!(a.body["status"], "pending", "{}", a.text);
        let t1 = Instant::now();
        let b = http
            .post_raw(
                &mcp,
                Some(&tenant.agent),
                "application/json",
                call(i),
                &[("mcp-session-id", &sid)],
            )
            .await;
        let m = t1.elapsed();
        let answer: &Value = &b.body["result"]["structuredContent"];
        assert_eq!(answer["status"], "pending", "{}", b.text);
        direct.push(d);
        via_mcp.push(m);
        extra.push(m.saturating_sub(d));
    }
    report("GET /execute/<id>/status (HTTP API)", direct);
    report("tools/call permit_status (MCP)", via_mcp);
    report("MCP minus HTTP, per pair", extra);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
    match args.get(1).map(String::as_str) {
        Some("status") => status(n).await,
        _ => {
            eprintln!("usage: mcp_bench status N");
            std::process::exit(2);
        }
    }
}
