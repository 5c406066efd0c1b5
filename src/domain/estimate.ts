/**
 * How an estimate is judged from history (SPEC section 7). Pure: the figures come from past deployed builds.
 */

/** Percentiles of past actual credits, and how many builds they come from. */
export interface UsageSample {
  count: number;
  p10: number;
  p50: number;
  p90: number;
}

/** Where an estimate comes from: this project's builds, every project's, or the configured default. */
export type EstimateBasis = 'project' | 'all_projects' | 'default';

/**
 * `high`: at least 20 of this project's builds; `medium`: at least 5 builds (this project or all);
 * `low`: fewer, or no history (the configured default).
 */
export type Confidence = 'high' | 'medium' | 'low';

export interface EstimateFigures {
  estimatedCredits: number;
  range: { low: number; high: number };
  confidence: Confidence;
  basis: EstimateBasis;
  basedOnSamples: number;
}

/** A project's own history is used once it has this many deployed builds; below, every project's is. */
export const MIN_PROJECT_SAMPLES = 3;

export function confidenceOf(basis: EstimateBasis, samples: number): Confidence {
  if (basis === 'project' && samples >= 20) return 'high';
  if (basis !== 'default' && samples >= 5) return 'medium';
  return 'low';
}

/**
 * p50 is the estimate, p10 the low end and p90 the high end of the range. Without history: the default, with a
 * range of half to double it (a guess, and `low` confidence says so).
 */
export function estimateFrom(
  sample: UsageSample | undefined,
  basis: EstimateBasis,
  defaultCredits: number,
): EstimateFigures {
  if (!sample || sample.count === 0 || basis === 'default') {
    return {
      estimatedCredits: defaultCredits,
      range: { low: Math.floor(defaultCredits / 2), high: defaultCredits * 2 },
      confidence: 'low',
      basis: 'default',
      basedOnSamples: 0,
    };
  }
  return {
    estimatedCredits: sample.p50,
    range: { low: sample.p10, high: sample.p90 },
    confidence: confidenceOf(basis, sample.count),
    basis,
    basedOnSamples: sample.count,
  };
}
