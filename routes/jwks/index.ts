import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type, type Static } from 'typebox'
import { PUBLIC_CORS } from '../../plugins/security.js'

const Jwks = Type.Object({
  keys: Type.Array(Type.Object({
    kty: Type.String(),
    kid: Type.String(),
    alg: Type.String(),
    use: Type.String()
  }, { additionalProperties: true }))
}, { title: 'JWKS' })

/**
 * The public keys that verify our access tokens (seed 000's /api/jwks_json and the standard
 * well-known path): CORS `*` without credentials, cacheable for an hour. A retired key stays
 * listed until every token it signed has expired.
 */
const jwksRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  for (const url of ['/api/jwks_json', '/.well-known/jwks.json']) {
    fastify.get(url, {
      config: { cors: PUBLIC_CORS, rateLimit: false },
      schema: {
        tags: ['keys'],
        summary: 'JSON Web Key Set of the access-token signing keys',
        response: { 200: Jwks }
      }
    }, async (_request, reply) => {
      reply.header('Cache-Control', 'public, max-age=3600').type('application/json; charset=utf-8')
      // Serialized once per key change, sent as is.
      return await reply.send(fastify.keys.jwks() as unknown as Static<typeof Jwks>)
    })
  }
}

export default jwksRoutes
