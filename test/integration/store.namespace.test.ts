import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config';
import { type App, buildApp } from '../../src/http/server';
import { getBalance } from '../../src/services/credits';
import { deploymentId } from '../../src/services/settings';
import { BuildSignals } from '../../src/store/signals';
import type { EphemeralStore } from '../../src/store/store';
import { openStore } from '../../src/stores';
import { TEST_SECRET } from '../helpers/app';
import { openTestDatabase, type TestDatabase } from '../helpers/db';
import { REDIS_URL, uniqueName } from '../helpers/env';
import { signedInject } from '../helpers/signed';
import { deleteKeys } from '../helpers/store';

/**
 * Two deployments (two databases or schemas) sharing one Redis and one REDIS_PREFIX: every key is namespaced by the
 * deployment's id, so neither replays the other's recorded responses nor refuses the other's nonces. Before, the copy
 * of a recorded response was keyed without the schema, and a grant sent to the second with the same key was answered
 * from the first's copy: silently lost.
 */
describe.skipIf(!REDIS_URL)('deployments sharing a Redis prefix', () => {
  const prefix = `${uniqueName('ns')}:`;
  const deployments: { app: App; database: TestDatabase; store: EphemeralStore; signals: BuildSignals }[] = [];
  beforeAll(async () => {
    for (let i = 0; i < 2; i++) {
      const config = loadConfig({ HMAC_SECRET: TEST_SECRET, LOG_LEVEL: 'silent', REDIS_URL, REDIS_PREFIX: prefix });
      const database = await openTestDatabase();
      const store = await openStore(config, database.db, { deploymentId: await deploymentId(database.db) });
      const logger = pino({ level: 'silent' });
      const signals = new BuildSignals(store, logger);
      const app = await buildApp({ config, db: database.db, store, logger, version: '0.0.0-test', signals });
      await app.ready();
      deployments.push({ app, database, store, signals });
    }
  });
  afterAll(async () => {
    for (const d of deployments) {
      await d.app.close();
      await d.signals.close();
      await d.store.close();
      await d.database.cleanup();
    }
    await deleteKeys(REDIS_URL as string, prefix);
  });

  it('have different ids', async () => {
    const [a, b] = await Promise.all(deployments.map((d) => deploymentId(d.database.db)));
    expect(a).toMatch(/^[0-9a-f]{32}$/);
    expect(a).not.toBe(b);
  });

  it('run the same Idempotency-Key and nonce each for themselves', async () => {
    const body = { userId: 'u_ns', credits: 10, reason: 'top-up', source: 'purchase' };
    const nonce = `shared-nonce-${Date.now()}`;
    for (const { app, database } of deployments) {
      const res = await signedInject(app, {
        method: 'POST',
        url: '/v1/credits/grant',
        body,
        headers: { 'idempotency-key': 'same-key-on-both' },
        sign: { nonce },
      });
      expect(res.statusCode).toBe(200);
      expect(res.headers['idempotent-replayed']).toBeUndefined();
      expect((await getBalance(database.db, 'u_ns')).balance).toBe(10);
    }
  });
});
