import type { FastifyInstance, FastifyReply, FastifyServerOptions } from 'fastify'
import { developmentLimits, trustProxy, type Config } from './config.js'
import { loggerOptions } from './logger.js'
import configPlugin from '../plugins/config.js'
import dbPlugin from '../plugins/db.js'
import docsPlugin from '../plugins/docs.js'
import envelopePlugin from '../plugins/envelope.js'
import errorsPlugin from '../plugins/errors.js'
import rateLimitPlugin from '../plugins/rate-limit.js'
import securityPlugin from '../plugins/security.js'
import storePlugin from '../plugins/store.js'
import authPlugin from '../plugins/auth.js'
import keysPlugin from '../plugins/keys.js'
import mailerPlugin from '../plugins/mailer.js'
import integrationTokensPlugin from '../plugins/integration-tokens.js'
import tenancyPlugin from '../plugins/tenancy.js'
import validationPlugin from '../plugins/validation.js'
import eventsPlugin from '../plugins/events.js'
import adminRoutes from '../routes/admin/index.js'
import authRoutes from '../routes/auth/index.js'
import magicLinkRoutes from '../routes/auth/magic-link.js'
import oauthRoutes from '../routes/auth/oauth.js'
import sessionRoutes from '../routes/auth/session.js'
import integrationTokenRoutes from '../routes/integration-tokens/index.js'
import birdRoutes from '../routes/birds/index.js'
import transferRoutes from '../routes/transfers/index.js'
import imageRoutes from '../routes/images/index.js'
import liveRoutes from '../routes/ws/index.js'
import workspaceRoutes from '../routes/workspaces/index.js'
import healthRoutes from '../routes/health/index.js'
import jwksRoutes from '../routes/jwks/index.js'
import demoRoutes from '../routes/demo/index.js'
import homeRoutes from '../routes/home/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Set when a shutdown has begun: readiness answers 503 while the server drains. */
    lifecycle: { draining: boolean }
  }
}

export interface AppOptions {
  config: Config
  /** The clock (ms since the epoch); tests inject their own. */
  now?: () => number
}

/** Fastify's constructor options, which depend on the configuration. */
export function serverOptions (config: Config): FastifyServerOptions {
  return {
    logger: loggerOptions(config),
    trustProxy: trustProxy(config),
    bodyLimit: config.BODY_LIMIT,
    // Slow clients cannot hold a connection forever (slowloris).
    requestTimeout: 30_000,
    // Start-up work is bounded by its own timeouts (DATABASE_CONNECT_TIMEOUT, REDIS_CONNECT_TIMEOUT);
    // a first start of the embedded database with its migrations takes 5–10 s on a busy 2-core
    // machine, and a real migration may take longer: Fastify's 10 s would cut them off.
    pluginTimeout: 120_000,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    // Path ids up to this length reach their route, which answers a malformed one as an unknown one.
    maxParamLength: 1024,
    // The router's own refusals (an undecodable path, a parameter longer still) in the one error
    // shape: a URL that names no resource is 404, and nothing of it is reflected.
    frameworkErrors: (error, request, reply) => {
      const known = error.code === 'FST_ERR_BAD_URL' || error.code === 'FST_ERR_MAX_PARAM_LENGTH'
      if (!known) request.log.error({ err: error }, 'request failed before routing')
      const answer = reply as unknown as FastifyReply
      answer.code(known ? 404 : 500)
        .header('content-type', 'application/json; charset=utf-8')
        .header('x-content-type-options', 'nosniff')
        .header('content-security-policy', "default-src 'none'; frame-ancestors 'none'")
        .send(JSON.stringify(known ? { error: 'Not found', code: 'NOT_FOUND' } : { error: 'Internal server error', code: 'INTERNAL_ERROR' }))
    }
    // Request validation (Ajv) is set up by plugins/validation.ts: bodies strict, the rest coerced.
  }
}

/**
 * The whole service as one plugin: infrastructure first (one concern per plugin), then the
 * routes. src/server.ts starts it; the tests build this very plugin.
 */
export default async function app (fastify: FastifyInstance, options: AppOptions): Promise<void> {
  // First: every route registered after it gets its validator compiler.
  await fastify.register(validationPlugin)
  await fastify.register(configPlugin, options.now === undefined ? { config: options.config } : { config: options.config, now: options.now })
  await fastify.register(errorsPlugin)
  await fastify.register(securityPlugin)
  await fastify.register(dbPlugin)
  await fastify.register(storePlugin)
  await fastify.register(keysPlugin)
  await fastify.register(integrationTokensPlugin)
  await fastify.register(authPlugin)
  await fastify.register(tenancyPlugin)
  await fastify.register(eventsPlugin)
  await fastify.register(mailerPlugin)
  await fastify.register(rateLimitPlugin)
  await fastify.register(envelopePlugin)
  await fastify.register(docsPlugin)

  fastify.decorate('lifecycle', { draining: false })
  await fastify.register(healthRoutes)
  await fastify.register(jwksRoutes)
  await fastify.register(authRoutes)
  await fastify.register(magicLinkRoutes)
  await fastify.register(oauthRoutes)
  await fastify.register(sessionRoutes)
  await fastify.register(workspaceRoutes)
  await fastify.register(integrationTokenRoutes)
  await fastify.register(birdRoutes)
  await fastify.register(transferRoutes)
  await fastify.register(imageRoutes)
  await fastify.register(liveRoutes)
  await fastify.register(adminRoutes)
  await fastify.register(demoRoutes)
  await fastify.register(homeRoutes)

  fastify.addHook('onReady', async () => {
    const embedded = [
      fastify.database.mode === 'embedded' ? `PGlite in ${options.config.DATA_DIR}/pglite (set DATABASE_URL for PostgreSQL)` : undefined,
      fastify.store.kind === 'memory' ? 'an in-process store (set REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES for Redis)' : undefined
    ].filter(part => part !== undefined)
    if (embedded.length > 0) {
      fastify.log.info(`embedded default: ${embedded.join(' and ')}; not for production`)
    }
    if (options.config.NODE_ENV === 'development') fastify.log.info(developmentLimits(options.config))
  })
}
