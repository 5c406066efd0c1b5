// Regenerates docs/openapi.json from the route schemas: `npm run openapi`.
import { writeFile } from 'node:fs/promises';
import { renderOpenApi } from '../src/openapi';
import { VERSION } from '../src/version';

const target = new URL('../docs/openapi.json', import.meta.url);
await writeFile(target, await renderOpenApi(VERSION));
process.stdout.write(`wrote ${target.pathname}\n`);
