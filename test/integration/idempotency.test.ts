import { Type } from '@sinclair/typebox';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signRequest } from '../../src/client/sign';
import { insertRecord, purgeExpired, tryLockKey } from '../../src/db/idempotency';
import { openPostgres } from '../../src/db/postgres';
import { ApiError } from '../../src/domain/errors';
import { canonicalJson, sha256 } from '../../src/domain/fingerprint';
import { isRecordable, transactionOf } from '../../src/http/idempotency';
import { registry } from '../../src/metrics';
import { startTestApp, TEST_SECRET, type TestApp } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { rawRequest } from '../helpers/raw-http';
import { signedInject } from '../helpers/signed';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** kiln_idempotency_requests_total of one outcome, as /metrics shows it. */
const outcomes = async (outcome: string) =>
  Number(
    new RegExp(`^kiln_idempotency_requests_total\\{outcome="${outcome}"\\} (\\S+)$`, 'm').exec(
      await registry.metrics(),
    )?.[1],
  );

describe('isRecordable', () => {
  it('records 2xx and deterministic errors only', () => {
    expect(isRecordable(200, undefined)).toBe(true);
    expect(isRecordable(201, undefined)).toBe(true);
    expect(isRecordable(400, 'VALIDATION_ERROR')).toBe(true);
    expect(isRecordable(404, 'PROJECT_NOT_FOUND')).toBe(true);
    expect(isRecordable(409, 'INVALID_STATE_TRANSITION')).toBe(true);
    expect(isRecordable(422, 'COMMIT_EXCEEDS_RESERVATION')).toBe(true);
    for (const [status, code] of [
      [402, 'INSUFFICIENT_CREDITS'],
      [429, 'RATE_LIMITED'],
      [429, 'BUILD_ALREADY_RUNNING'],
      [409, 'IDEMPOTENCY_KEY_IN_USE'],
      [409, 'VERSION_CONFLICT'],
      [500, 'INTERNAL_ERROR'],
      [503, 'SERVICE_UNAVAILABLE'],
    ] as const) {
      expect(isRecordable(status, code)).toBe(false);
    }
  });
});

describe('idempotency', () => {
  let t: TestApp;
  let flaky = 0;
  const logLines: Record<string, unknown>[] = [];
  beforeAll(async () => {
    t = await startTestApp(
      { IDEMPOTENCY_TTL_S: '2' },
      (app) => {
        // A probe route that fails with a 500 the first time, after writing inside the request's transaction.
        app.post('/v1/probe/flaky', { schema: { body: Type.Object({ n: Type.Integer() }) } }, async (request) => {
          await transactionOf(request).query(
            "insert into service_instances (id, hostname, pid, version) values ($1, 'probe', 0, 'x')",
            [`flaky_${request.body.n}_${flaky}`],
          );
          flaky += 1;
          if (flaky === 1) throw new Error('first attempt fails');
          return { attempt: flaky };
        });
        // A probe route that writes, then answers a recordable error: the error is recorded, the write undone.
        app.post(
          '/v1/probe/write-then-404',
          { schema: { body: Type.Object({ id: Type.String() }) } },
          async (request) => {
            await transactionOf(request).query(
              "insert into service_instances (id, hostname, pid, version) values ($1, 'probe', 0, 'x')",
              [request.body.id],
            );
            throw new ApiError('NOT_FOUND', `Nothing called ${request.body.id}; create it first.`, {
              id: request.body.id,
            });
          },
        );
        // A probe route that writes and answers 204 with no body.
        app.post(
          '/v1/probe/no-content',
          { schema: { body: Type.Object({ id: Type.String() }) } },
          async (request, reply) => {
            await transactionOf(request).query(
              "insert into service_instances (id, hostname, pid, version) values ($1, 'probe', 0, 'x')",
              [request.body.id],
            );
            return reply.code(204).send();
          },
        );
      },
      logLines,
    );
  });
  afterAll(() => t.close());

  const post = (url: string, body: unknown, key?: string, headers: Record<string, string> = {}) =>
    signedInject(t.app, {
      method: 'POST',
      url,
      body,
      headers: { ...(key ? { 'idempotency-key': key } : {}), ...headers },
    });
  const probeRows = async (id: string) =>
    (await t.database.db.query<{ n: number }>('select count(*)::int as n from service_instances where id = $1', [id]))
      .rows[0].n;
  const countProjects = async (ownerId: string) =>
    (await t.database.db.query<{ n: number }>('select count(*)::int as n from projects where owner_id = $1', [ownerId]))
      .rows[0].n;

  it('replays a finished request byte for byte, with a fresh request id, executing nothing', async () => {
    const body = { ownerId: 'owner_replay', name: 'Once' };
    const first = await post('/v1/projects', body, 'key-replay-1');
    expect(first.statusCode).toBe(201);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    const second = await post('/v1/projects', body, 'key-replay-1');
    expect(second.statusCode).toBe(201);
    expect(second.body).toBe(first.body);
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(second.headers.etag).toBe(first.headers.etag);
    expect(second.headers.location).toBe(first.headers.location);
    expect(second.headers['x-request-id']).not.toBe(first.headers['x-request-id']);
    expect(await countProjects('owner_replay')).toBe(1);
  });

  it('binds the key to the meaning of the body, not its key order or spacing', async () => {
    await post('/v1/projects', '{"ownerId":"owner_order","name":"N","settings":{"a":1,"b":2}}', 'key-order');
    const reordered = await post(
      '/v1/projects',
      '{ "settings": {"b":2, "a":1}, "name":"N",  "ownerId":"owner_order" }',
      'key-order',
    );
    expect(reordered.statusCode).toBe(201);
    expect(reordered.headers['idempotent-replayed']).toBe('true');
    expect(await countProjects('owner_order')).toBe(1);
  });

  it('refuses the key for a different body, path or method with 422 naming what differs', async () => {
    await post('/v1/projects', { ownerId: 'owner_reuse', name: 'A' }, 'key-reuse');
    const otherBody = await post('/v1/projects', { ownerId: 'owner_reuse', name: 'B' }, 'key-reuse');
    expect(otherBody.statusCode).toBe(422);
    expect(otherBody.json()).toMatchObject({ error: 'IDEMPOTENCY_KEY_REUSED', data: { differs: ['body'] } });
    const otherRoute = await signedInject(t.app, {
      method: 'PATCH',
      url: '/v1/projects/whatever',
      body: { name: 'A' },
      headers: { 'idempotency-key': 'key-reuse' },
    });
    expect(otherRoute.statusCode).toBe(422);
    expect(otherRoute.json().data.differs).toEqual(['method', 'path', 'body']);
    expect(await countProjects('owner_reuse')).toBe(1);
  });

  it("logs each replay on the request's line with the original request id and where it came from", async () => {
    const body = { ownerId: 'owner_replay_log', name: 'Logged' };
    const first = await post('/v1/projects', body, 'key-replay-log');
    const second = await post('/v1/projects', body, 'key-replay-log');
    expect(second.headers['idempotent-replayed']).toBe('true');
    const lineOf = (requestId: unknown) =>
      logLines.find((l) => l.requestId === requestId && l.msg === 'request completed');
    expect(lineOf(first.headers['x-request-id'])).not.toHaveProperty('idempotentReplay');
    expect(lineOf(second.headers['x-request-id'])).toMatchObject({
      statusCode: 201,
      idempotentReplay: true,
      idempotencyKey: 'key-replay-log',
      originalRequestId: first.headers['x-request-id'],
      replayedFrom: expect.stringMatching(/^(store|database)$/),
    });
  });

  it('still replays from PostgreSQL when the store copy is gone', async () => {
    const body = { ownerId: 'owner_flush', name: 'F' };
    const first = await post('/v1/projects', body, 'key-flush');
    await t.store.store.delete('idem:key-flush');
    const before = { database: await outcomes('replayed_database'), store: await outcomes('replayed_store') };
    const second = await post('/v1/projects', body, 'key-flush');
    expect(second.headers['idempotent-replayed']).toBe('true');
    expect(await outcomes('replayed_database')).toBe(before.database + 1);
    expect(await outcomes('replayed_store')).toBe(before.store);
    expect(second.body).toBe(first.body);
    expect(await countProjects('owner_flush')).toBe(1);
  });

  it('records deterministic errors: a 404 replays as the same 404 even after the resource appears', async () => {
    const patch = { name: 'late' };
    const first = await signedInject(t.app, {
      method: 'PATCH',
      url: '/v1/projects/prj_later',
      body: patch,
      headers: { 'idempotency-key': 'key-404' },
    });
    expect(first.statusCode).toBe(404);
    await post('/v1/projects', { id: 'prj_later', ownerId: 'o', name: 'exists now' });
    const again = await signedInject(t.app, {
      method: 'PATCH',
      url: '/v1/projects/prj_later',
      body: patch,
      headers: { 'idempotency-key': 'key-404' },
    });
    expect(again.statusCode).toBe(404);
    expect(again.body).toBe(first.body);
    expect(again.headers['idempotent-replayed']).toBe('true');
  });

  it('records validation errors but undoes the effect of a failed request', async () => {
    const bad = await post('/v1/projects', { ownerId: 'owner_bad' }, 'key-400');
    expect(bad.statusCode).toBe(400);
    expect((await post('/v1/projects', { ownerId: 'owner_bad' }, 'key-400')).headers['idempotent-replayed']).toBe(
      'true',
    );
  });

  it('keeps the record of a recordable error but undoes the write made before it', async () => {
    const first = await post('/v1/probe/write-then-404', { id: 'probe_404' }, 'key-write-404');
    expect(first.statusCode).toBe(404);
    expect(await probeRows('probe_404')).toBe(0);
    const again = await post('/v1/probe/write-then-404', { id: 'probe_404' }, 'key-write-404');
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body).toBe(first.body);
    expect(await probeRows('probe_404')).toBe(0);
  });

  it('records an empty 204 with its effect, and replays it empty', async () => {
    const first = await post('/v1/probe/no-content', { id: 'probe_204' }, 'key-204');
    expect(first.statusCode).toBe(204);
    expect(await probeRows('probe_204')).toBe(1);
    await t.store.store.delete('idem:key-204');
    const again = await post('/v1/probe/no-content', { id: 'probe_204' }, 'key-204');
    expect(again.statusCode).toBe(204);
    expect(again.body).toBe('');
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(await probeRows('probe_204')).toBe(1);
  });

  it('treats the key in the header and in the body alike: a retry may move it from one to the other', async () => {
    const body = { userId: 'u_moved' };
    const first = await post('/v1/estimate', { operation: 'build', ...body, idempotencyKey: 'key-moved' });
    expect(first.statusCode).toBe(200);
    const moved = await post('/v1/estimate', { operation: 'build', ...body }, 'key-moved');
    expect(moved.headers['idempotent-replayed']).toBe('true');
    expect(moved.body).toBe(first.body);
  });

  it('replays a record whose body hash still covers the body key, as records written before 2026-12-01 do', async () => {
    // What an estimate answered then (the recorded body is replayed as is: it must still be a valid estimate).
    const recorded =
      '{"operation":"build","estimatedCredits":70,"range":{"low":70,"high":70},"confidence":"low","basis":"default","basedOnSamples":0}';
    const body = { operation: 'build', userId: 'u_earlier', idempotencyKey: 'key-earlier' };
    await insertRecord(
      t.database.db,
      {
        key: 'key-earlier',
        method: 'POST',
        path: '/v1/estimate',
        bodyHash: sha256(canonicalJson(body)),
        statusCode: 200,
        responseBody: recorded,
        responseHeaders: { 'content-type': 'application/json; charset=utf-8' },
        requestId: 'req_earlier',
      },
      60,
    );
    const retry = await post('/v1/estimate', body);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.body).toBe(recorded);
    const other = await post('/v1/estimate', { ...body, userId: 'u_other' });
    expect(other.statusCode).toBe(422);
  });

  it('refuses an Idempotency-Key header sent twice', async () => {
    // Over a real socket: two header lines, as a client would send them (an in-process inject may join them).
    const url = await t.app.listen({ port: 0, host: '127.0.0.1' });
    const body = JSON.stringify({ ownerId: 'owner_twice', name: 'N' });
    const signed = signRequest({ secret: TEST_SECRET, method: 'POST', path: '/v1/projects', body });
    const head = Object.entries({ ...signed, 'content-type': 'application/json' })
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('');
    const twice = await rawRequest(
      url,
      `POST /v1/projects HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n${head}Idempotency-Key: key-a\r\nIdempotency-Key: key-b\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
    expect(twice.status).toBe(400);
    expect(JSON.parse(twice.body)).toMatchObject({
      error: 'INVALID_IDEMPOTENCY_KEY',
      data: { rule: 'send the header once' },
    });
    // One header whose value holds ", " is one key.
    const once = await post('/v1/projects', { ownerId: 'owner_twice', name: 'N' }, 'key-a, key-b');
    expect(once.statusCode).toBe(201);
    expect(await countProjects('owner_twice')).toBe(1);
  });

  it('replays from a store copy written as one JSON object, and from PostgreSQL when the copy is unreadable', async () => {
    const body = { ownerId: 'owner_copy', name: 'C' };
    const first = await post('/v1/projects', body, 'key-copy');
    const record = (
      await t.database.db.query<Record<string, unknown>>(
        `select key, method, path, body_hash as "bodyHash", status_code as "statusCode", response_body as "responseBody",
                response_headers as "responseHeaders", request_id as "requestId" from idempotency_keys where key = 'key-copy'`,
      )
    ).rows[0];
    await t.store.store.set('idem:key-copy', JSON.stringify(record), 60_000);
    const fromJson = await post('/v1/projects', body, 'key-copy');
    expect(fromJson.headers['idempotent-replayed']).toBe('true');
    expect(fromJson.body).toBe(first.body);
    await t.store.store.set('idem:key-copy', 'not a copy\n{', 60_000);
    const fromDatabase = await post('/v1/projects', body, 'key-copy');
    expect(fromDatabase.headers['idempotent-replayed']).toBe('true');
    expect(fromDatabase.body).toBe(first.body);
    expect(await countProjects('owner_copy')).toBe(1);
  });

  it('does not record a 5xx: the retry runs, and the failed attempt left nothing behind', async () => {
    const first = await post('/v1/probe/flaky', { n: 1 }, 'key-500');
    expect(first.statusCode).toBe(500);
    const retry = await post('/v1/probe/flaky', { n: 1 }, 'key-500');
    expect(retry.statusCode).toBe(200);
    expect(retry.headers['idempotent-replayed']).toBeUndefined();
    const { rows } = await t.database.db.query<{ id: string }>(
      "select id from service_instances where id like 'flaky_1_%'",
    );
    expect(rows.map((r) => r.id)).toEqual(['flaky_1_1']);
  });

  it('accepts the quoted key form and the body field, and refuses disagreeing or invalid keys', async () => {
    const first = await post('/v1/projects', { ownerId: 'owner_quoted', name: 'Q' }, '"quoted-key"');
    const plain = await post('/v1/projects', { ownerId: 'owner_quoted', name: 'Q' }, 'quoted-key');
    expect(plain.headers['idempotent-replayed']).toBe('true');
    expect(plain.body).toBe(first.body);
    const viaBody = await post('/v1/ping', { idempotencyKey: 'ping-key', userId: 'u1' });
    expect(viaBody.statusCode).toBe(200);
    const viaHeader = await post('/v1/ping', { idempotencyKey: 'ping-key', userId: 'u1' }, 'ping-key');
    expect(viaHeader.headers['idempotent-replayed']).toBe('true');
    const disagree = await post('/v1/ping', { idempotencyKey: 'one' }, 'two');
    expect(disagree.statusCode).toBe(400);
    expect(disagree.json().error).toBe('INVALID_IDEMPOTENCY_KEY');
    for (const bad of ['x'.repeat(256), 'naïve']) {
      const res = await post('/v1/projects', { ownerId: 'o', name: 'n' }, bad);
      expect(res.statusCode).toBe(400);
      expect(res.json()).toMatchObject({ error: 'INVALID_IDEMPOTENCY_KEY' });
      expect(res.json().data.rule).toBeTruthy();
    }
  });

  it('lets an expired key be used again for a new request', async () => {
    await post('/v1/projects', { ownerId: 'owner_expiry', name: 'first' }, 'key-expiry');
    await sleep(2_200);
    const reused = await post('/v1/projects', { ownerId: 'owner_expiry', name: 'second' }, 'key-expiry');
    expect(reused.statusCode).toBe(201);
    expect(reused.headers['idempotent-replayed']).toBeUndefined();
    expect(await countProjects('owner_expiry')).toBe(2);
  });

  it('does not record requests without a key', async () => {
    const body = { ownerId: 'owner_nokey', name: 'N' };
    expect((await post('/v1/projects', body)).statusCode).toBe(201);
    expect((await post('/v1/projects', body)).statusCode).toBe(201);
    expect(await countProjects('owner_nokey')).toBe(2);
  });
});

describe('idempotency required', () => {
  it('refuses a mutating request without a key when IDEMPOTENCY_REQUIRED=true', async () => {
    const t = await startTestApp({ IDEMPOTENCY_REQUIRED: 'true' });
    try {
      const res = await signedInject(t.app, { method: 'POST', url: '/v1/projects', body: { ownerId: 'o', name: 'n' } });
      expect(res.statusCode).toBe(400);
      expect(res.json().error).toBe('INVALID_IDEMPOTENCY_KEY');
      expect(res.json().message).toContain('IDEMPOTENCY_REQUIRED');
      const ok = await signedInject(t.app, {
        method: 'POST',
        url: '/v1/projects',
        body: { ownerId: 'o', name: 'n' },
        headers: { 'idempotency-key': 'k' },
      });
      expect(ok.statusCode).toBe(201);
      expect((await signedInject(t.app, { method: 'GET', url: '/v1/ping' })).statusCode).toBe(200);
    } finally {
      await t.close();
    }
  });
});

describe.skipIf(!DATABASE_URL)('idempotency in flight (PostgreSQL)', () => {
  it('answers 409 IDEMPOTENCY_KEY_IN_USE with Retry-After while another transaction holds the key', async () => {
    const t = await startTestApp();
    const other = openPostgres({ url: DATABASE_URL!, schema: t.database.schema, max: 1 });
    try {
      const holder = await other.begin();
      await holder.query(
        "select pg_advisory_xact_lock(hashtextextended('kiln.idempotency:' || current_schema() || ':' || $1::text, 0))",
        ['key-busy'],
      );
      const inUse = await outcomes('key_in_use');
      const busy = await signedInject(t.app, {
        method: 'POST',
        url: '/v1/projects',
        body: { ownerId: 'o_busy', name: 'n' },
        headers: { 'idempotency-key': 'key-busy' },
      });
      expect(busy.statusCode).toBe(409);
      expect(await outcomes('key_in_use')).toBe(inUse + 1);
      expect(busy.headers['retry-after']).toBe('1');
      expect(busy.json()).toMatchObject({ error: 'IDEMPOTENCY_KEY_IN_USE', data: { key: 'key-busy' } });
      await holder.rollback();
      const after = await signedInject(t.app, {
        method: 'POST',
        url: '/v1/projects',
        body: { ownerId: 'o_busy', name: 'n' },
        headers: { 'idempotency-key': 'key-busy' },
      });
      expect(after.statusCode).toBe(201);
      expect(after.headers['idempotent-replayed']).toBeUndefined();
    } finally {
      await other.close();
      await t.close();
    }
  });
});

describe('purgeExpired', () => {
  it('deletes expired records only, in batches', async () => {
    const t = await startTestApp();
    try {
      const base = {
        method: 'POST',
        path: '/v1/x',
        bodyHash: 'h',
        statusCode: 200,
        responseBody: '{}',
        responseHeaders: {},
        requestId: 'r',
      };
      for (let i = 0; i < 5; i++) await insertRecord(t.database.db, { ...base, key: `old-${i}` }, 1);
      await insertRecord(t.database.db, { ...base, key: 'fresh' }, 3600);
      await sleep(1_100);
      expect(await purgeExpired(t.database.db, 3)).toBe(3);
      expect(await purgeExpired(t.database.db, 3)).toBe(2);
      expect(await purgeExpired(t.database.db, 3)).toBe(0);
      const { rows } = await t.database.db.query<{ key: string }>('select key from idempotency_keys');
      expect(rows.map((r) => r.key)).toEqual(['fresh']);
    } finally {
      await t.close();
    }
  });
});

describe.skipIf(!DATABASE_URL)('idempotency lock lease (PostgreSQL)', () => {
  it('frees a key held by a transaction that went idle past the lease', async () => {
    const t = await startTestApp();
    const hung = openPostgres({ url: DATABASE_URL!, schema: t.database.schema, max: 1 });
    const other = openPostgres({ url: DATABASE_URL!, schema: t.database.schema, max: 1 });
    try {
      const stuck = await hung.begin();
      expect(await tryLockKey(stuck, 'key-lease', 1)).toBe(true);
      const contender = await other.begin();
      expect(await tryLockKey(contender, 'key-lease', 1)).toBe(false);
      await contender.rollback();
      await sleep(1_600); // the stuck transaction idles past its 1 s lease; PostgreSQL ends its session
      const next = await other.begin();
      expect(await tryLockKey(next, 'key-lease', 1)).toBe(true);
      await next.rollback();
      await stuck.rollback();
    } finally {
      await hung.close();
      await other.close();
      await t.close();
    }
  });
});
