import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { Database } from '../db/database';
import { markSilentInstances, registerInstance, renewInstance, unregisterInstance } from '../db/instances';
import { storeState } from './health';

/** What a process says of itself in its line of service_instances, at each renewal. */
export interface InstanceHealth {
  /** Whether the store (Redis, or the database's store tables) answered a ping. */
  store: 'up' | 'down';
  buildsRunning: number;
  runnerConcurrency: number;
  rssMb: number;
  heapUsedMb: number;
  /** The 99th percentile of the event loop's delay since the previous renewal: high means the process is starved. */
  eventLoopDelayP99Ms: number;
  uptimeSeconds: number;
}

export interface InstanceLineOptions {
  db: Database;
  logger: Logger;
  id: string;
  hostname: string;
  pid: number;
  version: string;
  /** Seconds the line may go unrenewed before any process marks it dead; renewed every third of it. */
  leaseSeconds: number;
  store: () => Promise<unknown>;
  buildsRunning: () => number;
  runnerConcurrency: number;
}

const round = (n: number) => Math.round(n * 10) / 10;

/**
 * Register this process's line, renew it every third of its lease with what the process says of itself, and at each
 * renewal mark dead the lines of processes that went silent past their lease (any process does this; each line is
 * marked once). A renewal that fails is logged and tried again at the next tick. Returns a function that stops
 * renewing and removes the line (a clean stop).
 */
export async function startInstanceLine(options: InstanceLineOptions): Promise<() => Promise<void>> {
  const { db, logger, id, leaseSeconds } = options;
  const started = Date.now();
  const delay = monitorEventLoopDelay({ resolution: 20 });
  delay.enable();
  const health = async (): Promise<InstanceHealth> => {
    const store = await storeState(options.store, 1_000);
    const memory = process.memoryUsage();
    const p99 = delay.count > 0 ? delay.percentile(99) / 1e6 : 0;
    delay.reset();
    return {
      store,
      buildsRunning: options.buildsRunning(),
      runnerConcurrency: options.runnerConcurrency,
      rssMb: round(memory.rss / 1_048_576),
      heapUsedMb: round(memory.heapUsed / 1_048_576),
      eventLoopDelayP99Ms: round(p99),
      uptimeSeconds: Math.round((Date.now() - started) / 1000),
    };
  };
  const line = { id, hostname: options.hostname, pid: options.pid, version: options.version, leaseSeconds };
  await registerInstance(db, { ...line, health: await health() });
  let beating = false;
  const beat = async () => {
    if (beating) return;
    beating = true;
    try {
      const outcome = await renewInstance(db, id, await health());
      if (outcome === 'missing') {
        await registerInstance(db, { ...line, health: await health() });
        logger.warn(
          { instanceId: id },
          'this process’s line in service_instances was gone (removed a day after it was marked dead); registered again',
        );
      } else if (outcome === 'revived') {
        logger.warn(
          { instanceId: id, leaseSeconds },
          'this process had been marked dead: it renewed its line later than its lease (a stall, or the database away); live again',
        );
      }
      for (const dead of await markSilentInstances(db)) {
        logger.warn(
          {
            deadInstanceId: dead.id,
            hostname: dead.hostname,
            pid: dead.pid,
            silentSeconds: Math.round(dead.silentSeconds),
          },
          `Kiln process ${dead.id} on ${dead.hostname} (pid ${dead.pid}) did not renew its line within its lease: marked dead (its builds fail as worker_lost when their leases lapse)`,
        );
      }
    } catch (error) {
      logger.warn({ err: error, instanceId: id }, 'could not renew this process’s line in service_instances; retrying');
    } finally {
      beating = false;
    }
  };
  const timer = setInterval(() => void beat(), Math.max(1, Math.floor((leaseSeconds * 1000) / 3)));
  timer.unref();
  return async () => {
    clearInterval(timer);
    delay.disable();
    await unregisterInstance(db, id);
  };
}
