import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { Selectable } from 'kysely'
import { Type } from 'typebox'
import type { IntegrationTokensTable } from '../../src/db/types.js'
import { errors } from '../../src/errors.js'
import { audit } from '../../src/auth/users.js'
import { errorResponses, Nullable, PathId, Timestamp, Uuid, UUID_PATTERN } from '../../src/schemas/common.js'
import { WorkspaceId } from '../../src/tenancy/workspaces.js'

const SCOPES = ['read_only', 'read_write'] as const

const IntegrationToken = Type.Object({
  id: Uuid,
  userId: Uuid,
  workspaceId: WorkspaceId,
  name: Type.String(),
  tokenPrefix: Type.String({ description: 'The token\'s first characters, to recognise it; the token itself is never stored' }),
  scope: Type.Enum(SCOPES),
  lastUsedAt: Nullable(Timestamp),
  expiresAt: Nullable(Timestamp),
  revokedAt: Nullable(Timestamp),
  createdAt: Timestamp
}, { title: 'IntegrationToken' })

const CreateToken = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200, pattern: '\\S' }),
  scope: Type.Enum(SCOPES),
  expiresInDays: Type.Optional(Type.Integer({ minimum: 1, maximum: 36500 }))
}, { additionalProperties: false })

/** Active tokens one member may hold in one workspace. */
const MAX_ACTIVE = 50
const iso = (value: Date | string | null): string | null => value === null ? null : new Date(value).toISOString()

const tokenJson = (row: Selectable<IntegrationTokensTable>) => ({
  id: row.id,
  userId: row.user_id,
  workspaceId: row.workspace_id,
  name: row.name,
  tokenPrefix: row.token_prefix,
  scope: row.scope,
  lastUsedAt: iso(row.last_used_at),
  expiresAt: iso(row.expires_at),
  revokedAt: iso(row.revoked_at),
  createdAt: iso(row.created_at)!
})

/**
 * Integration tokens (seed 003): a browser-session user manages their own tokens for the
 * active workspace. The raw token is answered once, at creation; only its SHA-256 is kept.
 * A token acts for its member in its workspace, never beyond the member's role, and a
 * read-only one never writes (src/tenancy/policy.ts).
 */
const integrationTokenRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, db, integrationTokens } = fastify

  fastify.get('/api/integration-tokens', {
    config: { action: 'tokens.read' },
    schema: {
      tags: ['integration tokens'],
      summary: 'The caller\'s active integration tokens for the active workspace (seed 003; browser session only)',
      security: [{ bearer: [] }],
      response: { 200: Type.Object({ integrationTokens: Type.Array(IntegrationToken) }), ...errorResponses(400, 401, 403) }
    }
  }, async (request) => {
    const rows = await db.selectFrom('integration_tokens').selectAll()
      .where('workspace_id', '=', request.access!.workspaceId).where('user_id', '=', request.user!.id)
      .where('revoked_at', 'is', null)
      .where(eb => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', new Date(fastify.now()))]))
      .orderBy('created_at', 'desc').orderBy('id').execute()
    return { integrationTokens: rows.map(tokenJson) }
  })

  fastify.post('/api/integration-tokens', {
    config: { action: 'tokens.write', payload: 'integration token' },
    schema: {
      tags: ['integration tokens'],
      summary: 'Create an integration token for the active workspace; the token is answered only this once (seed 003)',
      security: [{ bearer: [] }],
      body: CreateToken,
      response: {
        201: Type.Object({ integrationToken: IntegrationToken, token: Type.String({ description: 'Send as Authorization: Bearer <token>. Shown once.' }) }),
        ...errorResponses(400, 401, 403, 409)
      }
    }
  }, async (request, reply) => {
    const { workspaceId } = request.access!
    const { name, scope, expiresInDays } = request.body
    if (expiresInDays !== undefined && expiresInDays > config.INTEGRATION_TOKEN_MAX_DAYS) {
      throw errors.invalidPayload('integration token', { expiresInDays: `must be at most ${config.INTEGRATION_TOKEN_MAX_DAYS}` })
    }
    const userId = request.user!.id
    const origin = fastify.originOf(request)
    const { token, hash, prefix } = integrationTokens.generate()
    const row = await db.transaction().execute(async trx => {
      // A caller whom a mailbox proof, a deactivation or a removal has ended since this request
      // was let in makes none. The caller's row is locked until the commit, so one user's
      // creations take turns and the cap holds under concurrency.
      await fastify.lockAccess(trx, request)
      const { count } = await trx.selectFrom('integration_tokens').select(eb => eb.fn.countAll<string>().as('count'))
        .where('workspace_id', '=', workspaceId).where('user_id', '=', userId).where('revoked_at', 'is', null)
        .where(eb => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', new Date(fastify.now()))]))
        .executeTakeFirstOrThrow()
      if (Number(count) >= MAX_ACTIVE) throw errors.conflict(`At most ${MAX_ACTIVE} active integration tokens per member and workspace; revoke one first.`, 'TOO_MANY_TOKENS')
      const now = fastify.now()
      const row = await trx.insertInto('integration_tokens').values({
        user_id: userId,
        workspace_id: workspaceId,
        name: name.trim(),
        token_prefix: prefix,
        token_hash: hash,
        scope,
        created_at: new Date(now),
        expires_at: expiresInDays === undefined ? null : new Date(now + expiresInDays * 86_400_000)
      }).returningAll().executeTakeFirstOrThrow()
      await audit(trx, { action: 'token.created', actorUserId: userId, subjectType: 'integration_token', subjectId: row.id, ip: origin.ip, userAgent: origin.userAgent, details: { workspaceId, scope, expiresInDays: expiresInDays ?? null } })
      return row
    })
    reply.code(201).header('Cache-Control', 'no-store')
    return { integrationToken: tokenJson(row), token }
  })

  fastify.delete('/api/integration-tokens/:tokenId', {
    config: { action: 'tokens.write' },
    schema: {
      tags: ['integration tokens'],
      summary: 'Revoke one of the caller\'s tokens in the active workspace, at once on every instance (seed 003)',
      security: [{ bearer: [] }],
      params: Type.Object({ tokenId: PathId }),
      response: { 204: Type.Null(), ...errorResponses(400, 401, 403, 404) }
    }
  }, async (request, reply) => {
    const { tokenId } = request.params
    if (!UUID_PATTERN.test(tokenId)) throw errors.notFound('integration token')
    const origin = fastify.originOf(request)
    const userId = request.user!.id
    const row = await db.transaction().execute(async trx => {
      const row = await trx.updateTable('integration_tokens').set({ revoked_at: new Date(fastify.now()) })
        .where('id', '=', tokenId).where('workspace_id', '=', request.access!.workspaceId).where('user_id', '=', userId)
        .where('revoked_at', 'is', null)
        .returning('id').executeTakeFirst()
      if (row === undefined) throw errors.notFound('integration token')
      await audit(trx, { action: 'token.revoked', actorUserId: userId, subjectType: 'integration_token', subjectId: row.id, ip: origin.ip, userAgent: origin.userAgent })
      return row
    })
    await integrationTokens.revoked([row.id])
    return await reply.code(204).send(null)
  })
}

export default integrationTokenRoutes
