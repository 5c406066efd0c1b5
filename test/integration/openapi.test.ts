import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { renderOpenApi } from '../../src/openapi';
import { VERSION } from '../../src/version';

describe('docs/openapi.json', () => {
  it('matches the document generated from the route schemas (run `npm run openapi` after changing a route)', async () => {
    const committed = await readFile(new URL('../../docs/openapi.json', import.meta.url), 'utf8');
    const generated = await renderOpenApi(VERSION);
    expect(JSON.parse(committed)).toEqual(JSON.parse(generated));
    expect(JSON.parse(generated).openapi).toBe('3.1.0');
  });
});
