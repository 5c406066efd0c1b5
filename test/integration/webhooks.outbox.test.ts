import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { claimDeliveries, settleDelivery, sweepDeliveries } from '../../src/db/webhooks';
import { openTestDatabase, type TestDatabase } from '../helpers/db';
import { DATABASE_URL } from '../helpers/env';

/** The outbox at the SQL level: the trigger, heads and the rows behind them, claims under concurrency, the sweep. */
describe('the webhook outbox', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase();
    await t.db.query(
      `insert into projects (id, owner_id, name, allow_concurrent_builds, webhook_url, webhook_secret)
       values ('p_out', 'o', 'n', true, 'https://hooks.example.com/k', 'whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3'),
              ('p_none', 'o', 'n', true, null, null)`,
    );
  });
  afterAll(() => t.cleanup());

  let builds = 0;
  /** A build of `project` with `events` events (seq 1..n), written as the API writes them. */
  const build = async (project: string, events: number) => {
    const id = `b_out_${++builds}`;
    await t.db.query(
      `insert into builds (id, project_id, user_id, state, estimated_credits, exclusive)
       values ($1::text, $2::text, 'u', 'queued', 1, false)`,
      [id, project],
    );
    for (let seq = 1; seq <= events; seq++) {
      await t.db.query(`insert into build_events (build_id, seq, type) values ($1::text, $2::int, 'log')`, [id, seq]);
    }
    return id;
  };
  const rows = async (buildId: string) =>
    (
      await t.db.query<{ seq: number; status: string; waiting: boolean }>(
        `select seq, status, next_attempt_at = 'infinity'::timestamptz as waiting from webhook_deliveries
          where build_id = $1::text order by id`,
        [buildId],
      )
    ).rows;
  const claim = (limit = 50) => claimDeliveries(t.db, { limit, perProject: 50, busyProjects: [], leaseS: 60 });
  const settle = (d: { id: number; attempt: number; buildId: string; projectId: string }) =>
    settleDelivery(t.db, {
      deliveryId: d.id,
      attempt: d.attempt,
      buildId: d.buildId,
      projectId: d.projectId,
      url: 'https://hooks.example.com/k',
      attemptedAt: new Date(),
      durationMs: 3,
      statusCode: 204,
      delivered: true,
      failure: null,
      detail: null,
      responseBody: '',
      retryInS: null,
      disable: null,
      disableAfterS: 3600,
      failingResetS: 7200,
    });

  it('writes a row per event of a project with a webhook, only its first due, the rest waiting behind it', async () => {
    const hooked = await build('p_out', 3);
    const plain = await build('p_none', 3);
    expect(await rows(hooked)).toEqual([
      { seq: 1, status: 'pending', waiting: false },
      { seq: 2, status: 'pending', waiting: true },
      { seq: 3, status: 'pending', waiting: true },
    ]);
    expect(await rows(plain)).toEqual([]);
    const claimed = (await claim()).filter((d) => d.buildId === hooked);
    expect(claimed.map((d) => d.event.seq)).toEqual([1]);
    expect(claimed[0]).toMatchObject({ url: 'https://hooks.example.com/k', attempt: 1, replay: false });
    // Claimed: leased, not claimable again.
    expect((await claim()).filter((d) => d.buildId === hooked)).toEqual([]);
    await settle(claimed[0]);
    const next = (await claim()).filter((d) => d.buildId === hooked);
    expect(next.map((d) => d.event.seq)).toEqual([2]);
  });

  it('makes due, on a sweep, a first pending row left waiting by a race', async () => {
    const id = await build('p_out', 2);
    const [first] = (await claim()).filter((d) => d.buildId === id);
    // As if the head settled while seq 2 was being written: delivered, without promoting the next.
    await t.db.query(`update webhook_deliveries set status = 'delivered' where id = $1::bigint`, [first.id]);
    expect((await rows(id))[1]).toMatchObject({ seq: 2, waiting: true });
    expect((await sweepDeliveries(t.db))?.promoted).toBeGreaterThanOrEqual(1);
    expect((await claim()).filter((d) => d.buildId === id).map((d) => d.event.seq)).toEqual([2]);
  });

  it.skipIf(!DATABASE_URL)(
    'makes the next message due when its predecessor settles while the event is still being written (PostgreSQL)',
    async () => {
      const id = await build('p_out', 1);
      const [head] = (await claim()).filter((d) => d.buildId === id);
      // Another transaction writes the build's next event as the API does (the build row first), and waits.
      const writer = await t.db.begin();
      await writer.query(`update builds set last_event_seq = 2 where id = $1::text`, [id]);
      await writer.query(`insert into build_events (build_id, seq, type) values ($1::text, 2, 'log')`, [id]);
      let settled = false;
      const settling = settle(head).then(() => {
        settled = true;
      });
      await new Promise((r) => setTimeout(r, 300));
      // The settlement waits for the writer (it reads the build's row for share), so it sees the new message.
      expect(settled).toBe(false);
      await writer.commit();
      await settling;
      expect(await rows(id)).toEqual([
        { seq: 1, status: 'delivered', waiting: false },
        { seq: 2, status: 'pending', waiting: false },
      ]);
    },
  );

  it.skipIf(!DATABASE_URL)(
    'never hands one row, or two rows of one build, to concurrent claimers (PostgreSQL)',
    async () => {
      const ids = await Promise.all(Array.from({ length: 30 }, () => build('p_out', 4)));
      const seen = new Map<number, number>();
      // Rounds of 8 claimers at once on the pool; each round settles what it got, making the next rows due.
      for (let round = 0; round < 4; round++) {
        const claims = await Promise.all(Array.from({ length: 8 }, () => claim(5)));
        const all = claims.flat().filter((d) => ids.includes(d.buildId));
        const builds = all.map((d) => d.buildId);
        expect(new Set(builds).size, `round ${round}: one row per build`).toBe(builds.length);
        for (const d of all) seen.set(d.id, (seen.get(d.id) ?? 0) + 1);
        await Promise.all(all.map(settle));
      }
      // Whatever was left after four rounds of 40 claims is claimed now; every row went out exactly once.
      for (let left = await claim(200); left.length; left = await claim(200)) {
        for (const d of left.filter((x) => ids.includes(x.buildId))) {
          seen.set(d.id, (seen.get(d.id) ?? 0) + 1);
          await settle(d);
        }
      }
      expect(seen.size).toBe(120);
      expect([...seen.values()].every((n) => n === 1)).toBe(true);
      for (const id of ids) expect((await rows(id)).map((r) => r.status)).toEqual(Array(4).fill('delivered'));
    },
    60_000,
  );
});
