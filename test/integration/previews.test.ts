import { mkdir, mkdtemp, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readPreviewFile, storePreviewFiles } from '../../src/db/previews';
import { listPreview, PREVIEW_MAX_FILE_BYTES, type PreviewListing, previewChunks } from '../../src/services/previews';
import { openTestDatabase, type TestDatabase } from '../helpers/db';

const MB = 1_048_576;

async function* chunksOf(...chunks: { path: string; text: string }[][]) {
  for (const chunk of chunks) yield chunk.map((f) => ({ path: f.path, body: Buffer.from(f.text) }));
}

describe('a preview copied into the database', () => {
  let t: TestDatabase;
  let dir: string;
  beforeAll(async () => {
    t = await openTestDatabase();
    dir = await mkdtemp(join(tmpdir(), 'kiln-preview-'));
    await t.db.query(`insert into projects (id, owner_id, name) values ('pv_p', 'o', 'n')`);
    await t.db.query(
      `insert into builds (id, project_id, user_id, state, estimated_credits, exclusive) values ('pv_b', 'pv_p', 'u', 'queued', 1, false)`,
    );
  });
  afterAll(async () => {
    await t?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('stores the files of every chunk, replacing what the build had, and reads them back byte for byte', async () => {
    await t.db.transaction((tx) => storePreviewFiles(tx, 'pv_b', chunksOf([{ path: 'old.txt', text: 'old' }])));
    const stored = await t.db.transaction((tx) =>
      storePreviewFiles(
        tx,
        'pv_b',
        chunksOf([{ path: 'index.html', text: '<h1>hi</h1>' }], [{ path: 'a/b.txt', text: 'é\u0000x' }]),
      ),
    );
    expect(stored).toEqual({ stored: true, files: 2 });
    expect(Buffer.from((await readPreviewFile(t.db, 'pv_b', 'a/b.txt'))!).toString()).toBe('é\u0000x');
    expect(Buffer.from((await readPreviewFile(t.db, 'pv_b', 'index.html'))!).toString()).toBe('<h1>hi</h1>');
    expect(await readPreviewFile(t.db, 'pv_b', 'old.txt')).toBeUndefined();
  });

  it('rolls back only its own step when the database refuses a file, and the transaction goes on', async () => {
    const outcome = await t.db.transaction(async (tx) => {
      const copy = await storePreviewFiles(
        tx,
        'pv_b',
        chunksOf([{ path: 'fine.txt', text: 'x' }], [{ path: '../escape.txt', text: 'y' }]),
      );
      // The rest of the build's end is still written in this transaction.
      await tx.query(`update builds set metadata = '{"after": true}' where id = 'pv_b'`);
      return copy;
    });
    expect(outcome.stored).toBe(false);
    // The earlier copy is as it was: the refused one left nothing, not even its first chunk.
    expect(await readPreviewFile(t.db, 'pv_b', 'fine.txt')).toBeUndefined();
    expect(await readPreviewFile(t.db, 'pv_b', 'index.html')).toBeDefined();
    const { rows } = await t.db.query<{ metadata: unknown }>(`select metadata from builds where id = 'pv_b'`);
    expect(rows[0].metadata).toEqual({ after: true });
  });

  it('lists a preview without reading it, and refuses one past a bound before reading anything', async () => {
    const preview = join(dir, 'ok');
    await mkdir(join(preview, 'sub'), { recursive: true });
    await writeFile(join(preview, 'index.html'), 'page');
    await writeFile(join(preview, 'sub', 'app.js'), 'js');
    await symlink('sub', join(preview, 'sub-link'));
    await symlink('/etc/hostname', join(preview, 'out.txt'));
    const listed = (await listPreview(preview, MB)) as PreviewListing;
    expect(listed.files.map((f) => [f.path, f.size]).sort()).toEqual([
      ['index.html', 4],
      ['sub-link/app.js', 2],
      ['sub/app.js', 2],
    ]);
    const read: string[] = [];
    for await (const chunk of previewChunks(listed)) read.push(...chunk.map((f) => f.path));
    expect(read.sort()).toEqual(['index.html', 'sub-link/app.js', 'sub/app.js']);

    // One file over the per-file bound, as a sparse file: reading it would take 600 MB; listing takes nothing.
    const big = join(dir, 'big');
    await mkdir(big);
    await writeFile(join(big, 'huge.bin'), '');
    await truncate(join(big, 'huge.bin'), 600 * MB);
    const before = process.memoryUsage().rss;
    expect(await listPreview(big, 1024 * MB)).toEqual({
      tooLarge: `huge.bin is over ${PREVIEW_MAX_FILE_BYTES / MB} MB`,
    });
    expect(process.memoryUsage().rss - before).toBeLessThan(100 * MB);
    // Over the bound in all, and a link to its own directory (a loop) made deep.
    expect(await listPreview(preview, 5)).toEqual({ tooLarge: 'over PREVIEW_MAX_MB (0 MB) in all' });
    const loop = join(dir, 'loop');
    await mkdir(loop);
    await writeFile(join(loop, 'a.txt'), 'a');
    await symlink('.', join(loop, 'self'));
    expect(await listPreview(loop, MB)).toEqual({ tooLarge: 'more than 16 directories deep' });
    // No directory at all: an empty preview.
    expect(await listPreview(join(dir, 'missing'), MB)).toMatchObject({ files: [], bytes: 0 });
  });
});
