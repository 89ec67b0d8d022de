import type { FastifyInstance, InjectOptions } from 'fastify'
import t from 'tap'
import { bearer, registerVerified } from '../auth-helper.js'
import { build } from '../helper.js'

/*
 * Issue 13, "one message per error code": a client may show a code's message, or look the code
 * up in its own table; either way one code means one text. The exceptions are the seeds' own
 * texts on the seeds' own routes — TOKEN_REQUIRED and TOKEN_INVALID say seed 004's "Access
 * token required" / "Invalid or expired token" by default, seed 003's "Authentication
 * required." on its workspace routes (those with a tenancy action), and seed 002's "No token
 * provided" on its GET /api/user/me — and PROVIDER_NOT_CONFIGURED, whose one text names the
 * provider. Every code is asserted on at least two routes.
 */

const ORIGIN = 'https://app.example.com'
const FOREIGN = 'https://evil.example'

const app = await build(t, { CORS_ORIGINS: ORIGIN })
const alice = await registerVerified(app, 'alice@messages.example.com')
const signedIn = bearer(alice.accessToken)
const forged = { authorization: 'Bearer a.b.c' }
const json = { 'content-type': 'application/json' }

type Request = InjectOptions & { url: string }
interface Family { message: string, status: number, requests: Request[] }

const get = (url: string, headers: Record<string, string> = {}): Request => ({ method: 'GET', url, headers })
const post = (url: string, headers: Record<string, string> = {}, payload?: string | Record<string, unknown>): Request =>
  ({ method: 'POST', url, headers, ...(payload === undefined ? {} : { payload }) })

const EXPECTED: Record<string, Family[]> = {
  TOKEN_REQUIRED: [
    {
      message: 'Access token required',
      status: 401,
      requests: [get('/api/auth/me'), get('/api/auth/sessions'), post('/api/auth/logout-all'), get('/api/admin/users'), get('/api/ws', { origin: ORIGIN })]
    },
    {
      message: 'Authentication required.',
      status: 401,
      requests: [get('/api/birds'), get('/api/workspace'), get('/api/transfers'), post('/api/auth/switch-workspace', {}, { workspaceId: 1 })]
    },
    { message: 'No token provided', status: 401, requests: [get('/api/user/me')] }
  ],
  TOKEN_INVALID: [
    {
      message: 'Invalid or expired token',
      status: 401,
      requests: [get('/api/auth/me', forged), get('/api/auth/sessions', forged), get('/api/admin/users', forged), get('/api/user/me', forged),
        get('/api/ws', { origin: ORIGIN, cookie: 'access_token=a.b.c' })]
    },
    {
      message: 'Authentication required.',
      status: 401,
      requests: [get('/api/birds', forged), get('/api/workspace', forged), get('/api/integration-tokens', forged)]
    }
  ],
  ORIGIN_NOT_ALLOWED: [{
    message: 'Requests must come from an allowed origin',
    status: 403,
    requests: [
      post('/api/auth/refresh', { origin: FOREIGN, cookie: 'refresh_token=abc' }),
      post('/api/auth/logout', { origin: FOREIGN, cookie: 'refresh_token=abc' }),
      post('/auth/signout', { origin: FOREIGN, cookie: 'refresh_token=abc' }),
      get('/api/ws', { origin: FOREIGN, cookie: 'access_token=a.b.c' }),
      post('/api/auth/magic-link/verify', { origin: FOREIGN, 'content-type': 'application/x-www-form-urlencoded' }, 'token=abc')
    ]
  }],
  UNSUPPORTED_MEDIA_TYPE: [{
    message: 'Unsupported content type; send application/json',
    status: 415,
    requests: [
      post('/api/auth/login', { 'content-type': 'text/plain' }, '{"email":"alice@messages.example.com","password":"x"}'),
      post('/api/birds', { ...signedIn, 'content-type': 'text/plain' }, '{"name":"Kiwi"}'),
      post('/api/workspaces', { ...signedIn, 'content-type': 'application/x-www-form-urlencoded' }, 'name=Flock'),
      post('/api/auth/refresh', { origin: ORIGIN, cookie: 'refresh_token=abc', 'content-type': 'text/plain' }, 'x')
    ]
  }],
  INVALID_JSON: [{
    message: 'Request body is not valid JSON',
    status: 400,
    requests: [post('/api/auth/login', json, '{"email":'), post('/api/birds', { ...signedIn, ...json }, '{"name":"Kiwi",}')]
  }],
  EMPTY_BODY: [{
    message: 'Request body is empty',
    status: 400,
    requests: [post('/api/auth/login', json, ''), post('/api/birds', { ...signedIn, ...json }, '')]
  }],
  FORBIDDEN_PROPERTY: [{
    message: 'Request body contains a forbidden property (__proto__ or constructor.prototype)',
    status: 400,
    requests: [
      post('/api/auth/login', json, '{"email":"a@example.com","password":"x","__proto__":{"role":"ADMIN"}}'),
      post('/api/birds', { ...signedIn, ...json }, '{"name":"Kiwi","constructor":{"prototype":{"x":1}}}')
    ]
  }],
  PROVIDER_NOT_CONFIGURED: [
    {
      message: 'The google provider is not configured',
      status: 400,
      requests: [get('/api/auth/oauth/google/start'), get('/api/auth/google'), post('/auth/signin/google')]
    },
    { message: 'The OpenID Connect provider is not configured', status: 400, requests: [post('/api/auth/callback', {}, { code: 'abc', codeVerifier: 'v'.repeat(43), nonce: 'n'.repeat(16) })] }
  ]
}

/** The message of an error answer, in the SPEC's body or seed 002's envelope. */
const messageOf = (body: { error?: string, message?: string }): string | undefined => body.error ?? body.message

async function answer (server: FastifyInstance, request: Request): Promise<{ status: number, code: string, message?: string }> {
  const response = await server.inject(request)
  const body = response.json()
  return { status: response.statusCode, code: body.code, message: messageOf(body) }
}

for (const [code, families] of Object.entries(EXPECTED)) {
  t.test(`${code}: one message (per seed that prescribes its own), on every route`, async t => {
    t.ok(families.reduce((routes, family) => routes + family.requests.length, 0) >= 2, 'asserted on at least two routes')
    for (const family of families) {
      for (const request of family.requests) {
        const name = `${request.method} ${request.url}`
        t.strictSame(await answer(app, request), { status: family.status, code, message: family.message }, name)
      }
    }
  })
}
