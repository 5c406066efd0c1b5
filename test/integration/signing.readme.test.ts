import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, TEST_SECRET, type TestApp } from '../helpers/app';
import { signatureVectors } from '../helpers/vectors';

/**
 * Signing as a newcomer would: only from the rules as the README states them, with no code of the project's (no
 * canonicalPath, no signRequest, no URLSearchParams). Every README example and every shipped vector must come out as
 * they say, and Kiln must accept each request so signed; when it does not, its 401 diagnosis names the part that
 * differs.
 */

const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const VECTORS = signatureVectors;

function between(marker: string): string {
  const start = README.indexOf(`<!-- ${marker} -->`);
  const end = README.indexOf(`<!-- /${marker} -->`);
  if (start < 0 || end < start) throw new Error(`README has no ${marker} block`);
  return README.slice(start, end);
}

/** The README's table of examples: [sent, PATH signed]. */
const EXAMPLES: [string, string][] = [
  ...between('readme:signing-examples').matchAll(/^\| `([^`]+)` \| `([^`]+)` \|$/gm),
].map((m) => [m[1], m[2]]);

// Step 1: `+` is a space, then %XX sequences decode as UTF-8; an invalid one stays as is.
function decodeComponent(text: string): string {
  const spaced = text.replaceAll('+', ' ');
  const bytes: number[] = [];
  for (let i = 0; i < spaced.length; i++) {
    const hex = spaced.slice(i + 1, i + 3);
    if (spaced[i] === '%' && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else bytes.push(...Buffer.from(spaced[i], 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}

// Step 3: letters, digits and * - . _ stay; a space is +; every other UTF-8 byte is %XX in upper-case hex.
function encodeComponent(text: string): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const char = String.fromCharCode(byte);
    if (/[A-Za-z0-9*\-._]/.test(char)) out += char;
    else if (byte === 0x20) out += '+';
    else out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** PATH as the README's four steps define it. */
function readmePath(sent: string): string {
  const mark = sent.indexOf('?');
  if (mark < 0) return sent;
  const pairs = sent
    .slice(mark + 1)
    .split('&')
    .filter((piece) => piece !== '')
    .map((piece) => {
      const eq = piece.indexOf('=');
      return eq < 0
        ? [decodeComponent(piece), '']
        : [decodeComponent(piece.slice(0, eq)), decodeComponent(piece.slice(eq + 1))];
    });
  // Step 2: localeCompare on names; Array.prototype.sort is stable, so equal names keep their order.
  pairs.sort(([a], [b]) => a.localeCompare(b, 'en'));
  const query = pairs.map(([name, value]) => `${encodeComponent(name)}=${encodeComponent(value)}`).join('&');
  return query ? `${sent.slice(0, mark)}?${query}` : sent.slice(0, mark);
}

const hmac = (secret: string, text: string) => createHmac('sha256', secret).update(text, 'utf8').digest('hex');
const stringToSign = (method: string, path: string, timestamp: string, nonce: string, body: string) =>
  `${method}\n${readmePath(path)}\n${timestamp}\n${nonce}\n${body}`;

describe('signing from the README alone', () => {
  it('the README has its examples and a worked case', () => {
    expect(EXAMPLES.length).toBeGreaterThanOrEqual(8);
    expect(EXAMPLES.some(([sent]) => sent.includes(','))).toBe(true);
  });

  it.each(EXAMPLES)('the README example %s is signed as %s', (sent, signed) => {
    expect(readmePath(sent)).toBe(signed);
  });

  it('the worked example comes out as the README says', () => {
    const block = between('readme:signing-worked');
    const intro = README.slice(README.indexOf('A worked example (secret'));
    const [, secret, timestamp, nonce] = /secret `([^`]+)`, timestamp `(\d+)`, nonce `([^`]+)`/.exec(intro) ?? [];
    const [, method, path] = /`([A-Z]+) (\/[^`]+)` signs/.exec(block) ?? [];
    const [, shown] = /signs `([^`]+)`/.exec(block) ?? [];
    const [, hex] = /`x-sheen-sig-v2` is `([0-9a-f]{64})`/.exec(block) ?? [];
    const text = stringToSign(method, path, timestamp, nonce, '');
    expect(text).toBe(shown.replaceAll('\\n', '\n'));
    expect(hmac(secret, text)).toBe(hex);
  });

  it.each(VECTORS.map((v) => [v.name, v] as const))('the shipped vector "%s" matches', (_name, v) => {
    expect(readmePath(v.path)).toBe(v.signedPath);
    expect(hmac(v.secret, stringToSign(v.method, v.path, v.timestamp, v.nonce, v.body))).toBe(v.v2);
    expect(hmac(v.secret, v.timestamp + v.body)).toBe(v.v1);
  });

  describe('against Kiln', () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startTestApp();
    });
    afterAll(() => t.close());

    /** Send a request signed by the README's rules; on a 401, say which part of the string to sign differs. */
    async function send(method: string, path: string, body: string) {
      const timestamp = String(Math.floor(Date.now() / 1000));
      const nonce = randomBytes(12).toString('hex');
      const res = await t.app.inject({
        method: method as 'GET',
        url: path,
        headers: {
          'x-sheen-timestamp': timestamp,
          'x-sheen-nonce': nonce,
          'x-sheen-sig-v2': hmac(TEST_SECRET, stringToSign(method, path, timestamp, nonce, body)),
          ...(body ? { 'content-type': 'application/json' } : {}),
        },
        ...(body ? { payload: body } : {}),
      });
      if (res.statusCode !== 401) return res.statusCode;
      const signed = res.json().data?.signed as Record<string, unknown> | undefined;
      const ours = {
        method,
        path: readmePath(path),
        timestamp,
        nonce,
        bodyLength: Buffer.byteLength(body),
        bodySha256: createHash('sha256').update(body).digest('hex'),
      };
      const differs = Object.entries(ours).filter(([part, value]) => signed?.[part] !== value);
      throw new Error(
        `401 for ${method} ${path}: ${differs.map(([part, value]) => `${part}: ours ${JSON.stringify(value)}, Kiln's ${JSON.stringify(signed?.[part])}`).join('; ') || res.body}`,
      );
    }

    it.each(EXAMPLES)('accepts a GET of %s signed by the README', async (sent) => {
      // Not 401: the signature verified (the route itself may answer 200, 400 or 404 to the made-up query).
      expect(await send('GET', sent, '')).not.toBe(401);
    });

    it.each(VECTORS.map((v) => [v.name, v] as const))('accepts the vector "%s" signed by the README', async (_n, v) => {
      expect(await send(v.method, v.path, v.body)).not.toBe(401);
    });

    it('the diagnosis names the part a client got wrong (here: the query not re-encoded)', async () => {
      const path = '/v1/projects/batch?ids=a,b';
      const timestamp = String(Math.floor(Date.now() / 1000));
      const nonce = randomBytes(12).toString('hex');
      // The common mistake: signing the query as typed.
      const wrong = hmac(TEST_SECRET, `GET\n${path}\n${timestamp}\n${nonce}\n`);
      const res = await t.app.inject({
        method: 'GET',
        url: path,
        headers: { 'x-sheen-timestamp': timestamp, 'x-sheen-nonce': nonce, 'x-sheen-sig-v2': wrong },
      });
      expect(res.statusCode).toBe(401);
      const { signed } = res.json().data;
      expect(signed.path).toBe('/v1/projects/batch?ids=a%2Cb');
      expect(signed.path).not.toBe(path);
      expect({ ...signed, path: undefined, v2StringToSignWithoutBody: undefined }).toMatchObject({
        method: 'GET',
        timestamp,
        nonce,
        bodyLength: 0,
      });
    });
  });
});
