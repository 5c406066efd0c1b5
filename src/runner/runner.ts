import { mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { claimBuilds, failLapsedBuilds, queuedHoldsExpiringSoon, renewLease } from '../db/build-queue';
import { appendEvent, type DbBuild, type NewEvent, toBuild, transitionBuild } from '../db/builds';
import { type Database, DatabaseUnavailableError } from '../db/database';
import { storePreviewFiles } from '../db/previews';
import { creditsForDuration } from '../domain/build-pricing';
import { ApiError } from '../domain/errors';
import { holdForStart, reportSettlement, type Settlement, settleBuildCredits } from '../services/build-credits';
import { internalActor, renewReservation } from '../services/credits';
import { listPreview, type PreviewListing, previewChunks, workspacesDir } from '../services/previews';
import { Tally } from '../services/tally';
import type { BuildSignals } from '../store/signals';
import type { ExecutionResult, Executor, StopReason } from './executors/types';

/** Events one build may write; past this its log lines are dropped (with one note saying so). */
const MAX_EVENTS_PER_BUILD = 2_000;
const SAFETY_POLL_MS = 5_000;
/** While the database does not answer, a heartbeat or the end of a build is tried again this often (at most). */
const RETRY_MS = 1_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Run `work` until it succeeds, waiting between tries while the database is unavailable; other errors throw. */
async function untilAnswered<T>(work: () => Promise<T>, onFirstFailure: (error: unknown) => void): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await work();
    } catch (error) {
      if (!(error instanceof DatabaseUnavailableError)) throw error;
      if (attempt === 0) onFirstFailure(error);
      await sleep(Math.min(RETRY_MS * 2 ** attempt, 2 * RETRY_MS));
    }
  }
}

/** What becomes of a preview not copied into the database. */
const SERVED_HERE_ONLY = () => `served only by this host (${hostname()}) while its workspace is kept`;

export interface RunnerOptions {
  db: Database;
  signals: BuildSignals;
  logger: Logger;
  /** Identifies this process as lease owner. */
  owner: string;
  /** null: this process claims nothing (RUNNER_CONCURRENCY=0 or the external executor); it still reaps. */
  executor: Executor | null;
  concurrency: number;
  leaseSeconds: number;
  timeoutSeconds: number;
  dataDir: string;
  creditsPerMinute: number;
  /** Lifetime a build's credit hold is renewed to while the build waits or runs. */
  reservationTtlS: number;
  /**
   * Largest preview copied into the database when a build deploys, so every process serves it (bytes; 0: none is,
   * each preview is served by this host alone). Defaults to 16 MB.
   */
  previewMaxBytes?: number;
}

/**
 * The runner every process has: claims queued builds (skip locked) when woken or on a slow safety poll, runs them
 * through the executor with a lease renewed by heartbeats, writes their events, and ends them. It also reaps: any
 * process fails, as worker_lost, the builds whose lease lapsed.
 */
export class Runner {
  private readonly running = new Map<string, AbortController>();
  private readonly finished = new Set<Promise<void>>();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly unsubscribes: (() => void)[] = [];
  private filling = false;
  private refill = false;
  private stopping = false;

  constructor(private readonly options: RunnerOptions) {}

  async start(): Promise<void> {
    const { signals, leaseSeconds } = this.options;
    const reapEveryMs = Math.max(1_000, Math.min(15_000, (leaseSeconds * 1000) / 2));
    this.timers.push(setInterval(() => void this.reap(), reapEveryMs));
    this.unsubscribes.push(await signals.on('cancelled', (buildId) => this.running.get(buildId)?.abort('cancelled')));
    if (this.options.executor && this.options.concurrency > 0) {
      this.unsubscribes.push(await signals.on('queued', () => void this.fill()));
      this.timers.push(setInterval(() => void this.fill(), SAFETY_POLL_MS));
      void this.fill();
    }
    void this.reap();
  }

  /** Claim builds until the runner is full or the queue is empty. */
  async fill(): Promise<void> {
    if (this.filling) {
      this.refill = true;
      return;
    }
    this.filling = true;
    try {
      do {
        this.refill = false;
        // Claim as many as there are free slots, in one statement; go on while the queue fills them.
        for (let free = this.freeSlots(); free > 0 && !this.stopping; free = this.freeSlots()) {
          const claimed = await claimBuilds(this.options.db, this.options.owner, this.options.leaseSeconds, free);
          const tally = new Tally();
          for (const build of claimed) tally.transition('queued', build);
          tally.commit();
          for (const build of claimed) {
            this.running.set(build.id, new AbortController());
            this.options.signals.send('events', build.id);
            this.track(this.run(build));
          }
          if (claimed.length < free) break;
        }
      } while (this.refill && !this.stopping);
    } catch (error) {
      this.options.logger.warn({ err: error }, 'claiming builds failed; will retry');
    } finally {
      this.filling = false;
    }
  }

  private freeSlots(): number {
    return this.options.concurrency - this.running.size;
  }

  private track(work: Promise<void>): void {
    this.finished.add(work);
    void work.finally(() => {
      this.finished.delete(work);
      void this.fill();
    });
  }

  private async run(claimed: DbBuild): Promise<void> {
    const { db, signals, logger, owner, leaseSeconds } = this.options;
    const log = logger.child({ buildId: claimed.id });
    // The build as it stands: its hold may be taken anew when it starts (holdCredits).
    let held = claimed;
    // Registered at claim time, so the free-slot count is right before this starts.
    const controller = this.running.get(claimed.id) ?? new AbortController();
    this.running.set(claimed.id, controller);
    const workspace = resolve(join(workspacesDir(this.options.dataDir), claimed.id));
    const previewDir = join(workspace, 'preview');
    let eventCount = 0;
    let events = Promise.resolve();
    const emit = (event: NewEvent) => {
      eventCount += 1;
      if (eventCount > MAX_EVENTS_PER_BUILD) return;
      const written: NewEvent =
        eventCount === MAX_EVENTS_PER_BUILD
          ? { type: 'log', message: `event limit (${MAX_EVENTS_PER_BUILD}) reached; further lines are dropped` }
          : event;
      // An event written while the database is away waits for it (in order), so the build's record stays whole.
      events = events
        .then(async () => {
          const seq = await untilAnswered(
            () => appendEvent(db, claimed.id, written),
            () => log.warn('the database is unavailable; build events wait for it'),
          );
          // Nothing is appended once the build has ended (cancelled meanwhile): nothing to wake streams for.
          if (seq !== undefined) signals.send('events', claimed.id);
        })
        .catch((error: unknown) => log.warn({ err: error }, 'could not write a build event'));
    };
    const renew = async () => {
      if (!(await renewLease(db, claimed.id, owner, leaseSeconds)))
        return controller.abort('lease_lost' satisfies StopReason);
      // The build's hold lives as long as the build: renewed with its lease. A hold that is gone (it lapsed while the
      // database was away, say) leaves the build unpaid for: it is stopped rather than run on without credits.
      if (held.reservation_id) {
        const tally = new Tally();
        try {
          await renewReservation(db, held.reservation_id, this.options.reservationTtlS, {
            ...internalActor('runner'),
            tally,
          });
        } catch (error) {
          if (!(error instanceof ApiError)) throw error;
          log.error(
            { reservationId: held.reservation_id, hold: error.data },
            'build hold could not be kept (it lapsed or was resolved); stopping the build',
          );
          controller.abort('hold_lost' satisfies StopReason);
        } finally {
          // One statement in autocommit: what it expired on the way is written even when it refused to renew.
          tally.commit();
        }
      }
    };
    // Heartbeats go on until the end of the build is recorded: a build that finished while the database was away keeps
    // its lease until it can be written. A failed renewal is tried again within a second.
    let beating = true;
    let beat: NodeJS.Timeout | undefined;
    const heartbeat = (delayMs: number) => {
      beat = setTimeout(() => {
        renew().then(
          () => beating && heartbeat((leaseSeconds * 1000) / 3),
          (error: unknown) => {
            log.warn({ err: error }, 'lease or hold renewal failed; retrying');
            if (beating) heartbeat(Math.min(RETRY_MS, (leaseSeconds * 1000) / 3));
          },
        );
      }, delayMs);
    };
    heartbeat((leaseSeconds * 1000) / 3);
    const timeout = setTimeout(
      () => controller.abort('timeout' satisfies StopReason),
      this.options.timeoutSeconds * 1000,
    );
    log.info('build started');
    let result: ExecutionResult;
    try {
      await mkdir(previewDir, { recursive: true });
      const refused = await this.holdCredits(held, log);
      if (typeof refused !== 'string') held = refused;
      if (refused === 'hold_expired') {
        result = {
          outcome: 'failed',
          reason: refused,
          error:
            'The credit hold of this build expired before it started, and the user can no longer afford its estimate; top up and create the build again.',
        };
      } else if (refused === 'hold_resolved') {
        result = {
          outcome: 'failed',
          reason: refused,
          error: 'The credit hold of this build was committed or released before it started; create the build again.',
        };
      } else
        result = await this.options.executor!.execute({
          build: toBuild(held),
          workspace,
          previewDir,
          previewUrl: `/previews/${claimed.id}/`,
          signal: controller.signal,
          emit,
        });
    } catch (error) {
      result = { outcome: 'failed', reason: 'executor_error', error: (error as Error).message };
    } finally {
      clearTimeout(timeout);
      this.running.delete(claimed.id);
    }
    const preview = result.outcome === 'deployed' ? await this.sharedPreview(previewDir, emit, log) : undefined;
    try {
      await events;
      await this.finish(claimed, result, log, preview);
    } finally {
      beating = false;
      clearTimeout(beat);
    }
  }

  /**
   * A build only runs with its credits held (holdForStart): its hold renewed, or held again if it lapsed while the
   * build waited (no process was up to renew it). Answers the build as it now stands, or why it cannot run: its user
   * can no longer afford it (hold_expired), or its hold was resolved through the credits API (hold_resolved).
   */
  private async holdCredits(build: DbBuild, log: Logger): Promise<DbBuild | 'hold_expired' | 'hold_resolved'> {
    try {
      // A database briefly away must not fail a build that was just claimed: its lease is kept meanwhile.
      return await untilAnswered(
        async () => {
          const tally = new Tally();
          const actor = { ...internalActor('runner'), tally };
          const held = await this.options.db.transaction((tx) =>
            holdForStart(tx, build, { reservationTtlS: this.options.reservationTtlS, actor }, log),
          );
          tally.commit();
          return held;
        },
        () => log.warn('the database is unavailable; the build waits for it to hold its credits'),
      );
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.code === 'INSUFFICIENT_CREDITS') {
        log.warn(
          { reservationId: build.reservation_id, needed: error.data },
          'build hold expired and cannot be held again; failing it',
        );
        return 'hold_expired';
      }
      if (error.code === 'RESERVATION_NOT_ACTIVE') {
        log.warn(
          { reservationId: build.reservation_id, hold: error.data },
          'build hold was resolved before it started; failing it',
        );
        return 'hold_resolved';
      }
      throw error;
    }
  }

  /**
   * The listing of a deployed build's preview to store with its end, so every process serves it; none (with a `log`
   * event saying so) when it passes a bound (listPreview) or cannot be read: this host then serves it alone.
   */
  private async sharedPreview(
    previewDir: string,
    emit: (event: NewEvent) => void,
    log: Logger,
  ): Promise<PreviewListing | undefined> {
    const maxBytes = this.options.previewMaxBytes ?? 16 * 1_048_576;
    if (maxBytes === 0) return undefined;
    let message: string;
    let error: unknown;
    try {
      const listed = await listPreview(previewDir, maxBytes);
      if ('files' in listed) return listed;
      message = `preview not copied for other hosts (${listed.tooLarge}): ${SERVED_HERE_ONLY()}`;
    } catch (failure) {
      error = failure;
      message = `could not read the preview to store it: ${SERVED_HERE_ONLY()}`;
    }
    log.warn(error === undefined ? {} : { err: error }, message);
    emit({ type: 'log', message });
    return undefined;
  }

  /**
   * End the build as the executor said, unless it was cancelled or reaped meanwhile (then it is not ours); a deployed
   * build's preview files are stored in the same transaction (under a savepoint: a copy the database refuses leaves
   * the preview to this host and the build deployed all the same).
   */
  private async finish(
    claimed: DbBuild,
    result: ExecutionResult,
    log: Logger,
    preview?: PreviewListing,
  ): Promise<void> {
    const { db, signals, owner } = this.options;
    if (result.reason === 'cancelled' || result.reason === 'lease_lost') {
      log.info({ reason: result.reason }, 'build stopped from outside');
      return;
    }
    const durationMs = Date.now() - (claimed.started_at?.getTime() ?? Date.now());
    const deployed = result.outcome === 'deployed';
    try {
      // Until the database answers: the build's real outcome is recorded, not reaped as lost (its lease is kept).
      const ended = await untilAnswered(
        () =>
          db.transaction(async (tx) => {
            const after = await transitionBuild(tx, claimed.id, {
              from: 'building',
              to: result.outcome,
              leaseOwner: owner,
              reason: deployed ? null : (result.reason ?? 'failed'),
              error: result.error?.slice(0, 4000) ?? null,
              previewUrl: result.previewUrl ?? null,
              actualCredits: deployed
                ? (result.credits ?? creditsForDuration(durationMs, this.options.creditsPerMinute))
                : (result.credits ?? null),
              event: {
                message: deployed ? 'Build deployed' : `Build failed: ${result.reason ?? 'failed'}`,
                data: {
                  durationMs,
                  ...(result.previewUrl ? { previewUrl: result.previewUrl } : {}),
                  ...(deployed ? {} : { reason: result.reason }),
                },
              },
            });
            if (!after) return undefined;
            if (deployed && preview && preview.files.length > 0) {
              const copy = await storePreviewFiles(tx, claimed.id, previewChunks(preview));
              if (!copy.stored) {
                log.warn(
                  { err: copy.error, previewBytes: preview.bytes },
                  `the database refused the preview's copy: it is ${SERVED_HERE_ONLY()}`,
                );
              }
            }
            // Noted afresh on each try: a try that rolled back noted into a tally that is dropped with it.
            const noted = new Tally();
            noted.transition('building', after);
            const settled = await settleBuildCredits(tx, after, { ...internalActor('runner'), tally: noted });
            return { after, settled, noted };
          }),
        () =>
          log.warn(
            { outcome: result.outcome },
            'could not record the end of the build: the database is unavailable; retrying until it answers (the lease is kept)',
          ),
      );
      ended?.noted.commit();
      if (ended) reportSettlement(ended.after, ended.settled, log);
      if (ended) log.info({ state: ended.after.state, durationMs }, 'build finished');
      else log.warn('build was no longer ours to finish (cancelled or reaped)');
      signals.send('events', claimed.id);
    } catch (error) {
      log.error({ err: error }, 'could not record the end of the build; its lease will lapse and it will be reaped');
    }
  }

  /**
   * Fail builds whose runner vanished (any process does this). Not within a lease of the database being unavailable
   * to this process, nor of the database server starting: runners could not renew their leases then, and a live one
   * renews (or records its build's end) within a lease of the database answering again.
   */
  async reap(): Promise<void> {
    const { db, signals, logger, leaseSeconds } = this.options;
    if (Date.now() - db.lastUnavailableAt() < leaseSeconds * 1000) return;
    try {
      const tally = new Tally();
      const reaped = await db.transaction(async (tx) => {
        // Settle in user order: two processes reaping at once then lock accounts in the same order.
        const failed = (await failLapsedBuilds(tx, leaseSeconds)).sort((a, b) => a.user_id.localeCompare(b.user_id));
        const settlements: (Settlement | undefined)[] = [];
        for (const build of failed) {
          tally.transition('building', build);
          settlements.push(await settleBuildCredits(tx, build, { ...internalActor('reaper'), tally }));
        }
        return failed.map((build, i) => ({ build, settled: settlements[i] }));
      });
      tally.commit();
      for (const { build, settled } of reaped) reportSettlement(build, settled, logger);
      for (const { build } of reaped) {
        logger.warn(
          { buildId: build.id, lastOwner: build.last_owner },
          `build failed: worker_lost (the lease of runner ${build.last_owner} lapsed)`,
        );
        signals.send('events', build.id);
      }
      const ttl = this.options.reservationTtlS;
      for (const reservationId of await queuedHoldsExpiringSoon(db, Math.ceil(ttl / 2))) {
        const renewed = new Tally();
        await renewReservation(db, reservationId, ttl, { ...internalActor('reaper'), tally: renewed }).catch(
          (error: unknown) => logger.warn({ err: error, reservationId }, 'could not renew the hold of a queued build'),
        );
        renewed.commit();
      }
    } catch (error) {
      logger.warn({ err: error }, 'reaping lapsed builds failed; will retry');
    }
  }

  /** Stop claiming; let running builds finish for up to `graceMs`, then stop them (they fail as shutdown). */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    for (const timer of this.timers) clearInterval(timer);
    for (const unsubscribe of this.unsubscribes) unsubscribe();
    const all = Promise.all([...this.finished]);
    const timer = setTimeout(() => {
      for (const controller of this.running.values()) controller.abort('shutdown' satisfies StopReason);
    }, graceMs);
    await all;
    clearTimeout(timer);
  }

  get activeBuilds(): number {
    return this.running.size;
  }
}
