import { join } from 'node:path'
import type { FastifyBaseLogger } from 'fastify'
import { hostPort, redisConfigured, type Config } from '../config.js'
import { fromRoot } from '../paths.js'
import { MemoryStore } from './memory.js'
import { RedisStore } from './redis.js'
import type { Store } from './types.js'

export type { Counter, Store } from './types.js'

/** Redis (a server, Sentinel or Cluster) when configured, the in-process store (kept across restarts under DATA_DIR) otherwise. */
export async function createStore (config: Config, log: FastifyBaseLogger): Promise<Store> {
  if (!redisConfigured(config)) {
    return await MemoryStore.create({
      prefix: config.REDIS_PREFIX,
      snapshotFile: config.NODE_ENV === 'test' ? undefined : join(fromRoot(config.DATA_DIR), 'store.json')
    })
  }
  let lastReport = 0
  const { store, connected } = await RedisStore.connect({
    ...(config.REDIS_URL === undefined ? {} : { url: config.REDIS_URL }),
    ...(config.REDIS_SENTINELS.length > 0 ? { sentinels: config.REDIS_SENTINELS.map(node => hostPort(node)!), sentinelName: config.REDIS_SENTINEL_NAME } : {}),
    ...(config.REDIS_CLUSTER_NODES.length > 0 ? { clusterNodes: config.REDIS_CLUSTER_NODES.map(node => hostPort(node)!) } : {}),
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
