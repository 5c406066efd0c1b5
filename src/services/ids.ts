import { randomBytes } from 'node:crypto';

// Random ids are cut from a block of CSPRNG bytes drawn 16 KiB at a time: a call into the CSPRNG per id cost as
// much as a whole signature check on the hot paths (request ids, reservation ids).
const BLOCK_BYTES = 16 * 1024;
let block = Buffer.alloc(0);
let offset = 0;

/** `bytes` fresh random bytes, encoded (hex or base64url). Never reused: each id takes its own slice. */
export function randomToken(bytes: number, encoding: 'hex' | 'base64url'): string {
  if (offset + bytes > block.length) {
    block = randomBytes(Math.max(BLOCK_BYTES, bytes));
    offset = 0;
  }
  const token = block.toString(encoding, offset, offset + bytes);
  offset += bytes;
  return token;
}
