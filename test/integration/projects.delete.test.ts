import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { type SignedInject, signedInject } from '../helpers/signed';
import { sleep } from '../helpers/wait';

/**
 * DELETE /v1/projects/:id on the run's database: refused while a build is active, idempotent, the builds and books
 * kept. The race with queueing builds is run with real concurrency when the database is PostgreSQL.
 */
describe('deleting a project', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
    const grant = { userId: 'del_user', credits: 1_000_000, reason: 'tests', source: 'adjustment' };
    expect((await call('POST', '/v1/credits/grant', grant)).statusCode).toBe(200);
  });
  afterAll(() => t.close());
  const call = (method: SignedInject['method'], url: string, body?: unknown, headers?: Record<string, string>) =>
    signedInject(t.app, { method, url, body, headers });
  const project = async (id: string, extra: Record<string, unknown> = {}) =>
    expect((await call('POST', '/v1/projects', { id, ownerId: 'del_user', name: id, ...extra })).statusCode).toBe(201);
  const build = async (projectId: string) => {
    const res = await call('POST', '/v1/builds', { projectId, userId: 'del_user', estimatedCredits: 10 });
    return res;
  };

  it('refuses while a build is active, naming it, and changes nothing', async () => {
    await project('del_busy');
    const queued = (await build('del_busy')).json();
    const refused = await call('DELETE', '/v1/projects/del_busy');
    expect(refused.statusCode).toBe(409);
    expect(refused.json()).toMatchObject({
      error: 'PROJECT_HAS_ACTIVE_BUILDS',
      data: { projectId: 'del_busy', activeBuildCount: 1, activeBuilds: [{ id: queued.id, state: 'queued' }] },
    });
    expect(refused.json().message).toContain('POST /v1/builds/:id/cancel');
    expect((await call('GET', '/v1/projects/del_busy')).json()).toMatchObject({ id: 'del_busy', version: 1 });

    // Once the build is over, the same request passes.
    expect((await call('POST', `/v1/builds/${queued.id}/cancel`)).statusCode).toBe(200);
    expect((await call('DELETE', '/v1/projects/del_busy')).statusCode).toBe(204);
  });

  it('is idempotent, keeps the builds and the books, takes no new builds and does not reuse the id', async () => {
    await project('del_done');
    const first = (await build('del_done')).json();
    expect((await call('PATCH', `/v1/builds/${first.id}`, { state: 'building' })).statusCode).toBe(200);
    expect((await call('PATCH', `/v1/builds/${first.id}`, { state: 'deployed', actualCredits: 7 })).statusCode).toBe(
      200,
    );

    const deleted = await call('DELETE', '/v1/projects/del_done');
    expect(deleted.statusCode).toBe(204);
    expect(deleted.body).toBe('');
    // Again: the same answer, nothing else changes.
    expect((await call('DELETE', '/v1/projects/del_done')).statusCode).toBe(204);

    expect((await call('GET', '/v1/projects/del_done')).json()).toMatchObject({ error: 'PROJECT_NOT_FOUND' });
    const batch = (await call('GET', '/v1/projects/batch?ids=del_done')).json();
    expect(batch).toMatchObject({ projects: [], notFound: ['del_done'] });
    for (const [method, body] of [
      ['PATCH', { name: 'x' }],
      ['PUT', { ownerId: 'del_user', name: 'x' }],
    ] as const) {
      expect((await call(method, '/v1/projects/del_done', body)).json().error, method).toBe('PROJECT_NOT_FOUND');
    }
    expect((await build('del_done')).json()).toMatchObject({ error: 'PROJECT_NOT_FOUND' });
    const inBatch = await call('POST', '/v1/builds/batch', { builds: [{ projectId: 'del_done', userId: 'del_user' }] });
    expect(inBatch.json()).toMatchObject({ error: 'PROJECT_NOT_FOUND', data: { index: 0 } });

    // Its build stays readable, with its events and what it charged; the books still balance.
    expect((await call('GET', `/v1/builds/${first.id}`)).json()).toMatchObject({
      projectId: 'del_done',
      state: 'deployed',
      actualCredits: 7,
    });
    expect((await call('GET', `/v1/builds/${first.id}/events`)).json().events.length).toBeGreaterThan(1);
    expect((await call('GET', '/v1/builds?projectId=del_done')).json().builds.map((b: { id: string }) => b.id)).toEqual(
      [first.id],
    );
    expect((await call('GET', '/v1/credits/audit?userId=del_user')).json()).toMatchObject({ ok: true });

    const again = await call('POST', '/v1/projects', { id: 'del_done', ownerId: 'del_user', name: 'again' });
    expect(again.statusCode).toBe(409);
    expect(again.json()).toMatchObject({ error: 'PROJECT_ALREADY_EXISTS', data: { deleted: true } });
    expect(again.json().message).toContain('not reused');
  });

  it("leaves a deleted project's webhook alone: no rotation, no replays to it", async () => {
    await project('del_hooked', { webhookUrl: 'https://hooks.example.com/kiln' });
    const done = (await build('del_hooked')).json();
    expect((await call('POST', `/v1/builds/${done.id}/cancel`)).statusCode).toBe(200);
    expect((await call('DELETE', '/v1/projects/del_hooked')).statusCode).toBe(204);
    const rotated = await call('POST', '/v1/projects/del_hooked/webhook-secret');
    expect(rotated.json()).toMatchObject({ error: 'PROJECT_NOT_FOUND' });
    const replay = await call('POST', `/v1/builds/${done.id}/replay`, { fromSeq: 1 });
    expect(replay.statusCode).toBe(200);
    expect(replay.json()).toMatchObject({ webhookDeliveries: 0 });
  });

  it('answers 404 for an id that never was a project', async () => {
    const res = await call('DELETE', '/v1/projects/del_never');
    expect(res.statusCode).toBe(404);
    expect(res.json()).toMatchObject({ error: 'PROJECT_NOT_FOUND', data: { projectId: 'del_never' } });
  });

  // Deterministic, on PostgreSQL (two connections): a build queued while a deletion holds the project waits for it,
  // then finds the project deleted. PGlite has one connection, so the second statement could never start.
  it.skipIf(!DATABASE_URL)('makes a build wait for a deletion in progress, then refuses it', async () => {
    await project('del_wait');
    const deletion = await t.database.db.begin();
    let queued: Promise<{ statusCode: number }> | undefined;
    try {
      await deletion.query("select 1 from projects where id = 'del_wait' for update");
      await deletion.query("update projects set deleted_at = now() where id = 'del_wait'");
      queued = build('del_wait');
      // The build is held by the deletion's lock while it is open.
      const early = await Promise.race([queued.then(() => 'answered'), sleep(300).then(() => 'waiting')]);
      expect(early).toBe('waiting');
    } finally {
      await deletion.commit();
    }
    expect((await queued)?.statusCode).toBe(404);
    expect((await call('GET', '/v1/builds?projectId=del_wait')).json().builds).toEqual([]);
  });

  it('never leaves a deleted project with an active build, whatever the interleaving with new builds', async () => {
    // Each project gets a deletion and builds at the same moment (real concurrency on PostgreSQL's pool). Whatever
    // wins, a project ends either deleted with no active build, or live; and every build accepted exists.
    const ids = Array.from({ length: 12 }, (_, i) => `del_race_${i}`);
    for (const id of ids) await project(id, { allowConcurrentBuilds: true });
    const outcomes = await Promise.all(
      ids.map(async (id, i) => {
        // All are sent together; half are awaited with the deletion first, half with it last.
        const builds = [build(id), build(id), build(id)];
        const deletion = call('DELETE', `/v1/projects/${id}`);
        const answers = await Promise.all(i % 2 ? [...builds, deletion] : [deletion, ...builds]);
        const deleted = answers.splice(i % 2 ? 3 : 0, 1)[0];
        return { id, deletion: deleted.statusCode, builds: answers.map((b) => b.statusCode) };
      }),
    );
    for (const { id, deletion, builds } of outcomes) {
      expect([204, 409], id).toContain(deletion);
      for (const status of builds) expect([201, 404], id).toContain(status);
      const live = (await call('GET', `/v1/projects/${id}`)).statusCode === 200;
      const active = (await call('GET', `/v1/builds?projectId=${id}&state=queued`)).json().builds.length;
      const accepted = builds.filter((s) => s === 201).length;
      if (deletion === 204) {
        expect(live, id).toBe(false);
        expect(active, `${id}: a deleted project with queued builds`).toBe(0);
      } else {
        expect(live, id).toBe(true);
        expect(active, id).toBe(accepted);
        expect(accepted, `${id}: refused for builds that do not exist`).toBeGreaterThan(0);
      }
    }
  });
});
