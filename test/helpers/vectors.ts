import { readFileSync } from 'node:fs';

/** One worked case of test/fixtures/signatures.json (SPEC section 3's vectors, shared with the existing client). */
export interface SignatureVector {
  name: string;
  method: string;
  path: string;
  body: string;
  secret: string;
  timestamp: string;
  nonce: string;
  signedPath: string;
  v1: string;
  v2: string;
}

export const signatureVectors: SignatureVector[] = JSON.parse(
  readFileSync(new URL('../fixtures/signatures.json', import.meta.url), 'utf8'),
).vectors;
