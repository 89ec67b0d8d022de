/*
 * The store contract: everything Gatehouse needs from Redis, in one interface with two
 * implementations — Redis (production, shared by every instance) and an in-process map
 * (the embedded default, one instance). One contract test suite runs against both.
 *
 * Keys and channels are logical names ("rl:1.2.3.4"); each implementation prepends its
 * namespace (REDIS_PREFIX), so several deployments or test files can share one Redis.
 * Every TTL is in milliseconds.
 */

export interface Counter {
  /** Value after this increment. */
  count: number
  /** Milliseconds until the window resets. */
  ttlMs: number
}

export type MessageHandler = (message: string) => void

export interface Store {
  readonly kind: 'redis' | 'memory'

  get: (key: string) => Promise<string | null>
  /** Sets a value, with a TTL when given. */
  set: (key: string, value: string, ttlMs?: number) => Promise<void>
  /** Sets only when the key is absent (SET NX); true when this call set it. */
  setIfAbsent: (key: string, value: string, ttlMs: number) => Promise<boolean>
  /** Deletes a key; true when it existed. */
  del: (key: string) => Promise<boolean>
  /** One-time consumption: returns the value and deletes it atomically, so only one caller ever gets it. */
  take: (key: string) => Promise<string | null>
  /**
   * Atomic compare-and-swap: replaces the value with `next` only when it currently equals
   * `expected`. The TTL is replaced when `ttlMs` is given, otherwise kept. True when swapped.
   */
  compareAndSwap: (key: string, expected: string, next: string, ttlMs?: number) => Promise<boolean>
  /** Fixed-window counter (rate limits): increments and starts the window on the first hit. */
  increment: (key: string, windowMs: number) => Promise<Counter>

  /** Publishes to every subscriber of the channel, on every instance sharing the store. */
  publish: (channel: string, message: string) => Promise<void>
  /** Subscribes; resolves once the subscription is active, with a function that ends it. */
  subscribe: (channel: string, handler: MessageHandler) => Promise<() => Promise<void>>
  /** Called whenever the store becomes ready again after a disconnection (to refill caches). */
  onReconnect: (listener: () => void) => void

  /** Resolves when the store answers; rejects otherwise. */
  ping: () => Promise<void>
  close: () => Promise<void>
}

export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError'
}
