//! CEL rules shared by several fields of the CRD schemas. Each is paired with a human message
//! where it is attached; the API server evaluates them on every create and update.

/// Exactly one capability form.
pub const FORM_EXCLUSIVE: &str =
    "(has(self.baseUrl) ? 1 : 0) + (has(self.endpoint) ? 1 : 0) + (has(self.hosts) ? 1 : 0) == 1";

/// A fetch capability has its fields and none of the other forms' (secrets travel only as
/// bound placeholders, never through `auth` or `cookies`).
pub const FETCH_FIELDS: &str = "!has(self.hosts) || (has(self.methods) && size(self.methods) > 0 && !has(self.method) && !has(self.params) && !has(self.auth) && !has(self.cookies))";

/// Secret bindings belong to the fetch form only.
pub const BINDINGS_NEED_HOSTS: &str = "!has(self.secretBindings) || has(self.hosts)";

/// Every host of a secret binding is one of the capability's hosts.
pub const BINDING_HOSTS_WITHIN: &str =
    "!has(self.secretBindings) || self.secretBindings.all(b, b.hosts.all(h, h in self.hosts))";

/// A host entry of the fetch form: a lower-case DNS name or an IP address (IPv6 in brackets),
/// optionally `:port`; no scheme, path, wildcard, userinfo or trailing dot. (Written without
/// backslashes so the same text is a valid CEL string and RE2 expression.)
pub const FETCH_HOST_PATTERN: &str = "^([[][0-9a-f:.]+[]]|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?([.][a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)(:[0-9]{1,5})?$";

/// The CEL rule on a list of fetch hosts: each matches [`FETCH_HOST_PATTERN`].
pub fn fetch_hosts_rule() -> String {
    format!("self.all(h, h.matches('{FETCH_HOST_PATTERN}'))")
}

/// What [`fetch_hosts_rule`] says when it fails.
pub const FETCH_HOSTS_MESSAGE: &str = "each host must be a lower-case host name or IP address with an optional :port (api.github.com, 127.0.0.1:8443, [::1]:8443): no scheme, path, wildcard, userinfo or trailing dot";

/// A scoped-fetch capability has its fields and none of the typed-endpoint ones.
pub const SCOPED_FETCH_FIELDS: &str = "!has(self.baseUrl) || (has(self.paths) && size(self.paths) > 0 && has(self.methods) && size(self.methods) > 0 && !has(self.method) && !has(self.params))";

/// A typed-endpoint capability has its fields and none of the scoped-fetch ones.
pub const TYPED_ENDPOINT_FIELDS: &str = "!has(self.endpoint) || (has(self.method) && !has(self.paths) && !has(self.methods) && !has(self.query))";

/// Every `{placeholder}` in an endpoint is a declared path parameter.
pub const ENDPOINT_PARAMS_DECLARED: &str = "!has(self.endpoint) || self.endpoint.findAll('\\\\{[^{}/]*\\\\}').all(m, has(self.params) && m.substring(1, m.size() - 1) in self.params && self.params[m.substring(1, m.size() - 1)].__in__ == 'path')";

/// Every declared path parameter appears in the endpoint.
pub const ENDPOINT_PATH_PARAMS_USED: &str = "!has(self.endpoint) || !has(self.params) || self.params.all(k, self.params[k].__in__ != 'path' || self.endpoint.contains('{' + k + '}'))";

/// JavaScript reserved words (ECMAScript, including strict-mode and future reserved words).
pub const JS_RESERVED_WORDS: &[&str] = &[
    "await",
    "break",
    "case",
    "catch",
    "class",
    "const",
    "continue",
    "debugger",
    "default",
    "delete",
    "do",
    "else",
    "enum",
    "export",
    "extends",
    "false",
    "finally",
    "for",
    "function",
    "if",
    "implements",
    "import",
    "in",
    "instanceof",
    "interface",
    "let",
    "new",
    "null",
    "package",
    "private",
    "protected",
    "public",
    "return",
    "static",
    "super",
    "switch",
    "this",
    "throw",
    "true",
    "try",
    "typeof",
    "var",
    "void",
    "while",
    "with",
    "yield",
    "arguments",
];

/// The global names the sandbox has: the JavaScript built-ins it installs and what the runner
/// adds (`args`, `console`, the web-standard helpers and classes). The sandbox's tests check
/// its global scope holds nothing else (besides capabilities, and the `fetch`, `Deno` and
/// `process` it installs itself in place of the engine's, see [`SANDBOX_REMOVED_GLOBALS`]).
pub const SANDBOX_GLOBALS: &[&str] = &[
    // Added by the runner.
    "args",
    "console",
    "atob",
    "btoa",
    "TextEncoder",
    "TextDecoder",
    "structuredClone",
    "crypto",
    "URL",
    "URLSearchParams",
    "Headers",
    "Request",
    "Response",
    // Value properties and functions of the global object.
    "globalThis",
    "undefined",
    "NaN",
    "Infinity",
    "eval",
    "isFinite",
    "isNaN",
    "parseFloat",
    "parseInt",
    "decodeURI",
    "decodeURIComponent",
    "encodeURI",
    "encodeURIComponent",
    "escape",
    "unescape",
    // Constructors and namespaces.
    "Object",
    "Function",
    "Array",
    "Number",
    "Boolean",
    "String",
    "Symbol",
    "BigInt",
    "Math",
    "JSON",
    "Reflect",
    "Date",
    "RegExp",
    "Proxy",
    "Promise",
    "Map",
    "Set",
    "WeakMap",
    "WeakSet",
    "WeakRef",
    "FinalizationRegistry",
    "Iterator",
    "ArrayBuffer",
    "SharedArrayBuffer",
    "DataView",
    "Atomics",
    "Int8Array",
    "Uint8Array",
    "Uint8ClampedArray",
    "Int16Array",
    "Uint16Array",
    "Int32Array",
    "Uint32Array",
    "BigInt64Array",
    "BigUint64Array",
    "Float16Array",
    "Float32Array",
    "Float64Array",
    "Error",
    "EvalError",
    "RangeError",
    "ReferenceError",
    "SyntaxError",
    "TypeError",
    "URIError",
    "InternalError",
    "AggregateError",
    "SuppressedError",
    "DisposableStack",
    "AsyncDisposableStack",
];

/// The properties of `Object.prototype`, which the global object inherits.
pub const OBJECT_PROTOTYPE_NAMES: &[&str] = &[
    "__proto__",
    "constructor",
    "toString",
    "toLocaleString",
    "valueOf",
    "hasOwnProperty",
    "isPrototypeOf",
    "propertyIsEnumerable",
    "__defineGetter__",
    "__defineSetter__",
    "__lookupGetter__",
    "__lookupSetter__",
];

/// Globals some JavaScript engines or runtimes add that the sandbox removes (no network, no
/// process, no timers, no engine internals); refused as capability names too, so code never
/// mistakes a capability for them. The sandbox then installs its own `fetch` (only with a
/// fetch capability, through the policy), `Deno` and `process` (a read-only `env` each).
pub const SANDBOX_REMOVED_GLOBALS: &[&str] = &[
    "fetch",
    "require",
    "process",
    "Deno",
    "setTimeout",
    "setInterval",
    "clearTimeout",
    "clearInterval",
    "queueMicrotask",
    "navigator",
    "performance",
    "std",
    "os",
    "print",
    "scriptArgs",
    "gc",
];

/// Whether `name` is a name the sandbox defines, inherits or removes ([`SANDBOX_GLOBALS`],
/// [`OBJECT_PROTOTYPE_NAMES`], [`SANDBOX_REMOVED_GLOBALS`]) or a reserved word: a capability
/// named like one would shadow it or fail to install, so the schema refuses them and the
/// runner's tests enumerate the real sandbox's global scope against these lists.
pub fn is_sandbox_name(name: &str) -> bool {
    sandbox_names().any(|n| n == name)
}

fn sandbox_names() -> impl Iterator<Item = &'static str> {
    JS_RESERVED_WORDS
        .iter()
        .chain(SANDBOX_GLOBALS)
        .chain(OBJECT_PROTOTYPE_NAMES)
        .chain(SANDBOX_REMOVED_GLOBALS)
        .copied()
}

/// The CEL rule on a capability (its `name`): not a reserved word, not a sandbox name, unless
/// it is a fetch capability (`hosts`), which installs no function.
pub fn capability_name_rule() -> String {
    let names: Vec<String> = sandbox_names().map(|n| format!("'{n}'")).collect();
    format!("has(self.hosts) || !(self.name in [{}])", names.join(", "))
}

/// Each path param's `{placeholder}` appears once in the endpoint (with
/// [`ENDPOINT_PARAMS_DECLARED`], every placeholder appears once).
pub const ENDPOINT_PARAMS_ONCE: &str = "!has(self.endpoint) || !has(self.params) || self.params.all(k, self.params[k].__in__ != 'path' || self.endpoint.indexOf('{' + k + '}') == self.endpoint.lastIndexOf('{' + k + '}'))";

/// No control characters (C0, DEL, C1): the value goes into an HTTP header or query.
pub const NO_CONTROL_CHARACTERS: &str = "!self.matches('[\\x00-\\x1f\\x7f-\\x9f]')";

/// A `validFor` of at most 365 days, in whichever unit it is written (checked only once the
/// pattern holds, so the number parses).
pub const VALID_FOR_AT_MOST_365D: &str = "!self.matches('^[1-9][0-9]{0,5}[smhd]$') || int(self.substring(0, self.size() - 1)) * (self.endsWith('d') ? 86400 : self.endsWith('h') ? 3600 : self.endsWith('m') ? 60 : 1) <= 31536000";

/// An absolute URL with a host.
pub const URL_ABSOLUTE: &str = "isURL(self) && url(self).getHostname() != ''";

/// https, or http to a loopback host.
pub const URL_HTTPS: &str = "self.startsWith('https://') || self.matches('^http://(localhost|127\\\\.[0-9]{1,3}\\\\.[0-9]{1,3}\\\\.[0-9]{1,3}|\\\\[::1\\\\])(:[0-9]{1,5})?(/.*)?$')";

/// No `user:password@` before the host.
pub const URL_NO_USERINFO: &str = "!self.matches('^[^:/?#]*://[^/?#]*@')";

/// No query or fragment.
pub const URL_NO_QUERY: &str = "!self.contains('?') && !self.contains('#')";
