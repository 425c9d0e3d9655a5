//! The Rust half of the sandbox's web globals: the WHATWG URL parser behind `URL`, the bridge
//! from the `fetch` shim to [`CapabilityHost::fetch`], and the environment behind `Deno.env`
//! and `process.env`.
//!
//! Each piece is a function handed to the JavaScript that needs it when that JavaScript is
//! first evaluated (see `js/web_globals_lazy.js`), captured there and never put on the global
//! object. The URL parser and the environment carry no authority; the fetch bridge is the only
//! way a `fetch()` leaves the sandbox, and it goes nowhere but the host.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use rquickjs::{ArrayBuffer, Ctx, Function, Object, Promise, Value};
use url::{Url, quirks};

use crate::host::{
    CallOutcome, CapabilityHost, FetchBody, FetchRequest, FetchResponse, RedirectMode,
};

/// URL, URLSearchParams, Headers, Request, Response and the `fetch` shim (see the file).
const WEB_FETCH: &str = include_str!("../js/web_fetch.js");
/// `Deno.env` and `process.env` (see the file).
const WEB_ENV: &str = include_str!("../js/web_env.js");

/// What a run's `fetch()` needs from the runner: the host, and the call count it shares with
/// the capability functions.
pub(super) struct FetchBridge {
    pub(super) host: Arc<dyn CapabilityHost>,
    pub(super) calls: Arc<AtomicUsize>,
    pub(super) max_calls: usize,
}

/// Evaluates `web_fetch.js` and returns its classes (and `fetch` when `bridge` is given).
/// `helpers` loads `web_globals.js`'s helpers (for UTF-8).
pub(super) fn load_fetch_classes<'js>(
    ctx: &Ctx<'js>,
    helpers: Function<'js>,
    bridge: Option<Arc<FetchBridge>>,
) -> rquickjs::Result<Value<'js>> {
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
pub(super) fn load_environment<'js>(
    ctx: &Ctx<'js>,
    environment: BTreeMap<String, String>,
) -> rquickjs::Result<Value<'js>> {
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
