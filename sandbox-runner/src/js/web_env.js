// `Deno.env` and `process.env`: the run's environment as the runner's host gives it (string
// args, and an opaque placeholder for each secret a fetch capability binds), read-only.
// Evaluated the first time code reads `Deno` or `process` (see src/sandbox/web.rs); `pairs`
// is [[name, value]] in name order. These objects have nothing else: no other `Deno` or
// `process` member exists in the sandbox.
(function environment(pairs) {
  'use strict';
  const own = (target, writable) => {
    for (const [name, value] of pairs) {
      Object.defineProperty(target, name, { value, enumerable: true, writable, configurable: writable });
    }
    return target;
  };
  const values = Object.freeze(own({}, false));
  const has = (name) => Object.prototype.hasOwnProperty.call(values, String(name));
  const readOnly = (what) => function () {
    throw new TypeError(`Deno.env.${what}: the environment is read-only in the sandbox`);
  };
  const env = Object.freeze({
    get(name) { return has(name) ? values[String(name)] : undefined; },
    has(name) { return has(name); },
    toObject() { return own({}, true); },
    set: readOnly('set'),
    delete: readOnly('delete'),
  });
  return { Deno: Object.freeze({ env }), process: Object.freeze({ env: values }) };
})
