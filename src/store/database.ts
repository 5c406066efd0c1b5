import { EventEmitter } from 'node:events';
import type { Database, ListenConnectionEvent } from '../db/database';
import { notify, purgeStore, storeClaim, storeDelete, storeGet, storeSet } from '../db/ephemeral';
import { ping } from '../db/health';
import type { ClaimResult, EphemeralStore, WindowCount } from './store';

export interface DatabaseStoreOptions {
  /** The request-path database: claims are request traffic. */
  db: Database;
  /** Where wake-ups and the purge go (PostgreSQL NOTIFY must not wait behind requests); defaults to `db`. */
  background?: Database;
  /** Prefix of every NOTIFY channel (channels are per database: the schema keeps deployments apart). */
  channelPrefix: string;
  /** Told when a LISTEN connection is lost or restored (wake-ups wait for the slow polls meanwhile). */
  onListenConnection?: (channel: string, event: ListenConnectionEvent) => void;
}

/**
 * The ephemeral store kept in the database (no Redis): nonces, counters and copies in tables, so every process that
 * shares the database shares them (SPEC section 3). On PostgreSQL a claim commits asynchronously — a hot counter's row
 * lock is then held for microseconds, not a WAL flush — and answers the server's start as its epoch, so requests
 * signed before a crash that lost claims are refused; wake-ups travel by NOTIFY. On the embedded PGlite (one process)
 * claims commit as usual, nothing is ever lost (epoch 0), and wake-ups stay in the process.
 */
export function openDatabaseStore(options: DatabaseStoreOptions): EphemeralStore {
  const { db } = options;
  const background = options.background ?? db;
  const async = db.kind === 'postgres';
  const local = new EventEmitter();
  local.setMaxListeners(0);
  const hit = async (key: string, windowMs: number): Promise<WindowCount> => {
    const row = await storeClaim(db, { nonceKeys: [], value: '', ttlMs: 1, counters: [{ key, windowMs }], async });
    return { count: row.counts[0], resetMs: row.resetsMs[0] };
  };
  return {
    kind: 'database',
    setIfAbsent: (key, value, ttlMs) => storeSet(db, key, value, ttlMs, true),
    get: (key) => storeGet(db, key),
    async set(key, value, ttlMs) {
      await storeSet(db, key, value, ttlMs, false);
    },
    delete: (key) => storeDelete(db, key),
    hit,
    async claimNonceAndHit(nonce, counters, read) {
      const row = await storeClaim(db, {
        nonceKeys: nonce.keys,
        marks: nonce.marks,
        checks: nonce.checks,
        value: nonce.value,
        ttlMs: nonce.ttlMs,
        counters,
        read,
        async,
      });
      const result: ClaimResult = {
        fresh: row.fresh,
        counts: row.counts.map((count, i) => ({ count, resetMs: row.resetsMs[i] })),
        epochMs: row.epochMs,
      };
      if (read !== undefined) result.read = row.read ?? null;
      return result;
    },
    async publish(channel, message) {
      if (background.kind === 'postgres') {
        await notify(background, options.channelPrefix + channel, message);
      } else local.emit(channel, message);
    },
    async subscribe(channel, onMessage) {
      if (background.kind === 'postgres') {
        return background.listen(options.channelPrefix + channel, onMessage, (event) =>
          options.onListenConnection?.(channel, event),
        );
      }
      local.on(channel, onMessage);
      return async () => void local.off(channel, onMessage);
    },
    ping: () => ping(db),
    purge: (limit) => purgeStore(background, limit),
    async close() {
      local.removeAllListeners();
    },
  };
}
