import pg from 'pg';
import {
  type Database,
  DatabaseUnavailableError,
  type ListenConnectionEvent,
  type OpenTransaction,
  type QueryResult,
  quoteIdent,
  runInTransaction,
  type Statement,
  translateError,
} from './database';

// bigint (int8) and numeric come back as strings by default; Kiln's integers fit in a JS number.
pg.types.setTypeParser(20, (value) => Number(value));

export interface PostgresOptions {
  url: string;
  schema: string;
  /** Connections of the request pool. */
  max?: number;
  /** Connections of the background pool (runner, reaper, sweeps): never shared with requests. */
  backgroundMax?: number;
  /** Every statement of the request pool is cancelled past this (SQLSTATE 57014 → 503); 0 = no limit. */
  statementTimeoutMs?: number;
  /** How long a request waits for a free connection of its pool before it fails (→ 503). */
  poolTimeoutMs?: number;
  applicationName?: string;
}

/** When a database last answered "unavailable" (ms since the Unix epoch; 0: never). */
interface Health {
  lastUnavailableAt: number;
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

/** Translate a failure, and remember when it meant the database was unavailable. */
function failure(error: unknown, health: Health): unknown {
  const translated = translateError(error);
  if (translated instanceof DatabaseUnavailableError) health.lastUnavailableAt = Date.now();
  return translated;
}

async function run<R>(
  client: pg.Pool | pg.PoolClient,
  health: Health,
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
    throw failure(error, health);
  }
}

function newPool(options: PostgresOptions, max: number, name: string, statementTimeoutMs: number): pg.Pool {
  // JIT compiles a statement whose estimated cost is high; Kiln's statements run in milliseconds, and the analytics
  // reads (whose plans cannot know how few rows lie past the fold's cursor) spent over a second compiling.
  const settings = [`-c search_path=${quoteIdent(options.schema)},public`, '-c jit=off'];
  if (statementTimeoutMs > 0) settings.push(`-c statement_timeout=${statementTimeoutMs}`);
  const pool = new pg.Pool({
    connectionString: options.url,
    max,
    connectionTimeoutMillis: options.poolTimeoutMs ?? 5_000,
    idleTimeoutMillis: 30_000,
    // A peer that vanished without closing (a dropped network) is noticed by TCP keepalive, not after minutes.
    keepAlive: true,
    application_name: name,
    options: settings.join(' '),
  });
  // An idle client losing its connection (database restart) must not crash the process; the pool replaces it.
  pool.on('error', () => {});
  return pool;
}

/**
 * node-postgres adapter: every connection uses `schema` first on its search path. Three pools, so that no kind of
 * work waits behind another: requests (`max`, each statement bounded by `statementTimeoutMs`), background work
 * (`db.background`: lease heartbeats, the reaper, the claim loop, sweeps — never starved by slow requests), and one
 * connection per LISTEN channel.
 */
export function openPostgres(options: PostgresOptions): Database {
  const name = options.applicationName ?? 'kiln';
  const listenPool = newPool(options, 16, `${name}-listen`, 0);
  const background = adapter(newPool(options, options.backgroundMax ?? 4, `${name}-background`, 0), listenPool);
  const requests = adapter(
    newPool(options, options.max ?? 10, name, options.statementTimeoutMs ?? 0),
    listenPool,
    background,
  );
  return requests;
}

function adapter(pool: pg.Pool, listenPool: pg.Pool, backgroundDb?: Database): Database {
  const health: Health = { lastUnavailableAt: 0 };
  const db: Database = {
    kind: 'postgres',
    get background() {
      return backgroundDb ?? db;
    },
    lastUnavailableAt: () => health.lastUnavailableAt,
    query: (sql, params) => run(pool, health, sql, params),
    begin: async () => (await openTransaction(pool, health, [])).tx,
    beginWith: (statements) => openTransaction(pool, health, statements),
    transaction: (fn) => runInTransaction(() => db.begin(), fn),
    async exec(sql) {
      await run(pool, health, sql);
    },
    listen: (channel, onNotify, onConnection) => listenOn(listenPool, health, channel, onNotify, onConnection),
    async close() {
      await pool.end();
      if (backgroundDb) {
        await backgroundDb.close();
        await listenPool.end();
      }
    },
  };
  return db;
}

/** A parameter written into a statement's text: a quoted, escaped literal (see Database.beginWith). */
function literal(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'string') return pg.escapeLiteral(value);
  if (typeof value === 'number' || typeof value === 'bigint') {
    if (typeof value === 'number' && !Number.isFinite(value)) throw new Error(`cannot write ${value} into SQL`);
    return `'${value}'`;
  }
  if (typeof value === 'boolean') return value ? "'t'" : "'f'";
  if (value instanceof Date) return `'${value.toISOString()}'`;
  throw new Error(`cannot write a ${typeof value} parameter into SQL text`);
}

/** Statements as one simple-protocol text: each one's `$n` replaced by its parameter n as a literal. */
function script(statements: Statement[]): string {
  return statements
    .map(({ sql, params = [] }) =>
      sql.replace(/\$(\d+)/g, (_, n: string) => {
        if (Number(n) > params.length) throw new Error(`statement has $${n} but ${params.length} parameters`);
        return literal(params[Number(n) - 1]);
      }),
    )
    .join(';\n');
}

/** The results of a simple-protocol text of several statements (node-postgres gives one result for one). */
function resultsOf(result: pg.QueryResult | pg.QueryResult[]): QueryResult<Record<string, unknown>>[] {
  return (Array.isArray(result) ? result : [result]).map((r) => ({ rows: r.rows, rowCount: r.rowCount ?? 0 }));
}

/**
 * A transaction on a client of its own, ended by exactly one of commit or rollback (see OpenTransaction); BEGIN and
 * `first` go in one round trip (see Database.beginWith).
 */
async function openTransaction(
  pool: pg.Pool,
  health: Health,
  first: Statement[],
): Promise<{ tx: OpenTransaction; results: QueryResult<Record<string, unknown>>[] }> {
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (error) {
    throw failure(error, health);
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
  let results: QueryResult<Record<string, unknown>>[];
  try {
    results = resultsOf(await client.query(first.length ? script([{ sql: 'begin' }, ...first]) : 'begin')).slice(1);
  } catch (error) {
    // A statement after BEGIN failed: the transaction is open and aborted. Roll it back and keep the connection; if
    // that fails too, the connection is gone.
    const rolledBack =
      first.length > 0 &&
      (await client.query('rollback').then(
        () => true,
        () => false,
      ));
    end(!rolledBack);
    throw failure(error, health);
  }
  const open = () => {
    if (ended) throw new Error('transaction already ended');
    return client;
  };
  const tx: OpenTransaction = {
    query: async (sql, params) => run(open(), health, sql, params),
    exec: async (sql) => void (await run(open(), health, sql)),
    async commit() {
      open();
      try {
        await client.query('commit');
        end(false);
      } catch (error) {
        end(true);
        throw failure(error, health);
      }
    },
    async commitAfter(statements) {
      let result: pg.QueryResult | pg.QueryResult[];
      try {
        result = await open().query(`${script(statements)};\ncommit`);
      } catch (error) {
        // A statement failed (the transaction is open and aborted) or COMMIT did (it is over): either way the
        // caller's rollback ends it, and keeps the connection when it still answers.
        throw failure(error, health);
      }
      end(false);
      return resultsOf(result).slice(0, statements.length);
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
  return { tx, results };
}

/**
 * LISTEN on one dedicated connection. When it is lost (PostgreSQL restarted, the backend terminated) it is replaced,
 * with backoff, until unsubscribed; a notification sent meanwhile is lost, so `onNotify('')` is called once the new
 * connection listens, and the caller catches up as after any wake-up.
 */
async function listenOn(
  listenPool: pg.Pool,
  health: Health,
  channel: string,
  onNotify: (payload: string) => void,
  onConnection?: (event: ListenConnectionEvent) => void,
): Promise<() => Promise<void>> {
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
    const client = await listenPool.connect().catch((error) => {
      throw failure(error, health);
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
      throw failure(error, health);
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
}
