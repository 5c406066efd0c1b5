import { readFileSync } from 'node:fs';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { signatureVectors } from '../helpers/vectors';

/** static/docs-signing.js, the /docs page's signer, run outside a browser against the shared signature vectors. */
type Signing = {
  canonicalPath(path: string): string;
  sign(o: object): Promise<Record<string, string>>;
};

function load(): Signing {
  const source = readFileSync(new URL('../../static/docs-signing.js', import.meta.url), 'utf8').replaceAll(
    '__KILN_PREFIX__',
    'x-sheen',
  );
  const window: { kilnDocsSigning?: Signing } = {};
  runInNewContext(source, { window, crypto: globalThis.crypto, TextEncoder, URL, URLSearchParams });
  if (!window.kilnDocsSigning) throw new Error('docs-signing.js did not define window.kilnDocsSigning');
  return window.kilnDocsSigning;
}

describe('the /docs page signer', () => {
  const signing = load();

  it.each(signatureVectors.map((v) => [v.name, v] as const))('matches the vector %s', async (_name, v) => {
    expect(signing.canonicalPath(v.path)).toBe(v.signedPath);
    const headers = await signing.sign({
      key: v.secret,
      method: v.method,
      path: v.path,
      body: v.body,
      timestamp: v.timestamp,
      nonce: v.nonce,
    });
    expect(headers).toEqual({
      'x-sheen-timestamp': v.timestamp,
      'x-sheen-nonce': v.nonce,
      'x-sheen-sig-v2': v.v2,
      'x-sheen-signature': v.v1,
    });
  });
});
