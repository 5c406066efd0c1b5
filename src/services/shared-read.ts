/**
 * A read that many askers share: concurrent askers get the one read in flight, and later ones its result until it is
 * `maxAgeMs` old. A failed read is not kept (the next asker tries again). The scrapes of /metrics and the live
 * page's polls ask far more often than their figures change; this makes them cost one read per second per process.
 */
export function sharedRead<T>(read: () => Promise<T>, maxAgeMs: number): () => Promise<T> {
  let latest: { at: number; value: T } | undefined;
  let inFlight: Promise<T> | undefined;
  return () => {
    if (latest && Date.now() - latest.at < maxAgeMs) return Promise.resolve(latest.value);
    inFlight ??= read()
      .then((value) => {
        latest = { at: Date.now(), value };
        return value;
      })
      .finally(() => {
        inFlight = undefined;
      });
    return inFlight;
  };
}

/** `work`, or a rejection once `ms` have passed without its answer (the work itself is not stopped). */
export function within<T>(work: Promise<T>, ms: number, what = 'no answer in time'): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    work,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} (${ms} ms)`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
