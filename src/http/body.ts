import { ApiError } from './errors';
import type { App } from './server';

declare module 'fastify' {
  interface FastifyRequest {
    /** The body bytes exactly as received (signatures are computed over these), empty when there is none. */
    rawBody: Buffer;
    /** A body that could not be parsed; thrown after the signature check (see throwBodyError). */
    bodyError?: ApiError;
  }
}

export const MAX_JSON_DEPTH = 32;
// Fastify refuses reference-type decorator defaults; each request gets its own Buffer when it has a body.
const EMPTY = null;
const FORBIDDEN_KEY = /"(__proto__|constructor|prototype)"\s*:/;

/** Depth of nested arrays/objects, counted on the text so a hostile body cannot blow the stack later. */
function jsonDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92)
        i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123 || c === 91) max = Math.max(max, ++depth);
    else if (c === 125 || c === 93) depth--;
  }
  return max;
}

/** True when the text has at most `limit` opening brackets (strings included), so it cannot nest deeper. */
function fewBrackets(text: string, limit: number): boolean {
  let n = 0;
  for (let i = text.indexOf('{'); i !== -1; i = text.indexOf('{', i + 1)) if (++n > limit) return false;
  for (let i = text.indexOf('['); i !== -1; i = text.indexOf('[', i + 1)) if (++n > limit) return false;
  return true;
}

const UNPAIRED_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const FORBIDDEN_NAMES = new Set(['__proto__', 'constructor', 'prototype']);

/** What an escaped body may hide that its text does not show. */
type EscapedProblem = { path: string; kind: 'unstorable' | 'forbidden' };

/**
 * The first string (key or value) that PostgreSQL cannot store — one holding U+0000, or an unpaired surrogate
 * (jsonb refuses `\ud800` alone) — or key spelled with escapes as __proto__, constructor or prototype (the text check
 * sees only plain ones). Either only comes from `\u` escapes, so a body without one is not walked.
 */
function escapedProblem(value: unknown, path: string): EscapedProblem | undefined {
  const unstorable = (text: string) => text.includes('\u0000') || UNPAIRED_SURROGATE.test(text);
  if (typeof value === 'string') return unstorable(value) ? { path, kind: 'unstorable' } : undefined;
  if (value === null || typeof value !== 'object') return undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = escapedProblem(value[i], `${path}.${i}`);
      if (found) return found;
    }
    return undefined;
  }
  for (const [key, item] of Object.entries(value)) {
    const at = `${path}.${key}`;
    if (FORBIDDEN_NAMES.has(key)) return { path: at, kind: 'forbidden' };
    if (unstorable(key)) return { path: at, kind: 'unstorable' };
    const found = escapedProblem(item, at);
    if (found) return found;
  }
  return undefined;
}

function badJson(message: string): ApiError {
  return new ApiError('VALIDATION_ERROR', `The body is not acceptable JSON: ${message}. Send a JSON object.`, {
    issues: [{ path: 'body', message }],
  });
}

/**
 * JSON is the only body type Kiln accepts (anything else → 415). The raw bytes are kept on the request
 * for signature checks; prototype-polluting keys, absurd nesting and strings PostgreSQL cannot store are refused as 400.
 */
export function registerJsonBody(app: App): void {
  app.decorateRequest('rawBody', EMPTY as unknown as Buffer);
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(/^application\/([\w.+-]+\+)?json$/i, { parseAs: 'buffer' }, (request, body, done) => {
    const buffer = body as Buffer;
    request.rawBody = buffer;
    if (buffer.length === 0) return done(null, undefined);
    const text = buffer.toString('utf8');
    // Parse errors are kept, not thrown, so that an unsigned /v1 request is answered 401 whatever its body.
    if (!fewBrackets(text, MAX_JSON_DEPTH) && jsonDepth(text) > MAX_JSON_DEPTH)
      request.bodyError = badJson(`nested deeper than ${MAX_JSON_DEPTH} levels`);
    else if (FORBIDDEN_KEY.test(text)) {
      request.bodyError = badJson('keys named __proto__, constructor or prototype are not allowed');
    } else {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (error) {
        request.bodyError = badJson((error as Error).message);
        return done(null, undefined);
      }
      const problem = text.includes('\\u') ? escapedProblem(parsed, 'body') : undefined;
      if (problem === undefined) return done(null, parsed);
      request.bodyError =
        problem.kind === 'forbidden'
          ? badJson('keys named __proto__, constructor or prototype are not allowed')
          : new ApiError(
              'VALIDATION_ERROR',
              `${problem.path} holds U+0000 or an unpaired surrogate (\\ud800-\\udfff), which cannot be stored; remove it.`,
              { issues: [{ path: problem.path, message: 'must not contain U+0000 or an unpaired surrogate' }] },
            );
    }
    done(null, undefined);
  });
}

/** preValidation: answer the kept body error; runs after the /v1 guard so signatures are checked first. */
export function throwBodyError(
  request: { bodyError?: ApiError },
  _reply: unknown,
  done: (error?: ApiError) => void,
): void {
  done(request.bodyError);
}
