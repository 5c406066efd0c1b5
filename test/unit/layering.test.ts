import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * The layering, checked rather than remembered (README, "The code's shape"): routes → services → db/store, the
 * domain pure, SQL only in db/, the wake-up bus reachable without an arrow to the runner, and no import cycle.
 * Every import of src/ (type-only ones included) is an arrow from one layer to another; this lists each one the
 * rules forbid, naming the file and the import.
 */
const SRC = resolve(new URL('../../src', import.meta.url).pathname);
/**
 * The client package's sources, outside src/ but imported by it: the server signs with the package's canonical
 * request (one rule for both sides, so they cannot drift), and src/client and the CLI are built on the package.
 * The package imports nothing of src/ and nothing but Web platform APIs, so it is a leaf below every layer, like a
 * dependency from node_modules; it is named here so that only the layers listed may reach it.
 */
const CLIENT_PACKAGE = resolve(new URL('../../packages/client/src', import.meta.url).pathname);

/** The layer of a file of src/: its first directory, or `top` for the composition files at the root. */
function layerOf(file: string): string {
  if (file.startsWith(`${CLIENT_PACKAGE}/`)) return 'package';
  const [first, second] = relative(SRC, file).split('/');
  if (second === undefined) return 'top';
  if (first === 'http' && second === 'routes') return 'routes';
  return first;
}

/** What each layer may import (besides itself). `db/database` is the database interface and its errors. */
// `top:paths` (where Kiln's own files are: migrations, static pages) is reachable from the layers that read them: one
// module knows how to find them from src/ and from the dist/ bundle alike.
const ALLOWED: Record<string, string[]> = {
  domain: ['package'],
  db: ['domain', 'top:paths'],
  store: ['db', 'domain'],
  services: ['db', 'store', 'domain', 'top:metrics', 'top:log'],
  runner: ['services', 'store', 'db', 'domain', 'top:metrics'],
  delivery: ['services', 'store', 'db', 'domain', 'top:metrics'],
  http: [
    'routes',
    'services',
    'store',
    'domain',
    'db/database',
    'top:config',
    'top:metrics',
    'top:version',
    'top:paths',
  ],
  routes: ['http', 'services', 'domain', 'top:config', 'top:metrics', 'top:paths'],
  client: ['domain', 'package'],
  top: ['*'],
};

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') ? [path] : [];
  });
}

const IMPORT = /(?:^|\n)\s*(?:import|export)\s(?:[^'";]*?\sfrom\s)?'(\.{1,2}\/[^']+)'/g;

interface Arrow {
  from: string;
  to: string;
  spec: string;
}

function arrows(): Arrow[] {
  return sourceFiles(SRC).flatMap((file) =>
    [...readFileSync(file, 'utf8').matchAll(IMPORT)].map((match) => ({
      from: file,
      to: resolve(dirname(file), match[1]).replace(/\.ts$/, ''),
      spec: match[1],
    })),
  );
}

function allowed(arrow: Arrow): boolean {
  const from = layerOf(arrow.from);
  const to = layerOf(`${arrow.to}.ts`);
  if (from === to) return true;
  const target = relative(SRC, arrow.to);
  return (ALLOWED[from] ?? []).some(
    (rule) =>
      rule === '*' ||
      rule === to ||
      (rule.startsWith('top:') && to === 'top' && target === rule.slice(4)) ||
      (rule.includes('/') && target === rule),
  );
}

describe('the layering of src/', () => {
  const all = arrows();

  it('has arrows only where the layers allow them', () => {
    const forbidden = all
      .filter((arrow) => !allowed(arrow))
      .map((a) => `${relative(SRC, a.from)} imports '${a.spec}' (${layerOf(a.from)} → ${layerOf(`${a.to}.ts`)})`);
    expect(forbidden).toEqual([]);
  });

  it('reaches the runner only from the composition root', () => {
    const intoRunner = all
      .filter((a) => layerOf(`${a.to}.ts`) === 'runner' && !['runner', 'top'].includes(layerOf(a.from)))
      .map((a) => `${relative(SRC, a.from)} imports '${a.spec}'`);
    expect(intoRunner).toEqual([]);
  });

  it('keeps SQL in db/', () => {
    const SQL = /['`]\s*(select|insert into|update \w+ set|delete from|with \w+ as|savepoint|rollback to)\b/i;
    const outside = sourceFiles(SRC)
      .filter((file) => layerOf(file) !== 'db' && SQL.test(readFileSync(file, 'utf8')))
      .map((file) => relative(SRC, file));
    expect(outside).toEqual([]);
  });

  it('gives every exported function of db/ a header comment (inputs, outputs, errors)', () => {
    const bare = sourceFiles(join(SRC, 'db')).flatMap((file) => {
      const lines = readFileSync(file, 'utf8').split('\n');
      return lines.flatMap((line, i) => {
        if (!/^export (async )?function /.test(line)) return [];
        let above = i - 1;
        while (above >= 0 && lines[above].trim() === '') above--;
        return above >= 0 && lines[above].trim().endsWith('*/') ? [] : [`${relative(SRC, file)}:${i + 1}`];
      });
    });
    expect(bare).toEqual([]);
  });

  it('has no import cycle', () => {
    const graph = new Map<string, string[]>();
    for (const a of all) graph.set(a.from, [...(graph.get(a.from) ?? []), `${a.to}.ts`]);
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const visit = (file: string, path: string[]) => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'open') {
        cycles.push([...path.slice(path.indexOf(file)), file].map((f) => relative(SRC, f)).join(' → '));
        return;
      }
      state.set(file, 'open');
      for (const next of graph.get(file) ?? []) visit(next, [...path, file]);
      state.set(file, 'done');
    };
    for (const file of graph.keys()) visit(file, []);
    expect(cycles).toEqual([]);
  });

  it('sees the imports it checks (a rule that reads nothing cannot fail)', () => {
    expect(all.length).toBeGreaterThan(150);
    expect(all.some((a) => relative(SRC, a.from) === 'http/server.ts')).toBe(true);
  });
});
