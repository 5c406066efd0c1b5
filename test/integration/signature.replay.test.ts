import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signRequest } from '../../src/client/sign';
import { startTestApp, TEST_SECRET, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

/**
 * v1 signs only `timestamp + body`, so its nonce is not signed: a captured v1 request sent again with a fresh nonce
 * must still count as the same request (SPEC section 3). Each replay below reuses the captured bytes exactly (same
 * body text, timestamp and signature headers); only the nonce header changes, as an attacker would change it.
 */
describe('a captured v1-signed request is accepted once, whatever nonce it carries', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ RATE_LIMIT_USER_PER_MIN: '0', RATE_LIMIT_IP_PER_MIN: '0' });
  });
  afterAll(() => t.close());

  const withNonce = (headers: Record<string, string>, nonce: string) => ({ ...headers, 'x-sheen-nonce': nonce });
  const balance = async (userId: string) =>
    (await signedInject(t.app, { method: 'GET', url: `/v1/credits/balance/${userId}` })).json().balance;

  it('a v1 grant sent three times with fresh nonces grants once', async () => {
    const body = JSON.stringify({ userId: 'u_v1_replay', credits: 100, reason: 'top-up', source: 'purchase' });
    const captured = {
      ...signRequest({ secret: TEST_SECRET, method: 'POST', path: '/v1/credits/grant', body, versions: ['v1'] }),
      'content-type': 'application/json',
    };
    const send = (nonce: string) =>
      t.app.inject({ method: 'POST', url: '/v1/credits/grant', headers: withNonce(captured, nonce), payload: body });
    const first = await send('nonce-original-1');
    expect(first.statusCode).toBe(200);
    for (const nonce of ['nonce-attacker-2', 'nonce-attacker-3']) {
      const replay = await send(nonce);
      expect(replay.statusCode).toBe(409);
      expect(replay.json()).toMatchObject({ error: 'REPLAYED_NONCE', data: { header: 'x-sheen-signature' } });
      expect(replay.json().message).toMatch(/v1 signs only the timestamp and body/);
    }
    expect(await balance('u_v1_replay')).toBe(100);
  });

  it('a captured v1 GET /v1/ping signature does not authorise another empty-body request', async () => {
    await signedInject(t.app, {
      method: 'POST',
      url: '/v1/credits/grant',
      body: { userId: 'u_v1_cancel', credits: 50, reason: 'seed', source: 'test' },
    });
    await signedInject(t.app, {
      method: 'POST',
      url: '/v1/projects',
      body: { id: 'prj_v1_cancel', ownerId: 'o', name: 'n' },
    });
    const build = (
      await signedInject(t.app, {
        method: 'POST',
        url: '/v1/builds',
        body: { projectId: 'prj_v1_cancel', userId: 'u_v1_cancel', estimatedCredits: 10 },
      })
    ).json();
    // A second long past (still within the tolerance), so no other empty-body request of this file shares it.
    const timestamp = Math.floor(Date.now() / 1000) - 60;
    const captured = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/ping', versions: ['v1'], timestamp });
    expect((await t.app.inject({ method: 'GET', url: '/v1/ping', headers: captured })).statusCode).toBe(200);
    const forged = await t.app.inject({
      method: 'POST',
      url: `/v1/builds/${build.id}/cancel`,
      headers: withNonce(captured, 'nonce-forged-cancel'),
    });
    expect(forged.statusCode).toBe(409);
    expect(forged.json().error).toBe('REPLAYED_NONCE');
    const after = await signedInject(t.app, { method: 'GET', url: `/v1/builds/${build.id}` });
    expect(after.json()).toMatchObject({ state: 'queued' });
  });

  it('a request signed with both versions cannot be replayed stripped of its v2 signature', async () => {
    const body = JSON.stringify({ userId: 'u_dual_strip', credits: 30, reason: 'top-up', source: 'purchase' });
    const captured: Record<string, string> = {
      ...signRequest({ secret: TEST_SECRET, method: 'POST', path: '/v1/credits/grant', body }),
      'content-type': 'application/json',
    };
    const first = await t.app.inject({ method: 'POST', url: '/v1/credits/grant', headers: captured, payload: body });
    expect(first.statusCode).toBe(200);
    const v1Only = { ...captured };
    delete v1Only['x-sheen-sig-v2'];
    const replay = await t.app.inject({
      method: 'POST',
      url: '/v1/credits/grant',
      headers: withNonce(v1Only, 'nonce-stripped-v2'),
      payload: body,
    });
    expect(replay.statusCode).toBe(409);
    expect(await balance('u_dual_strip')).toBe(30);
  });

  it('the copy stripped of v2 and sent first makes the original refused: accepted once, whichever comes first', async () => {
    const body = JSON.stringify({ userId: 'u_dual_first', credits: 30, reason: 'top-up', source: 'purchase' });
    const original: Record<string, string> = {
      ...signRequest({ secret: TEST_SECRET, method: 'POST', path: '/v1/credits/grant', body }),
      'content-type': 'application/json',
    };
    const stripped: Record<string, string> = withNonce({ ...original }, 'nonce-stripped-first');
    delete stripped['x-sheen-sig-v2'];
    const copy = await t.app.inject({ method: 'POST', url: '/v1/credits/grant', headers: stripped, payload: body });
    expect(copy.statusCode).toBe(200);
    const late = await t.app.inject({ method: 'POST', url: '/v1/credits/grant', headers: original, payload: body });
    expect(late.statusCode).toBe(409);
    expect(await balance('u_dual_first')).toBe(30);
  });

  it('two different requests signed with both versions in one second share a v1 signature and both pass', async () => {
    const timestamp = Math.floor(Date.now() / 1000);
    // Empty bodies and one timestamp: the v1 signatures are equal, the nonces (signed by v2) differ.
    const a = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/ping', timestamp });
    const b = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/credits/balance/u_dual_pair', timestamp });
    expect(a['x-sheen-signature']).toBe(b['x-sheen-signature']);
    expect((await t.app.inject({ method: 'GET', url: '/v1/ping', headers: a })).statusCode).toBe(200);
    const second = await t.app.inject({ method: 'GET', url: '/v1/credits/balance/u_dual_pair', headers: b });
    expect(second.statusCode).toBe(200);
  });

  it('v2 alone is still judged by its nonce: the same nonce twice is refused, a fresh one passes', async () => {
    const headers = signRequest({ secret: TEST_SECRET, method: 'GET', path: '/v1/ping', versions: ['v2'] });
    expect((await t.app.inject({ method: 'GET', url: '/v1/ping', headers })).statusCode).toBe(200);
    const again = await t.app.inject({ method: 'GET', url: '/v1/ping', headers });
    expect(again.statusCode).toBe(409);
    expect(again.json().data.header).toBe('x-sheen-nonce');
  });
});
