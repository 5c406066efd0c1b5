import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';

/** The embedded database's directory is open in another live process. */
export class DirectoryInUseError extends Error {
  constructor(
    readonly directory: string,
    readonly pid: number,
    readonly lockFile: string,
  ) {
    super(
      `the embedded database in ${directory} is open in process ${pid}; PGlite allows one process per directory. ` +
        `Stop that process first (or, if no Kiln runs there, delete ${lockFile}).`,
    );
    this.name = 'DirectoryInUseError';
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function holderOf(lockFile: string): number | undefined {
  try {
    const pid = Number(readFileSync(lockFile, 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined; // gone meanwhile, or unreadable: treated as stale
  }
}

/**
 * Claim `directory` for this process with `<directory>.lock` (created exclusively, holding this pid): PGlite takes
 * no lock of its own, and two processes on one data directory corrupt it. A lock left by a process that no longer
 * runs (killed) is taken over. Returns the release, which removes the file if it is still this process's.
 */
export function lockDirectory(directory: string): () => void {
  const lockFile = `${directory}.lock`;
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(lockFile, 'wx');
      writeSync(fd, `${process.pid}\n${hostname()}\n`);
      closeSync(fd);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw error;
      const pid = holderOf(lockFile);
      if (pid !== undefined && pid !== process.pid && alive(pid))
        throw new DirectoryInUseError(directory, pid, lockFile);
      try {
        unlinkSync(lockFile);
      } catch (gone) {
        if ((gone as NodeJS.ErrnoException).code !== 'ENOENT') throw gone;
      }
    }
  }
  return () => {
    if (holderOf(lockFile) === process.pid) unlinkSync(lockFile);
  };
}
