import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatabaseUnavailableError } from '../../src/db/database';
import { MAX_BUILD_CREDITS } from '../../src/domain/build-pricing';
import { ApiError } from '../../src/domain/errors';
import { getLedger } from '../../src/services/credits';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const cursorOf = (text: string) => Buffer.from(text).toString('base64url');

describe('bounds the API enforces on what it is told', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ BUILD_EXECUTOR: 'external' });
    const granted = await signedInject(t.app, {
      method: 'POST',
      url: '/v1/credits/grant',
      body: { userId: 'user_bounds', credits: 1_000_000, reason: 'test budget', source: 'test' },
    });
    expect(granted.statusCode).toBe(200);
  });
  afterAll(() => t.close());

  const call = (method: 'GET' | 'POST' | 'PATCH', url: string, body?: unknown, headers?: Record<string, string>) =>
    signedInject(t.app, { method, url, body, headers });
  let projects = 0;
  const newBuild = async (extra: Record<string, unknown> = {}) => {
    const projectId = `prj_bounds_${++projects}_${Date.now()}`;
    expect((await call('POST', '/v1/projects', { id: projectId, ownerId: 'u', name: projectId })).statusCode).toBe(201);
    const res = await call('POST', '/v1/builds', { projectId, userId: 'user_bounds', ...extra });
    expect(res.statusCode).toBe(201);
    return res.json() as { id: string; projectId: string };
  };
  const issuePaths = (res: { json(): { data?: { issues?: { path: string }[] } } }) =>
    (res.json().data?.issues ?? []).map((i) => i.path);

  describe('previewUrl of PATCH /v1/builds/:id', () => {
    it.each([
      '//evil.example.com/x',
      '//evil.example.com',
      'https://',
      'http:///x',
      'javascript:alert(1)',
      'ftp://example.com/',
      '/v1/credits/grant',
      '/previews/../v1/builds',
      '/previews/%2E%2E/x',
      '/previews/a\\b',
      '/\\evil.example.com',
    ])('refuses %j with 400 naming body.previewUrl, and changes nothing', async (previewUrl) => {
      const build = await newBuild();
      const res = await call('PATCH', `/v1/builds/${build.id}`, { state: 'building', previewUrl });
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toBe('VALIDATION_ERROR');
      expect(issuePaths(res)).toEqual(['body.previewUrl']);
      expect((await call('GET', `/v1/builds/${build.id}`)).json().state).toBe('queued');
    });

    it.each([
      'https://preview.example.com/b/?x=1#top',
      'http://localhost:8080',
      '/previews/bld_1/',
      '/previews/b/a..b',
    ])('accepts %j', async (previewUrl) => {
      const build = await newBuild();
      expect((await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' })).statusCode).toBe(200);
      const res = await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', previewUrl, actualCredits: 1 });
      expect(res.statusCode).toBe(200);
      expect(res.json().previewUrl).toBe(previewUrl);
    });
  });

  describe('credits a build may be said to cost', () => {
    it('refuses estimatedCredits and actualCredits past MAX_BUILD_CREDITS', async () => {
      const project = `prj_bounds_max_${Date.now()}`;
      expect((await call('POST', '/v1/projects', { id: project, ownerId: 'u', name: project })).statusCode).toBe(201);
      const create = await call('POST', '/v1/builds', {
        projectId: project,
        userId: 'user_bounds',
        estimatedCredits: MAX_BUILD_CREDITS + 1,
      });
      expect(create.statusCode).toBe(400);
      expect(issuePaths(create)).toEqual(['body.estimatedCredits']);
      const build = await newBuild();
      await call('PATCH', `/v1/builds/${build.id}`, { state: 'building' });
      const patch = await call('PATCH', `/v1/builds/${build.id}`, { state: 'deployed', actualCredits: 3_000_000_000 });
      expect(patch.statusCode).toBe(400);
      expect(issuePaths(patch)).toEqual(['body.actualCredits']);
    });
  });

  describe('numbers past the database types', () => {
    it.each([
      ['after=2147483648', 'query.after'],
      ['after=99999999999999999999', 'query.after'],
      ['after=-1', 'query.after'],
      ['after=abc', 'query.after'],
      ['after=1.5', 'query.after'],
      ['limit=0', 'query.limit'],
      ['limit=1001', 'query.limit'],
    ])('GET /v1/builds/:id/events?%s → 400 naming %s', async (query, path) => {
      const build = await newBuild();
      const res = await call('GET', `/v1/builds/${build.id}/events?${query}`);
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toBe('VALIDATION_ERROR');
      expect(issuePaths(res)).toEqual([path]);
    });

    it('GET /v1/builds/:id/events?after=2147483647 (the largest seq) → 200, no events', async () => {
      const build = await newBuild();
      const res = await call('GET', `/v1/builds/${build.id}/events?after=2147483647`);
      expect(res.statusCode).toBe(200);
      expect(res.json()).toEqual({ events: [] });
    });

    it.each([
      ['?after=2147483648', {}, 'query.after'],
      ['?after=-1', {}, 'query.after'],
      ['', { 'last-event-id': '2147483648' }, 'headers.last-event-id'],
      ['', { 'last-event-id': 'abc' }, 'headers.last-event-id'],
      ['', { 'last-event-id': '-3' }, 'headers.last-event-id'],
    ])('GET /v1/builds/:id/events/stream%s %j → 400 naming %s, no stream opened', async (query, headers, path) => {
      const build = await newBuild();
      const res = await call('GET', `/v1/builds/${build.id}/events/stream${query}`, undefined, headers);
      expect(res.statusCode).toBe(400);
      expect(res.headers['content-type']).toContain('application/json');
      expect(issuePaths(res)).toEqual([path]);
    });

    it('resumes a stream after Last-Event-ID', async () => {
      const build = await newBuild();
      expect((await call('PATCH', `/v1/builds/${build.id}`, { state: 'cancelled' })).statusCode).toBe(200);
      const res = await call('GET', `/v1/builds/${build.id}/events/stream`, undefined, { 'last-event-id': '1' });
      expect(res.statusCode).toBe(200);
      expect(res.body).not.toContain('id: 1\n');
      expect(res.body).toContain('id: 2\nevent: cancelled\n');
    });

    it.each([
      ['abc', 'letters'],
      ['99999999999999999999', 'past bigint'],
      ['0', 'zero'],
      ['-1', 'negative'],
      ['1.5', 'a fraction'],
    ])('GET /v1/credits/ledger/:userId?cursor=%s (%s) → 400 naming query.cursor', async (cursor) => {
      const res = await call('GET', `/v1/credits/ledger/user_bounds?cursor=${cursor}`);
      expect(res.statusCode).toBe(400);
      expect(issuePaths(res)).toEqual(['query.cursor']);
    });

    it('the ledger cursor: the largest allowed answers, and the service refuses a bad one itself', async () => {
      const res = await call('GET', '/v1/credits/ledger/user_bounds?cursor=999999999999999999');
      expect(res.statusCode).toBe(200);
      expect(res.json().entries.length).toBeGreaterThan(0);
      for (const cursor of ['abc', '99999999999999999999', '0']) {
        const refused = await getLedger(t.database.db, 'user_bounds', cursor, 10).catch((error: unknown) => error);
        expect(refused).toBeInstanceOf(ApiError);
        expect((refused as ApiError).code).toBe('VALIDATION_ERROR');
      }
    });

    it.each([
      ['a NUL in the id', cursorOf('2026-01-01T00:00:00.000Z|a\u0000b')],
      ['a year before PostgreSQL', cursorOf('-271821-04-20T00:00:00.000Z|abc')],
      ['a year after PostgreSQL', cursorOf('+275760-09-13T00:00:00.000Z|abc')],
      ['a date that is not one', cursorOf('2026-13-45T99:00:00.000Z|abc')],
      ['three parts', cursorOf('2026-01-01T00:00:00.000Z|abc|def')],
      ['not base64url', 'a+b/c='],
      ['too long', 'A'.repeat(201)],
    ])('GET /v1/builds?cursor= with %s → 400 naming query.cursor', async (_what, cursor) => {
      const res = await call('GET', `/v1/builds?cursor=${encodeURIComponent(cursor)}`);
      expect(res.statusCode).toBe(400);
      expect(issuePaths(res)).toEqual(['query.cursor']);
    });

    it('GET /v1/builds pages with the cursors Kiln gives, and bounds limit', async () => {
      const first = await newBuild();
      await newBuild();
      const page = await call('GET', '/v1/builds?limit=1');
      expect(page.statusCode).toBe(200);
      const next = await call('GET', `/v1/builds?limit=1&cursor=${page.json().nextCursor}`);
      expect(next.statusCode).toBe(200);
      expect(next.json().builds[0].id).not.toBe(page.json().builds[0].id);
      expect(first.id).toBeTruthy();
      for (const limit of ['0', '101', '99999999999999999999']) {
        expect(issuePaths(await call('GET', `/v1/builds?limit=${limit}`))).toEqual(['query.limit']);
      }
    });
  });

  describe('an event stream whose reads fail', () => {
    const failEventReads = (error: () => Error) => {
      const { db } = t.database;
      const query = db.query.bind(db);
      db.query = ((sql: string, params?: readonly unknown[]) =>
        sql.includes('from build_events') ? Promise.reject(error()) : query(sql, params)) as typeof db.query;
      return () => {
        db.query = query;
      };
    };

    it('ends with an `event: error` frame holding the envelope when the failure will not pass', async () => {
      const build = await newBuild();
      const restore = failEventReads(() => new Error('relation "build_events_secret" does not exist'));
      try {
        const res = await call('GET', `/v1/builds/${build.id}/events/stream`);
        expect(res.statusCode).toBe(200);
        expect(res.body).not.toContain('build_events_secret');
        const frame = /event: error\ndata: (.*)\n\n$/.exec(res.body);
        expect(frame).not.toBeNull();
        const envelope = JSON.parse(frame?.[1] ?? '{}');
        expect(envelope).toMatchObject({ error: 'INTERNAL_ERROR', requestId: res.headers['x-request-id'] });
        expect(Object.keys(envelope).sort()).toEqual(['correlationId', 'error', 'message', 'requestId', 'timestamp']);
      } finally {
        restore();
      }
    });

    it('keeps retrying on the poll while the database is unavailable, then delivers', async () => {
      const build = await newBuild();
      const restore = failEventReads(() => new DatabaseUnavailableError(new Error('Connection terminated')));
      let settled = false;
      const pending = call('GET', `/v1/builds/${build.id}/events/stream`).finally(() => {
        settled = true;
      });
      try {
        await sleep(2_500); // two polls at least
        expect(settled).toBe(false);
      } finally {
        restore();
      }
      expect((await call('PATCH', `/v1/builds/${build.id}`, { state: 'cancelled' })).statusCode).toBe(200);
      const res = await pending;
      expect(res.body).not.toContain('event: error');
      expect(res.body).toContain('id: 1\nevent: queued\n');
      expect(res.body).toContain('id: 2\nevent: cancelled\n');
    });
  });
});
