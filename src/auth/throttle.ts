import { createHash } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../config.js'
import { errors } from '../errors.js'
import type { Store } from '../store/index.js'

/** A fixed-window counter in the store; 429 with Retry-After once `max` is passed. */
export async function throttle (store: Store, reply: FastifyReply, key: string, max: number, windowMs: number, message: string): Promise<void> {
  const { count, ttlMs } = await store.increment(key, windowMs)
  if (count > max) {
    reply.header('Retry-After', Math.max(1, Math.ceil(ttlMs / 1000)))
    throw errors.tooManyRequests(message)
  }
}

/** A short, stable key for an e-mail address in counter names (the address itself is not stored). */
export function emailKey (email: string): string {
  return createHash('sha256').update(email).digest('base64url').slice(0, 22)
}

/** The per-IP budget every sign-in attempt spends (password, register, magic link, OAuth failures, bad refresh tokens). */
export async function signInThrottle (store: Store, config: Config, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  await throttle(store, reply, `signin:ip:${request.ip}`, config.LOGIN_MAX_PER_IP, config.LOGIN_WINDOW,
    'Too many sign-in attempts from this IP, please try again later.')
}
