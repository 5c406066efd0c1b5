import { Redis } from 'ioredis';
import { type EphemeralStore, StoreUnavailableError, type WindowCount } from './store';

// One round trip: count the hit in the current fixed window and give the time left in it.
const HIT_SCRIPT = `
local count = redis.call('incr', KEYS[1])
if count == 1 then redis.call('pexpire', KEYS[1], ARGV[1]) end
local ttl = redis.call('pttl', KEYS[1])
return {count, ttl}`;

// The signed-request guard's check-and-count for a batch of requests in one command. Per claim, in order: KEYS holds
// the nonce then its window counters; ARGV holds the counter count n, the nonce's value and TTL (ms), then the ms
// left in each counter's window. The nonce is SET NX PX; each counter is counted as HIT_SCRIPT does. Returns, per
// claim, 1|0 (nonce stored or not) followed by count, ttl for each counter.
const CLAIM_SCRIPT = `
local out = {}
local k, a = 1, 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  out[#out + 1] = redis.call('set', KEYS[k], ARGV[a + 1], 'PX', ARGV[a + 2], 'NX') and 1 or 0
  for i = 1, n do
    local key = KEYS[k + i]
    local count = redis.call('incr', key)
    if count == 1 then redis.call('pexpire', key, ARGV[a + 2 + i]) end
    out[#out + 1] = count
    out[#out + 1] = redis.call('pttl', key)
  end
  k = k + 1 + n
  a = a + 3 + n
end
return out`;

/** Claims sent in one CLAIM_SCRIPT call at most. */
const CLAIM_BATCH = 64;

interface PendingClaim {
  keys: string[];
  args: (string | number)[];
  counters: number;
  resolve(result: { fresh: boolean; counts: WindowCount[] }): void;
  reject(error: unknown): void;
}

type ScriptRunner = {
  kilnHit(key: string, ttlMs: number): Promise<[number, number]>;
  kilnClaim(numberOfKeys: number, ...keysThenArgs: (string | number)[]): Promise<number[]>;
};

export interface RedisStoreOptions {
  url: string;
  prefix: string;
  /** Milliseconds a command may wait before it fails (the store is then treated as down). */
  commandTimeoutMs?: number;
}

function wrap<T>(promise: Promise<T>): Promise<T> {
  return promise.catch((error) => {
    throw new StoreUnavailableError(error);
  });
}

/**
 * Redis store. Commands fail fast while Redis is unreachable (no offline queue), so callers see
 * StoreUnavailableError at once instead of hanging; the client keeps reconnecting in the background.
 */
export async function openRedisStore(options: RedisStoreOptions): Promise<EphemeralStore> {
  const common = {
    keyPrefix: options.prefix,
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: options.commandTimeoutMs ?? 2_000,
    retryStrategy: (attempt: number) => Math.min(attempt * 200, 2_000),
  };
  const client = new Redis(options.url, common);
  const subscriber = new Redis(options.url, { ...common, keyPrefix: undefined, enableOfflineQueue: true });
  // Connection errors are reported through commands failing and /readyz; without a listener ioredis would log noise.
  client.on('error', () => {});
  subscriber.on('error', () => {});
  await wrap(client.connect());
  client.defineCommand('kilnHit', { numberOfKeys: 1, lua: HIT_SCRIPT });
  // No fixed key count: the caller passes it first (the nonce plus however many counters).
  client.defineCommand('kilnClaim', { lua: CLAIM_SCRIPT });
  const scripts = client as unknown as ScriptRunner;
  const handlers = new Map<string, Set<(message: string) => void>>();
  subscriber.on('message', (channel: string, message: string) => {
    for (const handler of handlers.get(channel) ?? []) handler(message);
  });
  let subscriberConnected = false;

  // Claims made while the event loop handles one batch of I/O leave together: one script, one socket write and one
  // reply for all of them. A write to Redis's socket was the largest single cost of a signed request (one per
  // request); batched, it is one per loop turn. A lone request waits for nothing but the end of its loop turn.
  let pending: PendingClaim[] = [];
  const sendClaims = () => {
    const claims = pending;
    pending = [];
    for (let from = 0; from < claims.length; from += CLAIM_BATCH) {
      const batch = claims.slice(from, from + CLAIM_BATCH);
      const keys = batch.flatMap((c) => c.keys);
      const args = batch.flatMap((c) => c.args);
      const failed = (error: unknown) => {
        const unavailable = new StoreUnavailableError(error);
        for (const claim of batch) claim.reject(unavailable);
      };
      let sent: Promise<number[]>;
      try {
        sent = scripts.kilnClaim(keys.length, ...keys, ...args);
      } catch (error) {
        failed(error);
        continue;
      }
      sent.then((reply) => {
        let at = 0;
        for (const claim of batch) {
          const fresh = reply[at++] === 1;
          const counts: WindowCount[] = [];
          for (let i = 0; i < claim.counters; i++, at += 2) {
            counts.push({ count: reply[at], resetMs: Math.max(0, reply[at + 1]) });
          }
          claim.resolve({ fresh, counts });
        }
      }, failed);
    }
  };

  return {
    kind: 'redis',
    async setIfAbsent(key, value, ttlMs) {
      return (await wrap(client.set(key, value, 'PX', ttlMs, 'NX'))) === 'OK';
    },
    get: (key) => wrap(client.get(key)),
    async set(key, value, ttlMs) {
      await wrap(client.set(key, value, 'PX', ttlMs));
    },
    async delete(key) {
      await wrap(client.del(key));
    },
    async hit(key, windowMs): Promise<WindowCount> {
      const now = Date.now();
      const windowStart = now - (now % windowMs);
      const [count, ttl] = await wrap(scripts.kilnHit(`${key}:${windowStart}`, windowStart + windowMs - now));
      return { count, resetMs: Math.max(0, ttl) };
    },
    claimNonceAndHit(nonce, counters) {
      const now = Date.now();
      const keys: string[] = [nonce.key];
      const args: (string | number)[] = [counters.length, nonce.value, nonce.ttlMs];
      for (const { key, windowMs } of counters) {
        const windowStart = now - (now % windowMs);
        keys.push(`${key}:${windowStart}`);
        args.push(windowStart + windowMs - now);
      }
      return new Promise((resolve, reject) => {
        if (pending.length === 0) setImmediate(sendClaims);
        pending.push({ keys, args, counters: counters.length, resolve, reject });
      });
    },
    async publish(channel, message) {
      await wrap(client.publish(options.prefix + channel, message));
    },
    async subscribe(channel, onMessage) {
      if (!subscriberConnected) {
        await wrap(subscriber.connect());
        subscriberConnected = true;
      }
      const full = options.prefix + channel;
      let set = handlers.get(full);
      if (!set) {
        set = new Set();
        handlers.set(full, set);
        await wrap(subscriber.subscribe(full));
      }
      set.add(onMessage);
      return async () => {
        set.delete(onMessage);
        if (set.size === 0 && handlers.get(full) === set) {
          handlers.delete(full);
          await subscriber.unsubscribe(full).catch(() => {});
        }
      };
    },
    async ping() {
      await wrap(client.ping());
    },
    async close() {
      client.disconnect();
      subscriber.disconnect();
    },
  };
}
