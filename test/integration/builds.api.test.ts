import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUILD_STATES, canTransition, validNextStates } from '../../src/domain/build-states';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

describe('builds API (external executor: transitions come through the API)', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ BUILD_EXECUTOR: 'external' });
    for (const userId of ['user_1', 'u']) {
      const granted = await signedInject(t.app, {
        method: 'POST',
        url: '/v1/credits/grant',
        body: { userId, credits: 1_000_000, reason: 'test budget', source: 'test' },
      });
      expect(granted.statusCode).toBe(200);
    }
  });
  afterAll(() => t.close());

  const call = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown, headers?: Record<string, string>) =>
    signedInject(t.app, { method, url, body, headers });
  let projects = 0;
  const project = async (allowConcurrentBuilds = false) => {
    const id = `prj_b${++projects}_${Date.now()}`;
    const res = await call('POST', '/v1/projects', { id, ownerId: 'u1', name: id, allowConcurrentBuilds });
    expect(res.statusCode).toBe(201);
    return id;
  };
  const create = (projectId: string, extra: Record<string, unknown> = {}) =>
    call('POST', '/v1/builds', { projectId, userId: 'user_1', ...extra });
  /** A build driven into `state` through allowed transitions. */
  const buildIn = async (state: (typeof BUILD_STATES)[number]) => {
    const res = await create(await project());
    const id = res.json().id as string;
    const path = {
      queued: [],
      building: ['building'],
      deployed: ['building', 'deployed'],
      failed: ['building', 'failed'],
      cancelled: ['cancelled'],
    }[state];
    for (const step of path) expect((await call('PATCH', `/v1/builds/${id}`, { state: step })).statusCode).toBe(200);
    return id;
  };

  it('queues a build with its first event and its state', async () => {
    const projectId = await project();
    const res = await create(projectId, { estimatedCredits: 150, metadata: { features: ['ssr'] } });
    expect(res.statusCode).toBe(201);
    const build = res.json();
    expect(build).toMatchObject({
      projectId,
      userId: 'user_1',
      state: 'queued',
      previousState: null,
      validNextStates: ['building', 'cancelled'],
      estimatedCredits: 150,
      metadata: { features: ['ssr'] },
      startedAt: null,
    });
    expect(res.headers.location).toBe(`/v1/builds/${build.id}`);
    const events = await call('GET', `/v1/builds/${build.id}/events`);
    expect(events.json().events).toEqual([expect.objectContaining({ seq: 1, type: 'queued' })]);
    expect((await call('GET', `/v1/builds/${build.id}`)).json()).toEqual(build);
  });

  it('refuses a build for an unknown project with PROJECT_NOT_FOUND and creates nothing', async () => {
    const res = await create('prj_nowhere');
    expect(res.statusCode).toBe(404);
    expect(res.json()).toMatchObject({ error: 'PROJECT_NOT_FOUND', data: { projectId: 'prj_nowhere' } });
    expect((await call('GET', '/v1/builds?projectId=prj_nowhere')).json().builds).toEqual([]);
  });

  it('lets exactly one of 50 concurrent creates in; the others get 429 with the active build and an ETA', async () => {
    const projectId = await project();
    const results = await Promise.all(Array.from({ length: 50 }, () => create(projectId)));
    const created = results.filter((r) => r.statusCode === 201);
    const refused = results.filter((r) => r.statusCode === 429);
    expect(created).toHaveLength(1);
    expect(refused).toHaveLength(49);
    const activeId = created[0].json().id;
    for (const r of refused) {
      const body = r.json();
      expect(body.error).toBe('BUILD_ALREADY_RUNNING');
      expect(body.data).toMatchObject({ activeBuildId: activeId, state: 'queued', etaSeconds: 120 });
      expect(new Date(body.data.estimatedCompletionAt).getTime()).toBeGreaterThan(Date.now());
      expect(r.headers['retry-after']).toBe('120');
    }
    expect((await call('GET', `/v1/builds?projectId=${projectId}`)).json().builds).toHaveLength(1);
  });

  it('lets concurrent builds in when the project allows them', async () => {
    const projectId = await project(true);
    const results = await Promise.all(Array.from({ length: 20 }, () => create(projectId)));
    expect(results.every((r) => r.statusCode === 201)).toBe(true);
  });

  it('frees the slot when the active build ends, and uses the project history for the ETA', async () => {
    const projectId = await project();
    const first = (await create(projectId)).json().id;
    await call('PATCH', `/v1/builds/${first}`, { state: 'building' });
    await call('PATCH', `/v1/builds/${first}`, { state: 'deployed', actualCredits: 10 });
    const second = await create(projectId);
    expect(second.statusCode).toBe(201);
    const third = await create(projectId);
    expect(third.statusCode).toBe(429);
    expect(third.json().data.basedOn).toBe('project history');
    expect(third.json().data.etaSeconds).toBeGreaterThanOrEqual(1);
  });

  for (const from of BUILD_STATES) {
    for (const to of BUILD_STATES) {
      it(`PATCH ${from} → ${to} is ${canTransition(from, to) ? 'applied' : 'refused with 409'}`, async () => {
        const id = await buildIn(from);
        const res = await call('PATCH', `/v1/builds/${id}`, { state: to, reason: 'test' });
        if (canTransition(from, to)) {
          expect(res.statusCode).toBe(200);
          expect(res.json()).toMatchObject({ state: to, previousState: from, validNextStates: validNextStates(to) });
        } else {
          expect(res.statusCode).toBe(409);
          expect(res.json()).toMatchObject({
            error: 'INVALID_STATE_TRANSITION',
            data: { currentState: from, requestedState: to, validNextStates: validNextStates(from) },
          });
          expect((await call('GET', `/v1/builds/${id}`)).json().state).toBe(from);
        }
      });
    }
  }

  it('records the outcome fields and writes one event per transition', async () => {
    const id = (await create(await project())).json().id;
    await call('PATCH', `/v1/builds/${id}`, { state: 'building' });
    const done = await call('PATCH', `/v1/builds/${id}`, {
      state: 'failed',
      error: 'tests failed',
      reason: 'ci_failed',
      actualCredits: 7,
    });
    expect(done.json()).toMatchObject({
      state: 'failed',
      error: 'tests failed',
      reason: 'ci_failed',
      actualCredits: 7,
    });
    expect(done.json().durationMs).toBeGreaterThanOrEqual(0);
    const types = (await call('GET', `/v1/builds/${id}/events`)).json().events.map((e: { type: string }) => e.type);
    expect(types).toEqual(['queued', 'started', 'failed']);
  });

  it('cancels a queued build and refuses to cancel an ended one', async () => {
    const id = (await create(await project())).json().id;
    const cancelled = await call('POST', `/v1/builds/${id}/cancel`, { reason: 'user asked' });
    expect(cancelled.statusCode).toBe(200);
    expect(cancelled.json()).toMatchObject({ state: 'cancelled', reason: 'user asked' });
    const again = await call('POST', `/v1/builds/${id}/cancel`);
    expect(again.statusCode).toBe(409);
    expect(again.json().data.validNextStates).toEqual([]);
    expect((await call('POST', '/v1/builds/bld_missing/cancel')).statusCode).toBe(404);
  });

  it('replays an idempotent create instead of answering 429', async () => {
    const body = { projectId: await project(), userId: 'u' };
    const keyed = await call('POST', '/v1/builds', body, { 'idempotency-key': 'build-once' });
    expect(keyed.statusCode).toBe(201);
    const again = await call('POST', '/v1/builds', body, { 'idempotency-key': 'build-once' });
    expect(again.statusCode).toBe(201);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body).toBe(keyed.body);
  });

  it('lists newest first with filters and cursor pages that miss nothing and repeat nothing', async () => {
    const projectId = await project(true);
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) ids.push((await create(projectId)).json().id);
    await call('PATCH', `/v1/builds/${ids[0]}`, { state: 'cancelled' });
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const res = await call('GET', `/v1/builds?projectId=${projectId}&limit=3${cursor ? `&cursor=${cursor}` : ''}`);
      expect(res.statusCode).toBe(200);
      seen.push(...res.json().builds.map((b: { id: string }) => b.id));
      cursor = res.json().nextCursor;
    } while (cursor);
    expect(seen).toEqual([...ids].reverse());
    const cancelled = await call('GET', `/v1/builds?projectId=${projectId}&state=cancelled`);
    expect(cancelled.json().builds.map((b: { id: string }) => b.id)).toEqual([ids[0]]);
    expect((await call('GET', '/v1/builds?cursor=not-a-cursor')).statusCode).toBe(400);
    expect((await call('GET', '/v1/builds?state=done')).statusCode).toBe(400);
    expect((await call('GET', '/v1/builds?limit=1000')).statusCode).toBe(400);
  });

  it('validates bodies: every bad field listed, nothing created', async () => {
    const res = await call('POST', '/v1/builds', {
      projectId: 'bad id',
      userId: '',
      estimatedCredits: -1,
      extra: true,
    });
    expect(res.statusCode).toBe(400);
    const paths = [...new Set(res.json().data.issues.map((i: { path: string }) => i.path))].sort();
    expect(paths).toEqual(['body.estimatedCredits', 'body.extra', 'body.projectId', 'body.userId']);
    const patch = await call('PATCH', '/v1/builds/whatever', { state: 'exploded' });
    expect(patch.statusCode).toBe(400);
  });
});
