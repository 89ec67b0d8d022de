import { createHash, randomBytes } from 'node:crypto'
import fp from 'fastify-plugin'
import { sql, type Selectable } from 'kysely'
import type { IntegrationTokensTable, TokenScope } from '../src/db/types.js'

/** What a request needs to know about a live integration token. */
export interface IntegrationTokenRecord {
  id: string
  userId: string
  workspaceId: number
  scope: TokenScope
  /** ms since the epoch, or null for a token that does not expire. */
  expiresAt: number | null
  /** When its last use was (or will be) written, ms; for the once-a-minute batching. */
  lastUsedWritten: number
  /**
   * A revoked token authenticates nothing, but its record says whose it was: a deactivated
   * user's revoked token is told why (403 USER_INACTIVE), as the user's revoked sessions are.
   */
  revoked: boolean
}

export interface IntegrationTokens {
  /** Matches `Authorization: Bearer <prefix><43 characters>` and captures the token. */
  bearer: RegExp
  /**
   * The live token for a raw token: synchronously when cached (the steady state: no query),
   * otherwise a promise (one query). Undefined for an unknown or expired token; a revoked
   * one comes with `revoked` set.
   */
  lookup: (raw: string) => IntegrationTokenRecord | undefined | Promise<IntegrationTokenRecord | undefined>
  /** Notes a use: `lastUsedAt` is written in batches, at most about once a minute per token. */
  used: (record: IntegrationTokenRecord) => void
  /** A new raw token, its SHA-256 (what is stored) and its displayable prefix. */
  generate: () => { token: string, hash: string, prefix: string }
  /** After tokens were revoked in PostgreSQL: drops them from every instance's cache at once. */
  revoked: (ids: string[]) => Promise<void>
}

declare module 'fastify' {
  interface FastifyInstance {
    integrationTokens: IntegrationTokens
  }
}

const CHANNEL = 'tokens'
const CACHE_MAX = 100_000
/** Positive entries are re-read after this long even without a message (a safety net). */
const LIVE_TTL = 5 * 60_000
/** Unknown tokens are remembered briefly, so that a bad token does not cost a query per request. */
const UNKNOWN_TTL = 10_000
/** lastUsedAt is accurate to a minute: written when the last write is this old, flushed this often. */
const WRITE_AFTER = 45_000
const FLUSH_EVERY = 15_000

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex')

type Entry = { at: number, record: IntegrationTokenRecord | undefined }

/**
 * Integration tokens (seed 003; SPEC "Tokens and sessions"): `<prefix><256 random bits>`,
 * stored only as SHA-256. Verification is an in-process cache keyed by that hash: the steady
 * state costs no database query and no write per request. Revocation publishes the token id
 * on the store's pub/sub so that every instance drops it at once; a reconnection to the store
 * clears the cache (messages may have been missed). `lastUsedAt` is written in batches.
 */
export default fp(async (fastify) => {
  const { config, db, store } = fastify
  const prefix = config.INTEGRATION_TOKEN_PREFIX
  const cache = new Map<string, Entry>()
  const hashOfId = new Map<string, string>()

  // Bumped by every revocation heard: a database read that began before one may have seen the
  // token still live, so its answer serves that one request but is not cached.
  let generation = 0
  const forget = (id: string): void => {
    generation++
    const hash = hashOfId.get(id)
    if (hash !== undefined) cache.delete(hash)
    hashOfId.delete(id)
  }
  const remember = (hash: string, entry: Entry): void => {
    if (cache.size >= CACHE_MAX) {
      const [oldest, old] = cache.entries().next().value!
      cache.delete(oldest)
      if (old.record !== undefined) hashOfId.delete(old.record.id)
    }
    cache.set(hash, entry)
    if (entry.record !== undefined) hashOfId.set(entry.record.id, hash)
  }

  let unsubscribe: (() => Promise<void>) | undefined
  const listen = async (): Promise<void> => {
    unsubscribe ??= await store.subscribe(CHANNEL, forget)
    generation++
    cache.clear()
    hashOfId.clear()
  }
  await listen().catch(error => { fastify.log.warn({ err: error }, 'store unavailable: integration-token revocations will be heard when it answers') })
  store.onReconnect(() => { listen().catch(error => fastify.log.warn({ err: error }, 'could not resubscribe to token revocations')) })

  const load = async (hash: string): Promise<IntegrationTokenRecord | undefined> => {
    const row: Pick<Selectable<IntegrationTokensTable>, 'id' | 'user_id' | 'workspace_id' | 'scope' | 'expires_at' | 'last_used_at' | 'revoked_at'> | undefined =
      await db.selectFrom('integration_tokens')
        .select(['id', 'user_id', 'workspace_id', 'scope', 'expires_at', 'last_used_at', 'revoked_at'])
        .where('token_hash', '=', hash)
        .executeTakeFirst()
    return row === undefined
      ? undefined
      : {
          id: row.id,
          userId: row.user_id,
          workspaceId: row.workspace_id,
          scope: row.scope,
          expiresAt: row.expires_at === null ? null : new Date(row.expires_at).getTime(),
          lastUsedWritten: row.last_used_at === null ? 0 : new Date(row.last_used_at).getTime(),
          revoked: row.revoked_at !== null
        }
  }

  const live = (record: IntegrationTokenRecord | undefined): IntegrationTokenRecord | undefined =>
    record !== undefined && (record.expiresAt === null || record.expiresAt > fastify.now()) ? record : undefined

  const lookup = (raw: string): IntegrationTokenRecord | undefined | Promise<IntegrationTokenRecord | undefined> => {
    const hash = sha256(raw)
    const now = Date.now()
    const hit = cache.get(hash)
    if (hit !== undefined && now - hit.at < (hit.record === undefined ? UNKNOWN_TTL : LIVE_TTL)) return live(hit.record)
    const started = generation
    return load(hash).then(record => {
      if (generation === started) remember(hash, { at: now, record })
      return live(record)
    })
  }

  // --- lastUsedAt, in batches -----------------------------------------------------------------
  let pending = new Map<string, number>()
  const flush = async (): Promise<void> => {
    if (pending.size === 0) return
    const batch = pending
    pending = new Map()
    const rows = [...batch].map(([id, at]) => sql`(${id}::uuid, ${new Date(at).toISOString()}::timestamptz)`)
    await sql`UPDATE integration_tokens AS t SET last_used_at = v.at
      FROM (VALUES ${sql.join(rows)}) AS v(id, at)
      WHERE t.id = v.id AND (t.last_used_at IS NULL OR t.last_used_at < v.at)`.execute(db)
  }
  const flusher = setInterval(() => {
    flush().catch(error => fastify.log.warn({ err: error }, 'could not record integration-token use'))
  }, FLUSH_EVERY).unref()
  fastify.addHook('onClose', async () => {
    clearInterval(flusher)
    await flush().catch(() => {})
    await unsubscribe?.().catch(() => {})
  })

  const escaped = prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  fastify.decorate('integrationTokens', {
    bearer: new RegExp(`^Bearer +(${escaped}[A-Za-z0-9_-]{43}) *$`, 'i'),
    lookup,
    used (record) {
      const now = fastify.now()
      if (now - record.lastUsedWritten < WRITE_AFTER) return
      record.lastUsedWritten = now
      pending.set(record.id, now)
    },
    generate () {
      const token = `${prefix}${randomBytes(32).toString('base64url')}`
      return { token, hash: sha256(token), prefix: token.slice(0, prefix.length + 10) }
    },
    async revoked (ids) {
      for (const id of ids) {
        forget(id)
        await store.publish(CHANNEL, id)
      }
    }
  } satisfies IntegrationTokens)
}, { name: 'integration-tokens', dependencies: ['config', 'db', 'store'], fastify: '5.x' })
