import { describe, expect, it } from 'vitest';
import { creditsForDuration } from '../../src/domain/build-pricing';

describe('creditsForDuration', () => {
  it('prices every started minute at the rate, a minute at least', () => {
    expect(creditsForDuration(0, 10)).toBe(10);
    expect(creditsForDuration(59_999, 10)).toBe(10);
    expect(creditsForDuration(60_000, 10)).toBe(10);
    expect(creditsForDuration(60_001, 10)).toBe(20);
    expect(creditsForDuration(61_000, 7)).toBe(14);
    expect(creditsForDuration(-5, 3)).toBe(3);
    expect(creditsForDuration(3_600_000, 0)).toBe(0);
  });
});
