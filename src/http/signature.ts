import { createHash } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import type { Config } from '../config';
import {
  canonicalPath,
  type SignatureVersion,
  signV1,
  signV2,
  stringToSignV2,
  verifiesWithAny,
} from '../domain/signature';
import { countSignatureOutcome } from '../metrics';
import { ApiError } from './errors';

/** The outcome of a signature check that passed. */
export interface VerifiedSignature {
  version: SignatureVersion;
  nonce: string;
  /** The request's Unix time in seconds, as signed. */
  timestamp: number;
  /**
   * The key under which this request is remembered, so that it is accepted once within the nonce TTL: the nonce when
   * v2 verified it (v2 signs the nonce), else the v1 signature itself — v1 signs only timestamp and body, so a captured
   * v1 request sent again with a fresh nonce is still the same request.
   */
  replayKey: string;
  /**
   * Remembered with the replay key but not checked. When both versions verified: the v1 signature, so that the
   * captured request cannot be sent again stripped of its v2 signature (not checked, because two different requests
   * of a client that signs both — same second, same body: two GETs — share their v1 signature). When v1 alone
   * verified: a v1-only mark of it, which a dual-signed request with that v1 signature checks.
   */
  markKey: string | undefined;
  /**
   * Checked (it must be absent) but not remembered: for a dual-signed request, the v1-only mark of its v1 signature,
   * so that a copy stripped of v2 and sent first makes the original refused, not accepted a second time.
   */
  checkKey: string | undefined;
}

const NONCE = /^[\x21-\x7e]{8,128}$/;
const TIMESTAMP = /^\d{1,12}$/;

interface HeaderNames {
  v1: string;
  v2: string;
  timestamp: string;
  nonce: string;
}

// The header names for a prefix, built once rather than on every request.
const namesByPrefix = new Map<string, HeaderNames>();
function headerNames(p: string): HeaderNames {
  let names = namesByPrefix.get(p);
  if (!names) {
    names = { v1: `${p}-signature`, v2: `${p}-sig-v2`, timestamp: `${p}-timestamp`, nonce: `${p}-nonce` };
    namesByPrefix.set(p, names);
  }
  return names;
}

function header(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name];
  return typeof value === 'string' && value !== '' ? value : undefined;
}

function fail(
  code: 'MISSING_SIGNATURE' | 'INVALID_SIGNATURE' | 'TIMESTAMP_OUT_OF_RANGE',
  reason: string,
  message: string,
  data: Record<string, unknown> = {},
): never {
  countSignatureOutcome(`failure_${reason}`);
  throw new ApiError(code, message, { reason, ...data });
}

/**
 * Verify the signature headers of a /v1 request against its raw body (SPEC section 3). Throws a 401 ApiError that
 * names the header to fix; returns which version verified. Does not touch the nonce store: an unsigned request
 * can never burn a nonce.
 */
export function verifySignature(request: FastifyRequest, config: Config, nowMs: number): VerifiedSignature {
  const names = headerNames(config.signatureHeaderPrefix);
  const v1 = header(request, names.v1);
  const v2 = header(request, names.v2);
  const timestamp = header(request, names.timestamp);
  const nonce = header(request, names.nonce);
  const serverTime = Math.floor(nowMs / 1000);
  const v1Allowed = config.hmacMode !== 'v2' && !(config.hmacV1Until && nowMs >= config.hmacV1Until.getTime());
  const v2Allowed = config.hmacMode !== 'v1';

  if (!(v2Allowed && v2) && !(v1Allowed && v1)) {
    const accepted = [v2Allowed && names.v2, v1Allowed && names.v1].filter(Boolean).join(' or ');
    const sentOnly = v1 ? names.v1 : v2 ? names.v2 : undefined;
    const why = sentOnly
      ? `${sentOnly} is not accepted here (HMAC_MODE=${config.hmacMode}${!v1Allowed && v1 && config.hmacMode !== 'v2' ? ', v1 retired by HMAC_V1_UNTIL' : ''})`
      : 'no signature header was sent';
    fail(
      'MISSING_SIGNATURE',
      sentOnly ? 'version_not_accepted' : 'missing_signature',
      `${why}; sign the request with ${accepted}, and send ${names.timestamp} and ${names.nonce} with it.`,
      {
        header: v2Allowed ? names.v2 : names.v1,
        accepted: accepted.split(' or '),
        expected: expectedHeaders(names, v1Allowed, v2Allowed),
      },
    );
  }
  if (!timestamp) {
    fail('MISSING_SIGNATURE', 'missing_timestamp', `Send ${names.timestamp} with the Unix time in seconds.`, {
      header: names.timestamp,
      expected: expectedHeaders(names, v1Allowed, v2Allowed),
    });
  }
  if (!nonce) {
    fail(
      'MISSING_SIGNATURE',
      'missing_nonce',
      `Send ${names.nonce} with a fresh random string (8-128 visible characters).`,
      {
        header: names.nonce,
        expected: expectedHeaders(names, v1Allowed, v2Allowed),
      },
    );
  }
  if (!NONCE.test(nonce)) {
    fail('INVALID_SIGNATURE', 'malformed_nonce', `${names.nonce} must be 8-128 visible ASCII characters.`, {
      header: names.nonce,
    });
  }
  if (!TIMESTAMP.test(timestamp) || Math.abs(Number(timestamp) - serverTime) > config.timestampToleranceS) {
    fail(
      'TIMESTAMP_OUT_OF_RANGE',
      'timestamp',
      `${names.timestamp} must be Unix seconds within ±${config.timestampToleranceS} s of the server time (${serverTime}); check the client's clock.`,
      { header: names.timestamp, serverTime, toleranceSeconds: config.timestampToleranceS },
    );
  }

  const body = request.rawBody ?? '';
  const secrets = config.hmacSecrets;
  const v2Ok =
    v2Allowed &&
    v2 !== undefined &&
    verifiesWithAny(v2, secrets, (s) => signV2(s, request.method, request.url, timestamp, nonce, body));
  const v1Ok = v1Allowed && v1 !== undefined && verifiesWithAny(v1, secrets, (s) => signV1(s, timestamp, body));

  if (v1 && v2 && v1Allowed && v2Allowed && v1Ok !== v2Ok) {
    countSignatureOutcome('mismatch');
    request.log.warn({ v1Valid: v1Ok, v2Valid: v2Ok }, 'signature mismatch: only one of v1 and v2 verified');
  }
  if (v2Ok || v1Ok) {
    countSignatureOutcome(v1Ok && v2Ok ? 'both' : v2Ok ? 'v2' : 'v1');
    // 128 bits of the signature name the request: as unique as the whole, half the bytes in every claim.
    const v1Id = v1Ok ? (v1 as string).slice(0, 32).toLowerCase() : undefined;
    return {
      version: v2Ok ? 'v2' : 'v1',
      nonce,
      timestamp: Number(timestamp),
      replayKey: v2Ok ? `nonce:${nonce}` : `v1:${v1Id}`,
      markKey: v1Id === undefined ? undefined : v2Ok ? `v1:${v1Id}` : `v1only:${v1Id}`,
      checkKey: v1Id !== undefined && v2Ok ? `v1only:${v1Id}` : undefined,
    };
  }
  const checked = [v2 && v2Allowed && names.v2, v1 && v1Allowed && names.v1].filter(Boolean) as string[];
  return fail('INVALID_SIGNATURE', 'signature', mismatchMessage(checked, names), {
    header: checked[0],
    checked,
    signed: whatWasSigned(request, timestamp, nonce, body),
  });
}

/** Every header a signed request carries here: the accepted signatures, then the timestamp and the nonce. */
function expectedHeaders(names: HeaderNames, v1Allowed: boolean, v2Allowed: boolean): string[] {
  return [v2Allowed && names.v2, v1Allowed && names.v1, names.timestamp, names.nonce].filter(Boolean) as string[];
}

function mismatchMessage(checked: string[], names: HeaderNames): string {
  const recipes = [
    checked.includes(names.v2) && `${names.v2} = hex HMAC-SHA256 of METHOD\\nPATH\\ntimestamp\\nnonce\\nbody`,
    checked.includes(names.v1) && `${names.v1} = hex HMAC-SHA256 of timestamp + body`,
  ].filter(Boolean);
  return `${checked.join(' and ')} did not verify with the shared secret. ${recipes.join('; ')}. data.signed shows what the server signed (PATH with its query sorted and re-encoded, the body's length and SHA-256): compare it with your string to sign.`;
}

/**
 * What the server put into the string to sign, for the 401: nothing here is secret (all of it came with the request),
 * and the body is given by length and hash so that a large body does not come back.
 */
function whatWasSigned(request: FastifyRequest, timestamp: string, nonce: string, body: string | Buffer) {
  const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const method = request.method.toUpperCase();
  const path = canonicalPath(request.url);
  return {
    method,
    path,
    timestamp,
    nonce,
    bodyLength: bytes.length,
    bodySha256: createHash('sha256').update(bytes).digest('hex'),
    v2StringToSignWithoutBody: stringToSignV2(method, request.url, timestamp, nonce),
  };
}
