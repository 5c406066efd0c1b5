import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { audit, grant } from '../../src/services/credits';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

describe('credits under contention', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ RATE_LIMIT_USER_PER_MIN: '0', RATE_LIMIT_IP_PER_MIN: '0' });
  });
  afterAll(() => t.close());
  const call = (method: 'GET' | 'POST', url: string, body?: unknown) => signedInject(t.app, { method, url, body });

  it('one user hammered by 50 parallel reserves: exactly what the balance covers is held, never negative', async () => {
    await grant(t.database.db, { userId: 'u_hammer', credits: 1000, reason: 'seed', source: 'test' });
    const responses = await Promise.all(
      Array.from({ length: 50 }, () =>
        call('POST', '/v1/credits/reserve', { userId: 'u_hammer', estimatedCredits: 30 }),
      ),
    );
    const statuses = responses.map((r) => r.statusCode);
    expect(statuses.filter((s) => s === 201)).toHaveLength(33);
    expect(statuses.filter((s) => s === 402)).toHaveLength(17);
    const balance = (await call('GET', '/v1/credits/balance/u_hammer')).json();
    expect(balance).toMatchObject({ balance: 1000, reserved: 990, available: 10 });
    expect((await audit(t.database.db, 'u_hammer')).ok).toBe(true);
  });

  it('many users contending with grants, reserves, commits and releases: books balance', async () => {
    const users = Array.from({ length: 10 }, (_, i) => `u_many_${i}`);
    await Promise.all(
      users.map((userId) =>
        call('POST', '/v1/credits/grant', { userId, credits: 200, reason: 'seed', source: 'test' }),
      ),
    );
    // What each user should end with, from the answers that succeeded (the test's own figures, not the server's).
    const expected = new Map(users.map((userId) => [userId, 200]));
    const add = (userId: string, credits: number) => expected.set(userId, (expected.get(userId) ?? 0) + credits);
    const work = users.flatMap((userId, u) =>
      Array.from({ length: 8 }, async (_, i) => {
        const held = await call('POST', '/v1/credits/reserve', { userId, estimatedCredits: 20 + i });
        if (held.statusCode !== 201) {
          expect(held.statusCode).toBe(402);
          return;
        }
        const { reservationId } = held.json();
        if ((i + u) % 3 === 0) {
          const released = await call('POST', '/v1/credits/release', { reservationId, reason: 'cancelled' });
          expect(released.json()).toMatchObject({ released: 20 + i });
        } else {
          const committed = await call('POST', '/v1/credits/commit', { reservationId, actualCredits: 10 + i });
          expect(committed.json()).toMatchObject({ charged: 10 + i, refunded: 10 });
          add(userId, -(10 + i));
        }
        if (i % 4 === 0) {
          const bonus = await call('POST', '/v1/credits/grant', {
            userId,
            credits: 5,
            reason: 'bonus',
            source: 'test',
          });
          expect(bonus.statusCode).toBe(200);
          add(userId, 5);
        }
      }),
    );
    await Promise.all(work);
    const report = await audit(t.database.db);
    expect(report.problems).toEqual([]);
    for (const userId of users) {
      const b = (await call('GET', `/v1/credits/balance/${userId}`)).json();
      expect(b).toMatchObject({ balance: expected.get(userId), reserved: 0, available: expected.get(userId) });
    }
  });
});
