//! Specification of the QuickJS sandbox: what scripts can see and do, and how limits end them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oauth3_crds::{CallDecision, CallRecord};
use oauth3_sandbox_runner::host::{BoxFuture, CallOutcome, CapabilityCall, CapabilityHost};
use oauth3_sandbox_runner::redact::Redactor;
use oauth3_sandbox_runner::sandbox::{self, Limits, Outcome, SandboxError, SandboxOutput};
use serde_json::{Value, json};

/// A host with canned answers: `echo` resolves with its arguments, `deny` rejects, `never`
/// never settles. Records every call it receives.
#[derive(Default)]
struct TestHost {
    extra: Vec<String>,
    received: Mutex<Vec<CapabilityCall>>,
}

impl TestHost {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn with_capability(name: &str) -> Arc<Self> {
        Arc::new(Self {
            extra: vec![name.to_owned()],
            ..Self::default()
        })
    }

    fn received(&self) -> Vec<CapabilityCall> {
        self.received.lock().expect("lock").clone()
    }
}

impl CapabilityHost for TestHost {
    fn capabilities(&self) -> Vec<String> {
        let mut names = vec!["echo".to_owned(), "deny".to_owned(), "never".to_owned()];
        names.extend(self.extra.iter().cloned());
        names
    }

    fn call(&self, call: CapabilityCall) -> BoxFuture<'_, CallOutcome> {
        self.received.lock().expect("lock").push(call.clone());
        Box::pin(async move {
            match call.capability.as_str() {
                "echo" => CallOutcome::Value(json!({ "got": call.args })),
                "never" => std::future::pending().await,
                _ => CallOutcome::Error("denied: path /admin is not in the Permit".to_owned()),
            }
        })
    }

    fn calls(&self) -> Vec<CallRecord> {
        self.received()
            .into_iter()
            .map(|c| CallRecord {
                capability: c.capability,
                method: String::new(),
                url: String::new(),
                status: None,
                decision: CallDecision::Allowed,
                reason: None,
                duration_ms: 0,
            })
            .collect()
    }
}

fn limits() -> Limits {
    Limits {
        wall_time: Duration::from_secs(2),
        memory_bytes: 32 * 1024 * 1024,
        stack_bytes: 256 * 1024,
        max_output_bytes: 4096,
        max_calls: 10,
    }
}

async fn run_with(code: &str, args: Value, host: Arc<TestHost>, limits: &Limits) -> SandboxOutput {
    sandbox::run(code, &args, host, limits, Arc::new(Redactor::none()))
        .await
        .expect("the sandbox starts")
}

async fn run(code: &str) -> SandboxOutput {
    run_with(code, Value::Null, TestHost::new(), &limits()).await
}

async fn returned(code: &str) -> Value {
    match run(code).await.outcome {
        Outcome::Returned(v) => v,
        other => panic!("expected a returned value, got {other:?}"),
    }
}

#[tokio::test]
async fn the_return_value_of_the_code_is_the_result() {
    assert_eq!(
        returned("return {sum: 1 + 1, list: [1, 'a', null]}").await,
        json!({"sum": 2, "list": [1, "a", null]})
    );
}

#[tokio::test]
async fn code_that_returns_nothing_yields_null() {
    assert_eq!(returned("let x = 1;").await, Value::Null);
    assert_eq!(returned("return undefined").await, Value::Null);
}

#[tokio::test]
async fn the_code_may_await_at_top_level() {
    assert_eq!(
        returned("const v = await Promise.resolve(41); return v + 1").await,
        json!(42)
    );
}

#[tokio::test]
async fn args_are_visible_to_the_code() {
    let out = run_with(
        "return args.n * 2 + args.list.length",
        json!({"n": 5, "list": [1, 2, 3]}),
        TestHost::new(),
        &limits(),
    )
    .await;
    assert_eq!(out.outcome, Outcome::Returned(json!(13)));
}

#[tokio::test]
async fn console_output_is_captured_into_stdout_and_stderr() {
    let out = run("console.log('hello', 42, {a: [1]}); console.info('info');
         console.error('bad'); console.warn('careful'); return 0")
    .await;
    assert_eq!(out.stdout, "hello 42 {\"a\":[1]}\ninfo\n");
    assert_eq!(out.stderr, "bad\ncareful\n");
}

#[tokio::test]
async fn a_capability_call_round_trips_through_the_host() {
    let host = TestHost::new();
    let out = run_with(
        "const r = await echo('GET', '/repos/o/r', {query: {state: 'open'}}); return r",
        Value::Null,
        Arc::clone(&host),
        &limits(),
    )
    .await;
    let expected_args = vec![
        json!("GET"),
        json!("/repos/o/r"),
        json!({"query": {"state": "open"}}),
    ];
    assert_eq!(
        out.outcome,
        Outcome::Returned(json!({ "got": expected_args }))
    );
    assert_eq!(
        host.received(),
        vec![CapabilityCall {
            capability: "echo".to_owned(),
            args: expected_args
        }]
    );
}

#[tokio::test]
async fn capability_functions_are_async_functions_named_after_the_capability() {
    assert_eq!(
        returned("return [typeof echo, echo.name, echo('x') instanceof Promise]").await,
        json!(["function", "echo", true])
    );
}

#[tokio::test]
async fn undefined_arguments_reach_the_host_as_null() {
    let host = TestHost::new();
    run_with(
        "await echo(undefined)",
        Value::Null,
        Arc::clone(&host),
        &limits(),
    )
    .await;
    assert_eq!(host.received()[0].args, vec![Value::Null]);
}

#[tokio::test]
async fn a_rejected_call_becomes_a_catchable_error() {
    let out = returned(
        "try { await deny('DELETE', '/admin'); return 'not reached' }
         catch (e) { return [e instanceof Error, e.message] }",
    )
    .await;
    assert_eq!(
        out,
        json!([true, "denied: path /admin is not in the Permit"])
    );
}

#[tokio::test]
async fn an_uncaught_rejection_fails_the_script_with_the_reason() {
    match run("await deny('GET', '/admin')").await.outcome {
        Outcome::Threw(msg) => assert!(msg.contains("not in the Permit"), "{msg}"),
        other => panic!("expected Threw, got {other:?}"),
    }
}

#[tokio::test]
async fn an_argument_that_is_not_json_rejects_without_reaching_the_host() {
    let host = TestHost::new();
    let out = run_with(
        "const a = {}; a.self = a;
         try { await echo(a) } catch (e) { return e.message }",
        Value::Null,
        Arc::clone(&host),
        &limits(),
    )
    .await;
    match out.outcome {
        Outcome::Returned(Value::String(m)) => assert!(m.contains("not JSON"), "{m}"),
        other => panic!("expected the rejection message, got {other:?}"),
    }
    assert!(host.received().is_empty(), "the host must see no call");
}

#[tokio::test]
async fn no_ambient_authority_is_reachable() {
    let host = TestHost::new();
    let names = [
        "fetch",
        "require",
        "Bun",
        "setTimeout",
        "setInterval",
        "XMLHttpRequest",
        "WebSocket",
        "std",
        "os",
        "performance",
        "navigator",
        "print",
        "scriptArgs",
        "module",
        "exports",
    ];
    let code = format!(
        "return [{}].map(([n, t]) => n + ':' + t)",
        names
            .iter()
            .map(|n| format!("['{n}', typeof {n}]"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = run_with(&code, Value::Null, Arc::clone(&host), &limits()).await;
    let expected: Vec<String> = names.iter().map(|n| format!("{n}:undefined")).collect();
    assert_eq!(out.outcome, Outcome::Returned(json!(expected)));
    // `Deno` and `process` are the sandbox's own: a read-only `env` and nothing else.
    let out = run_with(
        "return [Object.getOwnPropertyNames(Deno), Object.getOwnPropertyNames(process), \
         typeof Deno.readFile, typeof Deno.run, typeof process.exit, typeof process.binding]",
        Value::Null,
        Arc::clone(&host),
        &limits(),
    )
    .await;
    assert_eq!(
        out.outcome,
        Outcome::Returned(json!([
            ["env"],
            ["env"],
            "undefined",
            "undefined",
            "undefined",
            "undefined"
        ]))
    );
    assert!(host.received().is_empty(), "no call may reach the host");
}

#[tokio::test]
async fn dynamic_import_fails() {
    let host = TestHost::new();
    for specifier in ["os", "std", "./x.js", "https://example.com/x.js"] {
        let out = run_with(
            &format!("try {{ await import('{specifier}'); return 'imported' }} catch (e) {{ return 'refused' }}"),
            Value::Null,
            Arc::clone(&host),
            &limits(),
        )
        .await;
        assert_eq!(
            out.outcome,
            Outcome::Returned(json!("refused")),
            "{specifier}"
        );
    }
    assert!(host.received().is_empty());
}

#[tokio::test]
async fn eval_runs_inside_the_same_sandbox_only() {
    assert_eq!(
        returned("return [eval('typeof fetch'), new Function('return typeof setTimeout')()]").await,
        json!(["undefined", "undefined"])
    );
}

#[tokio::test]
async fn a_thrown_error_reports_its_message_and_stack() {
    match run("function inner() { throw new TypeError('boom') }\ninner()")
        .await
        .outcome
    {
        Outcome::Threw(msg) => {
            assert!(msg.starts_with("TypeError: boom"), "{msg}");
            assert!(msg.contains("inner"), "stack names the function: {msg}");
            assert!(msg.contains("execution.js"), "stack names the file: {msg}");
        }
        other => panic!("expected Threw, got {other:?}"),
    }
}

#[tokio::test]
async fn throwing_a_non_error_value_is_reported_too() {
    match run("throw {code: 7}").await.outcome {
        Outcome::Threw(msg) => assert!(msg.contains("\"code\":7"), "{msg}"),
        other => panic!("expected Threw, got {other:?}"),
    }
}

#[tokio::test]
async fn a_syntax_error_is_reported_as_thrown() {
    match run("return (").await.outcome {
        Outcome::Threw(msg) => assert!(msg.contains("SyntaxError"), "{msg}"),
        other => panic!("expected Threw, got {other:?}"),
    }
}

#[tokio::test]
async fn a_busy_loop_times_out() {
    let limits = Limits {
        wall_time: Duration::from_millis(300),
        ..limits()
    };
    let started = Instant::now();
    let out = run_with("while (true) {}", Value::Null, TestHost::new(), &limits).await;
    assert_eq!(out.outcome, Outcome::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_busy_loop_cannot_catch_its_timeout() {
    let limits = Limits {
        wall_time: Duration::from_millis(300),
        ..limits()
    };
    let out = run_with(
        "for (;;) { try { while (true) {} } catch (e) { console.log('caught') } }",
        Value::Null,
        TestHost::new(),
        &limits,
    )
    .await;
    assert_eq!(out.outcome, Outcome::TimedOut);
    assert_eq!(out.stdout, "");
}

#[tokio::test]
async fn a_promise_that_never_settles_times_out() {
    let limits = Limits {
        wall_time: Duration::from_millis(300),
        ..limits()
    };
    let started = Instant::now();
    let out = run_with(
        "await new Promise(() => {})",
        Value::Null,
        TestHost::new(),
        &limits,
    )
    .await;
    assert_eq!(out.outcome, Outcome::TimedOut);
    let out = run_with(
        "await never('GET', '/')",
        Value::Null,
        TestHost::new(),
        &limits,
    )
    .await;
    assert_eq!(out.outcome, Outcome::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn output_printed_before_a_timeout_is_kept() {
    let limits = Limits {
        wall_time: Duration::from_millis(200),
        ..limits()
    };
    let out = run_with(
        "console.log('started'); while (true) {}",
        Value::Null,
        TestHost::new(),
        &limits,
    )
    .await;
    assert_eq!(out.outcome, Outcome::TimedOut);
    assert_eq!(out.stdout, "started\n");
}

#[tokio::test]
async fn a_memory_bomb_ends_as_out_of_memory() {
    let out = run("const a = []; while (true) { a.push('x'.repeat(1 << 20) + a.length) }").await;
    assert_eq!(out.outcome, Outcome::OutOfMemory);
}

#[tokio::test]
async fn deep_recursion_is_a_stack_error_not_a_crash() {
    match run("function f(n) { return f(n + 1) + 1 } return f(0)")
        .await
        .outcome
    {
        Outcome::Threw(msg) => assert!(msg.to_lowercase().contains("stack"), "{msg}"),
        other => panic!("expected a stack error, got {other:?}"),
    }
}

#[tokio::test]
async fn output_is_capped_with_a_truncation_marker() {
    let limits = Limits {
        max_output_bytes: 1024,
        ..limits()
    };
    let out = run_with(
        "for (let i = 0; i < 10000; i++) { console.log('line ' + i); console.error('e' + i) } return 'done'",
        Value::Null,
        TestHost::new(),
        &limits,
    )
    .await;
    assert_eq!(out.outcome, Outcome::Returned(json!("done")));
    for stream in [&out.stdout, &out.stderr] {
        assert!(stream.len() < 1024 + 64, "{} bytes", stream.len());
        assert!(stream.contains("[output truncated at 1024 bytes]"));
        assert!(!stream.contains("9999"), "nothing after the cap is kept");
    }
}

#[tokio::test]
async fn a_result_larger_than_the_output_cap_is_refused() {
    let limits = Limits {
        max_output_bytes: 1024,
        ..limits()
    };
    let out = run_with(
        "return 'x'.repeat(5000)",
        Value::Null,
        TestHost::new(),
        &limits,
    )
    .await;
    assert!(
        matches!(out.outcome, Outcome::InvalidResult(ref m) if m.contains("1024")),
        "{:?}",
        out.outcome
    );
}

#[tokio::test]
async fn a_result_that_is_not_json_is_refused() {
    let out = run("return 10n").await;
    assert!(
        matches!(out.outcome, Outcome::InvalidResult(_)),
        "{:?}",
        out.outcome
    );
}

#[tokio::test]
async fn calls_past_the_call_cap_reject_without_reaching_the_host() {
    let host = TestHost::new();
    let limits = Limits {
        max_calls: 3,
        ..limits()
    };
    let out = run_with(
        "const results = [];
         for (let i = 0; i < 5; i++) {
           try { await echo(i); results.push('ok') } catch (e) { results.push(e.message) }
         }
         return results",
        Value::Null,
        Arc::clone(&host),
        &limits,
    )
    .await;
    let Outcome::Returned(Value::Array(results)) = out.outcome else {
        panic!("expected a list, got {:?}", out.outcome);
    };
    assert_eq!(results[..3], [json!("ok"), json!("ok"), json!("ok")]);
    for r in &results[3..] {
        assert!(r.as_str().expect("message").contains("call limit"), "{r}");
    }
    assert_eq!(
        host.received().len(),
        3,
        "the host saw only the allowed calls"
    );
}

#[tokio::test]
async fn a_capability_that_would_shadow_a_global_is_refused() {
    for name in ["JSON", "console", "args", "not-an-identifier"] {
        let err = sandbox::run(
            "return 1",
            &Value::Null,
            TestHost::with_capability(name),
            &limits(),
            Arc::new(Redactor::none()),
        )
        .await
        .expect_err("refused");
        assert!(
            matches!(err, SandboxError::CapabilityName(ref n) if n == name),
            "{err}"
        );
    }
}

#[tokio::test]
async fn runs_are_isolated_from_each_other() {
    let host = TestHost::new();
    run_with(
        "globalThis.leak = 'secret'; return 1",
        Value::Null,
        Arc::clone(&host),
        &limits(),
    )
    .await;
    let out = run_with("return typeof leak", Value::Null, host, &limits()).await;
    assert_eq!(out.outcome, Outcome::Returned(json!("undefined")));
}

/// The global scope, own and inherited, holds only the built-ins and what the runner adds
/// (`oauth3_crds::SANDBOX_GLOBALS`), `Object.prototype`'s properties, the capabilities and
/// the sandbox's own read-only `Deno` and `process` (names it first removes from the engine,
/// see `SANDBOX_REMOVED_GLOBALS`): no `fetch` without a fetch capability, no timers or engine
/// internals. The same lists are what the schema refuses as capability names, so a built-in
/// added by a QuickJS upgrade fails this test instead of failing Permits at launch.
#[tokio::test]
async fn the_global_scope_holds_only_builtins_console_and_capabilities() {
    let names = returned(
        r#"
        const names = new Set();
        for (let o = globalThis; o; o = Object.getPrototypeOf(o)) {
            for (const n of Object.getOwnPropertyNames(o)) names.add(n);
        }
        return [...names];
        "#,
    )
    .await;
    let names: Vec<String> = serde_json::from_value(names).expect("names");
    assert!(names.len() > 50, "{names:?}");
    let capabilities = TestHost::new().capabilities();
    let unexpected: Vec<&String> = names
        .iter()
        .filter(|n| !capabilities.contains(n))
        .filter(|n| {
            !oauth3_crds::SANDBOX_GLOBALS.contains(&n.as_str())
                && !oauth3_crds::OBJECT_PROTOTYPE_NAMES.contains(&n.as_str())
                && !["Deno", "process"].contains(&n.as_str())
        })
        .collect();
    assert!(unexpected.is_empty(), "unexpected globals: {unexpected:?}");
    for replaced in ["Deno", "process"] {
        assert!(
            oauth3_crds::SANDBOX_REMOVED_GLOBALS.contains(&replaced),
            "{replaced} is removed from the engine before the sandbox installs its own"
        );
    }
    for expected in ["console", "echo", "JSON", "toString", "URL", "Deno"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing");
    }
}

/// Every listed name is refused by the sandbox itself when a (schema-bypassing) Permit uses it.
#[tokio::test]
async fn a_capability_named_like_a_sandbox_name_is_refused_at_install() {
    for name in oauth3_crds::SANDBOX_GLOBALS
        .iter()
        .chain(oauth3_crds::OBJECT_PROTOTYPE_NAMES)
        .chain(oauth3_crds::SANDBOX_REMOVED_GLOBALS)
        .chain(oauth3_crds::JS_RESERVED_WORDS)
    {
        let out = sandbox::run(
            "return 1",
            &Value::Null,
            TestHost::with_capability(name),
            &limits(),
            Arc::new(Redactor::none()),
        )
        .await;
        assert!(
            matches!(out, Err(sandbox::SandboxError::CapabilityName(ref n)) if n == name),
            "{name}: {:?}",
            out.map(|o| o.outcome)
        );
    }
}

/// The web-standard helpers every Execution has behave as the standards say on the cases code
/// relies on, and carry no authority (nothing reaches a capability).
#[tokio::test]
async fn web_standard_helpers_work_like_the_standards_say() {
    let got = returned(
        r#"
        const enc = new TextEncoder();
        const bytes = enc.encode('héllo €𝄞');
        const dec = new TextDecoder();
        let fatal = null;
        try { new TextDecoder('utf-8', {fatal: true}).decode(new Uint8Array([0xff])); }
        catch (e) { fatal = e instanceof TypeError; }
        let latin = null;
        try { btoa('€'); } catch (e) { latin = e.name; }
        let badB64 = null;
        try { atob('a'); } catch (e) { badB64 = e.name; }
        const original = {d: new Date(0), m: new Map([['k', [1, 2]]]), s: new Set([1]), n: {x: 1}};
        original.self = original;
        const copy = structuredClone(original);
        let fn = null;
        try { structuredClone({f() {}}); } catch (e) { fn = e.name; }
        const r = crypto.getRandomValues(new Uint8Array(32));
        const uuid = crypto.randomUUID();
        let big = null;
        try { crypto.getRandomValues(new Uint8Array(65537)); } catch (e) { big = e.name; }
        return {
            bytes: Array.from(bytes),
            roundTrip: dec.decode(bytes),
            replaced: dec.decode(new Uint8Array([0x61, 0xff, 0x62, 0xe2, 0x82])),
            bom: dec.decode(new Uint8Array([0xef, 0xbb, 0xbf, 0x41])),
            fatal,
            b64: btoa('hello world'),
            back: atob(' aGVs bG8g d29y bGQ= '),
            basic: btoa('user:' + 'pa$$'),
            latin, badB64,
            cloned: copy !== original && copy.self === copy && copy.d.getTime() === 0
                && copy.m.get('k')[1] === 2 && copy.m.get('k') !== original.m.get('k')
                && copy.s.has(1) && copy.n.x === 1,
            fn,
            randomLen: r.length,
            randomVaries: new Set(r).size > 4,
            uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(uuid),
            uuidsDiffer: uuid !== crypto.randomUUID(),
            big,
            hidden: typeof randomBytes,
        };
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "bytes": [104, 195, 169, 108, 108, 111, 32, 226, 130, 172, 240, 157, 132, 158],
            "roundTrip": "héllo €𝄞",
            "replaced": "a\u{fffd}b\u{fffd}",
            "bom": "A",
            "fatal": true,
            "b64": "aGVsbG8gd29ybGQ=",
            "back": "hello world",
            "basic": "dXNlcjpwYSQk",
            "latin": "InvalidCharacterError",
            "badB64": "InvalidCharacterError",
            "cloned": true,
            "fn": "DataCloneError",
            "randomLen": 32,
            "randomVaries": true,
            "uuid": true,
            "uuidsDiffer": true,
            "big": "QuotaExceededError",
            "hidden": "undefined",
        })
    );
}

/// The helpers load on first read and behave as plain globals: code may replace one before or
/// after using it, and each run gets its own.
#[tokio::test]
async fn web_helpers_are_plain_replaceable_globals() {
    let got = returned(
        r#"
        btoa = (s) => 'mine:' + s;
        const replaced = btoa('x');
        const first = typeof TextEncoder;
        TextEncoder = 1;
        globalThis.crypto.extra = 1;
        return {replaced, first, after: TextEncoder, frozen: globalThis.crypto.extra === undefined};
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({"replaced": "mine:x", "first": "function", "after": 1, "frozen": true})
    );
    assert_eq!(
        returned("return typeof TextEncoder").await,
        json!("function")
    );
}
