import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { NewEvent } from '../../db/builds';
import { isBuildCredits, isPreviewUrl, MAX_BUILD_CREDITS } from '../../domain/build-pricing';
import type { ExecutionContext, ExecutionResult, Executor, StopReason } from './types';

const STDERR_TAIL = 4_000;
const MAX_LINE = 2_000;
const KILL_GRACE_MS = 3_000;
const STRAGGLER_GRACE_MS = 1_000;

/** A reported value, as a log line may show it (JSON, cut short). */
function shown(value: unknown): string {
  const json = typeof value === 'number' ? String(value) : (JSON.stringify(value) ?? String(value));
  return json.length > 80 ? `${json.slice(0, 80)}…` : json;
}

/** What a command may report in its result line; a field it got wrong is left out. */
export interface ReportedResult {
  previewUrl?: string;
  credits?: number;
}

/**
 * One JSON line from the command, turned into an event or the final result; anything else becomes a log line. A
 * result with a field out of bounds (credits outside 0..MAX_BUILD_CREDITS, a previewUrl that is not an http(s) URL
 * or a /previews/ path) keeps its other fields and comes with a `log` event saying what was ignored.
 */
export function parseLine(line: string): { event?: NewEvent; result?: ReportedResult } {
  const text = line.length > MAX_LINE ? `${line.slice(0, MAX_LINE)}…` : line;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return { event: { type: 'log', message: text } };
  }
  const v = value as Record<string, unknown> | null;
  if (!v || typeof v !== 'object' || Array.isArray(v)) return { event: { type: 'log', message: text } };
  const str = (x: unknown) => (typeof x === 'string' ? x.slice(0, MAX_LINE) : undefined);
  if (v.type === 'result') {
    const result: ReportedResult = {};
    const ignored: string[] = [];
    if (isBuildCredits(v.credits)) result.credits = v.credits;
    else if (v.credits !== undefined && v.credits !== null) {
      ignored.push(
        typeof v.credits === 'number' && Number.isInteger(v.credits)
          ? `credits ${v.credits} out of range 0..${MAX_BUILD_CREDITS}; ignored`
          : `credits ${shown(v.credits)} is not an integer in 0..${MAX_BUILD_CREDITS}; ignored`,
      );
    }
    if (isPreviewUrl(v.previewUrl)) result.previewUrl = v.previewUrl;
    else if (v.previewUrl !== undefined && v.previewUrl !== null) {
      ignored.push(
        `previewUrl ${shown(v.previewUrl)} is not an http:// or https:// URL or a path under /previews/; ignored`,
      );
    }
    return ignored.length ? { result, event: { type: 'log', message: ignored.join('; ') } } : { result };
  }
  if (v.type === 'progress') {
    const progress = typeof v.progress === 'number' && v.progress >= 0 && v.progress <= 1 ? v.progress : undefined;
    return { event: { type: 'progress', phase: str(v.phase), message: str(v.message), progress } };
  }
  if (v.type === 'log') return { event: { type: 'log', phase: str(v.phase), message: str(v.message) ?? '' } };
  return { event: { type: 'log', message: text } };
}

/**
 * Runs the operator's BUILD_COMMAND through `sh -c` in its own process group: the build as JSON on stdin,
 * JSON-lines events on stdout, exit 0 → deployed, otherwise failed with the tail of stderr. Stopping (cancel,
 * timeout, lost lease, shutdown) signals the whole group: SIGTERM, then SIGKILL after a grace period.
 * The command sees only PATH, HOME, LANG and KILN_* variables — never Kiln's secrets.
 */
export class CommandExecutor implements Executor {
  constructor(private readonly command: string) {}

  execute(context: ExecutionContext): Promise<ExecutionResult> {
    const { build, signal } = context;
    return new Promise((resolve) => {
      const child = spawn('sh', ['-c', this.command], {
        cwd: context.workspace,
        detached: true,
        stdio: ['pipe', 'pipe', 'pipe'],
        env: {
          PATH: process.env.PATH ?? '/usr/bin:/bin',
          HOME: context.workspace,
          LANG: process.env.LANG ?? 'C.UTF-8',
          KILN_BUILD_ID: build.id,
          KILN_PROJECT_ID: build.projectId,
          KILN_WORKSPACE: context.workspace,
          KILN_PREVIEW_DIR: context.previewDir,
          KILN_PREVIEW_URL: context.previewUrl,
        },
      });
      let stderr = '';
      let result: ReportedResult = {};
      let stopped: StopReason | undefined;
      let killTimer: NodeJS.Timeout | undefined;
      const killGroup = (sig: NodeJS.Signals) => {
        try {
          if (child.pid) process.kill(-child.pid, sig);
        } catch {
          // the group is already gone
        }
      };
      const onAbort = () => {
        stopped = (signal.reason as StopReason) ?? 'cancelled';
        killGroup('SIGTERM');
        killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
        killTimer.unref();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      if (signal.aborted) onAbort(); // stopped before it could even start
      child.stdin.on('error', () => {}); // a command that never reads stdin must not fail the build
      child.stdin.end(`${JSON.stringify(build)}\n`);
      // Every stdout line must be turned into an event before the build ends: wait for the reader too.
      const lines = createInterface({ input: child.stdout });
      const linesDone = new Promise<void>((done) => lines.once('close', done));
      lines.on('line', (line) => {
        if (!line.trim()) return;
        const parsed = parseLine(line);
        if (parsed.event) context.emit(parsed.event);
        if (parsed.result) result = { ...result, ...parsed.result };
      });
      child.stderr.on('data', (chunk: Buffer) => {
        stderr = (stderr + chunk.toString()).slice(-STDERR_TAIL);
      });
      const finish = (outcome: ExecutionResult) => {
        signal.removeEventListener('abort', onAbort);
        clearTimeout(killTimer);
        resolve(outcome);
      };
      // Background children left by the command may hold its stdout open after it exits; give them a moment,
      // then kill the group and stop reading, so the build ends when the command does.
      child.on('exit', () => {
        const reap = setTimeout(() => {
          killGroup('SIGKILL');
          lines.close();
          child.stdout.destroy();
          child.stderr.destroy();
        }, STRAGGLER_GRACE_MS);
        reap.unref();
        child.once('close', () => clearTimeout(reap));
      });
      child.on('error', (error) =>
        finish({
          outcome: 'failed',
          reason: 'spawn_error',
          error: `could not start the build command: ${error.message}`,
        }),
      );
      child.on('close', async (code, sig) => {
        await linesDone;
        // Stragglers (background children the command left) go with the group.
        killGroup('SIGKILL');
        if (stopped) return finish({ outcome: 'failed', reason: stopped, error: `build stopped: ${stopped}` });
        if (code === 0) return finish({ outcome: 'deployed', previewUrl: result.previewUrl, credits: result.credits });
        const tail = stderr.trim();
        finish({
          outcome: 'failed',
          reason: 'exit_code',
          error: `build command ${sig ? `killed by ${sig}` : `exited with code ${code}`}${tail ? `: ${tail}` : ''}`,
          credits: result.credits,
        });
      });
    });
  }
}
