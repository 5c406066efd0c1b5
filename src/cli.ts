/**
 * `kiln` command line. `kiln sign METHOD PATH [BODY]` prints the signature headers for one request, and a ready
 * curl line, using HMAC_SECRET(S) or the secret Kiln generated in DATA_DIR.
 */
import { signRequest } from '../packages/client/src/index';
import { ConfigError, loadConfig } from './config';
import { DirectoryInUseError } from './db/directory-lock';
import { runDemo } from './demo';
import { resolveHmacSecrets } from './secrets';
import { audit } from './services/credits';
import { openDatabase } from './stores';

const USAGE = `usage: kiln sign METHOD PATH [BODY]
       kiln audit [--user ID]
       kiln demo
  sign    print the signature headers for one request, and a curl line
          METHOD  GET, POST, PUT, PATCH, DELETE or HEAD
          PATH    the path with its query string, e.g. /v1/ping or '/v1/builds?state=queued'
          BODY    the exact JSON body to send (omit for none)
  demo    against the running Kiln (HOST, PORT): a project, a build, its events live, its preview
  audit   prove the credit books from the ledger (one user, or all); prints JSON; exit 0 when they balance,
          1 when they do not (the problems are listed), 2 when the audit cannot run
Environment: HMAC_SECRET or HMAC_SECRETS (else DATA_DIR/hmac-secret), SIGNATURE_HEADER_PREFIX, PORT, HOST;
DATABASE_URL and DATABASE_SCHEMA (else the embedded database in DATA_DIR) for audit.`;

const shellQuote = (text: string) => `'${text.replaceAll("'", `'\\''`)}'`;

/** A command line, understood; or what is wrong with it. */
export type Command =
  | { command: 'sign'; method: string; path: string; body: string }
  | { command: 'audit'; userId?: string }
  | { command: 'demo' }
  | { command: 'help' };

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD'];

/** Read `kiln`'s arguments. Pure; the error names the argument and says why, and the usage follows it. */
export function parseCommand(argv: string[]): Command | { error: string } {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      return { command: 'help' };
    case 'sign': {
      const [method, path, body = '', ...extra] = rest;
      if (!method) return { error: 'kiln sign: METHOD is missing (GET, POST, PUT, PATCH, DELETE or HEAD)' };
      if (!METHODS.includes(method.toUpperCase())) {
        return { error: `kiln sign: METHOD "${method}" is not one of ${METHODS.join(', ')}` };
      }
      if (!path) return { error: 'kiln sign: PATH is missing (e.g. /v1/ping)' };
      if (!path.startsWith('/')) {
        return { error: `kiln sign: PATH "${path}" must start with / (the path and query, without the host)` };
      }
      if (extra.length > 0) {
        return { error: `kiln sign: unexpected argument "${extra[0]}" after BODY (quote the body as one argument)` };
      }
      if (body) {
        try {
          JSON.parse(body);
        } catch (error) {
          return { error: `kiln sign: BODY is not valid JSON (${(error as Error).message})` };
        }
      }
      return { command: 'sign', method: method.toUpperCase(), path, body };
    }
    case 'audit': {
      if (rest.length === 0) return { command: 'audit' };
      if (rest[0] !== '--user') return { error: `kiln audit: unknown argument "${rest[0]}" (only --user ID)` };
      const userId = rest[1];
      if (userId === undefined) return { error: 'kiln audit: --user needs a user id' };
      if (!/^[\w.:@-]{1,128}$/.test(userId)) {
        return { error: `kiln audit: user id "${userId}" is not 1-128 letters, digits or . : @ _ -` };
      }
      if (rest.length > 2) return { error: `kiln audit: unexpected argument "${rest[2]}"` };
      return { command: 'audit', userId };
    }
    case 'demo':
      return rest.length === 0 ? { command: 'demo' } : { error: `kiln demo: takes no arguments, got "${rest[0]}"` };
    default:
      return { error: `kiln: unknown command "${command}" (sign, audit, demo or help)` };
  }
}

async function sign({ method, path, body }: { method: string; path: string; body: string }): Promise<number> {
  const config = loadConfig(process.env);
  const { secrets } = await resolveHmacSecrets(config.hmacSecrets, config.dataDir, config.databaseUrl !== undefined);
  const headers = await signRequest({
    secret: secrets[0],
    method,
    path,
    body,
    prefix: config.signatureHeaderPrefix,
  });
  if (body) headers['content-type'] = 'application/json';
  for (const [name, value] of Object.entries(headers)) process.stdout.write(`${name}: ${value}\n`);
  const host = config.host === '0.0.0.0' ? '127.0.0.1' : config.host;
  const curl = [
    'curl -sS',
    method === 'HEAD' ? '-I' : `-X ${method}`,
    ...Object.entries(headers).map(([name, value]) => `-H ${shellQuote(`${name}: ${value}`)}`),
    ...(body ? [`--data-binary ${shellQuote(body)}`] : []),
    shellQuote(`http://${host}:${config.port}${path}`),
  ].join(' ');
  process.stdout.write(`\n${curl}\n`);
  return 0;
}

/** `kiln audit [--user ID]`: the credit audit as JSON; 0 when the books balance, 1 when not, 2 when it cannot run. */
async function auditCommand(userId: string | undefined): Promise<number> {
  const config = loadConfig(process.env);
  let db: Awaited<ReturnType<typeof openDatabase>>;
  try {
    db = await openDatabase(config);
  } catch (error) {
    const hint =
      error instanceof DirectoryInUseError
        ? ' While Kiln runs, audit through GET /v1/credits/audit instead (or run Kiln on PostgreSQL, DATABASE_URL).'
        : '';
    process.stderr.write(`kiln audit: cannot open the database: ${(error as Error).message}${hint}\n`);
    return 2;
  }
  try {
    // On the background pool: no statement limit, as a full audit of a large ledger may take a while.
    const report = await audit(db.background, userId, 'cli');
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return report.ok ? 0 : 1;
  } finally {
    await db.close();
  }
}

async function demo(): Promise<number> {
  const config = loadConfig(process.env);
  const { secrets } = await resolveHmacSecrets(config.hmacSecrets, config.dataDir, config.databaseUrl !== undefined);
  const host = config.host === '0.0.0.0' ? '127.0.0.1' : config.host;
  return runDemo(`http://${host}:${config.port}`, secrets[0], config.signatureHeaderPrefix, (line) =>
    process.stdout.write(`${line}\n`),
  );
}

async function main(argv: string[]): Promise<number> {
  const parsed = parseCommand(argv);
  if ('error' in parsed) {
    process.stderr.write(`${parsed.error}\n\n${USAGE}\n`);
    return 2;
  }
  switch (parsed.command) {
    case 'sign':
      return sign(parsed);
    case 'audit':
      return auditCommand(parsed.userId);
    case 'demo':
      return demo();
    case 'help':
      process.stdout.write(`${USAGE}\n`);
      return 0;
  }
}

// Run only as the program (bin/kiln.mjs), not when a test imports parseCommand.
if (process.argv[1] && /[\\/]cli\.[cm]?[jt]s$/.test(process.argv[1])) {
  main(process.argv.slice(2))
    .then((code) => process.exit(code))
    .catch((error: unknown) => {
      const message = error instanceof ConfigError ? `bad configuration — ${error.message}` : (error as Error).message;
      process.stderr.write(`kiln: ${message ?? String(error)}\n`);
      process.exit(error instanceof ConfigError ? 2 : 1);
    });
}
