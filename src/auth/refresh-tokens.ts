import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto'

/*
 * Refresh tokens are opaque: `<session id>.<256 random bits, base64url>`. Only their SHA-256
 * is stored. Each successor is derived from its predecessor as HMAC-SHA256 under the server's
 * session secret, so a token presented again within the grace window gets the very same
 * successor without any token ever being kept in clear (SPEC "Tokens and sessions"). The
 * session id prefix lets the server find the session with one key lookup; it is not a secret.
 */

const FORMAT = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.([A-Za-z0-9_-]{43})$/

export function newSessionId (): string {
  return randomUUID()
}

export function newRefreshToken (sessionId: string): string {
  return `${sessionId}.${randomBytes(32).toString('base64url')}`
}

export function successorOf (secret: Buffer, token: string, sessionId: string): string {
  return `${sessionId}.${createHmac('sha256', secret).update(token).digest('base64url')}`
}

export function hashToken (token: string): string {
  return createHash('sha256').update(token).digest('base64url')
}

/** The session id of a well-formed refresh token, or undefined. */
export function sessionIdOf (token: string): string | undefined {
  return FORMAT.exec(token)?.[1]
}
