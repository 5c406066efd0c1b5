import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { signWebhook, verifyWebhook, WebhookVerificationError } from '../src/index';

const KEY = Buffer.from('0123456789abcdef01234567');
const SECRET = `whsec_${KEY.toString('base64')}`;
const OTHER = `whsec_${Buffer.from('fedcba9876543210fedcba98').toString('base64')}`;
const now = 1_800_000_000_000;
const body = JSON.stringify({ type: 'build.deployed', replay: false, data: { seq: 3, note: 'déployé' } });

/** What Kiln's sender computes (Standard Webhooks), with node:crypto: the reference the package must match. */
const reference = (key: Buffer, id: string, timestamp: number, text: string) =>
  createHmac('sha256', key).update(`${id}.${timestamp}.${text}`).digest('base64');

function delivery(signatures: string[], timestamp = now / 1000) {
  return {
    'webhook-id': 'msg_1',
    'webhook-timestamp': String(timestamp),
    'webhook-signature': signatures.map((s) => `v1,${s}`).join(' '),
  };
}

async function reason(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'accepted';
  } catch (error) {
    expect(error).toBeInstanceOf(WebhookVerificationError);
    return (error as WebhookVerificationError).reason;
  }
}

describe('webhooks with Web Crypto', () => {
  it('signs as the Standard Webhooks reference does', async () => {
    expect(await signWebhook(SECRET, 'msg_1', now / 1000, body)).toBe(reference(KEY, 'msg_1', now / 1000, body));
  });

  it('accepts a delivery signed with the secret, or with either of two while rotating; any header shape and body form', async () => {
    const good = reference(KEY, 'msg_1', now / 1000, body);
    const verified = await verifyWebhook<{ data: { seq: number } }>(SECRET, delivery([good]), body, { now });
    expect(verified).toMatchObject({ id: 'msg_1', timestamp: now / 1000, payload: { data: { seq: 3 } } });
    const bytes = new TextEncoder().encode(body);
    const other = await signWebhook(OTHER, 'msg_1', now / 1000, body);
    expect((await verifyWebhook(SECRET, delivery([other, good]), bytes, { now })).id).toBe('msg_1');
    expect((await verifyWebhook([OTHER, SECRET], delivery([good]), body, { now })).id).toBe('msg_1');
    expect((await verifyWebhook(SECRET, new Headers(delivery([good])), body, { now })).id).toBe('msg_1');
    const upper = Object.fromEntries(Object.entries(delivery([good])).map(([k, v]) => [k.toUpperCase(), [v]]));
    expect((await verifyWebhook(SECRET, upper, body, { now })).id).toBe('msg_1');
  });

  it('refuses what Kiln did not send, with the reason', async () => {
    const good = reference(KEY, 'msg_1', now / 1000, body);
    expect(await reason(verifyWebhook(OTHER, delivery([good]), body, { now }))).toBe('bad_signature');
    expect(await reason(verifyWebhook(SECRET, delivery([good]), `${body} `, { now }))).toBe('bad_signature');
    expect(await reason(verifyWebhook(SECRET, delivery(['!!notbase64', 'v2,abc']), body, { now }))).toBe(
      'bad_signature',
    );
    const stale = delivery([reference(KEY, 'msg_1', now / 1000 - 301, body)], now / 1000 - 301);
    expect(await reason(verifyWebhook(SECRET, stale, body, { now }))).toBe('timestamp_out_of_range');
    expect(await reason(verifyWebhook(SECRET, { 'webhook-id': 'msg_1' }, body, { now }))).toBe('missing_headers');
    expect(await reason(verifyWebhook('whsec_c2hvcnQ=', delivery([good]), body, { now }))).toBe('bad_secret');
    expect(await reason(verifyWebhook('not-a-secret', delivery([good]), body, { now }))).toBe('bad_secret');
  });
});
