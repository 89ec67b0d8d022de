import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Transaction } from 'kysely'
import { Type } from 'typebox'
import { isProduction, publicUrl } from '../../src/config.js'
import type { Database, MemberRole } from '../../src/db/types.js'
import { errors } from '../../src/errors.js'
import { cleanName, escapeHtml, issueMagicLink } from '../../src/auth/magic-links.js'
import { emailKey, throttle } from '../../src/auth/throttle.js'
import { audit, normalizeEmail } from '../../src/auth/users.js'
import { Email, errorResponses, PathId, UUID_PATTERN } from '../../src/schemas/common.js'
import { MESSAGES } from '../../src/tenancy/policy.js'
import {
  BILLING_PLANS, createWorkspace, Member, memberJson, Membership, membershipsOf, MEMBER_ROLES, planFor,
  Workspace, workspaceJson, WORKSPACE_TYPES, type MemberRow
} from '../../src/tenancy/workspaces.js'

const Name = Type.String({ minLength: 1, maxLength: 200, pattern: '\\S' })
const BillingEmail = Type.Union([Email, Type.Null()])

const CreateWorkspace = Type.Object({
  name: Name,
  workspaceType: Type.Optional(Type.Enum(WORKSPACE_TYPES, { default: 'standard' })),
  billingEmail: Type.Optional(BillingEmail),
  billingPlan: Type.Optional(Type.Enum(BILLING_PLANS, { description: 'Ignored for rescue workspaces, which are always rescue_free' }))
}, { additionalProperties: false })

const UpdateWorkspace = Type.Object({
  name: Type.Optional(Name),
  workspaceType: Type.Optional(Type.Enum(WORKSPACE_TYPES)),
  billingEmail: Type.Optional(BillingEmail),
  billingPlan: Type.Optional(Type.Enum(BILLING_PLANS))
}, { additionalProperties: false })

const UpsertMember = Type.Object({
  name: Type.Optional(Type.String({ maxLength: 200 })),
  email: Email,
  role: Type.Enum(MEMBER_ROLES)
}, { additionalProperties: false })

const InviteAnswer = Type.Object({
  member: Member,
  inviteDelivery: Type.Optional(Type.Enum(['email', 'preview'], { description: 'Set when an invitation was sent (the address has no account yet)' })),
  invitePreviewUrl: Type.Optional(Type.String({ description: 'Outside production without SMTP_URL only: the invitation link itself' }))
})

const WorkspaceAnswer = Type.Object({ workspace: Workspace })
const security: Array<Record<string, string[]>> = [{ bearer: [] }, { integrationToken: [] }]

/** Serializes the membership changes of one workspace (the last-owner rule cannot race). */
/** Owners who have joined (an owner invitation not yet accepted does not keep a workspace). */
const ownersOf = async (trx: Transaction<Database>, workspaceId: number): Promise<number> => {
  const { count } = await trx.selectFrom('workspace_members').select(eb => eb.fn.countAll<string>().as('count'))
    .where('workspace_id', '=', workspaceId).where('role', '=', 'owner').where('user_id', 'is not', null).executeTakeFirstOrThrow()
  return Number(count)
}

/**
 * Workspaces and their members (seed 003; seed 000's tenants, SPEC decision 6). Every route
 * names its action; the tenancy plugin decides who may call it (src/tenancy/policy.ts) and
 * which workspace it acts in, so the handlers here read `request.access` and nothing else.
 */
const workspaceRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, db, store, memberships } = fastify
  const base = publicUrl(config)
  const preview = !fastify.mailer.delivers && !isProduction(config)

  fastify.get('/api/workspaces', {
    config: { action: 'workspaces.list' },
    schema: {
      tags: ['workspaces'],
      summary: 'The signed-in user\'s workspaces and their role in each (seed 003; browser session only)',
      security: [{ bearer: [] }],
      response: { 200: Type.Object({ workspaces: Type.Array(Membership) }), ...errorResponses(401, 403) }
    }
  }, async (request) => ({ workspaces: await membershipsOf(db, request.user!.id) }))

  fastify.post('/api/workspaces', {
    config: { action: 'workspaces.create', payload: 'workspace' },
    schema: {
      tags: ['workspaces'],
      summary: 'Create a workspace; the caller becomes its owner (seed 003; browser session only)',
      security: [{ bearer: [] }],
      body: CreateWorkspace,
      response: { 201: WorkspaceAnswer, ...errorResponses(400, 401, 403) }
    }
  }, async (request, reply) => {
    const user = request.user!
    const origin = fastify.originOf(request)
    const { workspace } = await db.transaction().execute(async trx => {
      // Not by a caller whom a mailbox proof or a deactivation has ended meanwhile.
      await fastify.lockCaller(trx, request)
      const created = await createWorkspace(trx, { ...request.body, name: request.body.name.trim() }, user)
      await audit(trx, { action: 'workspace.created', actorUserId: user.id, subjectType: 'workspace', subjectId: String(created.workspace.id), ip: origin.ip, userAgent: origin.userAgent })
      return created
    })
    await memberships.changed(workspace.id, user.id)
    reply.code(201)
    return { workspace: workspaceJson(workspace) }
  })

  fastify.get('/api/workspace', {
    config: { action: 'workspace.read' },
    schema: {
      tags: ['workspaces'],
      summary: 'The active workspace (seed 003)',
      description: 'The active workspace is the token\'s, or the one the X-Workspace-Id header names (a workspace the caller is a member of).',
      security,
      response: { 200: WorkspaceAnswer, ...errorResponses(400, 401, 403) }
    }
  }, async (request) => {
    const workspace = await db.selectFrom('workspaces').selectAll().where('id', '=', request.access!.workspaceId).executeTakeFirstOrThrow()
    return { workspace: workspaceJson(workspace) }
  })

  fastify.put('/api/workspace', {
    config: { action: 'workspace.update', payload: 'workspace' },
    schema: {
      tags: ['workspaces'],
      summary: 'Update the active workspace (owner or manager; seed 003)',
      description: 'Rescue workspaces are always on the rescue_free plan; a workspace that becomes standard again takes the given plan, or household_basic.',
      security,
      body: UpdateWorkspace,
      response: { 200: WorkspaceAnswer, ...errorResponses(400, 401, 403) }
    }
  }, async (request) => {
    const { workspaceId } = request.access!
    const origin = fastify.originOf(request)
    const workspace = await db.transaction().execute(async trx => {
      // Not after a mailbox proof, a deactivation or a removal that ended the caller's access
      // (billingEmail says where bills go).
      await fastify.lockAccess(trx, request)
      const current = await trx.selectFrom('workspaces').selectAll().where('id', '=', workspaceId).forUpdate().executeTakeFirstOrThrow()
      const type = request.body.workspaceType ?? current.workspace_type
      const updated = await trx.updateTable('workspaces').set({
        name: request.body.name?.trim() ?? current.name,
        workspace_type: type,
        billing_email: request.body.billingEmail === undefined ? current.billing_email : request.body.billingEmail,
        billing_plan: planFor(type, request.body.billingPlan, current.billing_plan),
        updated_at: new Date(fastify.now())
      }).where('id', '=', workspaceId).returningAll().executeTakeFirstOrThrow()
      await audit(trx, { action: 'workspace.updated', actorUserId: request.user!.id, subjectType: 'workspace', subjectId: String(workspaceId), ip: origin.ip, userAgent: origin.userAgent, details: { fields: Object.keys(request.body) } })
      return updated
    })
    await fastify.events.publish(workspaceId, { type: 'workspace.updated', id: String(workspaceId) })
    return { workspace: workspaceJson(workspace) }
  })

  fastify.get('/api/workspace/members', {
    config: { action: 'members.read' },
    schema: {
      tags: ['workspaces'],
      summary: 'The members of the active workspace, invitations included (seed 003)',
      security,
      response: { 200: Type.Object({ members: Type.Array(Member) }), ...errorResponses(400, 401, 403) }
    }
  }, async (request) => {
    const rows = await db.selectFrom('workspace_members').selectAll()
      .where('workspace_id', '=', request.access!.workspaceId)
      .orderBy('created_at').orderBy('id').limit(1000).execute()
    return { members: rows.map(memberJson) }
  })

  /** Seed 003's role rules: only an owner grants or changes `owner`; a workspace keeps one owner. */
  const checkRoleChange = async (trx: Transaction<Database>, actor: MemberRole, workspaceId: number, target: MemberRow | undefined, role: MemberRole): Promise<void> => {
    if (role === 'owner' && actor !== 'owner') throw errors.forbidden(MESSAGES.forbidden, 'OWNER_REQUIRED')
    if (target?.role !== 'owner') return
    if (actor !== 'owner') throw errors.forbidden(MESSAGES.forbidden, 'OWNER_REQUIRED')
    if (role !== 'owner' && await ownersOf(trx, workspaceId) <= 1) {
      throw errors.conflict('A workspace must keep at least one owner.', 'LAST_OWNER')
    }
  }

  /** Mails an invitation whose link signs the invitee in (and so makes them a member). */
  const invite = async (request: FastifyRequest, reply: FastifyReply, member: MemberRow, workspaceName: string): Promise<{ inviteDelivery: 'email' | 'preview', invitePreviewUrl?: string }> => {
    await throttle(store, reply, `invite:${emailKey(member.invite_email)}`, config.MAGIC_LINK_MAX_PER_EMAIL, config.LOGIN_WINDOW,
      'Too many invitations for this address, please try again later.')
    const frontend = config.FRONTEND_URL ?? base
    const link = config.MAGIC_LINKS === 'enabled'
      ? await issueMagicLink(store, base, { email: member.invite_email, name: cleanName(member.name), redirectTo: frontend }, fastify.now(), config.INVITE_TTL)
      : frontend
    if (preview) return { inviteDelivery: 'preview', invitePreviewUrl: link }
    const inviter = cleanName(request.user!.name) ?? 'A member'
    const workspace = cleanName(workspaceName) ?? 'a workspace'
    const how = config.MAGIC_LINKS === 'enabled' ? 'Open this link to sign in and join. It works once' : 'Sign in with this address to join'
    fastify.mailer.enqueue({
      to: member.invite_email,
      subject: `${inviter} invited you to ${workspace}`,
      text: `Hello,\n\n${inviter} invited you to the workspace "${workspace}" as ${member.role}.\n${how}:\n\n${link}\n\nIf you do not know them, ignore this e-mail.\n`,
      html: `<p>Hello,</p><p>${escapeHtml(inviter)} invited you to the workspace “${escapeHtml(workspace)}” as ${member.role}.</p><p><a href="${escapeHtml(link)}">Join the workspace</a></p><p>If you do not know them, ignore this e-mail.</p>`
    })
    return { inviteDelivery: 'email' }
  }

  fastify.post('/api/workspace/members', {
    config: { action: 'members.write', payload: 'member' },
    schema: {
      tags: ['workspaces'],
      summary: 'Invite or update a member by e-mail (owner or manager; seed 003)',
      description: 'An account whose address is verified becomes a member at once; any other address gets an invitation whose link signs them in, and they become a member when they sign in with that address (a magic link, or a provider that verifies it). Only an owner grants or changes the owner role, and the last owner cannot be demoted (409).',
      security,
      body: UpsertMember,
      response: { 201: InviteAnswer, ...errorResponses(400, 401, 403, 409, 429) }
    }
  }, async (request, reply) => {
    const { workspaceId } = request.access!
    const email = normalizeEmail(request.body.email)
    const { role } = request.body
    const origin = fastify.originOf(request)
    const { member, created, workspaceName, previous } = await db.transaction().execute(async trx => {
      // Nobody is let in by a caller whom a mailbox proof, a deactivation or a removal has
      // ended meanwhile; the workspace's lock makes member changes take turns.
      const actorRole = (await fastify.lockAccess(trx, request)).role
      // Only an account whose address is proven joins at once; any other is invited by a link
      // to that address (nobody joins a workspace by registering someone else's address).
      const found = await trx.selectFrom('users').select(['id', 'name', 'email_verified']).where('email', '=', email).executeTakeFirst()
      const user = found?.email_verified === true ? found : undefined
      const target = await trx.selectFrom('workspace_members').selectAll()
        .where('workspace_id', '=', workspaceId)
        .where(eb => found === undefined ? eb('invite_email', '=', email) : eb.or([eb('invite_email', '=', email), eb('user_id', '=', found.id)]))
        .orderBy('accepted_at').limit(1).executeTakeFirst()
      await checkRoleChange(trx, actorRole, workspaceId, target, role)
      const name = cleanName(request.body.name)?.slice(0, 200) ?? target?.name ?? found?.name ?? email.split('@')[0]!
      const now = new Date(fastify.now())
      const member = target === undefined
        ? await trx.insertInto('workspace_members').values({
          workspace_id: workspaceId,
          user_id: user?.id ?? null,
          invite_email: email,
          name,
          role,
          accepted_at: user === undefined ? null : now,
          invited_by: request.user!.id
        }).returningAll().executeTakeFirstOrThrow()
        : await trx.updateTable('workspace_members').set({ name, role, updated_at: now })
          .where('id', '=', target.id).returningAll().executeTakeFirstOrThrow()
      await audit(trx, {
        action: target === undefined ? 'member.added' : 'member.updated',
        actorUserId: request.user!.id,
        subjectType: 'workspace_member',
        subjectId: member.id,
        ip: origin.ip,
        userAgent: origin.userAgent,
        details: { workspaceId, role, previousRole: target?.role ?? null, pending: member.user_id === null }
      })
      const { name: workspaceName } = await trx.selectFrom('workspaces').select('name').where('id', '=', workspaceId).executeTakeFirstOrThrow()
      return { member, created: target === undefined, workspaceName, previous: target }
    })
    // The member's very next request sees the new role, on every instance.
    if (member.user_id !== null) await memberships.changed(workspaceId, member.user_id)
    await fastify.events.publish(workspaceId, { type: created ? 'member.added' : 'member.updated', id: member.id })
    reply.code(201)
    if (member.user_id === null && (created || previous?.role !== member.role)) {
      return { member: memberJson(member), ...await invite(request, reply, member, workspaceName) }
    }
    return { member: memberJson(member) }
  })

  fastify.delete('/api/workspace/members/:memberId', {
    config: { action: 'members.write' },
    schema: {
      tags: ['workspaces'],
      summary: 'Remove a member who is not an owner, or withdraw an invitation (owner or manager; seed 003)',
      description: '404 when the member is not in the active workspace or is an owner (an owner may withdraw an owner invitation not yet accepted). The member\'s integration tokens for the workspace are revoked with it.',
      security,
      params: Type.Object({ memberId: PathId }),
      response: { 204: Type.Null(), ...errorResponses(401, 403, 404) }
    }
  }, async (request, reply) => {
    const { workspaceId } = request.access!
    const { memberId } = request.params
    if (!UUID_PATTERN.test(memberId)) throw errors.notFound('member')
    const origin = fastify.originOf(request)
    const { removed, tokenIds } = await db.transaction().execute(async trx => {
      const actorRole = (await fastify.lockAccess(trx, request)).role
      const removed = await trx.deleteFrom('workspace_members')
        .where('id', '=', memberId).where('workspace_id', '=', workspaceId)
        .where(eb => actorRole === 'owner'
          ? eb.or([eb('role', '<>', 'owner'), eb('user_id', 'is', null)])
          : eb('role', '<>', 'owner'))
        .returningAll().executeTakeFirst()
      if (removed === undefined) throw errors.notFound('member')
      const tokens = removed.user_id === null
        ? []
        : await trx.updateTable('integration_tokens').set({ revoked_at: new Date(fastify.now()) })
          .where('workspace_id', '=', workspaceId).where('user_id', '=', removed.user_id).where('revoked_at', 'is', null)
          .returning('id').execute()
      await audit(trx, {
        action: 'member.removed',
        actorUserId: request.user!.id,
        subjectType: 'workspace_member',
        subjectId: removed.id,
        ip: origin.ip,
        userAgent: origin.userAgent,
        details: { workspaceId, userId: removed.user_id, role: removed.role, tokensRevoked: tokens.length }
      })
      return { removed, tokenIds: tokens.map(token => token.id) }
    })
    if (removed.user_id !== null) await memberships.changed(workspaceId, removed.user_id)
    await fastify.events.publish(workspaceId, { type: 'member.removed', id: removed.id })
    await fastify.integrationTokens.revoked(tokenIds)
    return await reply.code(204).send(null)
  })
}

export default workspaceRoutes
