import fp from 'fastify-plugin'
import type { Config } from '../src/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

/** Exposes the validated configuration (src/config.ts) as `fastify.config`. */
export default fp(async (fastify, options: { config: Config }) => {
  fastify.decorate('config', options.config)
}, { name: 'config', fastify: '5.x' })
