import { randomBytes } from 'node:crypto';
import { readdir, rename, rm } from 'node:fs/promises';
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

/** Where a workspace goes once picked for removal (removed after the pick's transaction commits). */
const PRUNING = '.pruning-';

/**
 * In: the database, this host's data directory and the age before which workspaces go. Out: how many workspace
 * directories of this host were removed: those of builds that ended before then, except the latest deployed build
 * of each project, and never a directory the database knows no build for; -1 when another process on this host and
 * directory was picking. Each batch is picked under a lock and renamed aside at once (an atomic rename: another
 * process never picks it again), and removed after the lock is let go, so no transaction waits for a disk.
 * Leftovers of a removal cut short are removed first. Errors: the database's, and the file system's.
 */
export async function pruneWorkspaces(db: Database, dataDir: string, before: Date): Promise<number> {
  const dir = resolve(workspacesDir(dataDir));
  const entries = await readdir(dir, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [];
    throw error;
  });
  for (const leftover of entries.filter((e) => e.isDirectory() && e.name.startsWith(PRUNING))) {
    await rm(join(dir, leftover.name), { recursive: true, force: true });
  }
  const names = entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name);
  let removed = 0;
  for (let i = 0; i < names.length; i += BATCH) {
    const picked = await underRetentionLock(db, `workspaces:${hostname()}:${dir}`, async (tx) => {
      const aside: string[] = [];
      for (const id of await workspacesToPrune(tx, names.slice(i, i + BATCH), before)) {
        const target = join(dir, `${PRUNING}${id}-${randomBytes(4).toString('hex')}`);
        // Gone already: another process on this directory picked it since the listing.
        const moved = await rename(join(dir, id), target).then(
          () => true,
          () => false,
        );
        if (moved) aside.push(target);
      }
      return aside;
    });
    if (picked === -1) return removed === 0 ? -1 : removed;
    for (const target of picked) await rm(target, { recursive: true, force: true });
    removed += picked.length;
  }
  return removed;
}

/** What one pass of retention removed, by kind: -1 when another process was at it; absent when kept forever. */
export interface Pruned {
  workspaces?: number;
  previews?: number;
  events?: number;
  webhooks?: number;
  /** The build event retention stopped at (a message of it pending, or events not folded yet), if it stopped. */
  eventsWaitingFor?: string;
}

/**
 * One pass of every kind of retention this process is configured for, each until nothing is left (or another
 * process holds it).
 */
export async function pruneOnce(db: Database, settings: RetentionSettings, now = Date.now()): Promise<Pruned> {
  const drain = async (batch: () => Promise<number>) => {
    let total = 0;
    for (;;) {
      const n = await batch();
      if (n === -1) return total === 0 ? -1 : total;
      total += n;
      if (n < BATCH) return total;
    }
  };
  const out: Pruned = {};
  if (settings.workspaceDays > 0)
    out.workspaces = await pruneWorkspaces(db, settings.dataDir, ago(settings.workspaceDays, now));
  if (settings.previewDays > 0)
    out.previews = await drain(() => prunePreviews(db, ago(settings.previewDays, now), BATCH));
  if (settings.webhookDays > 0)
    out.webhooks = await drain(() => pruneOutbox(db, ago(settings.webhookDays, now), BATCH));
  if (settings.eventDays > 0) {
    out.events = await drain(async () => {
      const { pruned, waitingFor } = await pruneBuildEvents(db, ago(settings.eventDays, now), BATCH);
      if (waitingFor) out.eventsWaitingFor = waitingFor;
      // A batch cut short by a build that must wait has fewer than BATCH: it ends the pass.
      return pruned;
    });
  }
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
      const { eventsWaitingFor, ...removed } = await pruneOnce(db, settings);
      if (Object.values(removed).some((n) => n !== undefined && n > 0)) {
        logger.info({ removed }, 'retention: removed what old builds left behind');
      }
      if (eventsWaitingFor) {
        logger.info(
          { buildId: eventsWaitingFor },
          'retention: the events of this build and of every build that ended after it wait (a webhook message of it is pending, or the analytics fold has not read its events yet)',
        );
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
