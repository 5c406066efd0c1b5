/**
 * `kiln` command line. `kiln sign METHOD PATH [BODY]` prints the signature headers for one request, and a ready
 * curl line, using HMAC_SECRET(S) or the secret Kiln generated in DATA_DIR.
 */
import { signRequest } from './client/sign';
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

async function sign(args: string[]): Promise<number> {
  const [method, path, body = ''] = args;
  if (!method || !path || !/^(GET|POST|PUT|PATCH|DELETE|HEAD)$/i.test(method) || !path.startsWith('/')) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  if (body) {
    try {
      JSON.parse(body);
    } catch (error) {
      process.stderr.write(`kiln sign: BODY is not valid JSON (${(error as Error).message})\n`);
      return 2;
    }
  }
  const config = loadConfig(process.env);
  const { secrets } = await resolveHmacSecrets(config.hmacSecrets, config.dataDir);
  const headers = signRequest({
    secret: secrets[0],
    method: method.toUpperCase(),
    path,
    body,
    prefix: config.signatureHeaderPrefix,
  });
  if (body) headers['content-type'] = 'application/json';
  for (const [name, value] of Object.entries(headers)) process.stdout.write(`${name}: ${value}\n`);
  const host = config.host === '0.0.0.0' ? '127.0.0.1' : config.host;
  const curl = [
    'curl -sS',
    method.toUpperCase() === 'HEAD' ? '-I' : `-X ${method.toUpperCase()}`,
    ...Object.entries(headers).map(([name, value]) => `-H ${shellQuote(`${name}: ${value}`)}`),
    ...(body ? [`--data-binary ${shellQuote(body)}`] : []),
    shellQuote(`http://${host}:${config.port}${path}`),
  ].join(' ');
  process.stdout.write(`\n${curl}\n`);
  return 0;
}

/** `kiln audit [--user ID]`: the credit audit as JSON; 0 when the books balance, 1 when not, 2 when it cannot run. */
async function auditCommand(args: string[]): Promise<number> {
  const userIndex = args.indexOf('--user');
  const userId = userIndex >= 0 ? args[userIndex + 1] : undefined;
  const unknown = userIndex >= 0 ? args.filter((_arg, i) => i !== userIndex && i !== userIndex + 1) : args;
  if ((userIndex >= 0 && !/^[\w.:@-]{1,128}$/.test(userId ?? '')) || unknown.length > 0) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
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
  const { secrets } = await resolveHmacSecrets(config.hmacSecrets, config.dataDir);
  const host = config.host === '0.0.0.0' ? '127.0.0.1' : config.host;
  return runDemo(`http://${host}:${config.port}`, secrets[0], config.signatureHeaderPrefix, (line) =>
    process.stdout.write(`${line}\n`),
  );
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'sign') return sign(rest);
  if (command === 'audit') return auditCommand(rest);
  if (command === 'demo') return demo();
  process.stderr.write(`${USAGE}\n`);
  return command === undefined || command === 'help' || command === '--help' ? 0 : 2;
}

main(process.argv.slice(2))
  .then((code) => process.exit(code))
  .catch((error: unknown) => {
    const message = error instanceof ConfigError || error instanceof Error ? error.message : String(error);
    process.stderr.write(`kiln: ${message}\n`);
    process.exit(1);
  });
