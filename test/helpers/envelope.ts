import { expect } from 'vitest';

/** The keys of the error envelope (SPEC section 2), besides the optional `data`. */
const ENVELOPE_KEYS = ['correlationId', 'error', 'message', 'requestId', 'timestamp'];

/** An error envelope with exactly its keys, the given code, a message and an ISO timestamp. */
export function expectEnvelopeBody(body: Record<string, unknown>, code: string): void {
  expect(body.error).toBe(code);
  expect(
    Object.keys(body)
      .filter((k) => k !== 'data')
      .sort(),
  ).toEqual(ENVELOPE_KEYS);
  expect(typeof body.message).toBe('string');
  expect(new Date(body.timestamp as string).toISOString()).toBe(body.timestamp);
}

/** The four context headers of every response, the ids matching the envelope's when one is given. */
export function expectContextHeaders(
  headers: Record<string, unknown>,
  body?: Record<string, unknown>,
  version: RegExp | string = '0.0.0-test',
): void {
  expect(headers['x-request-id']).toMatch(/^\S+$/);
  expect(headers['x-correlation-id']).toMatch(/^\S+$/);
  if (body) {
    expect(body.requestId).toBe(headers['x-request-id']);
    expect(body.correlationId).toBe(headers['x-correlation-id']);
  }
  if (typeof version === 'string') expect(headers['x-worker-version']).toBe(version);
  else expect(headers['x-worker-version']).toMatch(version);
  expect(String(headers['x-processing-time-ms'])).toMatch(/^\d+(\.\d+)?$/);
}
