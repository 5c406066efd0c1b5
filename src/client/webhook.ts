import {
  checkWebhookEnvelope,
  type VerifiedWebhook,
  type WebhookHeaders,
  WebhookVerificationError,
  type WebhookVerifyOptions,
} from '../../packages/client/src/webhook';
import { headerHasSignature, webhookSignature } from '../domain/webhook-signature';

export type { VerifiedWebhook, WebhookRejection } from '../../packages/client/src/webhook';
export { WebhookVerificationError };

/**
 * The package's verifyWebhook (packages/client/src/webhook.ts), synchronously on node:crypto, for Node receivers
 * that cannot await (and this repository's tests). The header and timestamp rules and the error class are the
 * package's own, so both verifiers accept and refuse the same deliveries, with the same `reason`. Returns the parsed
 * payload; throws WebhookVerificationError otherwise.
 */
export function verifyWebhook<T = unknown>(
  secret: string | readonly string[],
  headers: WebhookHeaders,
  rawBody: string | Buffer,
  options: WebhookVerifyOptions = {},
): VerifiedWebhook<T> {
  const { id, timestamp, timestampText, signatures } = checkWebhookEnvelope(headers, options);
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
