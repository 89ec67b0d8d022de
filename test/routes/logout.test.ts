import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { build, twoInstancesSkip } from '../helper.js'
import { bearer, cookie, login, register } from '../auth-helper.js'

/*
 * Ending a session with the credential a client presents, on POST /api/auth/logout (SPEC
 * decision 4) and seed 000's POST /auth/signout (issue 14, items 4 and 5):
 *  - a current refresh token ends that session (reason logout);
 *  - a stale one (rotated, past REFRESH_GRACE) is reuse, as on refresh: the whole session is
 *    revoked on every instance at once, marked revoked and audited session.refresh_reuse;
 *  - garbage ends nothing: logout still answers 200 (idempotent), sign-out answers 401,
 *    because its redirect would say that a session ended.
 */

const ORIGIN = 'http://localhost:3000' // PUBLIC_URL's origin in tests
const GRACE_MS = 300
const ENV = { REFRESH_GRACE: `${GRACE_MS}ms` }

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

interface Session { userId: string, sessionId: string, accessTokens: string[], stale: string, current: string }

let counter = 0
/** Signs in and refreshes once: token A (`stale`) rotated to B (`current`); waits past the grace window. */
async function rotatedSession (app: FastifyInstance): Promise<Session> {
  const email = `logout${++counter}@example.com`
  const registered = await register(app, email)
  if (registered.status !== 201) throw new Error(`register failed: ${registered.response.body}`)
  const signedIn = await login(app, email)
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: signedIn.refreshToken } })
  if (refreshed.statusCode !== 200) throw new Error(`refresh failed: ${refreshed.body}`)
  await sleep(GRACE_MS + 150)
  return {
    userId: signedIn.user.id,
    sessionId: signedIn.refreshToken.split('.')[0]!,
    accessTokens: [signedIn.accessToken, refreshed.json().accessToken],
    stale: signedIn.refreshToken,
    current: refreshed.json().refreshToken
  }
}

/** The request that presents a refresh token to a path, in the body or as the cookie. */
function presenting (url: string, via: 'body' | 'cookie', token: string): InjectOptions {
  return via === 'body'
    ? { method: 'POST', url, payload: { refreshToken: token } }
    : { method: 'POST', url, headers: { origin: ORIGIN, cookie: `refresh_token=${token}` } }
}

const me = async (app: FastifyInstance, accessToken: string): Promise<number> =>
  (await app.inject({ url: '/api/auth/me', headers: bearer(accessToken) })).statusCode

/** The session row and its audit rows. */
async function stored (app: FastifyInstance, sessionId: string) {
  const row = await app.db.selectFrom('sessions').select(['revoked_at', 'revoked_reason']).where('id', '=', sessionId).executeTakeFirstOrThrow()
  const audit = await app.db.selectFrom('audit_log').select(['action', 'actor_user_id', 'details'])
    .where('subject_id', '=', sessionId).where('action', 'in', ['session.refresh_reuse', 'auth.logout']).execute()
  return { row, audit }
}

/** What logout and sign-out answer when they ended a session (or found it over). */
function endedAnswer (t: Test, url: string, response: LightMyRequestResponse, label: string): void {
  if (url === '/api/auth/logout') {
    t.equal(response.statusCode, 200, `${label}: 200`)
    t.same(response.json(), { message: 'Logged out successfully' })
  } else {
    t.equal(response.statusCode, 302, `${label}: 302`)
    t.equal(response.headers.location, 'http://localhost:3000/', `${label}: to the frontend`)
  }
  t.match(cookie(response, 'refresh_token'), { value: '', path: '/api/auth' }, `${label}: the cookie is cleared`)
}

t.test('a stale refresh token presented to logout or sign-out revokes the whole session, as refresh does', async t => {
  const app = await build(t, ENV)
  for (const url of ['/api/auth/logout', '/auth/signout']) {
    for (const via of ['body', 'cookie'] as const) {
      t.test(`${url}, token in the ${via}`, async t => {
        const session = await rotatedSession(app)
        for (const token of session.accessTokens) t.equal(await me(app, token), 200, 'before: the access tokens work')

        endedAnswer(t, url, await app.inject(presenting(url, via, session.stale)), 'the stale token A')
        for (const token of session.accessTokens) t.equal(await me(app, token), 401, 'the session\'s access tokens are 401 at once')
        const refused = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: session.current } })
        t.equal(refused.statusCode, 401, 'its successor B is refused')

        const { row, audit } = await stored(app, session.sessionId)
        t.equal(row.revoked_reason, 'refresh_reuse', 'the session row is revoked as reuse')
        t.ok(row.revoked_at !== null)
        t.same(audit.map(({ action, actor_user_id: actor, details }) => ({ action, actor, details })), [
          { action: 'session.refresh_reuse', actor: session.userId, details: { presentedTo: 'logout' } }
        ], 'audited as refresh reuse, once')
      })
    }
  }
})

t.test('reuse on a logout path reaches a second instance at once', { skip: twoInstancesSkip }, async t => {
  const a = await build(t, ENV)
  const b = await build(t, { ...ENV, DATABASE_URL: a.config.DATABASE_URL, REDIS_PREFIX: a.config.REDIS_PREFIX })
  for (const url of ['/api/auth/logout', '/auth/signout']) {
    const session = await rotatedSession(a)
    for (const token of session.accessTokens) t.equal(await me(b, token), 200, `${url}: instance B accepts (and caches) the tokens`)
    endedAnswer(t, url, await a.inject(presenting(url, 'body', session.stale)), `${url} on A with the stale token`)
    const deadline = Date.now() + 1_000
    let statuses = [200]
    while (statuses.includes(200) && Date.now() < deadline) {
      statuses = await Promise.all(session.accessTokens.map(async token => await me(b, token)))
      if (statuses.includes(200)) await sleep(20)
    }
    t.same(statuses, [401, 401], `${url}: instance B refuses the session's access tokens within a second`)
    t.equal((await b.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: session.current } })).statusCode, 401, `${url}: B refuses B`)
  }
})

t.test('a current refresh token ends its session as a logout; garbage ends nothing', async t => {
  const app = await build(t, ENV)
  for (const url of ['/api/auth/logout', '/auth/signout']) {
    for (const via of ['body', 'cookie'] as const) {
      const session = await rotatedSession(app)
      endedAnswer(t, url, await app.inject(presenting(url, via, session.current)), `${url}, current token in the ${via}`)
      for (const token of session.accessTokens) t.equal(await me(app, token), 401, `${url} (${via}): the access tokens are 401`)
      const { row, audit } = await stored(app, session.sessionId)
      t.equal(row.revoked_reason, 'logout', `${url} (${via}): revoked as a logout`)
      t.same(audit.map(entry => entry.action), ['auth.logout'], `${url} (${via}): audited as a logout, no reuse`)
    }
  }

  const alive = await rotatedSession(app)
  const garbage = [
    `${alive.sessionId}.${'A'.repeat(43)}`, // the session's id, a token it never had
    'not-a-refresh-token'
  ]
  for (const token of garbage) {
    const logout = await app.inject(presenting('/api/auth/logout', 'body', token))
    t.equal(logout.statusCode, 200, 'logout with garbage: 200, as before (idempotent)')
    const signout = await app.inject(presenting('/auth/signout', 'body', token))
    t.equal(signout.statusCode, 401, 'sign-out with garbage: 401, not the redirect')
    t.same(signout.json(), { error: 'Invalid refresh token', code: 'INVALID_REFRESH_TOKEN' })
    t.equal(cookie(signout, 'refresh_token'), undefined, 'and nothing is cleared')
  }
  for (const token of alive.accessTokens) t.equal(await me(app, token), 200, 'garbage ended nothing')
  t.equal((await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: alive.current } })).statusCode, 200)
  t.equal((await stored(app, alive.sessionId)).row.revoked_at, null)
})

t.test('POST /auth/signout needs a credential; without one it is 401 and ends nothing', async t => {
  const app = await build(t, ENV)
  const { accessToken, refreshToken } = await register(app, 'seed000@example.com')
  const forged = `${accessToken.slice(0, -4)}${accessToken.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`
  const sessionId = refreshToken.split('.')[0]!
  const alive = async (): Promise<void> => {
    t.equal(await me(app, accessToken), 200, 'the session is alive')
    t.equal((await stored(app, sessionId)).row.revoked_at, null)
  }

  const attempts: Array<[string, InjectOptions, number, string]> = [
    ['no credential at all', { headers: {} }, 401, 'TOKEN_REQUIRED'],
    ['a browser form post without credentials (what an Auth.js page posts)', {
      headers: { origin: ORIGIN, 'content-type': 'application/x-www-form-urlencoded' }, payload: 'csrfToken=x&callbackUrl=%2F'
    }, 401, 'TOKEN_REQUIRED'],
    ['a cross-site form post', { headers: { origin: 'https://evil.example', 'content-type': 'application/x-www-form-urlencoded' }, payload: 'a=1' }, 401, 'TOKEN_REQUIRED'],
    ['a bearer that does not verify', { headers: bearer(forged) }, 401, 'TOKEN_INVALID'],
    ['an Authorization header that is no bearer', { headers: { authorization: 'Basic eDp5' } }, 401, 'TOKEN_INVALID'],
    ['a form field access_token that does not verify', { headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'access_token=a.b.c' }, 401, 'TOKEN_INVALID'],
    ['the refresh cookie from a foreign origin', { headers: { origin: 'https://evil.example', cookie: `refresh_token=${refreshToken}` } }, 403, 'ORIGIN_NOT_ALLOWED'],
    ['the refresh cookie in a form post', {
      headers: { origin: ORIGIN, cookie: `refresh_token=${refreshToken}`, 'content-type': 'application/x-www-form-urlencoded' }, payload: 'a=1'
    }, 415, 'UNSUPPORTED_MEDIA_TYPE']
  ]
  for (const [name, request, status, code] of attempts) {
    const response = await app.inject({ method: 'POST', url: '/auth/signout', ...request })
    t.equal(response.statusCode, status, name)
    t.equal(response.json().code, code, name)
    t.notOk(response.headers.location, `${name}: no redirect`)
    t.equal(cookie(response, 'refresh_token'), undefined, `${name}: no cookie cleared`)
  }
  await alive()
})

t.test('POST /auth/signout with the access token: header, expired, or a form field', async t => {
  let offset = 0
  const app = await build(t, ENV, undefined, { now: () => Date.now() + offset })
  const ended = async (response: LightMyRequestResponse, refreshToken: string, label: string): Promise<void> => {
    endedAnswer(t, '/auth/signout', response, label)
    const sessionId = refreshToken.split('.')[0]!
    t.equal((await stored(app, sessionId)).row.revoked_reason, 'logout', `${label}: the session is revoked`)
    t.equal((await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken } })).statusCode, 401, `${label}: its refresh token is refused`)
  }

  const header = await register(app, 'header@example.com')
  await ended(await app.inject({ method: 'POST', url: '/auth/signout', headers: bearer(header.accessToken) }), header.refreshToken, 'Authorization: Bearer')
  t.equal(await me(app, header.accessToken), 401, 'the access token is 401 at once')
  const again = await app.inject({ method: 'POST', url: '/auth/signout', headers: bearer(header.accessToken) })
  t.equal(again.statusCode, 302, 'signing out again with the token of a session that is over: it is over, 302')

  const form = await register(app, 'form@example.com')
  await ended(await app.inject({
    method: 'POST',
    url: '/auth/signout',
    headers: { origin: ORIGIN, 'content-type': 'application/x-www-form-urlencoded' },
    payload: new URLSearchParams({ access_token: form.accessToken, callbackUrl: '/' }).toString()
  }), form.refreshToken, 'the access_token field of a form post (RFC 6750 section 2.2)')

  offset = -3_600_000
  const old = await register(app, 'expired@example.com')
  offset = 0
  t.equal(await me(app, old.accessToken), 401, 'this access token has expired')
  await ended(await app.inject({ method: 'POST', url: '/auth/signout', headers: bearer(old.accessToken) }), old.refreshToken, 'an expired bearer')
})

t.test('POST /auth/signout counts against the anonymous per-IP budget only when it names no live session', async t => {
  const app = await build(t, { ...ENV, RATE_LIMIT_MAX: '3' })
  // Four users behind one address each sign out with their own access token: none is refused.
  // (Each signed up from home, which is not the office's address.)
  const office = '203.0.113.7'
  for (let user = 0; user < 4; user++) {
    const signedUp = await app.inject({ method: 'POST', url: '/api/auth/register', remoteAddress: `198.51.100.${user + 1}`, payload: { email: `office${user}@example.com`, password: 'a long enough passphrase' } })
    const out = await app.inject({ method: 'POST', url: '/auth/signout', remoteAddress: office, headers: bearer(signedUp.json().accessToken) })
    t.equal(out.statusCode, 302, `user ${user} signs out`)
  }
  // Sign-outs that name nothing spend the address's budget: three 401s, then 429.
  const answers: number[] = []
  for (let attempt = 0; attempt < 5; attempt++) answers.push((await app.inject({ method: 'POST', url: '/auth/signout', remoteAddress: office })).statusCode)
  t.same(answers, [401, 401, 401, 429, 429])
})
