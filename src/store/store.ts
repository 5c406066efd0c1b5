/**
 * The ephemeral store: what may be lost without breaking a guarantee (nonces are the exception that
 * the signature layer backs with PostgreSQL when the store is down). Two implementations share one
 * contract test suite: Redis (`redis.ts`) and in-process memory (`memory.ts`).
 */
export interface EphemeralStore {
  readonly kind: 'redis' | 'memory';
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
   * The signed-request guard's one round trip: store `nonce.value` under `nonce.key` for `nonce.ttlMs` unless the
   * key exists (exactly `setIfAbsent`), and count one hit in each of `counters` (exactly `hit`, counted whether or
   * not the nonce was fresh). On Redis it is one script, so one command and one round trip whatever the counters;
   * the claims made in the same event-loop turn share that one command. `counts` are in the order of `counters`.
   * With `read`, the same operation also reads that key (exactly `get`) and answers its value as `read`: a replay
   * of an idempotent request finds its stored response in the guard's round trip.
   */
  claimNonceAndHit(
    nonce: { key: string; value: string; ttlMs: number },
    counters: readonly { key: string; windowMs: number }[],
    read?: string,
  ): Promise<ClaimResult>;
  publish(channel: string, message: string): Promise<void>;
  /** Resolves once the subscription is active; the returned function ends it. */
  subscribe(channel: string, onMessage: (message: string) => void): Promise<() => Promise<void>>;
  /** Rejects when the store does not answer. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface ClaimResult {
  fresh: boolean;
  counts: WindowCount[];
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
