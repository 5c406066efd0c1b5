import { Type } from '@sinclair/typebox';
import { previewFile } from '../../services/previews';
import type { App, AppDeps } from '../app';
import { ApiError } from '../errors';
import { Id } from '../schemas';

/**
 * `GET /previews/:buildId/*`: the files a build wrote into its preview directory (unsigned, for browsers), from any
 * process: this host's disk when the build ran here, else the copy its end stored in the database.
 */
export function registerPreviewRoutes(app: App, deps: AppDeps): void {
  app.get(
    '/previews/:buildId/*',
    { schema: { hide: true, params: Type.Object({ buildId: Id, '*': Type.String({ maxLength: 512 }) }) } },
    async (request, reply) => {
      const file = await previewFile(deps.db, deps.config.dataDir, request.params.buildId, request.params['*']);
      if (!file) throw new ApiError('NOT_FOUND', `No preview file ${request.url}.`, { path: request.url });
      // Build output is untrusted: it runs in a sandbox (an opaque origin), so its scripts cannot read what this
      // origin keeps (the live page's token in sessionStorage) nor call /dashboard/data or /metrics as this origin.
      reply.header('content-security-policy', 'sandbox allow-scripts allow-forms allow-popups allow-modals');
      reply.header('x-content-type-options', 'nosniff');
      return reply.type(file.type).send(Buffer.from(file.body.buffer, file.body.byteOffset, file.body.byteLength));
    },
  );
}
