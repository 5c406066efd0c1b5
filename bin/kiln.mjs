#!/usr/bin/env node
// Runs Kiln's command line: the compiled dist/cli.js where tsx is not installed (an install without dev dependencies,
// after `npm run build`), else src/cli.ts through tsx, so a checkout always runs its current source.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const source = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
const compiled = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
let tsx = false;
try {
  createRequire(import.meta.url).resolve('tsx');
  tsx = existsSync(source);
} catch {
  // no tsx: the compiled CLI
}
if (!tsx && !existsSync(compiled)) {
  process.stderr.write('kiln: dist/cli.js is missing and tsx is not installed: run `npm run build` first.\n');
  process.exit(2);
}
const args = tsx ? ['--import', 'tsx', source] : ['--enable-source-maps', compiled];
const result = spawnSync(process.execPath, [...args, ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(result.status ?? 1);
