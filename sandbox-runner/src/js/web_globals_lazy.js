// Puts the web-standard globals on the global object as properties that load them the first
// time code reads one: code that uses none of them pays nothing at start. Reading turns each
// into a plain writable property, as in browsers. Three groups, each evaluated at most once:
// the helpers (web_globals.js), the fetch classes (web_fetch.js, which use the helpers for
// UTF-8; `fetch` itself only when `withFetch`) and the environment (web_env.js).
(function installLazily(loadHelpers, loadWeb, loadEnv, withFetch) {
  'use strict';
  let helpers = null, web = null, env = null;
  const getHelpers = () => (helpers = helpers || loadHelpers());
  const getWeb = () => (web = web || loadWeb(getHelpers));
  const getEnv = () => (env = env || loadEnv());
  const plain = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  const lazy = (name, load) =>
    Object.defineProperty(globalThis, name, {
      configurable: true,
      enumerable: false,
      get() {
        const value = load()[name];
        plain(name, value);
        return value;
      },
      set(value) { plain(name, value); },
    });
  for (const name of ['atob', 'btoa', 'TextEncoder', 'TextDecoder', 'structuredClone', 'crypto']) lazy(name, getHelpers);
  for (const name of ['URL', 'URLSearchParams', 'Headers', 'Request', 'Response']) lazy(name, getWeb);
  if (withFetch) lazy('fetch', getWeb);
  lazy('Deno', getEnv);
  lazy('process', getEnv);
})
