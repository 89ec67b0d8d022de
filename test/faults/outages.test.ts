import t from 'tap'
import { build, embedded, pgAdminUrl, redisUrl, testDatabase } from '../helper.js'
import { bearer, registerVerified } from '../auth-helper.js'
import { startTcpProxy } from '../tcp-proxy.js'

/*
 * Outages (issue 7): the app talks to PostgreSQL and Redis through TCP proxies that the test
 * cuts and restores, so the drivers see a real outage — connections dropped, new ones refused
 * — while the servers other test files use keep running. Checked: a clear 503 (never a 500,
 * never a hang past the configured timeouts), readiness naming what is down, requests that
 * need neither keep working, nothing half-written, and recovery without a restart.
 */

const SERVICE_UNAVAILABLE = { error: 'Service temporarily unavailable', code: 'SERVICE_UNAVAILABLE' }

if (embedded || redisUrl === undefined) {
  t.comment('the outage tests need PostgreSQL and Redis servers (npm test found the embedded default)')
}

const until = async (check: () => Promise<boolean>, ms: number): Promise<boolean> => {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await check()) return true
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  return false
}

t.test('PostgreSQL down: 503 with the SPEC body, readiness 503, signed-in reads of cached data go on, recovery without restart', { skip: embedded }, async t => {
  const database = new URL(await testDatabase(t))
  const proxy = await startTcpProxy(t, { host: database.hostname, port: Number(database.port === '' ? 5432 : database.port) })
  const viaProxy = new URL(database)
  viaProxy.hostname = '127.0.0.1'
  viaProxy.port = String(proxy.port)
  const app = await build(t, { DATABASE_URL: viaProxy.toString(), DATABASE_CONNECT_TIMEOUT: '1s', HEALTH_TIMEOUT: '1s' })
  t.ok(pgAdminUrl !== undefined)

  const alice = await registerVerified(app, 'alice@outage.example.com')
  t.equal(alice.status, 201)
  // The user is in the cache now: /api/auth/me needs no query.
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(alice.accessToken) })).statusCode, 200)
  const before = await app.db.selectFrom('workspaces').select('id').execute()

  proxy.cut()
  const started = Date.now()
  const write = await app.inject({ method: 'POST', url: '/api/workspaces', headers: bearer(alice.accessToken), payload: { name: 'Lost in the outage' } })
  t.equal(write.statusCode, 503, 'a write while PostgreSQL is down is 503')
  t.same(write.json(), SERVICE_UNAVAILABLE)
  t.ok(Date.now() - started < 5_000, 'answered within the connect timeout, not hung')

  const members = await app.inject({ url: '/api/workspace/members', headers: bearer(alice.accessToken) })
  t.equal(members.statusCode, 503)
  t.same(members.json(), SERVICE_UNAVAILABLE)
  t.notMatch(members.body, /ECONNREFUSED|terminated|at .*\.js|SELECT|select /, 'no driver message, stack or SQL in the body')

  const me = await app.inject({ url: '/api/auth/me', headers: bearer(alice.accessToken) })
  t.equal(me.statusCode, 200, 'a request that needs only the token and cached user still works')

  const ready = await app.inject({ url: '/api/health/ready' })
  t.equal(ready.statusCode, 503)
  t.match(ready.body, /postgres/i, 'readiness names PostgreSQL')

  const login = await app.inject({ method: 'POST', url: '/api/auth/login', payload: { email: 'alice@outage.example.com', password: 'correct horse battery staple 42' } })
  t.equal(login.statusCode, 503, 'sign-in needs the database: 503, not 401 or 500')

  proxy.restore()
  t.ok(await until(async () => (await app.inject({ url: '/api/health/ready' })).statusCode === 200, 10_000), 'ready again without a restart')
  const again = await app.inject({ method: 'POST', url: '/api/workspaces', headers: bearer(alice.accessToken), payload: { name: 'After the outage' } })
  t.equal(again.statusCode, 201)
  const after = await app.db.selectFrom('workspaces').select(['id', 'name']).execute()
  t.equal(after.length, before.length + 1, 'only the workspace created after the outage exists')
  t.notOk(after.some(row => row.name === 'Lost in the outage'), 'nothing of the refused write was stored')
})

t.test('Redis down: JWT requests go on, what needs Redis is 503, revocations made before stay enforced, recovery refills', { skip: redisUrl === undefined }, async t => {
  const redis = new URL(redisUrl!)
  const proxy = await startTcpProxy(t, { host: redis.hostname, port: Number(redis.port === '' ? 6379 : redis.port) })
  const viaProxy = new URL(redis)
  viaProxy.hostname = '127.0.0.1'
  viaProxy.port = String(proxy.port)
  const app = await build(t, { REDIS_URL: viaProxy.toString(), REDIS_COMMAND_TIMEOUT: '500ms', REDIS_CONNECT_TIMEOUT: '500ms', HEALTH_TIMEOUT: '1s' })

  const alice = await registerVerified(app, 'alice@redis-outage.example.com')
  const bob = await registerVerified(app, 'bob@redis-outage.example.com')
  const carol = await registerVerified(app, 'carol@redis-outage.example.com')
  t.equal((await app.inject({ url: '/api/workspace/members', headers: bearer(alice.accessToken) })).statusCode, 200)
  // Bob signs out before the outage: his token must stay refused through it.
  t.equal((await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(bob.accessToken) })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(bob.accessToken) })).statusCode, 401)

  proxy.cut()
  const started = Date.now()
  const refresh = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: alice.refreshToken } })
  t.equal(refresh.statusCode, 503, 'refresh needs Redis: 503')
  t.same(refresh.json(), SERVICE_UNAVAILABLE)
  t.ok(Date.now() - started < 3_000, 'bounded by the command timeout')

  const login = await app.inject({ method: 'POST', url: '/api/auth/login', payload: { email: 'alice@redis-outage.example.com', password: 'correct horse battery staple 42' } })
  t.equal(login.statusCode, 503, 'sign-in needs Redis: 503')

  const me = await app.inject({ url: '/api/auth/me', headers: bearer(alice.accessToken) })
  t.equal(me.statusCode, 200, 'a JWT request needs no Redis')
  const members = await app.inject({ url: '/api/workspace/members', headers: bearer(alice.accessToken) })
  t.equal(members.statusCode, 200, 'nor does a workspace read')
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(bob.accessToken) })).statusCode, 401, 'a session revoked before the outage stays revoked')

  const carolLogout = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(carol.accessToken) })
  t.equal(carolLogout.statusCode, 503, 'a logout during the outage is 503: the client must retry it')
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(carol.accessToken) })).statusCode, 401, 'this instance refuses that token at once')

  const ready = await app.inject({ url: '/api/health/ready' })
  t.equal(ready.statusCode, 503)
  t.match(ready.body, /redis/i, 'readiness names Redis')

  proxy.restore()
  t.ok(await until(async () => (await app.inject({ url: '/api/health/ready' })).statusCode === 200, 15_000), 'ready again without a restart')
  t.ok(await until(async () => (await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: alice.refreshToken } })).statusCode === 200, 5_000),
    'the session lived through the outage: its refresh token still rotates')
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(bob.accessToken) })).statusCode, 401, 'and the revoked one stays revoked')
})
