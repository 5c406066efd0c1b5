import { Type } from '@sinclair/typebox';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatabaseUnavailableError } from '../../src/db/database';
import { openPostgres } from '../../src/db/postgres';
import { startTestApp, type TestApp } from '../helpers/app';
import { expectContextHeaders, expectEnvelopeBody } from '../helpers/envelope';

const expectEnvelope = expectEnvelopeBody;

describe('HTTP foundation', () => {
  let t: TestApp;
  const unreachable = openPostgres({ url: 'postgres://postgres@127.0.0.1:1/none', schema: 'public' });
  beforeAll(async () => {
    t = await startTestApp({ BODY_LIMIT_BYTES: '2048' }, (app) => {
      // Probe routes for this test only, registered on the real app.
      app.post(
        '/probe/echo',
        {
          schema: {
            body: Type.Object(
              {
                name: Type.String({ minLength: 1 }),
                count: Type.Integer({ minimum: 0 }),
                tags: Type.Array(Type.String()),
              },
              { additionalProperties: false },
            ),
          },
        },
        async (request) => request.body,
      );
      app.get('/probe/crash', async () => {
        throw new Error('relation "internal_table" does not exist');
      });
      app.get('/probe/database', async () => unreachable.query('select 1'));
      app.get('/probe/db-error', async () => {
        throw new DatabaseUnavailableError(new Error('terminating connection due to administrator command'));
      });
    });
  });
  afterAll(async () => {
    await t.close();
    await unreachable.close();
  });

  it('answers /healthz with the context headers', async () => {
    const res = await t.app.inject({ method: 'GET', url: '/healthz' });
    expect(res.statusCode).toBe(200);
    expectContextHeaders(res.headers);
    expect(res.headers['x-correlation-id']).toBe(res.headers['x-request-id']);
    expect(res.json()).toMatchObject({ status: 'ok', version: '0.0.0-test' });
  });

  it('echoes sane request and correlation ids and replaces insane ones', async () => {
    const res = await t.app.inject({
      method: 'GET',
      url: '/healthz',
      headers: { 'x-request-id': 'req_from_nextjs_1', 'x-correlation-id': 'nextjs_1735689600000_a1b2c3d4' },
    });
    expect(res.headers['x-request-id']).toBe('req_from_nextjs_1');
    expect(res.headers['x-correlation-id']).toBe('nextjs_1735689600000_a1b2c3d4');
    const bad = await t.app.inject({
      method: 'GET',
      url: '/healthz',
      headers: { 'x-request-id': 'a b<script>'.repeat(20) },
    });
    expect(bad.headers['x-request-id']).toMatch(/^req_[0-9a-f]{20}$/);
  });

  it('answers unknown routes with a 404 envelope and the headers', async () => {
    const res = await t.app.inject({
      method: 'GET',
      url: '/v1/nothing?x=1',
      headers: { 'x-correlation-id': 'corr_1' },
    });
    expect(res.statusCode).toBe(404);
    expectContextHeaders(res.headers);
    const body = res.json();
    expectEnvelope(body, 'NOT_FOUND');
    expect(body.data).toEqual({ method: 'GET', path: '/v1/nothing' });
    expect(body.requestId).toBe(res.headers['x-request-id']);
    expect(body.correlationId).toBe('corr_1');
  });

  it('lists every bad field of an invalid body', async () => {
    const res = await t.app.inject({
      method: 'POST',
      url: '/probe/echo',
      payload: { name: '', count: '3', tags: [1], extra: true },
    });
    expect(res.statusCode).toBe(400);
    expectContextHeaders(res.headers);
    const body = res.json();
    expectEnvelope(body, 'VALIDATION_ERROR');
    const paths = body.data.issues.map((i: { path: string }) => i.path).sort();
    expect(paths).toEqual(['body.count', 'body.extra', 'body.name', 'body.tags.0']);
  });

  it.each([
    ['malformed JSON', '{"name":', 'application/json', 400, 'VALIDATION_ERROR'],
    ['an array nested 100 deep', `${'['.repeat(100)}${']'.repeat(100)}`, 'application/json', 400, 'VALIDATION_ERROR'],
    [
      'a prototype key',
      '{"__proto__":{"admin":true},"name":"x","count":1,"tags":[]}',
      'application/json',
      400,
      'VALIDATION_ERROR',
    ],
    [
      'a string holding U+0000',
      '{"name":"a\\u0000b","count":1,"tags":[]}',
      'application/json',
      400,
      'VALIDATION_ERROR',
    ],
    ['an unpaired surrogate', '{"name":"x","count":1,"tags":["\\ud800"]}', 'application/json', 400, 'VALIDATION_ERROR'],
    [
      'a key holding U+0000',
      '{"name":"x","count":1,"tags":[],"a\\u0000":1}',
      'application/json',
      400,
      'VALIDATION_ERROR',
    ],
    [
      'a prototype key spelled with escapes',
      '{"__pro\\u0074o__":{"admin":true},"name":"x","count":1,"tags":[]}',
      'application/json',
      400,
      'VALIDATION_ERROR',
    ],
    ['a text body', 'name=x', 'text/plain', 415, 'UNSUPPORTED_MEDIA_TYPE'],
    ['a form body', 'name=x', 'application/x-www-form-urlencoded', 415, 'UNSUPPORTED_MEDIA_TYPE'],
    [
      'an oversized body',
      JSON.stringify({ name: 'x'.repeat(4096), count: 1, tags: [] }),
      'application/json',
      413,
      'PAYLOAD_TOO_LARGE',
    ],
  ])('refuses %s with the envelope', async (_name, payload, contentType, status, code) => {
    const res = await t.app.inject({
      method: 'POST',
      url: '/probe/echo',
      payload,
      headers: { 'content-type': contentType },
    });
    expect(res.statusCode).toBe(status);
    expectContextHeaders(res.headers);
    expectEnvelope(res.json(), code);
  });

  it('refuses a prototype key however it is spelled, before validation sees it', async () => {
    for (const payload of ['{"__proto__":{"a":1}}', '{"x":{"__pro\\u0074o__":{"a":1}}}', '{"\\u0063onstructor":1}']) {
      const res = await t.app.inject({
        method: 'POST',
        url: '/probe/echo',
        payload,
        headers: { 'content-type': 'application/json' },
      });
      expect(res.statusCode).toBe(400);
      expect(res.json().message).toContain('keys named __proto__, constructor or prototype are not allowed');
    }
  });

  it('names the string PostgreSQL could not store, and keeps escaped backslashes and surrogate pairs as data', async () => {
    const refused = await t.app.inject({
      method: 'POST',
      url: '/probe/echo',
      payload: '{"name":"x","count":1,"tags":["ok","\\udc00"]}',
      headers: { 'content-type': 'application/json' },
    });
    expect(refused.json().data.issues).toEqual([
      { path: 'body.tags.1', message: 'must not contain U+0000 or an unpaired surrogate' },
    ]);
    const kept = await t.app.inject({
      method: 'POST',
      url: '/probe/echo',
      payload: '{"name":"\\\\u0000 \\ud83d\\ude00","count":1,"tags":[]}',
      headers: { 'content-type': 'application/json' },
    });
    expect(kept.statusCode).toBe(200);
  });

  it('accepts a valid body, control characters and SQL fragments included, as data', async () => {
    const payload = { name: "x'); drop table builds; --\u0001<script>", count: 2, tags: ['a'] };
    const res = await t.app.inject({ method: 'POST', url: '/probe/echo', payload });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual(payload);
  });

  it('answers unexpected errors with a 500 that hides internals', async () => {
    const res = await t.app.inject({ method: 'GET', url: '/probe/crash' });
    expect(res.statusCode).toBe(500);
    expectContextHeaders(res.headers);
    expectEnvelope(res.json(), 'INTERNAL_ERROR');
    expect(res.body).not.toContain('internal_table');
    expect(res.body).not.toContain('stack');
  });

  it('answers 503 with Retry-After when the database is unreachable', async () => {
    for (const url of ['/probe/database', '/probe/db-error']) {
      const res = await t.app.inject({ method: 'GET', url });
      expect(res.statusCode).toBe(503);
      expect(res.headers['retry-after']).toBe('5');
      expectContextHeaders(res.headers);
      const body = res.json();
      expectEnvelope(body, 'SERVICE_UNAVAILABLE');
      expect(body.data.dependency).toBe('database');
    }
  });

  it('reports ready when the database and the store answer', async () => {
    const res = await t.app.inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(200);
    // No process has a line in this test's database: the app alone (main.ts registers one) is not counted.
    expect(res.json()).toEqual({
      status: 'ready',
      checks: { database: 'ok', store: 'ok' },
      instances: { live: 0, dead: 0 },
    });
  });

  it('serves the OpenAPI document and Swagger UI', async () => {
    const doc = await t.app.inject({ method: 'GET', url: '/openapi.json' });
    expect(doc.json().openapi).toBe('3.1.0');
    expect(Object.keys(doc.json().paths)).toEqual(expect.arrayContaining(['/healthz', '/readyz']));
    const ui = await t.app.inject({ method: 'GET', url: '/docs/' });
    expect(ui.statusCode).toBe(200);
    expect(ui.body).toContain('swagger');
  });
});
