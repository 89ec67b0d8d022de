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

/** The cookies a response set, as a Cookie header for the next request (as a browser sends them back). */
export function cookiesOf (response: LightMyRequestResponse): string {
  const headers = response.headers['set-cookie']
  const list = headers === undefined ? [] : Array.isArray(headers) ? headers : [headers]
  return list.map(header => header.split(';')[0]!).join('; ')
}

/** A magic link and the Cookie header of the browser that asked for it ('' when a script did). */
export interface AskedLink { response: LightMyRequestResponse, link: URL, binding: string }

/**
 * Asks for a magic link (the answer's previewUrl) as the page at `origin` would — a browser,
 * which gets the link's binding cookie — or, with `origin` null, as a script.
 */
export async function askMagicLink (app: FastifyInstance, payload: Record<string, unknown>, origin: string | null = 'http://localhost:3000'): Promise<AskedLink> {
  const response = await app.inject({ method: 'POST', url: '/api/auth/magic-link/request', payload, headers: origin === null ? {} : { origin } })
  if (response.statusCode !== 202) throw new Error(`magic link request failed: ${response.statusCode} ${response.body}`)
  return { response, link: new URL(response.json().previewUrl as string), binding: cookiesOf(response) }
}

/** Opens a link (GET) with the cookies of the browser that asked for it, if any. */
export async function openLink (app: FastifyInstance, link: URL | string, binding = ''): Promise<LightMyRequestResponse> {
  const url = typeof link === 'string' ? new URL(link) : link
  return await app.inject({ url: url.pathname + url.search, headers: binding === '' ? {} : { cookie: binding } })
}

/** Clicks the confirmation page's button: the form post of the link's token, from the page's own origin. */
export async function confirmLink (app: FastifyInstance, link: URL | string): Promise<LightMyRequestResponse> {
  const url = typeof link === 'string' ? new URL(link) : link
  return await app.inject({
    method: 'POST',
    url: '/api/auth/magic-link/verify',
    headers: { origin: url.origin, 'content-type': 'application/x-www-form-urlencoded' },
    payload: `token=${url.searchParams.get('token') ?? ''}`
  })
}

/**
 * Follows an invitation link (or a link asked for elsewhere) as the invitee's browser and SPA
 * would: open it — the confirmation page, since the invitee's browser never asked for it — click
 * its button, then refresh with the cookie that set, from the frontend's `origin`. `opened` is
 * the answer that ended it: the confirmation's 302, or the link's own refusal (400 when used or
 * expired); `page` is what opening the link showed. The access token is '' when the link
 * signed nobody in.
 */
export async function acceptInvitation (app: FastifyInstance, link: string, origin: string): Promise<{ page: LightMyRequestResponse, opened: LightMyRequestResponse, accessToken: string }> {
  const page = await openLink(app, link)
  const opened = page.statusCode === 200 ? await confirmLink(app, link) : page
  const refresh = cookie(opened, 'refresh_token')
  if (refresh === undefined) return { page, opened, accessToken: '' }
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin, cookie: `refresh_token=${refresh.value as string}` } })
  return { page, opened, accessToken: refreshed.json().accessToken }
}
