import { describe, expect, it } from 'vitest';
import { canonicalJson, fingerprintDifferences, parseIdempotencyKey } from '../../src/domain/fingerprint';
import { mergePatch } from '../../src/domain/merge-patch';

describe('canonicalJson', () => {
  it('ignores key order and spacing but not values or array order', () => {
    expect(canonicalJson(JSON.parse('{"b":1,"a":{"y":[1,2],"x":null}}'))).toBe(
      canonicalJson({ a: { x: null, y: [1, 2] }, b: 1 }),
    );
    expect(canonicalJson({ a: [1, 2] })).not.toBe(canonicalJson({ a: [2, 1] }));
    expect(canonicalJson({ a: 1 })).not.toBe(canonicalJson({ a: '1' }));
    expect(canonicalJson(undefined)).toBe('');
    expect(canonicalJson({ a: undefined, b: 1 })).toBe('{"b":1}');
  });
});

describe('fingerprintDifferences', () => {
  it('names what differs', () => {
    const a = { method: 'POST', path: '/v1/projects', bodyHash: 'x' };
    expect(fingerprintDifferences(a, a)).toEqual([]);
    expect(fingerprintDifferences(a, { ...a, bodyHash: 'y' })).toEqual(['body']);
    expect(fingerprintDifferences(a, { method: 'PUT', path: '/v1/projects/p', bodyHash: 'x' })).toEqual([
      'method',
      'path',
    ]);
  });
});

describe('parseIdempotencyKey', () => {
  it.each([
    ['build_123:create:session_abc', 'build_123:create:session_abc'],
    ['"quoted key"', 'quoted key'],
    ['"with \\"escaped\\" quotes"', 'with "escaped" quotes'],
    ['k'.repeat(255), 'k'.repeat(255)],
    ['a b', 'a b'],
  ])('accepts %s', (raw, key) => {
    expect(parseIdempotencyKey(raw)).toEqual({ ok: true, key });
  });

  it.each([
    ['', 'empty'],
    ['""', 'empty'],
    ['k'.repeat(256), 'at most 255'],
    ['tab\there', 'printable'],
    ['café', 'printable'],
    ['"bad " quote"', 'escape'],
  ])('refuses %j (%s)', (raw, rule) => {
    const parsed = parseIdempotencyKey(raw);
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.rule).toContain(rule);
  });
});

describe('mergePatch (RFC 7396)', () => {
  it.each([
    [{ a: 'b' }, { a: 'c' }, { a: 'c' }],
    [{ a: 'b' }, { b: 'c' }, { a: 'b', b: 'c' }],
    [{ a: 'b' }, { a: null }, {}],
    [{ a: 'b', b: 'c' }, { a: null }, { b: 'c' }],
    [{ a: ['b'] }, { a: 'c' }, { a: 'c' }],
    [{ a: { b: 'c' } }, { a: { b: 'd', c: null } }, { a: { b: 'd' } }],
    [{ a: [{ b: 'c' }] }, { a: [1] }, { a: [1] }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
  ])('%j + %j = %j', (target, patch, expected) => {
    expect(mergePatch(target, patch)).toEqual(expected);
  });
});
