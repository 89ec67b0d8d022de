import type { onSendHookHandler } from 'fastify'
import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * 'seed002': the route answers in seed 002's envelope whatever RESPONSE_ENVELOPE says;
     * its handler builds the success body itself, its errors are wrapped here.
     */
    envelope?: 'seed002'
  }
}

/** Seed 002's error shape from the SPEC's error body. */
export function envelopeError (body: { error?: unknown, code?: unknown, details?: unknown }): Record<string, unknown> {
  const wrapped: Record<string, unknown> = { success: false, message: body.error, code: body.code }
  if (body.details !== undefined) wrapped.details = body.details
  return wrapped
}

/**
 * RESPONSE_ENVELOPE=success (SPEC decision 1) wraps every JSON answer as seed 002 does:
 * `{ success: true, data }` and `{ success: false, message, code, details? }`. Works on the
 * serialized payload, after the response schemas have done their part.
 */
export default fp(async (fastify) => {
  const everywhere = fastify.config.RESPONSE_ENVELOPE === 'success'
  const wrap: onSendHookHandler<unknown> = async (request, reply, payload) => {
    if (typeof payload !== 'string' || !String(reply.getHeader('content-type') ?? '').startsWith('application/json')) return payload
    if (reply.statusCode >= 400) return JSON.stringify(envelopeError(JSON.parse(payload) as Record<string, unknown>))
    if (request.routeOptions.config.envelope === 'seed002') return payload
    return `{"success":true,"data":${payload}}`
  }
  if (everywhere) {
    fastify.addHook('onSend', wrap)
    return
  }
  // Otherwise only the seed 002 routes pay for the hook.
  fastify.addHook('onRoute', route => {
    if (route.config?.envelope !== 'seed002') return
    const hooks = route.onSend === undefined ? [] : Array.isArray(route.onSend) ? route.onSend : [route.onSend]
    route.onSend = [...hooks, wrap]
  })
}, { name: 'envelope', dependencies: ['config'], fastify: '5.x' })
