import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { errors } from '../../src/errors.js'
import { createImageStore, IMAGE_CONTENT_TYPES, isImageKeyOf, newImageKey } from '../../src/images/images.js'
import { errorResponses, Timestamp } from '../../src/schemas/common.js'

const security: Array<Record<string, string[]>> = [{ bearer: [] }, { integrationToken: [] }]
const NOT_CONFIGURED = 'image storage is not configured'
const ContentType = Type.Enum(IMAGE_CONTENT_TYPES, { description: 'The image type; the upload must send exactly this Content-Type' })

/**
 * Seed 000's presigned image URLs, in the active workspace only: the server names every key
 * under `workspaces/<workspaceId>/images/`, and a key outside that prefix is 404. Uploads go
 * straight to the S3-compatible store with a PUT whose Content-Type and Content-Length are
 * signed, so the store itself refuses another type or a body of another size — which is why
 * `size` is required: a presigned PUT cannot carry a size range, only an exact length.
 */
const imageRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config } = fastify
  const images = createImageStore(config)
  if (images !== null) fastify.addHook('onClose', async () => { images.close() })

  // After authorization, before validation: without storage every request the caller may make is 503.
  const configured = async (): Promise<void> => {
    if (images === null) throw errors.unavailable(NOT_CONFIGURED, 'IMAGE_STORAGE_NOT_CONFIGURED')
  }

  fastify.post('/api/images/upload', {
    config: { action: 'images.write', payload: 'image' },
    preValidation: configured,
    schema: {
      tags: ['images'],
      summary: 'A presigned URL to upload an image into the active workspace (owner, manager, staff; seed 000)',
      description: `Send the image with \`PUT uploadUrl\` and exactly \`headers\` before \`expiresAt\`. Content-Type and Content-Length are signed: the store refuses another type or a body of another length. \`size\` (bytes, at most IMAGE_MAX_BYTES = ${config.IMAGE_MAX_BYTES}) is required for that reason. 503 when image storage is not configured.`,
      security,
      body: Type.Object({
        contentType: ContentType,
        size: Type.Integer({ minimum: 1, maximum: config.IMAGE_MAX_BYTES, description: 'The exact length of the image in bytes' })
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({
          uploadUrl: Type.String(),
          method: Type.Literal('PUT'),
          key: Type.String({ description: 'workspaces/<workspaceId>/images/<uuid>.<ext>; pass it to GET /api/images' }),
          expiresAt: Timestamp,
          headers: Type.Object({ 'Content-Type': ContentType, 'Content-Length': Type.String() }, { description: 'Send exactly these with the PUT' })
        }),
        ...errorResponses(400, 401, 403, 503)
      }
    }
  }, async (request) => {
    const { contentType, size } = request.body
    return await images!.upload(newImageKey(request.access!.workspaceId, contentType), contentType, size, fastify.now())
  })

  fastify.get('/api/images', {
    config: { action: 'images.read' },
    preValidation: configured,
    schema: {
      tags: ['images'],
      summary: 'A presigned URL to download an image of the active workspace (seed 000)',
      description: 'A key outside the active workspace\'s prefix, or not of the form the upload gave, is 404. The URL is signed without asking the store; an object never uploaded is the store\'s 404. 503 when image storage is not configured.',
      security,
      querystring: Type.Object({ key: Type.String({ minLength: 1, maxLength: 1024, description: 'The key POST /api/images/upload answered' }) }),
      response: { 200: Type.Object({ url: Type.String(), expiresAt: Timestamp }), ...errorResponses(400, 401, 403, 404, 503) }
    }
  }, async (request) => {
    const { key } = request.query
    if (!isImageKeyOf(key, request.access!.workspaceId)) throw errors.notFound('image')
    return await images!.download(key, fastify.now())
  })
}

export default imageRoutes
