import { readdir, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { Database } from '../db/database';
import { pruneBuildEvents, pruneOutbox, prunePreviews, underRetentionLock, workspacesToPrune } from '../db/retention';
import { workspacesDir } from './previews';

/**
 * Retention: what builds leave behind, removed once old (README, "Retention"). Every process runs it; each kind of
 * work is done by one process at a time (an advisory lock per kind, and per host and directory for workspaces), in
 * batches. A setting of 0 days keeps that kind forever. The ledger, builds themselves, and the latest deployed build
 * of each project (its preview and workspace) are never pruned; idempotency records keep their own TTL
 * (maintenance.ts).
 */
export interface RetentionSettings {
  dataDir: string;
  workspaceDays: number;
  previewDays: number;
  eventDays: number;
  webhookDays: number;
}

const BATCH = 500;
const DAY_MS = 86_400_000;
const ago = (days: number, now: number) => new Date(now - days * DAY_MS);

/**
 * In: the database, this host's data directory and the age before which workspaces go. Out: how many workspace
 * directories of this host were removed: those of builds that ended before then, except the latest deployed build
 * of each project, and never a directory the database knows no build for. -1 when another process on this host and
 * directory is at it. Errors: the database's, and the file system's (a directory that cannot be removed).
 */
export async function pruneWorkspaces(db: Database, dataDir: string, before: Date): Promise<number> {
  const dir = resolve(workspacesDir(dataDir));
  const names = await readdir(dir, { withFileTypes: true }).then(
    (entries) => entries.filter((e) => e.isDirectory()).map((e) => e.name),
    (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return [] as string[];
      throw error;
    },
  );
  let removed = 0;
  for (let i = 0; i < names.length; i += BATCH) {
    const done = await underRetentionLock(db, `workspaces:${hostname()}:${dir}`, async (tx) => {
      let gone = 0;
      for (const id of await workspacesToPrune(tx, names.slice(i, i + BATCH), before)) {
        // Another process on this directory may have removed it since the listing: count only what this one removes.
        if (!(await stat(join(dir, id)).catch(() => undefined))) continue;
        await rm(join(dir, id), { recursive: true, force: true });
        gone += 1;
      }
      return gone;
    });
    if (done === -1) return removed === 0 ? -1 : removed;
    removed += done;
  }
  return removed;
}

/**
 * One pass of every kind of retention this process is configured for, each until nothing is left (or another
 * process holds it). Out: what each removed (-1: another process was at it; undefined: kept forever by its setting).
 */
export async function pruneOnce(
  db: Database,
  settings: RetentionSettings,
  now = Date.now(),
): Promise<{ workspaces?: number; previews?: number; events?: number; webhooks?: number }> {
  const drain = async (batch: () => Promise<number>) => {
    let total = 0;
    for (;;) {
      const n = await batch();
      if (n === -1) return total === 0 ? -1 : total;
      total += n;
      if (n < BATCH) return total;
    }
  };
  const out: { workspaces?: number; previews?: number; events?: number; webhooks?: number } = {};
  if (settings.workspaceDays > 0)
    out.workspaces = await pruneWorkspaces(db, settings.dataDir, ago(settings.workspaceDays, now));
  if (settings.previewDays > 0)
    out.previews = await drain(() => prunePreviews(db, ago(settings.previewDays, now), BATCH));
  if (settings.webhookDays > 0)
    out.webhooks = await drain(() => pruneOutbox(db, ago(settings.webhookDays, now), BATCH));
  if (settings.eventDays > 0) out.events = await drain(() => pruneBuildEvents(db, ago(settings.eventDays, now), BATCH));
  return out;
}

/**
 * Run retention every `everyMs`, the first time a minute after start (or sooner with a shorter interval); never two
 * runs at once in this process. Logs what each run removed. Returns a function that stops it.
 */
export function startRetention(
  db: Database,
  settings: RetentionSettings,
  logger: Logger,
  everyMs = 600_000,
): () => void {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      const removed = await pruneOnce(db, settings);
      if (Object.values(removed).some((n) => n !== undefined && n > 0)) {
        logger.info({ removed }, 'retention: removed what old builds left behind');
      }
    } catch (error) {
      logger.warn({ err: error }, 'retention failed; will retry at its next run');
    } finally {
      running = false;
    }
  };
  const first = setTimeout(() => void tick(), Math.min(everyMs, 60_000));
  first.unref();
  const timer = setInterval(() => void tick(), everyMs);
  timer.unref();
  return () => {
    clearTimeout(first);
    clearInterval(timer);
  };
}
