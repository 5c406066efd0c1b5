/** Kiln's client-side helpers, exported for callers: request signing, a small signing HTTP client, and webhooks. */
export { canonicalPath, signV1, signV2 } from '../domain/signature';
export { createKilnClient, type KilnClientOptions, type KilnResponse, type SignOptions, signRequest } from './sign';
export { type VerifiedWebhook, verifyWebhook, type WebhookRejection, WebhookVerificationError } from './webhook';
