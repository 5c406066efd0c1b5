import { isIPv4, isIPv6 } from 'node:net';

/**
 * The address ranges a webhook may not be delivered to (the SSRF guard), and the CIDR lists that let an operator
 * allow some of them back (a receiver on the private network). Pure: text in, names out, no DNS and no sockets;
 * the sender resolves the host, asks blockedRange about every address and connects only to one it checked.
 */

/**
 * Every name blockedRange can give: a bounded set, since each becomes a log field and a metric label.
 * 'invalid' is not a range but the answer for text that is no IP address at all (refused like the others).
 */
export const BLOCKED_RANGES = [
  'invalid',
  'unspecified',
  'loopback',
  'private',
  'link-local',
  'cgnat',
  'documentation',
  'benchmarking',
  'multicast',
  'broadcast',
  'reserved',
  'unique-local',
  'nat64',
  'discard',
] as const;

export type BlockedRange = (typeof BLOCKED_RANGES)[number];

/** A CIDR network: its address as a number of 32 (IPv4) or 128 (IPv6) bits, host bits zero. */
export interface Network {
  family: 4 | 6;
  bits: bigint;
  prefix: number;
  /** The canonical text, e.g. `10.0.0.0/8` or `fd00::/8`, for logs and error messages. */
  text: string;
}

/** An address as a number: 32 bits for IPv4, 128 for IPv6. */
interface Address {
  family: 4 | 6;
  value: bigint;
}

const WIDTH = { 4: 32n, 6: 128n } as const;

/** Dotted-quad text to its 32 bits; node's isIPv4 already refuses leading zeros, short and hex forms. */
function parseV4(text: string): bigint | null {
  if (!isIPv4(text)) return null;
  return text.split('.').reduce((value, octet) => (value << 8n) | BigInt(Number(octet)), 0n);
}

/** IPv6 text (no zone, no brackets) to its 128 bits, a dotted IPv4 tail included (`::ffff:1.2.3.4`). */
function parseV6(text: string): bigint | null {
  if (text.includes('%') || !isIPv6(text)) return null;
  let body = text;
  if (body.includes('.')) {
    const colon = body.lastIndexOf(':');
    const v4 = parseV4(body.slice(colon + 1));
    if (v4 === null) return null;
    body = `${body.slice(0, colon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const halves = body.split('::');
  if (halves.length > 2) return null;
  const groupsOf = (part: string) => (part === '' ? [] : part.split(':'));
  const head = groupsOf(halves[0]);
  const tail = halves.length === 2 ? groupsOf(halves[1]) : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail];
  if (!groups.every((group) => /^[0-9a-f]{1,4}$/i.test(group))) return null;
  return groups.reduce((value, group) => (value << 16n) | BigInt(Number.parseInt(group, 16)), 0n);
}

/** Strict address text (no zone, no brackets) to an Address, or null. */
function parseAddress(text: string): Address | null {
  const v4 = parseV4(text);
  if (v4 !== null) return { family: 4, value: v4 };
  const v6 = parseV6(text);
  return v6 === null ? null : { family: 6, value: v6 };
}

/**
 * The IPv4 address an IPv6 one stands for, if any: IPv4-mapped `::ffff:a.b.c.d` (a dual-stack socket connects
 * to a.b.c.d) and the deprecated IPv4-compatible `::a.b.c.d` (`::` and `::1` keep their own meaning).
 */
function unwrapped(address: Address): Address {
  if (address.family === 6 && (address.value >> 32n === 0xffffn || (address.value >> 32n === 0n && address.value > 1n)))
    return { family: 4, value: address.value & 0xffffffffn };
  return address;
}

/** Canonical text: dotted decimal, or RFC 5952 IPv6 (lowercase, the longest run of two or more zero groups as ::). */
function formatAddress(address: Address): string {
  if (address.family === 4)
    return [24n, 16n, 8n, 0n].map((shift) => String((address.value >> shift) & 0xffn)).join('.');
  const groups = [112n, 96n, 80n, 64n, 48n, 32n, 16n, 0n].map((shift) => Number((address.value >> shift) & 0xffffn));
  let best = { start: -1, length: 0 };
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let end = i;
    while (end < 8 && groups[end] === 0) end++;
    if (end - i > best.length) best = { start: i, length: end - i };
    i = end;
  }
  const hex = (part: number[]) => part.map((group) => group.toString(16)).join(':');
  if (best.length < 2) return hex(groups);
  return `${hex(groups.slice(0, best.start))}::${hex(groups.slice(best.start + best.length))}`;
}

/**
 * The form of an address the guard checks (and the sender connects to): lowercase, brackets and a zone id
 * (`fe80::1%eth0`) dropped, IPv4-mapped and IPv4-compatible IPv6 turned into the dotted IPv4 address they reach,
 * IPv6 compressed as RFC 5952 says. Text that is not an IP address comes back lowercased and otherwise unchanged.
 */
export function canonicalAddress(ip: string): string {
  let text = ip.toLowerCase();
  if (text.startsWith('[') && text.endsWith(']')) text = text.slice(1, -1);
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  const address = parseAddress(text);
  return address === null ? text : formatAddress(unwrapped(address));
}

/** A network from strict CIDR text (`a.b.c.d/n`, `x::y/n`, or a bare address as /32 or /128), or why not. */
function parseNetwork(entry: string): Network | string {
  const slash = entry.indexOf('/');
  const addressText = slash < 0 ? entry : entry.slice(0, slash);
  const prefixText = slash < 0 ? null : entry.slice(slash + 1);
  const parsed = parseAddress(addressText.toLowerCase());
  if (parsed === null || (prefixText !== null && !/^\d{1,3}$/.test(prefixText))) return `"${entry}" is not a CIDR`;
  let address = parsed;
  let prefix = prefixText === null ? Number(WIDTH[parsed.family]) : Number(prefixText);
  if (prefix > Number(WIDTH[parsed.family])) return `"${entry}" is not a CIDR`;
  // ::ffff:a.b.c.d/n (n ≥ 96) is an IPv4 network written in IPv6: checked addresses are IPv4 by then.
  if (parsed.family === 6 && parsed.value >> 32n === 0xffffn && prefix >= 96) {
    address = { family: 4, value: parsed.value & 0xffffffffn };
    prefix -= 96;
  }
  const shift = WIDTH[address.family] - BigInt(prefix);
  const bits = (address.value >> shift) << shift;
  const text = `${formatAddress({ family: address.family, value: bits })}/${prefix}`;
  if (bits !== address.value) return `"${entry}" has host bits set (the network is ${text})`;
  return { family: address.family, bits, prefix, text };
}

/**
 * A comma-separated CIDR list (an operator's allow-list): whitespace around entries and empty entries ignored,
 * a bare address meaning that one address. Every bad entry is named in `errors`; the good ones are still kept,
 * so the caller decides whether a list with errors is refused (configuration should be).
 */
export function parseNetworkList(list: string): { networks: Network[]; errors: string[] } {
  const networks: Network[] = [];
  const errors: string[] = [];
  for (const raw of list.split(',')) {
    const entry = raw.trim();
    if (entry === '') continue;
    const parsed = parseNetwork(entry);
    if (typeof parsed === 'string') errors.push(parsed);
    else networks.push(parsed);
  }
  return { networks, errors };
}

function contains(network: Network, address: Address): boolean {
  if (network.family !== address.family) return false;
  const shift = WIDTH[address.family] - BigInt(network.prefix);
  return address.value >> shift === network.bits >> shift;
}

/** Whether the address (canonicalised first, so `::ffff:10.0.0.1` is 10.0.0.1) is in one of the networks. */
export function inNetworks(ip: string, networks: readonly Network[]): boolean {
  const address = parseAddress(canonicalAddress(ip));
  return address !== null && networks.some((network) => contains(network, address));
}

/** A constant table's network; its text is written here, so a bad one is a bug. */
function network(cidr: string): Network {
  const parsed = parseNetwork(cidr);
  if (typeof parsed === 'string') throw new Error(parsed);
  return parsed;
}

/** A table of refused ranges, names checked against BLOCKED_RANGES by the compiler. */
function table(entries: readonly (readonly [string, BlockedRange])[]): readonly (readonly [Network, BlockedRange])[] {
  return entries.map(([cidr, name]) => [network(cidr), name] as const);
}

/**
 * The refused IPv4 ranges (IANA's special-purpose registry, not globally reachable ones), first match wins, so a
 * range inside another comes first. Everything here is reachable only inside some network, or nowhere.
 */
const V4 = table([
  ['0.0.0.0/8', 'unspecified'],
  ['10.0.0.0/8', 'private'],
  ['100.64.0.0/10', 'cgnat'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link-local'], // cloud metadata services (169.254.169.254) live here
  ['172.16.0.0/12', 'private'],
  ['192.0.0.0/24', 'reserved'], // IETF protocol assignments
  ['192.0.2.0/24', 'documentation'],
  ['192.88.99.0/24', 'reserved'], // the deprecated 6to4 relay anycast (RFC 7526)
  ['192.168.0.0/16', 'private'],
  ['198.18.0.0/15', 'benchmarking'],
  ['198.51.100.0/24', 'documentation'],
  ['203.0.113.0/24', 'documentation'],
  ['224.0.0.0/4', 'multicast'],
  ['255.255.255.255/32', 'broadcast'],
  ['240.0.0.0/4', 'reserved'],
]);

/**
 * The refused IPv6 ranges. IPv4-mapped addresses never get here (canonicalAddress made them IPv4), 2002::/16 is
 * judged by the IPv4 address it embeds, and anything outside 2000::/3 (the only unicast space IANA allocates)
 * that is not named here is 'reserved'.
 */
const V6 = table([
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['64:ff9b::/96', 'nat64'], // a NAT64 gateway would forward to the embedded IPv4 address, whatever it is
  ['64:ff9b:1::/48', 'nat64'],
  ['100::/64', 'discard'],
  ['2001:db8::/32', 'documentation'],
  ['3fff::/20', 'documentation'], // RFC 9637
  ['2001::/23', 'reserved'], // IETF protocol assignments, Teredo (2001::/32) among them
  ['fc00::/7', 'unique-local'],
  ['fe80::/10', 'link-local'],
  ['ff00::/8', 'multicast'],
]);

const GLOBAL_UNICAST = network('2000::/3');
const SIX_TO_FOUR = network('2002::/16');

function blockedV4(address: Address): BlockedRange | null {
  return V4.find(([range]) => contains(range, address))?.[1] ?? null;
}

/**
 * The name of the refused range an address is in, or null when it is a public address a webhook may reach.
 * The address is canonicalised first (`::ffff:127.0.0.1` is loopback); text that is no IP address is 'invalid'.
 * A 6to4 address (2002:AABB:CCDD::/48) gets the name of the IPv4 address AA.BB.CC.DD it embeds, if that is refused.
 */
export function blockedRange(ip: string): BlockedRange | null {
  const address = parseAddress(canonicalAddress(ip));
  if (address === null) return 'invalid';
  if (address.family === 4) return blockedV4(address);
  const named = V6.find(([range]) => contains(range, address))?.[1];
  if (named !== undefined) return named;
  if (contains(SIX_TO_FOUR, address)) return blockedV4({ family: 4, value: (address.value >> 80n) & 0xffffffffn });
  return contains(GLOBAL_UNICAST, address) ? null : 'reserved';
}
