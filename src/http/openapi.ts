import { type TObject, type TSchema, Type } from '@sinclair/typebox';
import type { RouteOptions } from 'fastify';
import { ERROR_STATUS, type ErrorCode } from '../domain/errors';
import { isMutatingMethod } from './idempotency';
import { ErrorEnvelopeSchema } from './schemas';

/**
 * What the OpenAPI document says beyond the route schemas: every error a route can answer (status, codes, the
 * envelope), the signature headers as a security scheme, the Idempotency-Key header and an example per route. The
 * error responses are set on the route itself (they serialize its errors); the rest only shapes the document.
 */

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * The error codes the route's own logic answers (e.g. BUILD_NOT_FOUND). Those every route of its kind can answer
     * (signature, validation, body, idempotency, outage) are added from its traits by `documentErrors`.
     */
    errors?: ErrorCode[];
  }
}

/** One line per code for the document: when it is answered. */
const WHEN: Record<ErrorCode, string> = {
  VALIDATION_ERROR: 'a field, parameter or header is wrong (data.issues names each)',
  BAD_REQUEST: 'the request is not valid HTTP (e.g. bad URL encoding)',
  INVALID_IDEMPOTENCY_KEY: 'the Idempotency-Key breaks a rule (data.rule)',
  MISSING_SIGNATURE: 'a signature header is missing (data.expected lists them)',
  INVALID_SIGNATURE: 'the signature does not verify (data.signed shows what the server signed)',
  TIMESTAMP_OUT_OF_RANGE: 'the timestamp is too far from the server clock (data.serverTime)',
  UNAUTHORIZED: 'the bearer token is missing or wrong',
  INSUFFICIENT_CREDITS: 'not enough available credits (data.shortfall, data.recommendation)',
  NOT_FOUND: 'no such resource',
  BUILD_NOT_FOUND: 'no such build',
  PROJECT_NOT_FOUND: 'no such project',
  RESERVATION_NOT_FOUND: 'no such reservation',
  METHOD_NOT_ALLOWED: 'the path does not take this method (Allow header)',
  REQUEST_TIMEOUT: 'the request was not received in time',
  INVALID_STATE_TRANSITION: 'the build cannot move to that state (data.validNextStates)',
  REPLAYED_NONCE: 'the nonce was used already: sign again with a fresh one',
  IDEMPOTENCY_KEY_IN_USE: 'the same key is still running: retry after Retry-After',
  RESERVATION_NOT_ACTIVE: 'the reservation was committed, released or expired (data.state)',
  RESERVATION_HELD_BY_BUILD: "the hold is a build's (data.buildId): cancel the build instead",
  VERSION_CONFLICT: 'If-Match names an old version (data.version is the current one)',
  PROJECT_ALREADY_EXISTS: 'a project with that id exists (or existed: ids of deleted projects are not reused)',
  PROJECT_HAS_ACTIVE_BUILDS: 'the project has queued or building builds (data.activeBuilds): cancel them first',
  BUILD_ALREADY_EXISTS: 'a build with that id exists',
  WEBHOOK_NOT_SET: 'the project has no webhookUrl',
  PAYLOAD_TOO_LARGE: 'the body (or a chunk extension) is over the limit',
  URI_TOO_LONG: 'the URL is too long',
  UNSUPPORTED_MEDIA_TYPE: 'the body is not application/json',
  EXPECTATION_FAILED: 'an Expect header other than 100-continue',
  IDEMPOTENCY_KEY_REUSED: 'the key was first used for a different request',
  COMMIT_EXCEEDS_RESERVATION: 'more credits than the hold (data.reserved, data.requested)',
  BUILD_ALREADY_RUNNING: 'the project has an active build (data.activeBuildId, Retry-After)',
  RATE_LIMITED: 'too many requests (Retry-After, x-ratelimit-*)',
  HEADERS_TOO_LARGE: 'the headers are too large',
  INTERNAL_ERROR: 'a fault in Kiln (logged with the request id)',
  NOT_IMPLEMENTED: 'the method is not implemented',
  SERVICE_UNAVAILABLE: 'a dependency is down or the process is stopping (Retry-After)',
  HTTP_VERSION_NOT_SUPPORTED: 'the HTTP version is not supported',
};

/**
 * Every route: a fault, an outage, a process that is stopping, and what the HTTP layer refuses before the route runs
 * (a malformed request, a request line, headers or chunk extensions too long, an unmet Expect, a request too slow
 * to arrive, an unknown method, another HTTP version).
 */
const ANY_ROUTE: ErrorCode[] = [
  'BAD_REQUEST',
  'REQUEST_TIMEOUT',
  'URI_TOO_LONG',
  'PAYLOAD_TOO_LARGE',
  'EXPECTATION_FAILED',
  'HEADERS_TOO_LARGE',
  'INTERNAL_ERROR',
  'NOT_IMPLEMENTED',
  'SERVICE_UNAVAILABLE',
  'HTTP_VERSION_NOT_SUPPORTED',
];
/** Every signed (/v1) route: the signature, the nonce and the rate limits. */
const SIGNED: ErrorCode[] = [
  'MISSING_SIGNATURE',
  'INVALID_SIGNATURE',
  'TIMESTAMP_OUT_OF_RANGE',
  'REPLAYED_NONCE',
  'RATE_LIMITED',
];
/** Every route that reads a body. */
const WITH_BODY: ErrorCode[] = ['VALIDATION_ERROR', 'PAYLOAD_TOO_LARGE', 'UNSUPPORTED_MEDIA_TYPE'];
/** Every signed mutation: the Idempotency-Key. */
const KEYED: ErrorCode[] = ['INVALID_IDEMPOTENCY_KEY', 'IDEMPOTENCY_KEY_IN_USE', 'IDEMPOTENCY_KEY_REUSED'];

function methodsOf(route: Pick<RouteOptions, 'method'>): string[] {
  return (Array.isArray(route.method) ? route.method : [route.method]).map((m) => String(m).toUpperCase());
}

/** The error codes a route can answer: its own and those of its kind. */
export function errorCodesOf(route: Pick<RouteOptions, 'method' | 'url' | 'schema' | 'config'>, signed: boolean) {
  const codes = new Set<ErrorCode>(ANY_ROUTE);
  const schema = (route.schema ?? {}) as Record<string, unknown>;
  const hasBody = methodsOf(route).some(isMutatingMethod);
  if (schema.params || schema.querystring || schema.headers || schema.body) codes.add('VALIDATION_ERROR');
  if (hasBody) for (const code of WITH_BODY) codes.add(code);
  if (signed) for (const code of SIGNED) codes.add(code);
  if (signed && hasBody) for (const code of KEYED) codes.add(code);
  for (const code of (route.config as { errors?: ErrorCode[] } | undefined)?.errors ?? []) codes.add(code);
  return [...codes].sort((a, b) => ERROR_STATUS[a] - ERROR_STATUS[b] || a.localeCompare(b));
}

/** The envelope for one status, its `error` limited to the codes that status carries on this route. */
function envelopeFor(codes: ErrorCode[]): TSchema {
  const { error: _error, ...rest } = ErrorEnvelopeSchema.properties;
  return Type.Object(
    {
      error: Type.Unsafe<ErrorCode>({ type: 'string', enum: codes, description: 'Machine-readable code' }),
      ...rest,
    },
    { title: 'ErrorEnvelope', description: codes.map((code) => `${code}: ${WHEN[code]}`).join('. ') },
  );
}

/**
 * Set on the route (before Fastify compiles it) a response per error status it can answer, in the envelope; kept
 * when the route declares that status itself. Hidden routes (the docs' own files, previews) are left alone.
 */
export function documentErrors(route: RouteOptions, signed: boolean): void {
  const schema = route.schema as (Record<string, unknown> & { hide?: boolean; response?: object }) | undefined;
  if (!schema || schema.hide) return;
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of errorCodesOf(route, signed)) {
    const status = ERROR_STATUS[code];
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  const response = { ...(schema.response as Record<string, unknown> | undefined) };
  for (const [status, codes] of byStatus) response[status] ??= envelopeFor(codes);
  route.schema = { ...schema, response };
}

/**
 * An Idempotency-Key as parseIdempotencyKey takes it: 1-255 printable ASCII characters, or that in the RFC 8941
 * quoted form (inner quotes and backslashes escaped).
 */
const IDEMPOTENCY_KEY = {
  anyOf: [
    // Not wrapped in quotes: a key that is, is read in the quoted form.
    { type: 'string', pattern: '^(?!".*"$)[\\x20-\\x7E]{1,255}$' },
    { type: 'string', pattern: '^"(?:[\\x20\\x21\\x23-\\x5B\\x5D-\\x7E]|\\\\["\\\\]){1,255}"$' },
  ],
};

/** What parseIfMatch takes (routes/projects.ts): *, or a list of version ETags, each "3", 3 or W/"3". */
export const IF_MATCH_PATTERN = '^\\s*(\\*|(W/)?"?\\d{1,9}"?(\\s*,\\s*(W/)?"?\\d{1,9}"?)*)\\s*$';

/** The document's security schemes: the signature headers, with the configured prefix. */
export function securitySchemes(prefix: string) {
  const header = (name: string, description: string) => ({
    type: 'apiKey' as const,
    in: 'header' as const,
    name: `${prefix}-${name}`,
    description,
  });
  return {
    timestamp: header('timestamp', 'Unix seconds when the request was signed (within ±120 s of the server clock)'),
    nonce: header('nonce', 'A fresh random string per request (accepted once)'),
    signatureV2: header(
      'sig-v2',
      'hex HMAC-SHA256 over METHOD\\nPATH\\ntimestamp\\nnonce\\nbody, PATH canonical (README: "canonical request")',
    ),
    signatureV1: header('signature', 'hex HMAC-SHA256 over timestamp + body (only while HMAC_MODE allows v1)'),
  };
}

/** What signs a request in each HMAC_MODE: v2 (timestamp, nonce, v2), or v1, or either while v1 is allowed. */
const V2 = { timestamp: [], nonce: [], signatureV2: [] };
const V1 = { timestamp: [], nonce: [], signatureV1: [] };
const SIGNED_SECURITY = { v2: [V2], v1: [V1], dual: [V2, V1] } as const;

interface Documented {
  schema: Record<string, unknown>;
  url: string;
}

/**
 * The document's view of one route (@fastify/swagger's `transform`): signed routes get the security requirement,
 * mutations the Idempotency-Key header, and the example of `examples` when there is one. Validation is not
 * touched: the route keeps its own schema.
 */
export function documentRoute(
  schema: Record<string, unknown> | undefined,
  url: string,
  method: string,
  options: { signed: boolean; idempotencyRequired: boolean; hmacMode: 'v1' | 'v2' | 'dual'; example?: RouteExample },
): Documented {
  if (!schema) return { schema: {}, url };
  const out: Record<string, unknown> = { ...schema };
  if (options.signed) out.security = SIGNED_SECURITY[options.hmacMode];
  const ifMatch = (schema.headers as TObject | undefined)?.properties?.['if-match'];
  if (ifMatch) {
    const headers = schema.headers as TObject;
    out.headers = {
      ...headers,
      properties: { ...headers.properties, 'if-match': { ...ifMatch, pattern: IF_MATCH_PATTERN } },
    };
  }
  if (options.signed && isMutatingMethod(method)) {
    const headers = out.headers as TObject | undefined;
    out.headers = Type.Object({
      ...headers?.properties,
      'idempotency-key': (options.idempotencyRequired ? (s: TSchema) => s : Type.Optional)(
        Type.Unsafe<string>({
          ...IDEMPOTENCY_KEY,
          description:
            'One per logical operation, reused on every retry of it: 1-255 printable ASCII characters (or the ' +
            'RFC 8941 quoted form "…"). A repeat of a finished request returns its first response with ' +
            'Idempotent-Replayed: true; a repeat still running → 409 IDEMPOTENCY_KEY_IN_USE; the key with a ' +
            'different request → 422 IDEMPOTENCY_KEY_REUSED.',
          examples: ['checkout-7f3a9c21'],
        }),
      ),
    });
  }
  describeSuccess(out);
  const example = options.example;
  if (example) {
    if (example.body !== undefined && out.body) out.body = { ...(out.body as object), examples: [example.body] };
    for (const part of ['params', 'querystring'] as const) {
      const values = example[part];
      const given = out[part] as TObject | undefined;
      if (!values || !given) continue;
      const properties: Record<string, unknown> = { ...given.properties };
      for (const [name, value] of Object.entries(values)) {
        if (properties[name]) properties[name] = { ...(properties[name] as object), examples: [value] };
      }
      out[part] = { ...given, properties };
    }
    const response = { ...(out.response as Record<string, Record<string, unknown>>) };
    const [status, body] = example.response;
    const documented = response[status];
    if (documented?.content) {
      // A response given by media type (text, an event stream): the example goes on each.
      const content = documented.content as Record<string, object>;
      const withExample = Object.fromEntries(
        Object.entries(content).map(([type, media]) => [type, { ...media, example: body }]),
      );
      response[status] = { ...documented, content: withExample };
    } else if (documented) response[status] = { ...documented, examples: [body] };
    out.response = response;
  }
  return { schema: out, url };
}

const SUCCESS: Record<string, string> = { 200: 'OK', 201: 'Created', 204: 'No content' };

/** A success response without a description of its own is described by its status, not "Default Response". */
function describeSuccess(schema: Record<string, unknown>): void {
  const response = schema.response as Record<string, Record<string, unknown>> | undefined;
  if (!response) return;
  const described: Record<string, unknown> = { ...response };
  for (const [status, value] of Object.entries(response)) {
    if (SUCCESS[status] && value && value.description === undefined) {
      described[status] = { ...value, description: SUCCESS[status] };
    }
  }
  schema.response = described;
}

/** One route's example: what to send and what comes back. */
export interface RouteExample {
  params?: Record<string, string>;
  querystring?: Record<string, string | number>;
  body?: unknown;
  response: [status: number, body: unknown];
}
