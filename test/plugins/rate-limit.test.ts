import t from 'tap'
import { build } from '../helper.js'

async function limited (t: Parameters<typeof build>[0], env: Record<string, string> = {}) {
  return await build(t, { RATE_LIMIT_MAX: '3', RATE_LIMIT_WINDOW: '15m', ...env }, instance => {
    instance.get('/api/test/ping', async () => ({ pong: true }))
    instance.get('/outside/ping', async () => ({ pong: true }))
  })
}

t.test('the per-IP limit sends draft-spec RateLimit headers and answers 429 past the limit', async t => {
  const server = await limited(t)
  const remaining: string[] = []
  for (let i = 0; i < 3; i++) {
    const response = await server.inject({ url: '/api/test/ping' })
    t.equal(response.statusCode, 200)
    t.equal(response.headers['ratelimit-limit'], '3')
    remaining.push(String(response.headers['ratelimit-remaining']))
    t.ok(Number(response.headers['ratelimit-reset']) > 0 && Number(response.headers['ratelimit-reset']) <= 900, 'seconds until the window resets')
  }
  t.same(remaining, ['2', '1', '0'])
  const refused = await server.inject({ url: '/api/test/ping' })
  t.equal(refused.statusCode, 429)
  t.same(refused.json(), { error: 'Too many requests from this IP, please try again later.', code: 'RATE_LIMITED' })
  t.equal(refused.headers['ratelimit-remaining'], '0')
  t.ok(Number(refused.headers['retry-after']) > 0)
})

t.test('a spoofed X-Forwarded-For does not reset the limit when proxies are not trusted', async t => {
  const server = await limited(t)
  for (let i = 0; i < 3; i++) await server.inject({ url: '/api/test/ping', headers: { 'x-forwarded-for': `203.0.113.${i}` } })
  const response = await server.inject({ url: '/api/test/ping', headers: { 'x-forwarded-for': '198.51.100.77' } })
  t.equal(response.statusCode, 429, 'still the same client')
})

t.test('with TRUST_PROXY the forwarded address is the client', async t => {
  const server = await limited(t, { TRUST_PROXY: 'true' })
  for (let i = 0; i < 3; i++) await server.inject({ url: '/api/test/ping', headers: { 'x-forwarded-for': '203.0.113.1' } })
  t.equal((await server.inject({ url: '/api/test/ping', headers: { 'x-forwarded-for': '203.0.113.1' } })).statusCode, 429)
  t.equal((await server.inject({ url: '/api/test/ping', headers: { 'x-forwarded-for': '203.0.113.2' } })).statusCode, 200, 'another client has its own budget')
})

t.test('the counters live in the store that every instance shares', async t => {
  const first = await limited(t)
  const prefix = first.config.REDIS_PREFIX
  const second = await limited(t, { REDIS_PREFIX: prefix, DATABASE_URL: first.config.DATABASE_URL! })
  if (first.store.kind === 'memory') {
    // The in-process store is one instance by design; the counter is still in the store.
    await first.inject({ url: '/api/test/ping' })
    t.equal(await first.store.get('rl:127.0.0.1'), '1')
    return
  }
  await first.inject({ url: '/api/test/ping' })
  await second.inject({ url: '/api/test/ping' })
  await first.inject({ url: '/api/test/ping' })
  t.equal((await second.inject({ url: '/api/test/ping' })).statusCode, 429, 'the limit holds across instances')
  t.equal(await second.store.get('rl:127.0.0.1'), '4')
})

t.test('health probes and routes outside /api are not limited', async t => {
  const server = await limited(t)
  for (let i = 0; i < 5; i++) {
    t.equal((await server.inject({ url: '/api/health' })).statusCode, 200)
    t.equal((await server.inject({ url: '/health' })).statusCode, 200)
    t.equal((await server.inject({ url: '/api/health/ready' })).statusCode, 200)
    t.equal((await server.inject({ url: '/outside/ping' })).statusCode, 200)
  }
  const response = await server.inject({ url: '/api/health' })
  t.notOk(response.headers['ratelimit-limit'])
})

t.test('IPv6 clients count per /64 (RATE_LIMIT_IPV6_PREFIX), IPv4 ones per address', async t => {
  const server = await limited(t, { TRUST_PROXY: 'true' })
  const from = async (ip: string) => (await server.inject({ url: '/api/test/ping', headers: { 'x-forwarded-for': ip } })).statusCode
  // A client that takes a new address of its /64 for every request.
  t.same([await from('2001:db8:1:2::1'), await from('2001:db8:1:2:a:b:c:d'), await from('2001:db8:1:2:ffff::7')], [200, 200, 200])
  t.equal(await from('2001:db8:1:2:1234:5678:9abc:def0'), 429, 'a fourth address of the same /64 is the same client')
  t.equal(await from('2001:db8:1:3::1'), 200, 'another /64 is another client')
  t.equal(await server.store.get('rl:2001:db8:1:2::/64'), '4', 'one counter for the /64')
  t.equal(await from('2001:db8:1:2ff::1'), 200, 'a /64 in the same /56 too (@fastify/rate-limit alone would group by /56)')

  t.same([await from('203.0.113.1'), await from('::ffff:203.0.113.1'), await from('203.0.113.1')], [200, 200, 200])
  t.equal(await from('::ffff:203.0.113.1'), 429, 'an IPv4 address written as IPv6 is that address')
  t.equal(await from('203.0.113.2'), 200, 'IPv4 addresses count one by one')
})

t.test('RATE_LIMIT_IPV6_PREFIX sets the network an IPv6 client counts for', async t => {
  const wide = await limited(t, { TRUST_PROXY: 'true', RATE_LIMIT_MAX: '1', RATE_LIMIT_IPV6_PREFIX: '48' })
  const at = async (server: typeof wide, ip: string) => (await server.inject({ url: '/api/test/ping', headers: { 'x-forwarded-for': ip } })).statusCode
  t.same([await at(wide, '2001:db8:1:2::1'), await at(wide, '2001:db8:1:3::1'), await at(wide, '2001:db8:2::1')], [200, 429, 200], '/48')
  const exact = await limited(t, { TRUST_PROXY: 'true', RATE_LIMIT_MAX: '1', RATE_LIMIT_IPV6_PREFIX: '128' })
  t.same([await at(exact, '2001:db8:1:2::1'), await at(exact, '2001:db8:1:2::1'), await at(exact, '2001:db8:1:2::2')], [200, 429, 200], '128: per address')
})
