/** Kiln's client-side helpers, exported for callers: request signing and a small signing HTTP client. */
export { canonicalPath, signV1, signV2 } from '../domain/signature';
export { createKilnClient, type KilnClientOptions, type KilnResponse, type SignOptions, signRequest } from './sign';
