import type { Queryable } from './database';

/** One file of a build's preview: its path under the preview directory ('index.html', 'assets/app.js'). */
export interface PreviewFile {
  path: string;
  body: Uint8Array;
}

const PER_STATEMENT = 100;

/**
 * In: a build (in the transaction that records its end) and its preview's files. Out: nothing; the files replace any
 * the build had in build_preview_files (migration 0015), so any process can serve them. Errors: the database's own.
 */
export async function storePreviewFiles(q: Queryable, buildId: string, files: PreviewFile[]): Promise<void> {
  await q.query('delete from build_preview_files where build_id = $1::text', [buildId]);
  for (let i = 0; i < files.length; i += PER_STATEMENT) {
    const chunk = files.slice(i, i + PER_STATEMENT);
    const params: unknown[] = [buildId];
    const rows = chunk.map((file) => {
      params.push(file.path, file.body.byteLength, file.body);
      const n = params.length;
      return `($1::text, $${n - 2}::text, $${n - 1}::int, $${n}::bytea)`;
    });
    await q.query(`insert into build_preview_files (build_id, path, size, body) values ${rows.join(', ')}`, params);
  }
}

/** In: a build and a path under its preview. Out: the file's bytes, or undefined when it has none there. */
export async function readPreviewFile(q: Queryable, buildId: string, path: string): Promise<Uint8Array | undefined> {
  const { rows } = await q.query<{ body: Uint8Array }>(
    'select body from build_preview_files where build_id = $1::text and path = $2::text',
    [buildId, path],
  );
  return rows[0]?.body;
}
