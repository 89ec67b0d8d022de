import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import fp from 'fastify-plugin'
import { isProduction, publicUrl } from '../src/config.js'

/**
 * The OpenAPI 3 document, generated from the route schemas, at /docs/json, and its UI at
 * /docs (unless DOCS=disabled). Registered before the routes so that it sees every one of them.
 */
export default fp(async (fastify) => {
  const { config } = fastify
  // DOCS=disabled: neither the document nor its UI is served (both routes are 404).
  if (config.DOCS === 'disabled') return
  await fastify.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Gatehouse',
        description: 'Authentication and multi-tenancy API: sessions, JWT access tokens, workspaces and integration tokens.',
        version: '0.1.0'
      },
      servers: [{ url: publicUrl(config) }],
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'An access token (JWT) of a browser session' },
          integrationToken: { type: 'http', scheme: 'bearer', description: `An integration token (${config.INTEGRATION_TOKEN_PREFIX}…), created at POST /api/integration-tokens` },
          refreshCookie: { type: 'apiKey', in: 'cookie', name: 'refresh_token' }
        }
      }
    }
  })
  await fastify.register(swaggerUi, {
    routePrefix: '/docs',
    staticCSP: true,
    // Over plain http (development) upgrade-insecure-requests would break the page's assets.
    transformStaticCSP: (header: string) => isProduction(config) ? header : header.replace(/\s*upgrade-insecure-requests;?/, ''),
    uiConfig: { docExpansion: 'list', deepLinking: false }
  })
}, { name: 'docs', dependencies: ['config'], fastify: '5.x' })
