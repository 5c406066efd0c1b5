import type { FastifyRequest } from 'fastify';
import { parseIdempotencyKey } from '../domain/fingerprint';
import { ApiError } from './errors';

/** A mutation's Idempotency-Key as read from its request, once: the key, none, or why it is refused. */
export type KeyRead = { key?: string; error?: ApiError };

function invalid(rule: string): ApiError {
  return new ApiError(
    'INVALID_IDEMPOTENCY_KEY',
    `Idempotency-Key is invalid: ${rule}. Send 1-255 printable ASCII characters.`,
    { rule },
  );
}

function sentMoreThanOnce(request: FastifyRequest, name: string): boolean {
  const raw = request.raw.rawHeaders;
  let seen = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i].length === name.length && raw[i].toLowerCase() === name) seen++;
  return seen > 1;
}

/** The request's key, from the Idempotency-Key header or the body's idempotencyKey (which must agree). */
function keyOf(request: FastifyRequest, required: boolean): string | undefined {
  const header = request.headers['idempotency-key'];
  const body = request.body as Record<string, unknown> | undefined;
  const bodyKey = body && typeof body === 'object' && !Array.isArray(body) ? body.idempotencyKey : undefined;
  let key: string | undefined;
  if (header !== undefined) {
    // Node joins repeated headers with ", ", which a key may contain too: only the raw headers tell them apart.
    if (typeof header !== 'string' || (header.includes(', ') && sentMoreThanOnce(request, 'idempotency-key'))) {
      throw invalid('send the header once');
    }
    const parsed = parseIdempotencyKey(header);
    if (!parsed.ok) throw invalid(parsed.rule);
    key = parsed.key;
  }
  if (bodyKey !== undefined) {
    const parsed =
      typeof bodyKey === 'string' ? parseIdempotencyKey(bodyKey) : { ok: false as const, rule: 'must be a string' };
    if (!parsed.ok) throw invalid(`body.idempotencyKey ${parsed.rule}`);
    if (key !== undefined && key !== parsed.key)
      throw invalid('the header and body.idempotencyKey differ; send one key');
    key = parsed.key;
  }
  if (key === undefined && required) {
    throw invalid('this server requires an Idempotency-Key on every POST, PUT and PATCH (IDEMPOTENCY_REQUIRED=true)');
  }
  return key;
}

/**
 * Read a mutation's key, once per request (the signature guard needs it for its store read, the idempotency layer
 * for the rest): the key, none, or why it is refused. `required` is IDEMPOTENCY_REQUIRED.
 */
export function readIdempotencyKey(request: FastifyRequest, required: boolean): KeyRead {
  try {
    return { key: keyOf(request, required) };
  } catch (error) {
    return { error: error as ApiError };
  }
}
