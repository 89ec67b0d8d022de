import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { withTimeout, TimeoutError } from '../../src/lib/timeout.js'
import { ErrorBody } from '../../src/schemas/common.js'

const Check = Type.Enum(['ok', 'unreachable', 'timeout'])
const Checks = Type.Object({
  postgres: Check,
  redis: Type.Union([Check, Type.Literal('not_configured')], { description: 'not_configured: no Redis is set up; the in-process store serves (embedded default, one instance)' })
})
const Backends = Type.Object({
  postgres: Type.Enum(['server', 'embedded'], { description: 'embedded: PGlite under DATA_DIR (no DATABASE_URL)' }),
  store: Type.Enum(['redis', 'in-process'], { description: 'in-process: no REDIS_URL; sessions and limits live in this process' })
}, { description: 'What the checks ran against' })

/**
 * Liveness and readiness. Probes are never rate limited (load balancers call them every few
 * seconds); readiness answers within HEALTH_TIMEOUT even when a dependency hangs.
 */
const health: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config } = fastify

  fastify.get('/api/health', {
    config: { rateLimit: false },
    schema: {
      tags: ['health'],
      summary: 'Liveness (seed 003)',
      response: { 200: Type.Object({ ok: Type.Boolean() }) }
    }
  }, async () => ({ ok: true }))

  fastify.get('/health', {
    config: { rateLimit: false },
    schema: {
      tags: ['health'],
      summary: 'Liveness with uptime (seed 002)',
      response: {
        200: Type.Object({
          status: Type.String(),
          timestamp: Type.String({ format: 'date-time' }),
          uptime: Type.Number({ description: 'Seconds since the process started' }),
          environment: Type.String()
        })
      }
    }
  }, async () => ({
    status: 'ok',
    timestamp: new Date().toISOString(),
    uptime: process.uptime(),
    environment: config.NODE_ENV
  }))

  const probe = async (check: () => Promise<void>): Promise<'ok' | 'unreachable' | 'timeout'> => {
    try {
      await withTimeout(check(), config.HEALTH_TIMEOUT)
      return 'ok'
    } catch (error) {
      return error instanceof TimeoutError ? 'timeout' : 'unreachable'
    }
  }

  fastify.get('/api/health/ready', {
    config: { rateLimit: false },
    schema: {
      tags: ['health'],
      summary: 'Readiness: 200 when PostgreSQL and Redis answer, 503 naming the one that does not',
      description: 'On the embedded default the database check runs against PGlite and there is no Redis to check (`redis: not_configured`); `backends` says which is which.',
      response: {
        200: Type.Object({ status: Type.Literal('ready'), checks: Checks, backends: Backends }),
        503: ErrorBody
      }
    }
  }, async (_request, reply) => {
    if (fastify.lifecycle.draining) {
      return await reply.code(503).send({ error: 'Not ready: shutting down', code: 'SHUTTING_DOWN' })
    }
    const inProcess = fastify.store.kind === 'memory'
    const [postgres, redis] = await Promise.all([
      probe(fastify.database.ping),
      inProcess ? 'not_configured' as const : probe(fastify.store.ping.bind(fastify.store))
    ])
    const checks = { postgres, redis }
    const backends = { postgres: fastify.database.mode === 'embedded' ? 'embedded' as const : 'server' as const, store: inProcess ? 'in-process' as const : 'redis' as const }
    const failing = Object.entries(checks).filter(([, state]) => state !== 'ok' && state !== 'not_configured').map(([name]) => name)
    if (failing.length === 0) return { status: 'ready' as const, checks, backends }
    return await reply.code(503).send({
      error: `Not ready: ${failing.join(' and ')} did not answer`,
      code: 'NOT_READY',
      details: checks
    })
  })
}

export default health
