import { posix } from 'node:path';

/**
 * In: the part of a preview URL after `/previews/<build>/` (decoded). Out: the file it names, relative to the
 * preview directory with `/` separators ('index.html' for the directory itself and for any path ending in `/`), or
 * undefined when it leads out of the directory (`..`), is absolute, or holds a NUL or a backslash.
 */
export function previewFilePath(rest: string): string | undefined {
  if (rest.includes('\0') || rest.includes('\\')) return undefined;
  const wanted = rest === '' || rest.endsWith('/') ? `${rest}index.html` : rest;
  if (wanted.startsWith('/')) return undefined;
  const normal = posix.normalize(wanted);
  if (normal === '..' || normal.startsWith('../') || normal.startsWith('/') || normal === '.') return undefined;
  return normal.startsWith('./') ? normal.slice(2) : normal;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.txt': 'text/plain; charset=utf-8',
};

/** The Content-Type a preview file is served with, by its extension (octet-stream for any other). */
export function previewContentType(path: string): string {
  return TYPES[posix.extname(path).toLowerCase()] ?? 'application/octet-stream';
}
