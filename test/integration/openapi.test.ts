import { readFile } from 'node:fs/promises';
import { Ajv } from 'ajv';
import addFormats from 'ajv-formats';
import { describe, expect, it } from 'vitest';
import { ERROR_STATUS } from '../../src/domain/errors';
import { parseIdempotencyKey } from '../../src/domain/fingerprint';
import { parseIfMatch } from '../../src/http/routes/projects';
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

type Media = { schema?: object; example?: unknown };
type Operation = {
  parameters?: { name: string; in: string; required?: boolean; example?: unknown; schema?: object }[];
  requestBody?: { required?: boolean; content: Record<string, Media> };
  responses: Record<string, { description?: string; content?: Record<string, Media> }>;
  security?: Record<string, string[]>[];
};

describe('every operation is documented whole', async () => {
  const document = JSON.parse(await renderOpenApi(VERSION)) as {
    paths: Record<string, Record<string, Operation>>;
    components: { securitySchemes: Record<string, { in: string; name: string }> };
  };
  const operations = Object.entries(document.paths).flatMap(([path, ops]) =>
    Object.entries(ops).map(([method, operation]) => ({
      name: `${method.toUpperCase()} ${path}`,
      path,
      method,
      operation,
    })),
  );
  const ajv = new Ajv({ strict: false, allErrors: true });
  addFormats.default(ajv);
  const check = (schema: object | undefined, value: unknown) => {
    if (!schema) return 'no schema';
    const validate = ajv.compile(schema);
    return validate(value) ? undefined : ajv.errorsText(validate.errors);
  };

  it('has an example response for its success, and an example body when it takes one, each valid', () => {
    for (const { name, operation } of operations) {
      const success = Object.entries(operation.responses).find(([status]) => status.startsWith('2'));
      expect(success, name).toBeDefined();
      const [status, response] = success!;
      const media = Object.values(response.content ?? {});
      // A 204 has no content to show; every other success has an example of it.
      expect(media.length, `${name}: success content`).toBe(status === '204' ? 0 : media.length || 1);
      for (const m of media) {
        expect(m.example, `${name}: example response`).toBeDefined();
        expect(check(m.schema, m.example), `${name}: example response`).toBeUndefined();
      }
      const body = operation.requestBody?.content['application/json'];
      if (body && operation.requestBody?.required !== false && !name.startsWith('POST /v1/ping')) {
        expect(body.example, `${name}: example body`).toBeDefined();
      }
      if (body?.example !== undefined) expect(check(body.schema, body.example), `${name}: body`).toBeUndefined();
      for (const p of operation.parameters ?? []) {
        if (p.in === 'path') expect(p.example, `${name}: example ${p.name}`).toBeDefined();
        if (p.example !== undefined) expect(check(p.schema, p.example), `${name}: example ${p.name}`).toBeUndefined();
      }
    }
  });

  it('lists the envelope, with the codes it can carry, on every error status', () => {
    for (const { name, path, method, operation } of operations) {
      const statuses = Object.keys(operation.responses);
      for (const status of ['400', '414', '417', '500', '503']) expect(statuses, name).toContain(status);
      const signed = path.startsWith('/v1/');
      if (signed) for (const status of ['401', '409', '429']) expect(statuses, name).toContain(status);
      const keyed = ['post', 'put', 'patch'].includes(method);
      if (signed && keyed) for (const status of ['413', '415', '422']) expect(statuses, name).toContain(status);
      for (const [status, response] of Object.entries(operation.responses)) {
        if (Number(status) < 400) continue;
        const schema = response.content?.['application/json']?.schema as {
          required: string[];
          properties: { error: { enum: string[] } };
        };
        expect(schema.required, `${name} ${status}`).toEqual(
          expect.arrayContaining(['error', 'message', 'requestId', 'correlationId', 'timestamp']),
        );
        const codes = schema.properties.error.enum;
        expect(codes.length, `${name} ${status}`).toBeGreaterThan(0);
        // Each code listed belongs to that status, and the description says when each is answered.
        for (const code of codes) {
          expect(ERROR_STATUS[code as keyof typeof ERROR_STATUS], `${name} ${code}`).toBe(Number(status));
          expect(response.description, `${name} ${status}`).toContain(code);
        }
      }
    }
    const shortOfCredits = document.paths['/v1/builds'].post.responses['402'].content?.['application/json'].schema;
    expect(shortOfCredits).toMatchObject({ properties: { error: { enum: ['INSUFFICIENT_CREDITS'] } } });
    expect(document.paths['/v1/builds/{id}'].get.responses['402']).toBeUndefined();
  });

  it('declares the signature headers as the security of every /v1 route, and the Idempotency-Key of every mutation', () => {
    const schemes = document.components.securitySchemes;
    expect(Object.values(schemes).map((s) => `${s.in}:${s.name}`)).toEqual(
      expect.arrayContaining(['header:x-sheen-timestamp', 'header:x-sheen-nonce', 'header:x-sheen-sig-v2']),
    );
    for (const { name, path, method, operation } of operations) {
      if (!path.startsWith('/v1/')) {
        expect(operation.security, name).toBeUndefined();
        continue;
      }
      expect(operation.security, name).toContainEqual({ timestamp: [], nonce: [], signatureV2: [] });
      const key = operation.parameters?.find((p) => p.in === 'header' && p.name === 'idempotency-key');
      // Only POST, PUT and PATCH are keyed (SPEC 4); a DELETE is idempotent by itself.
      if (['post', 'put', 'patch'].includes(method)) expect(key?.required, name).toBe(false);
      else expect(key, name).toBeUndefined();
    }
  });

  it('states the constraints the server enforces: id patterns, bounds, the If-Match form', () => {
    const build = document.paths['/v1/builds/{id}'].get.parameters?.find((p) => p.name === 'id')?.schema;
    expect(build).toMatchObject({ pattern: expect.any(String), maxLength: 64 });
    const list = document.paths['/v1/builds'].get.parameters?.find((p) => p.name === 'limit')?.schema;
    expect(list).toMatchObject({ minimum: 1, maximum: 100, default: 20 });
    const ifMatch = document.paths['/v1/projects/{id}'].patch.parameters?.find((p) => p.name === 'if-match')?.schema;
    expect(ifMatch).toMatchObject({ pattern: expect.any(String) });
    // The documented forms are the ones the server takes, and no others.
    for (const value of [
      '"3"',
      '3',
      'W/"3"',
      '"3", "4"',
      '*',
      ' "7" ',
      'yesterday',
      '"3";',
      '',
      'W/',
      '"1234567890"',
    ]) {
      let takes = true;
      try {
        parseIfMatch(value);
      } catch {
        takes = false;
      }
      expect(check(ifMatch, value) === undefined, `If-Match ${value}`).toBe(takes);
    }
    const key = document.paths['/v1/builds'].post.parameters?.find((p) => p.name === 'idempotency-key')?.schema;
    const tooLong = 'k'.repeat(256);
    for (const value of ['order-7', 'k'.repeat(255), tooLong, '"quoted \\" key"', '"bad " quote"', 'tab\there', '""']) {
      expect(check(key, value) === undefined, `Idempotency-Key ${value}`).toBe(parseIdempotencyKey(value).ok);
    }
  });
});
