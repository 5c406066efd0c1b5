/**
 * One small database interface with two adapters: node-postgres (a pool) and PGlite (embedded, one connection).
 * Services and repositories only see `Database` and `Queryable`; they never know which adapter runs underneath.
 */

/** Something SQL can be sent to: the database itself or an open transaction. */
export interface Queryable {
  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>>;
}

/** An open transaction: queries plus multi-statement scripts (used by migrations). */
export interface Transaction extends Queryable {
  exec(sql: string): Promise<void>;
}

/** A statement and its parameters, for the round trips that carry several (see `beginWith`, `commitAfter`). */
export interface Statement {
  sql: string;
  params?: readonly unknown[];
}

/** A transaction opened with `begin()` and ended explicitly (exactly one of commit or rollback). */
export interface OpenTransaction extends Transaction {
  commit(): Promise<void>;
  /**
   * Run `statements`, then commit, in one round trip; the statements' results, in order. When one fails nothing
   * after it runs, the transaction is not committed, and the error is thrown: roll back. See `beginWith` for what
   * the statements may be.
   */
  commitAfter(statements: Statement[]): Promise<QueryResult<Record<string, unknown>>[]>;
  /** Safe to call after a failure or twice; never throws for a connection that is already gone. */
  rollback(): Promise<void>;
}

export interface QueryResult<R> {
  rows: R[];
  rowCount: number;
}

export interface Database extends Queryable {
  readonly kind: 'postgres' | 'pglite';
  /**
   * The database for background work (lease heartbeats, the reaper, the claim loop, sweeps and audits): on
   * PostgreSQL a pool of its own, so that requests holding every connection of theirs never starve it; on PGlite,
   * which has one connection, the database itself. Closed with this one.
   */
  readonly background: Database;
  /** When this database (this pool) last failed as unavailable, in ms since the Unix epoch; 0 when never. */
  lastUnavailableAt(): number;
  /** Run `fn` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (tx: Transaction) => Promise<T>): Promise<T>;
  /**
   * Open a transaction that outlives one function call (the idempotency layer holds one across a request's
   * lifecycle). Prefer `transaction()` everywhere else.
   */
  begin(): Promise<OpenTransaction>;
  /**
   * As `begin`, sending `statements` in the same round trip; their results, in order. On PostgreSQL they go as one
   * simple-protocol query with the parameters written in as literals (escaped): only for Kiln's own fixed statements,
   * whose text has no `$` but its parameters' (`$1`, `$2`, …), given as strings, numbers, booleans, dates or null.
   * When one fails the transaction is rolled back and the error thrown.
   */
  beginWith(statements: Statement[]): Promise<{ tx: OpenTransaction; results: QueryResult<Record<string, unknown>>[] }>;
  /** Run several statements at once (migrations). No parameters. */
  exec(sql: string): Promise<void>;
  /**
   * Subscribe to a LISTEN/NOTIFY channel; resolves to an unsubscribe function. On PostgreSQL a lost listening
   * connection is replaced until unsubscribed (`onConnection` hears of both), and `onNotify('')` is called when
   * listening again, since notifications sent in between are lost.
   */
  listen(
    channel: string,
    onNotify: (payload: string) => void,
    onConnection?: (event: ListenConnectionEvent) => void,
  ): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

export type ListenConnectionEvent = { state: 'lost'; error: string } | { state: 'restored'; attempt: number };

/** The database could not be reached (refused, restarting, pool exhausted): the request may be retried. */
export class DatabaseUnavailableError extends Error {
  constructor(override readonly cause: unknown) {
    super(`database unavailable: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'DatabaseUnavailableError';
  }
}

// 57014: a statement cancelled (statement_timeout, which bounds a keyed request's statements, or an operator).
const UNAVAILABLE_SQLSTATE = /^(08|57P0[1-3]|57014|53300)/;
const UNAVAILABLE_NODE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH']);

/** True for errors that mean "the database is not there right now", as opposed to a bad statement. */
export function isUnavailable(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && (UNAVAILABLE_SQLSTATE.test(code) || UNAVAILABLE_NODE.has(code))) return true;
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(
    error.message,
  );
}

/** Wrap connection-level failures so the HTTP layer can answer 503 instead of 500. */
export function translateError(error: unknown): unknown {
  return isUnavailable(error) ? new DatabaseUnavailableError(error) : error;
}

/** The SQLSTATE of a database error, if it has one. */
export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/** Quote an identifier that was validated by config (schema names). */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** `Database.transaction` in terms of `begin`: commit when `fn` resolves, roll back when it throws. */
export async function runInTransaction<T>(
  begin: () => Promise<OpenTransaction>,
  fn: (tx: Transaction) => Promise<T>,
): Promise<T> {
  const tx = await begin();
  try {
    const result = await fn(tx);
    await tx.commit();
    return result;
  } catch (error) {
    await tx.rollback();
    throw translateError(error);
  }
}
