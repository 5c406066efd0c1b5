import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

/** POST /v1/builds/batch: one transaction, all or nothing, the failing item named. */
describe('build batches', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ BUILD_EXECUTOR: 'external' });
    for (const [userId, credits] of [
      ['u_batch', 1_000_000],
      ['u_poor', 5],
    ] as const) {
      const res = await call('POST', '/v1/credits/grant', { userId, credits, reason: 'test budget', source: 'test' });
      expect(res.statusCode).toBe(200);
    }
  });
  afterAll(() => t.close());

  const call = (method: 'GET' | 'POST', url: string, body?: unknown, headers?: Record<string, string>) =>
    signedInject(t.app, { method, url, body, headers });
  let projects = 0;
  const project = async (allowConcurrentBuilds = false) => {
    const id = `prj_batch_${++projects}_${Date.now()}`;
    expect((await call('POST', '/v1/projects', { id, ownerId: 'o', name: id, allowConcurrentBuilds })).statusCode).toBe(
      201,
    );
    return id;
  };
  /** Builds and holds of the batch's users and projects: what a failed batch must leave untouched. */
  const footprint = async (projectIds: string[]) => {
    const { rows } = await t.database.db.query<{ builds: number; holds: number; reserved: number }>(
      `select (select count(*)::int from builds where project_id = any($1::text[])) as builds,
              (select count(*)::int from credit_reservations where user_id in ('u_batch', 'u_poor')
                 and state = 'active') as holds,
              (select coalesce(sum(reserved), 0)::int from credit_accounts where user_id in ('u_batch', 'u_poor'))
                as reserved`,
      [projectIds],
    );
    return rows[0];
  };

  it('queues every build in one transaction and answers them in request order; a key replays the batch', async () => {
    const [a, b, c] = [await project(), await project(), await project(true)];
    const items = [
      { projectId: b, userId: 'u_batch', id: `bld_b1_${Date.now()}`, estimatedCredits: 3 },
      { projectId: a, userId: 'u_batch', estimatedCredits: 2, metadata: { framework: 'next' } },
      { projectId: c, userId: 'u_batch', estimatedCredits: 1 },
      { projectId: c, userId: 'u_batch', estimatedCredits: 1 },
    ];
    const key = { 'idempotency-key': `batch-${Date.now()}` };
    const res = await call('POST', '/v1/builds/batch', { builds: items }, key);
    expect(res.statusCode).toBe(201);
    const builds = res.json().builds as { id: string; projectId: string; state: string; estimatedCredits: number }[];
    expect(builds.map((x) => [x.projectId, x.state, x.estimatedCredits])).toEqual([
      [b, 'queued', 3],
      [a, 'queued', 2],
      [c, 'queued', 1],
      [c, 'queued', 1],
    ]);
    expect(builds[0].id).toBe(items[0].id);
    const again = await call('POST', '/v1/builds/batch', { builds: items }, key);
    expect(again.statusCode).toBe(201);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body).toBe(res.body);
    expect((await footprint([a, b, c])).builds).toBe(4);
  });

  it('creates nothing and holds nothing for each kind of bad item, naming its index', async () => {
    const [free, other, concurrent] = [await project(), await project(), await project(true)];
    const busy = await project();
    const running = await call('POST', '/v1/builds', { projectId: busy, userId: 'u_batch', estimatedCredits: 1 });
    expect(running.statusCode).toBe(201);
    const existing = await call('POST', '/v1/builds', {
      projectId: concurrent,
      userId: 'u_batch',
      estimatedCredits: 1,
      id: `bld_exists_${Date.now()}`,
    });
    expect(existing.statusCode).toBe(201);
    const before = await footprint([free, other, concurrent, busy]);
    const good = (projectId: string) => ({ projectId, userId: 'u_batch', estimatedCredits: 1 });
    const cases: { name: string; builds: unknown[]; status: number; error: string; index: number }[] = [
      {
        name: 'an item that breaks the schema',
        builds: [good(free), { projectId: other, estimatedCredits: 1 }],
        status: 400,
        error: 'VALIDATION_ERROR',
        index: 1,
      },
      {
        name: 'an unknown project',
        builds: [good(free), good(other), good('prj_nowhere')],
        status: 404,
        error: 'PROJECT_NOT_FOUND',
        index: 2,
      },
      {
        name: 'a project with an active build already',
        builds: [good(free), good(busy)],
        status: 429,
        error: 'BUILD_ALREADY_RUNNING',
        index: 1,
      },
      {
        name: 'two builds for a one-build project',
        builds: [good(free), good(concurrent), good(free)],
        status: 400,
        error: 'VALIDATION_ERROR',
        index: 2,
      },
      {
        name: 'credits that run short',
        builds: [
          good(free),
          { projectId: other, userId: 'u_poor', estimatedCredits: 4 },
          { ...good(concurrent), userId: 'u_poor', estimatedCredits: 4 },
        ],
        status: 402,
        error: 'INSUFFICIENT_CREDITS',
        index: 2,
      },
      {
        name: 'a build id that exists already',
        builds: [good(free), { ...good(concurrent), id: existing.json().id }],
        status: 409,
        error: 'BUILD_ALREADY_EXISTS',
        index: 1,
      },
      {
        name: 'an item failing as it runs, before one known to fail',
        builds: [good(free), { ...good(other), userId: 'u_poor', estimatedCredits: 9 }, good('prj_nowhere')],
        status: 402,
        error: 'INSUFFICIENT_CREDITS',
        index: 1,
      },
      {
        name: 'a build id used twice',
        builds: [
          { ...good(concurrent), id: 'bld_twice' },
          { ...good(concurrent), id: 'bld_twice' },
        ],
        status: 400,
        error: 'VALIDATION_ERROR',
        index: 1,
      },
    ];
    for (const c of cases) {
      const res = await call('POST', '/v1/builds/batch', { builds: c.builds });
      expect(res.statusCode, c.name).toBe(c.status);
      const body = res.json();
      expect(body.error, c.name).toBe(c.error);
      expect(body.data.index, c.name).toBe(c.index);
      expect(body.data.reason, c.name).toEqual(expect.any(String));
      expect(body.message, c.name).toContain(`Item ${c.index}`);
      expect(await footprint([free, other, concurrent, busy]), c.name).toEqual(before);
    }
  });

  it('lists every issue it can know without running the batch, first one first', async () => {
    const p = await project();
    const res = await call('POST', '/v1/builds/batch', {
      builds: [
        { projectId: p, userId: 'u_batch', id: 'bld_dup' },
        { projectId: 'prj_missing', userId: 'u_batch' },
        { projectId: p, userId: 'u_batch', id: 'bld_dup', extra: true },
        { projectId: p, userId: 'u_batch' },
      ],
    });
    expect(res.statusCode).toBe(404);
    const { data } = res.json();
    expect(data.index).toBe(1);
    expect(data.errors.map((e: { index: number; code: string }) => [e.index, e.code])).toEqual([
      [1, 'PROJECT_NOT_FOUND'],
      [2, 'VALIDATION_ERROR'],
      [3, 'VALIDATION_ERROR'],
    ]);
    expect(data.issues).toEqual(
      expect.arrayContaining([
        { path: 'body.builds.2.extra', message: 'body.builds.2.extra is not an allowed field.' },
      ]),
    );
  });

  it('refuses an empty batch and one over 50 builds', async () => {
    const p = await project(true);
    expect((await call('POST', '/v1/builds/batch', { builds: [] })).statusCode).toBe(400);
    const many = Array.from({ length: 51 }, () => ({ projectId: p, userId: 'u_batch' }));
    const res = await call('POST', '/v1/builds/batch', { builds: many });
    expect(res.statusCode).toBe(400);
    expect(JSON.stringify(res.json().data.issues)).toContain('body.builds');
    expect((await footprint([p])).builds).toBe(0);
  });
});
