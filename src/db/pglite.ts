import { PGlite } from '@electric-sql/pglite';
import { type Database, type QueryResult, quoteIdent, type Transaction } from './database';

/**
 * Serialises work on PGlite's single connection: a transaction holds the connection until it ends,
 * and queries from outside it wait their turn instead of landing inside it.
 */
class Mutex {
  private tail: Promise<void> = Promise.resolve();

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const previous = this.tail;
    let release!: () => void;
    this.tail = new Promise((resolve) => {
      release = resolve;
    });
    await previous;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

export interface PgliteOptions {
  /** A directory, or undefined for an in-memory database. */
  dataDir?: string;
  schema: string;
}

/** PGlite adapter: embedded PostgreSQL in this process. */
export async function openPglite(options: PgliteOptions): Promise<Database> {
  const pglite = new PGlite(options.dataDir);
  await pglite.waitReady;
  const lock = new Mutex();
  const raw = async <R>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>> => {
    const result = await pglite.query<R>(sql, params as unknown[] | undefined);
    return { rows: result.rows, rowCount: result.affectedRows ?? result.rows.length };
  };
  await pglite.exec(`set search_path = ${quoteIdent(options.schema)}, public`);

  const db: Database = {
    kind: 'pglite',
    query: (sql, params) => lock.run(() => raw(sql, params)),
    transaction<T>(fn: (tx: Transaction) => Promise<T>): Promise<T> {
      return lock.run(async () => {
        const tx: Transaction = { query: raw, exec: async (sql) => void (await pglite.exec(sql)) };
        await pglite.exec('begin');
        try {
          const result = await fn(tx);
          await pglite.exec('commit');
          return result;
        } catch (error) {
          await pglite.exec('rollback');
          throw error;
        }
      });
    },
    exec: (sql) => lock.run(async () => void (await pglite.exec(sql))),
    async listen(channel, onNotify) {
      return pglite.listen(channel, onNotify);
    },
    async close() {
      await lock.run(() => pglite.close());
    },
  };
  return db;
}
