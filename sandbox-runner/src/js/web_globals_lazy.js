// Puts the web-standard helpers on the global object as properties that load them (one
// evaluation of web_globals.js) the first time code reads one: code that uses none of them
// pays nothing at start. Reading turns each into a plain writable property, as in browsers.
(function installLazily(load) {
  'use strict';
  const names = ['atob', 'btoa', 'TextEncoder', 'TextDecoder', 'structuredClone', 'crypto'];
  let helpers = null;
  const plain = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  for (const name of names) {
    Object.defineProperty(globalThis, name, {
      configurable: true,
      enumerable: false,
      get() {
        helpers = helpers || load();
        plain(name, helpers[name]);
        return helpers[name];
      },
      set(value) { plain(name, value); },
    });
  }
})
