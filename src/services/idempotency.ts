/**
 * The idempotency records of SPEC section 4, as the HTTP layer's idempotency hooks use them: claim a key (its lock
 * and its record, with BEGIN, in one round trip), and record a response and commit (one round trip); or, for the
 * writes that can, all of it in one statement (runOnce), several requests' at a time (OnceGroups).
 */
import type { Database } from '../db/database';
import { type OnceEffect, type OnceItem, type OnceOutcome, runOnce, runOnceGroup } from '../db/idempotency';
import { observeKeyedGroup } from '../metrics';

export {
  claimKey,
  commitRecord,
  type IdempotencyRecord,
  type KeyClaim,
  type OnceEffect,
  type OnceOutcome,
  runOnce,
} from '../db/idempotency';

/**
 * A keyed write that can run as one statement with its record (runOnce): the effect, and what to note from the
 * effect's row (its function's columns, as JSON) once it has committed. The services that have one make it from the
 * same input as their general form, so the two write the same thing.
 */
export interface OnceWrite {
  effect: OnceEffect;
  settle(result: Record<string, unknown>): void;
}

/**
 * What every keyed write of a process shares: its records' TTL (s), the lock lease (s), the figures' mark; and the
 * most writes one statement carries (KEYED_GROUP_MAX; each is a subtransaction, and PostgreSQL keeps 64 of them per
 * transaction in shared memory before every snapshot of every session gets slower).
 */
export interface OnceSettings {
  ttlSeconds: number;
  leaseSeconds: number;
  mark: string;
  groupMax: number;
}

/**
 * How many group statements a process keeps in flight before the next writes wait to go together (unless they fill a
 * group), and how long a statement in flight holds them back at most: a group stuck behind a lock delays the next
 * one by HOLD_MS, not by the lock's wait. One statement at a time keeps groups large under load (9.8 writes on
 * average at saturation here, against 5.5–5.8 with no wait), and at low load a write finds nothing in flight.
 */
const IN_FLIGHT = 1;
const HOLD_MS = 20;

interface Waiting {
  item: OnceItem;
  resolve(outcome: OnceOutcome): void;
  reject(error: unknown): void;
}

/**
 * Keyed writes in groups: the ones a process has ready together go to the database as one statement (runOnceGroup),
 * up to KEYED_GROUP_MAX at a time, and so share one round trip, one transaction and one commit, where each used to
 * pay for its own. Ready together: in the same event-loop turn (requests whose checks came back in the same store
 * reply, typically), or while the previous group is in flight (see IN_FLIGHT). Each is still whole or absent on its
 * own. A write alone runs as runOnce. In a group a write waits for a lock at most GROUP_LOCK_WAIT_MS: one that
 * would wait longer (or lost a deadlock) leaves the group and runs again alone, with the full lease, so a group never
 * stays stuck behind another transaction. The group's transaction holds what its writes locked until it commits.
 */
export class OnceGroups {
  private waiting: Waiting[] = [];
  private scheduled = false;
  /** When each statement of this process's groups now in flight was sent (ms). */
  private readonly inFlight: number[] = [];
  private recheck: NodeJS.Timeout | undefined;
  /** Writes of a group run again alone (a lock past the budget, a deadlock lost): for tests and a debugger. */
  retriedAlone = 0;

  constructor(
    private readonly db: Database,
    private readonly settings: OnceSettings,
  ) {}

  /** Run a keyed write with the others of this turn. Out and errors: as runOnce's. */
  run(item: OnceItem): Promise<OnceOutcome> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ item, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }

  private flush(): void {
    this.scheduled = false;
    const max = this.settings.groupMax;
    while (this.waiting.length > 0) {
      const now = performance.now();
      const recent = this.inFlight.filter((sent) => now - sent < HOLD_MS);
      if (recent.length >= IN_FLIGHT && this.waiting.length < max) {
        // Busy: the writes wait for a statement to come back (or to have run HOLD_MS), and go on together.
        if (!this.recheck) {
          this.recheck = setTimeout(
            () => {
              this.recheck = undefined;
              this.flush();
            },
            Math.max(1, Math.min(...recent) + HOLD_MS - now),
          );
        }
        return;
      }
      void this.send(this.waiting.splice(0, max));
    }
  }

  private alone(item: OnceItem): Promise<OnceOutcome> {
    const { ttlSeconds, leaseSeconds, mark } = this.settings;
    return runOnce(this.db, item.record, ttlSeconds, leaseSeconds, mark, item.effect);
  }

  private async send(group: Waiting[]): Promise<void> {
    const sent = performance.now();
    this.inFlight.push(sent);
    try {
      await this.sendGroup(group);
    } finally {
      this.inFlight.splice(this.inFlight.indexOf(sent), 1);
      clearTimeout(this.recheck);
      this.recheck = undefined;
      if (this.waiting.length > 0) this.schedule();
    }
  }

  private async sendGroup(group: Waiting[]): Promise<void> {
    observeKeyedGroup(group.length);
    if (group.length === 1) {
      const [only] = group;
      return this.alone(only.item).then(only.resolve, only.reject);
    }
    const { ttlSeconds, mark } = this.settings;
    let outcomes: Awaited<ReturnType<typeof runOnceGroup>>;
    try {
      outcomes = await runOnceGroup(
        this.db,
        group.map((w) => w.item),
        ttlSeconds,
        mark,
      );
    } catch (error) {
      for (const w of group) w.reject(error);
      return;
    }
    for (const [i, w] of group.entries()) {
      const outcome = outcomes[i] ?? { error: new Error('the group statement gave no answer for this keyed write') };
      if ('error' in outcome) w.reject(outcome.error);
      else if ('retry' in outcome) {
        this.retriedAlone++;
        observeKeyedGroup(1);
        this.alone(w.item).then(w.resolve, w.reject);
      } else w.resolve(outcome);
    }
  }
}
