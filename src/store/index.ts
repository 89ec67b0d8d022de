import { join } from 'node:path'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import { fromRoot } from '../paths.js'
import { MemoryStore } from './memory.js'
import { RedisStore } from './redis.js'
import type { Store } from './types.js'

export type { Store } from './types.js'

/** Redis when REDIS_URL is set, the in-process store (kept across restarts under DATA_DIR) otherwise. */
export async function createStore (config: Config, log: FastifyBaseLogger): Promise<Store> {
  if (config.REDIS_URL === undefined) {
    return await MemoryStore.create({
      prefix: config.REDIS_PREFIX,
      snapshotFile: config.NODE_ENV === 'test' ? undefined : join(fromRoot(config.DATA_DIR), 'store.json')
    })
  }
  let lastReport = 0
  const { store, connected } = await RedisStore.connect({
    url: config.REDIS_URL,
    prefix: config.REDIS_PREFIX,
    commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT,
    connectTimeoutMs: config.REDIS_CONNECT_TIMEOUT,
    onError (error) {
      // ioredis reports every failed reconnect; one line every 10 s is enough.
      if (Date.now() - lastReport < 10_000) return
      lastReport = Date.now()
      log.warn({ err: error }, 'Redis connection problem; requests that need Redis answer 503 until it is back')
    }
  })
  if (!connected) log.error('Redis did not answer at start; continuing and reconnecting in the background')
  return store
}
