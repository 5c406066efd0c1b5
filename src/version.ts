import { readFileSync } from 'node:fs';

/** The package version, sent as x-worker-version on every response. */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;
