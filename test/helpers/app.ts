import pino from 'pino';
import { type Config, loadConfig } from '../../src/config';
import { type App, buildApp } from '../../src/http/server';
import { BuildSignals } from '../../src/store/signals';
import { contract } from './contract';
import { openTestDatabase, type TestDatabase } from './db';
import { openTestStore, type TestStore } from './store';

export const TEST_SECRET = 'test-secret-0123456789abcdef-kiln';

export interface TestApp {
  app: App;
  config: Config;
  database: TestDatabase;
  store: TestStore;
  close(): Promise<void>;
}

/**
 * Kiln's HTTP app in this process, on the run's database and store (real PostgreSQL/Redis when configured).
 * `prepare` may add routes before the app is ready (tests use it for probe routes).
 */
export async function startTestApp(
  env: Record<string, string> = {},
  prepare?: (app: App, parts: { database: TestDatabase; store: TestStore }) => void,
  /** When given, every info-or-above log line is parsed and pushed here. */
  logLines?: Record<string, unknown>[],
): Promise<TestApp> {
  const config = loadConfig({ HMAC_SECRET: TEST_SECRET, LOG_LEVEL: 'silent', ...env });
  const database = await openTestDatabase();
  const store = await openTestStore(database);
  const logger = logLines
    ? pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line)) })
    : pino({ level: 'silent' });
  const signals = new BuildSignals(store.store, logger);
  const app = await buildApp({ config, db: database.db, store: store.store, logger, version: '0.0.0-test', signals });
  const violations = checkContract(app);
  prepare?.(app, { database, store });
  await app.ready();
  return {
    app,
    config,
    database,
    store,
    async close() {
      await app.close();
      await signals.close();
      await store.cleanup();
      await database.cleanup();
      if (violations.length) {
        throw new Error(`Responses that break the OpenAPI document:\n${violations.slice(0, 20).join('\n')}`);
      }
    },
  };
}

/**
 * Every response the app sends is checked against the OpenAPI document (test/helpers/contract.ts); what breaks it is
 * collected here and fails the test file when it closes the app.
 */
function checkContract(app: App): string[] {
  const violations: string[] = [];
  app.addHook('onSend', async (request, reply, payload) => {
    const found = contract().violation({
      method: request.method,
      url: request.url,
      status: reply.statusCode,
      contentType: reply.getHeader('content-type')?.toString(),
      // A stream's body is not at hand here: its status is checked all the same.
      body: typeof payload === 'string' || Buffer.isBuffer(payload) ? payload.toString() : undefined,
    });
    if (found) violations.push(found);
    return payload;
  });
  return violations;
}
