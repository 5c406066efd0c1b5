import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com): a message is signed as
 * `base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>"))` and sent as `webhook-signature: v1,<sig>`,
 * several space-separated while secrets overlap. A secret is `whsec_` + the base64 of its key bytes. Shared by the
 * sender (src/delivery/) and the receiver's helper (src/client/webhook.ts).
 */

export const WEBHOOK_SECRET_PREFIX = 'whsec_';

/** The key bytes of a `whsec_…` secret; throws on anything else (a secret Kiln did not make). */
export function webhookKey(secret: string): Buffer {
  if (!secret.startsWith(WEBHOOK_SECRET_PREFIX)) throw new Error('a webhook secret starts with whsec_');
  const encoded = secret.slice(WEBHOOK_SECRET_PREFIX.length);
  const key = Buffer.from(encoded, 'base64');
  if (key.length < 16 || key.toString('base64').replace(/=+$/, '') !== encoded.replace(/=+$/, '')) {
    throw new Error('a webhook secret is whsec_ followed by the base64 of at least 16 bytes');
  }
  return key;
}

/** A secret for these key bytes. */
export function formatWebhookSecret(key: Uint8Array): string {
  return `${WEBHOOK_SECRET_PREFIX}${Buffer.from(key).toString('base64')}`;
}

/** The bare base64 signature of one message under one secret. */
export function webhookSignature(
  secret: string,
  id: string,
  timestamp: number | string,
  body: string | Buffer,
): string {
  return createHmac('sha256', webhookKey(secret)).update(`${id}.${timestamp}.`).update(body).digest('base64');
}

/** The `webhook-signature` header value: `v1,<sig>` for each secret, space-separated. */
export function webhookSignatureHeader(
  secrets: readonly string[],
  id: string,
  timestamp: number | string,
  body: string | Buffer,
): string {
  return secrets.map((secret) => `v1,${webhookSignature(secret, id, timestamp, body)}`).join(' ');
}

/** Whether any `v1,` signature of a header matches the expected one (compared in constant time). */
export function headerHasSignature(header: string, expected: string): boolean {
  const want = Buffer.from(expected, 'base64');
  return header.split(' ').some((part) => {
    const comma = part.indexOf(',');
    if (comma < 0 || part.slice(0, comma) !== 'v1') return false;
    const given = Buffer.from(part.slice(comma + 1), 'base64');
    return given.length === want.length && timingSafeEqual(given, want);
  });
}
