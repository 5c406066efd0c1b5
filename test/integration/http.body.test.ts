import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signRequest } from '../../src/client/sign';
import { startTestApp, TEST_SECRET, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

describe('ambiguous bodies are refused', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ BUILD_EXECUTOR: 'external' });
  });
  afterAll(() => t.close());

  const grant = (body: string) => signedInject(t.app, { method: 'POST', url: '/v1/credits/grant', body });
  const balance = async (userId: string) =>
    (await signedInject(t.app, { method: 'GET', url: `/v1/credits/balance/${userId}` })).json().balance as number;
  const issues = (res: { json(): { data?: { issues?: unknown[] } } }) => res.json().data?.issues;

  it('a grant giving credits twice: 400 naming body.credits, and the balance unchanged', async () => {
    expect((await grant('{"userId":"dup_1","credits":10,"reason":"seed","source":"test"}')).statusCode).toBe(200);
    const res = await grant('{"userId":"dup_1","credits":-5,"credits":1,"reason":"top-up","source":"test"}');
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toBe('VALIDATION_ERROR');
    expect(res.json().message).toBe('body.credits is given twice; send each key once.');
    expect(issues(res)).toEqual([{ path: 'body.credits', message: 'is given twice' }]);
    expect(await balance('dup_1')).toBe(10);
  });

  it('a grant giving userId twice (once escaped): 400, and neither user credited', async () => {
    for (const body of [
      '{"userId":"dup_a","userId":"dup_b","credits":5,"reason":"r","source":"test"}',
      '{"userId":"dup_a","\\u0075serId":"dup_b","credits":5,"reason":"r","source":"test"}',
    ]) {
      const res = await grant(body);
      expect(res.statusCode).toBe(400);
      expect(issues(res)).toEqual([{ path: 'body.userId', message: 'is given twice' }]);
    }
    expect(await balance('dup_a')).toBe(0);
    expect(await balance('dup_b')).toBe(0);
  });

  it('a duplicate deep in a body is named by its path', async () => {
    const res = await signedInject(t.app, {
      method: 'POST',
      url: '/v1/builds',
      body: '{"projectId":"p","userId":"u","metadata":{"steps":[{"run":"a"},{"run":"b","run":"c"}]}}',
    });
    expect(res.statusCode).toBe(400);
    expect(issues(res)).toEqual([{ path: 'body.metadata.steps.1.run', message: 'is given twice' }]);
  });

  it('an unsigned request with a duplicate is still answered 401 first', async () => {
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/credits/grant',
      headers: { 'content-type': 'application/json' },
      payload: '{"userId":"dup_1","credits":1,"credits":2,"reason":"r","source":"test"}',
    });
    expect(res.statusCode).toBe(401);
  });

  it.each([
    ['a lone continuation byte', Buffer.from([0x80])],
    ['a truncated sequence', Buffer.from([0xe2, 0x82])],
    ['an overlong encoding', Buffer.from([0xc0, 0xaf])],
    ['an encoded surrogate', Buffer.from([0xed, 0xa0, 0x80])],
    ['a byte never in UTF-8', Buffer.from([0xff])],
  ])('invalid UTF-8 (%s) in a string: 400, nothing stored as U+FFFD', async (_what, bad) => {
    const body = Buffer.concat([
      Buffer.from('{"userId":"utf8_user","credits":3,"reason":"x'),
      bad,
      Buffer.from('","source":"test"}'),
    ]);
    const headers = {
      ...signRequest({ secret: TEST_SECRET, method: 'POST', path: '/v1/credits/grant', body }),
      'content-type': 'application/json',
    };
    const res = await t.app.inject({ method: 'POST', url: '/v1/credits/grant', headers, payload: body });
    expect(res.statusCode).toBe(400);
    expect(res.json().message).toBe('The body is not valid UTF-8; send JSON encoded as UTF-8.');
    expect(issues(res)).toEqual([{ path: 'body', message: 'is not valid UTF-8' }]);
    expect(await balance('utf8_user')).toBe(0);
  });

  it('accepts valid UTF-8, repeated values and equal keys in different objects', async () => {
    const res = await grant('{"userId":"dup_ok","credits":2,"reason":"é ✓ 😀","source":"test","plan":"pro"}');
    expect(res.statusCode).toBe(200);
    const build = await signedInject(t.app, {
      method: 'POST',
      url: '/v1/builds',
      body: '{"projectId":"nope","userId":"dup_ok","metadata":{"a":{"x":1},"b":{"x":1},"c":"x"}}',
    });
    expect(build.statusCode).toBe(404); // past the body checks: the project does not exist
  });
});
