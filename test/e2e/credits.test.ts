import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { type KilnProcess, sharedKilns } from '../helpers/kiln-process';

const TTL_S = 2;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type Command =
  | { kind: 'grant'; user: number; credits: number }
  | { kind: 'reserve'; user: number; amount: number }
  | { kind: 'commit'; hold: number; percent: number }
  | { kind: 'release'; hold: number }
  | { kind: 'abandon'; user: number; amount: number };

const command: fc.Arbitrary<Command> = fc.oneof(
  fc.record({ kind: fc.constant('grant' as const), user: fc.nat(3), credits: fc.integer({ min: 1, max: 300 }) }),
  fc.record({ kind: fc.constant('reserve' as const), user: fc.nat(3), amount: fc.integer({ min: 1, max: 200 }) }),
  fc.record({ kind: fc.constant('commit' as const), hold: fc.nat(1000), percent: fc.integer({ min: 0, max: 120 }) }),
  fc.record({ kind: fc.constant('release' as const), hold: fc.nat(1000) }),
  fc.record({ kind: fc.constant('abandon' as const), user: fc.nat(3), amount: fc.integer({ min: 1, max: 50 }) }),
);

/**
 * Credits across real processes. With DATABASE_URL two processes share one schema; in embedded mode one process
 * owns DATA_DIR (PGlite is one process per directory), so the concurrency is 20 clients against that one.
 */
describe('credits end to end', () => {
  const shared = sharedKilns({
    RESERVATION_TTL_S: String(TTL_S),
    RATE_LIMIT_USER_PER_MIN: '0',
    RATE_LIMIT_IP_PER_MIN: '0',
  });
  const start = () => shared.start();
  const client = (kiln: KilnProcess) => createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });

  it(`random grant/reserve/commit/release/expire sequences, 20 at a time over ${DATABASE_URL ? 'two processes' : 'one process'}: audit ok, balances match the model`, async () => {
    const processes = DATABASE_URL ? await Promise.all([start(), start()]) : [await start()];
    const clients = processes.map(client);
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(command, { minLength: 20, maxLength: 80 }), async (commands) => {
        run += 1;
        const users = [0, 1, 2, 3].map((u) => `prop_${run}_${u}`);
        const model = new Map(users.map((u) => [u, 0]));
        const holds: { id: string; user: string; amount: number }[] = [];
        let next = 0;
        let latestExpiry = 0;
        const worker = async (w: number) => {
          const call = clients[w % clients.length];
          for (let i = next++; i < commands.length; i = next++) {
            const c = commands[i];
            if (c.kind === 'grant') {
              const res = await call('POST', '/v1/credits/grant', {
                userId: users[c.user],
                credits: c.credits,
                reason: 'property grant',
                source: 'test',
              });
              expect(res.status).toBe(200);
              model.set(users[c.user], (model.get(users[c.user]) ?? 0) + c.credits);
            } else if (c.kind === 'reserve' || c.kind === 'abandon') {
              const res = await call<{ reservationId: string; expires: string }>('POST', '/v1/credits/reserve', {
                userId: users[c.user],
                estimatedCredits: c.amount,
              });
              expect([201, 402]).toContain(res.status);
              if (res.status === 201) {
                latestExpiry = Math.max(latestExpiry, Date.parse(res.body.expires));
                if (c.kind === 'reserve')
                  holds.push({ id: res.body.reservationId, user: users[c.user], amount: c.amount });
              }
            } else if (holds.length > 0) {
              const hold = holds[c.hold % holds.length];
              if (c.kind === 'commit') {
                const actual = Math.floor((hold.amount * c.percent) / 100);
                const res = await call<{ charged: number }>('POST', '/v1/credits/commit', {
                  reservationId: hold.id,
                  actualCredits: actual,
                });
                if (actual > hold.amount) expect([409, 422]).toContain(res.status);
                else expect([200, 409]).toContain(res.status);
                // A 200 charges once: a repeat of the same commit answers 200 without charging again.
                if (res.status === 200 && !(hold as { charged?: boolean }).charged) {
                  (hold as { charged?: boolean }).charged = true;
                  model.set(hold.user, (model.get(hold.user) ?? 0) - res.body.charged);
                }
              } else {
                const res = await call('POST', '/v1/credits/release', { reservationId: hold.id, reason: 'property' });
                expect([200, 409]).toContain(res.status);
              }
            }
          }
        };
        await Promise.all(Array.from({ length: 20 }, (_, w) => worker(w)));
        // Every hold left alone lapses; then nothing may be reserved, and the balance is what the model says.
        await sleep(Math.max(0, latestExpiry - Date.now()) + 50);
        const auditRes = await clients[0]<{ ok: boolean; problems: unknown[] }>('GET', '/v1/credits/audit');
        expect(auditRes.body.problems).toEqual([]);
        expect(auditRes.body.ok).toBe(true);
        for (const user of users) {
          const b = await clients[clients.length - 1]<{ balance: number; reserved: number; available: number }>(
            'GET',
            `/v1/credits/balance/${user}`,
          );
          expect(b.body).toMatchObject({ balance: model.get(user), reserved: 0, available: model.get(user) });
        }
      }),
      { numRuns: 4, endOnFailure: true },
    );
    await Promise.all(processes.map((p) => p.stop()));
  }, 180_000);

  it('a process killed (SIGKILL) mid-operation leaves no half-written movement', async () => {
    const a = await start();
    const call = client(a);
    expect(
      (await call('POST', '/v1/credits/grant', { userId: 'killed', credits: 100_000, reason: 'seed', source: 'test' }))
        .status,
    ).toBe(200);
    let answered = 0;
    const inflight = Promise.allSettled(
      Array.from({ length: 200 }, async (_, i) => {
        const held = await call<{ reservationId: string }>('POST', '/v1/credits/reserve', {
          userId: 'killed',
          estimatedCredits: 10 + (i % 7),
        });
        if (held.status !== 201) return;
        answered += 1;
        const done = await call('POST', '/v1/credits/commit', {
          reservationId: held.body.reservationId,
          actualCredits: 5,
        });
        if (done.status === 200) answered += 1;
      }),
    );
    // Kill while requests are in flight, once some have been answered (so committed movements exist).
    for (let waited = 0; answered < 10 && waited < 20_000; waited += 10) await sleep(10);
    const answeredAtKill = answered;
    await a.stop('SIGKILL');
    await inflight;
    const b = await start();
    const report = await client(b)<{ ok: boolean; problems: unknown[]; ledgerEntries: number }>(
      'GET',
      '/v1/credits/audit?userId=killed',
    );
    expect(report.body.problems).toEqual([]);
    expect(report.body.ok).toBe(true);
    // Every movement answered before the kill was committed first, so it is in the ledger.
    expect(report.body.ledgerEntries).toBeGreaterThanOrEqual(1 + answeredAtKill);
    expect(answeredAtKill).toBeGreaterThanOrEqual(10);
    await b.stop();
  }, 120_000);
});
