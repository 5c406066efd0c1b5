import type { Database } from '../db/database';
import { type PipelineRow, readPipelineWithin } from '../db/pipeline';
import { sharedRead } from './shared-read';

/** The pipeline as the database sees it (the shared gauges of /metrics and the live page read it). */
export type PipelineSnapshot = PipelineRow;

/** How long one read of the pipeline serves every scrape and page refresh of this process. */
const MAX_AGE_MS = 1_000;
/** Past this the database cancels the read; a read still unanswered after twice it is abandoned (a dead socket). */
const READ_TIMEOUT_MS = 2_000;

/**
 * The pipeline as the database sees it (queue, builds running, holds, instances, the latest audit), read at most
 * once a second per process however many scrapes and live pages ask (see sharedRead). Every process reads the same
 * rows, so each reports the same truth.
 */
export function pipelineReader(db: Database, maxAgeMs = MAX_AGE_MS): () => Promise<PipelineSnapshot> {
  return sharedRead(() => readPipelineWithin(db, READ_TIMEOUT_MS), maxAgeMs, 2 * READ_TIMEOUT_MS);
}
