import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Config } from '../config';
import type { Database } from '../db/database';
import type { BuildSignals } from '../store/signals';
import type { EphemeralStore } from '../store/store';

/**
 * The types every HTTP module shares, in a module that imports none of them: server.ts builds the app from the
 * modules, and the modules take these types from here (not from server.ts), so no import runs in a circle.
 */

/** What the HTTP layer needs from the process: configuration, stores and identity. */
export interface AppDeps {
  config: Config;
  db: Database;
  store: EphemeralStore;
  logger: Logger;
  version: string;
  /** Wake-ups between processes (runners, live event streams). */
  signals: BuildSignals;
}

/** The Fastify instance with TypeBox types, as every route module receives it. */
export type App = FastifyInstance<Server, IncomingMessage, ServerResponse, FastifyBaseLogger, TypeBoxTypeProvider>;
