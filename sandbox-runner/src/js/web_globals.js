// Web-standard helpers every Execution has (pure: no authority, no I/O): atob, btoa,
// TextEncoder, TextDecoder (UTF-8), structuredClone, crypto.getRandomValues and
// crypto.randomUUID. Evaluated by the runner the first time code touches one of them (see
// src/sandbox/web.rs); `randomBytes` is the runner's source of randomness, captured here and
// never on the global object. Returns the helpers by name.
(function helpers(randomBytes) {
  'use strict';
  const named = (name, message) => { const e = new Error(message); e.name = name; return e; };

  const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  function btoa(data) {
    const s = String(data);
    let out = '';
    for (let i = 0; i < s.length; i += 3) {
      const n = Math.min(3, s.length - i);
      const bytes = [];
      for (let j = 0; j < n; j++) {
        const c = s.charCodeAt(i + j);
        if (c > 255) throw named('InvalidCharacterError', 'btoa: the string has a character outside Latin-1 (encode it as UTF-8 first)');
        bytes.push(c);
      }
      const v = (bytes[0] << 16) | ((bytes[1] || 0) << 8) | (bytes[2] || 0);
      out += ALPHABET[(v >> 18) & 63] + ALPHABET[(v >> 12) & 63] +
        (n > 1 ? ALPHABET[(v >> 6) & 63] : '=') + (n > 2 ? ALPHABET[v & 63] : '=');
    }
    return out;
  }
  function atob(data) {
    let s = String(data).replace(/[\t\n\f\r ]/g, '');
    if (s.length % 4 === 0) s = s.replace(/==?$/, '');
    if (s.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(s)) {
      throw named('InvalidCharacterError', 'atob: the string is not correctly base64-encoded');
    }
    let out = '';
    let bits = 0, acc = 0;
    for (const ch of s) {
      acc = (acc << 6) | ALPHABET.indexOf(ch);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out += String.fromCharCode((acc >> bits) & 255);
      }
    }
    return out;
  }

  function utf8(input) {
    const s = String(input);
    // At most three bytes per UTF-16 code unit; written in place, then cut to length.
    const out = new Uint8Array(s.length * 3);
    let n = 0;
    for (let i = 0; i < s.length; i++) {
      let c = s.charCodeAt(i);
      if (c < 0x80) { out[n++] = c; continue; }
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) { c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00); i++; }
        else c = 0xfffd;
      } else if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
      if (c < 0x800) { out[n++] = 0xc0 | (c >> 6); out[n++] = 0x80 | (c & 63); }
      else if (c < 0x10000) { out[n++] = 0xe0 | (c >> 12); out[n++] = 0x80 | ((c >> 6) & 63); out[n++] = 0x80 | (c & 63); }
      else { out[n++] = 0xf0 | (c >> 18); out[n++] = 0x80 | ((c >> 12) & 63); out[n++] = 0x80 | ((c >> 6) & 63); out[n++] = 0x80 | (c & 63); }
    }
    return out.slice(0, n);
  }
  class TextEncoder {
    get encoding() { return 'utf-8'; }
    encode(input = '') { return utf8(input); }
    encodeInto(input, dest) {
      const bytes = utf8(input);
      const n = Math.min(bytes.length, dest.length);
      dest.set(bytes.subarray(0, n));
      return { read: String(input).length, written: n };
    }
  }
  const UTF8_LABELS = ['utf-8', 'utf8', 'unicode-1-1-utf-8'];
  function bytesOf(input) {
    if (input === undefined) return new Uint8Array(0);
    if (input instanceof ArrayBuffer) return new Uint8Array(input);
    if (ArrayBuffer.isView(input)) return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    throw new TypeError('TextDecoder.decode: expected an ArrayBuffer or a typed array');
  }
  // Bytes as a string of code units 0-255, built a chunk at a time by the engine.
  function latin1(b) {
    let s = '';
    for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode.apply(null, b.subarray(i, i + 8192));
    return s;
  }
  // Valid UTF-8 decoded by the engine's own URI decoder (byte-by-byte JavaScript is slow in
  // QuickJS); null when the bytes are not valid UTF-8 (the URI decoder refuses exactly the
  // sequences the exact decoder below replaces), so that decoder handles them.
  function decodeValid(b) {
    const s = latin1(b);
    if (!/[\x80-\xff]/.test(s)) return s;
    try { return decodeURIComponent(escape(s)); } catch { return null; }
  }
  class TextDecoder {
    #fatal; #ignoreBOM;
    constructor(label = 'utf-8', options = {}) {
      if (!UTF8_LABELS.includes(String(label).trim().toLowerCase())) {
        throw new RangeError(`TextDecoder: only utf-8 is supported here, not ${label}`);
      }
      this.#fatal = Boolean(options.fatal);
      this.#ignoreBOM = Boolean(options.ignoreBOM);
    }
    get encoding() { return 'utf-8'; }
    get fatal() { return this.#fatal; }
    get ignoreBOM() { return this.#ignoreBOM; }
    decode(input) {
      const b = bytesOf(input);
      // Code units are collected and turned into text a chunk at a time (appending one
      // character at a time is slow in QuickJS); runs of ASCII are copied straight.
      const CHUNK = 8192;
      let out = '';
      let units = [];
      const unit = (u) => {
        units.push(u);
        if (units.length >= CHUNK) { out += String.fromCharCode.apply(null, units); units = []; }
      };
      let i = 0;
      const bad = () => {
        if (this.#fatal) throw new TypeError('TextDecoder.decode: the data is not valid UTF-8');
        unit(0xfffd);
      };
      if (!this.#ignoreBOM && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) i = 3;
      const valid = decodeValid(i === 0 ? b : b.subarray(i));
      if (valid !== null) return valid;
      while (i < b.length) {
        const c = b[i];
        // The standard's bounds on the second byte rule out overlong forms, surrogates and
        // code points past U+10FFFF.
        let need = 0, cp = 0, lower = 0x80, upper = 0xbf;
        if (c < 0x80) {
          let j = i + 1;
          while (j < b.length && b[j] < 0x80 && j - i < CHUNK) j++;
          if (units.length > 0) { out += String.fromCharCode.apply(null, units); units = []; }
          out += String.fromCharCode.apply(null, b.subarray(i, j));
          i = j;
          continue;
        }
        else if (c >= 0xc2 && c <= 0xdf) { need = 1; cp = c & 31; }
        else if (c >= 0xe0 && c <= 0xef) {
          need = 2; cp = c & 15;
          if (c === 0xe0) lower = 0xa0;
          if (c === 0xed) upper = 0x9f;
        }
        else if (c >= 0xf0 && c <= 0xf4) {
          need = 3; cp = c & 7;
          if (c === 0xf0) lower = 0x90;
          if (c === 0xf4) upper = 0x8f;
        }
        else { bad(); i++; continue; }
        let j = 1;
        for (; j <= need; j++) {
          const d = b[i + j];
          if (d === undefined || d < lower || d > upper) break;
          lower = 0x80; upper = 0xbf;
          cp = (cp << 6) | (d & 63);
        }
        // A cut sequence: one U+FFFD for what was read, the byte that cut it read again.
        if (j <= need) { bad(); i += j; continue; }
        if (cp < 0x10000) unit(cp);
        else { unit(0xd800 + ((cp - 0x10000) >> 10)); unit(0xdc00 + ((cp - 0x10000) & 0x3ff)); }
        i += need + 1;
      }
      if (units.length > 0) out += String.fromCharCode.apply(null, units);
      return out;
    }
  }

  function structuredClone(value) {
    const seen = new Map();
    const clone = (v) => {
      if (v === null || (typeof v !== 'object' && typeof v !== 'function' && typeof v !== 'symbol')) return v;
      if (typeof v === 'function' || typeof v === 'symbol') {
        throw named('DataCloneError', `structuredClone: ${typeof v === 'function' ? 'a function' : 'a symbol'} cannot be cloned`);
      }
      if (seen.has(v)) return seen.get(v);
      let out;
      if (Array.isArray(v)) { out = []; seen.set(v, out); v.forEach((x, i) => { out[i] = clone(x); }); return out; }
      if (v instanceof Date) { out = new Date(v.getTime()); seen.set(v, out); return out; }
      if (v instanceof RegExp) { out = new RegExp(v.source, v.flags); seen.set(v, out); return out; }
      if (v instanceof Map) { out = new Map(); seen.set(v, out); v.forEach((x, k) => out.set(clone(k), clone(x))); return out; }
      if (v instanceof Set) { out = new Set(); seen.set(v, out); v.forEach((x) => out.add(clone(x))); return out; }
      if (v instanceof ArrayBuffer) { out = v.slice(0); seen.set(v, out); return out; }
      if (ArrayBuffer.isView(v)) { out = new v.constructor(v); seen.set(v, out); return out; }
      if (v instanceof Error) { out = new Error(v.message); out.name = v.name; seen.set(v, out); return out; }
      if (v instanceof Promise || v instanceof WeakMap || v instanceof WeakSet) {
        throw named('DataCloneError', `structuredClone: a ${v.constructor.name} cannot be cloned`);
      }
      out = {};
      seen.set(v, out);
      for (const k of Object.keys(v)) out[k] = clone(v[k]);
      return out;
    };
    return clone(value);
  }

  const INTEGER_ARRAYS = [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array,
    Int32Array, Uint32Array, BigInt64Array, BigUint64Array];
  const crypto = Object.freeze({
    getRandomValues(array) {
      if (!INTEGER_ARRAYS.some((T) => array instanceof T)) {
        throw named('TypeMismatchError', 'crypto.getRandomValues: expected an integer typed array');
      }
      if (array.byteLength > 65536) {
        throw named('QuotaExceededError', 'crypto.getRandomValues: at most 65536 bytes at a time');
      }
      const bytes = randomBytes(array.byteLength);
      new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(bytes);
      return array;
    },
    randomUUID() {
      const b = randomBytes(16);
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      const h = b.map((x) => (x + 0x100).toString(16).slice(1));
      return `${h.slice(0, 4).join('')}-${h.slice(4, 6).join('')}-${h.slice(6, 8).join('')}-${h.slice(8, 10).join('')}-${h.slice(10).join('')}`;
    },
  });

  return { atob, btoa, TextEncoder, TextDecoder, structuredClone, crypto };
})
