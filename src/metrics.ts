import { Counter, collectDefaultMetrics, Gauge, Registry } from 'prom-client';

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

/** The latest full credit audit, as the database recorded it (whichever process ran it). */
export interface LatestAudit {
  ranAt: Date;
  problems: number;
}

// Both audit gauges are collected together (a scrape starts every collect at once): they share the read in flight.
let readLatestAudit: (() => Promise<LatestAudit | undefined>) | undefined;
let inFlight: Promise<LatestAudit | undefined> | undefined;
function latestAudit(): Promise<LatestAudit | undefined> {
  if (!inFlight && readLatestAudit) {
    // A database that does not answer leaves the gauges as they were; /metrics itself keeps working.
    inFlight = readLatestAudit()
      .catch(() => undefined)
      .finally(() => {
        inFlight = undefined;
      });
  }
  return inFlight ?? Promise.resolve(undefined);
}

/** Where the audit gauges read the latest full audit from (the HTTP layer sets it to its database). */
export function readLatestAuditFrom(read: () => Promise<LatestAudit | undefined>): void {
  readLatestAudit = read;
}

/** Problems the latest full credit audit found (SPEC section 6): 0 when the books balanced. */
export const creditAuditProblems = new Gauge({
  name: 'kiln_credit_audit_problems',
  help: 'Problems found by the latest full credit audit (0 = the books balance; at most 1000 are counted)',
  registers: [registry],
  async collect() {
    const latest = await latestAudit();
    if (latest) this.set(latest.problems);
  },
});

/** When the latest full credit audit ran; 0 until one has. */
export const creditAuditLastRun = new Gauge({
  name: 'kiln_credit_audit_last_run_timestamp_seconds',
  help: 'Unix time of the latest full credit audit (0 = none yet)',
  registers: [registry],
  async collect() {
    const latest = await latestAudit();
    if (latest) this.set(latest.ranAt.getTime() / 1000);
  },
});
