import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { verifyWebhook, WebhookVerificationError } from '../../src/client/webhook';
import { loadConfig } from '../../src/config';
import {
  formatWebhookSecret,
  webhookKey,
  webhookSignature,
  webhookSignatureHeader,
} from '../../src/domain/webhook-signature';
import { nextRetryDelayS, parseRetrySchedule, webhookMessageId, webhookPayload } from '../../src/domain/webhooks';

const SECRET = formatWebhookSecret(Buffer.from('0123456789abcdef01234567'));
const OTHER = formatWebhookSecret(Buffer.from('fedcba9876543210fedcba98'));

describe('webhook signatures (Standard Webhooks)', () => {
  it('signs id.timestamp.body with the base64-decoded key, as the specification computes it', () => {
    const body = '{"type":"build.queued"}';
    const expected = createHmac('sha256', Buffer.from('0123456789abcdef01234567'))
      .update(`msg_1.1700000000.${body}`)
      .digest('base64');
    expect(webhookSignature(SECRET, 'msg_1', 1_700_000_000, body)).toBe(expected);
    expect(webhookSignatureHeader([SECRET, OTHER], 'msg_1', 1_700_000_000, body).split(' ')).toEqual([
      `v1,${expected}`,
      `v1,${webhookSignature(OTHER, 'msg_1', 1_700_000_000, body)}`,
    ]);
  });

  it('refuses secrets that are not whsec_ and base64 of at least 16 bytes', () => {
    expect(() => webhookKey('abc')).toThrow(/whsec_/);
    expect(() => webhookKey('whsec_c2hvcnQ=')).toThrow(/16 bytes/);
    expect(() => webhookKey('whsec_!!!notbase64!!!notbase64!!!')).toThrow();
    expect(webhookKey(SECRET)).toHaveLength(24);
  });
});

describe('verifyWebhook', () => {
  const now = 1_800_000_000_000;
  const signed = (secrets: string[], body: string, timestamp = now / 1000) => ({
    'webhook-id': 'msg_b_1',
    'webhook-timestamp': String(timestamp),
    'webhook-signature': webhookSignatureHeader(secrets, 'msg_b_1', timestamp, body),
  });
  const body = JSON.stringify({ type: 'build.deployed', replay: false, data: { seq: 3 } });

  it('returns the parsed payload of a delivery signed with the secret (or either of two while rotating)', () => {
    expect(verifyWebhook(SECRET, signed([SECRET], body), body, { now }).payload).toMatchObject({ data: { seq: 3 } });
    expect(verifyWebhook(SECRET, signed([OTHER, SECRET], body), Buffer.from(body), { now }).id).toBe('msg_b_1');
    expect(verifyWebhook([OTHER, SECRET], signed([SECRET], body), body, { now }).timestamp).toBe(now / 1000);
    const fetchHeaders = new Headers(signed([SECRET], body));
    expect(verifyWebhook(SECRET, fetchHeaders, body, { now }).id).toBe('msg_b_1');
  });

  it.each([
    ['another secret', () => verifyWebhook(OTHER, signed([SECRET], body), body, { now }), 'bad_signature'],
    ['a changed body', () => verifyWebhook(SECRET, signed([SECRET], body), `${body} `, { now }), 'bad_signature'],
    [
      'an old timestamp',
      () => verifyWebhook(SECRET, signed([SECRET], body, now / 1000 - 301), body, { now }),
      'timestamp_out_of_range',
    ],
    [
      'a future timestamp',
      () => verifyWebhook(SECRET, signed([SECRET], body, now / 1000 + 301), body, { now }),
      'timestamp_out_of_range',
    ],
    ['no headers', () => verifyWebhook(SECRET, {}, body, { now }), 'missing_headers'],
    ['a malformed secret', () => verifyWebhook('whsec_x', signed([SECRET], body), body, { now }), 'bad_secret'],
  ])('refuses %s', (_name, verify, reason) => {
    expect(verify).toThrow(WebhookVerificationError);
    try {
      verify();
    } catch (error) {
      expect((error as WebhookVerificationError).reason).toBe(reason);
    }
  });

  it('accepts a wider tolerance when asked', () => {
    const old = signed([SECRET], body, now / 1000 - 400);
    expect(verifyWebhook(SECRET, old, body, { now, toleranceS: 600 }).id).toBe('msg_b_1');
  });
});

describe('delivery rules', () => {
  const schedule = [0, 5, 300, 1800];

  it('waits the scheduled time with ±20 % jitter, then gives up when the schedule is spent', () => {
    expect(nextRetryDelayS(1, schedule, null, 0.5)).toBe(5);
    expect(nextRetryDelayS(1, schedule, null, 0)).toBe(4);
    expect(nextRetryDelayS(2, schedule, null, 0.999_999)).toBeCloseTo(360, 3);
    expect(nextRetryDelayS(3, schedule, null, 0.5)).toBe(1800);
    expect(nextRetryDelayS(4, schedule, null, 0.5)).toBeNull();
  });

  it('lets Retry-After (1 s..1 h) lengthen the scheduled wait, never shorten it, never past the schedule', () => {
    expect(nextRetryDelayS(1, schedule, 42, 0.5)).toBe(42);
    expect(nextRetryDelayS(1, schedule, 0, 0.5)).toBe(5);
    expect(nextRetryDelayS(2, schedule, 1, 0.5)).toBe(300);
    expect(nextRetryDelayS(1, schedule, 86_400, 0.5)).toBe(3600);
    expect(nextRetryDelayS(3, schedule, 60, 0.5)).toBe(1800);
    expect(nextRetryDelayS(4, schedule, 10, 0.5)).toBeNull();
  });

  it('gives a message the same id on every retry, and a replay an id of its own', () => {
    expect(webhookMessageId('bld_1', 3, false, 17)).toBe(webhookMessageId('bld_1', 3, false, 99));
    expect(webhookMessageId('bld_1', 3, true, 17)).not.toBe(webhookMessageId('bld_1', 3, true, 18));
    expect(webhookMessageId('bld_1', 3, true, 17)).not.toBe(webhookMessageId('bld_1', 3, false, 17));
  });

  it('puts the event, its build and project and the replay mark in the body', () => {
    const payload = webhookPayload(
      'bld_1',
      'prj_1',
      { seq: 2, type: 'started', createdAt: '2026-12-05T00:00:00.000Z' },
      true,
    );
    expect(payload).toEqual({
      type: 'build.started',
      timestamp: '2026-12-05T00:00:00.000Z',
      replay: true,
      data: { buildId: 'bld_1', projectId: 'prj_1', seq: 2, type: 'started', createdAt: '2026-12-05T00:00:00.000Z' },
    });
  });

  it('reads WEBHOOK_* settings and names a bad one', () => {
    expect(parseRetrySchedule('0, 5,300')).toEqual([0, 5, 300]);
    expect(parseRetrySchedule('0,-5')).toBeUndefined();
    expect(parseRetrySchedule('')).toBeUndefined();
    const config = loadConfig({ WEBHOOK_ALLOWED_NETWORKS: '127.0.0.1/32, 10.0.0.0/8', WEBHOOK_RETRY_SCHEDULE: '0,1' });
    expect(config.webhookAllowedNetworks.map((n) => n.text)).toEqual(['127.0.0.1/32', '10.0.0.0/8']);
    expect(config.webhookRetryScheduleS).toEqual([0, 1]);
    expect(loadConfig({}).webhookRetryScheduleS).toEqual([0, 5, 300, 1800, 7200, 18000, 36000, 36000]);
    expect(() => loadConfig({ WEBHOOK_ALLOWED_NETWORKS: '10.0.0.0/33' })).toThrow(/WEBHOOK_ALLOWED_NETWORKS/);
    expect(() => loadConfig({ WEBHOOK_RETRY_SCHEDULE: 'soon' })).toThrow(/WEBHOOK_RETRY_SCHEDULE/);
  });
});
