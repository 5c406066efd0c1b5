import type { IdempotencyRecord } from '../services/idempotency';

/** A record as replayed: from the database, or the store's copy (which may carry the original body's text). */
export type CachedRecord = Omit<IdempotencyRecord, 'expiresAt'> & { rawBody?: string };

/**
 * Bodies up to this many bytes travel in the store's copy too, so that a byte-identical retry is matched without
 * canonicalising and hashing its JSON.
 */
export const RAW_BODY_COPY_MAX = 4096;

/**
 * The store's copy of a record: one line of JSON with everything but the two bodies (and the original body's length,
 * -1 when it is not kept: undefined, or over RAW_BODY_COPY_MAX), then the original body's text and the response
 * body, as they are. A replay then parses a
 * small JSON object and slices the rest, rather than unescaping both bodies from a JSON string.
 */
export function encodeCopy(record: CachedRecord, rawBody: string | undefined): string {
  const { responseBody, rawBody: _raw, ...meta } = record;
  return `${JSON.stringify({ ...meta, rawBodyLength: rawBody?.length ?? -1 })}\n${rawBody ?? ''}${responseBody}`;
}

/** The record a copy holds (written by encodeCopy, or as one JSON object by earlier versions). Throws on garbage. */
export function decodeCopy(text: string): CachedRecord {
  // JSON text has no raw line break: the first one ends the header line. None: a copy written as one JSON object.
  const end = text.indexOf('\n');
  if (end === -1) return JSON.parse(text) as CachedRecord;
  const record = JSON.parse(text.slice(0, end)) as CachedRecord & { rawBodyLength: number };
  const bodyAt = end + 1 + Math.max(0, record.rawBodyLength);
  if (record.rawBodyLength >= 0) record.rawBody = text.slice(end + 1, bodyAt);
  record.responseBody = text.slice(bodyAt);
  return record;
}
