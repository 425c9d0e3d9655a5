//! MCP benchmark against a real kube-apiserver (see BENCHMARKS.md, "MCP").
//!
//! `status N`: the same question asked N times both ways, interleaved in one loop so both see
//! the same machine state: the status of a Permit request over the gateway's HTTP API
//! (`GET /execute/<id>/status`) and as the MCP tool call `permit_status` (`POST /mcp`,
//! JSON-RPC, in an open session). The difference is what the MCP layer adds per tool call.
//!
//! `capability N`: one typed-endpoint capability of an approved Permit with calls without
//! code, served by a real `oauth3-sandbox-runner serve` (plain HTTP on loopback, a token file)
//! in front of the recording HTTPS upstream, called N times three ways, interleaved: directly
//! at the proxy (`POST /<capability>`), through the gateway (`POST
//! /proxy/<ns>/<permit>/<capability>`), and as the MCP capability tool (`tools/call`). The
//! differences are what the gateway's forwarding and the MCP layer add per call.
//!
//! ```sh
//! eval "$(make -s cluster-up)"
//! cargo build -p oauth3-tests --example mcp_bench
//! TEST_KUBECONFIG=$KUBECONFIG target/debug/examples/mcp_bench status 2000
//! TEST_KUBECONFIG=$KUBECONFIG target/debug/examples/mcp_bench capability 1000
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

async fn capability(n: usize) {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use oauth3_tests::proxy::{Serve, ServeSpec};
    let admin = client_or_skip()
        .await
        .expect("a control plane (TEST_KUBECONFIG)");
    let tenant = Tenant::new(&admin, "bench-cap").await;
    let up = oauth3_test_support::Upstream::start().await;
    let agent_user = format!("system:serviceaccount:{}:agent", tenant.ns);
    let spec: oauth3_crds::PermitSpec = serde_json::from_value(json!({
        "description": "bench", "secrets": ["API_TOKEN"],
        "capabilities": [{"name": "getItem",
            "endpoint": format!("{}/v1/items/{{id}}", up.origin()), "method": "GET",
            "params": {"id": {"in": "path", "pattern": "[0-9]+"}},
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}}],
        "proxy": {"enabled": true, "callers": [agent_user]}
    }))
    .unwrap();
    let permits: Api<oauth3_crds::Permit> = Api::namespaced(admin.clone(), &tenant.ns);
    permits
        .create(
            &PostParams::default(),
            &oauth3_crds::Permit::new("items", spec.clone()),
        )
        .await
        .unwrap();
    let serve = Serve::start(&ServeSpec {
        namespace: &tenant.ns,
        permit: "items",
        spec: &spec,
        secret: ("API_TOKEN", "sk-bench"),
        dev_key: [9u8; 32],
        tokens: &[(&tenant.agent, &agent_user)],
        upstream_cas: &[&up.ca_pem],
        tls_dir: None,
    })
    .await;
    permits
        .patch_status(
            "items",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Approved",
                "proxy": {"phase": "Ready", "endpoint": serve.endpoint}}})),
        )
        .await
        .unwrap();
    let gw = InProcessGateway::start(&admin, &[]).await;
    let http = Http::new();
    let direct_url = format!("{}/getItem", serve.endpoint);
    let gateway_url = gw.url(&format!("/proxy/{}/items/getItem", tenant.ns));
    let mcp = gw.url("/mcp");
    let sid = session(&http, &mcp, &tenant.agent).await;
    let args = json!({"id": "7"});
    let call = |i: usize| {
        json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": {
            "name": "items__getItem", "arguments": args}})
        .to_string()
        .into_bytes()
    };
    let agent = tenant.agent.clone();
    let tool = |i: usize| {
        let (http, mcp, sid, body) = (http.clone(), mcp.clone(), sid.clone(), call(i));
        let agent = agent.clone();
        async move {
            let b = http
                .post_raw(
                    &mcp,
                    Some(&agent),
                    "application/json",
                    body,
                    &[("mcp-session-id", &sid)],
                )
                .await;
            assert_eq!(b.body["result"]["isError"], false, "{}", b.text);
        }
    };
    for i in 0..20 {
        http.post(&direct_url, Some(&tenant.agent), &args).await;
        http.post(&gateway_url, Some(&tenant.agent), &args).await;
        tool(i).await;
    }
    let (mut direct, mut via_gw, mut via_mcp) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gw_extra, mut mcp_extra) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t0 = Instant::now();
        let a = http.post(&direct_url, Some(&tenant.agent), &args).await;
        let d = t0.elapsed();
        assert_eq!(a.status, 200, "{}", a.text);
        let t1 = Instant::now();
        let b = http.post(&gateway_url, Some(&tenant.agent), &args).await;
        let g = t1.elapsed();
        assert_eq!(b.status, 200, "{}", b.text);
        let t2 = Instant::now();
        tool(i).await;
        let m = t2.elapsed();
        direct.push(d);
        via_gw.push(g);
        via_mcp.push(m);
        gw_extra.push(g.saturating_sub(d));
        mcp_extra.push(m.saturating_sub(d));
    }
    report("POST /getItem at the proxy (direct)", direct);
    report("POST /proxy/<ns>/items/getItem (gateway)", via_gw);
    report("tools/call items__getItem (MCP)", via_mcp);
    report("gateway minus direct, per call", gw_extra);
    report("MCP minus direct, per call", mcp_extra);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
    match args.get(1).map(String::as_str) {
        Some("status") => status(n).await,
        Some("capability") => capability(n).await,
        _ => {
            eprintln!("usage: mcp_bench status N | mcp_bench capability N");
            std::process::exit(2);
        }
    }
}
