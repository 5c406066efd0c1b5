import { concatBytes, type HmacKey } from './sign.js';

/**
 * Receiving Kiln's webhooks: Standard Webhooks signatures (https://www.standardwebhooks.com), checked with Web
 * Crypto. A delivery carries `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64>` (several,
 * space-separated, while a project's secrets overlap), the base64 HMAC-SHA256 of `<id>.<timestamp>.<body>` keyed
 * with the bytes a `whsec_<base64>` secret encodes.
 */

/** Why a delivery was refused by verifyWebhook. */
export type WebhookRejection = 'missing_headers' | 'timestamp_out_of_range' | 'bad_signature' | 'bad_secret';

export class WebhookVerificationError extends Error {
  constructor(
    readonly reason: WebhookRejection,
    message: string,
  ) {
    super(message);
    this.name = 'WebhookVerificationError';
  }
}

/** A verified delivery: its id (the same on every retry of one message: deduplicate on it) and its body, parsed. */
export interface VerifiedWebhook<T = unknown> {
  id: string;
  timestamp: number;
  payload: T;
}

/** Fetch's Headers, or a plain object such as Node's `req.headers` (names in any case). */
export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

export interface WebhookVerifyOptions {
  /** How far the delivery's timestamp may be from now, in seconds; default 300. */
  toleranceS?: number;
  /** Now, in milliseconds since the epoch (tests); default Date.now(). */
  now?: number;
}

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
  const bag = headers as Record<string, string | string[] | undefined>;
  const value = bag[name] ?? Object.entries(bag).find(([key]) => key.toLowerCase() === name)?.[1];
  return Array.isArray(value) ? value[0] : value;
}

/** The parts of a delivery that are checked before any signature. */
export interface WebhookEnvelope {
  id: string;
  timestamp: number;
  /** The timestamp exactly as sent: it is what was signed. */
  timestampText: string;
  signatures: string;
}

/**
 * The headers of a delivery, present and fresh, or a WebhookVerificationError (`missing_headers`,
 * `timestamp_out_of_range`). Exported for the repository's synchronous Node verifier, which shares these rules.
 */
export function checkWebhookEnvelope(headers: WebhookHeaders, options: WebhookVerifyOptions = {}): WebhookEnvelope {
  const id = header(headers, 'webhook-id');
  const timestampText = header(headers, 'webhook-timestamp');
  const signatures = header(headers, 'webhook-signature');
  if (!id || !timestampText || !signatures) {
    throw new WebhookVerificationError(
      'missing_headers',
      'webhook-id, webhook-timestamp and webhook-signature are required',
    );
  }
  const timestamp = Number(timestampText);
  const now = Math.floor((options.now ?? Date.now()) / 1000);
  const tolerance = options.toleranceS ?? 300;
  // A bounded run of digits, so the comparison below is between ordinary integers.
  if (!/^\d{1,12}$/.test(timestampText) || Math.abs(now - timestamp) > tolerance) {
    throw new WebhookVerificationError(
      'timestamp_out_of_range',
      `webhook-timestamp ${timestampText} is not within ${tolerance} s of now (${now})`,
    );
  }
  return { id, timestamp, timestampText, signatures };
}

const SECRET_PREFIX = 'whsec_';

function fromBase64(text: string): Uint8Array<ArrayBuffer> {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function toBase64(bytes: Uint8Array): string {
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** The key bytes of a `whsec_…` secret; throws on anything else (a secret Kiln did not make). */
function webhookKeyBytes(secret: string): Uint8Array<ArrayBuffer> {
  if (!secret.startsWith(SECRET_PREFIX)) throw new Error('a webhook secret starts with whsec_');
  const encoded = secret.slice(SECRET_PREFIX.length);
  let key: Uint8Array<ArrayBuffer>;
  try {
    key = fromBase64(encoded);
  } catch {
    key = new Uint8Array(0);
  }
  // Round-tripping refuses what a lenient decoder would accept (stray characters, URL-safe base64): the same rule
  // as the server's, so a secret is valid here exactly when it is valid there.
  if (key.length < 16 || toBase64(key).replace(/=+$/, '') !== encoded.replace(/=+$/, '')) {
    throw new Error('a webhook secret is whsec_ followed by the base64 of at least 16 bytes');
  }
  return key;
}

function webhookHmacKey(secret: string, usage: 'sign' | 'verify'): Promise<HmacKey> {
  const bytes = webhookKeyBytes(secret);
  return globalThis.crypto.subtle.importKey('raw', bytes, { name: 'HMAC', hash: 'SHA-256' }, false, [usage]);
}

/**
 * The bare base64 signature of one message under one `whsec_…` secret (what follows `v1,` in the header). For a
 * receiver's own tests: sign a fixture delivery the way Kiln does.
 */
export async function signWebhook(
  secret: string,
  id: string,
  timestamp: number | string,
  body: string | Uint8Array,
): Promise<string> {
  const key = await webhookHmacKey(secret, 'sign');
  const mac = await globalThis.crypto.subtle.sign('HMAC', key, concatBytes([`${id}.${timestamp}.`, body]));
  return toBase64(new Uint8Array(mac));
}

/** The presented `v1,` signatures of a header, decoded; anything else in it is skipped. */
function presentedSignatures(header: string): Uint8Array<ArrayBuffer>[] {
  return header.split(' ').flatMap((part) => {
    const comma = part.indexOf(',');
    if (comma < 0 || part.slice(0, comma) !== 'v1') return [];
    try {
      return [fromBase64(part.slice(comma + 1))];
    } catch {
      return [];
    }
  });
}

/**
 * Check a Kiln webhook delivery in one call: its `webhook-id`, `webhook-timestamp` and `webhook-signature` headers
 * against the project's secret (`whsec_…`; pass two during a rotation) and the raw body exactly as received (before
 * any JSON parsing). The timestamp must be within `toleranceS` (default 300) of now, so a captured delivery cannot
 * be replayed later. Resolves to the parsed payload; rejects with a WebhookVerificationError (with a `reason`).
 */
export async function verifyWebhook<T = unknown>(
  secret: string | readonly string[],
  headers: WebhookHeaders,
  rawBody: string | Uint8Array,
  options: WebhookVerifyOptions = {},
): Promise<VerifiedWebhook<T>> {
  const { id, timestamp, timestampText, signatures } = checkWebhookEnvelope(headers, options);
  const message = concatBytes([`${id}.${timestampText}.`, rawBody]);
  const presented = presentedSignatures(signatures);
  let matched = false;
  for (const candidate of typeof secret === 'string' ? [secret] : secret) {
    let key: HmacKey;
    try {
      key = await webhookHmacKey(candidate, 'verify');
    } catch (error) {
      throw new WebhookVerificationError('bad_secret', (error as Error).message);
    }
    // subtle.verify compares in constant time; every pair is checked, so the time says nothing about which matched.
    for (const signature of presented) {
      if (await globalThis.crypto.subtle.verify('HMAC', key, signature, message)) matched = true;
    }
  }
  if (!matched) throw new WebhookVerificationError('bad_signature', 'no signature matches the secret');
  const text = typeof rawBody === 'string' ? rawBody : new TextDecoder().decode(rawBody);
  return { id, timestamp, payload: JSON.parse(text) as T };
}
