import type { WindowCount } from '../store/store';
import { ApiError } from './errors';

export const WINDOW_MS = 60_000;

export interface LimitCheck {
  scope: 'user' | 'ip';
  /** The user id or IP address counted. */
  subject: string;
  limit: number;
  count: WindowCount;
}

/**
 * Refuse the request when a window's count exceeds its quota: 429 RATE_LIMITED with the figures, and
 * Retry-After, x-ratelimit-* and the IETF RateLimit / RateLimit-Policy headers.
 */
export function enforceLimit(check: LimitCheck): void {
  const { limit, count, scope } = check;
  if (limit === 0 || count.count <= limit) return;
  const retryAfterSeconds = Math.max(1, Math.ceil(count.resetMs / 1000));
  const windowSeconds = WINDOW_MS / 1000;
  throw new ApiError(
    'RATE_LIMITED',
    `Too many requests for this ${scope === 'user' ? 'user' : 'client address'}: ${limit} per ${windowSeconds} s. Retry after ${retryAfterSeconds} s.`,
    {
      limit,
      used: count.count,
      windowSeconds,
      retryAfterSeconds,
      scope,
      ...(scope === 'user' ? { userId: check.subject } : {}),
    },
    {
      'retry-after': retryAfterSeconds,
      'x-ratelimit-limit': limit,
      'x-ratelimit-remaining': 0,
      'x-ratelimit-reset': retryAfterSeconds,
      ratelimit: `limit=${limit}, remaining=0, reset=${retryAfterSeconds}`,
      'ratelimit-policy': `${limit};w=${windowSeconds}`,
    },
  );
}

const USER_ID = /^[\w.:@-]{1,128}$/;

/** The userId a request acts for: from the path, the query or the body, in that order (a sane token only). */
export function userIdOf(request: { params: unknown; query: unknown; body: unknown }): string | undefined {
  for (const source of [request.params, request.query, request.body]) {
    if (source && typeof source === 'object' && !Array.isArray(source)) {
      const value = (source as Record<string, unknown>).userId;
      if (typeof value === 'string' && USER_ID.test(value)) return value;
    }
  }
  return undefined;
}
