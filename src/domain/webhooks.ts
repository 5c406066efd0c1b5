/**
 * The rules of webhook delivery, pure: what a message looks like, its id, and when to try again.
 */

/** Longest wait a `Retry-After` may ask for (seconds); a longer one is cut to this. */
export const MAX_RETRY_AFTER_S = 3600;

/** A message's id (`webhook-id`): the same on every retry of it, so receivers can deduplicate; a replay is new. */
export function webhookMessageId(buildId: string, seq: number, replay: boolean, deliveryId: number): string {
  return replay ? `msg_${buildId}_${seq}_replay_${deliveryId}` : `msg_${buildId}_${seq}`;
}

/** The JSON body of a delivery: the event, its build and project, and whether it is a replay. */
export interface WebhookPayload {
  /** `build.<event type>`, e.g. `build.deployed`. */
  type: string;
  /** When the event happened. */
  timestamp: string;
  replay: boolean;
  data: {
    buildId: string;
    projectId: string;
    seq: number;
    type: string;
    phase?: string;
    message?: string;
    progress?: number;
    data?: Record<string, unknown>;
    createdAt: string;
  };
}

export function webhookPayload(
  buildId: string,
  projectId: string,
  event: Omit<WebhookPayload['data'], 'buildId' | 'projectId'>,
  replay: boolean,
): WebhookPayload {
  return {
    type: `build.${event.type}`,
    timestamp: event.createdAt,
    replay,
    data: { buildId, projectId, ...event },
  };
}

/**
 * Seconds until the next attempt after `attemptsMade` attempts failed, or null when the schedule is spent (the
 * delivery fails). `schedule[i]` is the wait before attempt i+1 (schedule[0], normally 0, is the first attempt's),
 * with ±20 % jitter so that many deliveries failing together do not retry together. A `Retry-After` the receiver
 * sent (1 s..MAX_RETRY_AFTER_S) lengthens the wait, never shortens it: a throttling receiver cannot make a message
 * spend its schedule in seconds. `random` is in [0, 1).
 */
export function nextRetryDelayS(
  attemptsMade: number,
  schedule: readonly number[],
  retryAfterS: number | null,
  random: number,
): number | null {
  if (attemptsMade >= schedule.length) return null;
  const scheduled = Math.max(0, schedule[attemptsMade] * (0.8 + 0.4 * random));
  if (retryAfterS === null) return scheduled;
  return Math.max(scheduled, Math.min(MAX_RETRY_AFTER_S, Math.max(1, retryAfterS)));
}

/** Parse WEBHOOK_RETRY_SCHEDULE: comma-separated seconds, at least one; undefined when malformed. */
export function parseRetrySchedule(text: string): number[] | undefined {
  const parts = text.split(',').map((part) => part.trim());
  if (parts.length === 0 || parts.length > 50 || parts.some((part) => !/^\d{1,6}$/.test(part))) return undefined;
  return parts.map(Number);
}
