import { isUtf8 } from 'node:buffer';
import type { App } from './app';
import { ApiError } from './errors';

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

// The duplicate-key scan's scratch space, reused by every call (it is synchronous). Per open container ("frame"):
// whether it is an object, its element index (arrays) or last key (objects), where its keys start on the key
// stack, and the Set it switches to past SMALL_OBJECT keys. Objects with few keys are compared by their ranges in
// the text, so they allocate nothing.
const MAX_FRAMES = 64;
const SMALL_OBJECT = 8;
const frameObject = new Uint8Array(MAX_FRAMES);
const frameIndex = new Int32Array(MAX_FRAMES);
const frameKeyBase = new Int32Array(MAX_FRAMES);
const frameKeyCount = new Int32Array(MAX_FRAMES);
const frameLastStart = new Int32Array(MAX_FRAMES);
const frameLastEnd = new Int32Array(MAX_FRAMES);
const frameLastEscaped = new Uint8Array(MAX_FRAMES);
const frameSet: (Set<string> | undefined)[] = new Array(MAX_FRAMES).fill(undefined);
const keyStart = new Int32Array(MAX_FRAMES * SMALL_OBJECT);
const keyEnd = new Int32Array(MAX_FRAMES * SMALL_OBJECT);
const keyEscaped = new Uint8Array(MAX_FRAMES * SMALL_OBJECT);

/** A key's text, its escapes resolved (`start`/`end` bound the characters between its quotes). */
function keyText(text: string, start: number, end: number, escaped: number): string {
  return escaped ? (JSON.parse(text.slice(start - 1, end + 1)) as string) : text.slice(start, end);
}

function sameKey(text: string, a: number, aEnd: number, aEsc: number, b: number, bEnd: number, bEsc: number) {
  if (aEsc || bEsc) return keyText(text, a, aEnd, aEsc) === keyText(text, b, bEnd, bEsc);
  if (aEnd - a !== bEnd - b) return false;
  for (let k = aEnd - a - 1; k >= 0; k--) if (text.charCodeAt(a + k) !== text.charCodeAt(b + k)) return false;
  return true;
}

/** `body.a.0.b`: where the scan stands, the key at `top` included. Also drops the frames' Sets. */
function pathAt(text: string, top: number, prefix: string): string {
  let path = prefix;
  for (let f = 0; f <= top; f++) {
    frameSet[f] = undefined;
    path += `.${frameObject[f] ? keyText(text, frameLastStart[f], frameLastEnd[f], frameLastEscaped[f]) : frameIndex[f]}`;
  }
  return path;
}

/**
 * The path of the first key an object of `text` gives twice (`body.credits`), at any depth, keys compared after
 * their escapes are resolved (`"a"` and `"\u0061"` are the same key); undefined when there is none. One pass over
 * text that is already known to be valid JSON: strings are skipped with indexOf, and objects of up to
 * SMALL_OBJECT keys are checked without allocating.
 */
export function findDuplicateKey(text: string, prefix = 'body'): string | undefined {
  let top = -1;
  let expectKey = false;
  const length = text.length;
  for (let i = 0; i < length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34) {
      // A string: its end is the next quote not escaped by an odd run of backslashes.
      const start = i + 1;
      let end = text.indexOf('"', start);
      for (;;) {
        let slashes = 0;
        while (text.charCodeAt(end - 1 - slashes) === 92) slashes++;
        if ((slashes & 1) === 0) break;
        end = text.indexOf('"', end + 1);
      }
      i = end;
      if (!expectKey) continue;
      expectKey = false;
      let escaped = 0;
      for (let k = start; k < end; k++) {
        if (text.charCodeAt(k) === 92) {
          escaped = 1;
          break;
        }
      }
      const set = frameSet[top];
      const count = frameKeyCount[top];
      if (set === undefined) {
        const base = frameKeyBase[top];
        for (let k = base; k < base + count; k++) {
          if (sameKey(text, keyStart[k], keyEnd[k], keyEscaped[k], start, end, escaped)) {
            frameLastStart[top] = start;
            frameLastEnd[top] = end;
            frameLastEscaped[top] = escaped;
            return pathAt(text, top, prefix);
          }
        }
        if (count < SMALL_OBJECT) {
          keyStart[base + count] = start;
          keyEnd[base + count] = end;
          keyEscaped[base + count] = escaped;
        } else {
          const keys = new Set<string>();
          for (let k = base; k < base + count; k++) keys.add(keyText(text, keyStart[k], keyEnd[k], keyEscaped[k]));
          keys.add(keyText(text, start, end, escaped));
          frameSet[top] = keys;
        }
      } else {
        const key = keyText(text, start, end, escaped);
        if (set.has(key)) {
          frameLastStart[top] = start;
          frameLastEnd[top] = end;
          frameLastEscaped[top] = escaped;
          return pathAt(text, top, prefix);
        }
        set.add(key);
      }
      frameKeyCount[top] = count + 1;
      frameLastStart[top] = start;
      frameLastEnd[top] = end;
      frameLastEscaped[top] = escaped;
    } else if (c === 123 || c === 91) {
      if (++top === MAX_FRAMES) break; // deeper than the depth check allows: not ours to judge
      const object = c === 123;
      frameObject[top] = object ? 1 : 0;
      frameIndex[top] = 0;
      frameKeyCount[top] = 0;
      frameSet[top] = undefined;
      // A frame's keys go on the stack after its parent's (the parent adds none while a child is open).
      frameKeyBase[top] = top === 0 ? 0 : frameKeyBase[top - 1] + Math.min(frameKeyCount[top - 1], SMALL_OBJECT);
      expectKey = object;
    } else if (c === 125 || c === 93) {
      frameSet[top] = undefined;
      top--;
      expectKey = false;
    } else if (c === 44) {
      if (frameObject[top]) expectKey = true;
      else frameIndex[top]++;
    }
  }
  for (let f = 0; f <= top && f < MAX_FRAMES; f++) frameSet[f] = undefined;
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
    // toString would turn invalid bytes into U+FFFD, stored as if the client had sent it.
    if (!isUtf8(buffer)) {
      request.bodyError = new ApiError('VALIDATION_ERROR', 'The body is not valid UTF-8; send JSON encoded as UTF-8.', {
        issues: [{ path: 'body', message: 'is not valid UTF-8' }],
      });
      return done(null, undefined);
    }
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
      // JSON.parse keeps the last of two equal keys: {"credits":-5,"credits":1} would grant 1.
      const duplicate = findDuplicateKey(text);
      if (duplicate !== undefined) {
        request.bodyError = new ApiError('VALIDATION_ERROR', `${duplicate} is given twice; send each key once.`, {
          issues: [{ path: duplicate, message: 'is given twice' }],
        });
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
