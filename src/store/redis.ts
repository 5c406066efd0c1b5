import { Redis } from 'ioredis';
import { type EphemeralStore, StoreUnavailableError, type WindowCount } from './store';

// One round trip: count the hit in the current fixed window and give the time left in it.
const HIT_SCRIPT = `
local count = redis.call('incr', KEYS[1])
if count == 1 then redis.call('pexpire', KEYS[1], ARGV[1]) end
local ttl = redis.call('pttl', KEYS[1])
return {count, ttl}`;

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
  const handlers = new Map<string, Set<(message: string) => void>>();
  subscriber.on('message', (channel: string, message: string) => {
    for (const handler of handlers.get(channel) ?? []) handler(message);
  });
  let subscriberConnected = false;

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
      const run = (client as unknown as { kilnHit(k: string, ttl: number): Promise<[number, number]> }).kilnHit;
      const [count, ttl] = await wrap(run.call(client, `${key}:${windowStart}`, windowStart + windowMs - now));
      return { count, resetMs: Math.max(0, ttl) };
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
