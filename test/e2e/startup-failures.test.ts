import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { runKilnExpectingFailure, spawnKiln } from '../helpers/kiln-process';

/** A port nothing listens on: bound once by the OS, then closed. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Every start-up failure says, in one line, which dependency failed, where (without the password), what it said and
 * the fix; a failed start leaves no lock behind.
 */
describe('start-up failures', () => {
  let dataDir: string;
  let held: Server;
  let heldPort: number;
  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-startup-'));
    held = createServer();
    await new Promise<void>((resolve) => held.listen(0, '127.0.0.1', resolve));
    heldPort = (held.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise((resolve) => held.close(resolve));
    await rm(dataDir, { recursive: true, force: true });
  });

  const base = () => ({ DATA_DIR: dataDir, HMAC_SECRET: TEST_SECRET, PORT: '0', HOST: '127.0.0.1' });

  /** The one line Kiln printed on stderr about the failure. */
  const failureLine = (output: string) => output.split('\n').find((line) => line.startsWith('kiln: could not start'));

  it('names PostgreSQL, its address without the password, and the refused connection', async () => {
    const port = await closedPort();
    const { code, output } = await runKilnExpectingFailure({
      ...base(),
      DATABASE_URL: `postgres://kiln:hunter2@127.0.0.1:${port}/kiln`,
    });
    expect(code).toBe(1);
    const line = failureLine(output);
    expect(line).toContain(`PostgreSQL at postgres://kiln:***@127.0.0.1:${port}/kiln`);
    expect(line).toContain('connection refused');
    expect(line).toContain('start PostgreSQL there, or fix DATABASE_URL');
    expect(output).not.toContain('hunter2');
  });

  it.skipIf(!DATABASE_URL)('says how to create a database that does not exist', async () => {
    const url = new URL(DATABASE_URL as string);
    url.pathname = '/kiln_no_such_database';
    const { code, output } = await runKilnExpectingFailure({ ...base(), DATABASE_URL: url.toString() });
    expect(code).toBe(1);
    expect(failureLine(output)).toMatch(
      /database "kiln_no_such_database" does not exist; create it with `createdb -h \S+ -p \d+( -U \S+)? kiln_no_such_database`/,
    );
  });

  // On the embedded database (the store opens after it): the failure is Redis's alone.
  it('names Redis, its address without the password, and that it can be left out', async () => {
    const port = await closedPort();
    const { code, output } = await runKilnExpectingFailure({
      ...base(),
      REDIS_URL: `redis://:s3cret@127.0.0.1:${port}`,
    });
    expect(code).toBe(1);
    const line = failureLine(output);
    expect(line).toContain(`Redis at redis://:***@127.0.0.1:${port}`);
    expect(line).toContain('connection refused');
    expect(line).toContain('or unset it');
    expect(output).not.toContain('s3cret');
  }, 90_000);

  it('says the port is in use, and leaves no lock on the embedded database behind', async () => {
    const { code, output } = await runKilnExpectingFailure({ ...base(), PORT: String(heldPort) });
    expect(code).toBe(1);
    expect(failureLine(output)).toContain(`listening on 127.0.0.1:${heldPort}: the port is already in use`);
    expect(existsSync(join(dataDir, 'pgdata.lock'))).toBe(false);
    // And the directory opens at once for the next start (no stale lock to wait out or delete by hand).
    const kiln = await spawnKiln(base());
    await kiln.stop();
  }, 90_000);

  it('refuses to make up a secret when processes share a database, and says what to set', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kiln-shared-secret-'));
    try {
      // The database need not answer: the secret is settled before anything is opened.
      const env = { DATA_DIR: dir, PORT: '0', DATABASE_URL: 'postgres://kiln@127.0.0.1:1/kiln' };
      const { code, output } = await runKilnExpectingFailure(env);
      expect(code).toBe(2);
      expect(output).toContain('HMAC_SECRET: required when DATABASE_URL is set');
      expect(output).toContain('same value on every host');
      // Nothing was generated or saved that a later start could pick up.
      expect(existsSync(join(dir, 'hmac-secret'))).toBe(false);
      // kiln sign says the same rather than signing with a secret of its own.
      const sign = spawnSync(process.execPath, ['bin/kiln.mjs', 'sign', 'GET', '/v1/ping'], {
        cwd: new URL('../..', import.meta.url).pathname,
        env: { PATH: process.env.PATH ?? '', ...env },
        encoding: 'utf8',
      });
      expect(sign.status).toBe(2);
      expect(sign.stderr).toContain('HMAC_SECRET: required when DATABASE_URL is set');
      expect(existsSync(join(dir, 'hmac-secret'))).toBe(false);
      // A secret an earlier (embedded) start saved here: the refusal says how to keep it.
      await writeFile(join(dir, 'hmac-secret'), 'saved-by-an-earlier-start-0123');
      const again = await runKilnExpectingFailure(env);
      expect(again.code).toBe(2);
      expect(again.output).toContain(`HMAC_SECRET="$(cat ${join(dir, 'hmac-secret')})" keeps your clients working`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('announces a generated secret with its path, and saves exactly the secret', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kiln-secret-'));
    try {
      const kiln = await spawnKiln({ DATA_DIR: dir });
      await kiln.stop();
      const file = join(dir, 'hmac-secret');
      expect(kiln.output()).toContain(`generated a new HMAC secret and saved it in ${file}`);
      expect(kiln.output()).toContain('first start: initialising the embedded database');
      const saved = await readFile(file, 'utf8');
      expect(saved).toMatch(/^[0-9a-f]{64}$/);
      // A later start reads it back, tolerating the newline an editor adds, and does not announce a new one.
      await writeFile(file, `${saved}\n`);
      const again = await spawnKiln({ DATA_DIR: dir });
      await again.stop();
      expect(again.output()).toContain(`using the HMAC secret saved in ${file}`);
      expect(again.output()).not.toContain('first start');
      expect(await readFile(file, 'utf8')).toBe(`${saved}\n`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
