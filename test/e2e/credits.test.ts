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
    BUILD_LEASE_S: '1',
    // The sweeper of any live process writes each expiry once: every second here, so the test waits little.
    CREDIT_SWEEP_INTERVAL_S: '1',
    RATE_LIMIT_USER_PER_MIN: '0',
    RATE_LIMIT_IP_PER_MIN: '0',
  });
  const start = () => shared.start();
  const client = (kiln: KilnProcess) => createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });

  it(`random grant/reserve/commit/release/expire sequences, 20 at a time over ${DATABASE_URL ? 'two processes' : 'one process'}: audit ok, balances match the model`, async () => {
    const processes = DATABASE_URL ? await Promise.all([start(), start()]) : [await start()];
    const clients = processes.map(client);
    let run = 0;
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(command, { minLength: 20, maxLength: 80 }), async (commands) => {
          run += 1;
          const users = [0, 1, 2, 3].map((u) => `prop_${run}_${u}`);
          // The model keeps its own figures: what was granted, and what each hold was charged by the commit that
          // won it (the test's own actualCredits, never the server's figure). Every answer is checked against it.
          const granted = new Map(users.map((u) => [u, 0]));
          const entries = new Map(users.map((u) => [u, 0]));
          type Hold = {
            id: string;
            user: string;
            amount: number;
            wins: { kind: 'commit' | 'release'; actual?: number }[];
          };
          const holds: Hold[] = [];
          const refusedStates: { hold: Hold; state: string }[] = [];
          const count = (user: string) => entries.set(user, (entries.get(user) ?? 0) + 1);
          let next = 0;
          let latestExpiry = 0;
          const worker = async (w: number) => {
            const call = clients[w % clients.length];
            for (let i = next++; i < commands.length; i = next++) {
              const c = commands[i];
              if (c.kind === 'grant') {
                const user = users[c.user];
                const res = await call<{ balance: number; reserved: number; available: number }>(
                  'POST',
                  '/v1/credits/grant',
                  { userId: user, credits: c.credits, reason: 'property grant', source: 'test' },
                );
                expect(res.status).toBe(200);
                expect(res.body.available).toBe(res.body.balance - res.body.reserved);
                expect(res.body.balance).toBeGreaterThanOrEqual(c.credits);
                granted.set(user, (granted.get(user) ?? 0) + c.credits);
                count(user);
              } else if (c.kind === 'reserve' || c.kind === 'abandon') {
                const user = users[c.user];
                const res = await call<{ reservationId: string; expires: string; reserved: number; available: number }>(
                  'POST',
                  '/v1/credits/reserve',
                  { userId: user, estimatedCredits: c.amount },
                );
                if (res.status === 201) {
                  expect(res.body.reserved).toBe(c.amount);
                  expect(res.body.available).toBeGreaterThanOrEqual(0);
                  latestExpiry = Math.max(latestExpiry, Date.parse(res.body.expires));
                  const hold = { id: res.body.reservationId, user, amount: c.amount, wins: [] };
                  if (c.kind === 'reserve') holds.push(hold);
                  // Its reserve entry, and later exactly one resolution (commit, release or expire).
                  count(user);
                  count(user);
                } else {
                  expect(res.status).toBe(402);
                  const data = (
                    res.body as unknown as { data: { required: number; available: number; shortfall: number } }
                  ).data;
                  expect(data.required).toBe(c.amount);
                  expect(data.available).toBeLessThan(c.amount);
                  expect(data.shortfall).toBe(c.amount - data.available);
                }
              } else if (holds.length > 0) {
                const hold = holds[c.hold % holds.length];
                const action = c.kind === 'commit' ? 'commit' : 'release';
                const actual = Math.floor((hold.amount * (c.kind === 'commit' ? c.percent : 0)) / 100);
                const res =
                  c.kind === 'commit'
                    ? await call<{ charged: number; refunded: number }>('POST', '/v1/credits/commit', {
                        reservationId: hold.id,
                        actualCredits: actual,
                      })
                    : await call('POST', '/v1/credits/release', { reservationId: hold.id, reason: 'property' });
                if (res.status === 200) {
                  if (c.kind === 'commit') {
                    expect(res.body).toMatchObject({ charged: actual, refunded: hold.amount - actual });
                    hold.wins.push({ kind: 'commit', actual });
                  } else hold.wins.push({ kind: 'release' });
                } else if (res.status === 422) {
                  expect(action === 'commit' && actual > hold.amount).toBe(true);
                } else {
                  expect(res.status).toBe(409);
                  refusedStates.push({ hold, state: (res.body as unknown as { data: { state: string } }).data.state });
                }
              }
            }
          };
          await Promise.all(Array.from({ length: 20 }, (_, w) => worker(w)));
          // Every hold left alone lapses (then nothing may be reserved), and a sweeper writes its expiry.
          await sleep(Math.max(0, latestExpiry - Date.now()) + 2_200);
          const charged = new Map(users.map((u) => [u, 0]));
          for (const hold of holds) {
            const final = (
              await clients[0]<{ state: string; charged: number | null }>('GET', `/v1/credits/reservations/${hold.id}`)
            ).body;
            // The answers that succeeded agree with each other (repeats of one resolution) and with the final state.
            const kinds = new Set(hold.wins.map((win) => `${win.kind}:${win.actual ?? ''}`));
            expect(kinds.size).toBeLessThanOrEqual(1);
            const won = hold.wins[0];
            expect(final.state).toBe(won ? (won.kind === 'commit' ? 'committed' : 'released') : 'expired');
            if (won?.kind === 'commit') {
              expect(final.charged).toBe(won.actual);
              charged.set(hold.user, (charged.get(hold.user) ?? 0) + (won.actual ?? 0));
            }
          }
          // A refusal named the state the hold ended in (a resolved hold never changes again).
          for (const { hold, state } of refusedStates) {
            const final = (await clients[0]<{ state: string }>('GET', `/v1/credits/reservations/${hold.id}`)).body;
            expect(state).toBe(final.state);
          }
          const auditRes = await clients[0]<{ ok: boolean; problems: unknown[] }>('GET', '/v1/credits/audit');
          expect(auditRes.body.problems).toEqual([]);
          expect(auditRes.body.ok).toBe(true);
          for (const user of users) {
            const expected = (granted.get(user) ?? 0) - (charged.get(user) ?? 0);
            const b = await clients[clients.length - 1]<{ balance: number; reserved: number; available: number }>(
              'GET',
              `/v1/credits/balance/${user}`,
            );
            expect(b.body).toMatchObject({ balance: expected, reserved: 0, available: expected });
            // The ledger has exactly the model's movements: each grant, each hold's reserve and its one resolution.
            const audited = await clients[0]<{ ledgerEntries: number }>('GET', `/v1/credits/audit?userId=${user}`);
            expect(audited.body.ledgerEntries).toBe(entries.get(user));
          }
        }),
        { numRuns: 4, endOnFailure: true },
      );
    } finally {
      await Promise.all(processes.map((p) => p.stop()));
    }
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
