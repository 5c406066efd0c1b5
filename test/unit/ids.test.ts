import { describe, expect, it } from 'vitest';
import { randomToken } from '../../src/services/ids';

describe('randomToken', () => {
  it('gives ids of the asked length and encoding, never the same twice across block refills', () => {
    const seen = new Set<string>();
    // 20,000 × 12 bytes is several 16 KiB blocks: ids cut at a block's end and after a refill are checked too.
    for (let i = 0; i < 20_000; i++) {
      const hex = randomToken(12, 'hex');
      expect(hex).toMatch(/^[0-9a-f]{24}$/);
      seen.add(hex);
    }
    expect(seen.size).toBe(20_000);
    expect(randomToken(9, 'base64url')).toMatch(/^[\w-]{12}$/);
  });

  it('serves a request for more bytes than a block holds', () => {
    expect(randomToken(20_000, 'hex')).toHaveLength(40_000);
  });
});
