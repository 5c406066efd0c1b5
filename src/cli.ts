/**
 * `kiln` command line. `kiln sign METHOD PATH [BODY]` prints the signature headers for one request, and a ready
 * curl line, using HMAC_SECRET(S) or the secret Kiln generated in DATA_DIR.
 */
import { signRequest } from './client/sign';
import { ConfigError, loadConfig } from './config';
import { resolveHmacSecrets } from './secrets';

const USAGE = `usage: kiln sign METHOD PATH [BODY]
  METHOD  GET, POST, PUT, PATCH, DELETE or HEAD
  PATH    the path with its query string, e.g. /v1/ping or '/v1/builds?state=queued'
  BODY    the exact JSON body to send (omit for none)
Environment: HMAC_SECRET or HMAC_SECRETS (else DATA_DIR/hmac-secret), SIGNATURE_HEADER_PREFIX, PORT, HOST.`;

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

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'sign') return sign(rest);
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
