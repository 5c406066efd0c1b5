/**
 * What a deployment keeps across restarts besides its data: its id (which namespaces its Redis keys) and the instant
 * v1 signatures were retired (SPEC section 1: "a restart never reopens it").
 */
import type { Queryable } from '../db/database';
import { readSetting, writeSetting } from '../db/settings';

/** This deployment's id (made by migration 0007, one per database schema). */
export async function deploymentId(q: Queryable): Promise<string> {
  const id = await readSetting(q, 'deployment_id');
  if (!id) throw new Error('kiln_settings has no deployment_id: the migrations did not run');
  return id;
}

/** The v1 retirement in force, and whether it came from the database rather than the configuration. */
export interface V1Retirement {
  until: Date | undefined;
  /** Set when the recorded instant overrides (or stands in for) the configured one. */
  recorded?: Date;
}

/**
 * Reconcile HMAC_V1_UNTIL with the instant recorded in the database. A recorded instant that has passed stands
 * whatever the configuration says (only an earlier configured instant replaces it): v1 stays retired. Otherwise the
 * configured instant is recorded (an operator may move a retirement that has not happened yet), and without one the
 * recorded instant, if any, stays in force.
 */
export async function settleV1Retirement(
  q: Queryable,
  configured: Date | undefined,
  nowMs: number,
): Promise<V1Retirement> {
  const text = await readSetting(q, 'hmac_v1_until');
  const recorded = text === undefined ? undefined : new Date(text);
  if (recorded && recorded.getTime() <= nowMs) {
    if (configured && configured.getTime() < recorded.getTime()) {
      await writeSetting(q, 'hmac_v1_until', configured.toISOString());
      return { until: configured };
    }
    return { until: recorded, recorded };
  }
  if (configured) {
    if (recorded?.getTime() !== configured.getTime()) {
      await writeSetting(q, 'hmac_v1_until', configured.toISOString());
    }
    return { until: configured };
  }
  return recorded ? { until: recorded, recorded } : { until: undefined };
}

/** The recorded retirement instant, if any (a running process picks up one another process recorded). */
export async function recordedV1Retirement(q: Queryable): Promise<Date | undefined> {
  const text = await readSetting(q, 'hmac_v1_until');
  return text === undefined ? undefined : new Date(text);
}
