import { EventEmitter } from 'node:events';
import type { ClaimResult, EphemeralStore, WindowCount } from './store';

interface Entry {
  value: string;
  expiresAt: number;
}

/** In-process store for single-process (embedded) mode. Expired keys are dropped lazily and by a sweep. */
export function openMemoryStore(prefix = ''): EphemeralStore {
  const entries = new Map<string, Entry>();
  const bus = new EventEmitter();
  bus.setMaxListeners(0);
  const live = (key: string): Entry | undefined => {
    const entry = entries.get(prefix + key);
    if (entry && entry.expiresAt <= Date.now()) {
      entries.delete(prefix + key);
      return undefined;
    }
    return entry;
  };
  const sweep = setInterval(() => {
    const now = Date.now();
    for (const [key, entry] of entries) if (entry.expiresAt <= now) entries.delete(key);
  }, 30_000);
  sweep.unref();

  // Synchronous cores of setIfAbsent and hit, so claimNonceAndHit runs them all in one step (atomic in-process).
  const setIfAbsent = (key: string, value: string, ttlMs: number): boolean => {
    if (live(key)) return false;
    entries.set(prefix + key, { value, expiresAt: Date.now() + ttlMs });
    return true;
  };
  const hit = (key: string, windowMs: number): WindowCount => {
    const now = Date.now();
    const windowStart = now - (now % windowMs);
    const windowKey = `${key}:${windowStart}`;
    const count = Number(live(windowKey)?.value ?? 0) + 1;
    entries.set(prefix + windowKey, { value: String(count), expiresAt: windowStart + windowMs });
    return { count, resetMs: windowStart + windowMs - now };
  };

  return {
    kind: 'memory',
    async setIfAbsent(key, value, ttlMs) {
      return setIfAbsent(key, value, ttlMs);
    },
    async get(key) {
      return live(key)?.value ?? null;
    },
    async set(key, value, ttlMs) {
      entries.set(prefix + key, { value, expiresAt: Date.now() + ttlMs });
    },
    async delete(key) {
      entries.delete(prefix + key);
    },
    async hit(key, windowMs) {
      return hit(key, windowMs);
    },
    async claimNonceAndHit(nonce, counters, read) {
      const fresh = setIfAbsent(nonce.key, nonce.value, nonce.ttlMs);
      const result: ClaimResult = { fresh, counts: counters.map((c) => hit(c.key, c.windowMs)) };
      if (read !== undefined) result.read = live(read)?.value ?? null;
      return result;
    },
    async publish(channel, message) {
      bus.emit(prefix + channel, message);
    },
    async subscribe(channel, onMessage) {
      bus.on(prefix + channel, onMessage);
      return async () => void bus.off(prefix + channel, onMessage);
    },
    async ping() {},
    async close() {
      clearInterval(sweep);
      bus.removeAllListeners();
      entries.clear();
    },
  };
}
