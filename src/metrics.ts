import { Counter, collectDefaultMetrics, Registry } from 'prom-client';

/**
 * The process's Prometheus registry. Modules count what happens here; `/metrics` exposes it.
 * One registry per process (default metrics are process-wide), created once.
 */
export const registry = new Registry();
collectDefaultMetrics({ register: registry });

// Signature outcomes since the last scrape. Every signed request counts one: a plain Map update, where a labelled
// Counter.inc builds and checks a label hash each time; they are added to the counter when /metrics is read.
const pendingVerifications = new Map<string, number>();

/** Outcomes of request-signature checks: which version verified, mismatches, and failures by reason. */
export const signatureVerifications = new Counter({
  name: 'kiln_signature_verifications_total',
  help: 'Signed-request checks by outcome: v1, v2, both, mismatch (one of two signatures failed), or failure_<reason>',
  labelNames: ['outcome'] as const,
  registers: [registry],
  collect() {
    for (const [outcome, n] of pendingVerifications) if (n > 0) this.inc({ outcome }, n);
    pendingVerifications.clear();
  },
});

/** Count one signature check's outcome (see signatureVerifications). */
export function countSignatureOutcome(outcome: string): void {
  pendingVerifications.set(outcome, (pendingVerifications.get(outcome) ?? 0) + 1);
}

/** Credits builds used that their users' balances could not cover (never charged; see services/build-credits.ts). */
export const creditsUncollected = new Counter({
  name: 'kiln_credits_uncollected_total',
  help: 'Credits deployed builds used beyond what their hold and the available balance could cover (not charged)',
  registers: [registry],
});

/** Requests refused by a rate limit, by scope (user or ip). */
export const rateLimited = new Counter({
  name: 'kiln_rate_limited_total',
  help: 'Requests answered 429 RATE_LIMITED, by scope',
  labelNames: ['scope'] as const,
  registers: [registry],
});
