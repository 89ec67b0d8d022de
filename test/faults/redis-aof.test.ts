import { spawn, type ChildProcess } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { build, embedded, freePort, tempDir, type TestContext } from '../helper.js'
import { bearer, registerVerified } from '../auth-helper.js'
import { redisCli, redisTopologiesSkip } from '../redis-topologies.js'

// A second instance on the same database learns the revocations only from Redis: that needs a
// PostgreSQL server as well as the redis-server binary this file starts.
const skip = redisTopologiesSkip !== false ? redisTopologiesSkip : embedded ? 'needs a PostgreSQL server: a second instance shares the first one\'s database (PGlite serves one connection)' : false

/*
 * Redis restarted (issue 7). docker-compose runs Redis with `appendonly yes`: after a restart
 * the sessions, the rotation history of refresh tokens and the revocations are all still
 * there, so users stay signed in, a token rotated before the restart still counts as reused,
 * and a signed-out token stays refused — also by an instance that only learns it from Redis.
 * The same flow without persistence loses the session: the check can fail.
 *
 * Each test runs a private redis-server (free port, scratch dir) that it stops with SIGTERM and
 * starts again on the same port and dir; the shared Redis is never touched.
 */

const HOST = '127.0.0.1'

/** Servers still running, killed should the process exit before teardown. */
const running = new Set<ChildProcess>()
process.once('exit', () => { for (const child of running) child.kill('SIGKILL') })

const exited = (child: ChildProcess): boolean => child.exitCode !== null || child.signalCode !== null

async function stop (child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.pid === undefined || exited(child)) { running.delete(child); return }
  const gone = new Promise(resolve => child.once('exit', resolve))
  child.kill(signal)
  await Promise.race([gone, sleep(5000, undefined, { ref: false })])
  if (!exited(child)) {
    child.kill('SIGKILL')
    await Promise.race([new Promise(resolve => child.once('exit', resolve)), sleep(2000, undefined, { ref: false })])
  }
  running.delete(child)
}

/** Starts redis-server with `args` on `port` and waits (bounded) until this very process answers. */
async function startRedis (t: TestContext, port: number, args: string[]): Promise<ChildProcess> {
  const child = spawn('redis-server', ['--port', String(port), '--bind', HOST, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  running.add(child)
  t.teardown(async () => { await stop(child, 'SIGKILL').catch(() => {}) })
  let output = ''
  const collect = (chunk: Buffer): void => { output = (output + chunk.toString()).slice(-4000) }
  child.stdout!.on('data', collect)
  child.stderr!.on('data', collect)
  let spawnError: Error | undefined
  child.on('error', error => { spawnError = error })
  const deadline = Date.now() + 10_000
  while (true) {
    if (spawnError !== undefined) throw new Error(`cannot run redis-server: ${spawnError.message}`)
    if (exited(child)) throw new Error(`redis-server on port ${port} exited:\n${output}`)
    if ((await redisCli(port, ['ping']).catch(() => '')).trim() === 'PONG' &&
      (await redisCli(port, ['info', 'server']).catch(() => '')).includes(`process_id:${child.pid}\r`)) return child
    if (Date.now() > deadline) {
      await stop(child, 'SIGKILL')
      throw new Error(`redis-server on port ${port} did not answer PING within 10 s:\n${output}`)
    }
    await sleep(50)
  }
}

const until = async (check: () => Promise<boolean>, ms: number): Promise<boolean> => {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await check().catch(() => false)) return true
    await sleep(100)
  }
  return false
}

const env = (port: number): Record<string, string> => ({
  REDIS_URL: `redis://${HOST}:${port}`,
  REDIS_COMMAND_TIMEOUT: '500ms',
  REDIS_CONNECT_TIMEOUT: '500ms',
  HEALTH_TIMEOUT: '1s',
  REFRESH_GRACE: '200ms'
})

/** Signs alice in and rotates her token once, signs bob out, then restarts Redis on the same port and dir. */
async function restartFlow (t: Test, appendonly: 'yes' | 'no'): Promise<{
  app: Awaited<ReturnType<typeof build>>, port: number, rotated: string, latest: string, bobAccess: string
}> {
  const port = await freePort()
  const dir = await tempDir(t)
  const args = ['--appendonly', appendonly, '--appendfsync', 'always', '--save', '', '--dir', dir]
  const first = await startRedis(t, port, args)
  const app = await build(t, env(port))

  const alice = await registerVerified(app, `alice-${appendonly}@aof.example.com`)
  t.equal(alice.status, 201)
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: alice.refreshToken } })
  t.equal(refreshed.statusCode, 200, 'one rotation before the restart')
  const latest = refreshed.json().refreshToken as string
  t.ok(typeof latest === 'string' && latest !== alice.refreshToken)

  const bob = await registerVerified(app, `bob-${appendonly}@aof.example.com`)
  t.equal((await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(bob.accessToken) })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(bob.accessToken) })).statusCode, 401, 'bob signed out')

  await stop(first, 'SIGTERM')
  t.ok(exited(first), 'Redis stopped (SIGTERM)')
  await startRedis(t, port, args)
  t.ok(await until(async () => (await app.inject({ url: '/api/health/ready' })).statusCode === 200, 10_000), 'ready again after the restart')
  // Past the grace window: reusing the rotated token is a reuse, not a second tab.
  await sleep(300)
  return { app, port, rotated: alice.refreshToken, latest, bobAccess: bob.accessToken }
}

t.test('appendonly yes: sessions, rotation history and revocations survive a Redis restart', { skip }, async t => {
  const { app, rotated, latest, bobAccess } = await restartFlow(t, 'yes')

  const again = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: latest } })
  t.equal(again.statusCode, 200, 'the latest refresh token still rotates: the session survived')
  const newest = again.json().refreshToken as string

  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(bobAccess) })).statusCode, 401, 'the revoked access token stays refused')

  // A fresh instance on the same database and Redis knows the revocation only from Redis.
  const other = await build(t, { ...env(Number(new URL(app.config.REDIS_URL!).port)), DATABASE_URL: app.config.DATABASE_URL, REDIS_PREFIX: app.config.REDIS_PREFIX })
  t.equal((await other.inject({ url: '/api/auth/me', headers: bearer(bobAccess) })).statusCode, 401, 'a new instance refuses the revoked token too')

  const reuse = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: rotated } })
  t.equal(reuse.statusCode, 401, 'reusing the token rotated before the restart is refused: the rotation history survived')
  const after = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: newest } })
  t.equal(after.statusCode, 401, 'and the reuse revoked the whole session')
})

t.test('appendonly no (contrast): the restart loses the session', { skip }, async t => {
  const { app, latest, bobAccess } = await restartFlow(t, 'no')
  const again = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: latest } })
  t.equal(again.statusCode, 401, 'without persistence the refresh token is gone')
  // The revocation is lost too: only the old instance's memory still has it.
  const other = await build(t, { ...env(Number(new URL(app.config.REDIS_URL!).port)), DATABASE_URL: app.config.DATABASE_URL, REDIS_PREFIX: app.config.REDIS_PREFIX })
  t.equal((await other.inject({ url: '/api/auth/me', headers: bearer(bobAccess) })).statusCode, 200, 'a new instance no longer knows the revocation')
})
