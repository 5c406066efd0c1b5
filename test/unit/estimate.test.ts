import { describe, expect, it } from 'vitest';
import { confidenceOf, estimateFrom } from '../../src/domain/estimate';

describe('estimateFrom', () => {
  it('p50 is the estimate, p10..p90 the range, samples counted honestly', () => {
    expect(estimateFrom({ count: 25, p10: 40, p50: 100, p90: 180 }, 'project', 77)).toEqual({
      estimatedCredits: 100,
      range: { low: 40, high: 180 },
      confidence: 'high',
      basis: 'project',
      basedOnSamples: 25,
    });
  });

  it('no history → the configured default, low confidence, zero samples', () => {
    expect(estimateFrom({ count: 0, p10: 0, p50: 0, p90: 0 }, 'all_projects', 80)).toEqual({
      estimatedCredits: 80,
      range: { low: 40, high: 160 },
      confidence: 'low',
      basis: 'default',
      basedOnSamples: 0,
    });
  });

  it('confidence grows with samples and is never high from other projects', () => {
    expect(confidenceOf('project', 20)).toBe('high');
    expect(confidenceOf('project', 19)).toBe('medium');
    expect(confidenceOf('all_projects', 500)).toBe('medium');
    expect(confidenceOf('all_projects', 4)).toBe('low');
    expect(confidenceOf('default', 0)).toBe('low');
  });
});
