import fp from 'fastify-plugin'
import type { Config } from '../src/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    /** Milliseconds since the epoch; tests inject their own clock. */
    now: () => number
  }
}

export interface ConfigOptions {
  config: Config
  now?: () => number
}

/** Exposes the validated configuration (src/config.ts) as `fastify.config`, and the clock. */
export default fp(async (fastify, options: ConfigOptions) => {
  fastify.decorate('config', options.config)
  fastify.decorate('now', options.now ?? Date.now)
}, { name: 'config', fastify: '5.x' })
