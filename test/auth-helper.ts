import type { FastifyInstance, LightMyRequestResponse } from 'fastify'

/*
 * Small helpers for tests that sign users in. They go through the public endpoints only,
 * like a client would.
 */

export const PASSWORD = 'correct horse battery staple 42'

export interface SignedIn {
  status: number
  accessToken: string
  refreshToken: string
  user: { id: string, email: string, role: string }
  response: LightMyRequestResponse
}

export async function register (app: FastifyInstance, email: string, password = PASSWORD, extra: Record<string, unknown> = {}): Promise<SignedIn> {
  const response = await app.inject({ method: 'POST', url: '/api/auth/register', payload: { email, password, name: email.split('@')[0], ...extra } })
  const body = response.json()
  return { status: response.statusCode, accessToken: body.accessToken, refreshToken: body.refreshToken, user: body.user, response }
}

export async function login (app: FastifyInstance, email: string, password = PASSWORD, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}): Promise<SignedIn> {
  const response = await app.inject({ method: 'POST', url: '/api/auth/login', payload: { email, password, ...extra }, headers })
  const body = response.json()
  return { status: response.statusCode, accessToken: body.accessToken, refreshToken: body.refreshToken, user: body.user, response }
}

/** Creates the first admin (bootstrap) and signs in as it. */
export async function admin (app: FastifyInstance, email = 'admin@example.com'): Promise<SignedIn> {
  const response = await app.inject({ method: 'POST', url: '/api/auth/bootstrap', payload: { email, password: PASSWORD, name: 'Admin' } })
  if (response.statusCode !== 201) throw new Error(`bootstrap failed: ${response.statusCode} ${response.body}`)
  return await login(app, email)
}

export function bearer (token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` }
}

/** A Set-Cookie header of a response, parsed into name, value and attributes. */
export function cookie (response: LightMyRequestResponse, name: string): Record<string, string | boolean> | undefined {
  const headers = response.headers['set-cookie']
  const list = headers === undefined ? [] : Array.isArray(headers) ? headers : [headers]
  for (const header of list) {
    const [pair, ...attributes] = header.split(';').map(part => part.trim())
    const index = pair!.indexOf('=')
    if (pair!.slice(0, index) !== name) continue
    const parsed: Record<string, string | boolean> = { value: decodeURIComponent(pair!.slice(index + 1)) }
    for (const attribute of attributes) {
      const at = attribute.indexOf('=')
      if (at === -1) parsed[attribute.toLowerCase()] = true
      else parsed[attribute.slice(0, at).toLowerCase()] = attribute.slice(at + 1)
    }
    return parsed
  }
  return undefined
}

/**
 * Registers a password account and marks its address verified (as a magic-link sign-in
 * would): such an account joins a workspace at once when invited, where an unverified one
 * is sent an invitation link instead.
 */
export async function registerVerified (app: FastifyInstance, email: string, password = PASSWORD, extra: Record<string, unknown> = {}): Promise<SignedIn> {
  const signedIn = await register(app, email, password, extra)
  if (signedIn.status === 201) {
    await app.db.updateTable('users').set({ email_verified: true }).where('id', '=', signedIn.user.id).execute()
    app.users.forget(signedIn.user.id)
  }
  return signedIn
}

/**
 * Follows an invitation (or magic) link as the invitee's mail client and SPA would: open it,
 * then refresh with the cookie it set, from the frontend's `origin`. The access token is ''
 * when the link signed nobody in.
 */
export async function acceptInvitation (app: FastifyInstance, link: string, origin: string): Promise<{ opened: LightMyRequestResponse, accessToken: string }> {
  const url = new URL(link)
  const opened = await app.inject({ url: url.pathname + url.search })
  const refresh = cookie(opened, 'refresh_token')
  if (refresh === undefined) return { opened, accessToken: '' }
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin, cookie: `refresh_token=${refresh.value as string}` } })
  return { opened, accessToken: refreshed.json().accessToken }
}
