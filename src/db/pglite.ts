import { PGlite } from '@electric-sql/pglite';
import {
  type Database,
  type OpenTransaction,
  type QueryResult,
  quoteIdent,
  runInTransaction,
  type Statement,
} from './database';
import { lockDirectory } from './directory-lock';

/**
 * Serialises work on PGlite's single connection: a transaction holds the connection until it ends,
 * and queries from outside it wait their turn instead of landing inside it.
 */
class Mutex {
  private tail: Promise<void> = Promise.resolve();

  /** Wait for the connection; resolves to the function that hands it on. */
  async acquire(): Promise<() => void> {
    const previous = this.tail;
    let release!: () => void;
    this.tail = new Promise((resolve) => {
      release = resolve;
    });
    await previous;
    return release;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
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

/**
 * PGlite adapter: embedded PostgreSQL in this process. A data directory is claimed for this process first
 * (DirectoryInUseError while another live process has it open).
 */
export async function openPglite(options: PgliteOptions): Promise<Database> {
  const unlock = options.dataDir ? lockDirectory(options.dataDir) : () => {};
  const pglite = new PGlite(options.dataDir);
  try {
    await pglite.waitReady;
  } catch (error) {
    unlock();
    throw error;
  }
  const lock = new Mutex();
  const raw = async <R>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>> => {
    const result = await pglite.query<R>(sql, params as unknown[] | undefined);
    return { rows: result.rows, rowCount: result.affectedRows ?? result.rows.length };
  };
  await pglite.exec(`set search_path = ${quoteIdent(options.schema)}, public`);

  const db: Database = {
    kind: 'pglite',
    get background() {
      return db;
    },
    // In the process itself: it is there as long as the process is.
    lastUnavailableAt: () => 0,
    query: (sql, params) => lock.run(() => raw(sql, params)),
    begin: async () => (await db.beginWith([])).tx,
    // One connection in this process: round trips cost nothing, so the statements simply run in turn.
    async beginWith(statements) {
      const release = await lock.acquire();
      let ended = false;
      const finish = async (sql: 'commit' | 'rollback') => {
        if (ended) {
          if (sql === 'commit') throw new Error('transaction already ended');
          return;
        }
        ended = true;
        try {
          await pglite.exec(sql);
        } finally {
          release();
        }
      };
      try {
        await pglite.exec('begin');
      } catch (error) {
        ended = true;
        release();
        throw error;
      }
      const open = () => {
        if (ended) throw new Error('transaction already ended');
      };
      const runAll = async (list: Statement[]) => {
        const results: QueryResult<Record<string, unknown>>[] = [];
        for (const { sql, params } of list) results.push(await raw(sql, params));
        return results;
      };
      const tx: OpenTransaction = {
        query: async (sql, params) => {
          open();
          return raw(sql, params);
        },
        exec: async (sql) => {
          open();
          await pglite.exec(sql);
        },
        commit: () => finish('commit'),
        async commitAfter(list) {
          open();
          const results = await runAll(list);
          await finish('commit');
          return results;
        },
        rollback: () => finish('rollback').catch(() => {}),
      };
      try {
        return { tx, results: await runAll(statements) };
      } catch (error) {
        await tx.rollback();
        throw error;
      }
    },
    transaction: (fn) => runInTransaction(() => db.begin(), fn),
    exec: (sql) => lock.run(async () => void (await pglite.exec(sql))),
    async listen(channel, onNotify) {
      return pglite.listen(channel, onNotify);
    },
    async close() {
      try {
        await lock.run(() => pglite.close());
      } finally {
        unlock();
      }
    },
  };
  return db;
}
