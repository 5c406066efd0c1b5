import type { FastifyRequest } from 'fastify';
import { rateLimited, signatureVerifications } from '../metrics';
import { type ClaimResult, StoreUnavailableError } from '../store/store';
import { ApiError } from './errors';
import { storedResponseKey } from './idempotency';
import { enforceLimit, userIdOf, WINDOW_MS } from './rate-limit';
import type { AppDeps } from './server';
import { verifySignature } from './signature';

declare module 'fastify' {
  interface FastifyRequest {
    /** Which signature version verified this /v1 request. */
    signatureVersion?: 'v1' | 'v2';
  }
}

/** True for the routes SPEC section 3 signs: everything under /v1. */
export function isSignedPath(routeUrl: string): boolean {
  return routeUrl.startsWith('/v1/');
}

/**
 * The preValidation hook of every /v1 route: signature (no store access until it verifies), then in one store
 * operation the nonce's check-and-store, the user and IP counters and, for a mutation with a key, the read of its
 * stored response. Runs before body errors and validation, so an unsigned request is answered 401 whatever its body.
 */
export function signatureGuard(deps: AppDeps): (request: FastifyRequest) => Promise<void> {
  const { config, store } = deps;
  const nonceTtlMs = config.nonceTtlS * 1000;
  return async (request) => {
    const verified = verifySignature(request, config, Date.now());
    request.signatureVersion = verified.version;
    const userId = userIdOf(request);
    const counters: { key: string; windowMs: number }[] = [];
    const countIp = config.rateLimitIpPerMin > 0;
    const countUser = config.rateLimitUserPerMin > 0 && userId !== undefined;
    if (countIp) counters.push({ key: `rl:ip:${request.ip}`, windowMs: WINDOW_MS });
    if (countUser) counters.push({ key: `rl:user:${userId}`, windowMs: WINDOW_MS });
    const responseKey = storedResponseKey(request);
    let claim: ClaimResult;
    try {
      // One store operation (one Redis script, one round trip): the nonce's check-and-store, both counters, and
      // for a mutation with an Idempotency-Key the read of its stored response (a replay needs nothing more).
      claim = await store.claimNonceAndHit(
        { key: `nonce:${verified.nonce}`, value: request.id, ttlMs: nonceTtlMs },
        counters,
        responseKey,
      );
    } catch (error) {
      if (error instanceof StoreUnavailableError) {
        // Replay protection must never silently disappear: refuse rather than skip the nonce check.
        throw new ApiError(
          'SERVICE_UNAVAILABLE',
          'Replay protection is unavailable because Redis is not answering; nothing was done. Retry after 5 s.',
          { dependency: 'store', reason: error.message.slice(0, 200) },
          { 'retry-after': 5 },
        );
      }
      throw error;
    }
    const { fresh, counts } = claim;
    if (responseKey !== undefined) request.storedResponse = claim.read ?? null;
    const ipCount = countIp ? counts[0] : undefined;
    const userCount = countUser ? counts[countIp ? 1 : 0] : undefined;
    if (!fresh) {
      signatureVerifications.inc({ outcome: 'failure_replayed_nonce' });
      throw new ApiError(
        'REPLAYED_NONCE',
        `This ${config.signatureHeaderPrefix}-nonce was already used; sign every request with a new nonce.`,
        { header: `${config.signatureHeaderPrefix}-nonce` },
      );
    }
    try {
      if (ipCount) enforceLimit({ scope: 'ip', subject: request.ip, limit: config.rateLimitIpPerMin, count: ipCount });
      if (userCount && userId)
        enforceLimit({ scope: 'user', subject: userId, limit: config.rateLimitUserPerMin, count: userCount });
    } catch (error) {
      rateLimited.inc({ scope: (error as ApiError).data?.scope as string });
      throw error;
    }
  };
}
