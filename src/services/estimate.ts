/** Estimates (SPEC section 7): what an operation will likely cost, and whether the user can afford it. */

import type { Queryable } from '../db/database';
import { deployedUsage, knownOperation } from '../db/usage';
import { ApiError } from '../domain/errors';
import { type EstimateFigures, estimateFrom, MIN_PROJECT_SAMPLES } from '../domain/estimate';
import type { CreditPackage } from '../domain/recommendation';
import { type Recommendation, recommendPackage } from '../domain/recommendation';
import { getBalance } from './credits';

export interface EstimateInput {
  operation: string;
  projectId?: string;
  userId?: string;
}

export interface Estimate extends EstimateFigures {
  operation: string;
  sufficient?: boolean;
  available?: number;
  recommendation?: Recommendation;
}

/**
 * From the project's past deployed builds (when it has at least MIN_PROJECT_SAMPLES), else every project's, else
 * the configured default. With a userId: whether the user's available credits cover the estimate, and what to
 * buy when they do not.
 */
export async function estimate(
  q: Queryable,
  input: EstimateInput,
  options: { defaultCredits: number; packages: readonly CreditPackage[] },
): Promise<Estimate> {
  let figures: EstimateFigures | undefined;
  if (input.projectId) {
    const own = await deployedUsage(q, input.operation, input.projectId);
    if (own.count >= MIN_PROJECT_SAMPLES) figures = estimateFrom(own, 'project', options.defaultCredits);
  }
  if (!figures) {
    const all = await deployedUsage(q, input.operation, null);
    figures = estimateFrom(all, all.count > 0 ? 'all_projects' : 'default', options.defaultCredits);
  }
  const result: Estimate = { operation: input.operation, ...figures };
  if (input.userId) {
    const { available } = await getBalance(q, input.userId);
    result.available = available;
    result.sufficient = available >= figures.estimatedCredits;
    const recommendation = recommendPackage(figures.estimatedCredits - available, options.packages);
    if (recommendation) result.recommendation = recommendation;
  }
  return result;
}

/** How many of the operations builds carry a refusal lists. */
const LISTED_OPERATIONS = 20;

/**
 * `POST /v1/estimate`: as `estimate`, but an operation no build has ever carried is refused (400) rather than
 * answered with the default, so that a typo does not pass for an estimate.
 */
export async function estimateKnown(
  q: Queryable,
  input: EstimateInput,
  options: { defaultCredits: number; packages: readonly CreditPackage[] },
): Promise<Estimate> {
  const result = await estimate(q, input, options);
  // Only an operation without any deployed history needs the check (and its scan of builds' metadata).
  if (result.basis !== 'default') return result;
  const known = await knownOperation(q, input.operation, LISTED_OPERATIONS);
  if (!known.known) {
    throw new ApiError(
      'VALIDATION_ERROR',
      `Kiln knows no operation "${input.operation}": estimate build, or an operation your builds carry in metadata.operation (${known.others.join(', ')}).`,
      {
        issues: [
          {
            path: 'body.operation',
            message: `is not an operation any build carries: one of ${known.others.join(', ')}`,
          },
        ],
        known: known.others,
      },
    );
  }
  return result;
}
