/**
 * Credits a finished build costs when its executor reports none: every started minute of build time at the
 * configured rate (a 61-second build is two minutes).
 */
export function creditsForDuration(durationMs: number, creditsPerMinute: number): number {
  return Math.max(1, Math.ceil(Math.max(0, durationMs) / 60_000)) * creditsPerMinute;
}

/**
 * The most credits one build may be said to cost, by its executor (a command's result line) or by the API
 * (`estimatedCredits` of POST /v1/builds, `actualCredits` of PATCH /v1/builds/:id). A figure past it is refused
 * (the API) or ignored (an executor: the build is then priced from its duration).
 */
export const MAX_BUILD_CREDITS = 10_000_000;

/** True for a figure a build may report: an integer in 0..MAX_BUILD_CREDITS. */
export function isBuildCredits(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 0 && (value as number) <= MAX_BUILD_CREDITS;
}

/** Longest preview URL a build may report. */
export const MAX_PREVIEW_URL_LENGTH = 2048;

// No whitespace, control character or backslash anywhere (browsers read `\` as `/`).
const URL_CHAR = '[^\\s\\u0000-\\u001f\\u007f\\\\]';
/**
 * A preview URL a build may report (a command's result line, PATCH /v1/builds/:id): an absolute `http://` or
 * `https://` URL with a host, or a path under `/previews/` without `.`/`..` segments (`%2e` counts as a dot).
 * Anything else — `//host` (protocol-relative: another site), `javascript:`, `/v1/…` — is not a preview.
 */
export const PREVIEW_URL_PATTERN =
  `^(?:https?://[^\\s\\u0000-\\u001f\\u007f\\\\/?#]+(?:[/?#]${URL_CHAR}*)?` +
  `|/previews/(?!(?:${URL_CHAR}*/)?(?:\\.|%2[eE]){1,2}(?:[/?#]|$))${URL_CHAR}*)$`;

const PREVIEW_URL = new RegExp(PREVIEW_URL_PATTERN, 'u');

export function isPreviewUrl(value: unknown): value is string {
  return (
    typeof value === 'string' && value.length >= 1 && value.length <= MAX_PREVIEW_URL_LENGTH && PREVIEW_URL.test(value)
  );
}
