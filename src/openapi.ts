import pino from 'pino';
import { loadConfig } from './config';
import { openPglite } from './db/pglite';
import { buildApp } from './http/server';
import { openDatabaseStore } from './store/database';
import { BuildSignals } from './store/signals';

/** The OpenAPI 3.1 document generated from the route schemas, as committed in docs/openapi.json. */
export async function renderOpenApi(version: string): Promise<string> {
  const db = await openPglite({ schema: 'public' });
  const store = openDatabaseStore({ db, channelPrefix: 'kiln_public_' });
  const config = loadConfig({ HMAC_SECRET: 'openapi-rendering-secret', LOG_LEVEL: 'silent' });
  const logger = pino({ level: 'silent' });
  const signals = new BuildSignals(store, logger);
  const app = await buildApp({ config, db, store, logger, version, signals });
  try {
    await app.ready();
    return `${JSON.stringify(app.swagger(), null, 2)}\n`;
  } finally {
    await app.close();
    await store.close();
    await db.close();
  }
}
