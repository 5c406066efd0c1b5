import type { Logger } from 'pino';
import type { Database } from '../db/database';
import { type ClaimedDelivery, claimDeliveries, settleDelivery, sweepDeliveries } from '../db/webhooks';
import type { Network } from '../domain/ip-ranges';
import { webhookSignatureHeader } from '../domain/webhook-signature';
import { nextRetryDelayS, webhookMessageId, webhookPayload } from '../domain/webhooks';
import { observeWebhookAttempt } from '../metrics';
import { isDatabaseAway } from '../services/health';
import type { BuildSignals } from '../store/signals';
import { type SendResult, sendWebhook } from './sender';

/** A claim outlives its attempt's timeout by this much (seconds). */
const LEASE_MARGIN_S = 10;

/** How often the outbox is swept (sweepDeliveries). */
const SWEEP_MS = 30_000;

export interface DeliveryWorkerOptions {
  /** The background database (claims and settlements never wait behind requests). */
  db: Database;
  signals: BuildSignals;
  logger: Logger;
  /** Attempts in flight at once in this process. */
  concurrency: number;
  /** Attempts in flight at once for one project's endpoint (a slow endpoint cannot take every slot). */
  perProject?: number;
  timeoutS: number;
  retryScheduleS: readonly number[];
  disableAfterS: number;
  allowHttp: boolean;
  allowedNetworks: readonly Network[];
  /** How often to look for due deliveries without a wake-up (retries come due this way). */
  pollMs?: number;
}

/**
 * Delivers webhook messages from the outbox (db/webhooks.ts) in every process: claims due rows (skip locked, per
 * build in order), POSTs each once through the SSRF-guarded sender, and settles it — delivered, retried later on
 * the schedule, or failed. Woken by the `events` and `queued` signals like the runner, with a short poll for
 * retries and lost wake-ups. At least once: a process killed mid-attempt leaves its claims to lapse and be taken
 * again, so a receiver may see a message twice (with the same webhook-id) but never loses one.
 */
export class DeliveryWorker {
  private readonly inFlight = new Map<number, Promise<void>>();
  private readonly perProjectInFlight = new Map<string, number>();
  private readonly unsubscribes: (() => void)[] = [];
  private timer: NodeJS.Timeout | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private filling = false;
  private again = false;
  private stopping = false;
  private claimFailures = 0;

  constructor(private readonly options: DeliveryWorkerOptions) {}

  private get perProject(): number {
    return Math.max(1, Math.min(this.options.perProject ?? 4, this.options.concurrency));
  }

  async start(): Promise<void> {
    if (this.options.concurrency <= 0) return;
    const wake = () => void this.fill();
    this.unsubscribes.push(await this.options.signals.on('events', wake));
    this.unsubscribes.push(await this.options.signals.on('queued', wake));
    this.timer = setInterval(wake, this.options.pollMs ?? 1000);
    this.timer.unref();
    this.sweeper = setInterval(() => void this.sweep(), SWEEP_MS);
    this.sweeper.unref();
    void this.fill();
  }

  /** Stop claiming; wait up to `timeoutMs` for attempts in flight (any left lapse and are delivered elsewhere). */
  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    if (this.timer) clearInterval(this.timer);
    if (this.sweeper) clearInterval(this.sweeper);
    for (const unsubscribe of this.unsubscribes.splice(0)) unsubscribe();
    let timeout: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.inFlight.values()]),
      new Promise((resolve) => {
        timeout = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timeout);
  }

  /** Tidy the outbox after the rare races its writes leave (db/webhooks.ts, sweepDeliveries, says which). */
  private async sweep(): Promise<void> {
    try {
      const swept = await sweepDeliveries(this.options.db);
      if (!swept) return;
      const { abandoned, promoted } = swept;
      if (abandoned > 0) {
        this.options.logger.info({ abandoned }, 'webhook messages for disabled or removed endpoints marked failed');
      }
      if (promoted > 0) void this.fill();
    } catch (error) {
      this.options.logger.warn({ err: error }, 'webhook sweep failed; will try again');
    }
  }

  /** Attempts in flight in this process now. */
  get active(): number {
    return this.inFlight.size;
  }

  /** Claim as many due deliveries as there are free slots, and start each; again while claims fill the slots. */
  private async fill(): Promise<void> {
    if (this.stopping) return;
    if (this.filling) {
      this.again = true;
      return;
    }
    this.filling = true;
    try {
      do {
        this.again = false;
        const free = this.options.concurrency - this.inFlight.size;
        if (free <= 0) break;
        const busy = [...this.perProjectInFlight].filter(([, n]) => n >= this.perProject).map(([p]) => p);
        const claimed = await claimDeliveries(this.options.db, {
          limit: free,
          perProject: this.perProject,
          busyProjects: busy,
          // Past the attempt's own timeout, with room to record it: only a process that died leaves it to lapse.
          leaseS: this.options.timeoutS + LEASE_MARGIN_S,
        });
        this.claimFailures = 0;
        for (const delivery of claimed) this.begin(delivery);
        if (claimed.length === free) this.again = true;
      } while (this.again && !this.stopping);
    } catch (error) {
      // Said once per outage, then every 60th poll: the poll retries by itself.
      if (this.claimFailures++ % 60 === 0) {
        this.options.logger.warn(
          { err: error, databaseAway: isDatabaseAway(error) },
          'webhook claim failed; retrying on the next poll',
        );
      }
    } finally {
      this.filling = false;
    }
  }

  private begin(delivery: ClaimedDelivery): void {
    const projectCount = (this.perProjectInFlight.get(delivery.projectId) ?? 0) + 1;
    this.perProjectInFlight.set(delivery.projectId, projectCount);
    const run = this.attempt(delivery).finally(() => {
      this.inFlight.delete(delivery.id);
      const left = (this.perProjectInFlight.get(delivery.projectId) ?? 1) - 1;
      if (left > 0) this.perProjectInFlight.set(delivery.projectId, left);
      else this.perProjectInFlight.delete(delivery.projectId);
      void this.fill();
    });
    this.inFlight.set(delivery.id, run);
  }

  /** One attempt: sign, send, settle, count and say what happened. Never throws. */
  private async attempt(delivery: ClaimedDelivery): Promise<void> {
    const { logger } = this.options;
    const messageId = webhookMessageId(delivery.buildId, delivery.event.seq, delivery.replay, delivery.id);
    const body = JSON.stringify(webhookPayload(delivery.buildId, delivery.projectId, delivery.event, delivery.replay));
    const attemptedAt = new Date();
    const timestamp = Math.floor(attemptedAt.getTime() / 1000);
    const context = {
      buildId: delivery.buildId,
      projectId: delivery.projectId,
      seq: delivery.event.seq,
      deliveryId: delivery.id,
      webhookId: messageId,
      attempt: delivery.attempt,
    };
    let result: SendResult;
    try {
      result = await sendWebhook({
        url: delivery.url,
        headers: {
          'content-type': 'application/json',
          'webhook-id': messageId,
          'webhook-timestamp': String(timestamp),
          'webhook-signature': webhookSignatureHeader(delivery.secrets, messageId, timestamp, body),
        },
        body,
        timeoutMs: this.options.timeoutS * 1000,
        allowHttp: this.options.allowHttp,
        allowedNetworks: this.options.allowedNetworks,
      });
    } catch (error) {
      // sendWebhook does not throw; a secret that cannot sign would (a row written by hand): fail the attempt.
      result = {
        delivered: false,
        status: null,
        durationMs: 0,
        failure: 'network_error',
        detail: (error as Error).message,
        responseBody: '',
        retryAfterS: null,
        address: null,
      };
    }
    const gone = result.status === 410;
    const delayS = result.delivered
      ? null
      : gone
        ? null
        : nextRetryDelayS(
            delivery.attempt,
            this.options.retryScheduleS,
            result.status === 429 || result.status === 503 ? result.retryAfterS : null,
            Math.random(),
          );
    try {
      const settled = await settleDelivery(this.options.db, {
        deliveryId: delivery.id,
        attempt: delivery.attempt,
        buildId: delivery.buildId,
        projectId: delivery.projectId,
        url: delivery.url,
        attemptedAt,
        durationMs: result.durationMs,
        statusCode: result.status,
        delivered: result.delivered,
        failure: result.failure,
        detail: result.detail,
        responseBody: result.responseBody,
        retryInS: delayS,
        disable: gone ? 'gone' : null,
        disableAfterS: this.options.disableAfterS,
        // Longer than the longest wait between two attempts: a gap past it means the endpoint sat idle.
        failingResetS: 2 * Math.max(3600, ...this.options.retryScheduleS),
      });
      observeWebhookAttempt({
        delivered: result.delivered,
        failure: result.failure,
        status: result.status,
        // A stale attempt (its claim lapsed and was taken again) finishes nothing: the other one does.
        finished: settled.applied && settled.status !== 'pending' ? settled.status : null,
        latencySeconds: settled.applied ? (Date.now() - delivery.queuedAt.getTime()) / 1000 : null,
        disabledReason: settled.disabledReason,
        abandoned: settled.abandoned,
      });
      if (result.delivered) {
        logger.debug({ ...context, status: result.status, durationMs: result.durationMs }, 'webhook delivered');
      } else {
        logger.warn(
          {
            ...context,
            status: result.status,
            failure: result.failure,
            detail: result.detail,
            durationMs: Math.round(result.durationMs),
            retryInS: delayS === null ? null : Math.round(delayS),
          },
          delayS === null
            ? 'webhook attempt failed; no retry left: the delivery failed (replay it with POST /v1/builds/:id/replay)'
            : 'webhook attempt failed; will retry',
        );
      }
      if (settled.disabledReason) {
        logger.error(
          { ...context, reason: settled.disabledReason, abandoned: settled.abandoned },
          `webhook endpoint disabled (${settled.disabledReason === 'gone' ? 'it answered 410 Gone' : 'it kept failing'}); name its URL again with PATCH /v1/projects/${delivery.projectId} to re-enable it`,
        );
      }
    } catch (error) {
      // The attempt happened but is not recorded: the claim lapses and the message goes again (same webhook-id).
      logger.warn({ ...context, err: error }, 'webhook attempt could not be recorded; it will be attempted again');
    }
  }
}
