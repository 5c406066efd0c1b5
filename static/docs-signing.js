// Signs the /docs page's "Try it out" requests in the browser. The HMAC secret pasted in the box at the top stays in
// this page's memory: it is never sent, stored or logged, and a reload forgets it. Each /v1 request gets a fresh
// timestamp and nonce and both signatures (v2 over METHOD, canonical PATH, timestamp, nonce and body; v1 over
// timestamp and body), computed with Web Crypto, which browsers offer on https:// pages and on localhost.
// The server replaces __KILN_PREFIX__ with the configured header prefix when it serves this file.
(() => {
  const prefix = '__KILN_PREFIX__';
  let secret = '';

  /** The PATH that v2 signs: query pairs sorted by name ('en' collation, stable), re-encoded, a bare ? dropped. */
  function canonicalPath(pathWithQuery) {
    const mark = pathWithQuery.indexOf('?');
    if (mark === -1) return pathWithQuery;
    const params = new URLSearchParams(pathWithQuery.slice(mark + 1));
    const sorted = new URLSearchParams([...params.entries()].sort(([a], [b]) => a.localeCompare(b, 'en')));
    const query = sorted.toString();
    return query ? `${pathWithQuery.slice(0, mark)}?${query}` : pathWithQuery.slice(0, mark);
  }

  async function hmacHex(key, message) {
    const encoder = new TextEncoder();
    const cryptoKey = await crypto.subtle.importKey(
      'raw',
      encoder.encode(key),
      { name: 'HMAC', hash: 'SHA-256' },
      false,
      ['sign'],
    );
    const mac = new Uint8Array(await crypto.subtle.sign('HMAC', cryptoKey, encoder.encode(message)));
    return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** The signature headers for one request (path with its query as sent, body as sent). */
  async function sign({ key, method, path, body, timestamp, nonce }) {
    const ts = String(timestamp ?? Math.floor(Date.now() / 1000));
    const n =
      nonce ?? Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
    const v2 = await hmacHex(key, `${method.toUpperCase()}\n${canonicalPath(path)}\n${ts}\n${n}\n${body}`);
    const v1 = await hmacHex(key, `${ts}${body}`);
    return {
      [`${prefix}-timestamp`]: ts,
      [`${prefix}-nonce`]: n,
      [`${prefix}-sig-v2`]: v2,
      [`${prefix}-signature`]: v1,
    };
  }

  /** Swagger UI's requestInterceptor: sign /v1 requests when a secret was given; leave everything else alone. */
  async function signRequest(request) {
    const url = new URL(request.url, window.location.href);
    if (!secret || !url.pathname.startsWith('/v1/') || url.origin !== window.location.origin) return request;
    if (request.body !== undefined && request.body !== null && typeof request.body !== 'string') {
      request.body = JSON.stringify(request.body);
    }
    const body = typeof request.body === 'string' ? request.body : '';
    const headers = await sign({ key: secret, method: request.method ?? 'GET', path: url.pathname + url.search, body });
    request.headers = { ...request.headers, ...headers };
    return request;
  }

  window.kilnDocsSigning = { canonicalPath, sign, signRequest };

  if (typeof document === 'undefined') return;
  function mount() {
    const bar = document.createElement('div');
    bar.id = 'kiln-signing';
    bar.style.cssText =
      'position:sticky;top:0;z-index:10;display:flex;gap:.6em;align-items:center;flex-wrap:wrap;padding:.6em 1.2em;' +
      'background:#1b1b1b;color:#eee;font:14px sans-serif';
    const label = document.createElement('label');
    label.textContent = 'HMAC secret';
    label.htmlFor = 'kiln-secret';
    const input = document.createElement('input');
    input.id = 'kiln-secret';
    input.type = 'password';
    input.autocomplete = 'off';
    input.placeholder = 'paste HMAC_SECRET (or .kiln/hmac-secret) to sign "Try it out"';
    input.style.cssText = 'flex:1;min-width:18em;padding:.3em';
    const status = document.createElement('span');
    status.id = 'kiln-signing-status';
    const show = () => {
      if (!window.crypto?.subtle) {
        status.textContent = 'This page cannot sign: Web Crypto needs https:// or localhost. Use `kiln sign` instead.';
      } else {
        status.textContent = secret
          ? 'Signing /v1 requests in this page; the secret is never sent.'
          : 'Not signing: /v1 requests will get 401.';
      }
    };
    input.addEventListener('input', () => {
      // Without surrounding spaces, as Kiln reads its secret file (a password field drops line breaks itself).
      secret = input.value.trim();
      show();
    });
    bar.append(label, input, status);
    document.body.prepend(bar);
    show();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', mount);
  else mount();
})();
