import { describe, expect, it } from 'vitest';
import {
  BLOCKED_RANGES,
  blockedRange,
  canonicalAddress,
  inNetworks,
  parseNetworkList,
} from '../../src/domain/ip-ranges';

/** Each refused range: its name, then its first, a middle and its last address. */
const REFUSED: [string, string, string, string, string][] = [
  ['0.0.0.0/8', 'unspecified', '0.0.0.0', '0.1.2.3', '0.255.255.255'],
  ['10.0.0.0/8', 'private', '10.0.0.0', '10.20.30.40', '10.255.255.255'],
  ['172.16.0.0/12', 'private', '172.16.0.0', '172.20.1.1', '172.31.255.255'],
  ['192.168.0.0/16', 'private', '192.168.0.0', '192.168.1.1', '192.168.255.255'],
  ['127.0.0.0/8', 'loopback', '127.0.0.0', '127.0.0.1', '127.255.255.255'],
  ['169.254.0.0/16', 'link-local', '169.254.0.0', '169.254.169.254', '169.254.255.255'],
  ['100.64.0.0/10', 'cgnat', '100.64.0.0', '100.100.100.100', '100.127.255.255'],
  ['192.0.0.0/24', 'reserved', '192.0.0.0', '192.0.0.170', '192.0.0.255'],
  ['192.0.2.0/24', 'documentation', '192.0.2.0', '192.0.2.123', '192.0.2.255'],
  ['198.18.0.0/15', 'benchmarking', '198.18.0.0', '198.19.0.1', '198.19.255.255'],
  ['198.51.100.0/24', 'documentation', '198.51.100.0', '198.51.100.7', '198.51.100.255'],
  ['203.0.113.0/24', 'documentation', '203.0.113.0', '203.0.113.9', '203.0.113.255'],
  ['224.0.0.0/4', 'multicast', '224.0.0.0', '230.1.2.3', '239.255.255.255'],
  ['240.0.0.0/4', 'reserved', '240.0.0.0', '250.1.2.3', '255.255.255.254'],
  ['255.255.255.255/32', 'broadcast', '255.255.255.255', '255.255.255.255', '255.255.255.255'],
  ['::/128', 'unspecified', '::', '0:0:0:0:0:0:0:0', '::0'],
  ['::1/128', 'loopback', '::1', '0:0:0:0:0:0:0:1', '0000:0000:0000:0000:0000:0000:0000:0001'],
  ['fc00::/7', 'unique-local', 'fc00::', 'fd12:3456::1', 'fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['fe80::/10', 'link-local', 'fe80::', 'fe80::1%eth0', 'febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['ff00::/8', 'multicast', 'ff00::', 'ff02::1', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ['64:ff9b::/96', 'nat64', '64:ff9b::', '64:ff9b::8.8.8.8', '64:ff9b::ffff:ffff'],
  ['64:ff9b:1::/48', 'nat64', '64:ff9b:1::', '64:ff9b:1:2::3', '64:ff9b:1:ffff:ffff:ffff:ffff:ffff'],
  [
    '2001:db8::/32',
    'documentation',
    '2001:db8::',
    '2001:db8:85a3::8a2e:370:7334',
    '2001:db8:ffff:ffff:ffff:ffff:ffff:ffff',
  ],
  ['100::/64', 'discard', '100::', '100::1234', '100::ffff:ffff:ffff:ffff'],
  ['2001::/23', 'reserved', '2001::', '2001:0:4136:e378::1', '2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff'],
];

describe('blockedRange', () => {
  it.each(REFUSED)('refuses %s as %s', (_cidr, name, first, middle, last) => {
    expect([blockedRange(first), blockedRange(middle), blockedRange(last)]).toEqual([name, name, name]);
  });

  it.each([
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::FFFF:7F00:1', 'loopback'],
    ['0:0:0:0:0:ffff:7f00:1', 'loopback'],
    ['0000:0000:0000:0000:0000:ffff:127.0.0.1', 'loopback'],
    ['::ffff:169.254.169.254', 'link-local'],
    ['::ffff:10.0.0.5', 'private'],
    ['::127.0.0.1', 'loopback'],
    ['::a9fe:a9fe', 'link-local'],
    ['2002:7f00:1::', 'loopback'],
    ['2002:a00:1:2::3', 'private'],
    ['::ffff:0:7f00:1', 'reserved'],
    ['5f00::1', 'reserved'],
    ['fec0::1', 'reserved'],
  ])('refuses %s (another spelling, or outside global unicast) as %s', (ip, name) => {
    expect(blockedRange(ip)).toBe(name);
  });

  it.each([
    '8.8.8.8',
    '1.1.1.1',
    '2606:4700:4700::1111',
    '::ffff:8.8.8.8',
    '2002:808:808::1',
    '172.32.0.1',
    '100.128.0.1',
  ])('allows the public address %s', (ip) => {
    expect(blockedRange(ip)).toBeNull();
  });

  it.each(['', 'localhost', '127.1', '0x7f.0.0.1', '010.0.0.1', '1.2.3.4 ', '::1::1', '12345::'])(
    'calls %j invalid',
    (text) => {
      expect(blockedRange(text)).toBe('invalid');
    },
  );

  it('names only ranges of the bounded set', () => {
    const named = REFUSED.map(([, name]) => name);
    expect(named.every((name) => (BLOCKED_RANGES as readonly string[]).includes(name))).toBe(true);
  });
});

describe('canonicalAddress', () => {
  it.each([
    ['::ffff:127.0.0.1', '127.0.0.1'],
    ['::ffff:7f00:1', '127.0.0.1'],
    ['0:0:0:0:0:FFFF:7F00:0001', '127.0.0.1'],
    ['::10.0.0.1', '10.0.0.1'],
    ['::', '::'],
    ['::1', '::1'],
    ['[::1]', '::1'],
    ['fe80::1%eth0', 'fe80::1'],
    ['2001:DB8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['2001:db8:0:0:1:0:0:0', '2001:db8:0:0:1::'],
    ['8.8.8.8', '8.8.8.8'],
    ['Not-An-IP', 'not-an-ip'],
  ])('%s is %s', (ip, canonical) => {
    expect(canonicalAddress(ip)).toBe(canonical);
  });
});

describe('parseNetworkList', () => {
  it('reads CIDRs and bare addresses, whitespace and empty entries ignored', () => {
    const { networks, errors } = parseNetworkList(' 10.0.0.0/8, 127.0.0.1 ,fd00::/8,, ::1, ::ffff:192.168.0.0/112 ');
    expect(errors).toEqual([]);
    expect(networks.map((n) => n.text)).toEqual([
      '10.0.0.0/8',
      '127.0.0.1/32',
      'fd00::/8',
      '::1/128',
      '192.168.0.0/16',
    ]);
    expect(parseNetworkList('')).toEqual({ networks: [], errors: [] });
  });

  it('names every bad entry and keeps the good ones', () => {
    const { networks, errors } = parseNetworkList('10.0.0.0/33, 10.0.0.1/8, nope, 1.2.3.4/, ::/129, 192.168.0.0/16');
    expect(networks.map((n) => n.text)).toEqual(['192.168.0.0/16']);
    expect(errors).toEqual([
      '"10.0.0.0/33" is not a CIDR',
      '"10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)',
      '"nope" is not a CIDR',
      '"1.2.3.4/" is not a CIDR',
      '"::/129" is not a CIDR',
    ]);
  });
});

describe('inNetworks', () => {
  const { networks } = parseNetworkList('10.1.0.0/16, 127.0.0.1, fd00:1::/32');

  it.each([
    ['10.1.2.3', true],
    ['10.2.0.1', false],
    ['127.0.0.1', true],
    ['127.0.0.2', false],
    ['::ffff:10.1.0.9', true],
    ['::ffff:7f00:1', true],
    ['fd00:1:2::3', true],
    ['fd00:2::1', false],
    ['fd00:1::1%eth0', true],
    ['::1', false],
    ['not an ip', false],
  ])('%s → %s', (ip, inside) => {
    expect(inNetworks(ip, networks)).toBe(inside);
  });

  it('matches nothing against an empty list, and everything of a family against /0', () => {
    expect(inNetworks('10.0.0.1', [])).toBe(false);
    const all4 = parseNetworkList('0.0.0.0/0').networks;
    expect([inNetworks('203.0.113.1', all4), inNetworks('2001:db8::1', all4)]).toEqual([true, false]);
  });
});
