import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hexSignatureEquals, hmacSha256Hex } from '../../src/domain/hmac';

const reference = (secret: string, parts: (string | Buffer)[]) => {
  const mac = createHmac('sha256', secret);
  for (const part of parts) mac.update(part);
  return mac.digest('hex');
};

const part = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 300 }),
  fc.uint8Array({ maxLength: 300 }).map((bytes) => Buffer.from(bytes)),
);

describe('hmacSha256Hex', () => {
  it('equals createHmac for any secret and message (keys longer than a block and non-ASCII included)', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'grapheme', maxLength: 100 }),
        fc.array(part, { maxLength: 4 }),
        (secret, parts) => {
          expect(hmacSha256Hex(secret, parts)).toBe(reference(secret, parts));
        },
      ),
      { numRuns: 500 },
    );
  });

  it('encodes a lone surrogate as createHmac does (U+FFFD)', () => {
    expect(hmacSha256Hex('k', ['a\ud800b'])).toBe(reference('k', ['a\ud800b']));
  });

  it('matches RFC 4231 test case 2', () => {
    expect(hmacSha256Hex('Jefe', ['what do ya want ', 'for nothing?'])).toBe(
      '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
    );
  });

  it('equals createHmac on messages larger than its scratch space, as strings and as bytes', () => {
    for (const size of [16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 100_000]) {
      const text = 'é'.repeat(size / 2) + 'x'.repeat(size % 2);
      expect(hmacSha256Hex('secret', ['ts', text])).toBe(reference('secret', ['ts', text]));
      const bytes = Buffer.alloc(size, 7);
      expect(hmacSha256Hex('secret', ['ts', bytes])).toBe(reference('secret', ['ts', bytes]));
    }
  });

  it('does not let one secret or message leak into the next computation', () => {
    const a = hmacSha256Hex('first-secret', ['a long message '.repeat(20)]);
    hmacSha256Hex('another-secret', ['x']);
    expect(hmacSha256Hex('first-secret', ['a long message '.repeat(20)])).toBe(a);
    expect(hmacSha256Hex('first-secret', ['short'])).toBe(reference('first-secret', ['short']));
  });
});

describe('hexSignatureEquals', () => {
  const sig = reference('k', ['m']);
  it('accepts the signature in either case and refuses any other string', () => {
    expect(hexSignatureEquals(sig, sig)).toBe(true);
    expect(hexSignatureEquals(sig.toUpperCase(), sig)).toBe(true);
    expect(hexSignatureEquals(sig.slice(0, 63), sig)).toBe(false);
    expect(hexSignatureEquals(`${sig}0`, sig)).toBe(false);
    expect(hexSignatureEquals(`${sig.slice(0, 63)}${sig[63] === '0' ? '1' : '0'}`, sig)).toBe(false);
    expect(hexSignatureEquals(`g${sig.slice(1)}`, sig)).toBe(false);
    expect(hexSignatureEquals('', sig)).toBe(false);
  });
});
