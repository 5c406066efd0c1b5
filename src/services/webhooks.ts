import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import type { Queryable } from '../db/database';
import {
  findProject,
  type Project,
  rotateProjectSecret,
  type WebhookChange,
  writeProjectWebhook,
} from '../db/projects';
import { type DeliveryLog, lastEventSeq, listDeliveries, queueReplays } from '../db/webhooks';
import { ApiError } from '../domain/errors';
import { blockedRange, inNetworks, type Network } from '../domain/ip-ranges';
import { formatWebhookSecret } from '../domain/webhook-signature';
import { buildNotFound, getBuild } from './builds';

/** What webhook settings a project write needs from the configuration. */
export interface WebhookSettings {
  allowHttp: boolean;
  allowedNetworks: readonly Network[];
  /** Seconds the previous secret keeps signing after a new one. */
  secretOverlapS: number;
}

/** A fresh signing secret: `whsec_` and the base64 of 24 random bytes (Standard Webhooks: 24 to 64). */
export function newWebhookSecret(): string {
  return formatWebhookSecret(randomBytes(24));
}

/**
 * What is wrong with a webhook URL, as validation issues at `path` (empty when nothing is). The address a host
 * name resolves to is checked at every attempt; an address literal is checked here already, so a URL that could
 * never be delivered to is refused when it is set.
 */
export function webhookUrlIssues(
  url: string,
  settings: WebhookSettings,
  path: string,
): { path: string; message: string }[] {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return [{ path, message: 'is not an absolute URL' }];
  }
  const protocols = settings.allowHttp ? ['https:', 'http:'] : ['https:'];
  if (!protocols.includes(parsed.protocol)) {
    return [{ path, message: settings.allowHttp ? 'must be an https:// or http:// URL' : 'must be an https:// URL' }];
  }
  if (parsed.username || parsed.password) return [{ path, message: 'must not carry a user name or password' }];
  if (parsed.hash) return [{ path, message: 'must not have a #fragment' }];
  const host = parsed.hostname.replace(/^\[|\]$/g, '');
  if (isIP(host)) {
    const range = blockedRange(host);
    if (range && !inNetworks(host, settings.allowedNetworks)) {
      return [{ path, message: `points at a ${range} address, which webhooks may not reach` }];
    }
  }
  return [];
}

/** A write's webhook URL, checked; an ApiError listing the issues otherwise. */
function checkedUrl(url: string, settings: WebhookSettings): string {
  const issues = webhookUrlIssues(url, settings, 'body.webhookUrl');
  if (issues.length) throw new ApiError('VALIDATION_ERROR', 'The webhookUrl cannot be used; fix it.', { issues });
  return url;
}

/** A project as a write answers it: with the new signing secret when the write made one (shown this once). */
export type ProjectWithSecret = Project & { webhookSecret?: string };

/**
 * Apply the webhook part of a project write, in its transaction. `url`: the URL the write names (null removes the
 * endpoint), or undefined when the write leaves it alone. A URL other than the current one gets a new secret (the
 * old one signs on for the overlap); naming the current URL again keeps the secret and re-enables the endpoint
 * if it was disabled.
 */
export async function applyWebhookUrl(
  q: Queryable,
  project: Project,
  url: string | null | undefined,
  settings: WebhookSettings,
): Promise<ProjectWithSecret> {
  if (url === undefined) return project;
  if (url === null) {
    if (project.webhookUrl === null) return project;
    return (await writeProjectWebhook(q, project.id, { kind: 'remove' })) ?? project;
  }
  const secret = url === project.webhookUrl ? undefined : newWebhookSecret();
  const change: WebhookChange = {
    kind: 'set',
    url: checkedUrl(url, settings),
    secret,
    overlapS: settings.secretOverlapS,
  };
  const updated = (await writeProjectWebhook(q, project.id, change)) ?? project;
  return secret ? { ...updated, webhookSecret: secret } : updated;
}

/** Check a URL before a project write (so a bad one is a 400 before anything is written). */
export function checkWebhookUrl(url: string | null | undefined, settings: WebhookSettings): void {
  if (typeof url === 'string') checkedUrl(url, settings);
}

/** POST /v1/projects/:id/webhook-secret: a new secret; the current one signs on for the overlap. */
export async function rotateWebhookSecret(
  q: Queryable,
  projectId: string,
  settings: WebhookSettings,
): Promise<ProjectWithSecret> {
  const secret = newWebhookSecret();
  const project = await rotateProjectSecret(q, projectId, secret, settings.secretOverlapS);
  if (project) return { ...project, webhookSecret: secret };
  if (!(await findProject(q, projectId))) {
    throw new ApiError('PROJECT_NOT_FOUND', `No project ${projectId}; create it with POST /v1/projects.`, {
      projectId,
    });
  }
  throw new ApiError(
    'WEBHOOK_NOT_SET',
    `Project ${projectId} has no webhookUrl, so it has no secret to rotate; set one with PATCH /v1/projects/${projectId}.`,
    { projectId },
  );
}

/** Most events one replay sends (each is a webhook message and a frame on every open stream of the build). */
export const MAX_REPLAY_EVENTS = 1000;

/** What a replay did. */
export interface Replay {
  replayed: number;
  fromSeq: number;
  toSeq: number;
  /** Deliveries queued to the project's webhook (0 without an enabled endpoint). */
  webhookDeliveries: number;
}

/**
 * POST /v1/builds/:id/replay: queue the events `fromSeq..toSeq` (toSeq defaults to the last) for the webhook, in
 * the caller's transaction; the caller wakes open streams once it commits. A range past the last event, reversed,
 * or longer than MAX_REPLAY_EVENTS is a 400 that says which events exist.
 */
export async function replayEvents(q: Queryable, buildId: string, fromSeq: number, toSeq?: number): Promise<Replay> {
  const last = await lastEventSeq(q, buildId);
  if (last === undefined) throw buildNotFound(buildId);
  const to = toSeq ?? last;
  const issues = [
    ...(fromSeq > last ? [{ path: 'body.fromSeq', message: `is past the build's last event (seq ${last})` }] : []),
    ...(toSeq !== undefined && toSeq > last
      ? [{ path: 'body.toSeq', message: `is past the build's last event (seq ${last})` }]
      : []),
    ...(to < fromSeq ? [{ path: 'body.toSeq', message: `must be at least fromSeq (${fromSeq})` }] : []),
    ...(to - fromSeq >= MAX_REPLAY_EVENTS
      ? [{ path: 'body.toSeq', message: `at most ${MAX_REPLAY_EVENTS} events per replay: ask for the rest in another` }]
      : []),
  ];
  if (issues.length) {
    throw new ApiError(
      'VALIDATION_ERROR',
      `Build ${buildId} has events 1..${last}; ask for a range inside it (fromSeq ≤ toSeq).`,
      { issues, lastSeq: last },
    );
  }
  const webhookDeliveries = await queueReplays(q, buildId, fromSeq, to);
  return { replayed: to - fromSeq + 1, fromSeq, toSeq: to, webhookDeliveries };
}

/** A page of the delivery log. */
export interface DeliveryPage {
  deliveries: DeliveryLog[];
  nextCursor: string | null;
}

/** GET /v1/builds/:id/deliveries: the build's deliveries after the cursor, each with every attempt. */
export async function buildDeliveries(
  q: Queryable,
  buildId: string,
  cursor: string | undefined,
  limit: number,
): Promise<DeliveryPage> {
  await getBuild(q, buildId); // 404 for an unknown build
  const after = cursor === undefined ? 0 : Number(cursor);
  const rows = await listDeliveries(q, buildId, after, limit + 1);
  const page = rows.slice(0, limit);
  return { deliveries: page, nextCursor: rows.length > limit ? String(page[page.length - 1].id) : null };
}
