import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKilnClient } from '../../src/client/sign';
import { verifyWebhook } from '../../src/client/webhook';
import type { WebhookPayload } from '../../src/domain/webhooks';
import { TEST_SECRET } from '../helpers/app';
import { DATABASE_URL } from '../helpers/env';
import { type KilnProcess, sharedKilns } from '../helpers/kiln-process';
import { type Receiver, startReceiver } from '../helpers/receiver';
import { readEventStream, type SseEvent } from '../helpers/sse';
import { waitFor } from '../helpers/wait';

/**
 * Webhooks from Kiln as a process: builds run by the bundled sample command, their events delivered to a real local
 * receiver (allow-listed loopback), a SIGKILL in the middle of an attempt, and a replay to the webhook and to a live
 * event stream.
 */
describe('webhooks from a running Kiln', () => {
  const kilns = sharedKilns({
    WEBHOOK_ALLOWED_NETWORKS: '127.0.0.1/32',
    WEBHOOK_ALLOW_HTTP: 'true',
    WEBHOOK_TIMEOUT_S: '3',
    WEBHOOK_RETRY_SCHEDULE: '0,1,1,1,1,1,1,1,1,1,1,1,1,1,1',
    RUNNER_CONCURRENCY: '4',
  });
  let receiver: Receiver;
  beforeAll(async () => {
    receiver = await startReceiver();
  });
  afterAll(() => receiver.close());

  const api = (kiln: KilnProcess) => createKilnClient({ baseUrl: kiln.url, secret: TEST_SECRET });
  let projects = 0;
  const hookedProject = async (kiln: KilnProcess) => {
    const id = `prj_e2e_hook_${++projects}_${Date.now()}`;
    const res = await api(kiln)<{ webhookSecret: string }>('POST', '/v1/projects', {
      id,
      ownerId: 'o',
      name: id,
      webhookUrl: `${receiver.url}/p/${id}`,
    });
    expect(res.status).toBe(201);
    return { id, secret: res.body.webhookSecret };
  };
  const queue = async (kiln: KilnProcess, projectId: string, stepMs: number) => {
    const granted = await api(kiln)('POST', '/v1/credits/grant', {
      userId: 'u_e2e_hook',
      credits: 100_000,
      reason: 'test budget',
      source: 'test',
    });
    expect(granted.status).toBe(200);
    const res = await api(kiln)<{ id: string }>('POST', '/v1/builds', {
      projectId,
      userId: 'u_e2e_hook',
      estimatedCredits: 5,
      metadata: { sampleStepMs: stepMs },
    });
    expect(res.status).toBe(201);
    return res.body.id;
  };
  const events = async (kiln: KilnProcess, buildId: string) =>
    (await api(kiln)<{ events: { seq: number }[] }>('GET', `/v1/builds/${buildId}/events?limit=1000`)).body.events;
  const terminal = (kiln: KilnProcess, buildId: string) =>
    waitFor(
      `build ${buildId} to end`,
      async () => {
        const { body } = await api(kiln)<{ state: string }>('GET', `/v1/builds/${buildId}`);
        return ['deployed', 'failed', 'cancelled'].includes(body.state) ? body.state : undefined;
      },
      60_000,
    );
  /** Verified deliveries of a project, in arrival order. */
  const verified = (projectId: string, secret: string) =>
    receiver.received
      .filter((r) => r.path === `/p/${projectId}`)
      .map((r) => verifyWebhook<WebhookPayload>(secret, r.headers as Record<string, string>, r.body));
  /** Seqs of a build in arrival order, a message's repeat (same webhook-id) dropped. */
  const firstArrivals = (got: ReturnType<typeof verified>, buildId: string) => {
    const seen = new Set<string>();
    return got
      .filter((g) => g.payload.data.buildId === buildId && !g.payload.replay)
      .filter((g) => !seen.has(g.id) && seen.add(g.id))
      .map((g) => g.payload.data.seq);
  };
  const range = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

  it('delivers every event of concurrent builds to their projects, verified and in seq order', async () => {
    const kiln = await kilns.start();
    const hooked = await Promise.all(Array.from({ length: 4 }, () => hookedProject(kiln)));
    const builds = await Promise.all(hooked.map((p) => queue(kiln, p.id, 20)));
    for (const build of builds) await terminal(kiln, build);
    for (const [i, p] of hooked.entries()) {
      const count = (await events(kiln, builds[i])).length;
      expect(count).toBeGreaterThanOrEqual(8);
      await waitFor(`build ${builds[i]}'s ${count} events`, async () =>
        firstArrivals(verified(p.id, p.secret), builds[i]).length >= count ? true : undefined,
      );
      expect(firstArrivals(verified(p.id, p.secret), builds[i])).toEqual(range(count));
    }
    await kiln.stop('SIGTERM');
  }, 90_000);

  it('loses nothing when Kiln is killed in the middle of an attempt: the restarted process delivers it', async () => {
    let kiln = await kilns.start();
    const p = await hookedProject(kiln);
    let hung = false;
    receiver.answer = (r) => {
      if (r.path !== `/p/${p.id}` || hung) return { status: 204 };
      hung = true;
      return 'hang';
    };
    const build = await queue(kiln, p.id, 20);
    await waitFor('the first attempt in flight', async () => (hung ? true : undefined));
    await kiln.stop('SIGKILL');
    kiln = await kilns.start();
    await terminal(kiln, build);
    const count = (await events(kiln, build)).length;
    await waitFor(
      `all ${count} events delivered after the restart`,
      async () => (firstArrivals(verified(p.id, p.secret), build).length >= count ? true : undefined),
      60_000,
    );
    expect(firstArrivals(verified(p.id, p.secret), build)).toEqual(range(count));
    // The message in flight at the kill was sent again, with the same webhook-id.
    const first = verified(p.id, p.secret).filter((g) => g.payload.data.seq === 1);
    expect(first.length).toBeGreaterThanOrEqual(2);
    expect(new Set(first.map((g) => g.id)).size).toBe(1);
    receiver.answer = () => ({ status: 204 });
    await kiln.stop('SIGTERM');
  }, 120_000);

  it('replays a range to the webhook and to a live event stream, marked as a replay', async () => {
    const kiln = await kilns.start();
    const p = await hookedProject(kiln);
    const build = await queue(kiln, p.id, 1_500);
    const live: SseEvent[] = [];
    const stream = readEventStream(kiln.url, `/v1/builds/${build}/events/stream`, {
      timeoutMs: 50_000,
      onEvent: (event) => live.push(event),
    });
    await waitFor('three live events', async () => (live.length >= 3 ? true : undefined), 30_000);
    const replay = await api(kiln)<{ replayed: number; fromSeq: number; toSeq: number }>(
      'POST',
      `/v1/builds/${build}/replay`,
      { fromSeq: 1, toSeq: 2 },
    );
    expect(replay.status).toBe(200);
    expect(replay.body).toMatchObject({ replayed: 2, fromSeq: 1, toSeq: 2 });
    const { events: all } = await stream;
    const replayed = all.filter((e) => e.event === 'replay');
    expect(replayed.map((e) => [e.data.seq, e.data.replay])).toEqual([
      [1, true],
      [2, true],
    ]);
    // The live events still arrive once each, in order, and the stream ends with the build.
    const liveSeqs = all.filter((e) => e.event !== 'replay').map((e) => e.data.seq);
    expect(liveSeqs).toEqual(range(liveSeqs.length));
    await waitFor('the webhook replay', async () =>
      verified(p.id, p.secret).filter((g) => g.payload.replay).length >= 2 ? true : undefined,
    );
    expect(
      verified(p.id, p.secret)
        .filter((g) => g.payload.replay)
        .map((g) => g.payload.data.seq),
    ).toEqual([1, 2]);
    await kiln.stop('SIGTERM');
  }, 90_000);

  it.skipIf(!DATABASE_URL)(
    'replays to a stream that another process serves (the wake-up crosses processes)',
    async () => {
      const [streaming, asked] = [await kilns.start(), await kilns.start()];
      const p = await hookedProject(asked);
      const build = await queue(asked, p.id, 1_500);
      const live: SseEvent[] = [];
      const stream = readEventStream(streaming.url, `/v1/builds/${build}/events/stream`, {
        timeoutMs: 50_000,
        onEvent: (event) => live.push(event),
      });
      await waitFor('two live events', async () => (live.length >= 2 ? true : undefined), 30_000);
      const replay = await api(asked)('POST', `/v1/builds/${build}/replay`, { fromSeq: 1, toSeq: 1 });
      expect(replay.status).toBe(200);
      await waitFor('the replayed frame', async () => (live.some((e) => e.event === 'replay') ? true : undefined));
      const { events: all } = await stream;
      expect(all.filter((e) => e.event === 'replay').map((e) => e.data.seq)).toEqual([1]);
      await streaming.stop('SIGTERM');
      await asked.stop('SIGTERM');
    },
    90_000,
  );
});
