import { readFile } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { Type } from '@sinclair/typebox';
import { ApiError } from '../errors';
import { Id } from '../schemas';
import type { App, AppDeps } from '../server';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.txt': 'text/plain; charset=utf-8',
};

/** `GET /previews/:buildId/*`: the files a build wrote into its preview directory (unsigned, for browsers). */
export function registerPreviewRoutes(app: App, deps: AppDeps): void {
  const root = resolve(deps.config.dataDir, 'builds');
  app.get(
    '/previews/:buildId/*',
    { schema: { hide: true, params: Type.Object({ buildId: Id, '*': Type.String({ maxLength: 512 }) }) } },
    async (request, reply) => {
      const base = join(root, request.params.buildId, 'preview');
      const wanted = normalize(join(base, request.params['*'] || 'index.html'));
      const notFound = new ApiError('NOT_FOUND', `No preview file ${request.url}.`, { path: request.url });
      if (!wanted.startsWith(base + sep) && wanted !== base) throw notFound;
      const file = wanted.endsWith(sep) ? join(wanted, 'index.html') : wanted;
      try {
        const body = await readFile(file);
        return reply.type(TYPES[extname(file)] ?? 'application/octet-stream').send(body);
      } catch {
        throw notFound;
      }
    },
  );
}
