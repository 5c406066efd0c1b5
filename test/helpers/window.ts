import { WINDOW_MS } from '../../src/http/rate-limit';

/**
 * Rate limits count in fixed 60 s windows; a test that fills a quota must not straddle a window's end (the count
 * would restart mid-test). Wait for a fresh window when fewer than `needMs` remain in this one.
 */
export async function awayFromWindowEdge(needMs = 10_000): Promise<void> {
  const left = WINDOW_MS - (Date.now() % WINDOW_MS);
  if (left < needMs) await new Promise((r) => setTimeout(r, left + 50));
}
