import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { renderOpenApi } from '../../src/openapi';
import { VERSION } from '../../src/version';
import { startTestApp } from '../helpers/app';

describe('docs/openapi.json', () => {
  it('matches the document generated from the route schemas (run `npm run openapi` after changing a route)', async () => {
    const committed = await readFile(new URL('../../docs/openapi.json', import.meta.url), 'utf8');
    const generated = await renderOpenApi(VERSION);
    expect(JSON.parse(committed)).toEqual(JSON.parse(generated));
    expect(JSON.parse(generated).openapi).toBe('3.1.0');
  });
});

describe('the document tells the truth about parameters', () => {
  it('a query parameter the server defaults is optional (limit, after)', async () => {
    const document = JSON.parse(await renderOpenApi(VERSION));
    const defaulted: string[] = [];
    for (const [path, operations] of Object.entries(document.paths as Record<string, Record<string, unknown>>)) {
      for (const [method, operation] of Object.entries(operations)) {
        for (const p of (operation as { parameters?: Record<string, unknown>[] }).parameters ?? []) {
          const schema = p.schema as { default?: unknown } | undefined;
          if (p.in !== 'query' || schema?.default === undefined) continue;
          defaulted.push(`${method} ${path} ${String(p.name)}`);
          expect(p.required, `${method} ${path} ${String(p.name)}`).not.toBe(true);
        }
      }
    }
    expect(defaulted).toContain('get /v1/builds limit');
    expect(defaulted).toContain('get /v1/builds/{id}/events after');
  });
});

describe('GET /', () => {
  it('points to the docs', async () => {
    const t = await startTestApp();
    try {
      const res = await t.app.inject({ method: 'GET', url: '/' });
      expect(res.statusCode).toBe(302);
      expect(res.headers.location).toBe('/docs');
      expect(res.json()).toMatchObject({ docs: '/docs', openapi: '/openapi.json' });
    } finally {
      await t.close();
    }
  });
});
