/**
 * The ephemeral store: nonces, rate counters, copies of recorded responses and wake-ups. Two implementations share
 * one contract test suite: Redis (`redis.ts`) and the database itself when there is no Redis (`database.ts`, on
 * PostgreSQL or the embedded PGlite), so every process sharing the database shares the store too. What a store may
 * lose (Redis restarted without persistence) it says through `epochMs`: the signature guard then refuses every request
 * signed before that instant, so replay protection never silently disappears.
 */
export interface EphemeralStore {
  readonly kind: 'redis' | 'database';
  /** Atomically store `value` under `key` for `ttlMs` unless the key exists. True when stored. */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  get(key: string): Promise<string | null>;
  set(key: string, value: string, ttlMs: number): Promise<void>;
  delete(key: string): Promise<void>;
  /**
   * Count one hit in the fixed window of `windowMs` that contains now. Returns the count in this window
   * (this hit included) and the milliseconds until the window resets.
   */
  hit(key: string, windowMs: number): Promise<WindowCount>;
  /**
   * The signed-request guard's one round trip: store `nonce.value` under every key of `nonce.keys` for `nonce.ttlMs`
   * unless one of them exists (then none is stored and the claim is not fresh; one key is exactly `setIfAbsent`); a
   * fresh claim also stores `nonce.marks` (whether or not they exist: they are remembered, not checked), and any of
   * `nonce.checks` that exists makes the claim not fresh (they are checked, not stored); count one hit in each of `counters` (exactly `hit`, counted whether or
   * not the nonce was fresh). On Redis it is one script, so one command and one round trip whatever the counters;
   * the claims made in the same event-loop turn share that one command. `counts` are in the order of `counters`.
   * With `read`, the same operation also reads that key (exactly `get`) and answers its value as `read`: a replay
   * of an idempotent request finds its stored response in the guard's round trip.
   */
  claimNonceAndHit(
    nonce: {
      keys: readonly string[];
      marks?: readonly string[];
      checks?: readonly string[];
      value: string;
      ttlMs: number;
    },
    counters: readonly { key: string; windowMs: number }[],
    read?: string,
  ): Promise<ClaimResult>;
  publish(channel: string, message: string): Promise<void>;
  /** Resolves once the subscription is active; the returned function ends it. */
  subscribe(channel: string, onMessage: (message: string) => void): Promise<() => Promise<void>>;
  /** Rejects when the store does not answer. */
  ping(): Promise<void>;
  /** Delete up to `limit` dead entries; only stores that do not expire keys by themselves have it. */
  purge?(limit?: number): Promise<number>;
  close(): Promise<void>;
}

export interface ClaimResult {
  fresh: boolean;
  counts: WindowCount[];
  /**
   * The store holds every claim made since this instant (ms since the Unix epoch); claims before it may have been
   * lost (Redis restarted without persistence, or a database crash lost its last asynchronous commits). 0: nothing
   * was ever lost.
   */
  epochMs: number;
  /** The value of the `read` key (null when absent); only when a key was given. */
  read?: string | null;
}

export interface WindowCount {
  count: number;
  resetMs: number;
}

/** The store could not be reached; callers decide whether to degrade or refuse. */
export class StoreUnavailableError extends Error {
  constructor(override readonly cause: unknown) {
    super(`store unavailable: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'StoreUnavailableError';
  }
}
