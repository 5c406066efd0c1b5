import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { foldAnalytics } from '../../src/db/analytics';
import { buildAnalytics, usageAnalytics } from '../../src/services/analytics';
import { createBuild, requestTransition } from '../../src/services/builds';
import {
  chargeCredits,
  commitReservation,
  grant,
  releaseReservation,
  reserveCredits,
} from '../../src/services/credits';
import { openTestDatabase, type TestDatabase } from '../helpers/db';
import { DATABASE_URL } from '../helpers/env';

/**
 * Usage reconciles with the ledger, to the credit, after random workloads run concurrently (on PostgreSQL many at
 * once, each on its own connection) while the fold runs beside them: per hour and segment, and in total.
 */

type Op =
  | { kind: 'grant'; user: number; credits: number; plan: string }
  | { kind: 'hold'; user: number; credits: number; after: 'commit' | 'release' | 'keep'; used: number }
  | { kind: 'charge'; user: number; credits: number }
  | { kind: 'build'; user: number; credits: number; operation: string; end: 'deployed' | 'failed' | 'cancelled' };

const USERS = 4;
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant('grant' as const),
    user: fc.nat(USERS - 1),
    credits: fc.integer({ min: 1, max: 500 }),
    plan: fc.constantFrom('free', 'pro', 'team'),
  }),
  fc.record({
    kind: fc.constant('hold' as const),
    user: fc.nat(USERS - 1),
    credits: fc.integer({ min: 1, max: 60 }),
    after: fc.constantFrom('commit' as const, 'release' as const, 'keep' as const),
    used: fc.integer({ min: 0, max: 60 }),
  }),
  fc.record({
    kind: fc.constant('charge' as const),
    user: fc.nat(USERS - 1),
    credits: fc.integer({ min: 1, max: 40 }),
  }),
  fc.record({
    kind: fc.constant('build' as const),
    user: fc.nat(USERS - 1),
    credits: fc.integer({ min: 1, max: 50 }),
    operation: fc.constantFrom('build', 'deploy', 'preview'),
    end: fc.constantFrom('deployed' as const, 'failed' as const, 'cancelled' as const),
  }),
);

const context = {
  defaultEstimateCredits: 10,
  packages: [{ name: 'pro', price: 1, credits: 100 }],
  reservationTtlS: 600,
  creditsPerMinute: 1,
  externalLeaseS: 600,
  log: { info: () => {}, warn: () => {} },
};

describe('usage analytics against the ledger', () => {
  let t: TestDatabase;
  const started = new Date();
  let runs = 0;
  beforeAll(async () => {
    t = await openTestDatabase();
    for (const p of ['p0', 'p1', 'p2', 'p3']) {
      await t.db.query(
        `insert into projects (id, owner_id, name, allow_concurrent_builds) values ($1::text, 'o', 'n', true)`,
        [p],
      );
    }
  });
  afterAll(() => t?.cleanup());

  /** One operation, as the API would do it; refusals (402, a hold that cannot cover a commit) are part of life. */
  const run = async (o: Op, i: number): Promise<void> => {
    const userId = `u${o.user}`;
    const id = `r${runs}_${i}`;
    try {
      if (o.kind === 'grant') await grant(t.db, { userId, credits: o.credits, reason: 'r', source: 's', plan: o.plan });
      else if (o.kind === 'charge') await chargeCredits(t.db, { userId, credits: o.credits, reason: 'r' });
      else if (o.kind === 'hold') {
        const held = await reserveCredits(t.db, { userId, amount: o.credits, ttlS: 600 });
        if (o.after === 'commit') {
          await commitReservation(t.db, {
            reservationId: held.reservationId,
            actualCredits: Math.min(o.used, o.credits),
          });
        } else if (o.after === 'release')
          await releaseReservation(t.db, { reservationId: held.reservationId, reason: 'r' });
      } else {
        const build = await t.db.transaction((tx) =>
          createBuild(
            tx,
            {
              id: `b_${id}`,
              projectId: `p${o.user}`,
              userId,
              estimatedCredits: o.credits,
              metadata: { operation: o.operation },
            },
            context,
          ),
        );
        if (o.end !== 'cancelled') {
          await t.db.transaction((tx) => requestTransition(tx, build.id, { state: 'building' }, context));
        }
        await t.db.transaction((tx) =>
          requestTransition(
            tx,
            build.id,
            { state: o.end, actualCredits: o.end === 'deployed' ? o.credits : undefined },
            context,
          ),
        );
      }
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (!['INSUFFICIENT_CREDITS', 'RESERVATION_NOT_ACTIVE'].includes(code ?? '')) throw error;
    }
  };

  it('per hour, per segment and in total, whatever ran at once and whatever the fold had reached', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 5, maxLength: 40 }), async (ops) => {
        runs += 1;
        // The fold runs beside the workload (one at a time across "processes"; here, this loop).
        let folding = true;
        const folder = (async () => {
          while (folding) await foldAnalytics(t.db, 3 + (runs % 5));
        })();
        await Promise.all(ops.map((o, i) => run(o, i)));
        folding = false;
        await folder;
        if (runs % 2 === 0) await foldAnalytics(t.db, 1_000_000);

        const hour = 3_600_000;
        const from = new Date(Math.floor(started.getTime() / hour) * hour - hour);
        const to = new Date(Math.ceil(Date.now() / hour) * hour + hour);
        const range = { from: from.toISOString(), to: to.toISOString(), interval: 'hour' };
        for (const segment of ['plan', 'operation'] as const) {
          const report = await usageAnalytics(t.db, { ...range, segment });
          const { rows } = await t.db.query<Record<string, unknown>>(
            `select date_trunc('hour', l.created_at) as hour,
                    case when $3::text = 'plan' then l.plan
                         when l.build_id is null then 'none'
                         else coalesce(b.metadata ->> 'operation', 'build') end as segment,
                    coalesce(sum(l.amount) filter (where l.type = 'grant'), 0)::int as granted,
                    coalesce(sum(l.reserved_change) filter (where l.type = 'reserve'), 0)::int as reserved,
                    coalesce(-sum(l.amount) filter (where l.type in ('commit', 'charge')), 0)::int as charged,
                    coalesce(sum(-l.reserved_change + l.amount) filter (where l.type = 'commit'), 0)::int as refunded,
                    coalesce(-sum(l.reserved_change) filter (where l.type = 'release'), 0)::int as released,
                    coalesce(-sum(l.reserved_change) filter (where l.type = 'expire'), 0)::int as expired,
                    count(*)::int as entries
               from credit_ledger l left join builds b on b.id = l.build_id
              where l.created_at >= $1::timestamptz and l.created_at < $2::timestamptz
              group by 1, 2`,
            [from, to, segment],
          );
          const expected = new Map(rows.map((r) => [`${new Date(r.hour as string).toISOString()} ${r.segment}`, r]));
          for (const bucket of report.series) {
            for (const cell of bucket.segments) {
              const want = expected.get(`${bucket.start} ${cell.segment}`);
              const { segment: _s, ...figures } = cell;
              const { hour: _h, segment: _g, ...wanted } = want ?? {};
              expect(figures, `${bucket.start} ${cell.segment}`).toEqual(
                want
                  ? wanted
                  : { granted: 0, reserved: 0, charged: 0, refunded: 0, released: 0, expired: 0, entries: 0 },
              );
              expected.delete(`${bucket.start} ${cell.segment}`);
            }
          }
          expect([...expected.keys()], 'ledger cells the report missed').toEqual([]);
        }
        // Builds created in the range, as the builds report counts them.
        const builds = await buildAnalytics(t.db, range);
        const { rows } = await t.db.query<{ n: number }>(
          'select count(*)::int as n from builds where created_at >= $1::timestamptz and created_at < $2::timestamptz',
          [from, to],
        );
        expect(builds.totals.created).toBe(rows[0].n);
      }),
      { numRuns: DATABASE_URL ? 8 : 4 },
    );
  });
});
