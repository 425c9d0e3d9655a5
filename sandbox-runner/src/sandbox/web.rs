//! The web globals of the sandbox: installing them to load on first use, the WHATWG URL
//! parser behind `URL`, the bridge from the `fetch` shim to [`CapabilityHost::fetch`], and the
//! environment behind `Deno.env` and `process.env`.
//!
//! **Loading on first use.** Each global name starts as an accessor on the global object. The
//! first read evaluates its group's source (helpers `js/web_globals.js`, classes
//! `js/web_fetch.js`, environment `js/web_env.js`), once per group, and turns the name into a
//! plain writable, configurable, non-enumerable data property, as in browsers; a write before
//! any read does the same with the written value. The accessors are installed from Rust with
//! no JavaScript compiled: one Rust function, bound (with `Function.prototype.bind`, before
//! any code runs) to a cache object and the name, serves as both getter and setter of each
//! name. The cache holds the loaded groups; only those bound functions reach it, and it lives
//! in the JavaScript heap, so the engine's collector sees every reference.
//!
//! The URL parser, the environment and the fetch bridge are Rust functions handed to the
//! JavaScript that needs them when it is evaluated, captured there and never put on the global
//! object. The URL parser and the environment carry no authority; the fetch bridge is the only
//! way a `fetch()` leaves the sandbox, and it goes nowhere but the host.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use rquickjs::function::{Rest, This};
use rquickjs::object::{AsProperty, Property, PropertyFlags};
use rquickjs::{ArrayBuffer, Ctx, Function, Object, Promise, Value, qjs};
use url::{Url, quirks};

use crate::host::{
    CallOutcome, CapabilityHost, FetchBody, FetchRequest, FetchResponse, RedirectMode,
};

/// atob, btoa, TextEncoder, TextDecoder, structuredClone and crypto (see the file).
const WEB_GLOBALS: &str = include_str!("../js/web_globals.js");
/// URL, URLSearchParams, Headers, Request, Response and the `fetch` shim (see the file).
const WEB_FETCH: &str = include_str!("../js/web_fetch.js");
/// `Deno.env` and `process.env` (see the file).
const WEB_ENV: &str = include_str!("../js/web_env.js");

/// The globals of each group, in the order they are installed.
const HELPERS: &[&str] = &[
    "atob",
    "btoa",
    "TextEncoder",
    "TextDecoder",
    "structuredClone",
    "crypto",
];
const CLASSES: &[&str] = &["URL", "URLSearchParams", "Headers", "Request", "Response"];
const ENVIRONMENT: &[&str] = &["Deno", "process"];

/// Keys in the cache object (never global names: they start with `#`): the loaded groups, and
/// the bound function that returns the helpers (handed to the classes, which use them for
/// UTF-8).
const HELPERS_KEY: &str = "#helpers";
const CLASSES_KEY: &str = "#classes";
const ENVIRONMENT_KEY: &str = "#environment";
const HELPERS_LOADER_KEY: &str = "#loadHelpers";

/// What loading the groups needs from the run (no JavaScript values: those stay in the cache).
pub(super) struct Loaders {
    pub(super) host: Arc<dyn CapabilityHost>,
    /// The fetch bridge, when the Permit has a fetch capability; then `fetch` is a global.
    pub(super) bridge: Option<Arc<FetchBridge>>,
}

/// An accessor whose getter and setter are one existing function.
struct LazyAccessor<'js>(Function<'js>);

/// Marks [`LazyAccessor`]'s [`AsProperty`] implementation.
struct LazyAccessorKind;

impl<'js> AsProperty<'js, LazyAccessorKind> for LazyAccessor<'js> {
    fn config(
        self,
        ctx: &Ctx<'js>,
    ) -> rquickjs::Result<(PropertyFlags, Value<'js>, Value<'js>, Value<'js>)> {
        let flags = qjs::JS_PROP_CONFIGURABLE
            | qjs::JS_PROP_HAS_CONFIGURABLE
            | qjs::JS_PROP_HAS_ENUMERABLE
            | qjs::JS_PROP_HAS_GET
            | qjs::JS_PROP_HAS_SET;
        let flags = PropertyFlags::try_from(flags).unwrap_or(PropertyFlags::MAX);
        let accessor = self.0.into_value();
        Ok((
            flags,
            Value::new_undefined(ctx.clone()),
            accessor.clone(),
            accessor,
        ))
    }
}

/// Puts every web global on the global object as an accessor that loads its group on first
/// use (see the module docs).
pub(super) fn install_lazily<'js>(ctx: &Ctx<'js>, loaders: Loaders) -> rquickjs::Result<()> {
    let with_fetch = loaders.bridge.is_some();
    let cache = Object::new(ctx.clone())?;
    cache.set_prototype(None)?;
    let lazy = Function::new(
        ctx.clone(),
        move |ctx: Ctx<'js>, cache: This<Object<'js>>, args: Rest<Value<'js>>| {
            loaders.access(&ctx, &cache.0, args.0)
        },
    )?;
    // No code has run yet, so this is the engine's own bind.
    let bind: Function<'js> = lazy.get("bind")?;
    let bound = |key: &str| -> rquickjs::Result<Function<'js>> {
        bind.call((This(lazy.clone()), cache.clone(), key))
    };
    cache.set(HELPERS_LOADER_KEY, bound(HELPERS_KEY)?)?;
    let globals = ctx.globals();
    let fetch = with_fetch.then_some(&"fetch");
    for name in HELPERS
        .iter()
        .chain(CLASSES)
        .chain(fetch)
        .chain(ENVIRONMENT)
    {
        globals.prop(*name, LazyAccessor(bound(name)?))?;
    }
    Ok(())
}

impl Loaders {
    /// One call of a bound accessor: `args` is the bound name, then the written value for a
    /// write. A read loads the name's group, a write takes the value; both leave a plain data
    /// property. A `#` key returns that group (the helpers loader).
    fn access<'js>(
        &self,
        ctx: &Ctx<'js>,
        cache: &Object<'js>,
        args: Vec<Value<'js>>,
    ) -> rquickjs::Result<Value<'js>> {
        let mut args = args.into_iter();
        let name: String = match args.next().and_then(|v| v.as_string().cloned()) {
            Some(name) => name.to_string()?,
            None => return Ok(Value::new_undefined(ctx.clone())),
        };
        if name.starts_with('#') {
            return self.group(ctx, cache, &name).map(Object::into_value);
        }
        let value = match args.next() {
            Some(written) => written,
            None => {
                let key = if HELPERS.contains(&name.as_str()) {
                    HELPERS_KEY
                } else if ENVIRONMENT.contains(&name.as_str()) {
                    ENVIRONMENT_KEY
                } else {
                    CLASSES_KEY
                };
                self.group(ctx, cache, key)?.get(name.as_str())?
            }
        };
        let plain = Property::from(value.clone()).writable().configurable();
        ctx.globals().prop(name.as_str(), plain)?;
        Ok(value)
    }

    /// The group under `key`, loaded (once) into the cache.
    fn group<'js>(
        &self,
        ctx: &Ctx<'js>,
        cache: &Object<'js>,
        key: &str,
    ) -> rquickjs::Result<Object<'js>> {
        if let Some(loaded) = cache.get::<_, Option<Object<'js>>>(key)? {
            return Ok(loaded);
        }
        let loaded = match key {
            HELPERS_KEY => load_helpers(ctx)?,
            CLASSES_KEY => {
                let helpers: Function<'js> = cache.get(HELPERS_LOADER_KEY)?;
                load_fetch_classes(ctx, helpers, self.bridge.clone())?
            }
            _ => load_environment(ctx, self.host.environment())?,
        };
        cache.set(key, loaded.clone())?;
        Ok(loaded)
    }
}

/// Evaluates `web_globals.js` with the OS's random source and returns its helpers.
fn load_helpers<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    let helpers: Function<'js> = ctx.eval(WEB_GLOBALS)?;
    let random = Function::new(ctx.clone(), |n: usize| -> Vec<u8> {
        let mut bytes = vec![0u8; n.min(65_536)];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        bytes
    })?;
    helpers.call((random,))
}

/// What a run's `fetch()` needs from the runner: the host, and the call count it shares with
/// the capability functions.
pub(super) struct FetchBridge {
    pub(super) host: Arc<dyn CapabilityHost>,
    pub(super) calls: Arc<AtomicUsize>,
    pub(super) max_calls: usize,
}

/// Evaluates `web_fetch.js` and returns its classes (and `fetch` when `bridge` is given).
/// `helpers` returns `web_globals.js`'s helpers (for UTF-8), loading them once.
fn load_fetch_classes<'js>(
    ctx: &Ctx<'js>,
    helpers: Function<'js>,
    bridge: Option<Arc<FetchBridge>>,
) -> rquickjs::Result<Object<'js>> {
    let factory: Function<'js> = ctx.eval(WEB_FETCH)?;
    let url_op = Function::new(ctx.clone(), url_op)?;
    let host_fetch = match bridge {
        Some(bridge) => Function::new(ctx.clone(), move |ctx: Ctx<'js>, request: Object<'js>| {
            bridge.fetch(&ctx, &request)
        })?
        .into_value(),
        None => Value::new_undefined(ctx.clone()),
    };
    factory.call((url_op, helpers, host_fetch))
}

/// Evaluates `web_env.js` over `environment` and returns `{Deno, process}`.
fn load_environment<'js>(
    ctx: &Ctx<'js>,
    environment: BTreeMap<String, String>,
) -> rquickjs::Result<Object<'js>> {
    let factory: Function<'js> = ctx.eval(WEB_ENV)?;
    let pairs: Vec<Vec<String>> = environment.into_iter().map(|(k, v)| vec![k, v]).collect();
    factory.call((pairs,))
}

/// The components `URL` keeps, in the order `web_fetch.js` reads them.
fn components(url: &Url) -> Vec<String> {
    vec![
        quirks::href(url).to_owned(),
        quirks::origin(url),
        quirks::protocol(url).to_owned(),
        quirks::username(url).to_owned(),
        quirks::password(url).to_owned(),
        quirks::host(url).to_owned(),
        quirks::hostname(url).to_owned(),
        quirks::port(url).to_owned(),
        quirks::pathname(url).to_owned(),
        quirks::search(url).to_owned(),
        quirks::hash(url).to_owned(),
    ]
}

/// The WHATWG URL API for `URL`: `op` `parse` parses `a` (against the base `b` when given);
/// any other `op` is a setter (`href`, `protocol`, `username`, `password`, `host`, `hostname`,
/// `port`, `pathname`, `search`, `hash`) applied to the URL whose href is `a`, with the value
/// `b`. Returns the components, or `None` when parsing fails or the `href` setter gets an
/// invalid URL (the other setters ignore invalid values, as the standard says).
fn url_op(op: String, a: String, b: Option<String>) -> Option<Vec<String>> {
    if op == "parse" {
        let url = match b {
            None => Url::parse(&a).ok()?,
            Some(base) => {
                let base = Url::parse(&base).ok()?;
                Url::options().base_url(Some(&base)).parse(&a).ok()?
            }
        };
        return Some(components(&url));
    }
    let mut url = Url::parse(&a).ok()?;
    let value = b.unwrap_or_default();
    // The setters that return a result leave the URL unchanged on error, which is what the
    // standard's setters do; only the href setter's error is reported.
    match op.as_str() {
        "href" => quirks::set_href(&mut url, &value).ok()?,
        "protocol" => quirks::set_protocol(&mut url, &value).unwrap_or(()),
        "username" => quirks::set_username(&mut url, &value).unwrap_or(()),
        "password" => quirks::set_password(&mut url, &value).unwrap_or(()),
        "host" => quirks::set_host(&mut url, &value).unwrap_or(()),
        "hostname" => quirks::set_hostname(&mut url, &value).unwrap_or(()),
        "port" => quirks::set_port(&mut url, &value).unwrap_or(()),
        "pathname" => quirks::set_pathname(&mut url, &value),
        "search" => quirks::set_search(&mut url, &value),
        "hash" => quirks::set_hash(&mut url, &value),
        _ => return None,
    }
    Some(components(&url))
}

/// The [`FetchRequest`] the shim's normalised request stands for: `{url, method, headers:
/// [[name, value]], body: null | {text, binary: null} | {text: null, binary}, redirect}`,
/// where `binary` holds one byte per code unit (0-255).
fn fetch_request<'js>(request: &Object<'js>) -> Result<FetchRequest, String> {
    let field = |e: rquickjs::Error, name: &str| format!("fetch: the request's {name}: {e}");
    let url: String = request.get("url").map_err(|e| field(e, "url"))?;
    let method: String = request.get("method").map_err(|e| field(e, "method"))?;
    let headers: Vec<Vec<String>> = request.get("headers").map_err(|e| field(e, "headers"))?;
    let headers = headers
        .into_iter()
        .map(|pair| match <[String; 2]>::try_from(pair) {
            Ok([name, value]) => Ok((name, value)),
            Err(_) => Err("fetch: the request's headers are not [name, value] pairs".to_owned()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let body: Option<Object<'js>> = request.get("body").map_err(|e| field(e, "body"))?;
    let body = match body {
        None => None,
        Some(body) => {
            if let Some(text) = body
                .get::<_, Option<String>>("text")
                .map_err(|e| field(e, "body"))?
            {
                Some(FetchBody::Text(text))
            } else {
                let binary: String = body.get("binary").map_err(|e| field(e, "body"))?;
                let bytes = binary
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| "fetch: the request's body bytes are out of range".to_owned())?;
                Some(FetchBody::Base64(
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                ))
            }
        }
    };
    let redirect: String = request.get("redirect").map_err(|e| field(e, "redirect"))?;
    let redirect = match redirect.as_str() {
        "follow" => RedirectMode::Follow,
        "manual" => RedirectMode::Manual,
        "error" => RedirectMode::Error,
        other => {
            return Err(format!(
                "fetch: redirect {other:?} is not follow, manual or error"
            ));
        }
    };
    Ok(FetchRequest {
        url,
        method,
        headers,
        body,
        redirect,
    })
}

/// What the shim builds a `Response` from: the [`FetchResponse`] with its body decoded to an
/// `ArrayBuffer`.
fn response_object<'js>(ctx: &Ctx<'js>, response: FetchResponse) -> Result<Object<'js>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response.body_base64.as_bytes())
        .map_err(|e| format!("fetch: the host's response body is not base64: {e}"))?;
    let build = || -> rquickjs::Result<Object<'js>> {
        let object = Object::new(ctx.clone())?;
        object.set("status", response.status)?;
        object.set("statusText", response.status_text)?;
        object.set("url", response.url)?;
        object.set("redirected", response.redirected)?;
        let headers: Vec<Vec<String>> = response
            .headers
            .into_iter()
            .map(|(name, value)| vec![name, value])
            .collect();
        object.set("headers", headers)?;
        object.set("body", ArrayBuffer::new(ctx.clone(), bytes)?)?;
        Ok(object)
    };
    build().map_err(|e| format!("fetch: building the response: {e}"))
}

impl FetchBridge {
    /// One `fetch()`: counts it against the run's call limit, hands the [`FetchRequest`] to
    /// the host and returns a promise of the response object, rejected with the host's reason
    /// (the shim turns it into a `TypeError`).
    fn fetch<'js>(&self, ctx: &Ctx<'js>, request: &Object<'js>) -> rquickjs::Result<Promise<'js>> {
        let (promise, resolve, reject) = ctx.promise()?;
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.max_calls {
            let max_calls = self.max_calls;
            reject.call::<_, ()>((format!(
                "fetch: call limit reached (at most {max_calls} capability calls per execution)"
            ),))?;
            return Ok(promise);
        }
        let json = match fetch_request(request).and_then(|r| {
            serde_json::to_value(&r).map_err(|e| format!("fetch: encoding the request: {e}"))
        }) {
            Ok(json) => json,
            Err(message) => {
                reject.call::<_, ()>((message,))?;
                return Ok(promise);
            }
        };
        let host = Arc::clone(&self.host);
        let ctx2 = ctx.clone();
        ctx.spawn(async move {
            let answer = match host.fetch(json).await {
                CallOutcome::Value(v) => serde_json::from_value::<FetchResponse>(v)
                    .map_err(|e| format!("fetch: the host's answer is not a response: {e}"))
                    .and_then(|r| response_object(&ctx2, r)),
                CallOutcome::Error(message) => Err(message),
            };
            let settled = match answer {
                Ok(response) => resolve.call::<_, ()>((response,)),
                Err(message) => reject.call::<_, ()>((message,)),
            };
            if settled.is_err() {
                // As for capability calls: clear the pending exception; the run times out.
                let _ = ctx2.catch();
            }
        });
        Ok(promise)
    }
}
