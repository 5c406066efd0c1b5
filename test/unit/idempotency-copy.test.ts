import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type CachedRecord, decodeCopy, encodeCopy } from '../../src/http/idempotency-copy';

const record: CachedRecord = {
  key: 'k',
  method: 'POST',
  path: '/v1/projects',
  bodyHash: 'a'.repeat(64),
  statusCode: 201,
  responseBody: '{"id":"prj_1","name":"line\\nbreak"}',
  responseHeaders: { 'content-type': 'application/json; charset=utf-8', etag: '"1"' },
  requestId: 'req_1',
};

describe('the store copy of an idempotency record', () => {
  it('gives back the record and the original body, whatever the bodies hold', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'grapheme', maxLength: 200 }),
        fc.string({ unit: 'grapheme', maxLength: 200 }),
        (raw, response) => {
          const decoded = decodeCopy(encodeCopy({ ...record, responseBody: response }, raw));
          expect(decoded).toEqual({ ...record, responseBody: response, rawBody: raw, rawBodyLength: raw.length });
        },
      ),
    );
    const withBreaks = decodeCopy(encodeCopy(record, '{\n "a": "\\n"\n}'));
    expect(withBreaks.rawBody).toBe('{\n "a": "\\n"\n}');
    expect(withBreaks.responseBody).toBe(record.responseBody);
  });

  it('leaves out an original body it is not given (a retry is then matched by its hash)', () => {
    const decoded = decodeCopy(encodeCopy(record, undefined));
    expect(decoded.rawBody).toBeUndefined();
    expect(decoded.responseBody).toBe(record.responseBody);
  });

  it('reads a copy written as one JSON object, and throws on anything else', () => {
    expect(decodeCopy(JSON.stringify(record))).toEqual(record);
    expect(() => decodeCopy('not a copy\n{')).toThrow();
  });
});
