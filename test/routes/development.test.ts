import type { FastifyInstance } from 'fastify'
import t from 'tap'
import WebSocket from 'ws'
import { build, productionSkip, type Env } from '../helper.js'
import { cookie, login, register, PASSWORD } from '../auth-helper.js'

/*
 * Development mode is for trying things (SPEC decision 14, issue 13): the server listens on
 * 127.0.0.1 while PUBLIC_URL defaults to http://localhost:3000, so in development a browser
 * at either loopback spelling is one of the server's own origins — for the refresh cookie,
 * the WebSocket and the magic-link confirmation page. Production (and test) keep PUBLIC_URL's
 * origin only. And where the limits are not set, development's are generous.
 */

const LOOPBACK = ['http://localhost:3000', 'http://127.0.0.1:3000', 'http://[::1]:3000']
const FOREIGN = ['http://127.0.0.1:3001', 'https://127.0.0.1:3000', 'http://127.0.0.2:3000', 'http://localhost.evil.example:3000', 'null']

type Refresh = (origin: string) => Promise<{ status: number, code?: string }>

/**
 * Signs a browser in from `origin`; answers a function that refreshes that session with its
 * cookie from another origin (a refused attempt does not spend the token; a refresh rotates it).
 */
async function browserSession (app: FastifyInstance, email: string, origin: string): Promise<Refresh> {
  await register(app, email)
  const signedIn = await login(app, email, PASSWORD, {}, { origin })
  let refresh = cookie(signedIn.response, 'refresh_token')!.value as string
  return async refreshOrigin => {
    const response = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin: refreshOrigin, cookie: `refresh_token=${refresh}` } })
    if (response.statusCode === 200) refresh = cookie(response, 'refresh_token')!.value as string
    return { status: response.statusCode, code: response.json().code }
  }
}

const OK = { status: 200, code: undefined }
const REFUSED = { status: 403, code: 'ORIGIN_NOT_ALLOWED' }

t.test('development: a cookie refresh and logout from either loopback spelling of PUBLIC_URL', async t => {
  const app = await build(t, { NODE_ENV: 'development' })
  t.equal(app.config.PUBLIC_URL, undefined, 'PUBLIC_URL defaults to http://localhost:PORT')
  const refreshFrom = await browserSession(app, 'loopback@example.com', 'http://127.0.0.1:3000')
  for (const origin of FOREIGN) t.same(await refreshFrom(origin), REFUSED, `not from ${origin}`)
  for (const origin of LOOPBACK) t.same(await refreshFrom(origin), OK, `refresh from ${origin}: one server, whichever name the page was opened under`)

  const signedIn = await login(app, 'loopback@example.com', PASSWORD, {}, { origin: 'http://[::1]:3000' })
  const logout = await app.inject({
    method: 'POST',
    url: '/api/auth/logout',
    headers: { origin: 'http://127.0.0.1:3000', cookie: `refresh_token=${cookie(signedIn.response, 'refresh_token')!.value as string}` }
  })
  t.equal(logout.statusCode, 200)
  t.equal(cookie(logout, 'refresh_token')?.value, '', 'the cookie is cleared')
})

t.test('development: a public PUBLIC_URL gets no loopback origins', async t => {
  const app = await build(t, { NODE_ENV: 'development', PUBLIC_URL: 'https://auth.example.com' })
  const refreshFrom = await browserSession(app, 'public@example.com', 'https://auth.example.com')
  t.same(await refreshFrom('http://127.0.0.1:3000'), REFUSED)
  t.same(await refreshFrom('http://localhost:3000'), REFUSED)
  t.same(await refreshFrom('https://auth.example.com'), OK)
})

for (const mode of ['production', 'test'] as const) {
  t.test(`${mode}: only PUBLIC_URL's own origin, never the other loopback spellings`, { skip: mode === 'production' && productionSkip }, async t => {
    const app = await build(t, { NODE_ENV: mode })
    const refreshFrom = await browserSession(app, 'own@example.com', 'http://localhost:3000')
    for (const origin of LOOPBACK.slice(1)) t.same(await refreshFrom(origin), REFUSED, `refused from ${origin}`)
    t.same(await refreshFrom('http://localhost:3000'), OK)
  })
}

t.test('development: the WebSocket accepts a page at 127.0.0.1', async t => {
  const app = await build(t, { NODE_ENV: 'development' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const signedUp = await register(app, 'live@example.com', PASSWORD, {})
  const access = cookie(signedUp.response, 'access_token')!.value as string
  const upgrade = async (origin: string): Promise<number | string> => await new Promise((resolve, reject) => {
    const socket = new WebSocket(`ws://127.0.0.1:${port}/api/ws`, { headers: { origin, cookie: `access_token=${access}` }, handshakeTimeout: 3_000 })
    socket.once('message', data => {
      socket.close()
      resolve((JSON.parse(String(data)) as { type: string }).type)
    })
    socket.once('unexpected-response', (request, response) => {
      request.destroy()
      resolve(response.statusCode ?? 0)
    })
    socket.once('error', reject)
  })
  t.equal(await upgrade('http://127.0.0.1:3000'), 'ready')
  t.equal(await upgrade('http://[::1]:3000'), 'ready')
  t.equal(await upgrade('http://127.0.0.1:3001'), 403)
})

t.test('the magic-link confirmation page may be posted from 127.0.0.1 in development only', async t => {
  const confirmPage = async (env: Env): Promise<(origin: string) => Promise<number>> => {
    const app = await build(t, { MAGIC_LINK_CONFIRM: 'page', ...env })
    const asked = await app.inject({ method: 'POST', url: '/api/auth/magic-link/request', payload: { email: 'page@example.com' } })
    const token = new URL(asked.json().previewUrl as string).searchParams.get('token')!
    return async origin => (await app.inject({
      method: 'POST',
      url: '/api/auth/magic-link/verify',
      headers: { origin, 'content-type': 'application/x-www-form-urlencoded' },
      payload: `token=${token}`
    })).statusCode
  }
  const development = await confirmPage({ NODE_ENV: 'development' })
  t.equal(await development('http://evil.example'), 403, 'development: still not from elsewhere')
  t.equal(await development('http://127.0.0.1:3000'), 302, 'development: signed in')
  t.equal(await (await confirmPage({ NODE_ENV: 'test' }))('http://127.0.0.1:3000'), 403, 'test: PUBLIC_URL\'s origin only')
})

// The helper sets RATE_LIMIT_MAX and LOGIN_MAX_PER_IP for every test; unset, as a newcomer has them.
const UNSET_LIMITS: Env = { RATE_LIMIT_MAX: undefined, LOGIN_MAX_PER_IP: undefined }

t.test('development: generous limits where none are set; test keeps the seeds\'', async t => {
  const development = await build(t, { NODE_ENV: 'development', ...UNSET_LIMITS })
  const seeded = await build(t, { NODE_ENV: 'test', ...UNSET_LIMITS })
  const limitOf = async (app: FastifyInstance): Promise<unknown> => (await app.inject({ url: '/api/auth/providers' })).headers['ratelimit-limit']
  t.equal(await limitOf(development), '10000')
  t.equal(await limitOf(seeded), '100')

  const magicLinks = async (app: FastifyInstance): Promise<number[]> => {
    const statuses: number[] = []
    for (let i = 0; i < 6; i++) {
      statuses.push((await app.inject({ method: 'POST', url: '/api/auth/magic-link/request', payload: { email: 'again@example.com' } })).statusCode)
    }
    return statuses
  }
  t.same(await magicLinks(development), [202, 202, 202, 202, 202, 202], 'a sixth link for one address in development')
  t.same(await magicLinks(seeded), [202, 202, 202, 202, 202, 429], 'the seed\'s five elsewhere')

  const wrongPasswords = async (app: FastifyInstance): Promise<number> => {
    let last = 0
    for (let i = 0; i < 11; i++) last = (await login(app, 'nobody@example.com', 'not the password at all')).status
    return last
  }
  t.equal(await wrongPasswords(development), 401, 'an eleventh wrong password is still just wrong in development')
  t.equal(await wrongPasswords(seeded), 429, 'the seed\'s ten per account elsewhere')
})
