import { randomBytes } from 'node:crypto';

/** Real PostgreSQL / Redis when the environment names them, else the embedded defaults. */
export const DATABASE_URL = process.env.DATABASE_URL || undefined;
export const REDIS_URL = process.env.REDIS_URL || undefined;

/** A name unique to this test run, usable as a schema name or key prefix. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
}
