import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatabaseUnavailableError } from '../../src/db/database';
import { ApiError } from '../../src/domain/errors';
import { StoreUnavailableError } from '../../src/store/store';
import { startTestApp, type TestApp } from '../helpers/app';

const SECRET_TEXT = 'connect ECONNREFUSED 10.9.8.7:5432 db-primary.internal';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait for a log line (logs are written in batches). */
async function logLine(lines: Record<string, unknown>[], match: (line: Record<string, unknown>) => boolean) {
  for (let i = 0; i < 50; i++) {
    const found = lines.find(match);
    if (found) return found;
    await sleep(20);
  }
  throw new Error(`no such log line among ${lines.length}`);
}

describe('503 answers name the dependency, never its raw error text', () => {
  let t: TestApp;
  const lines: Record<string, unknown>[] = [];
  beforeAll(async () => {
    t = await startTestApp(
      {},
      (app) => {
        app.get('/probe/db-down', async () => {
          throw new DatabaseUnavailableError(new Error(SECRET_TEXT));
        });
        app.get('/probe/store-down', async () => {
          throw new StoreUnavailableError(new Error(SECRET_TEXT));
        });
        app.get('/probe/reason', async () => {
          throw new ApiError('SERVICE_UNAVAILABLE', 'Replay protection is unavailable.', {
            dependency: 'store',
            reason: SECRET_TEXT,
          });
        });
      },
      lines,
    );
  });
  afterAll(() => t.close());

  it.each([
    ['/probe/db-down', 'database'],
    ['/probe/store-down', 'store'],
    ['/probe/reason', 'store'],
  ])('%s answers 503 with the dependency only, and logs the cause under the request id', async (url, dependency) => {
    const res = await t.app.inject({ method: 'GET', url });
    expect(res.statusCode).toBe(503);
    expect(res.body).not.toContain('ECONNREFUSED');
    expect(res.body).not.toContain('db-primary');
    const body = res.json();
    expect(body.error).toBe('SERVICE_UNAVAILABLE');
    expect(body.data).toEqual({ dependency });
    const line = await logLine(lines, (l) => l.requestId === body.requestId && l.msg === 'dependency unavailable');
    expect(JSON.stringify(line)).toContain(SECRET_TEXT);
  });

  it('/readyz says only ok, down or timeout per dependency, and logs the errors under the request id', async () => {
    const { db } = t.database;
    const { store } = t.store;
    const query = db.query.bind(db);
    const ping = store.ping.bind(store);
    db.query = (() => Promise.reject(new Error(SECRET_TEXT))) as typeof db.query;
    store.ping = () => new Promise<void>(() => {});
    try {
      const res = await t.app.inject({ method: 'GET', url: '/readyz' });
      expect(res.statusCode).toBe(503);
      expect(res.headers['retry-after']).toBe('5');
      expect(res.body).not.toContain('ECONNREFUSED');
      expect(res.body).not.toContain('no answer within');
      const body = res.json();
      expect(body.error).toBe('SERVICE_UNAVAILABLE');
      expect(body.data).toEqual({ dependency: 'database', checks: { database: 'down', store: 'timeout' } });
      const database = await logLine(
        lines,
        (l) => l.requestId === body.requestId && l.msg === 'readiness check failed' && l.dependency === 'database',
      );
      expect(database.check).toBe('down');
      expect(JSON.stringify(database)).toContain(SECRET_TEXT);
      const timedOut = await logLine(
        lines,
        (l) => l.requestId === body.requestId && l.msg === 'readiness check failed' && l.dependency === 'store',
      );
      expect(timedOut.check).toBe('timeout');
    } finally {
      db.query = query;
      store.ping = ping;
    }
    const ready = await t.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.json()).toEqual({
      status: 'ready',
      checks: { database: 'ok', store: 'ok' },
      instances: { live: 0, dead: 0 },
    });
  });
});
