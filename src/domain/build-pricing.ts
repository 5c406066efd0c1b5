/**
 * Credits a finished build costs when its executor reports none: every started minute of build time at the
 * configured rate (a 61-second build is two minutes).
 */
export function creditsForDuration(durationMs: number, creditsPerMinute: number): number {
  return Math.max(1, Math.ceil(Math.max(0, durationMs) / 60_000)) * creditsPerMinute;
}
