import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { Selectable } from 'kysely'
import { Type } from 'typebox'
import { isProduction, publicUrl } from '../../src/config.js'
import type { TransfersTable } from '../../src/db/types.js'
import { errors } from '../../src/errors.js'
import { cleanName, escapeHtml, issueMagicLink } from '../../src/auth/magic-links.js'
import { emailKey, throttle } from '../../src/auth/throttle.js'
import { audit, normalizeEmail } from '../../src/auth/users.js'
import { Bird, birdJson, birdsQuery, orNull, tagTaken } from '../../src/birds/birds.js'
import { violates } from '../../src/db/index.js'
import { Email, errorResponses, Nullable, PathId, Timestamp, Uuid, UUID_PATTERN } from '../../src/schemas/common.js'
import { WorkspaceId } from '../../src/tenancy/workspaces.js'

const security: Array<Record<string, string[]>> = [{ bearer: [] }, { integrationToken: [] }]

const Transfer = Type.Object({
  id: Uuid,
  birdId: Uuid,
  sourceWorkspaceId: WorkspaceId,
  destinationOwnerEmail: Type.String(),
  notes: Nullable(Type.String()),
  status: Type.Enum(['pending', 'accepted', 'cancelled']),
  createdAt: Timestamp,
  acceptedAt: Nullable(Timestamp),
  destinationWorkspaceId: Nullable(WorkspaceId)
}, { title: 'Transfer' })

const DraftBody = Type.Object({
  birdId: Uuid,
  destinationOwnerEmail: Email,
  notes: Type.Optional(Nullable(Type.String({ maxLength: 2000 })))
}, { additionalProperties: false })

const transferJson = (row: Selectable<TransfersTable>) => ({
  id: row.id,
  birdId: row.bird_id,
  sourceWorkspaceId: row.source_workspace_id,
  destinationOwnerEmail: row.destination_email,
  notes: row.notes,
  status: row.status,
  createdAt: new Date(row.created_at).toISOString(),
  acceptedAt: row.accepted_at === null ? null : new Date(row.accepted_at).toISOString(),
  destinationWorkspaceId: row.destination_workspace_id
})

/**
 * Transfer drafts (seed 003): a bird of the active workspace is offered to another owner by
 * e-mail — invited by a sign-in link when the address has no account — and that person
 * later accepts it into a workspace of theirs, where it arrives with its whole history.
 * Only an account whose address is verified sees and accepts what was offered to it.
 */
const transferRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, db, store } = fastify
  const base = publicUrl(config)
  const preview = !fastify.mailer.delivers && !isProduction(config)

  fastify.post('/api/transfers/draft', {
    config: { action: 'transfers.write', payload: 'transfer' },
    schema: {
      tags: ['birds'],
      summary: 'Offer a bird of the active workspace to another owner by e-mail (seed 003)',
      description: 'Drafting again for the same bird and address updates the open draft. An address without an account gets a sign-in link (inviteDelivery, and invitePreviewUrl without SMTP outside production).',
      security,
      body: DraftBody,
      response: {
        201: Type.Object({
          ok: Type.Literal(true),
          bird: Bird,
          destinationOwnerEmail: Type.String(),
          destinationOwnerExists: Type.Boolean(),
          inviteSent: Type.Boolean(),
          invitePreviewUrl: Type.Optional(Type.String()),
          inviteDelivery: Type.Optional(Type.Enum(['email', 'preview'])),
          transfer: Transfer
        }),
        ...errorResponses(400, 401, 403, 404, 429)
      }
    }
  }, async (request, reply) => {
    const { workspaceId } = request.access!
    const { birdId } = request.body
    const email = normalizeEmail(request.body.destinationOwnerEmail)
    const bird = await birdsQuery(db, workspaceId).where('b.id', '=', birdId).executeTakeFirst()
    if (bird === undefined) throw errors.notFound('bird')
    const origin = fastify.originOf(request)
    const drafted = db.transaction().execute(async trx => {
      // No bird is offered away by a caller whom a mailbox proof, a deactivation or a removal
      // has ended meanwhile, nor one that has left the workspace since it was read above.
      await fastify.lockAccess(trx, request)
      const still = await trx.selectFrom('birds').select('id').where('id', '=', bird.id).where('workspace_id', '=', workspaceId).forKeyShare().executeTakeFirst()
      if (still === undefined) throw errors.notFound('bird')
      const destination = await trx.selectFrom('users').select(['id', 'email_verified']).where('email', '=', email).executeTakeFirst()
      const notes = orNull(request.body.notes)
      const transfer = await trx.insertInto('transfers').values({
        bird_id: bird.id,
        source_workspace_id: workspaceId,
        destination_email: email,
        notes,
        created_by: request.user!.id
      }).onConflict(conflict => conflict.columns(['bird_id', 'destination_email']).where('status', '=', 'pending')
        .doUpdateSet({ notes, updated_at: new Date(fastify.now()) }))
        .returningAll().executeTakeFirstOrThrow()
      await audit(trx, { action: 'transfer.drafted', actorUserId: request.user!.id, subjectType: 'transfer', subjectId: transfer.id, ip: origin.ip, userAgent: origin.userAgent, details: { workspaceId, birdId: bird.id, destinationExists: destination !== undefined } })
      return { transfer, exists: destination !== undefined, verified: destination?.email_verified === true }
    })
    const { transfer, exists, verified } = await drafted.catch((error: unknown) => {
      // The bird was deleted in the meantime.
      if ((error as { code?: string }).code === '23503') throw errors.notFound('bird')
      throw error
    })
    await fastify.events.publish(workspaceId, { type: 'transfer.created', id: transfer.id, birdId: bird.id })
    reply.code(201)
    const answer = { ok: true as const, bird: birdJson(bird), destinationOwnerEmail: email, destinationOwnerExists: exists, inviteSent: false, transfer: transferJson(transfer) }
    // An account whose address is verified sees the offer; anyone else gets a link that proves it.
    if (verified) return answer
    await throttle(store, reply, `invite:${emailKey(email)}`, config.MAGIC_LINK_MAX_PER_EMAIL, config.LOGIN_WINDOW,
      'Too many invitations for this address, please try again later.')
    const frontend = config.FRONTEND_URL ?? base
    const link = config.MAGIC_LINKS === 'enabled'
      ? await issueMagicLink(store, base, { email, name: null, redirectTo: frontend }, fastify.now(), config.INVITE_TTL)
      : frontend
    if (preview) return { ...answer, inviteSent: true, invitePreviewUrl: link, inviteDelivery: 'preview' as const }
    const sender = cleanName(request.user!.name) ?? 'Someone'
    const birdName = cleanName(bird.name) ?? 'a bird'
    fastify.mailer.enqueue({
      to: email,
      subject: `${sender} wants to transfer ${birdName} to you`,
      text: `Hello,\n\n${sender} wants to transfer ${birdName} to you, with its weights and vet visits.\nOpen this link to sign in and accept it:\n\n${link}\n\nIf you do not know them, ignore this e-mail.\n`,
      html: `<p>Hello,</p><p>${escapeHtml(sender)} wants to transfer ${escapeHtml(birdName)} to you, with its weights and vet visits.</p><p><a href="${escapeHtml(link)}">Sign in to accept it</a></p><p>If you do not know them, ignore this e-mail.</p>`
    })
    return { ...answer, inviteSent: true, inviteDelivery: 'email' as const }
  })

  fastify.get('/api/transfers', {
    config: { action: 'birds.read' },
    schema: {
      tags: ['birds'],
      summary: 'Open transfers offered to the caller (incoming) and those offered from the active workspace (outgoing)',
      description: 'Incoming transfers are listed only for an account whose address is verified.',
      security,
      response: { 200: Type.Object({ incoming: Type.Array(Type.Object({ ...Transfer.properties, birdName: Type.String() })), outgoing: Type.Array(Transfer) }), ...errorResponses(401, 403) }
    }
  }, async (request) => {
    const user = request.user!
    const incoming = user.email_verified
      ? await db.selectFrom('transfers as t').innerJoin('birds as b', 'b.id', 't.bird_id')
        .selectAll('t').select('b.name as bird_name')
        .where('t.destination_email', '=', user.email).where('t.status', '=', 'pending')
        .orderBy('t.created_at').orderBy('t.id').limit(500).execute()
      : []
    const outgoing = await db.selectFrom('transfers').selectAll()
      .where('source_workspace_id', '=', request.access!.workspaceId)
      .orderBy('created_at', 'desc').orderBy('id').limit(500).execute()
    return {
      incoming: incoming.map(row => ({ ...transferJson(row), birdName: row.bird_name })),
      outgoing: outgoing.map(transferJson)
    }
  })

  fastify.post('/api/transfers/:transferId/accept', {
    config: { action: 'transfers.write' },
    schema: {
      tags: ['birds'],
      summary: 'Accept a transfer offered to the caller: the bird moves, with its weights and vet visits, into the active workspace',
      description: '404 unless the transfer is open and offered to the caller\'s verified address; 409 when the bird has left its workspace or its tagId is taken here.',
      security,
      params: Type.Object({ transferId: PathId }),
      response: { 200: Type.Object({ transfer: Transfer, bird: Bird }), ...errorResponses(401, 403, 404, 409) }
    }
  }, async (request) => {
    const { transferId } = request.params
    const user = request.user!
    const { workspaceId } = request.access!
    if (!UUID_PATTERN.test(transferId) || !user.email_verified) throw errors.notFound('transfer')
    const origin = fastify.originOf(request)
    const { transfer, source, bird } = await db.transaction().execute(async trx => {
      // Nor taken in by one: the caller is still signed in, active and a member here.
      await fastify.lockAccess(trx, request)
      // The bird first, then its offers: two offers of one bird accepted at once queue on the
      // bird instead of locking each other's rows (the loser then finds its offer cancelled).
      const offered = await trx.selectFrom('transfers').select('bird_id').where('id', '=', transferId).executeTakeFirst()
      if (offered === undefined) throw errors.notFound('transfer')
      await trx.selectFrom('birds').select('id').where('id', '=', offered.bird_id).forUpdate().executeTakeFirst()
      const open = await trx.selectFrom('transfers').selectAll()
        .where('id', '=', transferId).where('destination_email', '=', user.email).where('status', '=', 'pending')
        .forUpdate().executeTakeFirst()
      if (open === undefined) throw errors.notFound('transfer')
      if (open.source_workspace_id === workspaceId) throw errors.conflict('The bird is already in this workspace.', 'SAME_WORKSPACE')
      const now = new Date(fastify.now())
      let moved
      try {
        moved = await trx.updateTable('birds').set({ workspace_id: workspaceId, updated_at: now })
          .where('id', '=', open.bird_id).where('workspace_id', '=', open.source_workspace_id)
          .returning('id').executeTakeFirst()
      } catch (error) {
        if (violates(error, 'birds_tag_key')) throw tagTaken()
        throw error
      }
      if (moved === undefined) throw errors.conflict('The bird is no longer in the workspace it was offered from.', 'BIRD_MOVED')
      const transfer = await trx.updateTable('transfers')
        .set({ status: 'accepted', accepted_at: now, accepted_by: user.id, destination_workspace_id: workspaceId, updated_at: now })
        .where('id', '=', open.id).returningAll().executeTakeFirstOrThrow()
      // Other open offers of the bird are void now.
      await trx.updateTable('transfers').set({ status: 'cancelled', updated_at: now })
        .where('bird_id', '=', open.bird_id).where('status', '=', 'pending').execute()
      await audit(trx, { action: 'transfer.accepted', actorUserId: user.id, subjectType: 'transfer', subjectId: open.id, ip: origin.ip, userAgent: origin.userAgent, details: { birdId: open.bird_id, from: open.source_workspace_id, to: workspaceId } })
      const bird = await birdsQuery(trx, workspaceId).where('b.id', '=', open.bird_id).executeTakeFirstOrThrow()
      return { transfer, source: open.source_workspace_id, bird }
    })
    await fastify.events.publish(source, { type: 'bird.transferred', id: bird.id, birdId: bird.id })
    await fastify.events.publish(workspaceId, { type: 'transfer.accepted', id: transfer.id, birdId: bird.id })
    return { transfer: transferJson(transfer), bird: birdJson(bird) }
  })
}

export default transferRoutes
