import { describe, expect, it } from 'vitest';
import { ApiError } from '../../src/domain/errors';
import { tooManyHeaders } from '../../src/http/errors';

describe('tooManyHeaders: what every 429 carries', () => {
  it('derives the missing headers from Retry-After (a busy project: one active build)', () => {
    const error = new ApiError('BUILD_ALREADY_RUNNING', 'busy', { etaSeconds: 42 }, { 'retry-after': 42 });
    expect(tooManyHeaders(error)).toEqual({
      'retry-after': 42,
      'x-ratelimit-limit': 1,
      'x-ratelimit-remaining': 0,
      'x-ratelimit-reset': 42,
      ratelimit: 'limit=1, remaining=0, reset=42',
      'ratelimit-policy': '1;w=42',
    });
  });

  it('keeps every header the error gives (a rate limit says its own window)', () => {
    const given = {
      'retry-after': 12,
      'x-ratelimit-limit': 600,
      'x-ratelimit-remaining': 0,
      'x-ratelimit-reset': 12,
      ratelimit: 'limit=600, remaining=0, reset=12',
      'ratelimit-policy': '600;w=60',
    };
    const error = new ApiError('RATE_LIMITED', 'slow down', { limit: 600, windowSeconds: 60 }, given);
    expect(tooManyHeaders(error)).toEqual(given);
  });

  it('takes the figures from the data when there are no headers, and 1 s at least', () => {
    expect(
      tooManyHeaders(new ApiError('RATE_LIMITED', 'x', { limit: 5, retryAfterSeconds: 2.2, windowSeconds: 60 })),
    ).toMatchObject({
      'retry-after': 3,
      'x-ratelimit-limit': 5,
      ratelimit: 'limit=5, remaining=0, reset=3',
      'ratelimit-policy': '5;w=60',
    });
    expect(tooManyHeaders(new ApiError('RATE_LIMITED', 'x'))).toMatchObject({
      'retry-after': 1,
      'x-ratelimit-reset': 1,
    });
  });
});
