import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

describe('projects', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(() => t.close());
  const call = (
    method: 'GET' | 'POST' | 'PUT' | 'PATCH',
    url: string,
    body?: unknown,
    headers?: Record<string, string>,
  ) => signedInject(t.app, { method, url, body, headers });

  it('creates with a generated id, Location and ETag, and reads it back', async () => {
    const created = await call('POST', '/v1/projects', { ownerId: 'user_1', name: 'Marketing site' });
    expect(created.statusCode).toBe(201);
    const project = created.json();
    expect(project).toMatchObject({
      ownerId: 'user_1',
      name: 'Marketing site',
      framework: null,
      settings: {},
      allowConcurrentBuilds: false,
      version: 1,
    });
    expect(project.id).toMatch(/^prj_[\w-]{12}$/);
    expect(created.headers.location).toBe(`/v1/projects/${project.id}`);
    expect(created.headers.etag).toBe('"1"');
    const read = await call('GET', `/v1/projects/${project.id}`);
    expect(read.statusCode).toBe(200);
    expect(read.json()).toEqual(project);
    expect(read.headers.etag).toBe('"1"');
  });

  it('creates with a client id and refuses a second project with that id', async () => {
    const body = {
      id: 'prj_client_1',
      ownerId: 'user_1',
      name: 'A',
      framework: 'nextjs',
      settings: { node: 20 },
      allowConcurrentBuilds: true,
    };
    const created = await call('POST', '/v1/projects', body);
    expect(created.statusCode).toBe(201);
    expect(created.json()).toMatchObject(body);
    const again = await call('POST', '/v1/projects', { ...body, name: 'B' });
    expect(again.statusCode).toBe(409);
    expect(again.json()).toMatchObject({ error: 'PROJECT_ALREADY_EXISTS', data: { projectId: 'prj_client_1' } });
  });

  it('validates every field and lists every problem', async () => {
    const res = await call('POST', '/v1/projects', {
      id: 'bad id!',
      ownerId: '',
      name: 'tab\there',
      framework: 7,
      settings: [],
      allowConcurrentBuilds: 'yes',
      extra: 1,
    });
    expect(res.statusCode).toBe(400);
    const paths = new Set(res.json().data.issues.map((i: { path: string }) => i.path));
    for (const path of [
      'body.id',
      'body.ownerId',
      'body.name',
      'body.framework',
      'body.settings',
      'body.allowConcurrentBuilds',
      'body.extra',
    ]) {
      expect(paths).toContain(path);
    }
    const missing = await call('POST', '/v1/projects', {});
    expect(
      missing
        .json()
        .data.issues.map((i: { path: string }) => i.path)
        .sort(),
    ).toEqual(['body.name', 'body.ownerId']);
  });

  it('refuses an id the API paths own (a project called batch could never be read)', async () => {
    const res = await call('POST', '/v1/projects', { id: 'batch', ownerId: 'u1', name: 'B' });
    expect(res.statusCode).toBe(400);
    expect(res.json().data.issues).toEqual([{ path: 'body.id', message: 'is reserved' }]);
  });

  it('refuses settings PostgreSQL could not store, or with keys over 128 characters, and creates nothing', async () => {
    const nul = await call(
      'POST',
      '/v1/projects',
      '{"ownerId":"owner_bad_settings","name":"n","settings":{"a":"\\u0000"}}',
    );
    expect(nul.statusCode).toBe(400);
    expect(nul.json().data.issues).toEqual([expect.objectContaining({ path: 'body.settings.a' })]);
    const surrogate = await call(
      'POST',
      '/v1/projects',
      '{"ownerId":"owner_bad_settings","name":"n","settings":{"a":["\\ud800"]}}',
    );
    expect(surrogate.statusCode).toBe(400);
    const longKey = await call('POST', '/v1/projects', {
      ownerId: 'owner_bad_settings',
      name: 'n',
      settings: { ['k'.repeat(129)]: 1 },
    });
    expect(longKey.statusCode).toBe(400);
    expect(longKey.json().data.issues.map((i: { path: string }) => i.path)).toContain('body.settings');
    const { rows } = await t.database.db.query(
      "select count(*)::int as n from projects where owner_id = 'owner_bad_settings'",
    );
    expect(rows[0]).toEqual({ n: 0 });
  });

  it('answers an unknown project with PROJECT_NOT_FOUND naming the id', async () => {
    for (const [method, body] of [['GET'], ['PUT', { ownerId: 'u', name: 'n' }], ['PATCH', { name: 'n' }]] as const) {
      const res = await call(method, '/v1/projects/prj_missing', body);
      expect(res.statusCode).toBe(404);
      expect(res.json()).toMatchObject({ error: 'PROJECT_NOT_FOUND', data: { projectId: 'prj_missing' } });
    }
  });

  it('replaces with PUT (omitted optional fields reset) and bumps the version', async () => {
    await call('POST', '/v1/projects', {
      id: 'prj_put',
      ownerId: 'u1',
      name: 'Old',
      framework: 'vite',
      settings: { a: 1 },
    });
    const res = await call('PUT', '/v1/projects/prj_put', { ownerId: 'u2', name: 'New' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({
      id: 'prj_put',
      ownerId: 'u2',
      name: 'New',
      framework: null,
      settings: {},
      version: 2,
    });
    expect(res.headers.etag).toBe('"2"');
    const renamed = await call('PUT', '/v1/projects/prj_put', { id: 'prj_other', ownerId: 'u2', name: 'New' });
    expect(renamed.statusCode).toBe(400);
  });

  it('merge-patches: null removes, objects merge, required fields stay', async () => {
    await call('POST', '/v1/projects', {
      id: 'prj_patch',
      ownerId: 'u1',
      name: 'P',
      framework: 'astro',
      settings: { a: 1, nested: { x: 1, y: 2 } },
    });
    const res = await call(
      'PATCH',
      '/v1/projects/prj_patch',
      { framework: null, settings: { a: null, b: 2, nested: { y: null } } },
      { 'content-type': 'application/merge-patch+json' },
    );
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ framework: null, settings: { b: 2, nested: { x: 1 } }, name: 'P', version: 2 });
    const removeName = await call('PATCH', '/v1/projects/prj_patch', { name: null });
    expect(removeName.statusCode).toBe(400);
    expect(removeName.json().data.issues).toEqual([{ path: 'body.name', message: 'cannot be removed' }]);
    // RFC 7396: an empty patch changes nothing; it is answered with the project at its version.
    const empty = await call('PATCH', '/v1/projects/prj_patch', {});
    expect(empty.statusCode).toBe(200);
    expect(empty.json()).toMatchObject({ version: 2, settings: { b: 2, nested: { x: 1 } } });
    expect(empty.headers.etag).toBe('"2"');
    expect((await call('GET', '/v1/projects/prj_patch')).json().version).toBe(2);
    // null on a defaulted field puts the default back.
    await call('PATCH', '/v1/projects/prj_patch', { allowConcurrentBuilds: true });
    const reset = await call('PATCH', '/v1/projects/prj_patch', { allowConcurrentBuilds: null });
    expect(reset.statusCode).toBe(200);
    expect(reset.json()).toMatchObject({ allowConcurrentBuilds: false, version: 4 });
  });

  it('applies If-Match: current passes, stale is 409 VERSION_CONFLICT with the current version', async () => {
    await call('POST', '/v1/projects', { id: 'prj_etag', ownerId: 'u1', name: 'E' });
    const ok = await call('PATCH', '/v1/projects/prj_etag', { name: 'E2' }, { 'if-match': '"1"' });
    expect(ok.statusCode).toBe(200);
    const weak = await call('PATCH', '/v1/projects/prj_etag', { name: 'E3' }, { 'if-match': 'W/"2"' });
    expect(weak.statusCode).toBe(200);
    const stale = await call(
      'PUT',
      '/v1/projects/prj_etag',
      { ownerId: 'u1', name: 'lost update' },
      { 'if-match': '"1"' },
    );
    expect(stale.statusCode).toBe(409);
    expect(stale.json()).toMatchObject({ error: 'VERSION_CONFLICT', data: { version: 3, expected: 1 } });
    expect(stale.json().message).toContain('If-Match: "3"');
    const garbage = await call('PATCH', '/v1/projects/prj_etag', { name: 'x' }, { 'if-match': 'yesterday' });
    expect(garbage.statusCode).toBe(400);
    expect((await call('GET', '/v1/projects/prj_etag')).json()).toMatchObject({ name: 'E3', version: 3 });
    // A list passes when any of its tags is the current version.
    const staleList = await call('PATCH', '/v1/projects/prj_etag', { name: 'x' }, { 'if-match': '"1", "2"' });
    expect(staleList.statusCode).toBe(409);
    expect(staleList.json().data).toMatchObject({ version: 3, expected: [1, 2] });
    const list = await call('PATCH', '/v1/projects/prj_etag', { name: 'E4' }, { 'if-match': '"2", "3"' });
    expect(list.statusCode).toBe(200);
    expect(list.json()).toMatchObject({ name: 'E4', version: 4 });
  });

  it('serialises concurrent patches: each one lands, versions count them', async () => {
    await call('POST', '/v1/projects', { id: 'prj_race', ownerId: 'u1', name: 'R', settings: {} });
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => call('PATCH', '/v1/projects/prj_race', { settings: { [`k${i}`]: i } })),
    );
    expect(results.every((r) => r.statusCode === 200)).toBe(true);
    const final = (await call('GET', '/v1/projects/prj_race')).json();
    expect(final.version).toBe(11);
    expect(Object.keys(final.settings)).toHaveLength(10);
  });

  it('reads a batch in the order asked, with the ids not found', async () => {
    await call('POST', '/v1/projects', { id: 'prj_b1', ownerId: 'u', name: 'b1' });
    await call('POST', '/v1/projects', { id: 'prj_b2', ownerId: 'u', name: 'b2' });
    const res = await call('GET', '/v1/projects/batch?ids=prj_b2,prj_none,prj_b1,prj_b2');
    expect(res.statusCode).toBe(200);
    expect(res.json().projects.map((p: { id: string }) => p.id)).toEqual(['prj_b2', 'prj_b1']);
    expect(res.json().notFound).toEqual(['prj_none']);
    const tooMany = Array.from({ length: 101 }, (_, i) => `p${i}`).join(',');
    expect((await call('GET', `/v1/projects/batch?ids=${tooMany}`)).statusCode).toBe(400);
    const bad = await call('GET', '/v1/projects/batch?ids=ok,bad%20id');
    expect(bad.statusCode).toBe(400);
    expect(bad.json().data.issues[0].path).toBe('query.ids.1');
  });
});
