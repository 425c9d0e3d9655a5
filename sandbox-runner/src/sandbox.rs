//! The QuickJS sandbox: runs agent JavaScript with no ambient authority under hard limits.
//!
//! The script runs as the body of `(async (args) => { <code> })(args)`. Its global scope holds
//! only the standard ECMAScript built-ins (JSON, Math, Date, Object, Array, Promise, RegExp,
//! Map/Set, typed arrays, Proxy, Reflect, WeakRef), `args`, a `console` whose output is
//! captured, one async function per capability of the [`CapabilityHost`], the pure web
//! helpers and classes (`atob`, `btoa`, `TextEncoder`, `TextDecoder`, `structuredClone`,
//! `crypto`, `URL`, `URLSearchParams`, `Headers`, `Request`, `Response`), a read-only
//! environment (`Deno.env`, `process.env`, nothing else of `Deno` or `process`) and, only when
//! [`CapabilityHost::has_fetch`], a `fetch` that hands a normalised
//! [`FetchRequest`](crate::host::FetchRequest) to [`CapabilityHost::fetch`]. There is no
//! `require`, timer, `std`/`os` module or module loader (dynamic `import()` rejects). The only
//! ways out of the sandbox are [`CapabilityHost::call`] and [`CapabilityHost::fetch`], and both
//! count toward [`Limits::max_calls`].
//!
//! The web globals are loaded the first time code reads one (see [`web`]), so code that uses
//! none of them pays only for installing the accessors. `URL` parses with the
//! `url` crate's WHATWG implementation; that parser, the fetch bridge and the environment are
//! Rust functions captured by the JavaScript that uses them, never globals (see `web`).
//!
//! `eval` and `Function` are kept: they evaluate JavaScript inside this same context, with the
//! same globals, so they grant nothing the script could not already write directly.
//!
//! Limits: wall time (an interrupt handler stops busy loops; a timeout on the async drive ends
//! scripts waiting on promises that never settle), memory (QuickJS allocator limit), stack
//! depth, captured output size and the number of capability and `fetch` calls.
//!
//! Console output is redacted by the run's [`Redactor`] as it is captured, before the output
//! cap cuts it (see [`append_capped`]), so a secret straddling the cap is replaced whole.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rquickjs::context::EvalOptions;
use rquickjs::context::intrinsic;
use rquickjs::function::Rest;
use rquickjs::{AsyncContext, AsyncRuntime, Ctx, Exception, Function, Object, Promise, Value};

use crate::host::{CallOutcome, CapabilityCall, CapabilityHost};
use crate::redact::Redactor;

mod web;
#[cfg(test)]
mod web_tests;

/// The built-ins a sandbox context gets: the ECMAScript standard library and nothing that
/// reaches outside the context (no `performance` timer source either).
type Intrinsics = (
    intrinsic::Date,
    intrinsic::Eval,
    intrinsic::RegExpCompiler,
    intrinsic::RegExp,
    intrinsic::Json,
    intrinsic::Proxy,
    intrinsic::MapSet,
    intrinsic::TypedArrays,
    intrinsic::Promise,
    intrinsic::WeakRef,
);

/// Globals that some QuickJS builds add to every context and that the sandbox removes, so the
/// global scope holds only what the module docs list (the list is shared with the schema,
/// which refuses them as capability names).
const REMOVED_GLOBALS: &[&str] = oauth3_crds::SANDBOX_REMOVED_GLOBALS;

/// Resource limits of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time from the start of the run until it ends as [`Outcome::TimedOut`].
    pub wall_time: Duration,
    /// Upper bound on the QuickJS heap, in bytes.
    pub memory_bytes: usize,
    /// Upper bound on the JavaScript stack, in bytes (deep recursion throws a stack error).
    pub stack_bytes: usize,
    /// Cap, in bytes, on each of stdout and stderr, and on the JSON text of the result.
    pub max_output_bytes: usize,
    /// Most capability calls one run may make; later calls reject without reaching the host.
    pub max_calls: usize,
}

/// JavaScript stack limit of every run, in bytes.
pub const STACK_BYTES: usize = 512 * 1024;

impl Limits {
    /// The sandbox limits a bundle's `limits` stand for.
    pub fn from_bundle(limits: &crate::bundle::BundleLimits) -> Self {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Self {
            wall_time: Duration::from_secs(limits.timeout_seconds),
            memory_bytes: size(limits.memory_mib.saturating_mul(1024 * 1024)),
            stack_bytes: STACK_BYTES,
            max_output_bytes: size(limits.max_output_bytes),
            max_calls: size(limits.max_calls),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall_time: Duration::from_secs(30),
            memory_bytes: 128 * 1024 * 1024,
            stack_bytes: STACK_BYTES,
            max_output_bytes: 65_536,
            max_calls: 100,
        }
    }
}

/// What the script did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The script's promise resolved with this value (`undefined` becomes `null`).
    Returned(serde_json::Value),
    /// The script threw (or its promise rejected): the error's `name: message` and stack.
    Threw(String),
    /// The wall-time limit passed.
    TimedOut,
    /// The script exceeded the memory limit.
    OutOfMemory,
    /// The script returned a value that cannot be reported (not JSON-serialisable, or larger
    /// than the output cap); the text says which.
    InvalidResult(String),
}

/// The outcome of a run plus everything the script printed.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxOutput {
    /// How the script ended.
    pub outcome: Outcome,
    /// `console.log` / `console.info` output, one line per call, capped.
    pub stdout: String,
    /// `console.error` / `console.warn` output, one line per call, capped.
    pub stderr: String,
}

/// Failures to set up the sandbox (never failures of the script itself, which are
/// [`Outcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Creating the QuickJS runtime failed.
    #[error("creating the JavaScript runtime: {0}")]
    CreateRuntime(String),
    /// Creating the QuickJS context failed.
    #[error("creating the JavaScript context: {0}")]
    CreateContext(String),
    /// A capability name is not a plain JavaScript identifier or would shadow a built-in.
    #[error(
        "installing capability {0:?}: not a JavaScript identifier, or it would shadow a global"
    )]
    CapabilityName(String),
    /// Installing the globals (console, args, capability functions) failed.
    #[error("installing the sandbox globals: {0}")]
    InstallGlobals(String),
}

/// Runs `code` with `args` against `host` under `limits`; console output is redacted by
/// `redactor` as it is captured.
///
/// # Errors
/// Only when the sandbox cannot be set up; anything the script does is in
/// [`SandboxOutput::outcome`].
pub async fn run(
    code: &str,
    args: &serde_json::Value,
    host: Arc<dyn CapabilityHost>,
    limits: &Limits,
    redactor: Arc<Redactor>,
) -> Result<SandboxOutput, SandboxError> {
    let rt = AsyncRuntime::new().map_err(|e| SandboxError::CreateRuntime(e.to_string()))?;
    rt.set_memory_limit(limits.memory_bytes).await;
    rt.set_max_stack_size(limits.stack_bytes).await;
    let deadline = Instant::now() + limits.wall_time;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = Arc::clone(&interrupted);
        rt.set_interrupt_handler(Some(Box::new(move || {
            let over = Instant::now() >= deadline;
            if over {
                interrupted.store(true, Ordering::SeqCst);
            }
            over
        })))
        .await;
    }
    let ctx = AsyncContext::custom::<Intrinsics>(&rt)
        .await
        .map_err(|e| SandboxError::CreateContext(e.to_string()))?;

    let output = Arc::new(Mutex::new(Captured::new(limits.max_output_bytes, redactor)));
    let script = Script {
        source: wrap(code),
        args: args.to_string(),
        host,
        output: Arc::clone(&output),
        calls: Arc::new(AtomicUsize::new(0)),
        max_calls: limits.max_calls,
        max_result_bytes: limits.max_output_bytes,
    };
    let driven = tokio::time::timeout(
        limits.wall_time,
        ctx.async_with(async move |ctx| script.evaluate(ctx).await),
    )
    .await;
    let outcome = match driven {
        Err(_elapsed) => Outcome::TimedOut,
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if interrupted.load(Ordering::SeqCst) => Outcome::TimedOut,
        Ok(Ok(outcome)) => outcome,
    };
    drop(ctx);
    drop(rt);
    let captured = output.lock().map(|c| c.clone()).unwrap_or_else(|p| {
        // A panic while holding the lock cannot leave the text in a torn state that matters.
        p.into_inner().clone()
    });
    Ok(SandboxOutput {
        outcome,
        stdout: captured.stdout,
        stderr: captured.stderr,
    })
}

/// The wrapper that makes `code` the body of an async function of `args`.
fn wrap(code: &str) -> String {
    format!("(async (args) => {{\n{code}\n}})")
}

/// Whether `name` can become a global function without surprises: an ASCII identifier.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Appends `line` and a newline to `buf`, redacted, keeping `buf` within `cap` bytes plus a
/// one-time truncation marker.
///
/// The tail of `buf` that could hold the start of a secret (the redactor's longest form) is
/// redacted again together with the new line, so a secret split across console calls is
/// caught too; and the text is redacted before it is cut at the cap, so a secret straddling
/// the cap is replaced whole instead of leaving its prefix.
pub fn append_capped(
    buf: &mut String,
    truncated: &mut bool,
    cap: usize,
    line: &str,
    redactor: &Redactor,
) {
    if *truncated {
        return;
    }
    let mut start = buf.len().saturating_sub(redactor.longest_form());
    while !buf.is_char_boundary(start) {
        start -= 1;
    }
    let mut joined = String::with_capacity(buf.len() - start + line.len() + 1);
    joined.push_str(&buf[start..]);
    joined.push_str(line);
    joined.push('\n');
    buf.truncate(start);
    let room = cap.saturating_sub(buf.len());
    let kept = redactor.redact_capped(&joined, room);
    buf.push_str(&kept.text);
    if kept.cut {
        buf.push_str(&format!("\n[output truncated at {cap} bytes]\n"));
        *truncated = true;
    }
}

/// Captured console output, redacted as it is captured.
#[derive(Debug, Clone)]
struct Captured {
    cap: usize,
    redactor: Arc<Redactor>,
    stdout: String,
    stdout_truncated: bool,
    stderr: String,
    stderr_truncated: bool,
}

impl Captured {
    fn new(cap: usize, redactor: Arc<Redactor>) -> Self {
        Self {
            cap,
            redactor,
            stdout: String::new(),
            stdout_truncated: false,
            stderr: String::new(),
            stderr_truncated: false,
        }
    }

    fn write(&mut self, to_stderr: bool, line: &str) {
        let (cap, redactor) = (self.cap, &self.redactor);
        if to_stderr {
            append_capped(
                &mut self.stderr,
                &mut self.stderr_truncated,
                cap,
                line,
                redactor,
            );
        } else {
            append_capped(
                &mut self.stdout,
                &mut self.stdout_truncated,
                cap,
                line,
                redactor,
            );
        }
    }
}

/// Everything one evaluation needs, moved into the context.
struct Script {
    source: String,
    args: String,
    host: Arc<dyn CapabilityHost>,
    output: Arc<Mutex<Captured>>,
    calls: Arc<AtomicUsize>,
    max_calls: usize,
    max_result_bytes: usize,
}

impl Script {
    async fn evaluate<'js>(self, ctx: Ctx<'js>) -> Result<Outcome, SandboxError> {
        self.install(&ctx)?;
        let mut options = EvalOptions::default();
        options.global = true;
        options.strict = false;
        options.promise = false;
        options.filename = Some("execution.js".to_owned());
        let started: rquickjs::Result<Promise<'js>> = (|| {
            let func: Function<'js> = ctx.eval_with_options(self.source.as_str(), options)?;
            let args = ctx.json_parse(self.args.as_str())?;
            func.call((args,))
        })();
        let settled = match started {
            Ok(promise) => promise.into_future::<Value<'js>>().await,
            Err(e) => Err(e),
        };
        Ok(match settled {
            Ok(value) => self.result(&ctx, value),
            Err(e) => failure(&ctx, e),
        })
    }

    fn install<'js>(&self, ctx: &Ctx<'js>) -> Result<(), SandboxError> {
        let install = |e: rquickjs::Error| SandboxError::InstallGlobals(e.to_string());
        let globals = ctx.globals();
        for name in REMOVED_GLOBALS {
            globals.remove(*name).map_err(install)?;
        }
        let console = Object::new(ctx.clone()).map_err(install)?;
        for (method, to_stderr) in [
            ("log", false),
            ("info", false),
            ("debug", false),
            ("error", true),
            ("warn", true),
        ] {
            let output = Arc::clone(&self.output);
            let f = Function::new(
                ctx.clone(),
                move |ctx: Ctx<'js>, values: Rest<Value<'js>>| {
                    let line = values
                        .0
                        .into_iter()
                        .map(|v| display(&ctx, v))
                        .collect::<Vec<_>>()
                        .join(" ");
                    if let Ok(mut out) = output.lock() {
                        out.write(to_stderr, &line);
                    }
                },
            )
            .and_then(|f| f.with_name(method))
            .map_err(install)?;
            console.set(method, f).map_err(install)?;
        }
        globals.set("console", console).map_err(install)?;
        let bridge = self.host.has_fetch().then(|| {
            Arc::new(web::FetchBridge {
                host: Arc::clone(&self.host),
                calls: Arc::clone(&self.calls),
                max_calls: self.max_calls,
            })
        });
        web::install_lazily(
            ctx,
            web::Loaders {
                host: Arc::clone(&self.host),
                bridge,
            },
        )
        .map_err(install)?;

        for name in self.host.capabilities() {
            let taken = globals.contains_key(name.as_str()).map_err(install)?;
            if !is_identifier(&name) || taken || oauth3_crds::is_sandbox_name(&name) {
                return Err(SandboxError::CapabilityName(name));
            }
            let host = Arc::clone(&self.host);
            let calls = Arc::clone(&self.calls);
            let max_calls = self.max_calls;
            let capability = name.clone();
            let f = Function::new(
                ctx.clone(),
                move |ctx: Ctx<'js>, values: Rest<Value<'js>>| {
                    call_capability(&ctx, &host, &calls, max_calls, capability.clone(), values.0)
                },
            )
            .and_then(|f| f.with_name(name.as_str()))
            .map_err(install)?;
            globals.set(name.as_str(), f).map_err(install)?;
        }
        Ok(())
    }

    fn result<'js>(&self, ctx: &Ctx<'js>, value: Value<'js>) -> Outcome {
        match ctx.json_stringify(value) {
            Ok(None) => Outcome::Returned(serde_json::Value::Null),
            Ok(Some(text)) => match text.to_string() {
                Ok(text) if text.len() > self.max_result_bytes => Outcome::InvalidResult(format!(
                    "the result is {} bytes of JSON, more than the cap of {} bytes",
                    text.len(),
                    self.max_result_bytes
                )),
                Ok(text) => match serde_json::from_str(&text) {
                    Ok(v) => Outcome::Returned(v),
                    Err(e) => Outcome::InvalidResult(format!("the result is not JSON: {e}")),
                },
                Err(e) => Outcome::InvalidResult(format!("the result is not JSON: {e}")),
            },
            Err(e) => match failure(ctx, e) {
                Outcome::Threw(msg) => {
                    Outcome::InvalidResult(format!("the result is not JSON-serialisable: {msg}"))
                }
                other => other,
            },
        }
    }
}

/// One call of a capability function: returns a promise settled by the host's answer.
fn call_capability<'js>(
    ctx: &Ctx<'js>,
    host: &Arc<dyn CapabilityHost>,
    calls: &AtomicUsize,
    max_calls: usize,
    capability: String,
    values: Vec<Value<'js>>,
) -> rquickjs::Result<Promise<'js>> {
    let (promise, resolve, reject) = ctx.promise()?;
    let rejected = |message: String| -> rquickjs::Result<Promise<'js>> {
        let error = Exception::from_message(ctx.clone(), &message)?;
        reject.call::<_, ()>((error,))?;
        Ok(promise.clone())
    };
    if calls.fetch_add(1, Ordering::SeqCst) >= max_calls {
        return rejected(format!(
            "{capability}: call limit reached (at most {max_calls} capability calls per execution)"
        ));
    }
    let mut args = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        match to_json(ctx, v) {
            Some(json) => args.push(json),
            None => {
                return rejected(format!(
                    "{capability}: argument {} is not JSON-serialisable",
                    i + 1
                ));
            }
        }
    }
    let host = Arc::clone(host);
    let ctx2 = ctx.clone();
    let call = CapabilityCall { capability, args };
    ctx.spawn(async move {
        let settled = match host.call(call).await {
            CallOutcome::Value(v) => ctx2
                .json_parse(v.to_string())
                .and_then(|v| resolve.call::<_, ()>((v,))),
            CallOutcome::Error(message) => Exception::from_message(ctx2.clone(), &message)
                .and_then(|e| reject.call::<_, ()>((e,))),
        };
        if settled.is_err() {
            // Settling failed (e.g. out of memory); clear the pending exception so it cannot
            // surface elsewhere. The script's promise stays pending and the run times out.
            let _ = ctx2.catch();
        }
    });
    Ok(promise)
}

/// A JavaScript value as JSON; `undefined` (and functions) become `null`. `None` when the
/// value cannot be serialised (cycles, BigInt).
fn to_json<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> Option<serde_json::Value> {
    match ctx.json_stringify(value) {
        Ok(None) => Some(serde_json::Value::Null),
        Ok(Some(text)) => serde_json::from_str(&text.to_string().ok()?).ok(),
        Err(_) => {
            let _ = ctx.catch();
            None
        }
    }
}

/// How `console.*` prints a value: strings as they are, errors as `name: message`, everything
/// else as JSON where possible.
fn display<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> String {
    if let Some(s) = value.as_string() {
        return s.to_string().unwrap_or_default();
    }
    if value.is_undefined() {
        return "undefined".to_owned();
    }
    if value.is_function() {
        return "[Function]".to_owned();
    }
    if let Some(e) = value
        .as_object()
        .and_then(|o| Exception::from_object(o.clone()))
    {
        return describe_exception(&e);
    }
    match ctx.json_stringify(value) {
        Ok(Some(s)) => s.to_string().unwrap_or_default(),
        Ok(None) => "undefined".to_owned(),
        Err(_) => {
            let _ = ctx.catch();
            "[unserialisable value]".to_owned()
        }
    }
}

fn describe_exception(e: &Exception<'_>) -> String {
    let name: String = e
        .get::<_, Option<String>>("name")
        .ok()
        .flatten()
        .unwrap_or_else(|| "Error".to_owned());
    let mut text = format!("{name}: {}", e.message().unwrap_or_default());
    if let Some(stack) = e.stack().filter(|s| !s.trim().is_empty()) {
        text.push('\n');
        text.push_str(stack.trim_end());
    }
    text
}

/// The outcome of a failed evaluation: what was thrown, or why nothing could be.
fn failure<'js>(ctx: &Ctx<'js>, error: rquickjs::Error) -> Outcome {
    let message = match error {
        rquickjs::Error::Exception => {
            let thrown = ctx.catch();
            if let Some(e) = thrown
                .as_object()
                .and_then(|o| Exception::from_object(o.clone()))
            {
                describe_exception(&e)
            } else {
                format!("Uncaught {}", display(ctx, thrown))
            }
        }
        rquickjs::Error::Allocation => return Outcome::OutOfMemory,
        other => other.to_string(),
    };
    if message.contains("out of memory") {
        Outcome::OutOfMemory
    } else {
        Outcome::Threw(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_ascii_names_only() {
        for ok in ["github", "_x", "$", "createIssue2"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "2x", "a-b", "a b", "ä", "a.b"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn output_past_the_cap_is_cut_once_with_a_marker() {
        let (mut buf, mut truncated, none) = (String::new(), false, Redactor::none());
        append_capped(&mut buf, &mut truncated, 10, "12345", &none);
        assert_eq!(buf, "12345\n");
        append_capped(&mut buf, &mut truncated, 10, "abcdefgh", &none);
        assert!(truncated);
        assert!(buf.starts_with("12345\nabcd\n[output truncated at 10 bytes]"));
        let before = buf.clone();
        append_capped(&mut buf, &mut truncated, 10, "more", &none);
        assert_eq!(buf, before, "nothing is appended after truncation");
    }

    #[test]
    fn truncation_never_splits_a_character() {
        let (mut buf, mut truncated) = (String::new(), false);
        append_capped(&mut buf, &mut truncated, 3, "éé", &Redactor::none());
        assert!(buf.starts_with("é\n[output truncated"));
    }

    #[test]
    fn a_secret_straddling_the_output_cap_is_redacted_before_the_cut() {
        let secret = "sk-live-4b1d9c";
        let redactor = Redactor::new([secret]);
        for kept in 1..secret.len() {
            let (mut buf, mut truncated) = (String::new(), false);
            append_capped(&mut buf, &mut truncated, 64, "first line", &redactor);
            let pad = 64 - buf.len() - kept;
            let line = format!("{}{secret} tail", "x".repeat(pad));
            append_capped(&mut buf, &mut truncated, 64, &line, &redactor);
            assert!(truncated, "{buf}");
            assert!(!buf.contains("sk-"), "{kept} bytes before the cap: {buf}");
        }
    }

    #[test]
    fn a_secret_split_across_console_lines_is_redacted_in_the_capture() {
        let secret = "-----BEGIN KEY-----\nc2VjcmV0\n-----END KEY-----";
        let redactor = Redactor::new([secret]);
        let (mut buf, mut truncated) = (String::new(), false);
        for line in secret.split('\n') {
            append_capped(&mut buf, &mut truncated, 4096, line, &redactor);
        }
        assert_eq!(buf, "[REDACTED]\n");
    }
}
