import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
    // As that process would have written it: its pid, its start time (/proc/<pid>/stat field 22), a host name.
    const startTime = readFileSync(`/proc/${other.pid}/stat`, 'utf8').split(') ')[1].split(' ')[19];
    writeFileSync(`${dataDir}.lock`, `${other.pid}\n${startTime}\nelsewhere\n`);
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

  it('takes over a lock whose pid now names another process (a pid reused after a crash)', async () => {
    const other = sleeper();
    try {
      // The pid is alive, but the start time recorded with it is not that process's.
      writeFileSync(`${dataDir}.lock`, `${other.pid}\n1\nelsewhere\n`);
      const db = await openPglite({ dataDir, schema: 'public' });
      await db.close();
    } finally {
      await other.stop();
    }
  });

  it('refuses a directory this process already has open', async () => {
    const db = await openPglite({ dataDir, schema: 'public' });
    try {
      const again = await openPglite({ dataDir, schema: 'public' }).catch((error: unknown) => error);
      expect(again).toBeInstanceOf(DirectoryInUseError);
      expect((again as DirectoryInUseError).pid).toBe(process.pid);
    } finally {
      await db.close();
    }
    const reopened = await openPglite({ dataDir, schema: 'public' });
    await reopened.close();
  });

  it('leaves an in-memory database without a lock', async () => {
    const db = await openPglite({ schema: 'public' });
    await db.close();
    expect(existsSync(`${dataDir}.lock`)).toBe(false);
  });
});
