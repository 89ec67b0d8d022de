import { createServer, type Socket } from 'node:net'
import t from 'tap'
import { build, redisUrl } from '../helper.js'

t.test('GET /api/health answers {ok:true} (seed 003)', async t => {
  const server = await build(t)
  const response = await server.inject({ url: '/api/health' })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { ok: true })
})

t.test('GET /health answers seed 002\'s body', async t => {
  const server = await build(t)
  const response = await server.inject({ url: '/health' })
  t.equal(response.statusCode, 200)
  const body = response.json()
  t.same(Object.keys(body).sort(), ['environment', 'status', 'timestamp', 'uptime'])
  t.equal(body.status, 'ok')
  t.equal(body.environment, 'test')
  t.ok(Math.abs(Date.parse(body.timestamp) - Date.now()) < 60_000, 'an ISO 8601 timestamp of now')
  t.type(body.uptime, 'number')
})

t.test('GET /api/health/ready is 200 when PostgreSQL and Redis answer, and says what it checked', async t => {
  const server = await build(t)
  const response = await server.inject({ url: '/api/health/ready' })
  t.equal(response.statusCode, 200)
  // Where npm test found no Redis, the in-process store serves: there is no Redis to check.
  t.same(response.json(), redisUrl === undefined
    ? { status: 'ready', checks: { postgres: 'ok', redis: 'not_configured' }, backends: { postgres: 'server', store: 'in-process' } }
    : { status: 'ready', checks: { postgres: 'ok', redis: 'ok' }, backends: { postgres: 'server', store: 'redis' } })
})

t.test('readiness is 503 naming Redis when Redis is unreachable, without hanging', async t => {
  const server = await build(t, { REDIS_URL: 'redis://127.0.0.1:1', HEALTH_TIMEOUT: '1s' })
  const response = await server.inject({ url: '/api/health/ready' })
  t.equal(response.statusCode, 503)
  t.same(response.json(), {
    error: 'Not ready: redis did not answer',
    code: 'NOT_READY',
    details: { postgres: 'ok', redis: 'unreachable' }
  })
  t.equal((await server.inject({ url: '/api/health' })).statusCode, 200, 'liveness is unaffected')
})

t.test('readiness is bounded when Redis accepts connections but never answers', async t => {
  // A stand-in that accepts TCP connections and never says a word.
  const sockets = new Set<Socket>()
  const silent = createServer(socket => { sockets.add(socket) })
  await new Promise<void>(resolve => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { for (const socket of sockets) socket.destroy(); silent.close() })
  const { port } = silent.address() as { port: number }
  const server = await build(t, { REDIS_URL: `redis://127.0.0.1:${port}`, HEALTH_TIMEOUT: '300ms', REDIS_CONNECT_TIMEOUT: '300ms' })
  const response = await server.inject({ url: '/api/health/ready' })
  t.equal(response.statusCode, 503)
  t.match(response.json(), { code: 'NOT_READY', details: { postgres: 'ok' } })
  t.match(response.json().details.redis, /^(timeout|unreachable)$/)
})

t.test('readiness is 503 naming PostgreSQL when it is unreachable', async t => {
  const server = await build(t, { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/postgres', DATABASE_CONNECT_TIMEOUT: '1s', HEALTH_TIMEOUT: '2s' })
  const response = await server.inject({ url: '/api/health/ready' })
  t.equal(response.statusCode, 503)
  t.same(response.json(), {
    error: 'Not ready: postgres did not answer',
    code: 'NOT_READY',
    details: { postgres: 'unreachable', redis: redisUrl === undefined ? 'not_configured' : 'ok' }
  })
})

t.test('while the server drains for a shutdown, readiness is 503 and other routes still answer', async t => {
  const server = await build(t)
  t.equal((await server.inject({ url: '/api/health/ready' })).statusCode, 200)
  server.lifecycle.draining = true
  const ready = await server.inject({ url: '/api/health/ready' })
  t.equal(ready.statusCode, 503)
  t.same(ready.json(), { error: 'Not ready: shutting down', code: 'SHUTTING_DOWN' })
  t.equal((await server.inject({ url: '/api/health' })).statusCode, 200, 'requests still in the queue are served')
})
