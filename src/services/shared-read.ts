/**
 * A read that many askers share: concurrent askers get the one read in flight, and later ones its result until it is
 * `maxAgeMs` old. A failed read is not kept (the next asker tries again), nor is a read in flight for longer than
 * `abandonAfterMs` (one stuck on a dead connection: the next asker starts another, and the stuck one's answer, if it
 * ever comes, is dropped). The scrapes of /metrics and the live page's polls ask far more often than their figures
 * change; this makes them cost one read per second per process.
 */
export function sharedRead<T>(read: () => Promise<T>, maxAgeMs: number, abandonAfterMs = 5_000): () => Promise<T> {
  let latest: { at: number; value: T } | undefined;
  let inFlight: { since: number; read: Promise<T> } | undefined;
  return () => {
    const now = Date.now();
    if (latest && now - latest.at < maxAgeMs) return Promise.resolve(latest.value);
    if (inFlight && now - inFlight.since < abandonAfterMs) return inFlight.read;
    const current = {
      since: now,
      read: read().then((value) => {
        if (inFlight === current) latest = { at: Date.now(), value };
        return value;
      }),
    };
    inFlight = current;
    void current.read
      .then(
        () => undefined,
        () => undefined,
      )
      .finally(() => {
        if (inFlight === current) inFlight = undefined;
      });
    return current.read;
  };
}

/** What `within` rejects with when the work did not answer in time. */
export class TimedOut extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.name = 'TimedOut';
  }
}

/** `work`, or a rejection (TimedOut) once `ms` have passed without its answer (the work itself is not stopped). */
export function within<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    work,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TimedOut(ms)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
