import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { openPglite } from '../../src/db/pglite';
import { TEST_SECRET } from '../helpers/app';
import { runKilnExpectingFailure, spawnKiln } from '../helpers/kiln-process';

const ROOT = new URL('../..', import.meta.url).pathname;

/** `kiln audit …` as a user runs it; resolves with its exit code and output. */
function kilnAudit(env: Record<string, string>, ...args: string[]) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, ['bin/kiln.mjs', 'audit', ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * `kiln audit` on the embedded database (the default deployment): its exit codes, and the lock that keeps it, or a
 * second Kiln, off a data directory a running Kiln has open (PGlite takes no lock of its own).
 */
describe('kiln audit on the embedded database', () => {
  let dataDir: string;
  let env: Record<string, string>;
  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-audit-'));
    env = { DATA_DIR: dataDir, HMAC_SECRET: TEST_SECRET };
  });
  afterAll(() => rm(dataDir, { recursive: true, force: true }));

  it('is refused while Kiln runs (as is a second Kiln), then proves the books: 0 when they balance, 1 when not', async () => {
    const kiln = await spawnKiln(env);
    const call = createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });
    for (const userId of ['u_cli_a', 'u_cli_b']) {
      expect((await call('POST', '/v1/credits/grant', { userId, credits: 100, reason: 'r', source: 's' })).status).toBe(
        200,
      );
    }
    const hold = await call('POST', '/v1/credits/reserve', { userId: 'u_cli_a', estimatedCredits: 40 });
    const { reservationId } = hold.body as { reservationId: string };
    expect((await call('POST', '/v1/credits/commit', { reservationId, actualCredits: 25 })).status).toBe(200);

    const busy = await kilnAudit(env);
    expect(busy.code).toBe(2);
    expect(busy.stderr).toContain(`open in process ${kiln.child.pid}`);
    expect(busy.stderr).toContain('GET /v1/credits/audit');
    const second = await runKilnExpectingFailure({ ...env, PORT: '0' });
    expect(second.code).not.toBe(0);
    expect(second.output).toContain(`open in process ${kiln.child.pid}`);
    await kiln.stop();

    const fine = await kilnAudit(env);
    expect(fine.code).toBe(0);
    expect(JSON.parse(fine.stdout)).toMatchObject({ ok: true, checkedUsers: 2, problems: [] });

    // Someone edits a balance behind the ledger's back.
    const db = await openPglite({ dataDir: join(dataDir, 'pgdata'), schema: 'public' });
    await db.query("update credit_accounts set balance = balance + 7 where user_id = 'u_cli_b'");
    await db.close();
    const wrong = await kilnAudit(env);
    expect(wrong.code).toBe(1);
    const report = JSON.parse(wrong.stdout);
    expect(report.ok).toBe(false);
    expect(report.problems).toContainEqual(
      expect.objectContaining({
        check: 'balance = sum of ledger amounts',
        userId: 'u_cli_b',
        expected: 100,
        actual: 107,
      }),
    );
    expect(report.problems.every((p: { userId: string }) => p.userId === 'u_cli_b')).toBe(true);
    expect((await kilnAudit(env, '--user', 'u_cli_a')).code).toBe(0);
    expect((await kilnAudit(env, '--user')).code).toBe(2);
  }, 120_000);
});
