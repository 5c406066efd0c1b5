import { constants } from 'node:fs';
import { type FileHandle, open, readdir, readlink, realpath, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
import type { Queryable } from '../db/database';
import { type PreviewFile, readPreviewFile } from '../db/previews';
import { previewContentType, previewFilePath } from '../domain/previews';

/**
 * A build's preview: the files its command wrote into `<workspace>/preview`. The process that ran the build serves
 * them from its disk while the build runs; when the build deploys they are copied into the database with its end
 * (listPreview, then storePreviewFiles of previewChunks in the runner's transaction), so every process serves them
 * afterwards.
 */

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

/** The bytes of `file` if it is a regular file inside `dir` (see openInside), else undefined. */
async function readInside(file: string, dir: string): Promise<Buffer | undefined> {
  const handle = await openInside(file, dir);
  if (!handle) return undefined;
  try {
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/** Where builds' workspaces live on this host: `<DATA_DIR>/builds/<build id>`, the preview in its `preview/`. */
export const workspacesDir = (dataDir: string) => join(dataDir, 'builds');

/** How deep listPreview follows directories (and links to directories inside the preview: a link to `.` loops). */
const MAX_DEPTH = 16;
/** The most files one preview may have to be stored. */
export const PREVIEW_MAX_FILES = 10_000;
/** The largest single file a stored preview may hold (a read of it from the database holds it whole in memory). */
export const PREVIEW_MAX_FILE_BYTES = 8 * 1_048_576;
/** The most bytes of files sent to the database in one statement. */
const CHUNK_BYTES = 4 * 1_048_576;

/** A preview as listed on disk, before any file is read: what this host would serve, by path, and each size. */
export interface PreviewListing {
  root: string;
  files: { path: string; full: string; size: number }[];
  bytes: number;
}

/**
 * In: the directory of a build's preview, and the most bytes to take. Out: what this host would serve from it
 * (regular files, and links to files or directories that stay inside it, as the preview route follows them), with
 * each file's size, no file read; or `tooLarge` saying which bound it passes: `maxBytes` in all, PREVIEW_MAX_FILE_BYTES
 * for one file, PREVIEW_MAX_FILES files, or MAX_DEPTH directories deep. A missing directory is an empty preview.
 * Errors: only unexpected file-system ones.
 */
export async function listPreview(
  previewDir: string,
  maxBytes: number,
): Promise<PreviewListing | { tooLarge: string }> {
  const root = await realpath(previewDir).catch(() => undefined);
  if (root === undefined) return { root: previewDir, files: [], bytes: 0 };
  const files: PreviewListing['files'] = [];
  let bytes = 0;
  // The bound passed, if one was.
  const walk = async (dir: string, prefix: string, depth: number): Promise<string | undefined> => {
    if (depth > MAX_DEPTH) return `more than ${MAX_DEPTH} directories deep`;
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = `${prefix}${entry.name}`;
      const full = join(dir, entry.name);
      let isDirectory = entry.isDirectory();
      if (entry.isSymbolicLink()) {
        const real = await realpath(full).catch(() => undefined);
        if (real === undefined || (real !== root && !inside(real, root))) continue;
        isDirectory = (await stat(real).catch(() => undefined))?.isDirectory() ?? false;
      }
      if (isDirectory) {
        const over = await walk(full, `${path}/`, depth + 1);
        if (over) return over;
        continue;
      }
      if (!entry.isFile() && !entry.isSymbolicLink()) continue;
      const handle = await openInside(full, root);
      if (!handle) continue;
      const size = await handle.stat().then(
        (s) => s.size,
        () => undefined,
      );
      await handle.close();
      if (size === undefined) continue;
      if (size > PREVIEW_MAX_FILE_BYTES) return `${path} is over ${PREVIEW_MAX_FILE_BYTES / 1_048_576} MB`;
      bytes += size;
      if (bytes > maxBytes) return `over PREVIEW_MAX_MB (${Math.round(maxBytes / 1_048_576)} MB) in all`;
      if (files.length >= PREVIEW_MAX_FILES) return `more than ${PREVIEW_MAX_FILES} files`;
      files.push({ path, full, size });
    }
    return undefined;
  };
  const over = await walk(root, '', 0);
  return over ? { tooLarge: over } : { root, files, bytes };
}

/**
 * The files of a listing, read as they are sent: chunks of at most CHUNK_BYTES (a larger file alone), so storing a
 * preview never holds more than a chunk in memory. A file gone or changed into something the route would refuse
 * since the listing is left out, as the route would.
 */
export async function* previewChunks(listing: PreviewListing): AsyncGenerator<PreviewFile[]> {
  let chunk: PreviewFile[] = [];
  let size = 0;
  for (const file of listing.files) {
    const body = await readInside(file.full, listing.root);
    if (body === undefined) continue;
    if (chunk.length > 0 && size + body.byteLength > CHUNK_BYTES) {
      yield chunk;
      chunk = [];
      size = 0;
    }
    chunk.push({ path: file.path, body });
    size += body.byteLength;
  }
  if (chunk.length > 0) yield chunk;
}

/** Reads of preview files from the database at once in this process (each holds its file whole in memory). */
const DATABASE_READS = 2;
let reading = 0;
const waiting: (() => void)[] = [];

async function oneOfFewReads<T>(read: () => Promise<T>): Promise<T> {
  while (reading >= DATABASE_READS) await new Promise<void>((go) => waiting.push(go));
  reading += 1;
  try {
    return await read();
  } finally {
    reading -= 1;
    waiting.shift()?.();
  }
}

/**
 * In: the database, this host's data directory, a build id and the rest of the preview URL. Out: the file and its
 * type — from this host's disk when the build ran here (and its workspace is still kept), else from the database
 * when the build deployed with its preview copied there — or undefined when neither has it.
 */
export async function previewFile(
  db: Queryable,
  dataDir: string,
  buildId: string,
  rest: string,
): Promise<{ body: Uint8Array; type: string } | undefined> {
  const path = previewFilePath(rest);
  if (path === undefined) return undefined;
  const type = previewContentType(path);
  const dir = await realpath(join(workspacesDir(dataDir), buildId, 'preview')).catch(() => undefined);
  if (dir !== undefined) {
    const local = await readInside(join(dir, ...path.split('/')), dir);
    if (local !== undefined) return { body: local, type };
  }
  const stored = await oneOfFewReads(() => readPreviewFile(db, buildId, path));
  return stored === undefined ? undefined : { body: stored, type };
}
