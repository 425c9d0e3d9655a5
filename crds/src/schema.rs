//! CEL rules shared by several fields of the CRD schemas. Each is paired with a human message
//! where it is attached; the API server evaluates them on every create and update.

/// Exactly one capability form.
pub const FORM_EXCLUSIVE: &str = "has(self.baseUrl) != has(self.endpoint)";

/// A scoped-fetch capability has its fields and none of the typed-endpoint ones.
pub const SCOPED_FETCH_FIELDS: &str = "!has(self.baseUrl) || (has(self.paths) && size(self.paths) > 0 && has(self.methods) && size(self.methods) > 0 && !has(self.method) && !has(self.params))";

/// A typed-endpoint capability has its fields and none of the scoped-fetch ones.
pub const TYPED_ENDPOINT_FIELDS: &str = "!has(self.endpoint) || (has(self.method) && !has(self.paths) && !has(self.methods) && !has(self.query))";

/// Every `{placeholder}` in an endpoint is a declared path parameter.
pub const ENDPOINT_PARAMS_DECLARED: &str = "!has(self.endpoint) || self.endpoint.findAll('\\\\{[^{}/]*\\\\}').all(m, has(self.params) && m.substring(1, m.size() - 1) in self.params && self.params[m.substring(1, m.size() - 1)].__in__ == 'path')";

/// Every declared path parameter appears in the endpoint.
pub const ENDPOINT_PATH_PARAMS_USED: &str = "!has(self.endpoint) || !has(self.params) || self.params.all(k, self.params[k].__in__ != 'path' || self.endpoint.contains('{' + k + '}'))";

/// A capability name is not a JavaScript reserved word nor a global the sandbox defines.
pub const JS_NAME_RULE: &str = "!(self in ['args', 'console', 'JSON', 'Math', 'Object', 'Array', 'Promise', 'String', 'Number', 'Boolean', 'Error', 'Date', 'RegExp', 'Symbol', 'globalThis', 'undefined', 'NaN', 'Infinity', 'eval', 'arguments', 'break', 'case', 'catch', 'class', 'const', 'continue', 'debugger', 'default', 'delete', 'do', 'else', 'enum', 'export', 'extends', 'false', 'finally', 'for', 'function', 'if', 'import', 'in', 'instanceof', 'new', 'null', 'return', 'super', 'switch', 'this', 'throw', 'true', 'try', 'typeof', 'var', 'void', 'while', 'with', 'yield', 'let', 'static', 'implements', 'interface', 'package', 'private', 'protected', 'public', 'await'])";

/// An absolute URL with a host.
pub const URL_ABSOLUTE: &str = "isURL(self) && url(self).getHostname() != ''";

/// https, or http to a loopback host.
pub const URL_HTTPS: &str = "self.startsWith('https://') || self.matches('^http://(localhost|127\\\\.[0-9]{1,3}\\\\.[0-9]{1,3}\\\\.[0-9]{1,3}|\\\\[::1\\\\])(:[0-9]{1,5})?(/.*)?$')";

/// No `user:password@` before the host.
pub const URL_NO_USERINFO: &str = "!self.matches('^[^:/?#]*://[^/?#]*@')";

/// No query or fragment.
pub const URL_NO_QUERY: &str = "!self.contains('?') && !self.contains('#')";
