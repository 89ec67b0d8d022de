import fp from 'fastify-plugin'
import { createStore, type Store } from '../src/store/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    store: Store
  }
}

/** The store (src/store): Redis (a server, Sentinel or Cluster) when configured, the in-process store otherwise. */
export default fp(async (fastify) => {
  const store = await createStore(fastify.config, fastify.log)
  fastify.decorate('store', store)
  fastify.addHook('onClose', async () => { await store.close() })
}, { name: 'store', dependencies: ['config'], fastify: '5.x' })
