import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where Kiln's own files are (package.json, migrations/, static/, scripts/), whether it runs from src/ through tsx or
 * from the compiled bundle in dist/: the nearest directory above this module that holds package.json and
 * migrations/. A path relative to each module's own URL would be wrong once the modules are bundled into one file.
 */
function findRoot(): string {
  const here = fileURLToPath(import.meta.url);
  let dir = dirname(here);
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'migrations'))) return dir;
    const parent = dirname(dir);
    if (parent === dir)
      throw new Error(`Kiln's files (package.json, migrations/) are not in any directory above ${here}`);
    dir = parent;
  }
}

export const ROOT = findRoot();

/** A path under Kiln's directory, e.g. rootPath('static', 'dashboard.html'). */
export function rootPath(...parts: string[]): string {
  return join(ROOT, ...parts);
}
