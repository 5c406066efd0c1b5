import { headerHasSignature, webhookSignature } from '../domain/webhook-signature';

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

type HeaderBag = Headers | Record<string, string | string[] | undefined>;

function header(headers: HeaderBag, name: string): string | undefined {
  if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
  const bag = headers as Record<string, string | string[] | undefined>;
  const value = bag[name] ?? Object.entries(bag).find(([key]) => key.toLowerCase() === name)?.[1];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * Check a Kiln webhook delivery in one call: the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers
 * against the project's secret (`whsec_…`; pass two during a rotation) and the raw body exactly as received (before
 * any JSON parsing). The timestamp must be within `toleranceS` (default 300) of now, so a captured delivery cannot
 * be replayed later. Returns the parsed payload; throws WebhookVerificationError (with a `reason`) otherwise.
 */
export function verifyWebhook<T = unknown>(
  secret: string | readonly string[],
  headers: HeaderBag,
  rawBody: string | Buffer,
  options: { toleranceS?: number; now?: number } = {},
): VerifiedWebhook<T> {
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
  if (!/^\d{1,12}$/.test(timestampText) || Math.abs(now - timestamp) > tolerance) {
    throw new WebhookVerificationError(
      'timestamp_out_of_range',
      `webhook-timestamp ${timestampText} is not within ${tolerance} s of now (${now})`,
    );
  }
  const secrets = typeof secret === 'string' ? [secret] : secret;
  let matched = false;
  for (const candidate of secrets) {
    let expected: string;
    try {
      expected = webhookSignature(candidate, id, timestampText, rawBody);
    } catch (error) {
      throw new WebhookVerificationError('bad_secret', (error as Error).message);
    }
    if (headerHasSignature(signatures, expected)) matched = true;
  }
  if (!matched) throw new WebhookVerificationError('bad_signature', 'no signature matches the secret');
  const text = typeof rawBody === 'string' ? rawBody : rawBody.toString('utf8');
  return { id, timestamp, payload: JSON.parse(text) as T };
}
