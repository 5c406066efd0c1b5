import pg from 'pg';
import { type Database, type QueryResult, quoteIdent, type Transaction, translateError } from './database';

// bigint (int8) and numeric come back as strings by default; Kiln's integers fit in a JS number.
pg.types.setTypeParser(20, (value) => Number(value));

export interface PostgresOptions {
  url: string;
  schema: string;
  max?: number;
  applicationName?: string;
}

async function run<R>(
  client: pg.Pool | pg.PoolClient,
  sql: string,
  params?: readonly unknown[],
): Promise<QueryResult<R>> {
  try {
    const result = await client.query(sql, params as unknown[] | undefined);
    return { rows: result.rows as R[], rowCount: result.rowCount ?? 0 };
  } catch (error) {
    throw translateError(error);
  }
}

/** node-postgres adapter: a pool whose every connection uses `schema` first on its search path. */
export function openPostgres(options: PostgresOptions): Database {
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.max ?? 10,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    application_name: options.applicationName ?? 'kiln',
    options: `-c search_path=${quoteIdent(options.schema)},public`,
  });
  // An idle client losing its connection (database restart) must not crash the process; the pool replaces it.
  pool.on('error', () => {});

  const db: Database = {
    kind: 'postgres',
    query: (sql, params) => run(pool, sql, params),
    async transaction<T>(fn: (tx: Transaction) => Promise<T>): Promise<T> {
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (error) {
        throw translateError(error);
      }
      const tx: Transaction = {
        query: (sql, params) => run(client, sql, params),
        exec: async (sql) => void (await run(client, sql)),
      };
      let broken = false;
      try {
        await tx.query('begin');
        const result = await fn(tx);
        await tx.query('commit');
        return result;
      } catch (error) {
        try {
          await client.query('rollback');
        } catch {
          broken = true; // the connection itself is gone; the pool must not reuse it
        }
        throw translateError(error);
      } finally {
        client.release(broken);
      }
    },
    async exec(sql) {
      await run(pool, sql);
    },
    async listen(channel, onNotify) {
      const client = await pool.connect().catch((error) => {
        throw translateError(error);
      });
      const handler = (message: pg.Notification) => {
        if (message.channel === channel) onNotify(message.payload ?? '');
      };
      client.on('notification', handler);
      await client.query(`listen ${quoteIdent(channel)}`);
      return async () => {
        client.off('notification', handler);
        try {
          await client.query(`unlisten ${quoteIdent(channel)}`);
          client.release();
        } catch {
          client.release(true);
        }
      };
    },
    async close() {
      await pool.end();
    },
  };
  return db;
}
