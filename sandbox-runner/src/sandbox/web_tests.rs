//! Tests of the web globals: URL, URLSearchParams, Headers, Request, Response, the `fetch`
//! shim (against a fake host that records the request JSON it gets and answers a canned
//! response) and `Deno.env` / `process.env`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth3_crds::CallRecord;
use serde_json::{Value, json};

use super::{Limits, Outcome, run};
use crate::host::{BoxFuture, CallOutcome, CapabilityCall, CapabilityHost};
use crate::redact::Redactor;

type Answer = Box<dyn Fn(&Value) -> CallOutcome + Send + Sync>;

/// A host with one capability `api` (resolves with `"ok"`), an optional `fetch` that records
/// each request JSON and answers with `answer`, and a fixed environment.
struct FakeHost {
    fetch: bool,
    answer: Answer,
    environment: BTreeMap<String, String>,
    requests: Mutex<Vec<Value>>,
    calls: Mutex<Vec<CapabilityCall>>,
}

impl FakeHost {
    fn new() -> Self {
        Self {
            fetch: true,
            answer: Box::new(|request| CallOutcome::Value(response(200, "OK", request, "{}"))),
            environment: BTreeMap::new(),
            requests: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn answering(answer: impl Fn(&Value) -> CallOutcome + Send + Sync + 'static) -> Self {
        Self {
            answer: Box::new(answer),
            ..Self::new()
        }
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().expect("lock").clone()
    }
}

/// A `FetchResponse` as JSON, for the URL of `request`, with `body` as its bytes.
fn response(status: u16, status_text: &str, request: &Value, body: &str) -> Value {
    use base64::Engine as _;
    json!({
        "status": status,
        "statusText": status_text,
        "url": request["url"],
        "redirected": false,
        "headers": [["content-type", "application/json"], ["x-served-by", "fake"]],
        "bodyBase64": base64::engine::general_purpose::STANDARD.encode(body),
    })
}

impl CapabilityHost for FakeHost {
    fn capabilities(&self) -> Vec<String> {
        vec!["api".to_owned()]
    }

    fn call(&self, call: CapabilityCall) -> BoxFuture<'_, CallOutcome> {
        self.calls.lock().expect("lock").push(call);
        Box::pin(async { CallOutcome::Value(json!("ok")) })
    }

    fn calls(&self) -> Vec<CallRecord> {
        Vec::new()
    }

    fn has_fetch(&self) -> bool {
        self.fetch
    }

    fn fetch(&self, request: Value) -> BoxFuture<'_, CallOutcome> {
        let outcome = (self.answer)(&request);
        self.requests.lock().expect("lock").push(request);
        Box::pin(async move { outcome })
    }

    fn environment(&self) -> BTreeMap<String, String> {
        self.environment.clone()
    }
}

fn limits() -> Limits {
    Limits {
        wall_time: Duration::from_secs(5),
        memory_bytes: 64 * 1024 * 1024,
        stack_bytes: 256 * 1024,
        max_output_bytes: 1 << 20,
        max_calls: 10,
    }
}

/// Runs `code` against `host` and returns what it returned; panics on anything else.
async fn returned_with(code: &str, host: Arc<FakeHost>) -> Value {
    let out = run(
        code,
        &Value::Null,
        host,
        &limits(),
        Arc::new(Redactor::none()),
    )
    .await
    .expect("the sandbox starts");
    match out.outcome {
        Outcome::Returned(v) => v,
        other => panic!("expected a value, got {other:?}\nstderr: {}", out.stderr),
    }
}

async fn returned(code: &str) -> Value {
    returned_with(code, Arc::new(FakeHost::new())).await
}

/// Runs `code` against `host` and returns its outcome.
async fn outcome_with(code: &str, host: Arc<FakeHost>, limits: &Limits) -> Outcome {
    run(code, &Value::Null, host, limits, Arc::new(Redactor::none()))
        .await
        .expect("the sandbox starts")
        .outcome
}

#[tokio::test]
async fn url_parses_like_the_whatwg_standard() {
    let got = returned(
        r#"
        const parts = (u) => [u.href, u.origin, u.protocol, u.username, u.password, u.host,
            u.hostname, u.port, u.pathname, u.search, u.hash];
        const error = (f) => { try { f(); return null; } catch (e) { return [e.name, e.message]; } };
        return {
            upper: parts(new URL('HTTP://EXAMPLE.com:80/a/./b/../c?x=1#frag')),
            backslash: new URL('https:\\\\example.org\\a\\b?c').href,
            ipv6: parts(new URL('http://[0:0:0:0:0:0:0:1]:8080/')),
            decimal: new URL('http://2130706433/').href,
            hex: new URL('http://0x7f.1/').hostname,
            trailingDot: new URL('http://example.com./x').hostname,
            userinfo: parts(new URL('https://us er:p@ss@host.example/')),
            idn: new URL('https://bücher.example/').host,
            nonSpecial: parts(new URL('foo://Host/a\\b')),
            file: new URL('file:///etc/hosts').origin,
            base: new URL('../z?q#h', 'https://h.example/x/y/').href,
            absoluteOverBase: new URL('https://other/', 'https://h.example/x').href,
            spaces: new URL('  https://h.example/a b  ').href,
            relative: error(() => new URL('/just/a/path')),
            badHost: error(() => new URL('http://exa mple.com/')),
            badBase: error(() => new URL('x', 'not a base')),
            noArgs: error(() => new URL()),
            canParse: [URL.canParse('https://h/'), URL.canParse('/p'), URL.canParse('/p', 'https://h/')],
            parse: [URL.parse('/p', 'https://h/').href, URL.parse('nope')],
            string: String(new URL('https://h.example')),
            json: JSON.stringify({u: new URL('https://h.example/p')}),
            tag: Object.prototype.toString.call(new URL('https://h/')),
        };
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "upper": ["http://example.com/a/c?x=1#frag", "http://example.com", "http:", "", "",
                "example.com", "example.com", "", "/a/c", "?x=1", "#frag"],
            "backslash": "https://example.org/a/b?c",
            "ipv6": ["http://[::1]:8080/", "http://[::1]:8080", "http:", "", "", "[::1]:8080",
                "[::1]", "8080", "/", "", ""],
            "decimal": "http://127.0.0.1/",
            "hex": "127.0.0.1",
            "trailingDot": "example.com.",
            "userinfo": ["https://us%20er:p%40ss@host.example/", "https://host.example", "https:",
                "us%20er", "p%40ss", "host.example", "host.example", "", "/", "", ""],
            "idn": "xn--bcher-kva.example",
            "nonSpecial": ["foo://Host/a\\b", "null", "foo:", "", "", "Host", "Host", "",
                "/a\\b", "", ""],
            "file": "null",
            "base": "https://h.example/x/z?q#h",
            "absoluteOverBase": "https://other/",
            "spaces": "https://h.example/a%20b",
            "relative": ["TypeError", "Invalid URL: /just/a/path"],
            "badHost": ["TypeError", "Invalid URL: http://exa mple.com/"],
            "badBase": ["TypeError", "Invalid URL: x (with base not a base)"],
            "noArgs": ["TypeError", "URL: 1 argument required, 0 given"],
            "canParse": [true, false, true],
            "parse": ["https://h/p", null],
            "string": "https://h.example/",
            "json": "{\"u\":\"https://h.example/p\"}",
            "tag": "[object URL]",
        })
    );
}

#[tokio::test]
async fn url_setters_follow_the_standard() {
    let got = returned(
        r#"
        const u = new URL('http://user@h.example:1/p?q#f');
        const steps = [];
        const step = (f) => { f(); steps.push(u.href); };
        step(() => { u.protocol = 'https'; });
        step(() => { u.protocol = 'foo'; });          // special to non-special: ignored
        step(() => { u.username = 'a b'; });
        step(() => { u.password = 'p:w'; });
        step(() => { u.port = '8443'; });
        step(() => { u.port = 'abc'; });              // ignored
        step(() => { u.port = '443'; });              // the default port of https
        step(() => { u.hostname = 'Other.Example'; });
        step(() => { u.host = 'h2.example:99'; });
        step(() => { u.pathname = 'a b/c'; });
        step(() => { u.search = 'x=1 2'; });
        step(() => { u.hash = 'top'; });
        step(() => { u.search = ''; });
        step(() => { u.hash = ''; });
        step(() => { u.href = 'https://fresh.example/new?k=v'; });
        let bad = null;
        try { u.href = 'not a url'; } catch (e) { bad = [e.name, e.message, u.href]; }
        return {steps, bad};
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "steps": [
                "https://user@h.example:1/p?q#f",
                "https://user@h.example:1/p?q#f",
                "https://a%20b@h.example:1/p?q#f",
                "https://a%20b:p%3Aw@h.example:1/p?q#f",
                "https://a%20b:p%3Aw@h.example:8443/p?q#f",
                "https://a%20b:p%3Aw@h.example:8443/p?q#f",
                "https://a%20b:p%3Aw@h.example/p?q#f",
                "https://a%20b:p%3Aw@other.example/p?q#f",
                "https://a%20b:p%3Aw@h2.example:99/p?q#f",
                "https://a%20b:p%3Aw@h2.example:99/a%20b/c?q#f",
                "https://a%20b:p%3Aw@h2.example:99/a%20b/c?x=1%202#f",
                "https://a%20b:p%3Aw@h2.example:99/a%20b/c?x=1%202#top",
                "https://a%20b:p%3Aw@h2.example:99/a%20b/c#top",
                "https://a%20b:p%3Aw@h2.example:99/a%20b/c",
                "https://fresh.example/new?k=v",
            ],
            "bad": ["TypeError", "Invalid URL: not a url", "https://fresh.example/new?k=v"],
        })
    );
}

#[tokio::test]
async fn search_params_of_a_url_are_live_both_ways() {
    let got = returned(
        r#"
        const u = new URL('https://h.example/p?a=1&b=2#f');
        const sp = u.searchParams;
        const log = [];
        sp.append('c', 'x y&z');
        log.push(u.href);
        sp.set('a', '9');
        sp.delete('b');
        log.push(u.search);
        sp.sort();
        log.push(u.search);
        u.search = '?z=%E2%82%AC&z=2';
        log.push(sp.getAll('z'), sp.has('a'), sp.size);
        u.href = 'https://h.example/?k=v';
        log.push(sp.get('k'));
        sp.delete('k');
        log.push(u.href, u.search);
        sp.append('n', '');
        log.push(u.href);
        return {log, same: u.searchParams === sp};
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "log": [
                "https://h.example/p?a=1&b=2&c=x+y%26z#f",
                "?a=9&c=x+y%26z",
                "?a=9&c=x+y%26z",
                ["€", "2"], false, 2,
                "v",
                "https://h.example/", "",
                "https://h.example/?n=",
            ],
            "same": true,
        })
    );
}

#[tokio::test]
async fn url_search_params_encode_and_decode_as_forms_do() {
    let got = returned(
        r#"
        const p = new URLSearchParams('?a=1&a=2&b=%20x+y&c&=d&&e=%zz&f=%E2%82%AC&g=%FF&h=a=b');
        const enc = new URLSearchParams({q: "a b&c=d/é~*!'()-._", x: '😀', lone: '\ud800'});
        const pairs = new URLSearchParams([['k', 'v'], ['k', 'w']]);
        const copy = new URLSearchParams(pairs);
        copy.append('extra', '1');
        let badPair = null;
        try { new URLSearchParams([['only-one']]); } catch (e) { badPair = e.name; }
        const s = new URLSearchParams('b=1&a=2&b=0&a=1&c');
        s.sort();
        const seen = [];
        s.forEach((v, k, self) => seen.push(`${k}:${v}:${self === s}`));
        const m = new URLSearchParams('x=1&y=2&x=3');
        m.set('x', 'new');
        const afterSet = m.toString();
        const hasValue = [m.has('y', '2'), m.has('y', '3')];
        m.append('y', '4');
        m.delete('y', '2');
        return {
            entries: [...p],
            text: p.toString(),
            encoded: enc.toString(),
            roundTrip: [...new URLSearchParams(enc.toString())],
            pairs: pairs.toString(),
            copy: [pairs.toString(), copy.toString()],
            badPair,
            sorted: s.toString(),
            seen,
            set: afterSet,
            afterDelete: m.toString(),
            hasValue,
            keys: [...m.keys()],
            values: [...m.values()],
            get: [p.get('a'), p.get('missing'), p.getAll('a')],
            size: p.size,
            fromNull: new URLSearchParams(null).toString(),
            empty: new URLSearchParams().toString(),
            tag: Object.prototype.toString.call(new URLSearchParams()),
        };
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "entries": [["a", "1"], ["a", "2"], ["b", " x y"], ["c", ""], ["", "d"], ["e", "%zz"],
                ["f", "€"], ["g", "\u{fffd}"], ["h", "a=b"]],
            "text": "a=1&a=2&b=+x+y&c=&=d&e=%25zz&f=%E2%82%AC&g=%EF%BF%BD&h=a%3Db",
            "encoded": "q=a+b%26c%3Dd%2F%C3%A9%7E*%21%27%28%29-._&x=%F0%9F%98%80&lone=%EF%BF%BD",
            "roundTrip": [["q", "a b&c=d/é~*!'()-._"], ["x", "😀"], ["lone", "\u{fffd}"]],
            "pairs": "k=v&k=w",
            "copy": ["k=v&k=w", "k=v&k=w&extra=1"],
            "badPair": "TypeError",
            "sorted": "a=2&a=1&b=1&b=0&c=",
            "seen": ["a:2:true", "a:1:true", "b:1:true", "b:0:true", "c::true"],
            "set": "x=new&y=2",
            "afterDelete": "x=new&y=4",
            "hasValue": [true, false],
            "keys": ["x", "y"],
            "values": ["new", "4"],
            "get": ["1", null, ["1", "2"]],
            "size": 9,
            "fromNull": "null=",
            "empty": "",
            "tag": "[object URLSearchParams]",
        })
    );
}

#[tokio::test]
async fn headers_are_case_insensitive_validated_and_sorted() {
    let got = returned(
        r#"
        const error = (f) => { try { f(); return null; } catch (e) { return e.name; } };
        const h = new Headers({'Content-Type': 'text/plain', 'X-Padded': ' \t1 \r\n'});
        h.append('Accept', 'a/b');
        h.append('ACCEPT', 'c/d');
        h.append('Set-Cookie', 'a=1');
        h.append('set-cookie', 'b=2');
        h.append('B-First', 'yes');
        const seen = [];
        h.forEach((v, k, self) => seen.push([k, v, self === h]));
        const fromPairs = new Headers([['X-One', '1'], ['x-one', '2']]);
        const copy = new Headers(h);
        copy.delete('accept');
        const s = new Headers([['a', '1'], ['b', '2'], ['A', '3']]);
        s.set('a', 'only');
        return {
            get: [h.get('content-type'), h.get('CONTENT-TYPE'), h.get('x-padded'), h.get('accept'),
                h.get('missing'), h.get('set-cookie')],
            setCookie: h.getSetCookie(),
            has: [h.has('Accept'), h.has('nope')],
            entries: [...h],
            keys: [...h.keys()],
            seen,
            fromPairs: fromPairs.get('x-one'),
            copy: [copy.has('accept'), h.has('accept')],
            set: [...s],
            badName: error(() => new Headers({'bad name': 'x'})),
            emptyName: error(() => h.append('', 'x')),
            crlf: error(() => h.set('x', 'a\r\nInjected: 1')),
            nul: error(() => h.set('x', 'a\0b')),
            wide: error(() => h.set('x', 'snow ☃')),
            badPair: error(() => new Headers([['a', 'b', 'c']])),
            notObject: error(() => new Headers('a: b')),
            latin1: new Headers({x: 'café'}).get('x'),
            tag: Object.prototype.toString.call(h),
        };
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "get": ["text/plain", "text/plain", "1", "a/b, c/d", null, "a=1, b=2"],
            "setCookie": ["a=1", "b=2"],
            "has": [true, false],
            "entries": [["accept", "a/b, c/d"], ["b-first", "yes"], ["content-type", "text/plain"],
                ["set-cookie", "a=1"], ["set-cookie", "b=2"], ["x-padded", "1"]],
            "keys": ["accept", "b-first", "content-type", "set-cookie", "set-cookie", "x-padded"],
            "seen": [["accept", "a/b, c/d", true], ["b-first", "yes", true],
                ["content-type", "text/plain", true], ["set-cookie", "a=1", true],
                ["set-cookie", "b=2", true], ["x-padded", "1", true]],
            "fromPairs": "1, 2",
            "copy": [false, true],
            "set": [["a", "only"], ["b", "2"]],
            "badName": "TypeError",
            "emptyName": "TypeError",
            "crlf": "TypeError",
            "nul": "TypeError",
            "wide": "TypeError",
            "badPair": "TypeError",
            "notObject": "TypeError",
            "latin1": "café",
            "tag": "[object Headers]",
        })
    );
}

#[tokio::test]
async fn requests_normalise_and_read_their_body_once() {
    let got = returned(
        r#"
        const error = async (f) => { try { await f(); return null; } catch (e) { return [e.name, e.message]; } };
        const r = new Request('HTTPS://Example.com/a b?x#frag', {method: 'post', headers: {'X-Y': '1'}, body: 'hé'});
        const first = await r.text();
        const second = await error(() => r.text());
        const form = new Request('https://h/', {method: 'PUT', body: new URLSearchParams({a: '1', b: 'x y'})});
        const typed = new Request('https://h/', {method: 'POST', body: new Uint16Array([1, 0x0203])});
        const view = new Request('https://h/', {method: 'POST', body: new DataView(new Uint8Array([9, 8, 7]).buffer, 1)});
        const own = new Request('https://h/', {method: 'POST', headers: {'content-type': 'application/json'}, body: '{"k":1}'});
        const cloned = own.clone();
        const derived = new Request(new Request('https://h/', {method: 'DELETE', headers: {a: '1'}, redirect: 'manual'}), {method: 'get'});
        const source = new Request('https://h/src', {method: 'POST', body: 'payload'});
        const taken = new Request(source);
        const h = new Headers({'x-a': '1'});
        const copied = new Request('https://h/', {headers: h});
        h.set('x-a', '2');
        h.append('x-b', '3');
        return {
            url: r.url, method: r.method, contentType: r.headers.get('content-type'), xy: r.headers.get('x-y'),
            redirect: r.redirect, first, second, usedAfter: r.bodyUsed,
            form: [form.headers.get('content-type'), await form.text()],
            typed: Array.from(new Uint8Array(await typed.arrayBuffer())),
            view: Array.from(await view.bytes()),
            own: [own.headers.get('content-type'), await own.json(), await cloned.json()],
            cloneUsed: await error(() => own.clone()),
            derived: [derived.url, derived.method, derived.headers.get('a'), derived.redirect],
            taken: [source.bodyUsed, await taken.text()],
            copied: [...copied.headers],
            methods: ['patch', 'Options', 'head', 'custom', 'PURGE'].map((m) => new Request('https://h/', {method: m}).method),
            forbidden: await error(() => new Request('https://h/', {method: 'connect'})),
            badMethod: await error(() => new Request('https://h/', {method: 'GE T'})),
            getBody: await error(() => new Request('https://h/', {body: 'x'})),
            headBody: await error(() => new Request('https://h/', {method: 'HEAD', body: 'x'})),
            nullBodyGet: new Request('https://h/', {body: null}).method,
            badRedirect: await error(() => new Request('https://h/', {redirect: 'nope'})),
            relative: await error(() => new Request('/relative')),
            credentials: (await error(() => new Request('https://u:p@h/')))[0],
            noBody: [await new Request('https://h/').text(), new Request('https://h/').bodyUsed],
        };
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "url": "https://example.com/a%20b?x#frag",
            "method": "POST",
            "contentType": "text/plain;charset=UTF-8",
            "xy": "1",
            "redirect": "follow",
            "first": "hé",
            "second": ["TypeError", "body already used"],
            "usedAfter": true,
            "form": ["application/x-www-form-urlencoded;charset=UTF-8", "a=1&b=x+y"],
            "typed": [1, 0, 3, 2],
            "view": [8, 7],
            "own": ["application/json", {"k": 1}, {"k": 1}],
            "cloneUsed": ["TypeError", "Request.clone: body already used"],
            "derived": ["https://h/", "GET", "1", "manual"],
            "taken": [true, "payload"],
            "copied": [["x-a", "1"]],
            "methods": ["PATCH", "OPTIONS", "HEAD", "custom", "PURGE"],
            "forbidden": ["TypeError", "Request: method connect is forbidden"],
            "badMethod": ["TypeError", "Request: invalid method \"GE T\""],
            "getBody": ["TypeError", "Request: a GET request cannot have a body"],
            "headBody": ["TypeError", "Request: a HEAD request cannot have a body"],
            "nullBodyGet": "GET",
            "badRedirect": ["TypeError", "Request: redirect must be 'follow', 'error' or 'manual', not \"nope\""],
            "relative": ["TypeError", "Request: Invalid URL: /relative"],
            "credentials": "TypeError",
            "noBody": ["", false],
        })
    );
}

#[tokio::test]
async fn responses_have_status_headers_and_a_body_read_once() {
    let got = returned(
        r#"
        const error = async (f) => { try { await f(); return null; } catch (e) { return [e.name, e.message]; } };
        const r = new Response('{"a":[1,2]}');
        const fields = [r.status, r.ok, r.statusText, r.type, r.url, r.redirected, r.bodyUsed, r.headers.get('content-type')];
        const copy = r.clone();
        const parsed = await r.json();
        const again = await error(() => r.text());
        const notFound = new Response(null, {status: 404, statusText: 'Not Found', headers: {'X-A': 'b'}});
        const j = Response.json({ok: true}, {status: 201, headers: {'x-k': 'v'}});
        const e = Response.error();
        const redirect = Response.redirect('https://h.example/next', 301);
        const bytes = new Response(new Uint8Array([0xef, 0xbb, 0xbf, 0x68, 0x69, 0xff]));
        return {
            fields, parsed, again, usedAfter: r.bodyUsed, copy: await copy.text(),
            cloneUsed: await error(() => r.clone()),
            notFound: [notFound.status, notFound.ok, notFound.statusText, notFound.headers.get('x-a'), await notFound.text(), notFound.bodyUsed],
            json: [j.status, j.headers.get('content-type'), j.headers.get('x-k'), await j.text()],
            error: [e.type, e.status, e.ok, await error(() => e.headers.set('a', 'b'))],
            redirect: [redirect.status, redirect.headers.get('location')],
            badRedirect: await error(() => Response.redirect('https://h/', 200)),
            bytes: [await bytes.clone().text(), Array.from(new Uint8Array(await bytes.arrayBuffer()))],
            status600: await error(() => new Response('x', {status: 600})),
            status204Body: await error(() => new Response('x', {status: 204})),
            status204Null: new Response(null, {status: 204}).status,
            badJson: await error(() => Response.json(undefined)),
            badText: await error(() => new Response('', {statusText: 'a\nb'})),
            mutable: (() => { const x = new Response(''); x.headers.set('a', '1'); return x.headers.get('a'); })(),
        };
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "fields": [200, true, "", "default", "", false, false, "text/plain;charset=UTF-8"],
            "parsed": {"a": [1, 2]},
            "again": ["TypeError", "body already used"],
            "usedAfter": true,
            "copy": "{\"a\":[1,2]}",
            "cloneUsed": ["TypeError", "Response.clone: body already used"],
            "notFound": [404, false, "Not Found", "b", "", false],
            "json": [201, "application/json", "v", "{\"ok\":true}"],
            "error": ["error", 0, false, ["TypeError", "Headers: these headers are immutable"]],
            "redirect": [301, "https://h.example/next"],
            "badRedirect": ["RangeError", "Response.redirect: status 200 is not a redirect status"],
            "bytes": ["hi\u{fffd}", [0xef, 0xbb, 0xbf, 0x68, 0x69, 0xff]],
            "status600": ["RangeError", "Response: status 600 is not in 200-599"],
            "status204Body": ["TypeError", "Response: a 204 response cannot have a body"],
            "status204Null": 204,
            "badJson": ["TypeError", "Response.json: the data is not JSON-serialisable"],
            "badText": ["TypeError", "Response: statusText is not a valid reason phrase"],
            "mutable": "1",
        })
    );
}

#[tokio::test]
async fn fetch_sends_exactly_the_fetch_request_json() {
    let host = Arc::new(FakeHost::new());
    let got = returned_with(
        r#"
        await fetch('HTTPS://API.example.com/v1/x?q=a b');
        await fetch(new URL('https://api.example.com/v1/x?q=a b'), {
            method: 'post',
            headers: {'Content-Type': 'application/json', 'X-B': '2'},
            body: JSON.stringify({a: 1}),
            signal: {}, cache: 'no-store', credentials: 'omit', mode: 'cors', keepalive: true, unknown: 1,
        });
        const r = new Request('https://h.example/p#frag', {method: 'PUT', headers: {a: '1'}, body: new Uint8Array([0, 255, 1])});
        await fetch(r, {redirect: 'manual', headers: {b: '2'}});
        await fetch('https://h.example/form', {method: 'POST', body: new URLSearchParams({k: 'v w'})});
        const h = new Headers({'x-a': '1'});
        const later = new Request('https://h.example/later', {headers: h});
        h.set('x-a', '2');
        h.append('x-b', '3');
        await fetch(later);
        await fetch('https://h.example/dup', {headers: [['Accept', 'a'], ['accept', 'b']], redirect: 'error'});
        const used = r.bodyUsed;
        Object.prototype.text = 'from the prototype';
        await fetch('https://h.example/bytes', {method: 'POST', body: new Uint8Array([104, 105])});
        delete Object.prototype.text;
        return used;
        "#,
        Arc::clone(&host),
    )
    .await;
    assert_eq!(got, json!(true), "fetch(request) uses the request's body");
    assert_eq!(
        host.requests(),
        vec![
            json!({"url": "HTTPS://API.example.com/v1/x?q=a b", "method": "GET", "headers": [],
                "body": null, "redirect": "follow"}),
            json!({"url": "https://api.example.com/v1/x?q=a%20b", "method": "POST",
                "headers": [["content-type", "application/json"], ["x-b", "2"]],
                "body": {"text": "{\"a\":1}"}, "redirect": "follow"}),
            json!({"url": "https://h.example/p#frag", "method": "PUT", "headers": [["b", "2"]],
                "body": {"base64": "AP8B"}, "redirect": "manual"}),
            json!({"url": "https://h.example/form", "method": "POST",
                "headers": [["content-type", "application/x-www-form-urlencoded;charset=UTF-8"]],
                "body": {"text": "k=v+w"}, "redirect": "follow"}),
            json!({"url": "https://h.example/later", "method": "GET", "headers": [["x-a", "1"]],
                "body": null, "redirect": "follow"}),
            json!({"url": "https://h.example/dup", "method": "GET",
                "headers": [["accept", "a"], ["accept", "b"]], "body": null, "redirect": "error"}),
            json!({"url": "https://h.example/bytes", "method": "POST", "headers": [],
                "body": {"base64": "aGk="}, "redirect": "follow"}),
        ]
    );
    for request in host.requests() {
        serde_json::from_value::<crate::host::FetchRequest>(request.clone())
            .unwrap_or_else(|e| panic!("{request} is not a FetchRequest: {e}"));
    }
}

#[tokio::test]
async fn fetch_resolves_with_a_response_built_from_the_host_answer() {
    let host = Arc::new(FakeHost::answering(|request| {
        use base64::Engine as _;
        let url = request["url"].as_str().unwrap_or_default();
        CallOutcome::Value(if url.ends_with("/missing") {
            response(404, "Not Found", request, "{\"error\":\"no\"}")
        } else if url.ends_with("/empty") {
            json!({"status": 204, "statusText": "No Content", "url": url, "redirected": false,
                "headers": [], "bodyBase64": ""})
        } else {
            json!({
                "status": 200, "statusText": "OK", "url": "https://h.example/final",
                "redirected": true,
                "headers": [["content-type", "application/octet-stream"], ["set-cookie", "a=1"],
                    ["set-cookie", "b=2"]],
                "bodyBase64": base64::engine::general_purpose::STANDARD.encode([0u8, 1, 254, 255]),
            })
        })
    }));
    let got = returned_with(
        r#"
        const ok = await fetch('https://h.example/start');
        let immutable = null;
        try { ok.headers.set('x', 'y'); } catch (e) { immutable = e.name; }
        const missing = await fetch('https://h.example/missing');
        const empty = await fetch('https://h.example/empty');
        const clone = ok.clone();
        return {
            ok: [ok.status, ok.ok, ok.statusText, ok.url, ok.redirected, ok.type,
                ok.headers.get('content-type'), ok.headers.getSetCookie(), ok instanceof Response],
            bytes: Array.from(new Uint8Array(await ok.arrayBuffer())),
            clone: Array.from(await clone.bytes()),
            immutable,
            missing: [missing.status, missing.ok, missing.statusText, await missing.json()],
            empty: [empty.status, await empty.text(), empty.bodyUsed],
        };
        "#,
        host,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "ok": [200, true, "OK", "https://h.example/final", true, "basic",
                "application/octet-stream", ["a=1", "b=2"], true],
            "bytes": [0, 1, 254, 255],
            "clone": [0, 1, 254, 255],
            "immutable": "TypeError",
            "missing": [404, false, "Not Found", {"error": "no"}],
            "empty": [204, "", false],
        })
    );
}

#[tokio::test]
async fn fetch_rejects_with_a_type_error_carrying_the_host_reason() {
    let reason = "fetch denied: https://evil.example/ is not in the Permit (allowed: https://api.example.com/v1/**) 100% sure";
    let host = Arc::new(FakeHost::answering(move |_| {
        CallOutcome::Error(reason.to_owned())
    }));
    let got = returned_with(
        r#"
        try { await fetch('https://evil.example/'); return 'resolved'; }
        catch (e) { return [e instanceof TypeError, e.message]; }
        "#,
        Arc::clone(&host),
    )
    .await;
    assert_eq!(got, json!([true, reason]));
    assert_eq!(host.requests().len(), 1);
}

#[tokio::test]
async fn fetch_refuses_bad_input_before_the_host() {
    let host = Arc::new(FakeHost::new());
    let got = returned_with(
        r#"
        const error = async (f) => { try { await f(); return 'resolved'; } catch (e) { return [e.name, e.message]; } };
        const pending = fetch('/relative');
        return {
            isPromise: pending instanceof Promise,
            relative: await error(() => pending),
            dot: await error(() => fetch('./x')),
            invalid: await error(() => fetch('http://exa mple.com/')),
            redirect: await error(() => fetch('https://h/', {redirect: 'nope'})),
            getBody: await error(() => fetch('https://h/', {body: 'x'})),
            header: await error(() => fetch('https://h/', {headers: {'x': 'a\nb'}})),
            none: await error(() => fetch()),
        };
        "#,
        Arc::clone(&host),
    )
    .await;
    assert_eq!(
        got,
        json!({
            "isPromise": true,
            "relative": ["TypeError", "fetch: relative URL with no base"],
            "dot": ["TypeError", "fetch: relative URL with no base"],
            "invalid": ["TypeError", "fetch: Invalid URL: http://exa mple.com/"],
            "redirect": ["TypeError", "Request: redirect must be 'follow', 'error' or 'manual', not \"nope\""],
            "getBody": ["TypeError", "Request: a GET request cannot have a body"],
            "header": ["TypeError", "Headers: the value of x has a NUL, CR or LF"],
            "none": ["TypeError", "fetch: 1 argument required, 0 given"],
        })
    );
    assert!(host.requests().is_empty(), "{:?}", host.requests());
}

#[tokio::test]
async fn fetch_and_capability_calls_share_the_call_limit() {
    let host = Arc::new(FakeHost::new());
    let mut limits = limits();
    limits.max_calls = 4;
    let outcome = outcome_with(
        r#"
        const results = [];
        const attempt = async (f) => {
            try { await f(); results.push('ok'); } catch (e) { results.push(`${e.name}: ${e.message}`); }
        };
        await attempt(() => api());
        await attempt(() => fetch('https://h/1'));
        await attempt(() => fetch('https://h/2'));
        await attempt(() => api());
        await attempt(() => fetch('https://h/3'));
        await attempt(() => api());
        return results;
        "#,
        Arc::clone(&host),
        &limits,
    )
    .await;
    assert_eq!(
        outcome,
        Outcome::Returned(json!([
            "ok",
            "ok",
            "ok",
            "ok",
            "TypeError: fetch: call limit reached (at most 4 capability calls per execution)",
            "Error: api: call limit reached (at most 4 capability calls per execution)",
        ]))
    );
    assert_eq!(host.requests().len(), 2);
    assert_eq!(host.calls.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn there_is_no_fetch_without_a_fetch_capability() {
    let host = Arc::new(FakeHost {
        fetch: false,
        ..FakeHost::new()
    });
    let got = returned_with(
        r#"
        return [typeof fetch, 'fetch' in globalThis, typeof Request, typeof Response,
            typeof new Request('https://h/').url];
        "#,
        Arc::clone(&host),
    )
    .await;
    assert_eq!(
        got,
        json!(["undefined", false, "function", "function", "string"])
    );
    assert!(host.requests().is_empty());
}

#[tokio::test]
async fn deno_env_and_process_env_are_the_read_only_host_environment() {
    let host = Arc::new(FakeHost {
        environment: BTreeMap::from([
            ("OWNER".to_owned(), "octo".to_owned()),
            ("TOKEN".to_owned(), "oauth3-secret-placeholder".to_owned()),
            ("__proto__".to_owned(), "odd".to_owned()),
        ]),
        ..FakeHost::new()
    });
    let got = returned_with(
        r#"
        const error = (f) => { try { f(); return null; } catch (e) { return [e.name, e.message]; } };
        const copy = Deno.env.toObject();
        copy.OWNER = 'changed';
        process.env.OWNER = 'changed too';
        return {
            get: [Deno.env.get('OWNER'), Deno.env.get('TOKEN'), Deno.env.get('MISSING'), Deno.env.get('toString')],
            has: [Deno.env.has('OWNER'), Deno.env.has('MISSING'), Deno.env.has('__proto__')],
            copy, original: Deno.env.get('OWNER'),
            process: [process.env.OWNER, process.env.TOKEN, process.env.MISSING, Object.keys(process.env)],
            frozen: [Object.isFrozen(process.env), Object.isFrozen(Deno.env), Object.isFrozen(Deno)],
            set: error(() => Deno.env.set('OWNER', 'x')),
            del: error(() => Deno.env.delete('OWNER')),
            members: [Object.keys(Deno), Object.keys(process), Object.keys(Deno.env).sort()],
            proto: Object.getPrototypeOf(process.env) === Object.prototype,
        };
        "#,
        host,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "get": ["octo", "oauth3-secret-placeholder", null, null],
            "has": [true, false, true],
            "copy": {"OWNER": "changed", "TOKEN": "oauth3-secret-placeholder", "__proto__": "odd"},
            "original": "octo",
            "process": ["octo", "oauth3-secret-placeholder", null, ["OWNER", "TOKEN", "__proto__"]],
            "frozen": [true, true, true],
            "set": ["TypeError", "Deno.env.set: the environment is read-only in the sandbox"],
            "del": ["TypeError", "Deno.env.delete: the environment is read-only in the sandbox"],
            "members": [["env"], ["env"], ["delete", "get", "has", "set", "toObject"]],
            "proto": true,
        })
    );
}

#[tokio::test]
async fn an_empty_environment_gives_empty_objects() {
    let got = returned("return [Deno.env.toObject(), process.env, Deno.env.get('HOME')]").await;
    assert_eq!(got, json!([{}, {}, null]));
}

/// The classes load on first read, become plain replaceable globals, and nothing the runner
/// hands them (the URL parser, the fetch bridge, the helpers) is reachable from the code.
#[tokio::test]
async fn web_classes_are_lazy_plain_globals_and_leak_no_host_function() {
    let got = returned(
        r#"
        const before = typeof Object.getOwnPropertyDescriptor(globalThis, 'URL').get;
        const u = new URL('https://h/');
        const after = Object.getOwnPropertyDescriptor(globalThis, 'URL');
        Headers = 'mine';
        TextDecoder = undefined;
        const writtenUndefined = 'TextDecoder' in globalThis && TextDecoder === undefined;
        const hiddenKeys = Object.keys(globalThis).filter((k) => ['URL', 'Request', 'Deno', 'fetch', 'atob'].includes(k));
        delete globalThis.structuredClone;
        const deleted = typeof structuredClone;
        Function.prototype.bind = null;
        Object.prototype['#classes'] = {URLSearchParams: 'polluted'};
        Object.prototype['#loadHelpers'] = () => ({TextEncoder: 'polluted'});
        const sameGroup = new URL('https://h/?a=1').searchParams instanceof URLSearchParams;
        const encoded = new URLSearchParams({k: 'é'}).toString();
        delete Object.prototype['#classes'];
        delete Object.prototype['#loadHelpers'];
        const accessor = Object.getOwnPropertyDescriptor(globalThis, 'process');
        const names = new Set();
        for (let o = globalThis; o; o = Object.getPrototypeOf(o)) {
            for (const n of Object.getOwnPropertyNames(o)) names.add(n);
        }
        return {
            before, afterIsValue: typeof after.value, writable: after.writable,
            enumerable: after.enumerable, configurable: after.configurable,
            writtenUndefined, hiddenKeys, deleted, sameGroup, encoded,
            processAccessor: [typeof accessor.get, accessor.enumerable, accessor.configurable],
            replaced: Headers, url: u.href,
            hidden: [typeof urlOp, typeof hostFetch, typeof helpers, typeof INTERNAL],
            instance: new Request('https://h/') instanceof Request && new Response() instanceof Response,
            leaked: [...names].filter((n) => /urlop|host|load|helper|bridge|internal|environment|pairs/i.test(n)),
        };
        "#,
    )
    .await;
    assert_eq!(
        got,
        json!({
            "before": "function",
            "afterIsValue": "function",
            "writable": true,
            "enumerable": false,
            "configurable": true,
            "writtenUndefined": true,
            "hiddenKeys": [],
            "deleted": "undefined",
            "sameGroup": true,
            "encoded": "k=%C3%A9",
            "processAccessor": ["function", false, true],
            "replaced": "mine",
            "url": "https://h/",
            "hidden": ["undefined", "undefined", "undefined", "undefined"],
            "instance": true,
            "leaked": ["InternalError"],
        })
    );
}

/// A small deterministic generator (xorshift64), so the differential tests need no seed file.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::try_from(self.next() % from.len() as u64).unwrap_or(0)]
    }
}

/// `TextDecoder` (the engine's fast path for valid UTF-8 and the exact decoder for the rest)
/// decodes like the WHATWG UTF-8 decoder, which Rust's `from_utf8_lossy` also implements
/// (one U+FFFD per maximal invalid subpart); `fatal` throws exactly on invalid input.
#[tokio::test]
async fn text_decoder_matches_a_reference_utf8_decoder() {
    let interesting: &[u8] = &[
        0x00, 0x25, 0x41, 0x7f, 0x80, 0x8f, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1,
        0xed, 0xee, 0xef, 0xbb, 0xf0, 0xf1, 0xf4, 0xf5, 0xff,
    ];
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut cases: Vec<Vec<u8>> = (0..3000)
        .map(|_| {
            let len = rng.next() % 12;
            (0..len).map(|_| rng.pick(interesting)).collect()
        })
        .collect();
    cases.push("héllo €𝄞 \u{feff}x".as_bytes().to_vec());
    cases.push(vec![0xef, 0xbb, 0xbf, 0xef, 0xbb, 0xbf, 0x41]);
    cases.push([b"a".repeat(9000), vec![0xff], "é".repeat(5000).into_bytes()].concat());
    let host = Arc::new(FakeHost::new());
    let out = run(
        r#"
        const d = new TextDecoder();
        const f = new TextDecoder('utf-8', {fatal: true});
        return args.map((a) => {
            const bytes = new Uint8Array(a);
            let fatal;
            try { f.decode(bytes); fatal = false; } catch (e) { fatal = e instanceof TypeError; }
            return [d.decode(bytes), fatal];
        });
        "#,
        &json!(cases),
        host,
        &limits(),
        Arc::new(Redactor::none()),
    )
    .await
    .expect("starts");
    let Outcome::Returned(Value::Array(got)) = out.outcome else {
        panic!("{:?}", out.outcome)
    };
    assert_eq!(got.len(), cases.len());
    for (bytes, got) in cases.iter().zip(got) {
        let body = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(bytes);
        let want = json!([
            String::from_utf8_lossy(body),
            std::str::from_utf8(body).is_err()
        ]);
        assert_eq!(got, want, "bytes {bytes:02x?}");
    }
}

/// `TextEncoder` writes UTF-8 with each lone surrogate as U+FFFD (a USVString).
#[tokio::test]
async fn text_encoder_matches_a_reference_utf8_encoder() {
    let units: &[u16] = &[
        0x41, 0x7f, 0x80, 0x7ff, 0x800, 0xd7ff, 0xd800, 0xdbff, 0xdc00, 0xdfff, 0xe000, 0xffff,
    ];
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let cases: Vec<Vec<u16>> = (0..2000)
        .map(|_| {
            let len = rng.next() % 8;
            (0..len).map(|_| rng.pick(units)).collect()
        })
        .collect();
    let out = run(
        "const e = new TextEncoder(); return args.map((u) => Array.from(e.encode(String.fromCharCode(...u))));",
        &json!(cases),
        Arc::new(FakeHost::new()),
        &limits(),
        Arc::new(Redactor::none()),
    )
    .await
    .expect("starts");
    let Outcome::Returned(Value::Array(got)) = out.outcome else {
        panic!("{:?}", out.outcome)
    };
    for (units, got) in cases.iter().zip(got) {
        let text: String = char::decode_utf16(units.iter().copied())
            .map(|c| c.unwrap_or('\u{fffd}'))
            .collect();
        assert_eq!(got, json!(text.as_bytes()), "units {units:04x?}");
    }
}
