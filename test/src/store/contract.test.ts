import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { MemoryStore } from '../../../src/store/memory.js'
import { RedisStore } from '../../../src/store/redis.js'
import { redisUrl, tempDir, testRedisPrefix } from '../../helper.js'
import { storeContract, type Factory } from './contract.js'

/*
 * One contract (./contract.ts), two implementations: every behaviour the application relies
 * on is checked against Redis and against the in-process store of the embedded default.
 */

const memory: Factory = async (t, prefix) => {
  const store = await MemoryStore.create({ prefix: prefix ?? testRedisPrefix(t) })
  t.teardown(() => store.close())
  return store
}

const redis: Factory = async (t, prefix) => {
  const { store, connected } = await RedisStore.connect({
    url: redisUrl!, prefix: prefix ?? testRedisPrefix(t), commandTimeoutMs: 2000, connectTimeoutMs: 2000
  })
  t.ok(connected, 'connected to Redis')
  t.teardown(() => store.close())
  return store
}

const implementations: Array<[string, Factory]> = [['memory', memory]]
if (redisUrl !== undefined) implementations.push(['redis', redis])

for (const [name, create] of implementations) {
  t.test(`${name} store`, async t => { storeContract(t, create) })
}

t.test('memory store keeps unexpired entries across a restart', async t => {
  const dir = await tempDir(t)
  const snapshotFile = `${dir}/store.json`
  const first = await MemoryStore.create({ prefix: 'gh:', snapshotFile })
  await first.set('session', 'kept', 60_000)
  await first.set('forever', 'kept too')
  await first.set('brief', 'dropped', 10)
  await sleep(30)
  await first.close()
  const second = await MemoryStore.create({ prefix: 'gh:', snapshotFile })
  t.teardown(() => second.close())
  t.equal(await second.get('session'), 'kept')
  t.equal(await second.get('forever'), 'kept too')
  t.equal(await second.get('brief'), null)
})

t.test('memory store keeps sessions across a restart but starts its counters over', async t => {
  const dir = await tempDir(t)
  const snapshotFile = `${dir}/store.json`
  const first = await MemoryStore.create({ prefix: 'gh:', snapshotFile })
  const state = { userId: 'u1', rememberMe: false, expiresAt: Date.now() + 60_000, workspaceId: null }
  await first.createSession('s1', state, 'hash-1')
  await first.set('ml:abc', 'pending', 60_000)
  await first.addRevocation('session', 's0', Date.now() + 60_000)
  // What plugins/rate-limit.ts and src/auth/throttle.ts count, under their own prefixes.
  for (const key of ['rl:127.0.0.1', 'rl:2001:db8:1:2::/64', 'rl:user:u1', 'signin:ip:127.0.0.1', 'signin:fail:abc', 'ml:rate:abc']) {
    await first.increment(key, 60_000)
    await first.increment(key, 60_000, 4)
  }
  // The session's own refresh budget (one of one used), counted by the rotation.
  await first.createSession('s2', state, 'hash-a')
  t.equal((await first.rotateRefreshTokenWithLimit('s2', 'hash-a', 'hash-b', Date.now(), 10_000, { max: 1, windowMs: 60_000 })).status, 'rotated')
  await first.close()
  const second = await MemoryStore.create({ prefix: 'gh:', snapshotFile })
  t.teardown(() => second.close())
  t.same(await second.getSession('s1'), state, 'the session survived')
  t.same(await second.rotateRefreshToken('s1', 'hash-1', 'hash-2', Date.now(), 10_000), { status: 'rotated', session: state }, 'with its refresh token')
  t.equal(await second.get('ml:abc'), 'pending', 'pending links survived')
  t.same((await second.listRevocations('session', Date.now())).map(entry => entry.id), ['s0'], 'revocations survived')
  for (const key of ['rl:127.0.0.1', 'rl:2001:db8:1:2::/64', 'rl:user:u1', 'signin:ip:127.0.0.1', 'signin:fail:abc', 'ml:rate:abc']) {
    t.equal(await second.get(key), null, `${key} is not kept`)
    t.equal((await second.increment(key, 60_000)).count, 1, `${key} counts from 1 again`)
  }
  t.equal((await second.rotateRefreshTokenWithLimit('s2', 'hash-b', 'hash-c', Date.now(), 10_000, { max: 1, windowMs: 60_000 })).status, 'rotated', 'a session\'s refresh budget starts over too')
})

t.test('redis store fails fast when Redis does not answer', async t => {
  const { store, connected } = await RedisStore.connect({
    url: 'redis://127.0.0.1:1', prefix: 'gh:test:', commandTimeoutMs: 500, connectTimeoutMs: 500
  })
  t.teardown(() => store.close())
  t.equal(connected, false)
  await t.rejects(store.get('anything'), 'commands reject instead of queueing')
  await t.rejects(store.ping())
})
