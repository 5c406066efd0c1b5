import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DirectoryInUseError } from '../../src/db/directory-lock';
import { openPglite } from '../../src/db/pglite';

/** A process that only sleeps: a live pid that is not this one. */
function sleeper() {
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' });
  return {
    pid: child.pid as number,
    stop: () => new Promise((resolve) => child.once('exit', resolve).kill('SIGKILL')),
  };
}

describe('the embedded database directory lock', () => {
  let root: string;
  let dataDir: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'kiln-lock-'));
    dataDir = join(root, 'pgdata');
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('refuses a directory another live process holds, names it, and opens it once that process is gone', async () => {
    const other = sleeper();
    writeFileSync(`${dataDir}.lock`, `${other.pid}\nelsewhere\n`);
    const refused = await openPglite({ dataDir, schema: 'public' }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(DirectoryInUseError);
    expect((refused as Error).message).toContain(`open in process ${other.pid}`);
    expect((refused as Error).message).toContain(`${dataDir}.lock`);
    await other.stop();
    // The holder died without removing its lock (SIGKILL): the lock is stale and taken over.
    const db = await openPglite({ dataDir, schema: 'public' });
    expect((await db.query<{ one: number }>('select 1 as one')).rows).toEqual([{ one: 1 }]);
    expect(existsSync(`${dataDir}.lock`)).toBe(true);
    await db.close();
    expect(existsSync(`${dataDir}.lock`)).toBe(false);
  });

  it('leaves an in-memory database without a lock', async () => {
    const db = await openPglite({ schema: 'public' });
    await db.close();
    expect(existsSync(`${dataDir}.lock`)).toBe(false);
  });
});
