import pg from 'pg';
import {
  type Database,
  type OpenTransaction,
  type QueryResult,
  quoteIdent,
  runInTransaction,
  translateError,
} from './database';

// bigint (int8) and numeric come back as strings by default; Kiln's integers fit in a JS number.
pg.types.setTypeParser(20, (value) => Number(value));

export interface PostgresOptions {
  url: string;
  schema: string;
  max?: number;
  applicationName?: string;
}

// Statements with parameters are prepared once per connection under a name (node-postgres keeps the per-connection
// cache): PostgreSQL then skips parsing and planning them on every call, CPU it shares with everything else on the
// machine. Kiln's SQL is a fixed set of texts; past the cap (dynamic text) they run unnamed as before.
const MAX_PREPARED = 500;
const statementNames = new Map<string, string>();
function statementName(sql: string): string | undefined {
  let name = statementNames.get(sql);
  if (name === undefined && statementNames.size < MAX_PREPARED) {
    name = `kiln_${statementNames.size + 1}`;
    statementNames.set(sql, name);
  }
  return name;
}

async function run<R>(
  client: pg.Pool | pg.PoolClient,
  sql: string,
  params?: readonly unknown[],
): Promise<QueryResult<R>> {
  try {
    const result =
      params === undefined
        ? await client.query(sql)
        : await client.query({ name: statementName(sql), text: sql, values: params as unknown[] });
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
    async begin(): Promise<OpenTransaction> {
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (error) {
        throw translateError(error);
      }
      let ended = false;
      // A checked-out client whose session the server ends (idle-in-transaction lease, restart) emits 'error';
      // without a listener that would crash the process. The next query fails instead, and the client is discarded.
      let lost = false;
      const onError = () => {
        lost = true;
      };
      client.on('error', onError);
      const end = (broken: boolean) => {
        if (ended) return;
        ended = true;
        client.off('error', onError);
        client.release(broken || lost);
      };
      try {
        await client.query('begin');
      } catch (error) {
        end(true);
        throw translateError(error);
      }
      const open = () => {
        if (ended) throw new Error('transaction already ended');
        return client;
      };
      return {
        query: async (sql, params) => run(open(), sql, params),
        exec: async (sql) => void (await run(open(), sql)),
        async commit() {
          if (ended) throw new Error('transaction already ended');
          try {
            await client.query('commit');
            end(false);
          } catch (error) {
            end(true);
            throw translateError(error);
          }
        },
        async rollback() {
          if (ended) return;
          try {
            await client.query('rollback');
            end(false);
          } catch {
            end(true); // the connection itself is gone; the pool must not reuse it
          }
        },
      };
    },
    transaction: (fn) => runInTransaction(() => db.begin(), fn),
    async exec(sql) {
      await run(pool, sql);
    },
    async listen(channel, onNotify, onConnection) {
      // One dedicated connection. When it is lost (PostgreSQL restarted, the backend terminated) it is replaced,
      // with backoff, until unsubscribed; a notification sent meanwhile is lost, so `onNotify('')` is called once
      // the new connection listens, and the caller catches up as after any wake-up.
      let stopped = false;
      let current: Listening | undefined;
      let retry: NodeJS.Timeout | undefined;
      interface Listening {
        client: pg.PoolClient;
        /** Take our listeners off; `broken`: the client is being destroyed, and a late socket error on it must
         * still find a listener. */
        detach(broken: boolean): void;
      }
      const handler = (message: pg.Notification) => {
        if (message.channel === channel) onNotify(message.payload ?? '');
      };
      const giveBack = (listening: Listening, broken: boolean) => {
        listening.detach(broken);
        listening.client.release(broken);
      };
      const connect = async (): Promise<Listening> => {
        const client = await pool.connect().catch((error) => {
          throw translateError(error);
        });
        const onLost = (error?: Error) => lost(listening, error);
        const listening: Listening = {
          client,
          detach(broken) {
            if (broken) client.on('error', () => {});
            client.off('notification', handler);
            client.off('error', onLost);
            client.off('end', onLost);
          },
        };
        client.on('notification', handler);
        client.on('error', onLost);
        client.on('end', onLost);
        try {
          await client.query(`listen ${quoteIdent(channel)}`);
        } catch (error) {
          giveBack(listening, true);
          throw translateError(error);
        }
        return listening;
      };
      const reconnect = (attempt: number) => {
        retry = setTimeout(
          async () => {
            if (stopped) return;
            let listening: Listening;
            try {
              listening = await connect();
            } catch {
              reconnect(attempt + 1);
              return;
            }
            // Unsubscribed while this connection was being made: give it back instead of listening forever.
            if (stopped) return giveBack(listening, true);
            current = listening;
            onConnection?.({ state: 'restored', attempt });
            onNotify('');
          },
          Math.min(100 * 2 ** attempt, 5_000),
        );
        retry.unref();
      };
      const lost = (listening: Listening, error?: Error) => {
        if (current !== listening) return;
        current = undefined;
        giveBack(listening, true);
        if (stopped) return;
        onConnection?.({ state: 'lost', error: error?.message ?? 'connection ended' });
        reconnect(0);
      };
      current = await connect();
      return async () => {
        stopped = true;
        clearTimeout(retry);
        const listening = current;
        current = undefined;
        if (!listening) return;
        // Detached only after the last query: a checked-out client with no 'error' listener would crash the process.
        try {
          await listening.client.query(`unlisten ${quoteIdent(channel)}`);
          giveBack(listening, false);
        } catch {
          giveBack(listening, true);
        }
      };
    },
    async close() {
      await pool.end();
    },
  };
  return db;
}
