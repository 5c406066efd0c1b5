/**
 * Why Kiln could not start, told the way an operator fixes it: which dependency, at which address (without its
 * password), what it said, and the fix where one is obvious. Pure: main.ts tags what failed, this words it.
 */

/** What a start-up step was doing when it failed. */
export type StartStep =
  | { kind: 'postgres'; url: string }
  | { kind: 'embedded'; dataDir: string }
  | { kind: 'redis'; url: string }
  | { kind: 'listen'; host: string; port: number };

/** A start-up failure with the step it happened in; main.ts prints `message`. */
export class StartError extends Error {
  constructor(
    readonly step: StartStep,
    override readonly cause: unknown,
  ) {
    super(explainStartFailure(step, cause));
    this.name = 'StartError';
  }
}

/** Run one start-up step; a failure becomes a StartError naming it. */
export async function startStep<T>(step: StartStep, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw error instanceof StartError ? error : new StartError(step, error);
  }
}

/** A URL with its password replaced by `***`, for logs and messages. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    // Drivers also take a password in the query (?password=…).
    for (const name of [...parsed.searchParams.keys()]) {
      if (/pass|secret|token|key/i.test(name)) parsed.searchParams.set(name, '***');
    }
    return parsed.toString();
  } catch {
    return '(an unparsable URL)';
  }
}

interface Cause {
  code?: string;
  message: string;
}

/** The innermost error that carries a code (driver errors are wrapped in Kiln's own), else the outermost message. */
function rootCause(error: unknown): Cause {
  let current: unknown = error;
  let first: Cause | undefined;
  for (let depth = 0; current && depth < 8; depth++) {
    const e = current as { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown };
    const cause = { code: typeof e.code === 'string' ? e.code : undefined, message: String(e.message ?? current) };
    first ??= cause;
    // An AggregateError (a host with IPv4 and IPv6 addresses, both refused) carries the codes in its parts.
    if (!cause.code && Array.isArray(e.errors) && e.errors.length > 0) {
      current = e.errors[0];
      continue;
    }
    if (cause.code) return cause;
    current = e.cause;
  }
  return first ?? { message: String(error) };
}

function hostPort(url: string, defaultPort: number): { host: string; port: string; user: string; database: string } {
  try {
    const parsed = new URL(url);
    return {
      host: parsed.hostname || 'localhost',
      port: parsed.port || String(defaultPort),
      user: decodeURIComponent(parsed.username),
      database: decodeURIComponent(parsed.pathname.slice(1)),
    };
  } catch {
    return { host: '?', port: String(defaultPort), user: '', database: '' };
  }
}

/** What the network said, in words, with the fix; undefined for anything else. */
function networkProblem(code: string | undefined, host: string, port: string, fix: string): string | undefined {
  switch (code) {
    case 'ECONNREFUSED':
      return `nothing accepts connections at ${host}:${port} (connection refused): ${fix}`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `the host ${host} cannot be resolved (${code}): fix the host name`;
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return `${host}:${port} cannot be reached (${code}): check the address and the network between`;
    case 'ECONNRESET':
      return `${host}:${port} closed the connection (${code}): is it the right service, and does it accept this client?`;
    default:
      return undefined;
  }
}

/** The one-line reason a start-up step failed. */
export function explainStartFailure(step: StartStep, error: unknown): string {
  const cause = rootCause(error);
  switch (step.kind) {
    case 'postgres': {
      const { host, port, user, database } = hostPort(step.url, 5432);
      const where = `PostgreSQL at ${redactUrl(step.url)}`;
      const sql = (flag: string) => `-h ${host} -p ${port}${user ? ` -U ${user}` : ''}${flag}`;
      switch (cause.code) {
        case '3D000':
          return `${where}: database "${database}" does not exist; create it with \`createdb ${sql('')} ${database}\`, or point DATABASE_URL at one that exists`;
        case '28P01':
        case '28000':
          return `${where}: ${cause.message}; check the user and password in DATABASE_URL (and pg_hba.conf for this host)`;
        case '42501':
          return `${where}: ${cause.message}; the user needs the right to create the schema and its tables (or create the schema for it first)`;
        case '53300':
          return `${where}: ${cause.message}; too many connections: lower DATABASE_POOL_SIZE or raise max_connections`;
      }
      const network = networkProblem(cause.code, host, port, 'start PostgreSQL there, or fix DATABASE_URL');
      return `${where}: ${network ?? cause.message}`;
    }
    case 'embedded':
      return `the embedded database in ${step.dataDir}: ${cause.message}`;
    case 'redis': {
      const { host, port } = hostPort(step.url, 6379);
      const where = `Redis at ${redactUrl(step.url)}`;
      if (/NOAUTH|WRONGPASS|invalid password|invalid username/i.test(cause.message)) {
        return `${where}: ${cause.message}; check the user and password in REDIS_URL`;
      }
      const network = networkProblem(
        cause.code,
        host,
        port,
        'start Redis there, or fix REDIS_URL (or unset it: nonces and rate limits are then kept in the database)',
      );
      return `${where}: ${network ?? cause.message}`;
    }
    case 'listen': {
      const where = `listening on ${step.host}:${step.port}`;
      if (cause.code === 'EADDRINUSE') {
        return `${where}: the port is already in use (another Kiln?): stop that process, or set PORT to a free port`;
      }
      if (cause.code === 'EACCES')
        return `${where}: not allowed (ports below 1024 need privileges): set PORT above 1023`;
      if (cause.code === 'EADDRNOTAVAIL') return `${where}: this machine has no such address: fix HOST`;
      return `${where}: ${cause.message}`;
    }
  }
}
