import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import { isProduction } from '../../src/config.js'
import { errors } from '../../src/errors.js'
import { providerRegistry } from '../../src/auth/providers.js'
import { audit, publicUser, PublicUser } from '../../src/auth/users.js'
import { errorResponses, MAX_INT4 } from '../../src/schemas/common.js'
import { MESSAGES } from '../../src/tenancy/policy.js'
import { namedWorkspace } from '../../plugins/tenancy.js'
import { UNAUTHORIZED_MESSAGES } from '../../plugins/auth.js'
import { Member, memberJson, Membership, Workspace, WorkspaceId, workspaceJson } from '../../src/tenancy/workspaces.js'

const Provider = Type.Object({ providerKey: Type.String(), displayName: Type.String(), enabled: Type.Boolean() })

const SessionContext = Type.Object({
  user: PublicUser,
  activeWorkspace: Type.Union([Workspace, Type.Null()]),
  activeMembership: Type.Union([Member, Type.Null()]),
  workspaces: Type.Array(Membership),
  providers: Type.Array(Provider)
}, { title: 'SessionContext' })

const SessionAnswer = Type.Object({ session: SessionContext })
const SwitchAnswer = Type.Object({
  session: SessionContext,
  accessToken: Type.String({ description: 'A new access token for the chosen workspace' }),
  expiresIn: Type.Integer()
})

export const TENANT_COOKIE = 'activeTenantId'

/**
 * The session context and the workspace switch (seed 003), and seed 000's tenant switch —
 * one concept (SPEC decision 6). A switch changes the session's active workspace (what its
 * next refresh carries) and answers a new access token; tabs that must stay in different
 * workspaces send `X-Workspace-Id` instead, which never changes anything shared.
 */
const sessionRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { db, config, sessions, memberships } = fastify
  const providers = [...providerRegistry(config).configured.values()]
    .map(provider => ({ providerKey: provider.key, displayName: provider.displayName, enabled: true }))

  /** The session context in one query: the user's memberships with their workspaces. */
  const context = async (request: FastifyRequest, activeId: number | null) => {
    const rows = await db.selectFrom('workspace_members as m')
      .innerJoin('workspaces as w', 'w.id', 'm.workspace_id')
      .selectAll('w')
      .select(['m.id as m_id', 'm.user_id as m_user_id', 'm.invite_email as m_invite_email', 'm.name as m_name', 'm.role as m_role', 'm.accepted_at as m_accepted_at', 'm.created_at as m_created_at'])
      .where('m.user_id', '=', request.user!.id)
      .orderBy('m.accepted_at').orderBy('w.id')
      .execute()
    const active = rows.find(row => row.id === activeId)
    return {
      user: publicUser(request.user!),
      activeWorkspace: active === undefined ? null : workspaceJson(active),
      activeMembership: active === undefined
        ? null
        : memberJson({ id: active.m_id, workspace_id: active.id, user_id: active.m_user_id, invite_email: active.m_invite_email, name: active.m_name, role: active.m_role, accepted_at: active.m_accepted_at, created_at: active.m_created_at, invited_by: null, updated_at: active.updated_at }),
      workspaces: rows.map(row => ({ ...workspaceJson(row), role: row.m_role, membershipId: row.m_id })),
      providers
    }
  }

  fastify.get('/api/auth/session', {
    config: { action: 'session.read' },
    schema: {
      tags: ['auth'],
      summary: 'The current session context: user, active workspace and membership, workspaces, providers (seed 003; browser session only)',
      description: 'Unlike seed 003 it never answers a raw token. The active workspace is the access token\'s, or the one X-Workspace-Id names.',
      security: [{ bearer: [] }],
      response: { 200: SessionAnswer, ...errorResponses(400, 401, 403) }
    }
  }, async (request) => {
    const named = namedWorkspace(request)
    const session = await context(request, named ?? request.auth!.workspaceId)
    if (named !== undefined && session.activeWorkspace === null) throw errors.forbidden(MESSAGES.forbidden, 'NOT_A_MEMBER')
    return { session }
  })

  /** Switches the caller's session to a workspace they are a member of (else 403). */
  const switchTo = async (request: FastifyRequest, reply: FastifyReply, workspaceId: number) => {
    const user = request.user!
    if (await memberships.get(workspaceId, user.id) === null) throw errors.forbidden(MESSAGES.forbidden, 'NOT_A_MEMBER')
    const issued = await sessions.switchWorkspace(request.auth!.sessionId!, user, workspaceId)
    // The session ended while this request was on its way.
    if (issued === null) throw errors.unauthorized(UNAUTHORIZED_MESSAGES.seed003.invalid, 'TOKEN_INVALID')
    fastify.setAccessCookie(reply, issued.accessToken)
    const origin = fastify.originOf(request)
    await audit(db, { action: 'session.workspace_switched', actorUserId: user.id, subjectType: 'session', subjectId: request.auth!.sessionId ?? undefined, ip: origin.ip, userAgent: origin.userAgent, details: { workspaceId } })
    return { session: await context(request, workspaceId), accessToken: issued.accessToken, expiresIn: issued.expiresIn, issued }
  }

  fastify.post('/api/auth/switch-workspace', {
    config: { action: 'session.switch', payload: 'workspace switch' },
    schema: {
      tags: ['auth'],
      summary: 'Make another workspace the session\'s active one; answers the session context and a new access token (seed 003)',
      security: [{ bearer: [] }],
      body: Type.Object({ workspaceId: WorkspaceId }, { additionalProperties: false }),
      response: { 200: SwitchAnswer, ...errorResponses(400, 401, 403) }
    }
  }, async (request, reply) => {
    const { session, accessToken, expiresIn } = await switchTo(request, reply, request.body.workspaceId)
    return { session, accessToken, expiresIn }
  })

  const cookieOptions = { httpOnly: true, secure: isProduction(config), sameSite: 'lax' as const, path: '/' }
  fastify.post('/api/session/set-active-tenant', {
    config: { action: 'session.switch', payload: 'tenant' },
    schema: {
      tags: ['auth'],
      summary: 'Seed 000\'s tenant switch: the same as switch-workspace, and sets the activeTenantId cookie',
      security: [{ bearer: [] }],
      body: Type.Object({
        tenantId: Type.Union([WorkspaceId, Type.String({ pattern: '^[1-9][0-9]{0,9}$' })], { description: 'The workspace id (a tenant is a workspace)' })
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({ ok: Type.Literal(true), activeTenantId: WorkspaceId, accessToken: Type.String(), expiresIn: Type.Integer() }),
        ...errorResponses(400, 401, 403)
      }
    }
  }, async (request, reply) => {
    const tenantId = Number(request.body.tenantId)
    // The string form is bounded here as the number form is by its schema.
    if (tenantId > MAX_INT4) throw errors.invalidPayload('tenant', { tenantId: `must be <= ${MAX_INT4}` })
    const { accessToken, expiresIn, issued } = await switchTo(request, reply, tenantId)
    reply.setCookie(TENANT_COOKIE, String(tenantId), issued.rememberMe ? { ...cookieOptions, expires: new Date(issued.expiresAt) } : cookieOptions)
    return { ok: true as const, activeTenantId: tenantId, accessToken, expiresIn }
  })
}

export default sessionRoutes
