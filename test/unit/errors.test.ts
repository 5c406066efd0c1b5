import type { FastifyError } from 'fastify';
import { describe, expect, it } from 'vitest';
import { DatabaseUnavailableError, isUnavailable } from '../../src/db/database';
import { ApiError, ERROR_STATUS, toApiError } from '../../src/http/errors';
import { StoreUnavailableError } from '../../src/store/store';

function fastifyError(code: string, statusCode = 400): FastifyError {
  return Object.assign(new Error(code), { code, statusCode, name: 'FastifyError' }) as FastifyError;
}

describe('toApiError', () => {
  it('keeps ApiErrors as they are', () => {
    const error = new ApiError('VERSION_CONFLICT', 'stale', { version: 3 });
    expect(toApiError(error, 1)).toBe(error);
    expect(error.status).toBe(409);
  });

  it('maps body problems to 413, 415 and 400', () => {
    expect(toApiError(fastifyError('FST_ERR_CTP_BODY_TOO_LARGE', 413), 1024)).toMatchObject({
      code: 'PAYLOAD_TOO_LARGE',
      status: 413,
      data: { limit: 1024 },
    });
    expect(toApiError(fastifyError('FST_ERR_CTP_INVALID_MEDIA_TYPE', 415), 1)).toMatchObject({
      code: 'UNSUPPORTED_MEDIA_TYPE',
      status: 415,
    });
    expect(toApiError(fastifyError('FST_ERR_CTP_EMPTY_JSON_BODY'), 1)).toMatchObject({ code: 'VALIDATION_ERROR' });
  });

  it('maps unavailable dependencies to 503 with Retry-After', () => {
    const db = toApiError(new DatabaseUnavailableError(new Error('ECONNREFUSED')), 1);
    expect(db).toMatchObject({ code: 'SERVICE_UNAVAILABLE', status: 503, data: { dependency: 'database' } });
    expect(db.headers?.['retry-after']).toBe(5);
    expect(toApiError(new StoreUnavailableError(new Error('x')), 1).data).toMatchObject({ dependency: 'store' });
  });

  it('hides the internals of unexpected errors', () => {
    const error = toApiError(new Error('relation "secret_table" does not exist at select * from secret_table'), 1);
    expect(error.code).toBe('INTERNAL_ERROR');
    expect(error.status).toBe(500);
    expect(error.message).not.toContain('secret_table');
    expect(error.data).toBeUndefined();
  });

  it('lists every validation issue with its path', () => {
    const error = Object.assign(new Error('bad'), {
      validationContext: 'body',
      validation: [
        { keyword: 'type', instancePath: '/name', params: { type: 'string' }, message: 'must be string' },
        { keyword: 'required', instancePath: '', params: { missingProperty: 'ownerId' }, message: 'x' },
        { keyword: 'additionalProperties', instancePath: '', params: { additionalProperty: 'evil' }, message: 'x' },
      ],
    });
    expect(toApiError(error, 1).data).toEqual({
      issues: [
        { path: 'body.name', message: 'must be a string' },
        { path: 'body.ownerId', message: 'is required' },
        { path: 'body.evil', message: 'is not an allowed field' },
      ],
    });
  });

  it('has a status for every code', () => {
    for (const [code, status] of Object.entries(ERROR_STATUS)) {
      expect(new ApiError(code as keyof typeof ERROR_STATUS, 'm').status).toBe(status);
    }
  });
});

describe('isUnavailable', () => {
  it('recognises connection failures and not statement errors', () => {
    expect(isUnavailable(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(isUnavailable(Object.assign(new Error('terminating connection'), { code: '57P01' }))).toBe(true);
    expect(
      isUnavailable(Object.assign(new Error('canceling statement due to statement timeout'), { code: '57014' })),
    ).toBe(true);
    expect(isUnavailable(new Error('Connection terminated unexpectedly'))).toBe(true);
    expect(isUnavailable(Object.assign(new Error('duplicate key'), { code: '23505' }))).toBe(false);
    expect(isUnavailable('nope')).toBe(false);
  });
});
