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

t.test('redis store fails fast when Redis does not answer', async t => {
  const { store, connected } = await RedisStore.connect({
    url: 'redis://127.0.0.1:1', prefix: 'gh:test:', commandTimeoutMs: 500, connectTimeoutMs: 500
  })
  t.teardown(() => store.close())
  t.equal(connected, false)
  await t.rejects(store.get('anything'), 'commands reject instead of queueing')
  await t.rejects(store.ping())
})
