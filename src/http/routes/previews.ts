import { constants } from 'node:fs';
import { type FileHandle, open, readlink, realpath } from 'node:fs/promises';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { Type } from '@sinclair/typebox';
import type { App, AppDeps } from '../app';
import { ApiError } from '../errors';
import { Id } from '../schemas';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.txt': 'text/plain; charset=utf-8',
};

// O_NONBLOCK: opening a fifo for reading must not wait for a writer; O_NOFOLLOW: the last component is not a link.
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

const inside = (path: string, dir: string) => path.startsWith(dir + sep);

/**
 * Open `file` only if it is a regular file whose real path lies inside `dir` (already a real path): symlinks are
 * followed, and one that leads out (a link to a secret, a directory link to /etc) is refused like a missing file.
 * Undefined for anything else (missing, outside, a directory, a fifo, a device).
 */
async function openInside(file: string, dir: string): Promise<FileHandle | undefined> {
  let real: string;
  try {
    real = await realpath(file);
  } catch {
    return undefined;
  }
  if (!inside(real, dir)) return undefined;
  let handle: FileHandle;
  try {
    handle = await open(real, OPEN_FLAGS);
  } catch {
    return undefined;
  }
  try {
    if (!(await handle.stat()).isFile()) throw new Error('not a regular file');
    // The build may swap a directory on the path for a link between realpath and open: on Linux, ask the kernel
    // which file was opened.
    const opened = await readlink(`/proc/self/fd/${handle.fd}`).catch(() => real);
    if (!inside(opened, dir)) throw new Error('opened outside the preview directory');
    return handle;
  } catch {
    await handle.close();
    return undefined;
  }
}

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
      if (!inside(wanted, base) && wanted !== base) throw notFound;
      const file = wanted.endsWith(sep) ? join(wanted, 'index.html') : wanted;
      const dir = await realpath(base).catch(() => undefined);
      const handle = dir === undefined ? undefined : await openInside(file, dir);
      if (!handle) throw notFound;
      try {
        const body = await handle.readFile();
        // Build output is untrusted: it runs in a sandbox (an opaque origin), so its scripts cannot read what this
        // origin keeps (the live page's token in sessionStorage) nor call /dashboard/data or /metrics as this origin.
        reply.header('content-security-policy', 'sandbox allow-scripts allow-forms allow-popups allow-modals');
        reply.header('x-content-type-options', 'nosniff');
        return reply.type(TYPES[extname(file)] ?? 'application/octet-stream').send(body);
      } finally {
        await handle.close();
      }
    },
  );
}
