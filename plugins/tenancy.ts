import type { FastifyRequest, preParsingHookHandler, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { Transaction } from 'kysely'
import type { Database, MemberRole } from '../src/db/types.js'
import { errors } from '../src/errors.js'
import { MAX_INT4 } from '../src/schemas/common.js'
import { MESSAGES, POLICIES, type Action, type Policy } from '../src/tenancy/policy.js'
import { UNAUTHORIZED_MESSAGES } from './auth.js'

/** A user's membership of a workspace, as authorization needs it. */
export interface MemberRef { id: string, role: MemberRole }

/** The workspace a request acts in and the caller's role there (set for actions with roles). */
export interface Access {
  workspaceId: number
  role: MemberRole
  membershipId: string
}

export interface Memberships {
  /** The accepted membership of a user in a workspace, from a cache every change invalidates on every instance. */
  get: (workspaceId: number, userId: string) => Promise<MemberRef | null>
  /** After any change to a membership: drops it from every instance's cache (this one at once). */
  changed: (workspaceId: number, userId: string) => Promise<void>
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The action of the authorization table (src/tenancy/policy.ts) this route performs. */
    action?: Action
  }
  interface FastifyRequest {
    /** The workspace the request acts in and the caller's role, for actions that need one. */
    access: Access | null
  }
  interface FastifyInstance {
    memberships: Memberships
    /**
     * For a write in the request's workspace, first in its transaction: `lockCaller` (the caller
     * is still signed in and active), then the workspace's row, then the caller's membership
     * read again under that lock — what the tenancy hook read from its cache may have changed
     * since (a mailbox proof that removed the members let in before it, an owner who removed
     * the caller), and the write then answers as the hook would now. The workspace's lock
     * conflicts with the proof's and with the member routes', so either one under way is
     * waited for, and one that begins later waits for this write. Answers the caller's membership.
     */
    lockAccess: (trx: Transaction<Database>, request: FastifyRequest) => Promise<MemberRef>
  }
}

const CHANNEL = 'members'
const CACHE_TTL = 30_000
const CACHE_MAX = 200_000
/** The workspace `X-Workspace-Id` names; undefined when not sent, 400 when not a workspace id. */
export function namedWorkspace (request: FastifyRequest): number | undefined {
  const header = request.headers['x-workspace-id']
  if (header === undefined) return undefined
  // A workspace id is a PostgreSQL integer: 1 to 2147483647.
  const id = typeof header === 'string' && /^[1-9]\d{0,9}$/.test(header.trim()) ? Number(header.trim()) : 0
  if (id < 1 || id > MAX_INT4) throw errors.badRequest('X-Workspace-Id must be a workspace id', 'INVALID_WORKSPACE_HEADER')
  return id
}

type Entry = { at: number, value: Promise<MemberRef | null>, loaded?: MemberRef | null }

/**
 * The one authorization model (issue 5): a route names its action in `config.action`; this
 * plugin adds, to every such route, one preParsing hook that applies that action's row of
 * the table in src/tenancy/policy.ts — who is signed in, browser session or integration token,
 * read-only or not, which workspace (the token's, or `X-Workspace-Id` for a membership of the
 * caller, never the body) and which role there. Memberships are cached in process and
 * invalidated on every instance by pub/sub, so a role change or a removal holds from the
 * member's next request and a steady request costs no query.
 */
export default fp(async (fastify) => {
  const { db, store } = fastify
  const cache = new Map<string, Entry>()

  const onMessage = (key: string): void => { cache.delete(key) }
  let unsubscribe: (() => Promise<void>) | undefined
  const listen = async (): Promise<void> => {
    unsubscribe ??= await store.subscribe(CHANNEL, onMessage)
    cache.clear()
  }
  await listen().catch(error => { fastify.log.warn({ err: error }, 'store unavailable: membership changes will be heard when it answers') })
  store.onReconnect(() => { listen().catch(error => fastify.log.warn({ err: error }, 'could not resubscribe to membership changes')) })
  fastify.addHook('onClose', async () => { await unsubscribe?.().catch(() => {}) })

  const load = async (workspaceId: number, userId: string): Promise<MemberRef | null> =>
    await db.selectFrom('workspace_members').select(['id', 'role'])
      .where('workspace_id', '=', workspaceId).where('user_id', '=', userId)
      .executeTakeFirst() ?? null

  const peek = (key: string): MemberRef | null | undefined => {
    const entry = cache.get(key)
    return entry !== undefined && Date.now() - entry.at < CACHE_TTL ? entry.loaded : undefined
  }

  const memberships: Memberships = {
    async get (workspaceId, userId) {
      const key = `${workspaceId}:${userId}`
      const now = Date.now()
      const cached = cache.get(key)
      if (cached !== undefined && now - cached.at < CACHE_TTL) return await cached.value
      if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value!)
      const value = load(workspaceId, userId)
      const entry: Entry = { at: now, value }
      cache.set(key, entry)
      value.then(member => { entry.loaded = member }, () => { if (cache.get(key) === entry) cache.delete(key) })
      return await value
    },
    async changed (workspaceId, userId) {
      const key = `${workspaceId}:${userId}`
      cache.delete(key)
      await store.publish(CHANNEL, key)
    }
  }
  fastify.decorate('memberships', memberships)
  fastify.decorateRequest('access', null)

  fastify.decorate('lockAccess', async (trx: Transaction<Database>, request: FastifyRequest): Promise<MemberRef> => {
    const { workspaceId } = request.access!
    const policy: Policy = POLICIES[request.routeOptions.config.action!]
    await fastify.lockCaller(trx, request)
    // FOR NO KEY UPDATE: rows that merely reference the workspace (a bird added meanwhile) do
    // not wait for it. Two statements: after a wait, READ COMMITTED reads afresh only what it locked.
    await trx.selectFrom('workspaces').select('id').where('id', '=', workspaceId).forNoKeyUpdate().executeTakeFirst()
    const member = await trx.selectFrom('workspace_members').select(['id', 'role'])
      .where('workspace_id', '=', workspaceId).where('user_id', '=', request.auth!.userId).executeTakeFirst() ?? null
    grant(request, policy, workspaceId, member)
    return member!
  })

  /** The workspace a request names: `X-Workspace-Id` when sent, else its token's. */
  const workspaceOf = (request: FastifyRequest): number | null => {
    const auth = request.auth!
    const named = namedWorkspace(request)
    if (named === undefined) return auth.workspaceId
    // An integration token belongs to one workspace and never acts in another.
    if (auth.kind === 'integration' && named !== auth.workspaceId) throw errors.forbidden(MESSAGES.forbidden, 'NOT_A_MEMBER')
    return named
  }

  /** The checks that need no I/O; a MemberRef lookup key when the action runs in a workspace. */
  const check = (request: FastifyRequest, policy: Policy): number | null => {
    const auth = request.auth!
    if (auth.kind === 'integration') {
      if (policy.browserOnly === true) throw errors.forbidden(MESSAGES.browserOnly, 'BROWSER_SESSION_REQUIRED')
      if (policy.write === true && auth.token.scope === 'read_only') throw errors.forbidden(MESSAGES.readOnly, 'TOKEN_READ_ONLY')
    }
    if (policy.roles === undefined) return null
    const workspaceId = workspaceOf(request)
    if (workspaceId === null) throw errors.forbidden(MESSAGES.forbidden, 'NOT_A_MEMBER')
    return workspaceId
  }

  const grant = (request: FastifyRequest, policy: Policy, workspaceId: number, member: MemberRef | null): void => {
    if (member === null) throw errors.forbidden(MESSAGES.forbidden, 'NOT_A_MEMBER')
    if (!policy.roles!.includes(member.role)) throw errors.forbidden(MESSAGES.forbidden, 'ROLE_NOT_ALLOWED')
    request.access = { workspaceId, role: member.role, membershipId: member.id }
  }

  const authorize = async (request: FastifyRequest, policy: Policy): Promise<void> => {
    await fastify.signedIn(request, UNAUTHORIZED_MESSAGES.seed003)
    const workspaceId = check(request, policy)
    if (workspaceId !== null) grant(request, policy, workspaceId, await memberships.get(workspaceId, request.auth!.userId))
  }

  const hookFor = (action: Action): preParsingHookHandler => {
    const policy: Policy = POLICIES[action]
    return (request, _reply, payload, done) => {
      // The steady state, synchronously: an active cached user and a cached membership.
      const auth = request.auth
      const user = auth === null ? undefined : fastify.users.peek(auth.userId)
      if (user !== undefined && user.is_active) {
        try {
          request.user = user
          const workspaceId = check(request, policy)
          if (workspaceId === null) {
            done(null, payload)
            return
          }
          const member = peek(`${workspaceId}:${auth!.userId}`)
          if (member !== undefined) {
            grant(request, policy, workspaceId, member)
            done(null, payload)
            return
          }
        } catch (error) {
          done(error as Error)
          return
        }
      }
      authorize(request, policy).then(() => { done(null, payload) }, (error: Error) => { done(error) })
    }
  }

  fastify.addHook('onRoute', (route: RouteOptions) => {
    const action = route.config?.action
    if (action === undefined) return
    if (!(action in POLICIES)) throw new Error(`${route.method} ${route.url}: unknown action ${action}`)
    const hooks = route.preParsing === undefined ? [] : Array.isArray(route.preParsing) ? route.preParsing : [route.preParsing]
    route.preParsing = [hookFor(action), ...hooks]
  })
}, { name: 'tenancy', dependencies: ['db', 'store', 'auth'], fastify: '5.x' })
