import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import websocket from '@fastify/websocket'
import type { FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import type { WebSocket } from 'ws'
import { errors } from '../../src/errors.js'
import { MAX_INT4 } from '../../src/schemas/common.js'
import { MESSAGES } from '../../src/tenancy/policy.js'
import { ACCESS_COOKIE, UNAUTHORIZED_MESSAGES } from '../../plugins/auth.js'
import type { AccessTokenClaims } from '../../plugins/keys.js'

/** Close codes (4000–4999 are the application's): the client should refresh and reconnect, or give up. */
export const CLOSE = { sessionEnded: 4401, notAMember: 4403 } as const
const WATCH_EVERY = 1_000

interface Live { socket: WebSocket, claims: AccessTokenClaims, workspaceId: number, stop: () => void }

declare module 'fastify' {
  interface FastifyRequest {
    /** The checked access token and workspace of a WebSocket upgrade. */
    live: { claims: AccessTokenClaims, workspaceId: number } | null
  }
}

/**
 * Live updates (seed 001's cookie-authenticated WebSocket): `GET /api/ws` upgrades for a
 * signed-in browser — the `access_token` cookie (Path /api/ws, HttpOnly), an Origin on the
 * allow-list, a live session of an active user, a membership of the workspace — and then
 * pushes that workspace's changes, from any instance, as small JSON events. The socket is
 * closed when its session ends, its access token expires (4401: refresh, then reconnect) or
 * the membership goes (4403), checked every second against the in-process revocation set
 * and membership cache.
 */
const liveRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { keys, sessions, users, memberships } = fastify
  await fastify.register(websocket, { options: { maxPayload: 1024 } })
  fastify.decorateRequest('live', null)

  const sockets = new Set<Live>()
  const watch = setInterval(() => {
    const now = Date.now()
    for (const live of sockets) {
      if (sessions.isRevoked(live.claims.sid) || live.claims.exp * 1000 <= now) {
        live.socket.close(CLOSE.sessionEnded, 'session ended')
        continue
      }
      memberships.get(live.workspaceId, live.claims.sub).then(member => {
        if (member === null) live.socket.close(CLOSE.notAMember, 'no longer a member')
      }, () => {})
    }
  }, WATCH_EVERY).unref()
  fastify.addHook('onClose', async () => {
    clearInterval(watch)
    for (const live of sockets) live.socket.close(1001, 'server shutting down')
  })

  /** The upgrade's checks, answered as plain HTTP errors before any upgrade. */
  const admit = async (request: FastifyRequest<{ Querystring: { workspaceId?: number } }>): Promise<void> => {
    fastify.checkCookieRequest(request)
    const header = request.headers.cookie
    const token = header === undefined ? undefined : fastify.parseCookie(header)[ACCESS_COOKIE]
    // Seed 001's route: no seed prescribes its texts, so they are the default ones.
    const texts = UNAUTHORIZED_MESSAGES.default
    if (token === undefined || token === '') throw errors.unauthorized(texts.required, 'TOKEN_REQUIRED')
    const claims = await keys.verifyAccessToken(token).catch(() => { throw errors.unauthorized(texts.invalid, 'TOKEN_INVALID') })
    const user = await users.get(claims.sub)
    // A deactivated user's sessions are revoked too; they are told why, as on every route.
    if (user !== undefined && !user.is_active) throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
    if (user === undefined || sessions.isRevoked(claims.sid)) throw errors.unauthorized(texts.invalid, 'TOKEN_INVALID')
    const workspaceId = request.query.workspaceId ?? claims.wid
    if (workspaceId === undefined || await memberships.get(workspaceId, user.id) === null) throw errors.forbidden(MESSAGES.forbidden, 'NOT_A_MEMBER')
    request.live = { claims, workspaceId }
  }

  fastify.get('/api/ws', {
    websocket: true,
    // After validation (the querystring is a number by then), before the upgrade.
    preHandler: admit,
    schema: {
      tags: ['live'],
      summary: 'Live updates of the active workspace over a WebSocket (seed 001; the access_token cookie)',
      description: 'Messages are JSON: first {type:"ready", workspaceId}, then events such as {type:"bird.created", workspaceId, id, birdId, at}. `workspaceId` picks another workspace of the user, as X-Workspace-Id does. Closed with 4401 when the session ends or the access token expires (refresh, then reconnect) and 4403 when the membership ends.',
      querystring: Type.Object({ workspaceId: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_INT4 })) })
    }
  }, (socket, request) => {
    const { claims, workspaceId } = request.live!
    const live: Live = {
      socket,
      claims,
      workspaceId,
      stop: fastify.events.listen(workspaceId, event => {
        if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(event))
      })
    }
    sockets.add(live)
    socket.on('close', () => {
      live.stop()
      sockets.delete(live)
    })
    // The socket only listens; whatever a client sends is ignored.
    socket.on('message', () => {})
    socket.send(JSON.stringify({ type: 'ready', workspaceId }))
  })
}

export default liveRoutes
