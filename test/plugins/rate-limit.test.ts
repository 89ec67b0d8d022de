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
