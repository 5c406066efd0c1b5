import type { FastifyRequest } from 'fastify';
import { DatabaseUnavailableError } from '../db/database';
import { countSignatureOutcome, rateLimited } from '../metrics';
import { type ClaimResult, StoreUnavailableError } from '../store/store';
import type { AppDeps } from './app';
import { ApiError } from './errors';
import { enforceLimit, userIdOf, WINDOW_MS } from './rate-limit';
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
 * The first layer of every /v1 route: signature (no store access until it verifies), then in one store operation
 * the nonce's check-and-store, the user and IP counters and, given `readKey` (a mutation's stored-response key), the
 * read of that key, whose value it answers (null: nothing stored). Runs before body errors and validation, so an
 * unsigned request is answered 401 whatever its body.
 */
export function signatureGuard(
  deps: AppDeps,
): (request: FastifyRequest, readKey?: string) => Promise<string | null | undefined> {
  const { config, store } = deps;
  const nonceTtlMs = config.nonceTtlS * 1000;
  return async (request, readKey) => {
    const verified = verifySignature(request, config, Date.now());
    request.signatureVersion = verified.version;
    const userId = userIdOf(request);
    const counters: { key: string; windowMs: number }[] = [];
    const countIp = config.rateLimitIpPerMin > 0;
    const countUser = config.rateLimitUserPerMin > 0 && userId !== undefined;
    if (countIp) counters.push({ key: `rl:ip:${request.ip}`, windowMs: WINDOW_MS });
    if (countUser) counters.push({ key: `rl:user:${userId}`, windowMs: WINDOW_MS });
    let claim: ClaimResult;
    try {
      // One store operation (one Redis script, one round trip): the nonce's check-and-store, both counters, and
      // for a mutation with an Idempotency-Key the read of its stored response (a replay needs nothing more).
      claim = await store.claimNonceAndHit(
        {
          keys: [verified.replayKey],
          marks: verified.markKey ? [verified.markKey] : undefined,
          checks: verified.checkKey ? [verified.checkKey] : undefined,
          value: request.id,
          ttlMs: nonceTtlMs,
        },
        counters,
        readKey,
      );
    } catch (error) {
      if (error instanceof StoreUnavailableError || error instanceof DatabaseUnavailableError) {
        // Replay protection must never silently disappear: refuse rather than skip the nonce check.
        request.log.warn({ err: error }, 'replay store unavailable; refusing signed requests');
        throw new ApiError(
          'SERVICE_UNAVAILABLE',
          `Replay protection is unavailable because ${store.kind === 'redis' ? 'Redis' : 'the database'} is not answering; nothing was done. Retry after 5 s.`,
          { dependency: store.kind === 'redis' ? 'store' : 'database' },
          { 'retry-after': 5 },
        );
      }
      throw error;
    }
    const { fresh, counts } = claim;
    const ipCount = countIp ? counts[0] : undefined;
    const userCount = countUser ? counts[countIp ? 1 : 0] : undefined;
    if (verified.timestamp * 1000 < claim.epochMs) {
      // The store lost what it knew of requests before its epoch (Redis restarted without persistence): this request
      // may have been accepted then, so it is refused; the same request signed again now passes.
      countSignatureOutcome('failure_signed_before_store_epoch');
      const notBefore = Math.ceil(claim.epochMs / 1000);
      throw new ApiError(
        'TIMESTAMP_OUT_OF_RANGE',
        `This request was signed at ${verified.timestamp}, before ${notBefore}, when Kiln's replay store lost its record of used nonces; sign it again with the current time and send it again.`,
        {
          reason: 'signed_before_store_epoch',
          header: `${config.signatureHeaderPrefix}-timestamp`,
          serverTime: Math.floor(Date.now() / 1000),
          notBefore,
        },
      );
    }
    if (!fresh) {
      countSignatureOutcome('failure_replayed_nonce');
      const v1Only = verified.version === 'v1';
      throw new ApiError(
        'REPLAYED_NONCE',
        v1Only
          ? 'This v1-signed request was already accepted: v1 signs only the timestamp and body, so the same timestamp and body count as the same request whatever the nonce. Sign with v2, or send it in another second.'
          : `This ${config.signatureHeaderPrefix}-nonce was already used; sign every request with a new nonce.`,
        { header: `${config.signatureHeaderPrefix}-${v1Only ? 'signature' : 'nonce'}` },
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
    return readKey === undefined ? undefined : (claim.read ?? null);
  };
}
