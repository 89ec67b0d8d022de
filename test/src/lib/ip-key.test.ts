import t from 'tap'
import { ipKey } from '../../../src/lib/ip-key.js'

/*
 * The one key of every per-IP limit: IPv6 per prefix (a client may use any address of its
 * /64), IPv4 — also written as IPv6 — per address.
 */

t.test('IPv6 addresses of one /64 share a key; another /64 has its own', async t => {
  const one = ['2001:db8:1:2::1', '2001:db8:1:2:ffff:ffff:ffff:ffff', '2001:DB8:1:2:a:b:c:d', '2001:0db8:0001:0002:0000:0000:0000:0abc', '2001:db8:1:2::5:6.7.8.9']
  t.same(new Set(one.map(ip => ipKey(ip, 64))), new Set(['2001:db8:1:2::/64']), 'every spelling, every interface id')
  t.equal(ipKey('2001:db8:1:3::1', 64), '2001:db8:1:3::/64', 'the next /64')
  t.equal(ipKey('fe80::1%eth0', 64), 'fe80::/64', 'a zone id names no other client')
})

t.test('the prefix length is a setting', async t => {
  t.equal(ipKey('2001:db8:1:2:a:b:c:d', 48), '2001:db8:1::/48')
  t.equal(ipKey('2001:db8:1:2ff:a:b:c:d', 56), '2001:db8:1:200::/56')
  t.equal(ipKey('2001:db8:1:2:a:b:c:d', 1), '::/1')
  t.equal(ipKey('ffff:db8:1:2:a:b:c:d', 1), '8000::/1')
  t.equal(ipKey('2001:db8:1:2:a:b:c:d', 127), '2001:db8:1:2:a:b:c:c/127')
  t.equal(ipKey('2001:db8:0:0:1:0:0:1', 128), '2001:db8::1:0:0:1', '128: each address, in its RFC 5952 form')
  t.equal(ipKey('2001:DB8::A', 128), '2001:db8::a')
  t.equal(ipKey('::1', 64), '::/64')
  t.equal(ipKey('::1', 128), '::1')
})

t.test('IPv4, also written as IPv6, counts per address', async t => {
  t.equal(ipKey('192.0.2.1', 64), '192.0.2.1')
  t.equal(ipKey('::ffff:192.0.2.1', 64), '192.0.2.1', 'IPv4-mapped')
  t.equal(ipKey('::FFFF:c000:0201', 64), '192.0.2.1', 'IPv4-mapped in hex')
  t.equal(ipKey('::ffff:192.0.2.2', 1), '192.0.2.2', 'whatever the prefix setting')
})

t.test('anything that is not an address is its own key', async t => {
  t.equal(ipKey('unknown', 64), 'unknown')
  t.equal(ipKey('', 64), '')
})
