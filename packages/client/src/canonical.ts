/**
 * The canonical request of Kiln's v2 signature (SPEC section 3), as pure functions with no I/O and no platform
 * API beyond URLSearchParams. The server imports this very file (src/domain/signature.ts), so a client and the
 * server cannot drift apart on what a request's PATH is.
 */

/**
 * The PATH that v2 signs: the path as sent, then its query parameters sorted by name the way the existing client
 * does it (URLSearchParams, then localeCompare on the keys, stable for repeated keys), re-encoded by
 * URLSearchParams; a `?` left with nothing after it is dropped.
 */
export function canonicalPath(pathWithQuery: string): string {
  const mark = pathWithQuery.indexOf('?');
  if (mark === -1) return pathWithQuery;
  const path = pathWithQuery.slice(0, mark);
  const pairs = [...new URLSearchParams(pathWithQuery.slice(mark + 1)).entries()];
  // Array#sort is stable, so repeated keys keep their order. The 'en' collation is named rather than the runtime's
  // locale: a process started with LANG=da_DK or lt_LT would otherwise order some keys differently.
  pairs.sort(([a], [b]) => a.localeCompare(b, 'en'));
  const query = new URLSearchParams(pairs).toString();
  return query ? `${path}?${query}` : path;
}

/**
 * What v2 signs before the body: `METHOD\nPATH\ntimestamp\nnonce\n`, METHOD upper-cased and PATH canonical. The
 * body's raw bytes follow it directly (nothing for an empty body), so the string ends with the nonce and one `\n`.
 */
export function stringToSignV2(method: string, pathWithQuery: string, timestamp: string, nonce: string): string {
  return `${method.toUpperCase()}\n${canonicalPath(pathWithQuery)}\n${timestamp}\n${nonce}\n`;
}
