import { createHash } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Config } from '../config.js'
import { errors } from '../errors.js'
import { ipKey } from '../lib/ip-key.js'
import type { Counter, Store } from '../store/index.js'

/** 429 with Retry-After once a counter has passed `max`. */
export function refuseOver (reply: FastifyReply, { count, ttlMs }: Counter, max: number, message: string): void {
  if (count > max) {
    reply.header('Retry-After', Math.max(1, Math.ceil(ttlMs / 1000)))
    throw errors.tooManyRequests(message)
  }
}

/** A fixed-window counter in the store; 429 with Retry-After once `max` is passed. */
export async function throttle (store: Store, reply: FastifyReply, key: string, max: number, windowMs: number, message: string): Promise<void> {
  refuseOver(reply, await store.increment(key, windowMs), max, message)
}

/** A short, stable key for an e-mail address in counter names (the address itself is not stored). */
export function emailKey (email: string): string {
  return createHash('sha256').update(email).digest('base64url').slice(0, 22)
}

const SIGN_IN_IP_MESSAGE = 'Too many sign-in attempts from this IP, please try again later.'

/** The counter of the per-IP sign-in budget (an IPv6 client's whole prefix, see ipKey). */
export function signInIpKey (config: Config, request: FastifyRequest): string {
  return `signin:ip:${ipKey(request.ip, config.RATE_LIMIT_IPV6_PREFIX)}`
}

/** 429 when a count of the per-IP sign-in budget has passed LOGIN_MAX_PER_IP. */
export function refuseOverSignInBudget (config: Config, reply: FastifyReply, counter: Counter): void {
  refuseOver(reply, counter, config.LOGIN_MAX_PER_IP, SIGN_IN_IP_MESSAGE)
}

/** The per-IP budget every sign-in attempt spends (password, register, magic link, OAuth failures, bad refresh tokens). */
export async function signInThrottle (store: Store, config: Config, request: FastifyRequest, reply: FastifyReply): Promise<void> {
  refuseOverSignInBudget(config, reply, await store.increment(signInIpKey(config, request), config.LOGIN_WINDOW))
}
