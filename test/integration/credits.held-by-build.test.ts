import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audit } from '../../src/services/credits';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

/**
 * SPEC section 6: a build never reaches `deployed` without its credits held, so the hold of a queued or building
 * build cannot be released or committed through the credits routes (409 RESERVATION_HELD_BY_BUILD): cancel the build.
 */
describe('the hold of an active build', () => {
  let t: TestApp;
  let n = 0;
  beforeAll(async () => {
    t = await startTestApp({ BUILD_EXECUTOR: 'external', RATE_LIMIT_USER_PER_MIN: '0', RATE_LIMIT_IP_PER_MIN: '0' });
  });
  afterAll(() => t.close());

  const call = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown) =>
    signedInject(t.app, { method, url, body });
  const balance = async (userId: string) => (await call('GET', `/v1/credits/balance/${userId}`)).json();
  const ledger = async (userId: string) =>
    (await call('GET', `/v1/credits/ledger/${userId}?limit=200`)).json().entries as {
      type: string;
      amount: number;
      reservationId: string | null;
    }[];
  const newBuild = async (credits = 1000, estimatedCredits = 100) => {
    const userId = `u_hbb_${++n}`;
    const projectId = `prj_hbb_${n}`;
    await call('POST', '/v1/credits/grant', { userId, credits, reason: 'test', source: 'test' });
    expect((await call('POST', '/v1/projects', { id: projectId, ownerId: userId, name: 'hbb' })).statusCode).toBe(201);
    const res = await call('POST', '/v1/builds', { projectId, userId, estimatedCredits });
    expect(res.statusCode).toBe(201);
    return { userId, build: res.json() as { id: string; reservationId: string } };
  };
  const release = (reservationId: string, reason = 'web app') =>
    call('POST', '/v1/credits/release', { reservationId, reason });
  const commit = (reservationId: string, actualCredits: number) =>
    call('POST', '/v1/credits/commit', { reservationId, actualCredits });

  for (const state of ['queued', 'building'] as const) {
    it(`refuses to release or commit the hold of a ${state} build, naming the build; nothing changes`, async () => {
      const { userId, build } = await newBuild();
      if (state === 'building') {
        expect((await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' })).statusCode).toBe(200);
      }
      const figures = await balance(userId);
      const entries = await ledger(userId);
      for (const res of [
        await release(build.reservationId),
        await commit(build.reservationId, 0),
        await commit(build.reservationId, 100),
        await call('POST', '/v1/credits/commit', {
          reservationId: build.reservationId,
          actualCredits: 5,
          buildId: build.id,
        }),
      ]) {
        expect(res.statusCode).toBe(409);
        const body = res.json();
        expect(body).toMatchObject({
          error: 'RESERVATION_HELD_BY_BUILD',
          data: { reservationId: build.reservationId, buildId: build.id, state },
        });
        expect(body.message).toContain(`POST /v1/builds/${build.id}/cancel`);
      }
      expect(await balance(userId)).toEqual(figures);
      expect(figures).toMatchObject({ balance: 1000, reserved: 100 });
      expect(await ledger(userId)).toEqual(entries);
      expect((await call('GET', `/v1/credits/reservations/${build.reservationId}`)).json()).toMatchObject({
        state: 'active',
      });
    });
  }

  it('is released by the build’s cancel; a repeat of that release still answers as before', async () => {
    const { userId, build } = await newBuild();
    expect((await release(build.reservationId)).statusCode).toBe(409);
    expect((await call('POST', `/v1/builds/${build.id}/cancel`)).statusCode).toBe(200);
    expect(await balance(userId)).toMatchObject({ balance: 1000, reserved: 0, available: 1000 });
    const hold = (await call('GET', `/v1/credits/reservations/${build.reservationId}`)).json();
    expect(hold).toMatchObject({ state: 'released', refunded: 100 });
    // The same release as the cancel's answers as the first did; another one is refused as already released.
    const repeat = await release(build.reservationId, hold.resolutionReason);
    expect(repeat.statusCode).toBe(200);
    expect(repeat.json()).toEqual({ released: 100, newBalance: 1000 });
    const other = await release(build.reservationId);
    expect(other.statusCode).toBe(409);
    expect(other.json()).toMatchObject({ error: 'RESERVATION_NOT_ACTIVE', data: { state: 'released' } });
    expect((await ledger(userId)).filter((e) => e.reservationId === build.reservationId).map((e) => e.type)).toEqual([
      'release',
      'reserve',
    ]);
  });

  it('is charged its actual credits when the build deploys, after the refused attempts', async () => {
    const { userId, build } = await newBuild(1000, 200);
    expect((await release(build.reservationId)).statusCode).toBe(409);
    await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
    expect((await commit(build.reservationId, 1)).statusCode).toBe(409);
    const done = await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 120 });
    expect(done.json()).toMatchObject({ state: 'deployed', actualCredits: 120 });
    expect(await balance(userId)).toMatchObject({ balance: 880, reserved: 0 });
    expect((await call('GET', `/v1/credits/reservations/${build.reservationId}`)).json()).toMatchObject({
      state: 'committed',
      charged: 120,
    });
    // Once the build has ended its hold is settled: the same commit answers as the build's did, another is refused.
    expect((await commit(build.reservationId, 120)).json()).toEqual({ charged: 120, refunded: 80, newBalance: 880 });
    expect((await commit(build.reservationId, 119)).json()).toMatchObject({ error: 'RESERVATION_NOT_ACTIVE' });
    expect((await audit(t.database.db, userId)).problems).toEqual([]);
  });

  it('many parallel releases and commits racing the build’s cancel or deploy: only the build resolves its hold', async () => {
    const rounds = Array.from({ length: 6 }, (_, i) => i);
    await Promise.all(
      rounds.map(async (i) => {
        const deploy = i % 2 === 1;
        const { userId, build } = await newBuild(1000, 100);
        if (deploy) await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
        const attempts = Array.from({ length: 12 }, (_, k) =>
          k % 2 === 0 ? release(build.reservationId, `race ${k}`) : commit(build.reservationId, 10),
        );
        const end = deploy
          ? call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 70 })
          : call('POST', `/v1/builds/${build.id}/cancel`);
        const [ended, ...answers] = await Promise.all([end, ...attempts]);
        expect(ended.statusCode).toBe(200);
        for (const answer of answers) {
          expect(answer.statusCode).toBe(409);
          expect(['RESERVATION_HELD_BY_BUILD', 'RESERVATION_NOT_ACTIVE']).toContain(answer.json().error);
        }
        const resolutions = (await ledger(userId)).filter(
          (e) => e.reservationId === build.reservationId && e.type !== 'reserve',
        );
        expect(resolutions.map((e) => e.type)).toEqual([deploy ? 'commit' : 'release']);
        expect(await balance(userId)).toMatchObject({ balance: deploy ? 930 : 1000, reserved: 0 });
        expect((await audit(t.database.db, userId)).problems).toEqual([]);
      }),
    );
    expect((await audit(t.database.db)).problems).toEqual([]);
  });
});
