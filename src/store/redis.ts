import { type ChainableCommander, Redis } from 'ioredis';
import { type ClaimResult, type EphemeralStore, StoreUnavailableError, type WindowCount } from './store';

// One round trip: count the hit in the current fixed window and give the time left in it.
const HIT_SCRIPT = `
local count = redis.call('incr', KEYS[1])
if count == 1 then redis.call('pexpire', KEYS[1], ARGV[1]) end
local ttl = redis.call('pttl', KEYS[1])
return {count, ttl}`;

// The instant (ms, Redis's clock) since which this Redis holds every claim, kept with the run id of the Redis server
// that set it: set again when absent (the first start; a restart without persistence; a flush) and when the server is
// another one (a restart that reloaded a snapshot or an AOF, which brings the old epoch back without the nonces
// written since; a replica promoted). Answers it and whether it was set now.
const EPOCH_LUA = `
local run = string.match(redis.call('info', 'server'), 'run_id:(%w+)')
local stored = redis.call('get', KEYS[1])
local epoch
local fresh = 0
if stored then
  local ms, id = string.match(stored, '^(%d+):(%w+)$')
  if id == run then epoch = ms end
end
if not epoch then
  local t = redis.call('time')
  epoch = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('set', KEYS[1], epoch .. ':' .. run)
  fresh = 1
end`;
const EPOCH_SCRIPT = `${EPOCH_LUA}
return {epoch, fresh}`;

// The signed-request guard's check-and-count for a batch of requests in one command. KEYS: the epoch key, then each
// claim's nonce keys and mark keys, then each distinct counter key of the batch, then the keys to read. ARGV: the
// number of claims, of counters and of reads; per claim the number of its nonce keys, marks and checks, their value
// and TTL (ms); per counter the hits to add and the ms left in its window. A claim's nonce keys are stored (SET PX)
// together only when none of them nor of its checks exists, and its marks with them (existing or not); each
// counter is counted once for all its hits in the batch (INCRBY, with the window's expiry when the batch created it),
// which is what that many INCRs in a row would leave. Returns the epoch, then per claim 1|0 (stored or not), per
// counter its new count and PTTL, per read its value (nil when absent).
const CLAIM_SCRIPT = `${EPOCH_LUA}
local claims, counters, reads = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {epoch}
local k, a = 2, 4
for i = 1, claims do
  local n, m, c = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local free = true
  for j = k, k + n - 1 do
    if redis.call('exists', KEYS[j]) == 1 then free = false end
  end
  for j = k + n + m, k + n + m + c - 1 do
    if redis.call('exists', KEYS[j]) == 1 then free = false end
  end
  if free then
    for j = k, k + n + m - 1 do redis.call('set', KEYS[j], ARGV[a + 3], 'PX', ARGV[a + 4]) end
  end
  out[#out + 1] = free and 1 or 0
  k = k + n + m + c
  a = a + 5
end
for i = 1, counters do
  local key = KEYS[k]
  local hits = tonumber(ARGV[a])
  local count = redis.call('incrby', key, hits)
  if count == hits then redis.call('pexpire', key, ARGV[a + 1]) end
  out[#out + 1] = count
  out[#out + 1] = redis.call('pttl', key)
  k = k + 1
  a = a + 2
end
for i = 1, reads do
  out[#out + 1] = redis.call('get', KEYS[k])
  k = k + 1
end
return out`;

/** Claims sent in one CLAIM_SCRIPT call at most. */
const CLAIM_BATCH = 64;

interface PendingClaim {
  nonceKeys: readonly string[];
  markKeys: readonly string[];
  checkKeys: readonly string[];
  nonceValue: string;
  nonceTtlMs: number;
  /** Window keys (counter key and window start) with the ms left in each window. */
  counters: { key: string; ttlMs: number }[];
  read?: string;
  resolve(result: ClaimResult): void;
  reject(error: unknown): void;
}

type ScriptRunner = {
  kilnHit(key: string, ttlMs: number): Promise<[number, number]>;
  kilnClaim(numberOfKeys: number, ...keysThenArgs: (string | number)[]): Promise<(number | string | null)[]>;
  kilnEpoch(key: string): Promise<[string, number]>;
};

/** The key of the epoch (under the store's prefix). */
const EPOCH_KEY = 'epoch';

export interface RedisStoreOptions {
  url: string;
  /** Prefix of every key and channel: the operator's REDIS_PREFIX and the deployment's id (see stores.ts). */
  prefix: string;
  /** Told of a Redis setting that weakens a guarantee (an eviction policy that may evict nonces). */
  warn?: (message: string) => void;
  /** Milliseconds a command may wait before it fails (the store is then treated as down). */
  commandTimeoutMs?: number;
}

function wrap<T>(promise: Promise<T>): Promise<T> {
  return promise.catch((error) => {
    throw new StoreUnavailableError(error);
  });
}

/**
 * Nonces have a TTL and the epoch has none: under `volatile-*` (or `allkeys-*`) eviction Redis may drop nonces while
 * the epoch stays, and a captured request could then be replayed. Say so at start; managed Redis may refuse CONFIG.
 */
async function warnOnEviction(client: Redis, warn: ((message: string) => void) | undefined): Promise<void> {
  if (!warn) return;
  try {
    const [, policy] = (await client.config('GET', 'maxmemory-policy')) as string[];
    if (policy && policy !== 'noeviction') {
      warn(
        `Redis maxmemory-policy is ${policy}: under memory pressure Redis may evict nonces, which lets a captured request be replayed; set maxmemory-policy noeviction`,
      );
    }
  } catch {
    // CONFIG is often disabled on managed Redis: nothing to check.
  }
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
  // The first one is kept until connected, so that a failed start says why (refused, unknown host, bad password).
  let connectError: unknown;
  client.on('error', (error) => {
    if (client.status !== 'ready') connectError ??= error;
  });
  subscriber.on('error', () => {});
  try {
    await wrap(client.connect());
  } catch (error) {
    client.disconnect();
    subscriber.disconnect();
    throw connectError ? new StoreUnavailableError(connectError) : error;
  }
  client.defineCommand('kilnHit', { numberOfKeys: 1, lua: HIT_SCRIPT });
  // No fixed key count: the caller passes it first (the nonce plus however many counters).
  client.defineCommand('kilnClaim', { lua: CLAIM_SCRIPT });
  client.defineCommand('kilnEpoch', { numberOfKeys: 1, lua: EPOCH_SCRIPT });
  const scripts = client as unknown as ScriptRunner;
  // A fresh epoch (first start, or Redis lost its data while no Kiln ran) refuses requests signed before it, to the
  // second. Starting past the next second means a request signed after start is never one of them.
  const [epoch, fresh] = await wrap(scripts.kilnEpoch(EPOCH_KEY));
  if (fresh === 1) await new Promise((resolve) => setTimeout(resolve, 1000 - (Number(epoch) % 1000) + 5));
  await warnOnEviction(client, options.warn);
  const subscribe = subscriptions(subscriber, options.prefix);
  const turn = perTurn(client);
  const claims = claimBatcher(turn);

  return {
    kind: 'redis',
    // Every command goes with its turn's others (perTurn), so the store's commands run in the order they were
    // issued: a copy stored after an answer is never overtaken by a delete or a read issued after it.
    async setIfAbsent(key, value, ttlMs) {
      return (await inTurn(turn, (p) => p.set(key, value, 'PX', ttlMs, 'NX'))) === 'OK';
    },
    get: (key) => inTurn<string | null>(turn, (p) => p.get(key)),
    async set(key, value, ttlMs) {
      await inTurn(turn, (p) => p.set(key, value, 'PX', ttlMs));
    },
    async delete(key) {
      await inTurn(turn, (p) => p.del(key));
    },
    async hit(key, windowMs): Promise<WindowCount> {
      const now = Date.now();
      const windowStart = now - (now % windowMs);
      const [count, ttl] = await inTurn<[number, number]>(turn, (p) =>
        (p as unknown as ScriptRunner).kilnHit(`${key}:${windowStart}`, windowStart + windowMs - now),
      );
      return { count, resetMs: Math.max(0, ttl) };
    },
    claimNonceAndHit: claims,
    async publish(channel, message) {
      await inTurn(turn, (p) => p.publish(options.prefix + channel, message));
    },
    subscribe,
    async ping() {
      await wrap(client.ping());
    },
    async close() {
      client.disconnect();
      subscriber.disconnect();
    },
  };
}

/** Adds its commands to a pipeline and gives a handler for each reply, in the order it added them. */
type Adder = (pipeline: ChainableCommander) => ((error: Error | null, reply: unknown) => void)[];

/**
 * Commands of one event-loop turn, sent together: every command issued while the event loop handles one batch of I/O
 * goes out as one pipeline, one socket write, once that turn is over (the guard's claims, the stored copies of
 * answers, the wake-ups). A write to Redis's socket is the largest single cost of a command here; a lone command
 * waits for nothing but the end of its loop turn. Replies and errors reach each command's own handler.
 */
function perTurn(client: Redis): (add: Adder) => void {
  let adders: Adder[] = [];
  const flush = () => {
    const batch = adders;
    adders = [];
    const pipeline = client.pipeline();
    const handlers = batch.flatMap((add) => add(pipeline));
    pipeline.exec().then(
      (replies) => {
        handlers.forEach((handle, i) => {
          const [error, reply] = replies?.[i] ?? [new Error('no reply from Redis'), null];
          handle(error, reply);
        });
      },
      (error: Error) => {
        for (const handle of handlers) handle(error, null);
      },
    );
  };
  return (add) => {
    if (adders.length === 0) setImmediate(flush);
    adders.push(add);
  };
}

/** One command sent with the turn's others (perTurn); its reply, or StoreUnavailableError. */
function inTurn<T>(turn: (add: Adder) => void, command: (pipeline: ChainableCommander) => unknown): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    turn((pipeline) => {
      command(pipeline);
      return [(error, reply) => (error ? reject(new StoreUnavailableError(error)) : resolve(reply as T))];
    });
  });
}

/**
 * The guard's claims, batched: the claims made while the event loop handles one batch of I/O leave together, as one
 * script, one socket write and one reply. A write to Redis's socket was the largest single cost of a signed request
 * (one per request); batched, it is one per loop turn. A lone request waits for nothing but the end of its loop turn.
 */
function claimBatcher(turn: (add: Adder) => void): EphemeralStore['claimNonceAndHit'] {
  let pending: PendingClaim[] = [];
  // Added to the turn's pipeline when the turn ends: every claim of the turn is in by then.
  const addClaims: Adder = (pipeline) => {
    const claims = pending;
    pending = [];
    const handlers: ReturnType<Adder> = [];
    for (let from = 0; from < claims.length; from += CLAIM_BATCH) {
      const batch = claims.slice(from, from + CLAIM_BATCH);
      const failed = (error: unknown) => {
        const unavailable = new StoreUnavailableError(error);
        for (const claim of batch) claim.reject(unavailable);
      };
      // Hits per distinct counter key: under load most of a batch shares one key (the client address). `count` and
      // `resetMs` are filled from the reply.
      const hits = new Map<string, { hits: number; ttlMs: number; count: number; resetMs: number }>();
      for (const claim of batch) {
        for (const counter of claim.counters) {
          const seen = hits.get(counter.key);
          if (seen) seen.hits++;
          else hits.set(counter.key, { hits: 1, ttlMs: counter.ttlMs, count: 0, resetMs: 0 });
        }
      }
      const reads = batch.filter((c) => c.read !== undefined).map((c) => c.read as string);
      const keys = [
        EPOCH_KEY,
        ...batch.flatMap((c) => [...c.nonceKeys, ...c.markKeys, ...c.checkKeys]),
        ...hits.keys(),
        ...reads,
      ];
      const args: (string | number)[] = [batch.length, hits.size, reads.length];
      for (const claim of batch) {
        args.push(
          claim.nonceKeys.length,
          claim.markKeys.length,
          claim.checkKeys.length,
          claim.nonceValue,
          claim.nonceTtlMs,
        );
      }
      for (const { hits: n, ttlMs } of hits.values()) args.push(n, ttlMs);
      (pipeline as unknown as ScriptRunner).kilnClaim(keys.length, ...keys, ...args);
      handlers.push((error, replied) => {
        if (error) return failed(error);
        const reply = replied as (number | string | null)[];
        const epochMs = Number(reply[0]);
        // Each counter's hits, in batch order, take the counts its INCRBY covered.
        let at = 1 + batch.length;
        for (const counter of hits.values()) {
          counter.count = (reply[at] as number) - counter.hits;
          counter.resetMs = Math.max(0, reply[at + 1] as number);
          at += 2;
        }
        batch.forEach((claim, i) => {
          const counts: WindowCount[] = claim.counters.map(({ key }) => {
            const counter = hits.get(key) as { count: number; resetMs: number };
            counter.count++;
            return { count: counter.count, resetMs: counter.resetMs };
          });
          const result: ClaimResult = { fresh: reply[1 + i] === 1, counts, epochMs };
          if (claim.read !== undefined) result.read = (reply[at++] as string | null) ?? null;
          claim.resolve(result);
        });
      });
    }
    return handlers;
  };
  return (nonce, counters, read) => {
    const now = Date.now();
    const windows = counters.map(({ key, windowMs }) => {
      const windowStart = now - (now % windowMs);
      return { key: `${key}:${windowStart}`, ttlMs: windowStart + windowMs - now };
    });
    return new Promise((resolve, reject) => {
      if (pending.length === 0) turn(addClaims);
      pending.push({
        nonceKeys: nonce.keys,
        markKeys: nonce.marks ?? [],
        checkKeys: nonce.checks ?? [],
        nonceValue: nonce.value,
        nonceTtlMs: nonce.ttlMs,
        counters: windows,
        read,
        resolve,
        reject,
      });
    });
  };
}

/** Pub/sub on one connection of its own, made on the first subscription; one Redis subscription per channel. */
function subscriptions(subscriber: Redis, prefix: string): EphemeralStore['subscribe'] {
  const handlers = new Map<string, Set<(message: string) => void>>();
  subscriber.on('message', (channel: string, message: string) => {
    for (const handler of handlers.get(channel) ?? []) handler(message);
  });
  let subscriberConnected = false;
  return async (channel, onMessage) => {
    if (!subscriberConnected) {
      await wrap(subscriber.connect());
      subscriberConnected = true;
    }
    const full = prefix + channel;
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
  };
}
