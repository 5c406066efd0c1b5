import type { DbBuild } from '../db/builds';
import type { BuildState } from '../domain/build-states';
import { type CreditOperation, countCreditUsage, observeBuildTransition } from '../metrics';

/**
 * What one transaction did that /metrics counts (credits moved, builds moved), kept until the transaction has
 * committed: `commit()` counts it, and a transaction that rolls back is simply never committed here, so a rolled-back
 * effect is never counted. Services note into the tally their caller gives them (`Caller.tally`); whoever owns the
 * transaction (the HTTP layer for a request, the runner, a background job) commits the tally after it.
 */
export class Tally {
  private credits: [CreditOperation, number][] = [];
  private transitions: [BuildState | null, DbBuild][] = [];

  /** Note credits moved by an operation (0 or less is ignored). */
  credit(operation: CreditOperation, amount: number | null | undefined): void {
    if (amount && amount > 0) this.credits.push([operation, amount]);
  }

  /** Note a build's change of state: `from` the state it left (null: it was just queued), `build` as it now is. */
  transition(from: BuildState | null, build: DbBuild): void {
    this.transitions.push([from, build]);
  }

  /** The transaction committed: count what was noted, once. */
  commit(): void {
    const { credits, transitions } = this;
    this.credits = [];
    this.transitions = [];
    for (const [operation, amount] of credits) countCreditUsage(operation, amount);
    for (const [from, build] of transitions) {
      observeBuildTransition({
        from,
        to: build.state,
        createdAt: build.created_at,
        startedAt: build.started_at,
        finishedAt: build.finished_at,
        reason: build.reason,
      });
    }
  }
}
