import { Redis, type RedisOptions } from 'ioredis'
import { withTimeout } from '../lib/timeout.js'
import type { Counter, MessageHandler, Store } from './types.js'

/*
 * The Redis implementation of the store contract. Anything that must be atomic is one Lua
 * script (defineCommand, sent by SHA). The connection never queues commands while Redis is
 * away (enableOfflineQueue: false) and every command has a timeout, so a request that needs
 * Redis fails fast with 503 instead of hanging; ioredis reconnects in the background.
 */

const COMPARE_AND_SWAP = `
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1`

const INCREMENT_WINDOW = `
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}`

interface ScriptCommands {
  ghCompareAndSwap: (key: string, expected: string, next: string, ttlMs: string) => Promise<number>
  ghIncrementWindow: (key: string, windowMs: number) => Promise<[number, number]>
}
type ScriptedRedis = Redis & ScriptCommands

export interface RedisStoreOptions {
  url: string
  prefix: string
  commandTimeoutMs: number
  connectTimeoutMs: number
  /** Called with connection problems (logged by the caller, never thrown). */
  onError?: (error: Error) => void
}

export function redisClientOptions (options: RedisStoreOptions): RedisOptions {
  return {
    lazyConnect: true,
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    maxRetriesPerRequest: 1,
    commandTimeout: options.commandTimeoutMs,
    connectTimeout: options.connectTimeoutMs,
    retryStrategy: (times: number) => Math.min(times * 100, 2000)
  }
}

export class RedisStore implements Store {
  readonly kind = 'redis' as const
  private subscriber: Redis | undefined
  private readonly handlers = new Map<string, Set<MessageHandler>>()
  private readonly reconnectListeners: Array<() => void> = []
  private readyOnce = false

  private constructor (private readonly client: ScriptedRedis, private readonly prefix: string) {
    client.defineCommand('ghCompareAndSwap', { numberOfKeys: 1, lua: COMPARE_AND_SWAP })
    client.defineCommand('ghIncrementWindow', { numberOfKeys: 1, lua: INCREMENT_WINDOW })
    client.on('ready', () => {
      if (this.readyOnce) for (const listener of this.reconnectListeners) listener()
      this.readyOnce = true
    })
  }

  /**
   * Connects (bounded by the connect timeout). When Redis does not answer, the store is still
   * returned: commands fail fast, readiness reports it, and the client keeps reconnecting.
   */
  static async connect (options: RedisStoreOptions): Promise<{ store: RedisStore, connected: boolean }> {
    const client = new Redis(options.url, redisClientOptions(options)) as ScriptedRedis
    client.on('error', (error: Error) => options.onError?.(error))
    const store = new RedisStore(client, options.prefix)
    // connectTimeout bounds the TCP connection only; a server that accepts and never answers
    // would hold connect() forever.
    const connected = await withTimeout(client.connect(), options.connectTimeoutMs).then(() => true, () => false)
    return { store, connected }
  }

  /** The underlying client, for plugins that take an ioredis instance. */
  get redis (): Redis {
    return this.client
  }

  private key (key: string): string {
    return this.prefix + key
  }

  async get (key: string): Promise<string | null> {
    return await this.client.get(this.key(key))
  }

  async set (key: string, value: string, ttlMs?: number): Promise<void> {
    if (ttlMs === undefined) await this.client.set(this.key(key), value)
    else await this.client.set(this.key(key), value, 'PX', ttlMs)
  }

  async setIfAbsent (key: string, value: string, ttlMs: number): Promise<boolean> {
    return (await this.client.set(this.key(key), value, 'PX', ttlMs, 'NX')) === 'OK'
  }

  async del (key: string): Promise<boolean> {
    return (await this.client.del(this.key(key))) > 0
  }

  async take (key: string): Promise<string | null> {
    return await this.client.getdel(this.key(key))
  }

  async compareAndSwap (key: string, expected: string, next: string, ttlMs?: number): Promise<boolean> {
    return (await this.client.ghCompareAndSwap(this.key(key), expected, next, ttlMs === undefined ? '' : String(ttlMs))) === 1
  }

  async increment (key: string, windowMs: number): Promise<Counter> {
    const [count, ttlMs] = await this.client.ghIncrementWindow(this.key(key), windowMs)
    return { count, ttlMs }
  }

  async publish (channel: string, message: string): Promise<void> {
    await this.client.publish(this.key(channel), message)
  }

  async subscribe (channel: string, handler: MessageHandler): Promise<() => Promise<void>> {
    const subscriber = await this.subscriberConnection()
    const name = this.key(channel)
    let handlers = this.handlers.get(name)
    if (handlers === undefined) {
      handlers = new Set()
      this.handlers.set(name, handlers)
      await subscriber.subscribe(name)
    }
    handlers.add(handler)
    return async () => {
      handlers.delete(handler)
      if (handlers.size === 0 && this.handlers.get(name) === handlers) {
        this.handlers.delete(name)
        await subscriber.unsubscribe(name).catch(() => {})
      }
    }
  }

  /**
   * Pub/sub needs a connection of its own. Unlike the command connection it queues while
   * Redis is away, so a subscription made during an outage takes effect when Redis returns;
   * ioredis resubscribes it after every reconnect.
   */
  private async subscriberConnection (): Promise<Redis> {
    if (this.subscriber === undefined) {
      const subscriber = this.client.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null, enableAutoPipelining: false })
      subscriber.on('error', () => {})
      subscriber.on('message', (channel: string, message: string) => {
        for (const handler of this.handlers.get(channel) ?? []) handler(message)
      })
      this.subscriber = subscriber
    }
    return this.subscriber
  }

  onReconnect (listener: () => void): void {
    this.reconnectListeners.push(listener)
  }

  async ping (): Promise<void> {
    await this.client.ping()
  }

  async close (): Promise<void> {
    this.handlers.clear()
    await Promise.all([this.client, this.subscriber].map(async connection => {
      if (connection === undefined) return
      if (connection.status !== 'ready') {
        connection.disconnect()
        return
      }
      await connection.quit().catch(() => connection.disconnect())
    }))
  }
}
