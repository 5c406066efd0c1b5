import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

describe('POST /v1/estimate', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({
      DEFAULT_ESTIMATE_CREDITS: '90',
      RATE_LIMIT_USER_PER_MIN: '0',
      RATE_LIMIT_IP_PER_MIN: '0',
    });
  });
  afterAll(() => t.close());
  const estimate = (body: unknown) => signedInject(t.app, { method: 'POST', url: '/v1/estimate', body });

  async function deployed(projectId: string, credits: number[], state = 'deployed') {
    await t.database.db.query(
      `insert into projects (id, owner_id, name) values ($1::text, 'owner', 'p') on conflict do nothing`,
      [projectId],
    );
    for (const [i, c] of credits.entries()) {
      const id = `${projectId}_b${i}_${state}`;
      // Through the state machine the database enforces: queued → building → deployed | failed.
      await t.database.db.query(
        `insert into builds (id, project_id, user_id, state, exclusive, estimated_credits)
         values ($1::text, $2::text, 'owner', 'queued', false, 10)`,
        [id, projectId],
      );
      await t.database.db.query(`update builds set state = 'building', started_at = now() where id = $1::text`, [id]);
      await t.database.db.query(
        `update builds set state = $2::text, actual_credits = $3::int, finished_at = now() where id = $1::text`,
        [id, state, c],
      );
    }
  }

  it('no history at all → the configured default, low confidence, 0 samples', async () => {
    const res = await estimate({ operation: 'build' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({
      operation: 'build',
      estimatedCredits: 90,
      range: { low: 45, high: 180 },
      confidence: 'low',
      basis: 'default',
      basedOnSamples: 0,
    });
  });

  it("from the project's deployed builds: p50, p10..p90; failed builds do not count", async () => {
    await deployed('prj_est', [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    await deployed('prj_est', [5000, 5000], 'failed');
    const res = (await estimate({ operation: 'build', projectId: 'prj_est' })).json();
    expect(res).toMatchObject({
      estimatedCredits: 50,
      range: { low: 10, high: 90 },
      confidence: 'medium',
      basis: 'project',
      basedOnSamples: 10,
    });
  });

  it('a project with too little history falls back to all projects; another operation has none', async () => {
    await deployed('prj_new', [1000]);
    const res = (await estimate({ operation: 'build', projectId: 'prj_new' })).json();
    expect(res).toMatchObject({ basis: 'all_projects', basedOnSamples: 11, estimatedCredits: 60 });
    // An operation no build carries is refused, naming those that are known (a typo is not an estimate).
    const unknown = await estimate({ operation: 'preview', projectId: 'prj_est' });
    expect(unknown.statusCode).toBe(400);
    expect(unknown.json()).toMatchObject({
      error: 'VALIDATION_ERROR',
      data: { issues: [{ path: 'body.operation' }], known: ['build'] },
    });
    expect(unknown.json().message).toContain('"preview"');
    // Once a build carries it (queued, so no history yet), it is known, and estimated from the default.
    await t.database.db.query(
      `insert into builds (id, project_id, user_id, state, exclusive, estimated_credits, metadata)
       values ('prj_est_preview', 'prj_est', 'owner', 'queued', false, 10, '{"operation":"preview"}')`,
    );
    const other = (await estimate({ operation: 'preview', projectId: 'prj_est' })).json();
    expect(other).toMatchObject({ basis: 'default', basedOnSamples: 0, estimatedCredits: 90 });
    const typo = await estimate({ operation: 'previw' });
    expect(typo.json().data.known).toEqual(['build', 'preview']);
  });

  it('with a userId: sufficient and available, and what to buy when short', async () => {
    await signedInject(t.app, {
      method: 'POST',
      url: '/v1/credits/grant',
      body: { userId: 'u_est', credits: 30, reason: 'seed', source: 'test' },
    });
    const short = (await estimate({ operation: 'build', projectId: 'prj_est', userId: 'u_est' })).json();
    expect(short).toMatchObject({ sufficient: false, available: 30 });
    expect(short.recommendation).toMatchObject({ package: 'starter', message: expect.stringContaining('Top up 20') });
    const rich = (await estimate({ operation: 'build', userId: 'u_nobody' })).json();
    expect(rich).toMatchObject({ sufficient: false, available: 0 });
    await signedInject(t.app, {
      method: 'POST',
      url: '/v1/credits/grant',
      body: { userId: 'u_est', credits: 100, reason: 'seed', source: 'test' },
    });
    const enough = (await estimate({ operation: 'build', projectId: 'prj_est', userId: 'u_est' })).json();
    expect(enough).toMatchObject({ sufficient: true, available: 130 });
    expect(enough.recommendation).toBeUndefined();
  });

  it('validates its body', async () => {
    const res = await estimate({ operation: 'bad op!', projectId: 'x y', userId: '', more: 1 });
    expect(res.statusCode).toBe(400);
    const paths = res.json().data.issues.map((i: { path: string }) => i.path);
    for (const p of ['body.operation', 'body.projectId', 'body.userId', 'body.more']) expect(paths).toContain(p);
    expect((await estimate({})).statusCode).toBe(400);
  });
});
