import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { errors } from '../../src/errors.js'
import {
  Bird, BirdInput, birdJson, birdsQuery, BirdUpdate, checkFields, DEFAULT_CHART_COLOR, orNull, VetVisit, VetVisitInput, vetVisitJson,
  tagTaken, Weight, WeightInput, weightJson, type BirdRow
} from '../../src/birds/birds.js'
import { violates } from '../../src/db/index.js'
import { errorResponses, PathId, UUID_PATTERN } from '../../src/schemas/common.js'

const security: Array<Record<string, string[]>> = [{ bearer: [] }, { integrationToken: [] }]
const BirdParams = Type.Object({ birdId: PathId })
const BirdAnswer = Type.Object({ bird: Bird })

const encodeCursor = (row: BirdRow): string => Buffer.from(JSON.stringify([new Date(row.created_at).toISOString(), row.id])).toString('base64url')
function decodeCursor (cursor: string): [string, string] {
  try {
    const value: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
    if (Array.isArray(value) && value.length === 2 && typeof value[0] === 'string' && !Number.isNaN(Date.parse(value[0])) &&
      typeof value[1] === 'string' && UUID_PATTERN.test(value[1])) return [value[0], value[1]]
  } catch {}
  throw errors.invalidPayload('query', { cursor: 'is not a cursor from a previous page' })
}

/**
 * Seed 003's birds, weights and vet visits, in the active workspace only: every statement is
 * scoped by `request.access.workspaceId` (from the token or the checked X-Workspace-Id), so a
 * bird of another workspace is 404 on every route and method.
 */
const birdRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { db } = fastify

  /** The bird's id when it is in the active workspace; 404 otherwise. */
  const birdIn = async (workspaceId: number, birdId: string): Promise<string> => {
    if (!UUID_PATTERN.test(birdId)) throw errors.notFound('bird')
    const bird = await db.selectFrom('birds').select('id').where('id', '=', birdId).where('workspace_id', '=', workspaceId).executeTakeFirst()
    if (bird === undefined) throw errors.notFound('bird')
    return bird.id
  }

  fastify.get('/api/birds', {
    config: { action: 'birds.read' },
    schema: {
      tags: ['birds'],
      summary: 'The birds of the active workspace, each with its latest weight (seed 003)',
      description: 'Oldest first. Without `limit` every bird is answered (the seed\'s shape); with it, pages of `limit` and a `nextCursor` to pass as `cursor`.',
      security,
      querystring: Type.Object({
        limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 })),
        cursor: Type.Optional(Type.String({ maxLength: 200 }))
      }),
      response: { 200: Type.Object({ birds: Type.Array(Bird), nextCursor: Type.Optional(Type.Union([Type.String(), Type.Null()])) }), ...errorResponses(400, 401, 403) }
    }
  }, async (request) => {
    const { limit, cursor } = request.query
    let query = birdsQuery(db, request.access!.workspaceId).orderBy('b.created_at').orderBy('b.id')
    if (cursor !== undefined) {
      const [createdAt, id] = decodeCursor(cursor)
      query = query.where(eb => eb.or([eb('b.created_at', '>', new Date(createdAt)), eb.and([eb('b.created_at', '=', new Date(createdAt)), eb('b.id', '>', id)])]))
    }
    if (limit === undefined) return { birds: (await query.execute()).map(birdJson) }
    const rows = await query.limit(limit + 1).execute()
    const page = rows.slice(0, limit)
    return { birds: page.map(birdJson), nextCursor: rows.length > limit ? encodeCursor(page[page.length - 1]!) : null }
  })

  fastify.post('/api/birds', {
    config: { action: 'birds.write', payload: 'bird' },
    schema: {
      tags: ['birds'],
      summary: 'Add a bird (owner, manager, staff; seed 003)',
      security,
      body: BirdInput,
      response: { 201: BirdAnswer, ...errorResponses(400, 401, 403, 409) }
    }
  }, async (request, reply) => {
    const body = request.body
    checkFields('bird', body, ['dateOfBirth', 'gotchaDay'])
    try {
      const row = await db.insertInto('birds').values({
        workspace_id: request.access!.workspaceId,
        name: body.name.trim(),
        tag_id: orNull(body.tagId),
        species: orNull(body.species),
        date_of_birth: orNull(body.dateOfBirth),
        gotcha_day: orNull(body.gotchaDay),
        chart_color: body.chartColor ?? DEFAULT_CHART_COLOR,
        photo_data_url: orNull(body.photoDataUrl),
        notify_on_dob: body.notifyOnDob ?? false,
        notify_on_gotcha_day: body.notifyOnGotchaDay ?? false,
        created_by: request.user!.id,
        // Millisecond precision, so that a page cursor (a JavaScript date) names it exactly.
        created_at: new Date(fastify.now())
      }).returningAll().executeTakeFirstOrThrow()
      await fastify.events.publish(row.workspace_id, { type: 'bird.created', id: row.id, birdId: row.id })
      reply.code(201)
      return { bird: birdJson({ ...row, latest_weight_grams: null, latest_recorded_on: null }) }
    } catch (error) {
      if (violates(error, 'birds_tag_key')) throw tagTaken()
      throw error
    }
  })

  fastify.put('/api/birds/:birdId', {
    config: { action: 'birds.write', payload: 'bird' },
    schema: {
      tags: ['birds'],
      summary: 'Update a bird (owner, manager, staff; seed 003)',
      description: 'The body of POST /api/birds; fields left out keep their value, empty strings clear dateOfBirth, gotchaDay, photoDataUrl, tagId and species.',
      security,
      params: BirdParams,
      body: BirdUpdate,
      response: { 200: BirdAnswer, ...errorResponses(400, 401, 403, 404, 409) }
    }
  }, async (request) => {
    const body = request.body
    checkFields('bird', body, ['dateOfBirth', 'gotchaDay'])
    // After every check of the body: a malformed id answers what an unknown one does.
    const { birdId } = request.params
    if (!UUID_PATTERN.test(birdId)) throw errors.notFound('bird')
    const changes = {
      ...(body.name === undefined ? {} : { name: body.name.trim() }),
      ...(body.tagId === undefined ? {} : { tag_id: orNull(body.tagId) }),
      ...(body.species === undefined ? {} : { species: orNull(body.species) }),
      ...(body.dateOfBirth === undefined ? {} : { date_of_birth: orNull(body.dateOfBirth) }),
      ...(body.gotchaDay === undefined ? {} : { gotcha_day: orNull(body.gotchaDay) }),
      ...(body.chartColor === undefined ? {} : { chart_color: body.chartColor }),
      ...(body.photoDataUrl === undefined ? {} : { photo_data_url: orNull(body.photoDataUrl) }),
      ...(body.notifyOnDob === undefined ? {} : { notify_on_dob: body.notifyOnDob }),
      ...(body.notifyOnGotchaDay === undefined ? {} : { notify_on_gotcha_day: body.notifyOnGotchaDay }),
      updated_at: new Date(fastify.now())
    }
    const workspaceId = request.access!.workspaceId
    try {
      const updated = await db.updateTable('birds').set(changes).where('id', '=', birdId).where('workspace_id', '=', workspaceId)
        .returning('id').executeTakeFirst()
      if (updated === undefined) throw errors.notFound('bird')
    } catch (error) {
      if (violates(error, 'birds_tag_key')) throw tagTaken()
      throw error
    }
    const row = await birdsQuery(db, workspaceId).where('b.id', '=', birdId).executeTakeFirst()
    // Deleted (or transferred) between the update and this read.
    if (row === undefined) throw errors.notFound('bird')
    await fastify.events.publish(workspaceId, { type: 'bird.updated', id: birdId, birdId })
    return { bird: birdJson(row) }
  })

  fastify.delete('/api/birds/:birdId', {
    config: { action: 'birds.write' },
    schema: {
      tags: ['birds'],
      summary: 'Delete a bird with its weights and vet visits (owner, manager, staff; seed 003)',
      security,
      params: BirdParams,
      response: { 204: Type.Null(), ...errorResponses(401, 403, 404) }
    }
  }, async (request, reply) => {
    const { birdId } = request.params
    if (!UUID_PATTERN.test(birdId)) throw errors.notFound('bird')
    // One statement: the weights and visits go with it (ON DELETE CASCADE), all or nothing.
    const deleted = await db.deleteFrom('birds').where('id', '=', birdId).where('workspace_id', '=', request.access!.workspaceId)
      .returning('id').executeTakeFirst()
    if (deleted === undefined) throw errors.notFound('bird')
    await fastify.events.publish(request.access!.workspaceId, { type: 'bird.deleted', id: birdId, birdId })
    return await reply.code(204).send(null)
  })

  fastify.get('/api/birds/:birdId/weights', {
    config: { action: 'birds.read' },
    schema: {
      tags: ['birds'],
      summary: 'A bird\'s weights of the last `days` days, oldest first (seed 003)',
      security,
      params: BirdParams,
      querystring: Type.Object({ days: Type.Optional(Type.Integer({ description: 'Clamped to 1..365; default 30' })) }),
      response: { 200: Type.Object({ weights: Type.Array(Weight) }), ...errorResponses(400, 401, 403, 404) }
    }
  }, async (request) => {
    const birdId = await birdIn(request.access!.workspaceId, request.params.birdId)
    const days = Math.min(365, Math.max(1, request.query.days ?? 30))
    const since = new Date(fastify.now() - (days - 1) * 86_400_000).toISOString().slice(0, 10)
    const rows = await db.selectFrom('bird_weights').selectAll()
      .where('bird_id', '=', birdId).where('recorded_on', '>=', since)
      .orderBy('recorded_on').execute()
    return { weights: rows.map(weightJson) }
  })

  fastify.post('/api/birds/:birdId/weights', {
    config: { action: 'birds.write', payload: 'weight' },
    schema: {
      tags: ['birds'],
      summary: 'Record a weight; one per bird and day (seed 003)',
      security,
      params: BirdParams,
      body: WeightInput,
      response: { 201: Type.Object({ weight: Weight }), ...errorResponses(400, 401, 403, 404, 409) }
    }
  }, async (request, reply) => {
    checkFields('weight', request.body, ['recordedOn'])
    const birdId = await birdIn(request.access!.workspaceId, request.params.birdId)
    try {
      const row = await db.insertInto('bird_weights').values({
        bird_id: birdId,
        weight_grams: request.body.weightGrams,
        recorded_on: request.body.recordedOn,
        notes: orNull(request.body.notes),
        created_by: request.user!.id
      }).returningAll().executeTakeFirstOrThrow()
      await fastify.events.publish(request.access!.workspaceId, { type: 'weight.created', id: row.id, birdId })
      reply.code(201)
      return { weight: weightJson(row) }
    } catch (error) {
      if (violates(error, 'bird_weights_one_per_day')) throw errors.conflict('A weight already exists for that bird on that date.', 'WEIGHT_EXISTS')
      // The bird was deleted in the meantime.
      if ((error as { code?: string }).code === '23503') throw errors.notFound('bird')
      throw error
    }
  })

  fastify.get('/api/birds/:birdId/vet-visits', {
    config: { action: 'birds.read' },
    schema: {
      tags: ['birds'],
      summary: 'A bird\'s vet visits, newest first (seed 003)',
      security,
      params: BirdParams,
      response: { 200: Type.Object({ vetVisits: Type.Array(VetVisit) }), ...errorResponses(401, 403, 404) }
    }
  }, async (request) => {
    const birdId = await birdIn(request.access!.workspaceId, request.params.birdId)
    const rows = await db.selectFrom('vet_visits').selectAll().where('bird_id', '=', birdId)
      .orderBy('visited_on', 'desc').orderBy('created_at', 'desc').orderBy('id').execute()
    return { vetVisits: rows.map(vetVisitJson) }
  })

  fastify.post('/api/birds/:birdId/vet-visits', {
    config: { action: 'birds.write', payload: 'vet visit' },
    schema: {
      tags: ['birds'],
      summary: 'Record a vet visit (owner, manager, staff; seed 003)',
      security,
      params: BirdParams,
      body: VetVisitInput,
      response: { 201: Type.Object({ vetVisit: VetVisit }), ...errorResponses(400, 401, 403, 404) }
    }
  }, async (request, reply) => {
    checkFields('vet visit', request.body, ['visitedOn'])
    const birdId = await birdIn(request.access!.workspaceId, request.params.birdId)
    try {
      const row = await db.insertInto('vet_visits').values({
        bird_id: birdId,
        visited_on: request.body.visitedOn,
        clinic_name: orNull(request.body.clinicName),
        reason: orNull(request.body.reason),
        notes: orNull(request.body.notes),
        created_by: request.user!.id
      }).returningAll().executeTakeFirstOrThrow()
      await fastify.events.publish(request.access!.workspaceId, { type: 'vet_visit.created', id: row.id, birdId })
      reply.code(201)
      return { vetVisit: vetVisitJson(row) }
    } catch (error) {
      if ((error as { code?: string }).code === '23503') throw errors.notFound('bird')
      throw error
    }
  })
}

export default birdRoutes
