import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_BUILD_CREDITS } from '../../src/domain/build-pricing';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

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
});
