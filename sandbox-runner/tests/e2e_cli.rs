//! End to end through the real binary: a bundle with a sealed secret is unsealed with the
//! (insecure, development) key provider, the code calls a real local HTTPS upstream through the
//! enforcing scoped fetch, the credential is injected, denied calls never leave the sandbox,
//! and the secret appears in no output.

use std::path::PathBuf;
use std::process::Output;

use base64::Engine as _;
use oauth3_crds::PermitSpec;
use oauth3_sandbox_runner::secrets::{DevKey, DevProvider, seal};
use oauth3_test_support::Upstream;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const SECRET: &str = "sk-live-e2e-4b1d9c";
/// A digits-only secret (a PIN), the kind an upstream may hand back as a JSON number.
const PIN: &str = "48213597";
const NAMESPACE: &str = "team-a";
const DEV_KEY: [u8; 32] = [7u8; 32];

fn spec(up: &Upstream) -> Value {
    json!({
        "description": "e2e",
        "secrets": ["API_TOKEN"],
        "capabilities": [{
            "name": "api",
            "baseUrl": format!("{}/v1", up.origin()),
            "paths": ["/items", "/items/*", "/echo-auth"],
            "methods": ["GET", "POST"],
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }]
    })
}

/// A Permit whose `api` capability reaches every echo route of the upstream with `API_TOKEN`
/// and whose `pinned` capability sends `PIN` as the `key` query parameter.
fn echo_spec(up: &Upstream) -> Value {
    let echoes = [
        "/items/*",
        "/echo-split",
        "/echo-error",
        "/echo-number",
        "/echo-key",
    ];
    json!({
        "description": "e2e echoes",
        "secrets": ["API_TOKEN", "PIN"],
        "capabilities": [{
            "name": "api",
            "baseUrl": format!("{}/v1", up.origin()),
            "paths": echoes,
            "methods": ["GET"],
            "query": {"allow": ["pad"]},
            "auth": {"header": "Authorization", "value": "Bearer {API_TOKEN}"}
        }, {
            "name": "pinned",
            "baseUrl": format!("{}/v1", up.origin()),
            "paths": echoes,
            "methods": ["GET"],
            "query": {"allow": ["pad"]},
            "auth": {"queryParam": "key", "value": "{PIN}"}
        }]
    })
}

fn sealed_for(namespace: &str, name: &str) -> String {
    sealed_value(namespace, name, SECRET)
}

fn sealed_value(namespace: &str, name: &str, value: &str) -> String {
    let provider = DevProvider::new(DevKey::Hex(Zeroizing::new(hex::encode(DEV_KEY))), true)
        .expect("dev provider");
    seal(&provider.public_key(), namespace, name, value).expect("sealed")
}

fn bundle(up: &Upstream, code: &str, envelope: String) -> Value {
    bundle_with(
        spec(up),
        code,
        json!([{"name": "API_TOKEN", "envelope": envelope}]),
    )
}

/// A bundle of `code` under `spec_value` with these `sealedSecrets` (output capped at 1024
/// bytes, the smallest cap a bundle may ask for).
fn bundle_with(spec_value: Value, code: &str, sealed: Value) -> Value {
    let parsed: PermitSpec = serde_json::from_value(spec_value.clone()).expect("spec");
    json!({
        "execution": {"namespace": NAMESPACE, "name": "e2e", "uid": "uid-e2e"},
        "permit": {"name": "p", "spec": spec_value,
                   "specDigest": oauth3_crds::spec_digest(&parsed).expect("digest")},
        "code": code,
        "args": {},
        "sealedSecrets": sealed,
        "limits": {"timeoutSeconds": 10, "maxOutputBytes": 1024}
    })
}

/// The echo bundle with both secrets sealed.
fn echo_bundle(up: &Upstream, code: &str) -> Value {
    bundle_with(
        echo_spec(up),
        code,
        json!([
            {"name": "API_TOKEN", "envelope": sealed_for(NAMESPACE, "API_TOKEN")},
            {"name": "PIN", "envelope": sealed_value(NAMESPACE, "PIN", PIN)},
        ]),
    )
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("oauth3-e2e-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        Self(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(up: &Upstream, tag: &str, bundle: &Value) -> (Output, Value) {
    run_with(up, &Dir::new(tag), bundle, &[]).await
}

async fn run_with(
    up: &Upstream,
    dir: &Dir,
    bundle: &Value,
    extra: &[&std::ffi::OsStr],
) -> (Output, Value) {
    let bundle_path = dir.file("bundle.json", bundle.to_string().as_bytes());
    let key_path = dir.file("dev.key", hex::encode(DEV_KEY).as_bytes());
    let ca_path = dir.file("ca.pem", &up.ca_pem);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oauth3-sandbox-runner"))
        .args(["run", "--attestation", "none"])
        .arg("--bundle")
        .arg(&bundle_path)
        .args(["--key-provider", "dev", "--insecure-dev-key"])
        .arg("--dev-key-file")
        .arg(&key_path)
        .arg("--ca-file")
        .arg(&ca_path)
        .args(extra)
        .output()
        .await
        .expect("runner starts");
    let result = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, result)
}

/// Every form of the secret a careless or hostile output path might carry.
fn assert_no_secret(what: &str, text: &str) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    for form in [SECRET, b64.as_str(), b64url.as_str(), &hex::encode(SECRET)] {
        assert!(
            !text.contains(form),
            "{what} contains the secret ({form}): {text}"
        );
    }
}

/// Neither `secret`, nor its hex form, nor any prefix of it of four bytes or more appears in
/// `text` (a prefix is what a cut through the secret would leave behind).
fn assert_no_secret_or_prefix(what: &str, secret: &str, text: &str) {
    assert!(
        !text.contains(&hex::encode(secret)),
        "{what} contains the hex form of the secret: {text}"
    );
    for end in 4..=secret.len() {
        assert!(
            !text.contains(&secret[..end]),
            "{what} contains {:?}, a prefix of the secret: {text}",
            &secret[..end]
        );
    }
}

/// Everything the runner emitted: its standard output (the result JSON with result, stdout,
/// stderr, error and calls) and its standard error.
fn everything(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_digits_only_secret_echoed_as_a_number_or_a_key_reaches_no_output() {
    let up = Upstream::start().await;
    let code = r#"
        const n = await pinned('GET', '/echo-number');
        const k = await pinned('GET', '/echo-key');
        console.log(JSON.stringify(n), n.pin, typeof n.pin, String(n.pin * 1));
        console.error(JSON.stringify(k), Object.keys(k).join(','));
        return {n, k, pin: n.pin, keys: Object.keys(k), again: {[String(n.pin)]: n.pin}};
    "#;
    let (out, result) = run(&up, "pin", &echo_bundle(&up, code)).await;
    assert_eq!(out.status.code(), Some(0), "{}", everything(&out));
    assert_eq!(
        up.requests()[0].path_and_query,
        format!("/v1/echo-number?key={PIN}"),
        "the upstream got the PIN"
    );
    assert_eq!(result["result"]["n"], json!({"pin": "[REDACTED]"}));
    assert_eq!(result["result"]["pin"], "[REDACTED]");
    assert_eq!(result["result"]["k"]["[REDACTED]"], true);
    assert_no_secret_or_prefix("runner output", PIN, &everything(&out));
}

#[tokio::test]
async fn a_secret_the_code_joins_from_pieces_or_that_straddles_a_cut_reaches_no_output() {
    let up = Upstream::start().await;
    // Each piece alone is harmless; the code joins them into a result, a log line and a call
    // URL, and puts the whole secret across the 1024-byte stdout and stderr caps (so that a
    // cut before redaction would leave 9 and 5 of its bytes).
    let joined = r#"
        const {parts: [a, b]} = await api('GET', '/echo-split');
        console.log(a + b);
        await api('GET', '/items/' + a + b);
        const used = (a + b).length + 1;
        console.log('x'.repeat(1024 - used - 9) + a + b + 'z'.repeat(100));
        console.error('y'.repeat(1024 - 5) + a + b + 'z'.repeat(100));
        return {joined: a + b, nested: {[a + b]: [a + b]}};
    "#;
    let (out, result) = run(&up, "joined", &echo_bundle(&up, joined)).await;
    assert_eq!(out.status.code(), Some(0), "{}", everything(&out));
    assert_eq!(result["result"]["joined"], "[REDACTED]");
    assert!(
        result["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("output truncated"),
        "{result}"
    );
    assert_no_secret("runner output", &everything(&out));
    assert_no_secret_or_prefix("runner output", SECRET, &everything(&out));

    // Upstream errors quote the first 512 bytes of the body: the secret straddles that cut, in
    // a caught error the code logs and in the uncaught error that ends the run.
    let straddled = r#"
        try { await api('GET', '/echo-error', {query: {pad: '500'}}); }
        catch (e) { console.log(e.message); }
        try { await pinned('GET', '/echo-error', {query: {pad: '507'}}); }
        catch (e) { console.error(e.message); }
        await api('GET', '/echo-error', {query: {pad: '506'}});
    "#;
    let (out, result) = run(&up, "straddled", &echo_bundle(&up, straddled)).await;
    assert_eq!(out.status.code(), Some(1), "{}", everything(&out));
    assert_eq!(result["phase"], "Failed");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.contains("upstream returned 404: xxx"), "{error}");
    assert_no_secret_or_prefix("runner output", SECRET, &everything(&out));
    assert_no_secret_or_prefix("runner output", PIN, &everything(&out));
}

#[tokio::test]
async fn permitted_calls_get_the_unsealed_credential_and_denied_calls_never_leave() {
    let up = Upstream::start().await;
    let code = r#"
        const items = await api('GET', '/items');
        const echoed = await api('GET', '/echo-auth');
        console.log('upstream saw', JSON.stringify(echoed));
        console.error(btoaLike(JSON.stringify(echoed)));
        const denied = [];
        for (const p of ['/admin', '/items/%2e%2e/admin', '//evil.example/x']) {
            try { await api('GET', p); denied.push('sent ' + p); } catch (e) { denied.push(e.message); }
        }
        try { await api('DELETE', '/items'); } catch (e) { denied.push(e.message); }
        return {items, echoed, denied};
        function btoaLike(s) { return s.split('').reverse().join(''); }
    "#;
    let (out, result) = run(
        &up,
        "allowed",
        &bundle(&up, code, sealed_for(NAMESPACE, "API_TOKEN")),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {stderr}\nresult: {result}"
    );
    assert_eq!(result["phase"], "Succeeded");

    // The upstream received exactly the two permitted requests, each with the credential once.
    let reqs = up.requests();
    let paths: Vec<_> = reqs.iter().map(|r| r.path_and_query.as_str()).collect();
    assert_eq!(paths, ["/v1/items", "/v1/echo-auth"]);
    for r in &reqs {
        assert_eq!(
            r.header_values("authorization"),
            [format!("Bearer {SECRET}").as_str()]
        );
    }

    // The call log shows both allowed calls and every denial with its reason.
    let calls = result["calls"].as_array().expect("calls");
    let allowed = calls.iter().filter(|c| c["decision"] == "allowed").count();
    let denied: Vec<_> = calls.iter().filter(|c| c["decision"] == "denied").collect();
    assert_eq!(allowed, 2, "{calls:?}");
    assert_eq!(denied.len(), 4, "{calls:?}");
    assert!(
        denied
            .iter()
            .all(|c| c["reason"].as_str().is_some_and(|r| !r.is_empty()))
    );
    let messages = result["result"]["denied"]
        .as_array()
        .expect("denied messages");
    assert!(
        messages
            .iter()
            .all(|m| !m.as_str().unwrap_or("").starts_with("sent ")),
        "{messages:?}"
    );
    assert!(
        messages[3]
            .as_str()
            .unwrap_or("")
            .contains("method DELETE not allowed"),
        "{messages:?}"
    );

    // The echoed credential reached the code only in redacted form.
    let stdout = result["stdout"].as_str().expect("stdout");
    assert!(stdout.contains("[REDACTED]"), "{stdout}");
    let everything = format!("{}\n{stderr}", String::from_utf8_lossy(&out.stdout));
    assert_no_secret("runner output", &everything);
}

#[tokio::test]
async fn an_envelope_sealed_for_another_namespace_is_refused_and_nothing_is_sent() {
    let up = Upstream::start().await;
    let code = "return await api('GET', '/items')";
    let (out, result) = run(
        &up,
        "moved",
        &bundle(&up, code, sealed_for("other-team", "API_TOKEN")),
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "result: {result}");
    assert_ne!(result["phase"], "Succeeded");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.contains("unsealing"), "{error}");
    up.assert_nothing_received("the upstream must receive nothing");
    let everything = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_secret("runner output", &everything);
}

#[tokio::test]
async fn without_the_insecure_flag_the_dev_key_provider_is_refused() {
    let up = Upstream::start().await;
    let dir = Dir::new("noflag");
    let b = bundle(&up, "return 1", sealed_for(NAMESPACE, "API_TOKEN"));
    let bundle_path = dir.file("bundle.json", b.to_string().as_bytes());
    let key_path = dir.file("dev.key", hex::encode(DEV_KEY).as_bytes());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_oauth3-sandbox-runner"))
        .args([
            "run",
            "--attestation",
            "none",
            "--key-provider",
            "dev",
            "--bundle",
        ])
        .arg(&bundle_path)
        .arg("--dev-key-file")
        .arg(&key_path)
        .output()
        .await
        .expect("runner starts");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-dev-key"));
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn sealed_secrets_are_read_from_a_projected_volume_directory() {
    let up = Upstream::start().await;
    let dir = Dir::new("sealeddir");
    // The layout kubelet gives a projected volume: real files under ..data, symlinks beside it.
    let sealed = dir.0.join("sealed");
    std::fs::create_dir_all(sealed.join("..data")).expect("..data");
    std::fs::write(
        sealed.join("..data/API_TOKEN"),
        sealed_for(NAMESPACE, "API_TOKEN"),
    )
    .expect("envelope");
    std::os::unix::fs::symlink("..data/API_TOKEN", sealed.join("API_TOKEN")).expect("symlink");
    let mut b = bundle(&up, "return await api('GET', '/echo-auth')", String::new());
    b["sealedSecrets"] = json!([]);
    let (out, result) = run_with(
        &up,
        &dir,
        &b,
        &["--sealed-dir".as_ref(), sealed.as_os_str()],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{result}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header_values("authorization"),
        [format!("Bearer {SECRET}").as_str()]
    );
    assert_no_secret("runner output", &String::from_utf8_lossy(&out.stdout));
}

/// Runs the runner on `bundle` with the dev key and no `--ca-file` (no extra trust at all).
async fn run_without_ca_file(dir: &Dir, bundle: &Value) -> Output {
    let bundle_path = dir.file("bundle.json", bundle.to_string().as_bytes());
    let key_path = dir.file("dev.key", hex::encode(DEV_KEY).as_bytes());
    tokio::process::Command::new(env!("CARGO_BIN_EXE_oauth3-sandbox-runner"))
        .args(["run", "--attestation", "none"])
        .arg("--bundle")
        .arg(&bundle_path)
        .args(["--key-provider", "dev", "--insecure-dev-key"])
        .arg("--dev-key-file")
        .arg(&key_path)
        .output()
        .await
        .expect("runner starts")
}

#[tokio::test]
async fn the_callback_ca_in_the_bundle_verifies_the_callback_only_never_upstream_calls() {
    // The upstream doubles as the operator's callback: its CA is handed over in the bundle
    // (callback.caPem) and NOT with --ca-file, so only the result POST may trust it.
    let up = Upstream::start().await;
    let dir = Dir::new("callback-ca");
    let mut b = bundle(
        &up,
        "try { await api('GET', '/items'); return 'reached'; } catch (e) { return 'refused'; }",
        sealed_for(NAMESPACE, "API_TOKEN"),
    );
    b["callback"] = json!({
        "url": format!("{}/v1/results/{NAMESPACE}/e2e", up.origin()),
        "token": "cb-token-tls",
        "caPem": String::from_utf8(up.ca_pem.clone()).expect("pem"),
    });
    let out = run_without_ca_file(&dir, &b).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = serde_json::from_slice(&out.stdout).expect("result json");
    assert_eq!(result["result"], "refused", "{result} {stderr}");
    let requests = up.requests();
    assert_eq!(
        requests.len(),
        1,
        "only the result POST reached the server: {requests:?}"
    );
    assert_eq!(requests[0].method, "POST");
    assert_eq!(
        requests[0].path_and_query,
        format!("/v1/results/{NAMESPACE}/e2e")
    );
    assert_eq!(
        requests[0].header_values("authorization"),
        vec!["Bearer cb-token-tls"]
    );
    assert_no_secret("stderr", &stderr);
}

#[tokio::test]
async fn a_callback_whose_certificate_is_not_trusted_gets_no_result_and_no_token() {
    let up = Upstream::start().await;
    let dir = Dir::new("callback-untrusted");
    let mut b = bundle(&up, "return 1", sealed_for(NAMESPACE, "API_TOKEN"));
    b["callback"] = json!({
        "url": format!("{}/v1/results/{NAMESPACE}/e2e", up.origin()),
        "token": "cb-token-untrusted",
    });
    let out = run_without_ca_file(&dir, &b).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    up.assert_nothing_received("nothing was sent to an unverified callback");
    assert!(!stderr.contains("cb-token-untrusted"), "{stderr}");
}

/// A Permit with `**` inside a segment (accepted by old schemas, so it may still be stored)
/// is refused by the runner before any code runs: the approved reading "issues and below" is
/// never widened to "any depth", and nothing reaches the upstream.
#[tokio::test]
async fn a_double_star_inside_a_segment_fails_closed_and_nothing_is_sent() {
    let up = Upstream::start().await;
    let code = r#"
        const sent = [];
        for (const [m, p] of [['DELETE', '/repos/o/r'], ['GET', '/repos/o/r/issues/1'],
                              ['GET', '/repos/o/r/issuesX'], ['DELETE', '/repos']]) {
            try { await api(m, p); sent.push(m + ' ' + p); } catch (e) { }
        }
        return sent;
    "#;
    for glob in [
        "/repos/o/r/issues**",
        "/repos/***",
        "/repos/o/r/**issues",
        "/repos/o/**/r**",
        "/repos/o/r/is**ues/*",
    ] {
        let mut spec_value = spec(&up);
        spec_value["capabilities"][0]["paths"] = json!([glob]);
        spec_value["capabilities"][0]["methods"] = json!(["GET", "DELETE"]);
        let b = bundle_with(
            spec_value,
            code,
            json!([{"name": "API_TOKEN", "envelope": sealed_for(NAMESPACE, "API_TOKEN")}]),
        );
        let (out, result) = run(&up, "double-star", &b).await;
        assert_eq!(result["phase"], "Failed", "{glob}: {result}");
        let error = result["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("** must be a whole path segment"),
            "{glob}: {error}"
        );
        assert_ne!(out.status.code(), Some(0), "{glob}");
        assert_no_secret("runner output", &everything(&out));
    }
    up.assert_nothing_received("a Permit with ** inside a segment");
}

/// A plain-HTTP result endpoint on loopback that answers 503 until `ready_after` has passed
/// since it started, then 204; it records when each POST arrived.
struct FlakyCallback {
    url: String,
    posts: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Duration, u16)>>>,
}

impl FlakyCallback {
    async fn start(ready_after: std::time::Duration) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/v1/results/{NAMESPACE}/e2e",
            listener.local_addr().expect("addr")
        );
        let posts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = posts.clone();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    // Read the head and the body the head announces.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let body_end = loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                        if let Some(head) = text.find("\r\n\r\n") {
                            let len = text[..head]
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break head + 4 + len;
                        }
                    };
                    while buf.len() < body_end {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let at = started.elapsed();
                    let status = if at >= ready_after { 204 } else { 503 };
                    seen.lock().expect("lock").push((at, status));
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self { url, posts }
    }
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    u64::try_from(
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

/// The result endpoint is away (503: the API server is down behind it) for longer than a few
/// quick retries would cover: the runner keeps offering its result, with backoff, until it is
/// taken, well inside the Execution's deadline.
#[tokio::test]
async fn a_result_is_offered_until_the_endpoint_is_back_before_the_deadline() {
    let up = Upstream::start().await;
    let callback = FlakyCallback::start(std::time::Duration::from_secs(12)).await;
    let mut b = bundle(
        &up,
        "return await api('GET', '/items')",
        sealed_for(NAMESPACE, "API_TOKEN"),
    );
    let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    b["callback"] = json!({
        "url": callback.url,
        "token": "cb-token-outage",
        "deadlineUnixMs": unix_ms(deadline),
    });
    let (out, result) = run(&up, "outage", &b).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(result["phase"], "Succeeded");
    let posts = callback.posts.lock().expect("lock").clone();
    let (last_at, last_status) = *posts.last().expect("posted");
    assert_eq!(last_status, 204, "{posts:?}");
    assert!(last_at >= std::time::Duration::from_secs(12), "{posts:?}");
    assert!(
        posts.len() > 5,
        "more than the old five attempts: {posts:?}"
    );
    assert!(stderr.contains("offering the result again"), "{stderr}");
    assert!(!stderr.contains("cb-token-outage"), "{stderr}");
    // The upstream call happened once, whatever the callback did.
    assert_eq!(up.requests().len(), 1);
}

/// Past the deadline and the late-result window the runner stops offering, and says so.
#[tokio::test]
async fn a_result_is_not_offered_past_the_late_window() {
    let up = Upstream::start().await;
    let callback = FlakyCallback::start(std::time::Duration::from_secs(3600)).await;
    let mut b = bundle(&up, "return 1", sealed_for(NAMESPACE, "API_TOKEN"));
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    b["callback"] = json!({
        "url": callback.url,
        "token": "cb-token-late",
        "deadlineUnixMs": unix_ms(long_ago),
    });
    let (out, _) = run(&up, "late-window", &b).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gave up after 1 attempt(s)"), "{stderr}");
    assert_eq!(callback.posts.lock().expect("lock").len(), 1);
}
