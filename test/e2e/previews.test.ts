import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { type KilnProcess, type Shared, sharedEnvironment, spawnKiln } from '../helpers/kiln-process';
import { rawGet } from '../helpers/raw-http';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const SECRET_MARK = 'outside-secret-3f9a1c';

/**
 * A build command that leaves, in its preview directory, a page, a file and links of every kind: to a file inside
 * (served), and out of the directory to a secret next to DATA_DIR's hmac-secret, to a file under /etc, to /etc
 * itself, to DATA_DIR — plus a directory and a fifo, which are not files.
 */
const PREVIEW_COMMAND = [
  'cd "$KILN_PREVIEW_DIR"',
  `printf '<h1>%s</h1>' "$KILN_BUILD_ID" > index.html`,
  'echo inside-file > inside.txt',
  'ln -s inside.txt link-inside.txt',
  'mkdir sub && echo sub-page > sub/index.html',
  'ln -s sub sub-link',
  'ln -s "$KILN_WORKSPACE/../../outside-secret.txt" secret.txt',
  'ln -s "$KILN_WORKSPACE/../../hmac-secret" hmac-secret',
  'ln -s /etc/hostname hostname.txt',
  'ln -s /etc etc',
  'ln -s ../../.. up',
  'mkfifo fifo',
].join(' && ');

/** A build whose metadata says `report` only prints a result line out of bounds (credits past int4, `//host`). */
const BUILD_COMMAND = `if grep -q '"report":true'; then echo '{"type":"result","credits":3000000000,"previewUrl":"//evil.example.com/x"}'; else ${PREVIEW_COMMAND}; fi`;

type Build = {
  id: string;
  state: string;
  error: string | null;
  actualCredits: number | null;
  previewUrl: string | null;
};

describe('what a build command leaves behind', () => {
  let shared: Shared;
  let kiln: KilnProcess;
  let other: KilnProcess;
  const otherDirs: string[] = [];
  let buildId: string;
  let api: ReturnType<typeof createKilnClient>;
  let projects = 0;
  const runBuild = async (metadata: Record<string, unknown> = {}): Promise<Build> => {
    const project = { id: `prj_preview_${++projects}_${Date.now()}`, ownerId: 'u', name: 'preview' };
    expect((await api('POST', '/v1/projects', project)).status).toBe(201);
    const created = await api<Build>('POST', '/v1/builds', { projectId: project.id, userId: 'user_preview', metadata });
    expect(created.status).toBe(201);
    const deadline = Date.now() + 30_000;
    for (;;) {
      const build = await api<Build>('GET', `/v1/builds/${created.body.id}`);
      if (build.body.state === 'deployed') return build.body;
      if (build.body.state === 'failed' || Date.now() > deadline) {
        throw new Error(`build did not deploy: ${JSON.stringify(build.body)}`);
      }
      await sleep(100);
    }
  };
  beforeAll(async () => {
    shared = await sharedEnvironment();
    // A secret beside Kiln's own files, and an hmac-secret file where a generated one would be.
    await writeFile(join(shared.env.DATA_DIR, 'outside-secret.txt'), `${SECRET_MARK}\n`);
    await writeFile(join(shared.env.DATA_DIR, 'hmac-secret'), `${SECRET_MARK}-hmac\n`);
    kiln = await spawnKiln({ ...shared.env, RUNNER_CONCURRENCY: '1', BUILD_COMMAND });
    api = createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });
    const grant = { userId: 'user_preview', credits: 1000, reason: 'test budget', source: 'test' };
    expect((await api('POST', '/v1/credits/grant', grant)).status).toBe(200);
    buildId = (await runBuild()).id;
  }, 60_000);
  afterAll(async () => {
    await kiln?.stop('SIGKILL');
    await other?.stop('SIGKILL');
    await shared?.cleanup();
    for (const dir of otherDirs) await rm(dir, { recursive: true, force: true });
  });

  /**
   * The same answers from every place a preview is served from: the disk of the process that ran the build, another
   * process on a data directory of its own (PostgreSQL: the copy stored in the database with the build's end), and
   * the process that ran it once its workspace is gone (pruned, or the host replaced).
   */
  describe.each([
    ['the process that ran the build, from its disk', () => kiln.url, async () => buildId],
    ...(DATABASE_URL
      ? [
          [
            'another process on another data directory, from the database',
            () => other.url,
            async () => {
              const dataDir = await mkdtemp(join(tmpdir(), 'kiln-e2e-other-'));
              otherDirs.push(dataDir);
              other = await spawnKiln({ ...shared.env, DATA_DIR: dataDir });
              // Nothing of the build is on this process's disk.
              expect(existsSync(join(dataDir, 'builds', buildId))).toBe(false);
              return buildId;
            },
          ] as const,
        ]
      : []),
    [
      'the process that ran the build once its workspace is gone, from the database',
      () => kiln.url,
      async () => {
        // A build of its own, whose workspace goes: the other blocks keep theirs.
        const own = (await runBuild()).id;
        await rm(join(shared.env.DATA_DIR, 'builds', own), { recursive: true, force: true });
        return own;
      },
    ],
  ] as const)('served by %s', (_where, from, prepare) => {
    let buildId: string;
    beforeAll(async () => {
      buildId = await prepare();
    }, 60_000);

    it('serves the page, a file, a link to a file inside and a directory link inside', async () => {
      const page = await fetch(`${from()}/previews/${buildId}/`);
      expect(page.status).toBe(200);
      expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
      // Untrusted build output runs sandboxed, in an origin of its own.
      expect(page.headers.get('content-security-policy')).toMatch(/^sandbox allow-scripts/);
      expect(page.headers.get('x-content-type-options')).toBe('nosniff');
      expect(await page.text()).toBe(`<h1>${buildId}</h1>`);
      for (const [path, text] of [
        ['inside.txt', 'inside-file\n'],
        ['link-inside.txt', 'inside-file\n'],
        ['sub/', 'sub-page\n'],
        ['sub-link/index.html', 'sub-page\n'],
      ]) {
        const res = await fetch(`${from()}/previews/${buildId}/${path}`);
        expect(res.status, path).toBe(200);
        expect(await res.text()).toBe(text);
      }
    });

    it.each([
      ['a link to a secret outside', 'secret.txt'],
      ['a link to the hmac-secret file', 'hmac-secret'],
      ['a link to a file under /etc', 'hostname.txt'],
      ['a file through a directory link to /etc', 'etc/hostname'],
      ['a file through a directory link out of the workspace', 'up/outside-secret.txt'],
      ['a directory', 'sub'],
      ['a directory link', 'etc'],
      ['a fifo', 'fifo'],
      ['a missing file', 'missing.txt'],
    ])('answers 404 in the envelope for %s', async (_what, path) => {
      const res = await fetch(`${from()}/previews/${buildId}/${path}`);
      expect(res.status).toBe(404);
      expect(res.headers.get('x-request-id')).toBeTruthy();
      const text = await res.text();
      expect(text).not.toContain(SECRET_MARK);
      const body = JSON.parse(text) as { error: string; requestId: string };
      expect(body.error).toBe('NOT_FOUND');
      expect(body.requestId).toBe(res.headers.get('x-request-id'));
    });

    it.each([
      '../../outside-secret.txt',
      '%2e%2e/%2e%2e/outside-secret.txt',
      '%2E%2E/%2E%2E/hmac-secret',
      '..%2f..%2foutside-secret.txt',
      'sub/../../../outside-secret.txt',
      '..\\..\\outside-secret.txt',
    ])('answers 404 to the literal path %s sent raw', async (rest) => {
      const res = await rawGet(from(), `/previews/${buildId}/${rest}`);
      expect(res.status).toBe(404);
      expect(res.body).not.toContain(SECRET_MARK);
      expect(JSON.parse(res.body).error).toBe('NOT_FOUND');
      expect(res.headers['x-request-id']).toBeTruthy();
    });
  });

  it('ignores a reported credits figure past its bound and a protocol-relative preview URL, and says so', async () => {
    // 3000000000 does not fit the final transaction's int4: before the bound the build never finished.
    const build = await runBuild({ report: true });
    expect(build.actualCredits).toBe(10); // priced from its duration: one started minute at CREDITS_PER_BUILD_MINUTE
    expect(build.previewUrl).toBeNull();
    const events = await api<{ events: { type: string; message?: string }[] }>('GET', `/v1/builds/${build.id}/events`);
    expect(events.body.events.map((e) => e.message)).toContain(
      'credits 3000000000 out of range 0..10000000; ignored; previewUrl "//evil.example.com/x" is not an http:// or https:// URL or a path under /previews/; ignored',
    );
  });
});
