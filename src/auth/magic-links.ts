import { createHash, randomBytes } from 'node:crypto'
import type { Store } from '../store/types.js'

/**
 * What the store keeps of an issued magic link (under the hash of its token). `binding` is the
 * hash of the binding cookie of the browser that asked for the link; a link asked for by a
 * script, and an invitation link (sent by the server), have none.
 */
export interface PendingLink { email: string, name: string | null, redirectTo: string, expiresAt: number, binding?: string }

const sha256 = (text: string): string => createHash('sha256').update(text).digest('base64url')

export const linkKey = (token: string): string => `ml:${sha256(token)}`

/**
 * One binding cookie per link, named after its token, so that links asked for in several tabs
 * each keep theirs (a cookie name may hold letters, digits, - and _, as base64url does).
 * `__Host-`: no sibling host can set it.
 */
export const bindingCookieName = (token: string): string =>
  `__Host-ml_binding_${sha256(`binding:${token}`).slice(0, 22)}`

/** A new binding: the cookie's random value, and its hash, stored with the link. */
export function newBinding (): { value: string, hash: string } {
  const value = randomBytes(32).toString('base64url')
  return { value, hash: sha256(value) }
}

/** Whether `value` (a binding cookie) is the one of the browser that asked for the link. */
export const bindingMatches = (pending: PendingLink, value: string | undefined): boolean =>
  pending.binding !== undefined && value !== undefined && value !== '' && sha256(value) === pending.binding

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
 * `ttlMs`): invitations (workspace members, transfers) use it. Such a link has no binding: it
 * always opens the confirmation page.
 */
export async function issueMagicLink (store: Store, base: string, link: Omit<PendingLink, 'expiresAt'>, now: number, ttlMs: number): Promise<string> {
  return (await createMagicLink(store, base, link, now, ttlMs)).url
}

/** The same, answering the token too: the magic-link request names the link's binding cookie after it. */
export async function createMagicLink (store: Store, base: string, link: Omit<PendingLink, 'expiresAt'>, now: number, ttlMs: number): Promise<{ url: string, token: string }> {
  const token = randomBytes(32).toString('base64url')
  const pending: PendingLink = { ...link, expiresAt: now + ttlMs }
  await store.set(linkKey(token), JSON.stringify(pending), ttlMs)
  return { url: `${base}/api/auth/magic-link/verify?token=${token}`, token }
}

/**
 * The confirmation page: it names the address the link signs in, so that someone sent a link
 * that is not theirs (a forged navigation, see README's Login CSRF) sees it before the click.
 * Its button posts the token; opening it uses nothing up (mail scanners open links).
 */
export const confirmationPage = (token: string, email: string): string => `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>Sign in</title></head>
<body style="font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;text-align:center">
<h1>Sign in</h1><p>This link signs in as</p><p id="email" style="font-size:1.2rem;font-weight:600;overflow-wrap:anywhere">${escapeHtml(email)}</p>
<p>Continue only if this is your address and you asked for this link.</p>
<form method="post" action="/api/auth/magic-link/verify"><input type="hidden" name="token" value="${escapeHtml(token)}">
<button type="submit" style="font-size:1.1rem;padding:.6rem 1.4rem">Continue</button></form></body></html>`
