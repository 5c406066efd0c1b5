/**
 * Kiln's client, for code in this repository: the client package (packages/client, published as `@kiln/client`),
 * which signs with Web Crypto and calls with fetch, plus the synchronous node:crypto twins of its signer and webhook
 * verifier for Node code that cannot await.
 */
export * from '../../packages/client/src/index';
export { type SignOptions as SyncSignOptions, signRequest as signRequestSync } from './sign';
export { verifyWebhook as verifyWebhookSync } from './webhook';
