import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findBuild, type NewBuild, queueBuild, toBuild, transitionBuild } from '../../src/db/builds';
import { sqlState } from '../../src/db/database';
import { BUILD_STATES, canTransition } from '../../src/domain/build-states';
import { openTestDatabase, type TestDatabase } from '../helpers/db';

/** The database itself refuses what the state machine forbids, whatever the client (SPEC section 5). */
describe('builds schema', () => {
  let t: TestDatabase;
  let n = 0;
  beforeAll(async () => {
    t = await openTestDatabase();
    await t.db.query(
      "insert into projects (id, owner_id, name, allow_concurrent_builds) values ('p_sql', 'o', 'n', false), ('p_sql2', 'o', 'n', false), ('p_many', 'o', 'n', true)",
    );
    await t.db.query("select credit_grant('u', 10000000000, null, 'test', 'test', 'test', 'test')");
  });
  afterAll(() => t.cleanup());

  /** Insert a build and drive it to `state` with allowed updates, by plain SQL. */
  async function buildIn(state: string, project = 'p_sql', exclusive = false): Promise<string> {
    const id = `b_sql_${++n}`;
    await t.db.query(
      "insert into builds (id, project_id, user_id, state, exclusive, estimated_credits) values ($1, $2, 'u', 'queued', $3, 0)",
      [id, project, exclusive],
    );
    const path =
      {
        queued: [],
        building: ['building'],
        deployed: ['building', 'deployed'],
        failed: ['building', 'failed'],
        cancelled: ['cancelled'],
      }[state] ?? [];
    for (const step of path) await t.db.query('update builds set state = $2 where id = $1', [id, step]);
    return id;
  }

  for (const from of BUILD_STATES) {
    for (const to of BUILD_STATES) {
      if (from === to) continue;
      it(`UPDATE ${from} → ${to} is ${canTransition(from, to) ? 'accepted' : 'refused (KL001)'} by the database, as the domain table says`, async () => {
        const id = await buildIn(from);
        const error = await t.db.query('update builds set state = $2 where id = $1', [id, to]).catch((e: unknown) => e);
        const { rows } = await t.db.query<{ state: string; previous_state: string | null }>(
          'select state, previous_state from builds where id = $1',
          [id],
        );
        if (canTransition(from, to)) {
          expect(error).not.toBeInstanceOf(Error);
          expect(rows[0]).toEqual({ state: to, previous_state: from });
        } else {
          expect(sqlState(error)).toBe('KL001');
          expect(rows[0].state).toBe(from);
        }
      });
    }
  }

  it('has the requirements CHECK, null-safe', async () => {
    // Bypass the trigger to test the CHECK alone.
    await t.db.exec('alter table builds disable trigger builds_enforce_transition');
    try {
      const error = await t.db
        .query(
          "insert into builds (id, project_id, user_id, state, estimated_credits) values ('b_check', 'p_sql', 'u', 'building', 0)",
        )
        .catch((e: unknown) => e);
      expect(sqlState(error)).toBe('23514');
    } finally {
      await t.db.exec('alter table builds enable trigger builds_enforce_transition');
    }
  });

  it('refuses inserting a build in any state but queued, and forging previous_state', async () => {
    for (const state of ['building', 'deployed', 'failed', 'cancelled']) {
      const error = await t.db
        .query(
          "insert into builds (id, project_id, user_id, state, estimated_credits) values ($1, 'p_sql', 'u', $2, 0)",
          [`b_bad_${state}`, state],
        )
        .catch((e: unknown) => e);
      expect(sqlState(error)).toBe('KL001');
    }
    const forged = await t.db
      .query(
        "insert into builds (id, project_id, user_id, state, previous_state, estimated_credits) values ('b_forged', 'p_sql', 'u', 'building', 'queued', 0)",
      )
      .catch((e: unknown) => e);
    expect(sqlState(forged)).toBe('KL001');
    const id = await buildIn('queued');
    await t.db.query("update builds set previous_state = 'building' where id = $1", [id]);
    const { rows } = await t.db.query<{ previous_state: string | null }>(
      'select previous_state from builds where id = $1',
      [id],
    );
    expect(rows[0].previous_state).toBeNull();
  });

  it('allows one active exclusive build per project, and any number of concurrent ones', async () => {
    await buildIn('queued', 'p_sql2', true);
    const second = await buildIn('queued', 'p_sql2', true).catch((e: unknown) => e);
    expect(sqlState(second)).toBe('23505');
    await buildIn('building', 'p_sql2', false);
    await buildIn('queued', 'p_sql2', false);
  });

  it('keeps build_events append-only', async () => {
    const id = await buildIn('queued');
    await t.db.query("insert into build_events (build_id, seq, type) values ($1, 1, 'queued')", [id]);
    expect(
      sqlState(
        await t.db
          .query('update build_events set message = $2 where build_id = $1', [id, 'x'])
          .catch((e: unknown) => e),
      ),
    ).toBe('KL003');
    expect(
      sqlState(await t.db.query('delete from build_events where build_id = $1', [id]).catch((e: unknown) => e)),
    ).toBe('KL003');
    const dup = await t.db
      .query("insert into build_events (build_id, seq, type) values ($1, 1, 'log')", [id])
      .catch((e: unknown) => e);
    expect(sqlState(dup)).toBe('23505');
  });

  it('stores credit figures beyond 2^31 and reads them back as numbers (a command reported 3 000 000 000)', async () => {
    const id = `b_sql_big_${++n}`;
    const queued = await queueBuild(t.db, newBuild(id, 'p_many', 2_500_000_000));
    expect(queued.outcome === 'created' && queued.build.estimated_credits).toBe(2_500_000_000);
    const event = { message: 'step' };
    expect(await transitionBuild(t.db, id, { from: 'queued', to: 'building', event })).toBeDefined();
    const deployed = await transitionBuild(t.db, id, {
      from: 'building',
      to: 'deployed',
      actualCredits: 3_000_000_000,
      event,
    });
    expect(deployed?.actual_credits).toBe(3_000_000_000);
    const read = await findBuild(t.db, id);
    expect(typeof read?.actual_credits).toBe('number');
    expect(toBuild(read!)).toMatchObject({
      state: 'deployed',
      estimatedCredits: 2_500_000_000,
      actualCredits: 3_000_000_000,
    });
  });

  const newBuild = (id: string, projectId: string, credits = 10, userId = 'u'): NewBuild => ({
    id,
    reservationId: `r_${id}`,
    projectId,
    userId,
    estimatedCredits: credits,
    metadata: { operation: 'build' },
    holdTtlS: 600,
    holdReason: `hold for build ${id}`,
    requestId: 'req_sql',
    correlationId: 'corr_sql',
  });
  const count = async (sql: string, params: unknown[]) =>
    Number((await t.db.query<{ n: number }>(`select count(*)::int as n from ${sql}`, params)).rows[0].n);

  describe('build_create (one statement: project, build, first event, hold)', () => {
    it('queues the build with its first event and its hold, and says what the user has left', async () => {
      const id = `b_sql_new_${++n}`;
      const before = (
        await t.db.query<{ balance: number; reserved: number }>(
          "select balance, reserved from credit_accounts where user_id = 'u'",
        )
      ).rows[0];
      const queued = await queueBuild(t.db, newBuild(id, 'p_many', 7));
      if (queued.outcome !== 'created') throw new Error(`expected created, got ${queued.outcome}`);
      expect(queued.build).toMatchObject({ id, project_id: 'p_many', state: 'queued', reservation_id: `r_${id}` });
      expect(queued.build.created_at).toBeInstanceOf(Date);
      expect(queued.available).toBe(before.balance - before.reserved - 7);
      expect(await count("build_events where build_id = $1 and seq = 1 and type = 'queued'", [id])).toBe(1);
      expect(
        await count("credit_reservations where id = $1 and build_id = $2 and amount = 7 and state = 'active'", [
          `r_${id}`,
          id,
        ]),
      ).toBe(1);
      expect(await count("credit_ledger where reservation_id = $1 and type = 'reserve'", [`r_${id}`])).toBe(1);
    });

    it('writes nothing for a project that does not exist', async () => {
      const id = `b_sql_nop_${++n}`;
      expect(await queueBuild(t.db, newBuild(id, 'p_missing'))).toEqual({ outcome: 'no_project' });
      expect(await count('builds where id = $1', [id])).toBe(0);
      expect(await count('credit_reservations where id = $1', [`r_${id}`])).toBe(0);
    });

    it('returns the active build of a busy exclusive project and writes nothing', async () => {
      await t.db.query('insert into projects (id, owner_id, name) values ($1, $2, $3)', ['p_busy', 'o', 'n']);
      const first = `b_sql_busy_${++n}`;
      expect((await queueBuild(t.db, newBuild(first, 'p_busy'))).outcome).toBe('created');
      const second = `b_sql_busy_${++n}`;
      const busy = await queueBuild(t.db, newBuild(second, 'p_busy'));
      expect(busy.outcome === 'busy' && busy.active?.id).toBe(first);
      expect(await count('builds where id = $1', [second])).toBe(0);
      expect(await count('credit_reservations where id = $1', [`r_${second}`])).toBe(0);
    });

    it('says insufficient (with what is available) when the credits are short, and leaves nothing', async () => {
      await t.db.query("select credit_grant('u_poor', 5, null, 'test', 'test', 'test', 'test')");
      const id = `b_sql_poor_${++n}`;
      // Alone, in autocommit: the statement raised, so not even the build it inserted first remains.
      expect(await queueBuild(t.db, newBuild(id, 'p_many', 6, 'u_poor'))).toEqual({
        outcome: 'insufficient',
        available: 5,
      });
      expect(await count('builds where id = $1', [id])).toBe(0);
      expect(await count("credit_ledger where user_id = 'u_poor' and type = 'reserve'", [])).toBe(0);
    });

    it('raises 23505 for an id that exists, holding nothing for it', async () => {
      const id = `b_sql_dup_${++n}`;
      expect((await queueBuild(t.db, newBuild(id, 'p_many'))).outcome).toBe('created');
      const again = { ...newBuild(id, 'p_many'), reservationId: `r2_${id}` };
      expect(sqlState(await queueBuild(t.db, again).catch((e: unknown) => e))).toBe('23505');
      expect(await count('credit_reservations where id = $1', [`r2_${id}`])).toBe(0);
    });
  });
});
