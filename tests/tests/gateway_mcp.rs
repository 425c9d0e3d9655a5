//! The gateway's MCP endpoint driven by the official MCP TypeScript SDK
//! (`@modelcontextprotocol/sdk`, Streamable HTTP, from `tests/mcp-client`) on a real
//! kube-apiserver: real ServiceAccount tokens, the operator (process launcher) with the real
//! runner binary, a recording HTTPS upstream. An agent asks for a Permit as a tool call, the
//! owner approves it, the agent runs code under it; the agent's MCP credential never reaches
//! the upstream and the owner's secret never reaches the agent. Unauthenticated clients get the
//! protected-resource metadata; tenants never see each other's sessions or requests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kube::api::{Api, ListParams};
use oauth3_crds::Execution;
use oauth3_tests::gateway::{GatewayEnv, Http, InProcessGateway, Tenant};
use oauth3_tests::repo_root;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const SECRET: &str = "tok-mcp-e2e-93be1f";
const DEV_KEY: [u8; 32] = [9u8; 32];

fn client_dir() -> PathBuf {
    repo_root().join("tests").join("mcp-client")
}

/// Installs the SDK from the lock file unless it is there.
fn ensure_sdk() {
    oauth3_tests::npm_ci_once(&client_dir(), "@modelcontextprotocol/sdk");
}

/// One MCP client process (`tests/mcp-client/driver.mjs`), a command per line.
struct Mcp {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every answer, to check none carries the secret.
    seen: Vec<String>,
}

impl Mcp {
    fn spawn() -> Self {
        ensure_sdk();
        let mut child = tokio::process::Command::new("node")
            .arg(client_dir().join("driver.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            _child: child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    async fn send(&mut self, command: &Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the client");
    }

    async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .expect("the client answers within 120 s")
            .expect("read")
            .expect("the client is running");
        self.seen.push(line.clone());
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("client output {e}: {line}"))
    }

    async fn cmd(&mut self, command: Value) -> Value {
        self.send(&command).await;
        self.answer().await
    }

    async fn connect(base: &str, token: Option<&str>) -> (Self, Value) {
        let mut c = Self::spawn();
        let a = c
            .cmd(json!({"op": "connect", "url": format!("{base}/mcp"), "token": token}))
            .await;
        (c, a)
    }

    /// `tools/call`; the result, asserting the call itself (not the tool) worked.
    async fn call(&mut self, name: &str, arguments: Value) -> Value {
        let a = self
            .cmd(json!({"op": "call", "name": name, "arguments": arguments}))
            .await;
        assert_eq!(a["ok"], true, "tools/call {name}: {a}");
        a["result"].clone()
    }

    fn assert_no_secret(&self) {
        for line in &self.seen {
            assert!(
                !line.contains(SECRET),
                "the secret reached the agent: {line}"
            );
        }
    }
}

/// The shared environment with this file's dev enclave key.
async fn env(prefix: &str, operator: bool) -> Option<GatewayEnv> {
    GatewayEnv::new(prefix, operator, DEV_KEY, Duration::from_secs(20)).await
}

fn structured(result: &Value) -> &Value {
    &result["structuredContent"]
}

fn permit_spec(origin: &str) -> Value {
    json!({
        "description": "Read items",
        "secrets": ["API_TOKEN"],
        "capabilities": [{
            "name": "items",
            "baseUrl": format!("{origin}/v1"),
            "paths": ["/items/**", "/echo-auth"],
            "methods": ["GET"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"},
        }],
    })
}

#[tokio::test]
async fn an_mcp_agent_asks_for_a_permit_waits_for_the_owner_and_runs_code_under_it() {
    let Some(env) = env("gw-mcp", true).await else {
        return;
    };
    let (agent, owner) = (env.tenant.agent.clone(), env.tenant.owner.clone());
    let stored = env
        .http
        .post(
            &env.gw.url("/secrets"),
            Some(&owner),
            &json!({"name": "API_TOKEN", "value": SECRET}),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);

    let (mut mcp, hello) = Mcp::connect(&env.gw.base, Some(&agent)).await;
    assert_eq!(hello["ok"], true, "{hello}");
    assert_eq!(hello["protocolVersion"], "2025-11-25", "{hello}");
    assert_eq!(
        hello["capabilities"]["tools"]["listChanged"], true,
        "{hello}"
    );
    assert_eq!(hello["serverInfo"]["name"], "oauth3-gateway");
    assert!(
        hello["sessionId"].as_str().is_some_and(|s| s.len() >= 32),
        "{hello}"
    );

    let tools = mcp.cmd(json!({"op": "list"})).await;
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "request_permit",
            "permit_status",
            "execute",
            "execution_status"
        ],
        "{tools}"
    );
    let schema = &tools["tools"][0]["inputSchema"];
    assert!(
        schema["properties"]["capabilities"]["items"]["properties"]["baseUrl"].is_object(),
        "request_permit takes the CRD's capability fields: {schema}"
    );

    // Bad input is a tool error naming the field; nothing is created.
    let mut bad = permit_spec(&env.up.origin());
    bad["capabilities"][0]["baseUrl"] = json!("ftp://example.com");
    let r = mcp.call("request_permit", bad).await;
    assert_eq!(r["isError"], true, "{r}");
    let text = r["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("baseUrl") && text.contains("https"), "{text}");
    let r = mcp
        .call(
            "request_permit",
            json!({"description": "x", "capabilities": "all"}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("capabilities")),
        "{r}"
    );
    assert!(
        env.permits().await.is_empty(),
        "nothing created for bad input"
    );

    // A good request: pending, with the link the owner decides at.
    let r = mcp
        .call("request_permit", permit_spec(&env.up.origin()))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let asked = structured(&r).clone();
    assert_eq!(asked["status"], "pending", "{asked}");
    let permit_id = asked["permit_id"].as_str().expect("permit_id").to_owned();
    let request_id = asked["request_id"].as_str().expect("request_id").to_owned();
    assert!(
        asked["approval_url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!("/approve/{request_id}"))),
        "{asked}"
    );
    let r = mcp
        .call(
            "permit_status",
            json!({"permit_id": permit_id, "wait": false}),
        )
        .await;
    assert_eq!(structured(&r)["status"], "pending", "{r}");
    assert!(
        structured(&r)["approval_url"].is_string(),
        "the session that asked gets the link again: {r}"
    );

    // permit_status holds until the owner approves.
    mcp.send(
        &json!({"op": "call", "name": "permit_status", "arguments": {"request_id": request_id}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let decided = env
        .http
        .post(
            &env.gw.url(&format!("/approve/{request_id}")),
            Some(&owner),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(decided.status, 200, "{}", decided.text);
    let woke = mcp.answer().await;
    assert_eq!(woke["ok"], true, "{woke}");
    assert_eq!(structured(&woke["result"])["status"], "completed", "{woke}");
    assert_eq!(structured(&woke["result"])["phase"], "Approved", "{woke}");

    // Code under the Permit: the runner injects the secret; the agent sees only the result.
    // The upstream echoes the credential it got: the runner redacts it from what code sees.
    let code = "const e = await items('GET', '/echo-auth');\n\
                const l = await items('GET', '/items/7');\n\
                console.log('called', l.path);\n\
                return {path: l.path, echoed: JSON.stringify(e)};";
    let r = mcp
        .call(
            "execute",
            json!({"permitRef": permit_id, "code": code, "args": {"n": 1}}),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let done = structured(&r);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["success"], true, "{done}");
    assert_eq!(done["result"]["value"]["path"], "/v1/items/7", "{done}");
    assert!(
        done["result"]["stdout"]
            .as_str()
            .is_some_and(|s| s.contains("called /v1/items/7")),
        "{done}"
    );
    let calls = done["calls"].as_array().expect("call log");
    assert_eq!(calls.len(), 2, "{done}");
    let exec_id = done["request_id"].as_str().expect("request_id").to_owned();
    let again = mcp
        .call(
            "execution_status",
            json!({"request_id": exec_id, "wait": false}),
        )
        .await;
    assert_eq!(structured(&again)["status"], "completed", "{again}");

    // The upstream got the owner's secret and never the agent's MCP token.
    let got = env.up.requests();
    assert_eq!(got.len(), 2, "{got:?}");
    for r in &got {
        assert_eq!(
            r.header_values("authorization"),
            [format!("Bearer {SECRET}").as_str()]
        );
        let all = format!("{r:?}");
        assert!(
            !all.contains(&agent),
            "the agent's token reached the upstream"
        );
    }
    mcp.assert_no_secret();

    // A refusal by the Permit is a tool result with the reason, not a protocol error.
    let r = mcp
        .call(
            "execute",
            json!({"permitRef": permit_id, "code": "return await items('DELETE', '/items/7')"}),
        )
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("DELETE")),
        "the runner's reason: {r}"
    );
    assert_eq!(
        env.up.requests().len(),
        2,
        "nothing more reached the upstream"
    );
    let unknown = mcp
        .cmd(json!({"op": "call", "name": "no_such_tool", "arguments": {}}))
        .await;
    assert_eq!(unknown["ok"], false, "{unknown}");
    assert_eq!(unknown["code"], -32602, "{unknown}");
    let closed = mcp.cmd(json!({"op": "close"})).await;
    assert_eq!(closed["ok"], true);
    mcp.assert_no_secret();
    env.stop().await;
}

#[tokio::test]
async fn an_unauthenticated_mcp_client_is_refused_and_told_where_to_authorize() {
    let Some(env) = env("gw-mcp-auth", false).await else {
        return;
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}});
    for token in [None, Some("not-a-token")] {
        let a = env.http.post(&env.gw.url("/mcp"), token, &init).await;
        assert_eq!(a.status, 401, "{token:?}: {}", a.text);
        let challenge = a.header("www-authenticate").unwrap_or_default().to_owned();
        assert!(
            challenge.starts_with("Bearer ")
                && challenge.contains(&format!(
                    "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
                    env.gw.base
                )),
            "{challenge}"
        );
    }
    let meta = env
        .http
        .get(
            &env.gw.url("/.well-known/oauth-protected-resource/mcp"),
            None,
        )
        .await;
    assert_eq!(meta.status, 200, "{}", meta.text);
    assert_eq!(meta.body["resource"], format!("{}/mcp", env.gw.base));
    assert_eq!(meta.body["bearer_methods_supported"], json!(["header"]));
    let servers = meta.body["authorization_servers"]
        .as_array()
        .expect("authorization_servers");
    assert!(
        !servers.is_empty()
            && servers
                .iter()
                .all(|s| s.as_str().is_some_and(|s| s.starts_with("https://"))),
        "the issuer of the accepted tokens: {}",
        meta.text
    );

    // The SDK without a credential fails to connect, and nothing was created.
    let (_mcp, hello) = Mcp::connect(&env.gw.base, None).await;
    assert_eq!(hello["ok"], false, "{hello}");
    assert_eq!(hello["code"], 401, "{hello}");
    // A page of another site may not drive the endpoint with a user's credential.
    let a = env
        .http
        .post_raw(
            &env.gw.url("/mcp"),
            Some(&env.tenant.agent),
            "application/json",
            init.to_string().into_bytes(),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.text);
    assert!(env.permits().await.is_empty());
    env.stop().await;
}

#[tokio::test]
async fn mcp_sessions_and_requests_stay_within_their_tenant() {
    let Some(env) = env("gw-mcp-a", false).await else {
        return;
    };
    let other = Tenant::new(&env.admin, "gw-mcp-b").await;
    let (mut a, hello) = Mcp::connect(&env.gw.base, Some(&env.tenant.agent)).await;
    assert_eq!(hello["ok"], true, "{hello}");
    let session = hello["sessionId"].as_str().expect("session").to_owned();
    let r = a
        .call("request_permit", permit_spec(&env.up.origin()))
        .await;
    let request_id = structured(&r)["request_id"]
        .as_str()
        .expect("request_id")
        .to_owned();
    let permit_id = structured(&r)["permit_id"].as_str().expect("id").to_owned();

    // Tenant B's token with tenant A's session: not found, whatever it asks.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let answer = in_session(
        &env.http,
        &env.gw.url("/mcp"),
        &other.agent,
        &session,
        &list,
    )
    .await;
    assert_eq!(answer.status, 404, "{}", answer.text);
    let answer = in_session(
        &env.http,
        &env.gw.url("/mcp"),
        &env.tenant.agent,
        &session,
        &list,
    )
    .await;
    assert_eq!(
        answer.status, 200,
        "its own tenant's token works: {}",
        answer.text
    );
    assert!(answer.body["result"]["tools"].is_array(), "{}", answer.text);
    // Another replica serves the same session: nothing is shared between them.
    let replica = InProcessGateway::start(&env.admin, &["--auth-cache-ttl=0s"]).await;
    let answer = in_session(
        &env.http,
        &replica.url("/mcp"),
        &env.tenant.agent,
        &session,
        &list,
    )
    .await;
    assert_eq!(answer.status, 200, "a second replica: {}", answer.text);
    assert_eq!(
        answer.body["result"]["tools"].as_array().map(Vec::len),
        Some(4),
        "{}",
        answer.text
    );

    // Tenant B's own session sees nothing of A's.
    let (mut b, hello) = Mcp::connect(&env.gw.base, Some(&other.agent)).await;
    assert_eq!(hello["ok"], true, "{hello}");
    for (tool, args) in [
        (
            "permit_status",
            json!({"request_id": request_id, "wait": false}),
        ),
        (
            "permit_status",
            json!({"permit_id": permit_id, "wait": false}),
        ),
        (
            "execute",
            json!({"permitRef": permit_id, "code": "return 1", "wait": false}),
        ),
    ] {
        let r = b.call(tool, args.clone()).await;
        assert_eq!(r["isError"], true, "{tool} {args}: {r}");
        assert!(
            r["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("not found")),
            "{tool}: {r}"
        );
    }
    let theirs = Api::<Execution>::namespaced(env.admin.clone(), &other.ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(
        theirs.items.is_empty(),
        "nothing created in B for A's Permit"
    );
    let mine = Api::<Execution>::namespaced(env.admin.clone(), &env.tenant.ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(mine.items.is_empty(), "nothing created in A by B");
    // After DELETE the session is gone.
    let closed = a.cmd(json!({"op": "close"})).await;
    assert_eq!(closed["ok"], true);
    let answer = in_session(
        &env.http,
        &env.gw.url("/mcp"),
        &env.tenant.agent,
        &session,
        &list,
    )
    .await;
    assert_eq!(answer.status, 404, "{}", answer.text);
    env.stop().await;
}

/// One JSON-RPC message posted in MCP session `session`.
async fn in_session(
    http: &Http,
    url: &str,
    token: &str,
    session: &str,
    message: &Value,
) -> oauth3_tests::gateway::Answer {
    http.post_raw(
        url,
        Some(token),
        "application/json",
        message.to_string().into_bytes(),
        &[("mcp-session-id", session)],
    )
    .await
}

fn tool_names(list: &Value) -> Vec<String> {
    list["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn capability_tools_appear_for_their_callers_when_approved_and_go_with_revocation() {
    let Some(env) = env("gw-mcp-tools", true).await else {
        return;
    };
    let other = Tenant::new(&env.admin, "gw-mcp-tools-b").await;
    let agent_user = format!("system:serviceaccount:{}:agent", env.tenant.ns);
    let (mut a, hello) = Mcp::connect(&env.gw.base, Some(&env.tenant.agent)).await;
    assert_eq!(hello["ok"], true, "{hello}");
    let (mut b, hello) = Mcp::connect(&env.gw.base, Some(&other.agent)).await;
    assert_eq!(hello["ok"], true, "{hello}");
    let r = a
        .call(
            "request_permit",
            json!({
                "description": "Read items without code",
                "secrets": ["API_TOKEN"],
                "proxy": {"enabled": true, "callers": [agent_user]},
                "capabilities": [{
                    "name": "getItem",
                    "endpoint": format!("{}/v1/items/{{id}}", env.up.origin()),
                    "method": "GET",
                    "params": {"id": {"in": "path", "pattern": "[0-9]+"}},
                    "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"},
                }],
            }),
        )
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let permit_id = structured(&r)["permit_id"].as_str().expect("id").to_owned();
    let request_id = structured(&r)["request_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let tool = format!("{permit_id}__getItem");
    let listed = a.cmd(json!({"op": "list"})).await;
    assert_eq!(
        tool_names(&listed).len(),
        4,
        "nothing until approved: {listed}"
    );
    let before = a.cmd(json!({"op": "count"})).await["count"]
        .as_u64()
        .unwrap_or(0);

    // The owner's sealed secret, which the operator's proxy for this Permit unseals.
    oauth3_tests::apply_dev_sealed_secret(
        &env.admin,
        &env.tenant.ns,
        "api-token",
        "API_TOKEN",
        SECRET,
        DEV_KEY,
    )
    .await;
    // The owner approves: the session is told, and the capability is a tool.
    let decided = env
        .http
        .post(
            &env.gw.url(&format!("/approve/{request_id}")),
            Some(&env.tenant.owner),
            &json!({"action": "approve"}),
        )
        .await;
    assert_eq!(decided.status, 200, "{}", decided.text);
    let told = a
        .cmd(json!({"op": "waitListChanged", "after": before, "timeoutMs": 20000}))
        .await;
    assert_eq!(
        told["ok"], true,
        "tools/list_changed after approval: {told}"
    );
    let listed = a.cmd(json!({"op": "list"})).await;
    assert!(tool_names(&listed).contains(&tool), "{listed}");
    let entry = listed["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .find(|t| t["name"] == tool.as_str())
        .expect("the tool");
    assert_eq!(entry["inputSchema"]["required"], json!(["id"]), "{entry}");
    assert!(
        entry["description"]
            .as_str()
            .is_some_and(|d| d.contains("Read items without code")),
        "{entry}"
    );
    // Another tenant's agent sees none of it and hears nothing.
    let theirs = b.cmd(json!({"op": "list"})).await;
    assert_eq!(tool_names(&theirs).len(), 4, "{theirs}");
    assert_eq!(b.cmd(json!({"op": "count"})).await["count"], 0);

    // Calling the tool: the gateway forwards it to the Permit's credential proxy (the one the
    // operator started on approval) with the caller's own token, which the operator reviews;
    // the upstream gets the owner's secret, never the token.
    let permits: Api<oauth3_crds::Permit> = Api::namespaced(env.admin.clone(), &env.tenant.ns);
    oauth3_test_support::wait_until(
        "the operator's proxy is Ready",
        Duration::from_secs(60),
        || {
            let permits = permits.clone();
            let id = permit_id.clone();
            async move {
                let p = permits.get(&id).await.map_err(|e| e.to_string())?;
                let proxy = p.status.and_then(|s| s.proxy);
                match proxy.as_ref().map(|x| x.phase) {
                    Some(oauth3_crds::ProxyPhase::Ready) => Ok(()),
                    _ => Err(format!("{proxy:?}")),
                }
            }
        },
    )
    .await;
    let r = a.call(&tool, json!({"id": "7"})).await;
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["_meta"]["status"], 200, "{r}");
    assert_eq!(r["structuredContent"]["path"], "/v1/items/7", "{r}");
    let got: Vec<_> = env
        .up
        .requests()
        .into_iter()
        .filter(|q| q.path_and_query.starts_with("/v1/items"))
        .collect();
    assert_eq!(got.len(), 1, "one call reached the upstream");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!("Bearer {SECRET}")]
    );
    assert!(
        got[0]
            .headers
            .iter()
            .all(|(_, v)| !v.contains(&env.tenant.agent)),
        "the caller's token reached the upstream"
    );
    // A call the Permit refuses (the id must be digits) is the proxy's reason; nothing sent.
    let refused = a.call(&tool, json!({"id": "../admin"})).await;
    assert_eq!(refused["isError"], true, "{refused}");
    assert!(
        refused["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("refused by oauth3 (policy)")),
        "{refused}"
    );
    assert_eq!(
        env.up
            .requests()
            .iter()
            .filter(|q| q.path_and_query.starts_with("/v1/items"))
            .count(),
        1,
        "the refused call was not sent"
    );
    a.assert_no_secret();

    // Revocation removes the tool and tells the session.
    let seen = a.cmd(json!({"op": "count"})).await["count"]
        .as_u64()
        .unwrap_or(0);
    oauth3_operator::plugin::record_decision(
        &env.admin,
        &env.tenant.ns,
        &permit_id,
        oauth3_operator::approval::Decision::Revoke,
        "owner",
        oauth3_crds::ApprovalVia::Kubectl,
    )
    .await
    .expect("revoke");
    let told = a
        .cmd(json!({"op": "waitListChanged", "after": seen, "timeoutMs": 20000}))
        .await;
    assert_eq!(
        told["ok"], true,
        "tools/list_changed after revocation: {told}"
    );
    let listed = a.cmd(json!({"op": "list"})).await;
    assert!(!tool_names(&listed).contains(&tool), "{listed}");
    env.stop().await;
}
