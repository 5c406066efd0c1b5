import type { FastifyError } from 'fastify';
import { describe, expect, it } from 'vitest';
import { ApiError } from '../../src/domain/errors';
import { clientApiError, frameworkApiError, rawErrorResponse } from '../../src/http/errors';
import { parseResponses } from '../helpers/raw-http';

const parserError = (code: string, reason = 'x', rawPacket?: string) =>
  Object.assign(new Error(reason), {
    code,
    reason,
    rawPacket: rawPacket === undefined ? undefined : Buffer.from(rawPacket),
  });

describe('clientApiError: what Node’s parser refused, as an error code with a status', () => {
  it.each([
    ['ERR_HTTP_REQUEST_TIMEOUT', undefined, 408, 'REQUEST_TIMEOUT'],
    ['HPE_HEADER_OVERFLOW', `GET /${'a'.repeat(100)}`, 414, 'URI_TOO_LONG'],
    ['HPE_HEADER_OVERFLOW', 'GET / HTTP/1.1\r\nX-Big: aaaa', 431, 'HEADERS_TOO_LARGE'],
    ['HPE_HEADER_OVERFLOW', 'aaaaaaaaaaaaaa', 431, 'HEADERS_TOO_LARGE'],
    ['HPE_CHUNK_EXTENSIONS_OVERFLOW', undefined, 413, 'PAYLOAD_TOO_LARGE'],
    ['HPE_INVALID_METHOD', 'FOO / HTTP/1.1\r\n', 501, 'NOT_IMPLEMENTED'],
    ['HPE_INVALID_METHOD', 'hello\r\n', 400, 'BAD_REQUEST'],
    ['HPE_INVALID_CONTENT_LENGTH', undefined, 400, 'BAD_REQUEST'],
    ['HPE_INVALID_HEADER_TOKEN', undefined, 400, 'BAD_REQUEST'],
    ['HPE_SOMETHING_NEW', undefined, 400, 'BAD_REQUEST'],
  ])('%s (%j) → %i %s', (code, packet, status, expected) => {
    const error = clientApiError(parserError(code, 'reason', packet));
    expect(error.status).toBe(status);
    expect(error.code).toBe(expected);
    expect(error.data).toEqual({ parserError: code, reason: 'reason' });
  });

  it('505 only for a version the parser did not understand, not for a missing CR', () => {
    expect(clientApiError(parserError('HPE_INVALID_VERSION', 'Invalid HTTP version')).status).toBe(505);
    expect(clientApiError(parserError('HPE_INVALID_VERSION', 'Expected CRLF after version')).status).toBe(400);
  });
});

describe('frameworkApiError: what Fastify’s router raised', () => {
  const fastifyError = (code: string) => Object.assign(new Error(code), { code }) as FastifyError;
  it('maps a bad URL to 400, an over-long parameter to 414, a failed constraint to a bare 500', () => {
    expect(frameworkApiError(fastifyError('FST_ERR_BAD_URL'), '/v1/builds/%zz?a=1', 1)).toMatchObject({
      status: 400,
      code: 'BAD_REQUEST',
      data: { path: '/v1/builds/%zz' },
    });
    expect(
      frameworkApiError(fastifyError('FST_ERR_MAX_PARAM_LENGTH'), `/v1/builds/${'b'.repeat(2000)}`, 1),
    ).toMatchObject({ status: 414, code: 'URI_TOO_LONG', data: { limit: 1024 } });
    const constraint = frameworkApiError(fastifyError('FST_ERR_ASYNC_CONSTRAINT'), '/', 1);
    expect(constraint).toMatchObject({ status: 500, code: 'INTERNAL_ERROR' });
    expect(constraint.data).toBeUndefined();
  });
});

describe('rawErrorResponse', () => {
  it('is one HTTP/1.1 response: the envelope, its length, the four headers, Connection: close', () => {
    const error = new ApiError('HEADERS_TOO_LARGE', 'Send fewer headers.', { parserError: 'HPE_HEADER_OVERFLOW' });
    const text = rawErrorResponse(error, { requestId: 'req_1', correlationId: 'corr_1' }, '1.2.3', 0.5);
    const [res] = parseResponses(text);
    expect(text.startsWith('HTTP/1.1 431 Request Header Fields Too Large\r\n')).toBe(true);
    expect(res.headers).toMatchObject({
      'content-type': 'application/json; charset=utf-8',
      'x-request-id': 'req_1',
      'x-correlation-id': 'corr_1',
      'x-worker-version': '1.2.3',
      'x-processing-time-ms': '0.50',
      connection: 'close',
    });
    expect(Number(res.headers['content-length'])).toBe(Buffer.byteLength(res.body));
    expect(JSON.parse(res.body)).toMatchObject({
      error: 'HEADERS_TOO_LARGE',
      message: 'Send fewer headers.',
      data: { parserError: 'HPE_HEADER_OVERFLOW' },
      requestId: 'req_1',
      correlationId: 'corr_1',
    });
  });
});
