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

interface Waiting {
  item: OnceItem;
  resolve(outcome: OnceOutcome): void;
  reject(error: unknown): void;
}

/**
 * Keyed writes in groups: the ones a process has ready in the same event-loop turn (requests whose checks came back
 * in the same store reply, typically) go to the database as one statement (runOnceGroup), up to KEYED_GROUP_MAX at a time,
 * and so share one round trip, one transaction and one commit, where each used to pay for its own. Each is still
 * whole or absent on its own. A write alone in its turn runs as runOnce; one that lost a deadlock to another group
 * runs again alone. The group's transaction holds what its writes locked until it commits: a few milliseconds.
 */
export class OnceGroups {
  private waiting: Waiting[] = [];
  private scheduled = false;
  /** Writes run again alone after losing a deadlock in a group (kept for tests and for a look in a debugger). */
  retriedAlone = 0;

  constructor(
    private readonly db: Database,
    private readonly settings: OnceSettings,
  ) {}

  /** Run a keyed write with the others of this turn. Out and errors: as runOnce's. */
  run(item: OnceItem): Promise<OnceOutcome> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ item, resolve, reject });
      if (this.scheduled) return;
      this.scheduled = true;
      setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    this.scheduled = false;
    const all = this.waiting;
    this.waiting = [];
    const max = this.settings.groupMax;
    for (let i = 0; i < all.length; i += max) void this.send(all.slice(i, i + max));
  }

  private alone(item: OnceItem): Promise<OnceOutcome> {
    const { ttlSeconds, leaseSeconds, mark } = this.settings;
    return runOnce(this.db, item.record, ttlSeconds, leaseSeconds, mark, item.effect);
  }

  private async send(group: Waiting[]): Promise<void> {
    observeKeyedGroup(group.length);
    if (group.length === 1) {
      const [only] = group;
      return this.alone(only.item).then(only.resolve, only.reject);
    }
    const { ttlSeconds, leaseSeconds, mark } = this.settings;
    let outcomes: Awaited<ReturnType<typeof runOnceGroup>>;
    try {
      outcomes = await runOnceGroup(
        this.db,
        group.map((w) => w.item),
        ttlSeconds,
        leaseSeconds,
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
        this.alone(w.item).then(w.resolve, w.reject);
      } else w.resolve(outcome);
    }
  }
}

const groups = new WeakMap<Database, OnceGroups>();

/** The process's keyed-write groups on `db` (one per database, made on first use with these settings). */
export function onceGroupsOf(db: Database, settings: OnceSettings): OnceGroups {
  let found = groups.get(db);
  if (!found) {
    found = new OnceGroups(db, settings);
    groups.set(db, found);
  }
  return found;
}
