import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestApp, type TestApp } from '../helpers/app';
import { signedInject } from '../helpers/signed';

describe('credit routes', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp({ RATE_LIMIT_USER_PER_MIN: '0', RATE_LIMIT_IP_PER_MIN: '0' });
  });
  afterAll(() => t.close());
  const call = (method: 'GET' | 'POST', url: string, body?: unknown, headers?: Record<string, string>) =>
    signedInject(t.app, { method, url, body, headers });
  const grant = (userId: string, credits: number, extra: Record<string, unknown> = {}) =>
    call('POST', '/v1/credits/grant', { userId, credits, reason: 'top-up', source: 'purchase', ...extra });
  const reserve = (userId: string, estimatedCredits: number, extra: Record<string, unknown> = {}) =>
    call('POST', '/v1/credits/reserve', { userId, estimatedCredits, ...extra });

  it('an unknown user has zeros on the free plan; a grant creates the account and may set the plan', async () => {
    const unknown = await call('GET', '/v1/credits/balance/nobody');
    expect(unknown.statusCode).toBe(200);
    expect(unknown.json()).toEqual({ userId: 'nobody', plan: 'free', balance: 0, reserved: 0, available: 0 });
    const first = await grant('u_grant', 500);
    expect(first.statusCode).toBe(200);
    expect(first.json()).toEqual({ userId: 'u_grant', plan: 'free', balance: 500, reserved: 0, available: 500 });
    const second = await grant('u_grant', 250, { plan: 'pro' });
    expect(second.json()).toEqual({ userId: 'u_grant', plan: 'pro', balance: 750, reserved: 0, available: 750 });
    expect((await call('GET', '/v1/credits/balance/u_grant')).json()).toMatchObject({ plan: 'pro', balance: 750 });
  });

  it('reserve → commit with a partial refund; the same commit repeated answers as the first', async () => {
    await grant('u_commit', 1000);
    const held = await reserve('u_commit', 300, { buildId: 'bld_1' });
    expect(held.statusCode).toBe(201);
    const hold = held.json();
    expect(hold).toMatchObject({ reserved: 300, available: 700 });
    expect(hold.reservationId).toMatch(/^res_/);
    expect(Date.parse(hold.expires) - Date.now()).toBeGreaterThan(1700_000);
    expect((await call('GET', '/v1/credits/balance/u_commit')).json()).toMatchObject({
      balance: 1000,
      reserved: 300,
      available: 700,
    });
    const commit = { reservationId: hold.reservationId, actualCredits: 120, buildId: 'bld_1' };
    const committed = await call('POST', '/v1/credits/commit', commit);
    expect(committed.statusCode).toBe(200);
    expect(committed.json()).toEqual({ charged: 120, refunded: 180, newBalance: 880 });
    const again = await call('POST', '/v1/credits/commit', commit);
    expect(again.statusCode).toBe(200);
    expect(again.json()).toEqual({ charged: 120, refunded: 180, newBalance: 880 });
    // Another movement in between does not change the repeated answer.
    await grant('u_commit', 20);
    expect((await call('POST', '/v1/credits/commit', commit)).json()).toEqual({
      charged: 120,
      refunded: 180,
      newBalance: 880,
    });
    const different = await call('POST', '/v1/credits/commit', { ...commit, actualCredits: 100 });
    expect(different.statusCode).toBe(409);
    expect(different.json()).toMatchObject({ error: 'RESERVATION_NOT_ACTIVE', data: { state: 'committed' } });
    const release = await call('POST', '/v1/credits/release', { reservationId: hold.reservationId, reason: 'x' });
    expect(release.statusCode).toBe(409);
    expect(release.json().data.state).toBe('committed');
    const read = await call('GET', `/v1/credits/reservations/${hold.reservationId}`);
    expect(read.json()).toMatchObject({
      reservationId: hold.reservationId,
      userId: 'u_commit',
      buildId: 'bld_1',
      reserved: 300,
      state: 'committed',
      charged: 120,
      refunded: 180,
    });
    expect((await call('GET', '/v1/credits/balance/u_commit')).json()).toMatchObject({
      balance: 900,
      reserved: 0,
      available: 900,
    });
  });

  it('commit more than reserved → 422 with reserved and requested; a wrong build → 400; nothing changes', async () => {
    await grant('u_exceed', 100);
    const hold = (await reserve('u_exceed', 50, { buildId: 'bld_e' })).json();
    const res = await call('POST', '/v1/credits/commit', { reservationId: hold.reservationId, actualCredits: 51 });
    expect(res.statusCode).toBe(422);
    expect(res.json()).toMatchObject({
      error: 'COMMIT_EXCEEDS_RESERVATION',
      data: { reserved: 50, requested: 51 },
    });
    const wrongBuild = await call('POST', '/v1/credits/commit', {
      reservationId: hold.reservationId,
      actualCredits: 5,
      buildId: 'bld_other',
    });
    expect(wrongBuild.statusCode).toBe(400);
    const read = (await call('GET', `/v1/credits/reservations/${hold.reservationId}`)).json();
    expect(read.state).toBe('active');
    const full = await call('POST', '/v1/credits/commit', { reservationId: hold.reservationId, actualCredits: 50 });
    expect(full.json()).toEqual({ charged: 50, refunded: 0, newBalance: 50 });
  });

  it('release gives the whole hold back; the same release repeated answers as the first, another reason → 409', async () => {
    await grant('u_release', 400);
    const hold = (await reserve('u_release', 150)).json();
    const body = { reservationId: hold.reservationId, reason: 'build cancelled' };
    const released = await call('POST', '/v1/credits/release', body);
    expect(released.statusCode).toBe(200);
    expect(released.json()).toEqual({ released: 150, newBalance: 400 });
    expect((await call('POST', '/v1/credits/release', body)).json()).toEqual({ released: 150, newBalance: 400 });
    const other = await call('POST', '/v1/credits/release', { ...body, reason: 'another reason' });
    expect(other.statusCode).toBe(409);
    expect(other.json()).toMatchObject({ error: 'RESERVATION_NOT_ACTIVE', data: { state: 'released' } });
    const commit = await call('POST', '/v1/credits/commit', { reservationId: hold.reservationId, actualCredits: 1 });
    expect(commit.statusCode).toBe(409);
    const read = (await call('GET', `/v1/credits/reservations/${hold.reservationId}`)).json();
    expect(read).toMatchObject({
      state: 'released',
      charged: null,
      refunded: 150,
      resolutionReason: 'build cancelled',
    });
  });

  it('unknown reservations → 404 RESERVATION_NOT_FOUND on read, commit and release', async () => {
    for (const res of [
      await call('GET', '/v1/credits/reservations/res_missing'),
      await call('POST', '/v1/credits/commit', { reservationId: 'res_missing', actualCredits: 1 }),
      await call('POST', '/v1/credits/release', { reservationId: 'res_missing', reason: 'x' }),
    ]) {
      expect(res.statusCode).toBe(404);
      expect(res.json()).toMatchObject({ error: 'RESERVATION_NOT_FOUND', data: { reservationId: 'res_missing' } });
    }
  });

  it('short → 402 with required, available, shortfall and the package to buy; nothing is held', async () => {
    await grant('u_short', 350);
    const res = await reserve('u_short', 500);
    expect(res.statusCode).toBe(402);
    const body = res.json();
    expect(body).toMatchObject({
      error: 'INSUFFICIENT_CREDITS',
      data: {
        required: 500,
        available: 350,
        shortfall: 150,
        recommendation: { package: 'starter', credits: 250, cost: 9.99, quantity: 1 },
      },
    });
    expect(body.message).toContain('Top up 150 credits or buy the starter package (250 credits, 9.99)');
    expect(body.requestId).toBeTruthy();
    expect((await call('GET', '/v1/credits/balance/u_short')).json()).toMatchObject({ reserved: 0, available: 350 });
    const never = await reserve('u_never_granted', 10);
    expect(never.statusCode).toBe(402);
    expect(never.json().data).toMatchObject({ required: 10, available: 0, shortfall: 10 });
    expect((await call('GET', '/v1/credits/balance/u_never_granted')).json()).toMatchObject({
      plan: 'free',
      balance: 0,
    });
  });

  it('a repeated reserve with the same idempotencyKey (body or header) holds once', async () => {
    await grant('u_idem', 100);
    const first = await reserve('u_idem', 40, { idempotencyKey: 'reserve-once' });
    const second = await reserve('u_idem', 40, { idempotencyKey: 'reserve-once' });
    expect(first.statusCode).toBe(201);
    expect(second.statusCode).toBe(201);
    expect(second.body).toBe(first.body);
    expect(second.headers['idempotent-replayed']).toBe('true');
    const headerKey = { 'idempotency-key': 'reserve-header' };
    const viaHeader = await call('POST', '/v1/credits/reserve', { userId: 'u_idem', estimatedCredits: 40 }, headerKey);
    const viaHeaderAgain = await call(
      'POST',
      '/v1/credits/reserve',
      { userId: 'u_idem', estimatedCredits: 40 },
      headerKey,
    );
    expect(viaHeader.statusCode).toBe(201);
    expect(viaHeaderAgain.body).toBe(viaHeader.body);
    expect((await call('GET', '/v1/credits/balance/u_idem')).json()).toMatchObject({ reserved: 80, available: 20 });
    const reused = await reserve('u_idem', 41, { idempotencyKey: 'reserve-once' });
    expect(reused.statusCode).toBe(422);
    expect(reused.json().error).toBe('IDEMPOTENCY_KEY_REUSED');
  });

  it('a repeated grant, commit or release with the same key moves credits once and answers the same', async () => {
    const key = (k: string) => ({ 'idempotency-key': k });
    const ledgerLength = async () => (await call('GET', '/v1/credits/ledger/u_idem_moves')).json().entries.length;
    const once = async (url: string, body: Record<string, unknown>, k: string) => {
      const first = await call('POST', url, body, key(k));
      const again = await call('POST', url, body, key(k));
      expect(first.statusCode).toBe(200);
      expect(again.headers['idempotent-replayed']).toBe('true');
      expect(again.body).toBe(first.body);
      return first.json();
    };
    const granted = await once(
      '/v1/credits/grant',
      { userId: 'u_idem_moves', credits: 100, reason: 'r', source: 's' },
      'grant-once',
    );
    expect(granted).toMatchObject({ balance: 100 });
    const a = (await reserve('u_idem_moves', 30)).json().reservationId;
    const b = (await reserve('u_idem_moves', 20)).json().reservationId;
    expect(await once('/v1/credits/commit', { reservationId: a, actualCredits: 10 }, 'commit-once')).toMatchObject({
      charged: 10,
      refunded: 20,
    });
    expect(await once('/v1/credits/release', { reservationId: b, reason: 'done' }, 'release-once')).toMatchObject({
      released: 20,
    });
    // grant, two reserves, one commit, one release: each once.
    expect(await ledgerLength()).toBe(5);
    expect((await call('GET', '/v1/credits/balance/u_idem_moves')).json()).toMatchObject({ balance: 90, reserved: 0 });
  });

  it('validates every field and lists every problem', async () => {
    const bad = await call('POST', '/v1/credits/reserve', {
      userId: 'bad user!',
      estimatedCredits: 1.5,
      buildId: 'bad id',
      reason: 'tab\there',
      extra: 1,
    });
    expect(bad.statusCode).toBe(400);
    const paths = bad.json().data.issues.map((i: { path: string }) => i.path);
    for (const path of ['body.userId', 'body.estimatedCredits', 'body.buildId', 'body.reason', 'body.extra']) {
      expect(paths).toContain(path);
    }
    for (const [url, body] of [
      ['/v1/credits/reserve', { userId: 'u', estimatedCredits: 0 }],
      ['/v1/credits/reserve', { userId: 'u', estimatedCredits: -5 }],
      ['/v1/credits/reserve', { userId: 'u', estimatedCredits: '5' }],
      ['/v1/credits/reserve', { userId: 'u', estimatedCredits: 1_000_000_001 }],
      ['/v1/credits/grant', { userId: 'u', credits: 10, reason: 'x', source: 'purchase', plan: 'no spaces' }],
      ['/v1/credits/grant', { userId: 'u', credits: 10, reason: '', source: 'purchase' }],
      ['/v1/credits/grant', { userId: 'u', credits: 10, reason: 'x' }],
      ['/v1/credits/grant', { userId: 'u', credits: 10, reason: 'x\u0000', source: 'purchase' }],
      ['/v1/credits/commit', { reservationId: 'res_x', actualCredits: -1 }],
      ['/v1/credits/commit', { reservationId: "res'; drop table credit_ledger;--", actualCredits: 1 }],
      ['/v1/credits/release', { reservationId: 'res_x' }],
    ] as const) {
      const res = await call('POST', url, body);
      expect(res.statusCode, `${url} ${JSON.stringify(body)}`).toBe(400);
      expect(res.json().error).toBe('VALIDATION_ERROR');
    }
    expect((await call('GET', '/v1/credits/balance/bad%20user')).statusCode).toBe(400);
    expect((await call('GET', '/v1/credits/ledger/u?cursor=abc')).statusCode).toBe(400);
    expect((await call('GET', '/v1/credits/ledger/u?limit=500')).statusCode).toBe(400);
    expect((await call('GET', '/v1/credits/audit?userId=a%20b')).statusCode).toBe(400);
  });

  it('the ledger pages newest first with a cursor and carries request and correlation ids', async () => {
    await grant('u_ledger', 100, { reason: 'first' });
    const hold = (
      await call(
        'POST',
        '/v1/credits/reserve',
        { userId: 'u_ledger', estimatedCredits: 30 },
        { 'x-request-id': 'req_ledger_reserve', 'x-correlation-id': 'nextjs_1_abc' },
      )
    ).json();
    await call('POST', '/v1/credits/commit', { reservationId: hold.reservationId, actualCredits: 10 });
    const hold2 = (await reserve('u_ledger', 5)).json();
    await call('POST', '/v1/credits/release', { reservationId: hold2.reservationId, reason: 'not needed' });
    const seen: { type: string; amount: number; balanceAfter: number; reservedAfter: number; id: string }[] = [];
    let cursor: string | null = null;
    do {
      const page = await call('GET', `/v1/credits/ledger/u_ledger?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
      expect(page.statusCode).toBe(200);
      const body = page.json();
      expect(body.entries.length).toBeLessThanOrEqual(2);
      seen.push(...body.entries);
      cursor = body.nextCursor;
    } while (cursor);
    expect(seen.map((e) => e.type)).toEqual(['release', 'reserve', 'commit', 'reserve', 'grant']);
    expect(seen.map((e) => e.amount)).toEqual([0, 0, -10, 0, 100]);
    expect(seen[0]).toMatchObject({ balanceAfter: 90, reservedAfter: 0, reason: 'not needed' });
    expect(seen[3]).toMatchObject({
      reservedAfter: 30,
      requestId: 'req_ledger_reserve',
      correlationId: 'nextjs_1_abc',
      reservationId: hold.reservationId,
    });
    expect(seen[4]).toMatchObject({ reason: 'first', source: 'purchase' });
    const ids = seen.map((e) => BigInt(e.id));
    expect([...ids].sort((a, b) => (a > b ? -1 : 1))).toEqual(ids);
    const empty = await call('GET', '/v1/credits/ledger/nobody_at_all');
    expect(empty.json()).toEqual({ entries: [], nextCursor: null });
  });

  it('the audit route passes for one user and for all, and sees tampering', async () => {
    const one = await call('GET', '/v1/credits/audit?userId=u_commit');
    expect(one.json()).toMatchObject({ ok: true, checkedUsers: 1, problems: [] });
    const all = (await call('GET', '/v1/credits/audit')).json();
    expect(all.ok).toBe(true);
    expect(all.checkedUsers).toBeGreaterThan(5);
    // Tamper with an account behind the ledger's back: the audit names the user and the broken rules.
    await t.database.db.query(`update credit_accounts set balance = balance + 7 where user_id = 'u_grant'`);
    const broken = (await call('GET', '/v1/credits/audit?userId=u_grant')).json();
    expect(broken.ok).toBe(false);
    expect(broken.problems).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          check: 'balance = sum of ledger amounts',
          userId: 'u_grant',
          expected: 750,
          actual: 757,
        }),
      ]),
    );
    await t.database.db.query(`update credit_accounts set balance = balance - 7 where user_id = 'u_grant'`);
    expect((await call('GET', '/v1/credits/audit')).json().ok).toBe(true);
  });

  it('the ledger refuses UPDATE, DELETE and TRUNCATE with SQLSTATE KL003', async () => {
    for (const sql of [
      'update credit_ledger set amount = amount + 1',
      'delete from credit_ledger',
      'truncate credit_ledger',
    ]) {
      await expect(t.database.db.query(sql)).rejects.toMatchObject({ code: 'KL003' });
    }
  });

  it('the database refuses negative figures (CHECK) even when the code is bypassed', async () => {
    await expect(
      t.database.db.query(`update credit_accounts set reserved = balance + 1 where user_id = 'u_grant'`),
    ).rejects.toMatchObject({ code: '23514' });
  });
});

describe('a configured package catalog', () => {
  it('is what the 402 recommends from, savings computed from its prices', async () => {
    const packages = [
      { name: 'mini', price: 5, credits: 100 },
      { name: 'mega', price: 40, credits: 2000 },
    ];
    const t = await startTestApp({ CREDIT_PACKAGES: JSON.stringify(packages) });
    try {
      const short = await signedInject(t.app, {
        method: 'POST',
        url: '/v1/credits/reserve',
        body: { userId: 'u_catalog', estimatedCredits: 500 },
      });
      expect(short.statusCode).toBe(402);
      const { recommendation } = short.json().data;
      expect(recommendation).toMatchObject({ package: 'mega', cost: 40, credits: 2000 });
      // 2000 credits for 40 is 50 a dollar, against mini's 20: 2.5 times as many.
      expect(recommendation.savings).toBe('Best value - 2.5x credits per dollar vs mini');
      expect(short.json().message).toMatch(/mega/);
    } finally {
      await t.close();
    }
  });
});
