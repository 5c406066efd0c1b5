/** @kiln/client: sign requests to Kiln, call it with retries and typed errors, and verify its webhooks. */
export { canonicalPath, stringToSignV2 } from './canonical.js';
export {
  createKilnClient,
  isRetryable,
  type KilnClient,
  type KilnClientOptions,
  type KilnResponse,
  parseRetryAfter,
  type RawOptions,
  type RequestOptions,
  type ResponseInfo,
  type RetryInfo,
  type RetryOptions,
} from './client.js';
export { isKilnError, isKilnNetworkError, KilnError, type KilnErrorBody, KilnNetworkError } from './errors.js';
export {
  hmacSha256Hex,
  newNonce,
  type SignableBody,
  type SignatureVersion,
  type SignOptions,
  signRequest,
  signV1,
  signV2,
} from './sign.js';
export type * from './types.js';
export {
  signWebhook,
  type VerifiedWebhook,
  verifyWebhook,
  type WebhookHeaders,
  type WebhookRejection,
  WebhookVerificationError,
  type WebhookVerifyOptions,
} from './webhook.js';
