import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError } from './config';

/**
 * The HMAC secrets in force: the configured ones, else the one generated on first start and kept in
 * DATA_DIR/hmac-secret (mode 0600), so a restart keeps accepting the same signatures.
 */
export async function resolveHmacSecrets(
  configured: string[],
  dataDir: string,
  /** Processes share a database (DATABASE_URL): a secret made here would differ on every host. */
  shared = false,
): Promise<{ secrets: string[]; file?: string; generated?: boolean }> {
  if (configured.length > 0) return { secrets: configured };
  const file = join(dataDir, 'hmac-secret');
  const saved = await savedSecret(file);
  if (shared) throw new SecretRequired(saved === undefined ? undefined : file);
  if (saved !== undefined) return { secrets: [saved], file };
  await mkdir(dataDir, { recursive: true });
  const secret = randomBytes(32).toString('hex');
  // Exactly the secret, no newline: a reader that takes the file as is (`$(cat …)`, readFileSync) signs with the
  // right bytes. Kiln itself tolerates surrounding whitespace (an editor's newline) when it reads the file back.
  // Created exclusively: a `kiln sign` starting at the same moment as the server never writes a second secret over
  // the first; whoever loses reads the winner's.
  try {
    await writeFile(file, secret, { mode: 0o600, flag: 'wx' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    await new Promise((resolve) => setTimeout(resolve, 50));
    const winner = await savedSecret(file);
    if (winner === undefined) {
      throw new Error(`${file} holds no usable secret (under 16 characters): delete it or set HMAC_SECRET`);
    }
    return { secrets: [winner], file };
  }
  return { secrets: [secret], file, generated: true };
}

/** The secret saved in `file`, whitespace around it ignored; undefined when there is none or it is under 16 characters. */
async function savedSecret(file: string): Promise<string | undefined> {
  try {
    const saved = (await readFile(file, 'utf8')).trim();
    return saved.length >= 16 ? saved : undefined;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    return undefined;
  }
}

/**
 * No secret is configured while DATABASE_URL is set. Every process on a shared database must verify with the same
 * secret; one generated (or read from DATA_DIR) on this host would not be the others', and the web app's requests
 * would get 401 on some hosts only.
 */
export class SecretRequired extends ConfigError {
  constructor(
    /** A secret an earlier start saved on this host, which the clients may already sign with. */
    readonly savedFile?: string,
  ) {
    super(
      'HMAC_SECRET',
      'required when DATABASE_URL is set: every Kiln process on that database must sign with the same secret, and ' +
        "one generated on this host would differ from the others'. " +
        (savedFile
          ? `An earlier start saved one in ${savedFile}: HMAC_SECRET="$(cat ${savedFile})" keeps your clients working; set the same on every host.`
          : 'Set HMAC_SECRET (or HMAC_SECRETS) to the same value on every host, e.g. the output of `openssl rand -hex 32`.'),
    );
    this.name = 'SecretRequired';
  }
}
