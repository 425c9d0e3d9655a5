// The WHATWG fetch classes every Execution has: URL, URLSearchParams, Headers, Request and
// Response, and `fetch` when the Permit has a fetch capability. Evaluated by the runner the
// first time code reads one of them (see src/sandbox/web.rs). The classes are pure; what they
// get from the runner stays captured here and is never put on the global object:
// - `urlOp(op, a, b)`: the runner's WHATWG URL parser (`op` 'parse': input `a` against base
//   `b` or none; any other `op` names a setter applied to href `a` with value `b`). Returns
//   the components [href, origin, protocol, username, password, host, hostname, port,
//   pathname, search, hash], or undefined when parsing (or setting href) fails.
// - `helpers()`: web_globals.js's helpers (TextEncoder, TextDecoder), loaded once on demand.
// - `hostFetch(request)`: hands one normalised request ({url, method, headers: [[name,
//   value]], body: null | {text, binary: null} | {text: null, binary}, redirect}, `binary`
//   holding one byte per code unit) to the runner, which checks and
//   counts it and asks the fetch host; resolves with {status, statusText, url, redirected,
//   headers, body: ArrayBuffer} or rejects with the reason's text. Undefined when the Permit
//   has no fetch capability: then there is no `fetch`.
// Not implemented: streams (no `body` property), Blob, FormData, AbortController/AbortSignal,
// request `mode`/`cache`/`credentials` (accepted in init and ignored).
(function web(urlOp, helpers, hostFetch) {
  'use strict';
  const INTERNAL = Symbol('internal');
  const usv = (v) => String(v).toWellFormed();
  const need = (given, n, what) => {
    if (given < n) throw new TypeError(`${what}: ${n} argument${n > 1 ? 's' : ''} required, ${given} given`);
  };
  const tag = (cls, name) =>
    Object.defineProperty(cls.prototype, Symbol.toStringTag, { value: name, configurable: true });

  let encoder = null, decoder = null, bomKeeper = null;
  const utf8 = (s) => (encoder = encoder || new (helpers().TextEncoder)()).encode(s);
  const fromUtf8 = (bytes) => (decoder = decoder || new (helpers().TextDecoder)()).decode(bytes);
  const fromUtf8KeepBOM = (bytes) =>
    (bomKeeper = bomKeeper || new (helpers().TextDecoder)('utf-8', { ignoreBOM: true })).decode(bytes);

  // --- application/x-www-form-urlencoded (WHATWG URL, section 5) ---
  const FORM_SAFE = /^[A-Za-z0-9*\-._]*$/;
  const HEX = '0123456789ABCDEF';
  function formEncode(s) {
    if (FORM_SAFE.test(s)) return s;
    let out = '';
    for (const b of utf8(s)) {
      if (b === 0x20) out += '+';
      else if ((b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) ||
        b === 0x2a || b === 0x2d || b === 0x2e || b === 0x5f) out += String.fromCharCode(b);
      else out += '%' + HEX[b >> 4] + HEX[b & 15];
    }
    return out;
  }
  const isHex = (b) => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
  function formDecode(s) {
    const spaced = s.replace(/\+/g, ' ');
    if (!spaced.includes('%')) return spaced;
    const bytes = utf8(spaced);
    const out = new Uint8Array(bytes.length);
    let n = 0;
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      if (b === 0x25 && i + 2 < bytes.length && isHex(bytes[i + 1]) && isHex(bytes[i + 2])) {
        out[n++] = parseInt(String.fromCharCode(bytes[i + 1], bytes[i + 2]), 16);
        i += 2;
      } else out[n++] = b;
    }
    return fromUtf8KeepBOM(out.subarray(0, n));
  }
  function parseForm(input) {
    const list = [];
    for (const part of input.split('&')) {
      if (part === '') continue;
      const eq = part.indexOf('=');
      list.push(eq < 0 ? [formDecode(part), ''] : [formDecode(part.slice(0, eq)), formDecode(part.slice(eq + 1))]);
    }
    return list;
  }
  const serializeForm = (list) => list.map(([k, v]) => `${formEncode(k)}=${formEncode(v)}`).join('&');

  // Pairs from an iterable of two-item iterables (each converted by `convert`).
  function pairsOf(init, convert, what) {
    const out = [];
    for (const pair of init) {
      if (pair === null || (typeof pair !== 'object' && typeof pair !== 'function')) {
        throw new TypeError(`${what}: each item must be a [name, value] pair`);
      }
      const p = Array.from(pair);
      if (p.length !== 2) throw new TypeError(`${what}: each pair must have exactly two items, not ${p.length}`);
      out.push([convert(p[0]), convert(p[1])]);
    }
    return out;
  }
  // Own enumerable string-keyed properties of a record, converted by `convert`.
  function recordOf(init, convert) {
    const out = [];
    for (const key of Reflect.ownKeys(init)) {
      if (typeof key !== 'string') continue;
      const d = Reflect.getOwnPropertyDescriptor(init, key);
      if (d !== undefined && d.enumerable) out.push([convert(key), convert(init[key])]);
    }
    return out;
  }
  const isObject = (v) => v !== null && (typeof v === 'object' || typeof v === 'function');
  const iterable = (v, what) => {
    const it = v[Symbol.iterator];
    if (it === undefined || it === null) return false;
    if (typeof it !== 'function') throw new TypeError(`${what}: Symbol.iterator is not a function`);
    return true;
  };

  // --- URLSearchParams ---
  let setQuery, setParamsList, bindParams;
  class URLSearchParams {
    #list = [];
    #url = null;
    static {
      setParamsList = (p, list) => { p.#list = list; };
      bindParams = (p, url) => { p.#url = url; };
    }
    constructor(init = '') {
      if (isObject(init)) {
        this.#list = iterable(init, 'URLSearchParams')
          ? pairsOf(init, usv, 'URLSearchParams')
          : recordOf(init, usv);
      } else {
        const s = usv(init);
        this.#list = parseForm(s.startsWith('?') ? s.slice(1) : s);
      }
    }
    #update() {
      if (this.#url !== null) setQuery(this.#url, serializeForm(this.#list));
    }
    get size() { return this.#list.length; }
    append(name, value) {
      need(arguments.length, 2, 'URLSearchParams.append');
      this.#list.push([usv(name), usv(value)]);
      this.#update();
    }
    delete(name, value) {
      need(arguments.length, 1, 'URLSearchParams.delete');
      const n = usv(name);
      const v = value === undefined ? undefined : usv(value);
      this.#list = this.#list.filter(([k, x]) => k !== n || (v !== undefined && x !== v));
      this.#update();
    }
    get(name) {
      need(arguments.length, 1, 'URLSearchParams.get');
      const n = usv(name);
      const found = this.#list.find(([k]) => k === n);
      return found === undefined ? null : found[1];
    }
    getAll(name) {
      need(arguments.length, 1, 'URLSearchParams.getAll');
      const n = usv(name);
      return this.#list.filter(([k]) => k === n).map(([, v]) => v);
    }
    has(name, value) {
      need(arguments.length, 1, 'URLSearchParams.has');
      const n = usv(name);
      const v = value === undefined ? undefined : usv(value);
      return this.#list.some(([k, x]) => k === n && (v === undefined || x === v));
    }
    set(name, value) {
      need(arguments.length, 2, 'URLSearchParams.set');
      const n = usv(name), v = usv(value);
      const i = this.#list.findIndex(([k]) => k === n);
      if (i < 0) this.#list.push([n, v]);
      else {
        this.#list[i] = [n, v];
        this.#list = this.#list.filter(([k], j) => j <= i || k !== n);
      }
      this.#update();
    }
    sort() {
      // Stable, by UTF-16 code units of the names.
      this.#list = this.#list
        .map((pair, i) => [pair, i])
        .sort(([a, i], [b, j]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : i - j))
        .map(([pair]) => pair);
      this.#update();
    }
    forEach(callback, thisArg = undefined) {
      if (typeof callback !== 'function') throw new TypeError('URLSearchParams.forEach: the callback is not a function');
      for (let i = 0; i < this.#list.length; i++) {
        const [k, v] = this.#list[i];
        callback.call(thisArg, v, k, this);
      }
    }
    *entries() { for (let i = 0; i < this.#list.length; i++) yield [this.#list[i][0], this.#list[i][1]]; }
    *keys() { for (let i = 0; i < this.#list.length; i++) yield this.#list[i][0]; }
    *values() { for (let i = 0; i < this.#list.length; i++) yield this.#list[i][1]; }
    toString() { return serializeForm(this.#list); }
  }
  URLSearchParams.prototype[Symbol.iterator] = URLSearchParams.prototype.entries;
  tag(URLSearchParams, 'URLSearchParams');

  // --- URL ---
  const HREF = 0, ORIGIN = 1, PROTOCOL = 2, USERNAME = 3, PASSWORD = 4, HOST = 5, HOSTNAME = 6,
    PORT = 7, PATHNAME = 8, SEARCH = 9, HASH = 10;
  // `urlOp` answers undefined for a failure; null here.
  const parseURL = (input, base) =>
    urlOp('parse', usv(input), base === undefined ? undefined : usv(base)) ?? null;
  const invalid = (input, base) =>
    new TypeError(`Invalid URL: ${usv(input)}${base === undefined ? '' : ` (with base ${usv(base)})`}`);
  class URL {
    #c;
    #params = null;
    static {
      setQuery = (url, query) => { url.#c = urlOp('search', url.#c[HREF], query); };
    }
    constructor(url, base = undefined) {
      need(arguments.length, 1, 'URL');
      const c = parseURL(url, base);
      if (c === null) throw invalid(url, base);
      this.#c = c;
    }
    static canParse(url, base = undefined) {
      need(arguments.length, 1, 'URL.canParse');
      return parseURL(url, base) !== null;
    }
    static parse(url, base = undefined) {
      need(arguments.length, 1, 'URL.parse');
      return parseURL(url, base) === null ? null : new URL(url, base);
    }
    #set(op, value) { this.#c = urlOp(op, this.#c[HREF], usv(value)); }
    #queryChanged() {
      if (this.#params !== null) setParamsList(this.#params, parseForm(this.#c[SEARCH].slice(1)));
    }
    get href() { return this.#c[HREF]; }
    set href(value) {
      const c = urlOp('href', this.#c[HREF], usv(value)) ?? null;
      if (c === null) throw invalid(value);
      this.#c = c;
      this.#queryChanged();
    }
    get origin() { return this.#c[ORIGIN]; }
    get protocol() { return this.#c[PROTOCOL]; }
    set protocol(v) { this.#set('protocol', v); }
    get username() { return this.#c[USERNAME]; }
    set username(v) { this.#set('username', v); }
    get password() { return this.#c[PASSWORD]; }
    set password(v) { this.#set('password', v); }
    get host() { return this.#c[HOST]; }
    set host(v) { this.#set('host', v); }
    get hostname() { return this.#c[HOSTNAME]; }
    set hostname(v) { this.#set('hostname', v); }
    get port() { return this.#c[PORT]; }
    set port(v) { this.#set('port', v); }
    get pathname() { return this.#c[PATHNAME]; }
    set pathname(v) { this.#set('pathname', v); }
    get search() { return this.#c[SEARCH]; }
    set search(v) { this.#set('search', v); this.#queryChanged(); }
    get searchParams() {
      if (this.#params === null) {
        this.#params = new URLSearchParams(this.#c[SEARCH]);
        bindParams(this.#params, this);
      }
      return this.#params;
    }
    get hash() { return this.#c[HASH]; }
    set hash(v) { this.#set('hash', v); }
    toString() { return this.#c[HREF]; }
    toJSON() { return this.#c[HREF]; }
  }
  tag(URL, 'URL');

  // --- Headers ---
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const byteString = (v, what) => {
    const s = String(v);
    if (/[^\x00-\xff]/.test(s)) throw new TypeError(`${what}: has a character above U+00FF`);
    return s;
  };
  const headerName = (name) => {
    const s = byteString(name, 'Headers: a header name');
    if (!TOKEN.test(s)) throw new TypeError(`Headers: invalid header name ${JSON.stringify(s)}`);
    return s.toLowerCase();
  };
  const headerValue = (value, name) => {
    const s = byteString(value, `Headers: the value of ${name}`).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, '');
    if (/[\0\r\n]/.test(s)) throw new TypeError(`Headers: the value of ${name} has a NUL, CR or LF`);
    return s;
  };
  let headerList, headersFrom, copyHeaders;
  class Headers {
    #list = [];
    #immutable = false;
    static {
      headerList = (h) => h.#list.map(([n, v]) => [n, v]);
      headersFrom = (list, immutable) => {
        const h = new Headers();
        h.#list = list.map(([n, v]) => [n, v]);
        h.#immutable = immutable;
        return h;
      };
      copyHeaders = (h) => headersFrom(h.#list, h.#immutable);
    }
    constructor(init = undefined) {
      if (init === undefined) return;
      if (!isObject(init)) throw new TypeError('Headers: init must be an object, an array of pairs or a Headers');
      const pairs = iterable(init, 'Headers') ? pairsOf(init, String, 'Headers') : recordOf(init, String);
      for (const [n, v] of pairs) this.append(n, v);
    }
    #check() {
      if (this.#immutable) throw new TypeError('Headers: these headers are immutable');
    }
    append(name, value) {
      need(arguments.length, 2, 'Headers.append');
      const n = headerName(name);
      const v = headerValue(value, n);
      this.#check();
      this.#list.push([n, v]);
    }
    delete(name) {
      need(arguments.length, 1, 'Headers.delete');
      const n = headerName(name);
      this.#check();
      this.#list = this.#list.filter(([k]) => k !== n);
    }
    get(name) {
      need(arguments.length, 1, 'Headers.get');
      const n = headerName(name);
      const values = this.#list.filter(([k]) => k === n).map(([, v]) => v);
      return values.length === 0 ? null : values.join(', ');
    }
    getSetCookie() {
      return this.#list.filter(([k]) => k === 'set-cookie').map(([, v]) => v);
    }
    has(name) {
      need(arguments.length, 1, 'Headers.has');
      const n = headerName(name);
      return this.#list.some(([k]) => k === n);
    }
    set(name, value) {
      need(arguments.length, 2, 'Headers.set');
      const n = headerName(name);
      const v = headerValue(value, n);
      this.#check();
      const i = this.#list.findIndex(([k]) => k === n);
      if (i < 0) this.#list.push([n, v]);
      else {
        this.#list[i] = [n, v];
        this.#list = this.#list.filter(([k], j) => j <= i || k !== n);
      }
    }
    // Sorted by name; values of one name joined with ", ", except set-cookie (one each).
    #combined() {
      const names = [...new Set(this.#list.map(([k]) => k))].sort();
      const out = [];
      for (const n of names) {
        const values = this.#list.filter(([k]) => k === n).map(([, v]) => v);
        if (n === 'set-cookie') for (const v of values) out.push([n, v]);
        else out.push([n, values.join(', ')]);
      }
      return out;
    }
    forEach(callback, thisArg = undefined) {
      if (typeof callback !== 'function') throw new TypeError('Headers.forEach: the callback is not a function');
      for (const [n, v] of this.#combined()) callback.call(thisArg, v, n, this);
    }
    *entries() { yield* this.#combined(); }
    *keys() { for (const [n] of this.#combined()) yield n; }
    *values() { for (const [, v] of this.#combined()) yield v; }
  }
  Headers.prototype[Symbol.iterator] = Headers.prototype.entries;
  tag(Headers, 'Headers');

  // --- bodies (shared by Request and Response) ---
  // A body is null or a record of `text` (a string) or `bytes` (a Uint8Array), and `used`.
  // Records have no prototype, so nothing code puts on Object.prototype is read as a field.
  const bodyOf = (text, bytes) => ({ __proto__: null, text, bytes, used: false });
  function extractBody(body) {
    if (body === null || body === undefined) return [null, null];
    if (typeof body === 'string') return [bodyOf(body.toWellFormed(), undefined), 'text/plain;charset=UTF-8'];
    if (body instanceof URLSearchParams) {
      return [bodyOf(body.toString(), undefined), 'application/x-www-form-urlencoded;charset=UTF-8'];
    }
    if (body instanceof ArrayBuffer) return [bodyOf(undefined, new Uint8Array(body.slice(0))), null];
    if (ArrayBuffer.isView(body)) {
      return [bodyOf(undefined, new Uint8Array(body.buffer, body.byteOffset, body.byteLength).slice()), null];
    }
    return [bodyOf(usv(body), undefined), 'text/plain;charset=UTF-8'];
  }
  const copyBody = (body) => (body === null ? null : bodyOf(body.text, body.bytes));
  // Marks a body read; a body is read at most once.
  function take(body) {
    if (body === null) return null;
    if (body.used) throw new TypeError('body already used');
    body.used = true;
    return body;
  }
  const textOf = (body) => (body === null ? '' : body.text !== undefined ? body.text : fromUtf8(body.bytes));
  const bytesOf = (body) =>
    body === null ? new Uint8Array(0) : body.text !== undefined ? utf8(body.text) : body.bytes.slice();

  // --- Request ---
  const NORMALISED_METHODS = ['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH'];
  const FORBIDDEN_METHODS = ['CONNECT', 'TRACE', 'TRACK'];
  const REDIRECTS = ['follow', 'error', 'manual'];
  function method(m) {
    const s = byteString(m, 'Request: the method');
    if (!TOKEN.test(s)) throw new TypeError(`Request: invalid method ${JSON.stringify(s)}`);
    const upper = s.toUpperCase();
    if (FORBIDDEN_METHODS.includes(upper)) throw new TypeError(`Request: method ${s} is forbidden`);
    return NORMALISED_METHODS.includes(upper) ? upper : s;
  }
  const dictionary = (init, what) => {
    if (init === undefined || init === null) return {};
    if (!isObject(init)) throw new TypeError(`${what}: init must be an object`);
    return init;
  };
  let requestState;
  class Request {
    #s;
    static { requestState = (r) => r.#s; }
    constructor(input, init = undefined) {
      if (input === INTERNAL) { this.#s = init; return; }
      need(arguments.length, 1, 'Request');
      init = dictionary(init, 'Request');
      const from = input instanceof Request ? input.#s : null;
      let url;
      if (from !== null) url = from.url;
      else {
        const c = parseURL(input, undefined);
        if (c === null) throw new TypeError(`Request: Invalid URL: ${usv(input)}`);
        if (c[USERNAME] !== '' || c[PASSWORD] !== '') {
          throw new TypeError('Request: the URL has credentials (user:password@); send them in a header instead');
        }
        url = c[HREF];
      }
      const m = init.method !== undefined ? method(init.method) : from !== null ? from.method : 'GET';
      let redirect = from !== null ? from.redirect : 'follow';
      if (init.redirect !== undefined) {
        redirect = String(init.redirect);
        if (!REDIRECTS.includes(redirect)) {
          throw new TypeError(`Request: redirect must be 'follow', 'error' or 'manual', not ${JSON.stringify(redirect)}`);
        }
      }
      const headers = init.headers !== undefined ? new Headers(init.headers)
        : headersFrom(from !== null ? headerList(from.headers) : [], false);
      const inputBody = from !== null ? from.body : null;
      const hasInitBody = init.body !== undefined && init.body !== null;
      if ((hasInitBody || inputBody !== null) && (m === 'GET' || m === 'HEAD')) {
        throw new TypeError(`Request: a ${m} request cannot have a body`);
      }
      let body = null;
      if (hasInitBody) {
        const [b, type] = extractBody(init.body);
        body = b;
        if (type !== null && !headers.has('content-type')) headers.append('content-type', type);
      } else if (inputBody !== null) {
        if (inputBody.used) throw new TypeError('Request: the input request\'s body is already used');
        inputBody.used = true;
        body = copyBody(inputBody);
      }
      this.#s = { url, method: m, headers, body, redirect };
    }
    get url() { return this.#s.url; }
    get method() { return this.#s.method; }
    get headers() { return this.#s.headers; }
    get redirect() { return this.#s.redirect; }
    get bodyUsed() { return this.#s.body !== null && this.#s.body.used; }
    async text() { return textOf(take(this.#s.body)); }
    async json() { return JSON.parse(textOf(take(this.#s.body))); }
    async arrayBuffer() { return bytesOf(take(this.#s.body)).buffer; }
    async bytes() { return bytesOf(take(this.#s.body)); }
    clone() {
      const s = this.#s;
      if (this.bodyUsed) throw new TypeError('Request.clone: body already used');
      return new Request(INTERNAL, { ...s, headers: copyHeaders(s.headers), body: copyBody(s.body) });
    }
  }
  tag(Request, 'Request');

  // --- Response ---
  const NULL_BODY_STATUS = [101, 103, 204, 205, 304];
  const REDIRECT_STATUS = [301, 302, 303, 307, 308];
  const REASON_PHRASE = /^[\t\x20-\x7e\x80-\xff]*$/;
  function responseState(init, body, type) {
    init = dictionary(init, 'Response');
    let status = 200;
    if (init.status !== undefined) {
      const n = Number(init.status);
      status = Number.isFinite(n) ? ((Math.trunc(n) % 65536) + 65536) % 65536 : 0;
      if (status < 200 || status > 599) throw new RangeError(`Response: status ${init.status} is not in 200-599`);
    }
    const statusText = init.statusText === undefined ? '' : String(init.statusText);
    if (!REASON_PHRASE.test(statusText)) throw new TypeError('Response: statusText is not a valid reason phrase');
    const headers = new Headers(init.headers);
    if (body !== null) {
      if (NULL_BODY_STATUS.includes(status)) throw new TypeError(`Response: a ${status} response cannot have a body`);
      if (type !== null && !headers.has('content-type')) headers.append('content-type', type);
    }
    return { status, statusText, headers, body, url: '', redirected: false, type: 'default' };
  }
  class Response {
    #s;
    constructor(body = null, init = undefined) {
      this.#s = body === INTERNAL ? init : responseState(init, ...extractBody(body));
    }
    static error() {
      return new Response(INTERNAL, {
        status: 0, statusText: '', headers: headersFrom([], true), body: null, url: '', redirected: false, type: 'error',
      });
    }
    static json(data, init = undefined) {
      const text = JSON.stringify(data);
      if (text === undefined) throw new TypeError('Response.json: the data is not JSON-serialisable');
      return new Response(INTERNAL, responseState(init, bodyOf(text, undefined), 'application/json'));
    }
    static redirect(url, status = 302) {
      need(arguments.length, 1, 'Response.redirect');
      const c = parseURL(url, undefined);
      if (c === null) throw new TypeError(`Response.redirect: Invalid URL: ${usv(url)}`);
      const s = Number(status);
      if (!REDIRECT_STATUS.includes(s)) throw new RangeError(`Response.redirect: status ${status} is not a redirect status`);
      return new Response(INTERNAL, {
        status: s, statusText: '', headers: headersFrom([['location', c[HREF]]], true), body: null,
        url: '', redirected: false, type: 'default',
      });
    }
    get type() { return this.#s.type; }
    get url() { return this.#s.url; }
    get redirected() { return this.#s.redirected; }
    get status() { return this.#s.status; }
    get ok() { return this.#s.status >= 200 && this.#s.status <= 299; }
    get statusText() { return this.#s.statusText; }
    get headers() { return this.#s.headers; }
    get bodyUsed() { return this.#s.body !== null && this.#s.body.used; }
    async text() { return textOf(take(this.#s.body)); }
    async json() { return JSON.parse(textOf(take(this.#s.body))); }
    async arrayBuffer() { return bytesOf(take(this.#s.body)).buffer; }
    async bytes() { return bytesOf(take(this.#s.body)); }
    clone() {
      const s = this.#s;
      if (this.bodyUsed) throw new TypeError('Response.clone: body already used');
      return new Response(INTERNAL, { ...s, headers: copyHeaders(s.headers), body: copyBody(s.body) });
    }
  }
  tag(Response, 'Response');

  // --- fetch ---
  // Bytes as a string of code units 0-255, which the runner turns back into bytes.
  function binary(bytes) {
    let out = '';
    for (let i = 0; i < bytes.length; i += 8192) {
      out += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    }
    return out;
  }
  async function fetch(input, init = undefined) {
    need(arguments.length, 1, 'fetch');
    let url = null;
    let request;
    if (input instanceof Request) request = new Request(input, init);
    else {
      const s = usv(input);
      if (parseURL(s, undefined) === null) {
        throw new TypeError(parseURL(s, 'http://base.invalid/') !== null
          ? 'fetch: relative URL with no base'
          : `fetch: Invalid URL: ${s}`);
      }
      request = new Request(s, init);
      // A string goes to the host as written (it parses it again); a URL as its href.
      url = input instanceof URL ? input.href : s;
    }
    const s = requestState(request);
    const body = take(s.body);
    const answer = await hostFetch({
      url: url === null ? s.url : url,
      method: s.method,
      headers: headerList(s.headers),
      // Both keys are own properties, so the runner never reads one from a prototype.
      body: body === null ? null
        : body.text !== undefined ? { text: body.text, binary: null } : { text: null, binary: binary(body.bytes) },
      redirect: s.redirect,
    }).catch((reason) => { throw new TypeError(String(reason)); });
    const nullBody = NULL_BODY_STATUS.includes(answer.status);
    return new Response(INTERNAL, {
      status: answer.status,
      statusText: answer.statusText,
      headers: headersFrom(answer.headers.map(([n, v]) => [String(n).toLowerCase(), String(v)]), true),
      body: nullBody ? null : bodyOf(undefined, new Uint8Array(answer.body)),
      url: answer.url,
      redirected: answer.redirected,
      type: 'basic',
    });
  }

  const classes = { URL, URLSearchParams, Headers, Request, Response };
  if (hostFetch !== undefined) classes.fetch = fetch;
  return classes;
})
