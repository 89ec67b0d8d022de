import cookie from '@fastify/cookie'
import type { FastifyReply, FastifyRequest, preParsingHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import type { Insertable, Kysely, Transaction } from 'kysely'
import { isProduction, serverOrigins } from '../src/config.js'
import type { Database, SessionsTable } from '../src/db/types.js'
import { prepared } from '../src/db/index.js'
import { errors } from '../src/errors.js'
import { hashToken, newRefreshToken, newSessionId, sessionIdOf, successorOf } from '../src/auth/refresh-tokens.js'
import { audit, USER_COLUMNS, type UserRecord } from '../src/auth/users.js'
import type { SessionState } from '../src/store/types.js'
import { MESSAGES } from '../src/tenancy/policy.js'
import { workspaceForSignIn } from '../src/tenancy/workspaces.js'
import type { AccessTokenClaims } from './keys.js'
import type { IntegrationTokenRecord } from './integration-tokens.js'

/**
 * Who made a request: a verified access token of a browser session, or a live integration
 * token (seed 003), which acts for its member in its one workspace.
 */
export type Auth =
  | { kind: 'session', userId: string, sessionId: string, role: 'ADMIN' | 'MEMBER', workspaceId: number | null, token: null }
  | { kind: 'integration', userId: string, sessionId: null, role: null, workspaceId: number, token: IntegrationTokenRecord }

/** The tokens a sign-in answers (see `sessionTokens`). */
export interface SessionTokens { accessToken: string, expiresIn: number, refreshToken?: string }

/** Where a request came from, for session metadata and the audit log. */
export interface Origin { ip: string, userAgent?: string }

export type SignInMethod = 'password' | 'bootstrap' | 'magic_link' | 'oauth'

export interface StartSession {
  user: Pick<UserRecord, 'id' | 'role' | 'email' | 'name'>
  method: SignInMethod
  rememberMe: boolean
  origin: Origin
  /** The session's active workspace; `start` finds (or makes) one when it is not given. */
  workspaceId?: number | null
  /** The sign-in proved the e-mail address: pending invitations to it are accepted. */
  emailProven?: boolean
}

export interface IssuedSession {
  sessionId: string
  refreshToken: string
  accessToken: string
  /** Seconds until the access token expires. */
  expiresIn: number
  rememberMe: boolean
  /** Absolute expiry of the session, ms. */
  expiresAt: number
  /** Workspaces whose invitations this sign-in accepted (for the membership caches, after commit). */
  joined?: number[]
}

/** Who ends a session, for the audit log. */
export interface Actor { userId?: string | null, origin?: Origin }

export interface PendingSession {
  sessionId: string
  refreshToken: string
  state: SessionState
  row: Insertable<SessionsTable>
}

export type RevokeReason = 'logout' | 'logout_all' | 'revoked' | 'refresh_reuse' | 'user_deactivated' | 'mailbox_proven'

/** What a token presented to end a session proved (see `sessionOfRefreshToken`). */
export type PresentedSession =
  | { status: 'live' | 'over', sessionId: string }
  | { status: 'invalid' }

export interface Sessions {
  /**
   * Creates a session for a user who has just signed in: its state in the store, its
   * metadata row in PostgreSQL (in the caller's transaction, so that a failed sign-in leaves
   * nothing behind) and its first tokens.
   */
  start: (trx: Transaction<Database>, options: StartSession) => Promise<IssuedSession>
  /**
   * The same in two steps, for a sign-in that writes its rows in one statement: `prepare`
   * makes the session and its metadata row (for the caller to insert); `activate` runs the
   * caller's `write` (which inserts the row and answers the user) while it creates the
   * session in the store, undoes either when the other fails, and issues the tokens.
   */
  prepare: (options: StartSession) => PendingSession
  activate: <U extends Pick<UserRecord, 'id' | 'role'>>(pending: PendingSession, write: () => Promise<U>) => Promise<{ session: IssuedSession, user: U }>
  /**
   * Rotates a refresh token; throws 401 for an invalid or reused one, 403 for an inactive
   * user, 429 past the session's REFRESH_MAX_PER_SESSION (only valid tokens count).
   */
  refresh: (refreshToken: string, origin: Origin) => Promise<IssuedSession>
  /**
   * The session a refresh token names, for a client that wants it ended (logout): `live` for
   * the current (or grace) token of a live session; `over` for a token that was already
   * rotated — reuse, which revokes the whole session here exactly as on refresh (store,
   * every instance, PostgreSQL, audit); `invalid` for anything else.
   */
  sessionOfRefreshToken: (refreshToken: string, origin: Origin) => Promise<PresentedSession>
  /**
   * The session an access token names, expired or not (a logout with it still ends the
   * session): `over` when the session is revoked already, `invalid` when it does not verify.
   */
  sessionOfAccessToken: (accessToken: string) => Promise<PresentedSession>
  /** Ends a session everywhere: store, revocation set on every instance, PostgreSQL. */
  revoke: (sessionId: string, reason: RevokeReason, actor: Actor) => Promise<void>
  /** Ends every live session of a user (but `except`); how many. */
  revokeAll: (userId: string, reason: RevokeReason, actor: Actor, except?: string) => Promise<number>
  /**
   * Ends every live session of a user inside the caller's transaction (no audit row: the
   * caller writes its own); their ids. The rows are marked revoked in `trx`, and the sessions
   * end in the store and on every instance at once, before the caller commits: a store failure
   * rolls the caller's transaction back, and a rollback after it leaves them ended — never
   * marked ended while their refresh tokens still work.
   */
  revokeAllIn: (trx: Transaction<Database>, userId: string, reason: RevokeReason) => Promise<string[]>
  /** Is this session revoked (in-process, no store round trip)? */
  isRevoked: (sessionId: string) => boolean
  /**
   * Makes `workspaceId` the session's active workspace and issues an access token for it; null
   * when the session has ended meanwhile (the route answers its own 401).
   */
  switchWorkspace: (sessionId: string, user: Pick<UserRecord, 'id' | 'role'>, workspaceId: number) => Promise<{ accessToken: string, expiresIn: number, expiresAt: number, rememberMe: boolean } | null>
}

export interface Users {
  /** A user by id, from a short-lived in-process cache invalidated on every change. */
  get: (id: string) => Promise<UserRecord | undefined>
  /** Drops a user from every instance's cache (after any change to the row). */
  changed: (id: string) => Promise<void>
  /** Drops a user from this instance's cache only (a change others may see 30 s late). */
  forget: (id: string) => void
  /** The cached user when the cache has a fresh, loaded entry; undefined otherwise. */
  peek: (id: string) => UserRecord | undefined
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Whose 401 texts the route answers when no `messages` are given (UNAUTHORIZED_MESSAGES). */
    unauthorized?: keyof typeof UNAUTHORIZED_MESSAGES
  }
  interface FastifyRequest {
    /** The verified access token of the request, or null. */
    auth: Auth | null
    /** Set when an Authorization header was sent but did not verify. */
    authInvalid: boolean
    /** The user of a valid token whose session is revoked, or of a revoked integration token. */
    revokedUserId: string | null
    /** The signed-in user, set by `fastify.authenticate`. */
    user: UserRecord | null
  }
  interface FastifyInstance {
    sessions: Sessions
    users: Users
    /** 401 without a valid access token, 403 for an inactive user or an integration token (browser sessions only). */
    authenticate: (request: FastifyRequest) => Promise<void>
    /**
     * 401 without a valid access token or integration token (with `messages`' texts), 403 for
     * an inactive user; sets `request.user`. For routes that integration tokens may call.
     */
    signedIn: (request: FastifyRequest, messages?: UnauthorizedMessages) => Promise<void>
    /** preParsing hook: authenticate, then 403 unless the user is a global ADMIN. */
    authenticateAdmin: (request: FastifyRequest) => Promise<void>
    /**
     * For a write that lets someone into an account or its workspace, first in its transaction:
     * holds the caller's user row until the commit, and asks the database what
     * the auth hook asked its caches — the user is active (else 403 USER_INACTIVE) and the
     * session or integration token is not revoked (else the route's 401); answers the user's
     * global role. A mailbox proof or a deactivation under way is waited for and its outcome
     * seen; one that begins later waits for this write, and then voids it with the rest.
     */
    lockCaller: (trx: Transaction<Database>, request: FastifyRequest) => Promise<{ role: 'ADMIN' | 'MEMBER' }>
    /** `authenticate` as a preParsing hook, synchronous when the user is cached. */
    authenticateHook: preParsingHookHandler
    /** Sets the refresh_token and access_token cookies. */
    setSessionCookies: (reply: FastifyReply, session: IssuedSession) => void
    /**
     * Sets the session cookies and answers the tokens of a sign-in: the refresh token in the
     * body only to clients that sent no Origin (scripts, mobile apps); browsers get it only as
     * the HttpOnly cookie.
     */
    sessionTokens: (request: FastifyRequest, reply: FastifyReply, session: IssuedSession) => SessionTokens
    clearSessionCookies: (reply: FastifyReply) => void
    /** Replaces the access_token cookie (the WebSocket's) after a workspace switch. */
    setAccessCookie: (reply: FastifyReply, accessToken: string) => void
    /** Refuses a cookie-authenticated POST from an origin that is not ours, or that is not JSON. */
    checkCookieRequest: (request: FastifyRequest) => void
    /** The client's origin: IP (under TRUST_PROXY) and user agent. */
    originOf: (request: FastifyRequest) => Origin
  }
}

/** The 401 texts of TOKEN_REQUIRED (no token) and TOKEN_INVALID (a token that does not verify). */
export interface UnauthorizedMessages { required: string, invalid: string }
/**
 * One text per code, except where a seed prescribes its own for its routes: seed 004's by
 * default; seed 002's "No token provided" on its GET /api/user/me; seed 003's "Authentication
 * required." (for both) on its workspace routes, those with a tenancy `action`.
 */
export const UNAUTHORIZED_MESSAGES = {
  default: { required: 'Access token required', invalid: 'Invalid or expired token' },
  seed002: { required: 'No token provided', invalid: 'Invalid or expired token' },
  seed003: { required: MESSAGES.authRequired, invalid: MESSAGES.authRequired }
} as const satisfies Record<string, UnauthorizedMessages>

const CHANNEL = 'auth'
const USER_CACHE_TTL = 30_000
const USER_CACHE_MAX = 100_000
const CLOCK_TOLERANCE = 5_000
const BEARER = /^Bearer +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+) *$/i

export const REFRESH_COOKIE = 'refresh_token'
export const ACCESS_COOKIE = 'access_token'

/**
 * Authentication for every route: verifies the bearer access token once per request
 * (fast-jwt, with its bounded verification cache), refuses revoked sessions from an
 * in-process set fed by the store's pub/sub, and keeps users in a 30 s cache that every
 * change invalidates on every instance — so an authenticated request costs no database
 * query and no store round trip. Also the session service (sign-in, refresh rotation,
 * revocation) and the session cookies.
 */
export default fp(async (fastify) => {
  const { config, store, db, keys, integrationTokens } = fastify
  const production = isProduction(config)
  const graceMs = config.REFRESH_GRACE
  const refreshLimit = { max: config.REFRESH_MAX_PER_SESSION, windowMs: config.RATE_LIMIT_WINDOW }
  const revokedFor = config.JWT_ACCESS_TTL + CLOCK_TOLERANCE

  await fastify.register(cookie, { hook: false })

  // --- revoked sessions: in-process, fed by pub/sub, refilled from the store ---------------
  const revoked = new Map<string, number>()
  const userCache = new Map<string, { at: number, user: Promise<UserRecord | undefined>, loaded?: UserRecord }>()

  const onMessage = (message: string): void => {
    const [kind, id, until] = message.split(':')
    if (kind === 's' && id !== undefined) revoked.set(id, Number(until))
    if (kind === 'u' && id !== undefined) userCache.delete(id)
  }
  const refill = async (): Promise<void> => {
    userCache.clear()
    for (const { id, until } of await store.listRevocations('session', Date.now())) revoked.set(id, until)
  }
  // Subscribe first, then read what was revoked before: nothing falls between the two. When
  // the store is down at start the server still starts (readiness says so) and catches up
  // when the store comes back.
  let unsubscribe: (() => Promise<void>) | undefined
  const catchUp = async (): Promise<void> => {
    unsubscribe ??= await store.subscribe(CHANNEL, onMessage)
    await refill()
  }
  await catchUp().catch(error => { fastify.log.warn({ err: error }, 'store unavailable: the revocation set will be filled when it answers') })
  store.onReconnect(() => {
    catchUp().catch(error => fastify.log.warn({ err: error }, 'could not refill the revocation set'))
  })
  const prune = setInterval(() => {
    const now = Date.now()
    for (const [id, until] of revoked) if (until <= now) revoked.delete(id)
  }, 60_000).unref()

  // --- last use of sessions, written in batches ---------------------------------------------
  let lastUsed = new Map<string, Date>()
  const flushLastUsed = async (): Promise<void> => {
    if (lastUsed.size === 0) return
    const batch = lastUsed
    lastUsed = new Map()
    for (const [id, at] of batch) {
      await db.updateTable('sessions').set({ last_used_at: at }).where('id', '=', id).where('last_used_at', '<', at).execute()
    }
  }
  const flusher = setInterval(() => {
    flushLastUsed().catch(error => fastify.log.warn({ err: error }, 'could not record session use'))
  }, 15_000).unref()

  fastify.addHook('onClose', async () => {
    clearInterval(prune)
    clearInterval(flusher)
    await flushLastUsed().catch(() => {})
    await unsubscribe?.().catch(() => {})
  })

  // --- users -----------------------------------------------------------------------------
  const loadUser = async (id: string): Promise<UserRecord | undefined> =>
    (await prepared(db, db.selectFrom('users').select(USER_COLUMNS).where('id', '=', id)))[0]

  const users: Users = {
    async get (id) {
      const now = Date.now()
      const cached = userCache.get(id)
      if (cached !== undefined && now - cached.at < USER_CACHE_TTL) return await cached.user
      if (userCache.size >= USER_CACHE_MAX) userCache.delete(userCache.keys().next().value!)
      const user = loadUser(id)
      const entry: { at: number, user: Promise<UserRecord | undefined>, loaded?: UserRecord } = { at: now, user }
      userCache.set(id, entry)
      user.then(record => { entry.loaded = record }, () => { userCache.delete(id) })
      return await user
    },
    async changed (id) {
      userCache.delete(id)
      await store.publish(CHANNEL, `u:${id}`)
    },
    forget (id) {
      userCache.delete(id)
    },
    peek (id) {
      const cached = userCache.get(id)
      return cached !== undefined && Date.now() - cached.at < USER_CACHE_TTL ? cached.loaded : undefined
    }
  }

  // --- sessions --------------------------------------------------------------------------
  const issueAccessToken = (userId: string, role: 'ADMIN' | 'MEMBER', sessionId: string, state: Pick<SessionState, 'workspaceId' | 'expiresAt'>) =>
    keys.signAccessToken({ sub: userId, sid: sessionId, role, ...(state.workspaceId === null ? {} : { wid: state.workspaceId }) }, state.expiresAt)

  const revokeInStore = async (sessionId: string): Promise<void> => {
    const until = Date.now() + revokedFor
    revoked.set(sessionId, until)
    await store.deleteSession(sessionId)
    await store.addRevocation('session', sessionId, until)
    await store.publish(CHANNEL, `s:${sessionId}:${until}`)
  }

  const markRevoked = async (executor: Kysely<Database>, sessionIds: string[], reason: RevokeReason): Promise<void> => {
    if (sessionIds.length === 0) return
    await executor.updateTable('sessions')
      .set({ revoked_at: new Date(fastify.now()), revoked_reason: reason })
      .where('id', 'in', sessionIds).where('revoked_at', 'is', null)
      .execute()
  }

  /**
   * A token that was already rotated came back after the grace window: it was stolen or
   * replayed, and the store has deleted its session (the rotation script does, whoever asked).
   * End its access tokens on every instance, mark it revoked and audit it.
   */
  const revokeForReuse = async (sessionId: string, userId: string, origin: Origin, presentedTo: 'refresh' | 'logout'): Promise<void> => {
    await revokeInStore(sessionId)
    await db.transaction().execute(async trx => {
      await markRevoked(trx, [sessionId], 'refresh_reuse')
      await audit(trx, { action: 'session.refresh_reuse', actorUserId: userId, subjectType: 'session', subjectId: sessionId, ip: origin.ip, userAgent: origin.userAgent, details: { presentedTo } })
    })
    fastify.log.warn({ sessionId, userId, presentedTo }, 'refresh token reuse: session revoked')
  }

  /** A session's first tokens. */
  const issued = ({ sessionId, refreshToken, state }: Pick<PendingSession, 'sessionId' | 'refreshToken' | 'state'>, user: Pick<UserRecord, 'id' | 'role'>): IssuedSession => {
    const access = issueAccessToken(user.id, user.role, sessionId, state)
    return { sessionId, refreshToken, accessToken: access.token, expiresIn: access.expiresIn, rememberMe: state.rememberMe, expiresAt: state.expiresAt }
  }

  /** The audit fields of whoever acted. */
  const by = (actor: Actor) => ({ actorUserId: actor.userId ?? null, ip: actor.origin?.ip, userAgent: actor.origin?.userAgent })

  const sessions: Sessions = {
    prepare ({ user, method, rememberMe, origin, workspaceId = null }) {
      const now = fastify.now()
      const sessionId = newSessionId()
      const state: SessionState = {
        userId: user.id,
        rememberMe,
        expiresAt: now + (rememberMe ? config.JWT_REFRESH_REMEMBER_TTL : config.JWT_REFRESH_TTL),
        workspaceId
      }
      const row = {
        id: sessionId,
        user_id: user.id,
        method,
        remember_me: rememberMe,
        ip: origin.ip,
        user_agent: origin.userAgent?.slice(0, 512) ?? null,
        created_at: new Date(now),
        last_used_at: new Date(now),
        expires_at: new Date(state.expiresAt)
      }
      return { sessionId, refreshToken: newRefreshToken(sessionId), state, row }
    },

    async activate (pending, write) {
      // The session's row and its state in the store are written at once. Whichever fails,
      // the other is undone: a stored session whose row was never written is deleted, and a
      // row whose stored session failed is marked revoked, so no half sign-in remains.
      const [stored, written] = await Promise.allSettled([
        store.createSession(pending.sessionId, pending.state, hashToken(pending.refreshToken)),
        write()
      ])
      if (written.status === 'rejected') {
        if (stored.status === 'fulfilled') await store.deleteSession(pending.sessionId).catch(() => {})
        throw written.reason
      }
      if (stored.status === 'rejected') {
        await markRevoked(db, [pending.sessionId], 'revoked').catch(() => {})
        throw stored.reason
      }
      return { session: issued(pending, written.value), user: written.value }
    },

    async start (trx, options) {
      const { workspaceId, joined } = options.workspaceId !== undefined
        ? { workspaceId: options.workspaceId, joined: [] }
        : await workspaceForSignIn(trx, options.user, options.emailProven === true)
      const pending = sessions.prepare({ ...options, workspaceId })
      await trx.insertInto('sessions').values(pending.row).execute()
      // The store last: if the transaction fails after this, the session is one whose
      // token was never handed out, and it expires on its own.
      await store.createSession(pending.sessionId, pending.state, hashToken(pending.refreshToken))
      return { ...issued(pending, options.user), joined }
    },

    async refresh (refreshToken, origin) {
      const sessionId = sessionIdOf(refreshToken)
      if (sessionId === undefined) throw errors.unauthorized('Invalid refresh token', 'INVALID_REFRESH_TOKEN')
      const successor = successorOf(keys.sessionSecret, refreshToken, sessionId)
      // A valid token is counted against its own session, in the rotation itself: a client
      // stuck in a refresh loop (or a stolen token) cannot hammer it, and tokens that merely
      // name the session (its id is no secret) cannot spend its budget.
      const result = await store.rotateRefreshTokenWithLimit(sessionId, hashToken(refreshToken), hashToken(successor), fastify.now(), graceMs, refreshLimit)
      if (result.status === 'limited') throw errors.tooManyRequests('Too many refreshes for this session, please try again later.', result.retryAfterMs)
      if (result.status === 'invalid') throw errors.unauthorized('Invalid refresh token', 'INVALID_REFRESH_TOKEN')
      if (result.status === 'reused') {
        await revokeForReuse(sessionId, result.userId, origin, 'refresh')
        throw errors.unauthorized('Invalid refresh token', 'INVALID_REFRESH_TOKEN')
      }
      const { session } = result
      const user = await users.get(session.userId)
      if (user === undefined) {
        await revokeInStore(sessionId)
        throw errors.unauthorized('Invalid refresh token', 'INVALID_REFRESH_TOKEN')
      }
      if (!user.is_active) throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
      lastUsed.set(sessionId, new Date(fastify.now()))
      return issued({ sessionId, refreshToken: successor, state: session }, user)
    },

    async sessionOfRefreshToken (refreshToken, origin) {
      const sessionId = sessionIdOf(refreshToken)
      if (sessionId === undefined) return { status: 'invalid' }
      // A rotation to the token's own successor proves possession without changing what the
      // holder can do next (the successor is what a refresh would have given anyway).
      const successor = successorOf(keys.sessionSecret, refreshToken, sessionId)
      const result = await store.rotateRefreshToken(sessionId, hashToken(refreshToken), hashToken(successor), fastify.now(), graceMs)
      if (result.status === 'reused') {
        // The store has deleted the session: whatever path the stolen token came back by, the
        // rest of the revocation must follow, or its access tokens would live on.
        await revokeForReuse(sessionId, result.userId, origin, 'logout')
        return { status: 'over', sessionId }
      }
      return result.status === 'invalid' ? { status: 'invalid' } : { status: 'live', sessionId }
    },

    async sessionOfAccessToken (accessToken) {
      const claims = await keys.verifyIgnoringExpiry(accessToken).catch(() => undefined)
      if (claims === undefined) return { status: 'invalid' }
      return { status: sessions.isRevoked(claims.sid) ? 'over' : 'live', sessionId: claims.sid }
    },

    async revoke (sessionId, reason, actor) {
      await revokeInStore(sessionId)
      await db.transaction().execute(async trx => {
        const row = await trx.selectFrom('sessions').select('user_id').where('id', '=', sessionId).executeTakeFirst()
        await markRevoked(trx, [sessionId], reason)
        await audit(trx, {
          action: reason === 'logout' ? 'auth.logout' : 'session.revoked',
          ...by(actor),
          subjectType: 'session',
          subjectId: sessionId,
          details: { reason, userId: row?.user_id ?? null }
        })
      })
    },

    async revokeAll (userId, reason, actor, except) {
      let query = db.selectFrom('sessions').select('id')
        .where('user_id', '=', userId).where('revoked_at', 'is', null).where('expires_at', '>', new Date(fastify.now()))
      if (except !== undefined) query = query.where('id', '<>', except)
      const ids = (await query.execute()).map(row => row.id)
      await Promise.all(ids.map(revokeInStore))
      await db.transaction().execute(async trx => {
        await markRevoked(trx, ids, reason)
        await audit(trx, {
          action: reason === 'logout_all' ? 'auth.logout_all' : 'session.revoked',
          ...by(actor),
          subjectType: 'user',
          subjectId: userId,
          details: { reason, sessions: ids.length }
        })
      })
      return ids.length
    },

    async revokeAllIn (trx, userId, reason) {
      const ids = (await trx.selectFrom('sessions').select('id')
        .where('user_id', '=', userId).where('revoked_at', 'is', null).where('expires_at', '>', new Date(fastify.now()))
        .execute()).map(row => row.id)
      await markRevoked(trx, ids, reason)
      await Promise.all(ids.map(revokeInStore))
      return ids
    },

    isRevoked: sessionId => {
      const until = revoked.get(sessionId)
      return until !== undefined && until > Date.now()
    },

    async switchWorkspace (sessionId, user, workspaceId) {
      if (!await store.setSessionWorkspace(sessionId, workspaceId)) return null
      const state = await store.getSession(sessionId)
      if (state === null) return null
      const access = issueAccessToken(user.id, user.role, sessionId, { workspaceId, expiresAt: state.expiresAt })
      return { accessToken: access.token, expiresIn: access.expiresIn, expiresAt: state.expiresAt, rememberMe: state.rememberMe }
    }
  }

  // --- every request: who is it? -----------------------------------------------------------
  fastify.decorateRequest('auth', null)
  fastify.decorateRequest('authInvalid', false)
  fastify.decorateRequest('user', null)
  fastify.decorateRequest('revokedUserId', null)

  const accept = (request: FastifyRequest, claims: AccessTokenClaims): void => {
    if (sessions.isRevoked(claims.sid)) {
      request.authInvalid = true
      request.revokedUserId = claims.sub
      return
    }
    request.auth = { kind: 'session', userId: claims.sub, sessionId: claims.sid, role: claims.role, workspaceId: claims.wid ?? null, token: null }
  }
  const acceptToken = (request: FastifyRequest, record: IntegrationTokenRecord | undefined): void => {
    if (record === undefined || record.revoked) {
      request.authInvalid = true
      // Whose it was: signedIn tells a deactivated user why (403), as for a revoked session.
      if (record !== undefined) request.revokedUserId = record.userId
      return
    }
    integrationTokens.used(record)
    request.auth = { kind: 'integration', userId: record.userId, sessionId: null, role: null, workspaceId: record.workspaceId, token: record }
  }
  // A callback hook with a synchronous path: no header, or a token verified before, costs no
  // promise at all (this runs on every request).
  fastify.addHook('onRequest', (request, _reply, done) => {
    const header = request.headers.authorization
    if (header === undefined) {
      done()
      return
    }
    const token = BEARER.exec(header)?.[1]
    if (token === undefined) {
      const raw = integrationTokens.bearer.exec(header)?.[1]
      if (raw === undefined) {
        request.authInvalid = true
        done()
        return
      }
      const record = integrationTokens.lookup(raw)
      if (!(record instanceof Promise)) {
        acceptToken(request, record)
        done()
        return
      }
      record.then(found => {
        acceptToken(request, found)
        done()
      }, (error: Error) => {
        // The database did not answer: not the client's fault, and not a 401 either.
        done(error)
      })
      return
    }
    const known = keys.verifiedBefore(token)
    if (known !== undefined) {
      accept(request, known)
      done()
      return
    }
    keys.verifyAccessToken(token).then(claims => {
      accept(request, claims)
      done()
    }, () => {
      request.authInvalid = true
      done()
    })
  })

  const signedIn = async (request: FastifyRequest, messages: UnauthorizedMessages = UNAUTHORIZED_MESSAGES[request.routeOptions.config.unauthorized ?? 'default']): Promise<void> => {
    const { auth } = request
    if (auth === null) {
      // A deactivated user's sessions are revoked; they are told why (seed 002: 403).
      if (request.revokedUserId !== null && (await users.get(request.revokedUserId))?.is_active === false) {
        throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
      }
      throw request.authInvalid
        ? errors.unauthorized(messages.invalid, 'TOKEN_INVALID')
        : errors.unauthorized(messages.required, 'TOKEN_REQUIRED')
    }
    const user = await users.get(auth.userId)
    if (user === undefined) throw errors.unauthorized(messages.invalid, 'TOKEN_INVALID')
    if (!user.is_active) throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
    request.user = user
  }
  fastify.decorate('signedIn', signedIn)
  const authenticate = async (request: FastifyRequest): Promise<void> => {
    await signedIn(request)
    if (request.auth!.kind === 'integration') throw errors.forbidden(MESSAGES.browserOnly, 'BROWSER_SESSION_REQUIRED')
  }
  fastify.decorate('authenticate', authenticate)
  const authenticateHook: preParsingHookHandler = (request, _reply, payload, done) => {
    // The common case answered synchronously: a valid token of an active user in the cache.
    const user = request.auth?.kind === 'session' ? users.peek(request.auth.userId) : undefined
    if (user !== undefined && user.is_active) {
      request.user = user
      done(null, payload)
      return
    }
    authenticate(request).then(() => { done(null, payload) }, (error: Error) => { done(error) })
  }
  fastify.decorate('authenticateHook', authenticateHook)
  fastify.decorate('authenticateAdmin', async (request: FastifyRequest) => {
    await authenticate(request)
    if (request.user!.role !== 'ADMIN') throw errors.forbidden('Admin access required', 'ADMIN_REQUIRED')
  })

  fastify.decorate('lockCaller', async (trx: Transaction<Database>, request: FastifyRequest) => {
    const auth = request.auth!
    // The 401 texts the request was let in with: the tenancy plugin's for routes with an action.
    const messages = request.routeOptions.config.action === undefined
      ? UNAUTHORIZED_MESSAGES[request.routeOptions.config.unauthorized ?? 'default']
      : UNAUTHORIZED_MESSAGES.seed003
    // The lock conflicts with the proof's FOR UPDATE and the deactivation's UPDATE of the row,
    // so either one under way is waited for. It is an exclusive one, not FOR SHARE: PostgreSQL
    // grants a share lock beside other share locks even while a FOR UPDATE waits, so a stream
    // of overlapping writes could keep a proof or a deactivation out until it timed out;
    // exclusive lockers queue in turn (the caller's own such writes run one at a time).
    const caller = await trx.selectFrom('users').select(['is_active', 'role'])
      .where('id', '=', auth.userId).forNoKeyUpdate().executeTakeFirst()
    // The credential in a statement of its own, so that it sees what a proof or a deactivation
    // waited for above committed (after a wait, READ COMMITTED reads afresh only the rows it
    // locked). It is not locked: the proof revokes the tokens of other members too, whose
    // writes hold their own user's row and wait for the workspace's (plugins/tenancy.ts).
    const credential = auth.kind === 'session'
      ? await trx.selectFrom('sessions').select('revoked_at').where('id', '=', auth.sessionId).where('user_id', '=', auth.userId).executeTakeFirst()
      : await trx.selectFrom('integration_tokens').select('revoked_at').where('id', '=', auth.token.id).where('user_id', '=', auth.userId).executeTakeFirst()
    if (caller === undefined || credential === undefined) throw errors.unauthorized(messages.invalid, 'TOKEN_INVALID')
    if (!caller.is_active) throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
    if (credential.revoked_at !== null) throw errors.unauthorized(messages.invalid, 'TOKEN_INVALID')
    return { role: caller.role }
  })

  // --- cookies ------------------------------------------------------------------------------
  const cookieBase = { httpOnly: true, secure: production, sameSite: 'strict' as const }
  fastify.decorate('setSessionCookies', (reply: FastifyReply, session: IssuedSession) => {
    const remaining = Math.max(0, Math.floor((session.expiresAt - fastify.now()) / 1000))
    reply.setCookie(REFRESH_COOKIE, session.refreshToken, {
      ...cookieBase,
      path: '/api/auth',
      ...(session.rememberMe ? { maxAge: remaining, expires: new Date(session.expiresAt) } : {})
    })
    // For the WebSocket upgrade only: never accepted as authentication anywhere else.
    reply.setCookie(ACCESS_COOKIE, session.accessToken, { ...cookieBase, path: '/api/ws' })
  })
  fastify.decorate('sessionTokens', (request: FastifyRequest, reply: FastifyReply, session: IssuedSession): SessionTokens => {
    fastify.setSessionCookies(reply, session)
    const tokens: SessionTokens = { accessToken: session.accessToken, expiresIn: session.expiresIn }
    if (request.headers.origin === undefined) tokens.refreshToken = session.refreshToken
    return tokens
  })
  fastify.decorate('setAccessCookie', (reply: FastifyReply, accessToken: string) => {
    reply.setCookie(ACCESS_COOKIE, accessToken, { ...cookieBase, path: '/api/ws' })
  })
  fastify.decorate('clearSessionCookies', (reply: FastifyReply) => {
    reply.clearCookie(REFRESH_COOKIE, { ...cookieBase, path: '/api/auth' })
    reply.clearCookie(ACCESS_COOKIE, { ...cookieBase, path: '/api/ws' })
  })

  // Origins whose pages may use the refresh cookie: the allow-list and our own URLs.
  const ownOrigins = new Set(config.CORS_ORIGINS.filter(origin => origin !== '*'))
  for (const origin of serverOrigins(config)) ownOrigins.add(origin)
  if (config.FRONTEND_URL !== undefined) ownOrigins.add(new URL(config.FRONTEND_URL).origin)
  fastify.decorate('checkCookieRequest', (request: FastifyRequest) => {
    const origin = request.headers.origin
    if (origin === undefined || !ownOrigins.has(origin)) throw errors.originNotAllowed()
    const type = request.headers['content-type']
    // A form can post cross-site without a preflight; it cannot send JSON.
    if (type !== undefined && !/^application\/json\s*(;|$)/i.test(type)) throw errors.unsupportedMediaType()
  })
  fastify.decorate('originOf', (request: FastifyRequest): Origin => {
    const userAgent = request.headers['user-agent']
    return userAgent === undefined ? { ip: request.ip } : { ip: request.ip, userAgent }
  })

  fastify.decorate('sessions', sessions)
  fastify.decorate('users', users)
}, { name: 'auth', dependencies: ['config', 'db', 'store', 'keys', 'integration-tokens'], fastify: '5.x' })
