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

/**
 * When a process started (clock ticks since boot, /proc/<pid>/stat field 22), or '' where there is no /proc: with
 * the pid it names one process, so a pid reused after a crash is not taken for the lock's holder.
 */
function startTimeOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ')[19] ?? '';
  } catch {
    return '';
  }
}

/** The live process holding the lock file, if any (the lock of a process that is gone is stale). */
function liveHolderOf(lockFile: string): number | undefined {
  let pid: number;
  let startTime: string | undefined;
  try {
    const [first, second] = readFileSync(lockFile, 'utf8').split('\n');
    pid = Number(first);
    startTime = second;
  } catch {
    return undefined; // gone meanwhile, or unreadable: treated as stale
  }
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return undefined;
  return !startTime || startTime === startTimeOf(pid) ? pid : undefined;
}

/** Lock files this process holds: a directory opened twice in one process is refused too. */
const heldHere = new Set<string>();

/**
 * Claim `directory` for this process with `<directory>.lock` (created exclusively, holding this pid and its start
 * time): PGlite takes no lock of its own, and two processes on one data directory corrupt it. A lock left by a
 * process that no longer runs (killed, or its pid now names another process) is taken over. Two processes taking
 * over one stale lock at the same instant could both win: the window is the microseconds between reading the stale
 * lock and creating the new one. Returns the release, which removes the file if it is still this process's.
 */
export function lockDirectory(directory: string): () => void {
  const lockFile = `${directory}.lock`;
  if (heldHere.has(lockFile)) throw new DirectoryInUseError(directory, process.pid, lockFile);
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(lockFile, 'wx');
      writeSync(fd, `${process.pid}\n${startTimeOf(process.pid)}\n${hostname()}\n`);
      closeSync(fd);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw error;
      // This process's own pid in a lock it does not hold here: a lock left by an earlier process (a restarted
      // container, whose pids start over) that is stale.
      const pid = liveHolderOf(lockFile);
      if (pid !== undefined && pid !== process.pid) throw new DirectoryInUseError(directory, pid, lockFile);
      try {
        unlinkSync(lockFile);
      } catch (gone) {
        if ((gone as NodeJS.ErrnoException).code !== 'ENOENT') throw gone;
      }
    }
  }
  heldHere.add(lockFile);
  return () => {
    heldHere.delete(lockFile);
    if (liveHolderOf(lockFile) === process.pid) unlinkSync(lockFile);
  };
}
