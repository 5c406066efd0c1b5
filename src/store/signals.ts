import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { EphemeralStore } from './store';

type Topic = 'queued' | 'events' | 'cancelled';

/**
 * Wake-ups between processes, sent after the writing transaction commits:
 * - `queued`: a build was queued — runners try to claim;
 * - `events`: a build has new events — its live streams read them, and the webhook delivery workers look for due
 *   messages; or (`<build>#replay:<from>:<to>`) its streams should send a range again (POST …/replay);
 * - `cancelled`: a build was cancelled — the runner executing it stops it.
 * They travel through the store: Redis pub/sub, or without Redis PostgreSQL NOTIFY after commit (in-process on the
 * embedded database). Each process holds one subscription per topic and fans out locally. Losing a wake-up is
 * harmless: runners, streams and delivery workers also poll slowly — except a replay's, which only the wake-up
 * carries to the streams (the webhook's replay is in the outbox).
 */
export class BuildSignals {
  private readonly local = new EventEmitter();
  private readonly subscribed = new Map<Topic, Promise<() => Promise<void>>>();

  constructor(
    private readonly store: EphemeralStore,
    private readonly logger: Logger,
  ) {
    this.local.setMaxListeners(0);
  }

  /** Send a wake-up; never throws (a lost wake-up only delays until the next poll). */
  send(topic: Topic, payload = ''): void {
    this.store
      .publish(topic, payload)
      .catch((error: unknown) => this.logger.warn({ err: error, topic }, 'wake-up not sent; pollers will catch up'));
  }

  /** Listen for a topic; resolves once the process-wide subscription is active. */
  async on(topic: Topic, handler: (payload: string) => void): Promise<() => void> {
    if (!this.subscribed.has(topic)) {
      const subscription = this.store.subscribe(topic, (payload) => this.local.emit(topic, payload));
      this.subscribed.set(topic, subscription);
      subscription.catch(() => this.subscribed.delete(topic));
    }
    await this.subscribed.get(topic);
    this.local.on(topic, handler);
    return () => this.local.off(topic, handler);
  }

  async close(): Promise<void> {
    this.local.removeAllListeners();
    const all = [...this.subscribed.values()];
    this.subscribed.clear();
    await Promise.all(all.map(async (s) => (await s.catch(() => async () => {}))()));
  }
}
