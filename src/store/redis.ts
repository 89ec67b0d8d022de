import { Cluster, Redis, type RedisOptions } from 'ioredis'
import { withTimeout } from '../lib/timeout.js'
import type { Counter, MessageHandler, RefreshLimit, RefreshLimited, Revocation, RotationResult, SessionState, Store } from './types.js'

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
local count = redis.call('INCRBY', KEYS[1], ARGV[2] or 1)
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}`

/* Takes back one hit of a live counter; DECR keeps the TTL, and a missing key is not created. */
const RELEASE = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('DECR', KEYS[1])`

/*
 * Sessions: a hash `sess:{id}` (uid, rem, exp, wid, cur, prev, rot) and a set
 * `sess:{id}:used` of every retired token hash; both expire at the session's absolute
 * expiry. `sess:{id}:refreshes` counts the session's valid presentations per window (its
 * refresh limit). The braces make them one hash slot, so the rotation script also runs on a
 * Cluster.
 *   KEYS: session, used, refreshes
 *   ARGV: presented hash, successor hash, now ms, grace ms, limit (0: none), window ms
 */
const ROTATE_REFRESH_TOKEN = `
local s = redis.call('HMGET', KEYS[1], 'uid', 'rem', 'exp', 'wid', 'cur', 'prev', 'rot')
if not s[1] then return {'invalid'} end
local now = tonumber(ARGV[3])
local exp = tonumber(s[3])
if now >= exp then return {'invalid'} end
local current = ARGV[1] == s[5]
if current or (s[6] and ARGV[1] == s[6] and now - tonumber(s[7]) <= tonumber(ARGV[4])) then
  local max = tonumber(ARGV[5])
  if max > 0 then
    local count = redis.call('INCR', KEYS[3])
    local ttl = redis.call('PTTL', KEYS[3])
    if ttl < 0 then
      redis.call('PEXPIRE', KEYS[3], ARGV[6])
      ttl = tonumber(ARGV[6])
    end
    if count > max then return {'limited', tostring(ttl)} end
  end
  if not current then return {'grace', s[1], s[2], s[3], s[4]} end
  redis.call('HSET', KEYS[1], 'prev', s[5], 'cur', ARGV[2], 'rot', ARGV[3])
  redis.call('SADD', KEYS[2], s[5])
  redis.call('PEXPIREAT', KEYS[2], exp)
  return {'rotated', s[1], s[2], s[3], s[4]}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {'reused', s[1]}
end
return {'invalid'}`

/* Sets a field of a hash only if the hash exists (HSET alone would create it, without TTL). */
const SET_IF_EXISTS = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1`

/* Revocations: a sorted set per kind, member = id, score = until (ms); old ones pruned on write. */
const ADD_REVOCATION = `
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
return 1`

/*
 * PUBLISH with the channel as its key: on a Cluster, ioredis sends a keyless PUBLISH to any
 * node, and messages of one channel sent through different nodes can overtake each other on
 * the cluster bus. Routed by the channel's slot, one channel's messages always leave from one
 * node, in order. The same on a single server and under Sentinel.
 */
const PUBLISH = 'return redis.call(\'PUBLISH\', KEYS[1], ARGV[1])'

interface ScriptCommands {
  ghPublish: (channel: string, message: string) => Promise<number>
  ghRotateRefreshToken: (session: string, used: string, refreshes: string, presented: string, successor: string, now: number, grace: number, max: number, windowMs: number) => Promise<string[]>
  ghRelease: (key: string) => Promise<number>
  ghAddRevocation: (key: string, id: string, until: number, now: number) => Promise<number>
  ghSetIfExists: (key: string, field: string, value: string) => Promise<number>
  ghCompareAndSwap: (key: string, expected: string, next: string, ttlMs: string) => Promise<number>
  ghIncrementWindow: (key: string, windowMs: number, by: number) => Promise<[number, number]>
}
type Connection = Redis | Cluster
type ScriptedRedis = Connection & ScriptCommands

export interface HostPort { host: string, port: number }

export interface RedisStoreOptions {
  /** A single server; with Sentinel or Cluster, only its credentials are used. */
  url?: string
  /** Sentinel: the sentinels, and the name of the master they monitor. */
  sentinels?: HostPort[]
  sentinelName?: string
  /** Cluster: its startup nodes (every key of one atomic script shares a hash slot). */
  clusterNodes?: HostPort[]
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

/** The connection for a server, a Sentinel-managed master, or a Cluster. */
function createConnection (options: RedisStoreOptions): Connection {
  const base = redisClientOptions(options)
  const credentials: RedisOptions = {}
  if (options.url !== undefined) {
    const url = new URL(options.url)
    if (url.username !== '') credentials.username = decodeURIComponent(url.username)
    if (url.password !== '') credentials.password = decodeURIComponent(url.password)
    if (url.protocol === 'rediss:') credentials.tls = {}
  }
  if (options.clusterNodes !== undefined && options.clusterNodes.length > 0) {
    const { lazyConnect, enableOfflineQueue, enableAutoPipelining, retryStrategy, ...perNode } = base
    return new Cluster(options.clusterNodes, {
      lazyConnect,
      enableOfflineQueue,
      enableAutoPipelining,
      clusterRetryStrategy: retryStrategy as (times: number) => number,
      redisOptions: { ...perNode, ...credentials }
    })
  }
  if (options.sentinels !== undefined && options.sentinels.length > 0) {
    return new Redis({ ...base, ...credentials, sentinels: options.sentinels, name: options.sentinelName ?? 'mymaster' })
  }
  if (options.url === undefined) throw new Error('Redis needs a URL, sentinels or cluster nodes')
  return new Redis(options.url, base)
}

export class RedisStore implements Store {
  readonly kind = 'redis' as const
  private subscriber: Connection | undefined
  private readonly handlers = new Map<string, Set<MessageHandler>>()
  private readonly reconnectListeners: Array<() => void> = []
  private readyOnce = false

  private constructor (private readonly client: ScriptedRedis, private readonly prefix: string) {
    client.defineCommand('ghCompareAndSwap', { numberOfKeys: 1, lua: COMPARE_AND_SWAP })
    client.defineCommand('ghIncrementWindow', { numberOfKeys: 1, lua: INCREMENT_WINDOW })
    client.defineCommand('ghRelease', { numberOfKeys: 1, lua: RELEASE })
    client.defineCommand('ghRotateRefreshToken', { numberOfKeys: 3, lua: ROTATE_REFRESH_TOKEN })
    client.defineCommand('ghAddRevocation', { numberOfKeys: 1, lua: ADD_REVOCATION })
    client.defineCommand('ghSetIfExists', { numberOfKeys: 1, lua: SET_IF_EXISTS })
    client.defineCommand('ghPublish', { numberOfKeys: 1, lua: PUBLISH })
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
    const client = createConnection(options) as ScriptedRedis
    client.on('error', (error: Error) => options.onError?.(error))
    const store = new RedisStore(client, options.prefix)
    // connectTimeout bounds the TCP connection only; a server that accepts and never answers
    // would hold connect() forever.
    const connected = await withTimeout(client.connect(), options.connectTimeoutMs).then(() => true, () => false)
    return { store, connected }
  }

  /** The underlying client, for plugins that take an ioredis instance. */
  get redis (): Connection {
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

  async increment (key: string, windowMs: number, by = 1): Promise<Counter> {
    const [count, ttlMs] = await this.client.ghIncrementWindow(this.key(key), windowMs, by)
    return { count, ttlMs }
  }

  async release (key: string): Promise<void> {
    await this.client.ghRelease(this.key(key))
  }

  private sessionKey (sessionId: string): string {
    return this.key(`sess:{${sessionId}}`)
  }

  async createSession (sessionId: string, state: SessionState, tokenHash: string): Promise<void> {
    const key = this.sessionKey(sessionId)
    await this.client.multi()
      .hset(key, {
        uid: state.userId,
        rem: state.rememberMe ? '1' : '0',
        exp: String(state.expiresAt),
        wid: state.workspaceId === null ? '' : String(state.workspaceId),
        cur: tokenHash,
        rot: '0'
      })
      .pexpireat(key, state.expiresAt)
      .exec()
  }

  async getSession (sessionId: string): Promise<SessionState | null> {
    const [uid, rem, exp, wid] = await this.client.hmget(this.sessionKey(sessionId), 'uid', 'rem', 'exp', 'wid')
    if (uid === null || uid === undefined) return null
    return sessionState([uid, rem ?? '0', exp ?? '0', wid ?? ''])
  }

  async setSessionWorkspace (sessionId: string, workspaceId: number | null): Promise<boolean> {
    return (await this.client.ghSetIfExists(this.sessionKey(sessionId), 'wid', workspaceId === null ? '' : String(workspaceId))) === 1
  }

  async rotateRefreshToken (sessionId: string, presentedHash: string, successorHash: string, now: number, graceMs: number): Promise<RotationResult> {
    return await this.rotate(sessionId, presentedHash, successorHash, now, graceMs, { max: 0, windowMs: 0 }) as RotationResult
  }

  async rotateRefreshTokenWithLimit (sessionId: string, presentedHash: string, successorHash: string, now: number, graceMs: number, limit: RefreshLimit): Promise<RotationResult | RefreshLimited> {
    return await this.rotate(sessionId, presentedHash, successorHash, now, graceMs, limit)
  }

  /** One script for both: a limit of 0 counts nothing (and is never `limited`). */
  private async rotate (sessionId: string, presentedHash: string, successorHash: string, now: number, graceMs: number, limit: RefreshLimit): Promise<RotationResult | RefreshLimited> {
    const key = this.sessionKey(sessionId)
    const result = await this.client.ghRotateRefreshToken(key, `${key}:used`, `${key}:refreshes`, presentedHash, successorHash, now, graceMs, limit.max, limit.windowMs)
    const status = result[0]
    if (status === 'rotated' || status === 'grace') return { status, session: sessionState(result.slice(1)) }
    if (status === 'reused') return { status, userId: result[1]! }
    if (status === 'limited') return { status, retryAfterMs: Number(result[1]) }
    return { status: 'invalid' }
  }

  async deleteSession (sessionId: string): Promise<boolean> {
    const key = this.sessionKey(sessionId)
    return (await this.client.del(key, `${key}:used`)) > 0
  }

  async addRevocation (kind: string, id: string, until: number): Promise<void> {
    await this.client.ghAddRevocation(this.key(`rev:${kind}`), id, until, Date.now())
  }

  async listRevocations (kind: string, now: number): Promise<Revocation[]> {
    const flat = await this.client.zrangebyscore(this.key(`rev:${kind}`), `(${now}`, '+inf', 'WITHSCORES')
    const revocations: Revocation[] = []
    for (let i = 0; i < flat.length; i += 2) revocations.push({ id: flat[i]!, until: Number(flat[i + 1]) })
    return revocations
  }

  async publish (channel: string, message: string): Promise<void> {
    await this.client.ghPublish(this.key(channel), message)
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
  private async subscriberConnection (): Promise<Connection> {
    if (this.subscriber === undefined) {
      const subscriber = this.client instanceof Cluster
        ? this.client.duplicate(undefined, { enableOfflineQueue: true, enableAutoPipelining: false, redisOptions: { ...this.client.options.redisOptions, maxRetriesPerRequest: null } })
        : this.client.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null, enableAutoPipelining: false })
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

function sessionState ([uid, rem, exp, wid]: string[]): SessionState {
  return { userId: uid!, rememberMe: rem === '1', expiresAt: Number(exp), workspaceId: wid === '' || wid === undefined ? null : Number(wid) }
}
