import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { errors } from '../../src/errors.js'
import { audit, publicUser, PublicUser, USER_COLUMNS } from '../../src/auth/users.js'
import { errorResponses, MAX_SAFE_ID, PathId, Timestamp, Uuid, UUID_PATTERN } from '../../src/schemas/common.js'

const AuditEvent = Type.Object({
  id: Type.Integer(),
  occurredAt: Timestamp,
  action: Type.String(),
  actorUserId: Type.Union([Uuid, Type.Null()]),
  subjectType: Type.Union([Type.String(), Type.Null()]),
  subjectId: Type.Union([Type.String(), Type.Null()]),
  ip: Type.Union([Type.String(), Type.Null()]),
  userAgent: Type.Union([Type.String(), Type.Null()]),
  details: Type.Record(Type.String(), Type.Unknown())
})

/** Global administration (global ADMIN only): users and the audit log. */
const adminRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { db, sessions } = fastify
  fastify.addHook('preParsing', async (request) => { await fastify.authenticateAdmin(request) })

  fastify.get('/api/admin/users', {
    schema: {
      tags: ['admin'],
      summary: 'List users, newest first',
      security: [{ bearer: [] }],
      querystring: Type.Object({
        limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 }),
        offset: Type.Integer({ minimum: 0, maximum: 1_000_000, default: 0 }),
        search: Type.Optional(Type.String({ minLength: 1, maxLength: 254, description: 'Part of the e-mail address or name' }))
      }),
      response: {
        200: Type.Object({ users: Type.Array(PublicUser), total: Type.Integer(), limit: Type.Integer(), offset: Type.Integer() }),
        ...errorResponses(400, 401, 403)
      }
    }
  }, async (request) => {
    const { limit, offset, search } = request.query
    let query = db.selectFrom('users')
    if (search !== undefined) {
      const pattern = `%${search.replace(/[\\%_]/g, character => `\\${character}`)}%`
      query = query.where(eb => eb.or([eb('email', 'ilike', pattern), eb('name', 'ilike', pattern)]))
    }
    const [rows, count] = await Promise.all([
      query.select(USER_COLUMNS).orderBy('created_at', 'desc').orderBy('id').limit(limit).offset(offset).execute(),
      query.select(eb => eb.fn.countAll<string>().as('total')).executeTakeFirstOrThrow()
    ])
    return { users: rows.map(publicUser), total: Number(count.total), limit, offset }
  })

  fastify.patch('/api/admin/users/:id', {
    config: { payload: 'user update' },
    schema: {
      tags: ['admin'],
      summary: 'Activate or deactivate a user, or change the global role; deactivation ends the user\'s sessions at once',
      security: [{ bearer: [] }],
      params: Type.Object({ id: PathId }),
      body: Type.Object({
        isActive: Type.Optional(Type.Boolean()),
        role: Type.Optional(Type.Enum(['ADMIN', 'MEMBER']))
      }, { additionalProperties: false, minProperties: 1 }),
      response: { 200: Type.Object({ user: PublicUser }), ...errorResponses(400, 401, 403, 404, 409) }
    }
  }, async (request) => {
    const { isActive, role } = request.body
    // Unknown fields are dropped before this point: a body of nothing but them changes nothing.
    if (isActive === undefined && role === undefined) throw errors.invalidPayload('user update', { body: 'must set isActive or role' })
    if (!UUID_PATTERN.test(request.params.id)) throw errors.notFound('user')
    const origin = fastify.originOf(request)
    const { before, after, tokenIds } = await db.transaction().execute(async trx => {
      // Admin changes are serialized, so two admins cannot demote each other at once.
      await trx.selectNoFrom(eb => eb.fn('pg_advisory_xact_lock', [eb.fn('hashtext', [eb.val('gatehouse:admins')])]).as('locked')).execute()
      // An admin deactivated or demoted while this request waited for that lock changes nothing.
      if ((await fastify.lockCaller(trx, request)).role !== 'ADMIN') throw errors.forbidden('Admin access required', 'ADMIN_REQUIRED')
      const before = await trx.selectFrom('users').select(USER_COLUMNS).where('id', '=', request.params.id).executeTakeFirst()
      if (before === undefined) throw errors.notFound('user')
      const losesAdmin = before.role === 'ADMIN' && before.is_active && (role === 'MEMBER' || isActive === false)
      if (losesAdmin) {
        const others = await trx.selectFrom('users').select('id')
          .where('role', '=', 'ADMIN').where('is_active', '=', true).where('id', '<>', before.id).limit(1).executeTakeFirst()
        if (others === undefined) throw errors.conflict('Cannot remove the last active admin', 'LAST_ADMIN')
      }
      const after = await trx.updateTable('users')
        .set({ ...(isActive === undefined ? {} : { is_active: isActive }), ...(role === undefined ? {} : { role }), updated_at: new Date(fastify.now()) })
        .where('id', '=', before.id).returning(USER_COLUMNS).executeTakeFirstOrThrow()
      // Deactivation revokes the user's integration tokens for good: a reactivation does not
      // bring them back (nor the sessions, which end below).
      const deactivated = before.is_active && !after.is_active
      const tokens = deactivated
        ? await trx.updateTable('integration_tokens').set({ revoked_at: new Date(fastify.now()) })
          .where('user_id', '=', before.id).where('revoked_at', 'is', null).returning('id').execute()
        : []
      await audit(trx, {
        action: 'admin.user_updated',
        actorUserId: request.user!.id,
        subjectType: 'user',
        subjectId: before.id,
        ip: origin.ip,
        userAgent: origin.userAgent,
        details: {
          before: { isActive: before.is_active, role: before.role },
          after: { isActive: after.is_active, role: after.role },
          ...(deactivated ? { tokensRevoked: tokens.length } : {})
        }
      })
      return { before, after, tokenIds: tokens.map(token => token.id) }
    })
    await fastify.users.changed(after.id)
    // After the commit: before it, another instance could read the tokens back as live.
    await fastify.integrationTokens.revoked(tokenIds)
    if (before.is_active && !after.is_active) {
      await sessions.revokeAll(after.id, 'user_deactivated', { userId: request.user!.id, origin })
    }
    return { user: publicUser(after) }
  })

  fastify.get('/api/admin/audit', {
    schema: {
      tags: ['admin'],
      summary: 'The audit log, newest first (cursor: pass nextCursor as before)',
      security: [{ bearer: [] }],
      querystring: Type.Object({
        limit: Type.Integer({ minimum: 1, maximum: 500, default: 100 }),
        before: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_SAFE_ID })),
        action: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })),
        actorUserId: Type.Optional(Uuid),
        subjectId: Type.Optional(Type.String({ minLength: 1, maxLength: 200 }))
      }),
      response: {
        200: Type.Object({ events: Type.Array(AuditEvent), nextCursor: Type.Union([Type.Integer(), Type.Null()]) }),
        ...errorResponses(400, 401, 403)
      }
    }
  }, async (request) => {
    const { limit, before, action, actorUserId, subjectId } = request.query
    let query = db.selectFrom('audit_log').selectAll()
    if (before !== undefined) query = query.where('id', '<', before)
    if (action !== undefined) query = query.where('action', '=', action)
    if (actorUserId !== undefined) query = query.where('actor_user_id', '=', actorUserId)
    if (subjectId !== undefined) query = query.where('subject_id', '=', subjectId)
    const rows = await query.orderBy('id', 'desc').limit(limit + 1).execute()
    const page = rows.slice(0, limit)
    return {
      events: page.map(row => ({
        id: Number(row.id),
        occurredAt: new Date(row.occurred_at).toISOString(),
        action: row.action,
        actorUserId: row.actor_user_id,
        subjectType: row.subject_type,
        subjectId: row.subject_id,
        ip: row.ip,
        userAgent: row.user_agent,
        details: row.details
      })),
      nextCursor: rows.length > limit ? Number(page[page.length - 1]!.id) : null
    }
  })
}

export default adminRoutes
