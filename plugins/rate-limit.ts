import rateLimit from '@fastify/rate-limit'
import type { FastifyReply, FastifyRequest, onRequestHookHandler, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { errors } from '../src/errors.js'
import { ipKey } from '../src/lib/ip-key.js'
import type { Store } from '../src/store/index.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * 'in-handler': the route is left out of the per-IP hook and counts its requests itself —
     * one that presents a valid session is charged to that session, any other calls
     * `fastify.limitAnonymous` (refresh and logout: SPEC decision 12, so that an office behind
     * one address does not sign its users out).
     */
    anonymousLimit?: 'in-handler'
  }
  interface FastifyInstance {
    /**
     * The per-IP hook's work, for a route that counts itself: counts the request against its
     * IP's RATE_LIMIT_MAX (or its user's or token's limit, when it carries a valid one), sets
     * the RateLimit headers and throws the 429. At most once per request.
     */
    limitAnonymous: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  }
}

/** Route paths under the per-IP limit of SPEC decision 8 (seed 002: all of /api/*; seed 000's /auth/*). */
const LIMITED_PREFIXES = ['/api/', '/auth/']

/**
 * Counters of signed-in users, counted in process and added to the shared counter in the
 * store in batches (every FLUSH_MS), so that authenticated traffic — the high-rate kind —
 * costs no store round trip per request. Each decision uses the last shared count plus what
 * this instance counted since; several instances may together overshoot a limit by what they
 * serve within one flush interval. When the store is down, the local counts still limit.
 */
const FLUSH_MS = 100

class BatchedCounters {
  /** shared: the store's count at its last answer; inFlight: sent, not yet answered; pending: not sent. */
  private readonly entries = new Map<string, { shared: number, inFlight: number, pending: number, resetAt: number, windowMs: number }>()
  private timer: NodeJS.Timeout | undefined

  constructor (private readonly store: Store) {}

  /** Counts a hit. The first hit of a key reads the shared count (one round trip); later ones are local. */
  increment (key: string, windowMs: number): { current: number, ttl: number } | Promise<{ current: number, ttl: number }> {
    const now = Date.now()
    const entry = this.entries.get(key)
    if (entry === undefined || entry.resetAt <= now) {
      const fresh = { shared: 0, inFlight: 0, pending: 0, resetAt: now + windowMs, windowMs }
      this.entries.set(key, fresh)
      return this.store.increment(key, windowMs).then(({ count, ttlMs }) => {
        fresh.shared = count
        fresh.resetAt = Date.now() + ttlMs
        return { current: fresh.shared + fresh.inFlight + fresh.pending, ttl: ttlMs }
      }, () => {
        fresh.shared += 1
        return { current: fresh.shared + fresh.inFlight + fresh.pending, ttl: windowMs }
      })
    }
    entry.pending++
    this.timer ??= setTimeout(() => { this.flush().catch(() => {}) }, FLUSH_MS).unref()
    return { current: entry.shared + entry.inFlight + entry.pending, ttl: entry.resetAt - now }
  }

  async flush (): Promise<void> {
    this.timer = undefined
    const now = Date.now()
    const work: Array<Promise<void>> = []
    for (const [key, entry] of this.entries) {
      if (entry.resetAt <= now) {
        this.entries.delete(key)
        continue
      }
      if (entry.pending === 0) continue
      const batch = entry.pending
      entry.pending = 0
      entry.inFlight += batch
      work.push(this.store.increment(key, entry.windowMs, batch).then(({ count, ttlMs }) => {
        // The store answers in order, so its count holds this batch and every earlier one.
        entry.inFlight -= batch
        entry.shared = count
        entry.resetAt = Date.now() + ttlMs
      }, () => {
        // The store is unreachable: keep counting here and try again with the next batch.
        entry.inFlight -= batch
        entry.shared += batch
      }))
    }
    await Promise.all(work)
  }

  close (): void {
    clearTimeout(this.timer)
  }
}

/**
 * @fastify/rate-limit's store interface over our store contract, so that the counters live
 * in Redis (shared by every instance) or, embedded, in the in-process store. Per-user keys
 * go through the batched counters.
 */
function storeAdapter (store: Store, batched: BatchedCounters, namespace: string) {
  return class ContractStore {
    // @fastify/rate-limit constructs the store with its options; the key prefix is ours.
    constructor (_options?: unknown, private readonly prefix: string = namespace) {}

    incr (key: string, callback: (error: Error | null, result?: { current: number, ttl: number }) => void, timeWindow: number): void {
      if (key.startsWith('user:') || key.startsWith('token:')) {
        const counted = batched.increment(this.prefix + key, timeWindow)
        if (counted instanceof Promise) counted.then(result => { callback(null, result) }, callback)
        else callback(null, counted)
        return
      }
      store.increment(this.prefix + key, timeWindow).then(
        ({ count, ttlMs }) => callback(null, { current: count, ttl: ttlMs }),
        (error: Error) => callback(error)
      )
    }

    /** A route with limits of its own counts apart from the others. */
    child (routeOptions: object): ContractStore {
      const { routeInfo } = routeOptions as { routeInfo?: { method?: string, url?: string } }
      return new ContractStore(undefined, `${this.prefix}${routeInfo?.method ?? ''}${routeInfo?.url ?? ''}:`)
    }
  }
}

/**
 * Unauthenticated /api/* traffic: RATE_LIMIT_MAX requests per RATE_LIMIT_WINDOW per IP
 * (default 100 per 15 minutes, seed 002); requests with a valid access token:
 * RATE_LIMIT_AUTHENTICATED_MAX per user; integration tokens RATE_LIMIT_TOKEN_MAX per token. With draft-spec RateLimit-* headers and a 429 in
 * the SPEC's error body. The client IP honours X-Forwarded-For only under TRUST_PROXY; an
 * IPv6 client counts per RATE_LIMIT_IPV6_PREFIX network (src/lib/ip-key.ts).
 * Routes opt out with `config: { rateLimit: false }` (health probes, public keys), or count
 * themselves with `config: { anonymousLimit: 'in-handler' }` (refresh, logout).
 * When the store is unreachable the limit is skipped rather than failing the request.
 */
export default fp(async (fastify) => {
  const { config } = fastify
  const batched = new BatchedCounters(fastify.store)
  fastify.addHook('onClose', async () => {
    batched.close()
    await batched.flush()
  })
  await fastify.register(rateLimit, {
    global: false,
    // Signed-in traffic is counted per user or per integration token (SPEC decision 8), the rest per IP.
    keyGenerator: request => request.auth === null
      ? ipKey(request.ip, config.RATE_LIMIT_IPV6_PREFIX)
      : request.auth.kind === 'integration' ? `token:${request.auth.token.id}` : `user:${request.auth.userId}`,
    max: (_request, key) => key.startsWith('user:')
      ? config.RATE_LIMIT_AUTHENTICATED_MAX
      : key.startsWith('token:') ? config.RATE_LIMIT_TOKEN_MAX : config.RATE_LIMIT_MAX,
    timeWindow: config.RATE_LIMIT_WINDOW,
    enableDraftSpec: true,
    skipOnError: true,
    store: storeAdapter(fastify.store, batched, 'rl:'),
    errorResponseBuilder: request => request.auth === null
      ? errors.tooManyRequests()
      : errors.tooManyRequests(request.auth.kind === 'integration'
        ? 'Too many requests with this integration token, please try again later.'
        : 'Too many requests, please try again later.')
  })

  const ipLimit: onRequestHookHandler = fastify.rateLimit()
  fastify.decorate('limitAnonymous', async (request: FastifyRequest, reply: FastifyReply) => {
    await (ipLimit as (request: FastifyRequest, reply: FastifyReply) => Promise<void>).call(fastify, request, reply)
  })
  fastify.addHook('onRoute', (route: RouteOptions) => {
    if (route.config?.rateLimit != null || route.config?.anonymousLimit === 'in-handler') return
    if (!LIMITED_PREFIXES.some(prefix => route.url.startsWith(prefix))) return
    const hooks = route.onRequest === undefined ? [] : Array.isArray(route.onRequest) ? route.onRequest : [route.onRequest]
    route.onRequest = [ipLimit, ...hooks]
  })
}, { name: 'rate-limit', dependencies: ['config', 'store'], fastify: '5.x' })
