import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { Database } from '../db/database';
import type { EphemeralStore } from '../store/store';

type Topic = 'queued' | 'events' | 'cancelled';

/**
 * Wake-ups between processes, sent after the writing transaction commits:
 * - `queued`: a build was queued — runners try to claim;
 * - `events`: a build has new events — its live streams read them;
 * - `cancelled`: a build was cancelled — the runner executing it stops it.
 * With Redis they travel by pub/sub (cheaper than NOTIFY inside the writing transaction); with PostgreSQL and no
 * Redis by NOTIFY after commit; embedded, in-process. Each process holds one subscription per topic and fans out
 * locally. Losing a wake-up is harmless: runners and streams also poll slowly.
 */
export class BuildSignals {
  private readonly local = new EventEmitter();
  private readonly subscribed = new Map<Topic, Promise<() => Promise<void>>>();
  private readonly channelPrefix: string;

  constructor(
    private readonly db: Database,
    private readonly store: EphemeralStore,
    schema: string,
    private readonly logger: Logger,
  ) {
    this.local.setMaxListeners(0);
    this.channelPrefix = `kiln_${schema}_`;
  }

  private get viaPostgres(): boolean {
    return this.store.kind !== 'redis' && this.db.kind === 'postgres';
  }

  /** Send a wake-up; never throws (a lost wake-up only delays until the next poll). */
  send(topic: Topic, payload = ''): void {
    const channel = this.channelPrefix + topic;
    const sent = this.viaPostgres
      ? this.db.query('select pg_notify($1::text, $2::text)', [channel, payload])
      : this.store.publish(channel, payload);
    sent.catch((error: unknown) => this.logger.warn({ err: error, topic }, 'wake-up not sent; pollers will catch up'));
  }

  /** Listen for a topic; resolves once the process-wide subscription is active. */
  async on(topic: Topic, handler: (payload: string) => void): Promise<() => void> {
    if (!this.subscribed.has(topic)) {
      const channel = this.channelPrefix + topic;
      const emit = (payload: string) => this.local.emit(topic, payload);
      const subscription = this.viaPostgres
        ? this.db.listen(channel, emit, (event) => {
            if (event.state === 'lost') {
              this.logger.warn(
                { topic, error: event.error },
                'LISTEN connection lost; reconnecting (wake-ups wait for the slow poll meanwhile)',
              );
            } else this.logger.info({ topic, attempt: event.attempt }, 'LISTEN connection restored');
          })
        : this.store.subscribe(channel, emit);
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
