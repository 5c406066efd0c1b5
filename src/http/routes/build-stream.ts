import type { FastifyReply, FastifyRequest } from 'fastify';
import { isTerminal } from '../../domain/build-states';
import { type BuildEvent, eventsAfter, getBuild } from '../../services/builds';
import { isDatabaseAway } from '../../services/health';
import type { App, AppDeps } from '../app';
import { envelope, toApiError } from '../errors';

const HEARTBEAT_MS = 15_000;
const POLL_MS = 1_000;
const BATCH = 500;
const TERMINAL_EVENTS = new Set(['deployed', 'failed', 'cancelled']);

/** Open streams, so shutdown can end them instead of waiting for them. */
const openStreams = new WeakMap<App, Set<() => void>>();

/** End every live stream when the server begins to close (clients resume with Last-Event-ID elsewhere). */
export function registerStreamShutdown(app: App): void {
  const streams = new Set<() => void>();
  openStreams.set(app, streams);
  app.addHook('preClose', async () => {
    for (const end of streams) end();
  });
}

function frame(event: BuildEvent): string {
  return `id: ${event.seq}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`;
}

/**
 * A replayed event: `event: replay`, its data the event with `replay: true`, and no `id:` line — so a client's
 * Last-Event-ID stays at the newest live event, and a client that only listens for the event types is not misled.
 */
function replayFrame(event: BuildEvent): string {
  return `event: replay\ndata: ${JSON.stringify({ ...event, replay: true })}\n\n`;
}

const REPLAY = /^(.+)#replay:(\d+):(\d+)$/;

/** The `events` wake-up that asks a build's streams to send `fromSeq..toSeq` again (POST /v1/builds/:id/replay). */
export function replayPayload(buildId: string, fromSeq: number, toSeq: number): string {
  return `${buildId}#replay:${fromSeq}:${toSeq}`;
}

/** The build and range of a replay wake-up; undefined for a plain one (a build id). */
export function parseReplayPayload(payload: string): { buildId: string; fromSeq: number; toSeq: number } | undefined {
  const match = REPLAY.exec(payload);
  return match ? { buildId: match[1], fromSeq: Number(match[2]), toSeq: Number(match[3]) } : undefined;
}

/**
 * Server-Sent Events for one build: everything after Last-Event-ID (or ?after), then live events as they are
 * written — woken by the `events` signal, with a slow poll as the safety net — heartbeats every 15 s, and the
 * end of the stream after the build's final event. Each event is sent once, in seq order. A read that fails
 * because the database is unavailable is retried on the poll; any other failure is sent as a final
 * `event: error` frame holding the error envelope, and the stream ends.
 */
export async function streamBuildEvents(
  request: FastifyRequest,
  reply: FastifyReply,
  deps: AppDeps,
  buildId: string,
  after: number | undefined,
): Promise<void> {
  const { db, signals } = deps;
  const build = await getBuild(db, buildId); // 404 before the stream opens
  // The route's schema bounds Last-Event-ID to 0..2147483647 and coerces it to a number.
  const resumeHeader: unknown = request.headers['last-event-id'];
  const resumeFrom = typeof resumeHeader === 'number' ? resumeHeader : undefined;
  let last = resumeFrom ?? after ?? 0;

  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, {
    ...(reply.getHeaders() as Record<string, string>),
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-processing-time-ms': reply.elapsedTime.toFixed(2),
  });
  raw.write(`retry: 2000\n\n`);

  let ended = false;
  let running = false;
  let again = false;
  const timers: NodeJS.Timeout[] = [];
  let unsubscribe: (() => void) | undefined;
  const streams = openStreams.get(request.server as unknown as App);
  const end = () => {
    if (ended) return;
    ended = true;
    for (const timer of timers) clearInterval(timer);
    unsubscribe?.();
    streams?.delete(end);
    raw.end();
  };
  streams?.add(end);
  raw.on('close', end);

  /** Send every event after `last`; true once the final event went out. */
  const drain = async (): Promise<boolean> => {
    for (
      let events = await eventsAfter(db, build.id, last, BATCH);
      events.length > 0 && !ended;
      events = await eventsAfter(db, build.id, last, BATCH)
    ) {
      for (const event of events) {
        raw.write(frame(event));
        last = event.seq;
        if (TERMINAL_EVENTS.has(event.type)) return true;
      }
    }
    return false;
  };

  const pump = async (): Promise<void> => {
    if (ended) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        if (await drain()) return end();
      } while (again && !ended);
      // The build may have ended after the drain read nothing: its final event commits with its state, so one
      // more drain sends it (and anything before it) before the stream closes. Resumed after the final event,
      // this sends nothing and closes.
      if (isTerminal((await getBuild(db, build.id)).state)) {
        await drain();
        end();
      }
    } catch (error) {
      if (isDatabaseAway(error)) {
        request.log.warn({ err: error, buildId: build.id }, 'event stream read failed; will retry on the next poll');
      } else {
        // Anything else will fail the same way on every poll: say so in a last frame and end the stream.
        const apiError = toApiError(error, deps.config.bodyLimitBytes);
        request.log.error(
          { err: error, buildId: build.id, code: apiError.code },
          'event stream read failed; ending it',
        );
        if (!ended) raw.write(`event: error\ndata: ${JSON.stringify(envelope(request, apiError))}\n\n`);
        end();
      }
    } finally {
      running = false;
    }
  };

  /** Send a replayed range (after whatever is being sent now: each frame is written whole). */
  const replay = async (fromSeq: number, toSeq: number): Promise<void> => {
    try {
      for (let after = fromSeq - 1; after < toSeq && !ended; ) {
        const events = await eventsAfter(db, build.id, after, Math.min(BATCH, toSeq - after));
        if (events.length === 0) break;
        for (const event of events) if (!ended) raw.write(replayFrame(event));
        after = events[events.length - 1].seq;
      }
    } catch (error) {
      request.log.warn({ err: error, buildId: build.id, fromSeq, toSeq }, 'event stream replay failed');
    }
  };

  // The client may have gone during any await above: then clean up at once instead of polling for nobody.
  if (raw.destroyed) return end();
  unsubscribe = await signals.on('events', (payload) => {
    if (payload === build.id) return void pump();
    const asked = parseReplayPayload(payload);
    if (asked?.buildId === build.id) void replay(asked.fromSeq, asked.toSeq);
  });
  if (ended || raw.destroyed) {
    unsubscribe();
    return end();
  }
  timers.push(setInterval(() => void pump(), POLL_MS));
  timers.push(
    setInterval(() => {
      if (!ended) raw.write(': heartbeat\n\n');
    }, HEARTBEAT_MS),
  );
  await pump();
}
