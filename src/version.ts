import { readFileSync } from 'node:fs';
import { rootPath } from './paths';

/** The package version, sent as x-worker-version on every response. */
export const VERSION: string = (JSON.parse(readFileSync(rootPath('package.json'), 'utf8')) as { version: string })
  .version;
