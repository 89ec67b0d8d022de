import { createHash, randomBytes } from 'node:crypto'
import type { Store } from '../store/types.js'

/** What the store keeps of an issued magic link (under the hash of its token). */
export interface PendingLink { email: string, name: string | null, redirectTo: string, expiresAt: number }

export const linkKey = (token: string): string => `ml:${createHash('sha256').update(token).digest('base64url')}`

/** Control characters and line breaks never reach a mail or a page; the rest is escaped where it is used. */
export const cleanName = (name: string | undefined | null): string | null => {
  // eslint-disable-next-line no-control-regex -- control characters are what it removes
  const cleaned = name?.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim()
  return cleaned === undefined || cleaned === '' ? null : cleaned
}

export const escapeHtml = (text: string): string =>
  text.replace(/[&<>"']/g, character => `&#${character.charCodeAt(0)};`)

/**
 * Issues a single-use sign-in link for `email` (256-bit token, only its hash stored, valid
 * `ttlMs`): the magic-link request and workspace invitations both use it.
 */
export async function issueMagicLink (store: Store, base: string, link: Omit<PendingLink, 'expiresAt'>, now: number, ttlMs: number): Promise<string> {
  const token = randomBytes(32).toString('base64url')
  const pending: PendingLink = { ...link, expiresAt: now + ttlMs }
  await store.set(linkKey(token), JSON.stringify(pending), ttlMs)
  return `${base}/api/auth/magic-link/verify?token=${token}`
}
