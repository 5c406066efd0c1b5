import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { findDuplicateKey } from '../../src/http/body';

/** The reference: a plain recursive-descent walk of the JSON text, first duplicate in text order. */
function reference(text: string): string | undefined {
  let i = 0;
  const ws = () => {
    while (/\s/.test(text[i] ?? '')) i++;
  };
  const str = (): string => {
    const start = i;
    i++;
    while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
    return JSON.parse(text.slice(start, i));
  };
  const value = (path: string): string | undefined => {
    ws();
    if (text[i] === '{') {
      i++;
      const seen = new Set<string>();
      ws();
      if (text[i] === '}') {
        i++;
        return undefined;
      }
      for (;;) {
        ws();
        const key = str();
        if (seen.has(key)) return `${path}.${key}`;
        seen.add(key);
        ws();
        i++; // :
        const found = value(`${path}.${key}`);
        if (found) return found;
        ws();
        if (text[i++] === '}') return undefined;
      }
    }
    if (text[i] === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        return undefined;
      }
      for (let index = 0; ; index++) {
        const found = value(`${path}.${index}`);
        if (found) return found;
        ws();
        if (text[i++] === ']') return undefined;
      }
    }
    if (text[i] === '"') {
      str();
      return undefined;
    }
    while (i < text.length && !/[,\]}\s]/.test(text[i])) i++;
    return undefined;
  };
  return value('body');
}

/** A key written as JSON, some of its characters as \u escapes. */
const escapedKey = (key: string, mask: number) =>
  `"${[...JSON.stringify(key).slice(1, -1)]
    .map((ch, n) =>
      (mask >> (n % 16)) & 1 && /\w/.test(ch) ? `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}` : ch,
    )
    .join('')}"`;

const key = fc.oneof(
  fc.constantFrom('a', 'b', 'credits', 'a"b', 'a\\b', 'é', '\u2028', ''),
  fc.integer({ min: 0, max: 15 }).map((n) => `k${n}`),
);

/** JSON text of objects that may repeat keys (written as entries), keys sometimes escaped, with random spacing. */
const jsonText = fc.letrec<{ value: string }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc
      .oneof(fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean(), fc.constant(null))
      .map((v) => JSON.stringify(v)),
    fc.string({ unit: 'binary' }).map((v) => JSON.stringify(v)),
    fc.array(tie('value'), { maxLength: 4 }).map((items) => `[ ${items.join(' ,\n')} ]`),
    fc
      .array(fc.tuple(key, fc.nat(), tie('value')), { maxLength: 20 })
      .map((entries) => `{${entries.map(([k, mask, v]) => ` ${escapedKey(k, mask)} : ${v}`).join(',')}}`),
    // Many distinct keys (past the scanner's small-object limit), sometimes one of them again at the end.
    fc
      .tuple(
        fc.uniqueArray(fc.tuple(key, fc.nat(), tie('value')), { selector: (e) => e[0], maxLength: 20, size: 'max' }),
        fc.option(fc.nat()),
      )
      .map(([entries, again]) => {
        const all = again === null || entries.length === 0 ? entries : [...entries, entries[again % entries.length]];
        return `{${all.map(([k, mask, v], n) => `${escapedKey(k, mask + n)}:${v}`).join(',')}}`;
      }),
  ),
})).value;

describe('findDuplicateKey', () => {
  it('names the first key given twice, with its path', () => {
    expect(findDuplicateKey('{"credits":-5,"credits":1}')).toBe('body.credits');
    expect(findDuplicateKey('{"userId":"a","userId":"b"}')).toBe('body.userId');
    expect(findDuplicateKey('{"a":{"b":[1,{"c":1,"d":2,"c":3}]}}')).toBe('body.a.b.1.c');
    expect(findDuplicateKey('[{"x":1},{"x":1,"y":2,"x":3}]')).toBe('body.1.x');
    expect(findDuplicateKey('{"a":1,"\\u0061":2}')).toBe('body.a');
    expect(findDuplicateKey('{"\\u0061":1,"a":2}')).toBe('body.a');
    expect(findDuplicateKey('{"a\\"b":1,"a\\u0022b":2}')).toBe('body.a"b');
    expect(findDuplicateKey('{"\\\\":1,"\\u005c":2}')).toBe('body.\\');
    expect(findDuplicateKey('{ "a" : 1 ,\n "a" : 2 }')).toBe('body.a');
  });

  it('finds nothing when every object has distinct keys', () => {
    for (const text of [
      '{}',
      '[]',
      '"x"',
      '12',
      'null',
      '{"a":1}',
      '{"a":"a","b":"a"}',
      '{"a":{"a":{"a":1}},"b":{"a":2}}',
      '[{"a":1},{"a":2}]',
      '{"a":"\\"a\\":","b":"{\\"a\\":1,\\"a\\":2}"}',
      '{"ab":1,"a\\u0062c":2,"a":3}',
      '{"\\\\":1,"\\"":2}',
    ]) {
      expect(findDuplicateKey(text), text).toBeUndefined();
    }
  });

  it('switches to a set past eight keys and still finds repeats, escaped or not', () => {
    const keys = Array.from({ length: 40 }, (_, n) => `"k${n}":${n}`);
    expect(findDuplicateKey(`{${keys.join(',')}}`)).toBeUndefined();
    expect(findDuplicateKey(`{${keys.join(',')},"k3":0}`)).toBe('body.k3');
    expect(findDuplicateKey(`{${keys.join(',')},"\\u006b39":0}`)).toBe('body.k39');
    expect(findDuplicateKey(`{"o":{${keys.join(',')}},"p":{${keys.join(',')}}}`)).toBeUndefined();
    // A nested object's keys do not clash with its parent's, whatever their number.
    expect(findDuplicateKey(`{${keys.slice(0, 9).join(',')},"n":{${keys.slice(0, 9).join(',')}},"k8":1}`)).toBe(
      'body.k8',
    );
  });

  it('is tested on texts with duplicates, large objects and nesting', () => {
    const texts = fc.sample(jsonText, { numRuns: 1000, seed: 13 });
    const widest = (v: unknown): number =>
      v && typeof v === 'object'
        ? Math.max(Array.isArray(v) ? 0 : Object.keys(v).length, ...Object.values(v).map(widest))
        : 0;
    expect(texts.filter((t) => reference(t) !== undefined).length).toBeGreaterThan(100);
    expect(texts.filter((t) => widest(JSON.parse(t)) > 8).length).toBeGreaterThan(50);
    expect(texts.filter((t) => /[[{][^\]}]*[[{][^\]}]*[[{]/.test(t)).length).toBeGreaterThan(50);
  });

  it('agrees with a plain recursive walk on any JSON text', () => {
    fc.assert(
      fc.property(jsonText, (text) => {
        JSON.parse(text); // the generator writes valid JSON only
        expect(findDuplicateKey(text)).toBe(reference(text));
      }),
      { numRuns: 2000 },
    );
  });
});
