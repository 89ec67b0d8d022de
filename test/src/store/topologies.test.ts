import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { RedisStore } from '../../../src/store/redis.js'
import { bearer, register } from '../../auth-helper.js'
import { build } from '../../helper.js'
import { storeContract } from './contract.js'
import { redisTopologiesSkip, scanKeys, startRedisCluster, startRedisSentinel, type HostPort } from '../../redis-topologies.js'

/*
 * The store on the Redis topologies that production may use besides a single server: a
 * Cluster of three masters and a master behind Sentinel, both started here from the
 * redis-server binary (test/redis-topologies.ts). The whole store contract
 * (test/src/store/contract.ts) runs on each, then the app itself signs a user in, refreshes
 * and signs out on it; both once more password-protected, the password in REDIS_URL.
 * Skipped, with a comment saying why, where redis-server is not installed.
 */

type Topology = { url?: string } & ({ clusterNodes: HostPort[] } | { sentinels: HostPort[], sentinelName: string })
type Factory = (t: Test, prefix?: string) => Promise<RedisStore>

const newPrefix = (): string => `gh:test:${randomBytes(6).toString('hex')}:`

async function waitFor (condition: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await sleep(10)
  }
}

function factory (topology: Topology): Factory {
  return async (t, prefix = newPrefix()) => {
    const { store, connected } = await RedisStore.connect({ ...topology, prefix, commandTimeoutMs: 2000, connectTimeoutMs: 5000 })
    t.teardown(() => store.close())
    t.ok(connected, 'connected')
    return store
  }
}

/**
 * The app's keys live on the topology: register, refresh and sign out through it. REDIS_URL
 * is '' (unset: loadConfig ignores empty values) unless given, as it carries only a password
 * here — on a port where nothing listens, so that its host is never what the app talks to.
 */
async function signInRefreshSignOut (t: Test, env: Record<string, string>, nodePorts: number[], password?: string): Promise<void> {
  const app = await build(t, { REDIS_URL: '', ...env })
  t.equal(app.store.kind, 'redis', 'the app uses Redis, not the in-process store')
  const registered = await register(app, 'topology@example.com')
  t.equal(registered.status, 201)
  const keys = (await Promise.all(nodePorts.map(async port => await scanKeys(port, `${app.config.REDIS_PREFIX}*`, { password })))).flat()
  t.ok(keys.some(key => key.includes('sess:{')), 'the session is stored on the topology')

  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: registered.refreshToken } })
  t.equal(refreshed.statusCode, 200)
  const next = refreshed.json()
  t.not(next.refreshToken, registered.refreshToken, 'the refresh token rotates')
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(next.accessToken) })).statusCode, 200)

  const logout = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(next.accessToken) })
  t.equal(logout.statusCode, 200)
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(next.accessToken) })).statusCode, 401, 'the access token is dead at once')
  const again = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: next.refreshToken } })
  t.equal(again.statusCode, 401, 'and so is the refresh token')
}

t.test('Redis Cluster (three masters)', { skip: redisTopologiesSkip }, async t => {
  const cluster = await startRedisCluster(t)
  const topology = { clusterNodes: cluster.nodes }
  const ports = cluster.nodes.map(node => node.port)

  t.test('the store contract', async t => { storeContract(t, factory(topology)) })

  t.test('keys spread over all three nodes', async t => {
    const prefix = newPrefix()
    const store = await factory(topology)(t, prefix)
    const expiresAt = Date.now() + 60_000
    // Every session id is its own hash slot ({id}); sixty of them leave no node out.
    await Promise.all(Array.from({ length: 60 }, async (_, i) =>
      await store.createSession(`spread-${i}`, { userId: `u${i}`, rememberMe: false, expiresAt, workspaceId: null }, `h${i}`)))
    const perNode = await Promise.all(ports.map(async port => (await scanKeys(port, `${prefix}*`)).length))
    t.equal(perNode.reduce((sum, count) => sum + count, 0), 60, 'every session stored once')
    t.ok(perNode.every(count => count > 0), `every node holds sessions (${perNode.join(', ')})`)
    for (let i = 0; i < 60; i += 7) t.equal((await store.getSession(`spread-${i}`))?.userId, `u${i}`, `session ${i} read back`)
  })

  t.test('the app on the Cluster: register, refresh, sign out', async t => {
    await signInRefreshSignOut(t, { REDIS_CLUSTER_NODES: cluster.nodes.map(node => `${node.host}:${node.port}`).join(',') }, ports)
  })
})

t.test('Redis Sentinel (a master and one sentinel)', { skip: redisTopologiesSkip }, async t => {
  const sentinel = await startRedisSentinel(t)
  const topology = { sentinels: sentinel.sentinels, sentinelName: sentinel.name }

  t.test('the store contract', async t => { storeContract(t, factory(topology)) })

  t.test('the keys land on the master the sentinel names', async t => {
    const prefix = newPrefix()
    const store = await factory(topology)(t, prefix)
    await store.set('where', 'master')
    t.same(await scanKeys(sentinel.masterPort, `${prefix}*`), [`${prefix}where`])
  })

  t.test('the app behind Sentinel: register, refresh, sign out', async t => {
    await signInRefreshSignOut(t, {
      REDIS_SENTINELS: sentinel.sentinels.map(node => `${node.host}:${node.port}`).join(','),
      REDIS_SENTINEL_NAME: sentinel.name
    }, [sentinel.masterPort])
  })
})

/** Only the password of the URL counts with Sentinel and Cluster; port 1 would refuse. */
const PASSWORD = 'topology-secret'
const PASSWORD_URL = `redis://:${PASSWORD}@127.0.0.1:1`

t.test('a password-protected Cluster, with the password in REDIS_URL', { skip: redisTopologiesSkip }, async t => {
  const cluster = await startRedisCluster(t, { password: PASSWORD })
  const nodes = cluster.nodes.map(node => `${node.host}:${node.port}`).join(',')

  t.test('without the password the store does not connect', async t => {
    const { store, connected } = await RedisStore.connect({ clusterNodes: cluster.nodes, prefix: newPrefix(), commandTimeoutMs: 500, connectTimeoutMs: 1000 })
    t.teardown(() => store.close())
    t.equal(connected, false)
    await t.rejects(store.get('anything'))
  })

  t.test('with it, the store works, pub/sub included', async t => {
    const prefix = newPrefix()
    const topology = { url: PASSWORD_URL, clusterNodes: cluster.nodes }
    const store = await factory(topology)(t, prefix)
    const other = await factory(topology)(t, prefix)
    await store.set('key', 'value')
    t.equal(await other.get('key'), 'value')
    const heard: string[] = []
    await store.subscribe('channel', message => heard.push(message))
    await other.publish('channel', 'hello')
    await waitFor(() => heard.length === 1)
    t.same(heard, ['hello'])
  })

  t.test('the app: register, refresh, sign out', async t => {
    await signInRefreshSignOut(t, { REDIS_URL: PASSWORD_URL, REDIS_CLUSTER_NODES: nodes }, cluster.nodes.map(node => node.port), PASSWORD)
  })
})

t.test('a password-protected master behind Sentinel, with the password in REDIS_URL', { skip: redisTopologiesSkip }, async t => {
  const sentinel = await startRedisSentinel(t, { password: PASSWORD })

  t.test('without the password the store does not connect', async t => {
    const { store, connected } = await RedisStore.connect({ sentinels: sentinel.sentinels, sentinelName: sentinel.name, prefix: newPrefix(), commandTimeoutMs: 500, connectTimeoutMs: 1000 })
    t.teardown(() => store.close())
    t.equal(connected, false)
    await t.rejects(store.get('anything'))
  })

  t.test('the app: register, refresh, sign out', async t => {
    await signInRefreshSignOut(t, {
      REDIS_URL: PASSWORD_URL,
      REDIS_SENTINELS: sentinel.sentinels.map(node => `${node.host}:${node.port}`).join(','),
      REDIS_SENTINEL_NAME: sentinel.name
    }, [sentinel.masterPort], PASSWORD)
  })
})
