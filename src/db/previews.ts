import { DatabaseUnavailableError, type Queryable } from './database';

/** One file of a build's preview: its path under the preview directory ('index.html', 'assets/app.js'). */
export interface PreviewFile {
  path: string;
  body: Uint8Array;
}

/**
 * In: a build, in the transaction that records its end, and its preview's files in chunks. Out: stored (they
 * replace any the build had in build_preview_files, migration 0015, so any process can serve them), or not stored
 * with the error: a statement failed (a file the database refuses, a chunk too large) and only this step was rolled
 * back (a savepoint), so the build still ends. Errors: DatabaseUnavailableError (the connection went; the caller's
 * transaction is lost and retried whole).
 */
export async function storePreviewFiles(
  q: Queryable,
  buildId: string,
  chunks: AsyncIterable<PreviewFile[]>,
): Promise<{ stored: true; files: number } | { stored: false; error: unknown }> {
  await q.query('savepoint kiln_preview');
  try {
    await q.query('delete from build_preview_files where build_id = $1::text', [buildId]);
    let files = 0;
    for await (const chunk of chunks) {
      if (chunk.length === 0) continue;
      const params: unknown[] = [buildId];
      const rows = chunk.map((file) => {
        params.push(file.path, file.body.byteLength, file.body);
        const n = params.length;
        return `($1::text, $${n - 2}::text, $${n - 1}::int, $${n}::bytea)`;
      });
      await q.query(`insert into build_preview_files (build_id, path, size, body) values ${rows.join(', ')}`, params);
      files += chunk.length;
    }
    await q.query('release savepoint kiln_preview');
    return { stored: true, files };
  } catch (error) {
    if (error instanceof DatabaseUnavailableError) throw error;
    await q.query('rollback to savepoint kiln_preview');
    return { stored: false, error };
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
