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

/** What the store keeps of a session (its metadata lives in PostgreSQL). */
export interface SessionState {
  userId: string
  rememberMe: boolean
  /** Absolute expiry, ms since the epoch; never moved by a refresh. */
  expiresAt: number
  /** The active workspace, when any. */
  workspaceId: number | null
}

/**
 * The outcome of presenting a refresh token (its hash) for rotation:
 *  - rotated: it was the current token; the successor is now current.
 *  - grace:   it was the previous token, rotated less than the grace window ago; the
 *             successor (already current) is handed out again.
 *  - reused:  it was an earlier token of this session: the session has been deleted.
 *  - invalid: no such session or token (unknown, expired, revoked).
 */
export type RotationResult =
  | { status: 'rotated' | 'grace', session: SessionState }
  | { status: 'reused', userId: string }
  | { status: 'invalid' }

/**
 * The session's own refresh budget: `max` valid presentations per fixed window of `windowMs`.
 * Only a presentation that would rotate (or get the grace answer) is counted — the session id
 * is not secret, so anything else must not spend its budget.
 */
export interface RefreshLimit { max: number, windowMs: number }

/** A valid presentation past the session's refresh budget: nothing rotated. */
export interface RefreshLimited { status: 'limited', retryAfterMs: number }

export interface Revocation { id: string, until: number }

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
  /** Fixed-window counter (rate limits): adds `by` (default 1) and starts the window on the first hit. */
  increment: (key: string, windowMs: number, by?: number) => Promise<Counter>
  /**
   * Gives back one hit of a counter still in its window (a reservation that was not used);
   * never creates a counter, never moves its window.
   */
  release: (key: string) => Promise<void>

  /** Creates a session whose current refresh token has hash `tokenHash`; it expires at `state.expiresAt`. */
  createSession: (sessionId: string, state: SessionState, tokenHash: string) => Promise<void>
  getSession: (sessionId: string) => Promise<SessionState | null>
  /** Changes the active workspace of a live session; false when the session is gone. */
  setSessionWorkspace: (sessionId: string, workspaceId: number | null) => Promise<boolean>
  /**
   * Rotates atomically: if `presentedHash` is the current token's hash, `successorHash`
   * becomes current (see RotationResult). `now` and `graceMs` decide expiry and grace.
   */
  rotateRefreshToken: (sessionId: string, presentedHash: string, successorHash: string, now: number, graceMs: number) => Promise<RotationResult>
  /**
   * The same, and in the same atomic step a valid presentation (one that rotates or gets the
   * grace answer) is counted against the session's refresh budget; one past it is `limited`
   * and changes nothing else. Invalid and reused tokens are not counted.
   */
  rotateRefreshTokenWithLimit: (sessionId: string, presentedHash: string, successorHash: string, now: number, graceMs: number, limit: RefreshLimit) => Promise<RotationResult | RefreshLimited>
  /** Deletes a session and its token history; true when it existed. */
  deleteSession: (sessionId: string) => Promise<boolean>

  /** Records that `id` (of a kind: "session", "token" …) is revoked until `until` (ms). */
  addRevocation: (kind: string, id: string, until: number) => Promise<void>
  /** The revocations of a kind still in force at `now`. */
  listRevocations: (kind: string, now: number) => Promise<Revocation[]>

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
