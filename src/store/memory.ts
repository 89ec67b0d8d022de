import { EventEmitter } from 'node:events'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname } from 'node:path'
import type { Counter, MessageHandler, RefreshLimit, RefreshLimited, Revocation, RotationResult, SessionState, Store } from './types.js'

/*
 * The in-process store of the embedded default. JavaScript runs one callback at a time, so
 * each method is atomic the way a Lua script is atomic in Redis. Publish/subscribe reaches
 * only this process: the embedded default is a single instance by design.
 * With `snapshotFile`, unexpired entries are written on close and read back at start, so
 * that a restarted development server keeps its sessions — but not its counters (rate
 * limits, sign-in throttles): a restart is how a developer starts over.
 */

/** `counter`: made by `increment`, left out of the snapshot. */
interface Entry { value: string, expiresAt: number, counter?: true }

/** A session as the in-process store keeps it (JSON in an entry, so snapshots keep it too). */
interface StoredSession extends SessionState {
  current: string
  previous: string | null
  rotatedAt: number
  used: string[]
}

export interface MemoryStoreOptions {
  prefix?: string
  snapshotFile?: string
  now?: () => number
}

export class MemoryStore implements Store {
  readonly kind = 'memory' as const
  private readonly entries = new Map<string, Entry>()
  private readonly events = new EventEmitter()
  private readonly sweeper: NodeJS.Timeout
  private readonly prefix: string
  private readonly now: () => number

  private constructor (private readonly options: MemoryStoreOptions) {
    this.prefix = options.prefix ?? ''
    this.now = options.now ?? Date.now
    this.events.setMaxListeners(0)
    this.sweeper = setInterval(() => this.sweep(), 60_000).unref()
  }

  static async create (options: MemoryStoreOptions = {}): Promise<MemoryStore> {
    const store = new MemoryStore(options)
    if (options.snapshotFile !== undefined) await store.load(options.snapshotFile)
    return store
  }

  private live (key: string): Entry | undefined {
    const entry = this.entries.get(this.prefix + key)
    if (entry === undefined) return undefined
    if (entry.expiresAt <= this.now()) {
      this.entries.delete(this.prefix + key)
      return undefined
    }
    return entry
  }

  private expiry (ttlMs: number | undefined): number {
    return ttlMs === undefined ? Number.POSITIVE_INFINITY : this.now() + ttlMs
  }

  async get (key: string): Promise<string | null> {
    return this.live(key)?.value ?? null
  }

  async set (key: string, value: string, ttlMs?: number): Promise<void> {
    this.entries.set(this.prefix + key, { value, expiresAt: this.expiry(ttlMs) })
  }

  async setIfAbsent (key: string, value: string, ttlMs: number): Promise<boolean> {
    if (this.live(key) !== undefined) return false
    this.entries.set(this.prefix + key, { value, expiresAt: this.expiry(ttlMs) })
    return true
  }

  async del (key: string): Promise<boolean> {
    const existed = this.live(key) !== undefined
    this.entries.delete(this.prefix + key)
    return existed
  }

  async take (key: string): Promise<string | null> {
    const entry = this.live(key)
    if (entry === undefined) return null
    this.entries.delete(this.prefix + key)
    return entry.value
  }

  async compareAndSwap (key: string, expected: string, next: string, ttlMs?: number): Promise<boolean> {
    const entry = this.live(key)
    if (entry === undefined || entry.value !== expected) return false
    this.entries.set(this.prefix + key, { value: next, expiresAt: ttlMs === undefined ? entry.expiresAt : this.expiry(ttlMs) })
    return true
  }

  async increment (key: string, windowMs: number, by = 1): Promise<Counter> {
    return this.count(key, windowMs, by)
  }

  private count (key: string, windowMs: number, by: number): Counter {
    const entry = this.live(key)
    if (entry === undefined) {
      this.entries.set(this.prefix + key, { value: String(by), expiresAt: this.now() + windowMs, counter: true })
      return { count: by, ttlMs: windowMs }
    }
    const count = Number(entry.value) + by
    entry.value = String(count)
    return { count, ttlMs: Math.max(0, entry.expiresAt - this.now()) }
  }

  async release (key: string): Promise<void> {
    const entry = this.live(key)
    if (entry !== undefined) entry.value = String(Number(entry.value) - 1)
  }

  private readSession (sessionId: string): StoredSession | undefined {
    const entry = this.live(`sess:${sessionId}`)
    return entry === undefined ? undefined : JSON.parse(entry.value) as StoredSession
  }

  private writeSession (sessionId: string, session: StoredSession): void {
    this.entries.set(`${this.prefix}sess:${sessionId}`, { value: JSON.stringify(session), expiresAt: session.expiresAt })
  }

  async createSession (sessionId: string, state: SessionState, tokenHash: string): Promise<void> {
    this.writeSession(sessionId, { ...state, current: tokenHash, previous: null, rotatedAt: 0, used: [] })
  }

  async getSession (sessionId: string): Promise<SessionState | null> {
    const session = this.readSession(sessionId)
    if (session === undefined) return null
    return { userId: session.userId, rememberMe: session.rememberMe, expiresAt: session.expiresAt, workspaceId: session.workspaceId }
  }

  async setSessionWorkspace (sessionId: string, workspaceId: number | null): Promise<boolean> {
    const session = this.readSession(sessionId)
    if (session === undefined) return false
    this.writeSession(sessionId, { ...session, workspaceId })
    return true
  }

  async rotateRefreshToken (sessionId: string, presentedHash: string, successorHash: string, now: number, graceMs: number): Promise<RotationResult> {
    return await this.rotate(sessionId, presentedHash, successorHash, now, graceMs) as RotationResult
  }

  async rotateRefreshTokenWithLimit (sessionId: string, presentedHash: string, successorHash: string, now: number, graceMs: number, limit: RefreshLimit): Promise<RotationResult | RefreshLimited> {
    return await this.rotate(sessionId, presentedHash, successorHash, now, graceMs, limit)
  }

  /** Without `limit`, nothing is counted (and the answer is never `limited`). */
  private async rotate (sessionId: string, presentedHash: string, successorHash: string, now: number, graceMs: number, limit?: RefreshLimit): Promise<RotationResult | RefreshLimited> {
    const session = this.readSession(sessionId)
    if (session === undefined || now >= session.expiresAt) return { status: 'invalid' }
    const state: SessionState = { userId: session.userId, rememberMe: session.rememberMe, expiresAt: session.expiresAt, workspaceId: session.workspaceId }
    const current = presentedHash === session.current
    const grace = !current && presentedHash === session.previous && now - session.rotatedAt <= graceMs
    if (limit !== undefined && (current || grace)) {
      // Counted like any counter (left out of snapshots); synchronous, so atomic with the rotation.
      const { count, ttlMs } = this.count(`sess:${sessionId}:refreshes`, limit.windowMs, 1)
      if (count > limit.max) return { status: 'limited', retryAfterMs: ttlMs }
    }
    if (current) {
      this.writeSession(sessionId, {
        ...session,
        previous: session.current,
        current: successorHash,
        rotatedAt: now,
        used: [...session.used, session.current]
      })
      return { status: 'rotated', session: state }
    }
    if (grace) return { status: 'grace', session: state }
    if (session.used.includes(presentedHash)) {
      await this.deleteSession(sessionId)
      return { status: 'reused', userId: session.userId }
    }
    return { status: 'invalid' }
  }

  async deleteSession (sessionId: string): Promise<boolean> {
    return await this.del(`sess:${sessionId}`)
  }

  async addRevocation (kind: string, id: string, until: number): Promise<void> {
    const key = `rev:${kind}`
    const revoked = JSON.parse(this.live(key)?.value ?? '{}') as Record<string, number>
    revoked[id] = Math.max(revoked[id] ?? 0, until)
    this.entries.set(this.prefix + key, { value: JSON.stringify(revoked), expiresAt: Number.POSITIVE_INFINITY })
  }

  async listRevocations (kind: string, now: number): Promise<Revocation[]> {
    const key = `rev:${kind}`
    const revoked = JSON.parse(this.live(key)?.value ?? '{}') as Record<string, number>
    const live = Object.entries(revoked).filter(([, until]) => until > now)
    this.entries.set(this.prefix + key, { value: JSON.stringify(Object.fromEntries(live)), expiresAt: Number.POSITIVE_INFINITY })
    return live.map(([id, until]) => ({ id, until }))
  }

  async publish (channel: string, message: string): Promise<void> {
    const name = this.prefix + channel
    // Delivered asynchronously, as Redis delivers it, never inside the publisher's call.
    setImmediate(() => this.events.emit(name, message))
  }

  async subscribe (channel: string, handler: MessageHandler): Promise<() => Promise<void>> {
    const name = this.prefix + channel
    this.events.on(name, handler)
    return async () => { this.events.off(name, handler) }
  }

  onReconnect (): void {
    // An in-process store never disconnects.
  }

  async ping (): Promise<void> {}

  async close (): Promise<void> {
    clearInterval(this.sweeper)
    this.events.removeAllListeners()
    if (this.options.snapshotFile !== undefined) await this.save(this.options.snapshotFile)
  }

  private sweep (): void {
    const now = this.now()
    for (const [key, entry] of this.entries) {
      if (entry.expiresAt <= now) this.entries.delete(key)
    }
  }

  private async save (file: string): Promise<void> {
    this.sweep()
    const rows = [...this.entries].filter(([, entry]) => entry.counter !== true).map(([key, entry]) =>
      [key, entry.value, Number.isFinite(entry.expiresAt) ? entry.expiresAt : null])
    await mkdir(dirname(file), { recursive: true, mode: 0o700 })
    const temporary = `${file}.${process.pid}.tmp`
    await writeFile(temporary, JSON.stringify(rows), { mode: 0o600 })
    await rename(temporary, file)
  }

  private async load (file: string): Promise<void> {
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch {
      return
    }
    try {
      const rows = JSON.parse(text) as Array<[string, string, number | null]>
      const now = this.now()
      for (const [key, value, expiresAt] of rows) {
        const expiry = expiresAt ?? Number.POSITIVE_INFINITY
        if (expiry > now) this.entries.set(key, { value, expiresAt: expiry })
      }
    } catch {
      // A damaged snapshot only costs the development sessions it held.
    }
  }
}
