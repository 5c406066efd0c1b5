import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findBuild, insertBuild, toBuild, transitionBuild } from '../../src/db/builds';
import { sqlState } from '../../src/db/database';
import { BUILD_STATES, canTransition } from '../../src/domain/build-states';
import { openTestDatabase, type TestDatabase } from '../helpers/db';

/** The database itself refuses what the state machine forbids, whatever the client (SPEC section 5). */
describe('builds schema', () => {
  let t: TestDatabase;
  let n = 0;
  beforeAll(async () => {
    t = await openTestDatabase();
    await t.db.query("insert into projects (id, owner_id, name) values ('p_sql', 'o', 'n'), ('p_sql2', 'o', 'n')");
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
    const inserted = await insertBuild(t.db, {
      id,
      reservationId: null,
      projectId: 'p_sql',
      userId: 'u',
      exclusive: false,
      estimatedCredits: 2_500_000_000,
      metadata: {},
    });
    expect(inserted?.estimated_credits).toBe(2_500_000_000);
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
});
