import t from 'tap'
import { build, redisUrl } from '../helper.js'
import { bearer, cookie, login, PASSWORD, register } from '../auth-helper.js'

/*
 * Password accounts, tokens and sessions, end to end through the HTTP API: the flows a
 * cookie client (SPA) and a body client (script, mobile app) rely on, refresh rotation
 * with its grace window and reuse detection, absolute expiry, revocation, throttling.
 */

const ORIGIN = 'http://localhost:3000' // PUBLIC_URL's origin in tests
const DAY = 86_400_000

/** A clock the test moves by hand. */
function manualClock (start = Date.now()): { now: () => number, advance: (ms: number) => void } {
  let current = start
  return { now: () => current, advance: ms => { current += ms } }
}

t.test('a body client registers, signs in, reads me, refreshes and signs out', async t => {
  const app = await build(t)
  const registered = await register(app, 'Body.Client@Example.com')
  t.equal(registered.status, 201)
  t.match(registered.user, { email: 'body.client@example.com', role: 'MEMBER', isActive: true, emailVerified: false })
  t.type(registered.accessToken, 'string')
  t.match(registered.refreshToken, /^[0-9a-f-]{36}\.[A-Za-z0-9_-]{43}$/, 'an opaque 256-bit refresh token')
  t.notOk('passwordHash' in registered.user || 'password_hash' in registered.user, 'no hash in the answer')

  const signedIn = await login(app, 'body.client@example.com')
  t.equal(signedIn.status, 200)
  t.type(signedIn.refreshToken, 'string', 'a client without Origin gets the refresh token in the body')
  t.equal(signedIn.response.json().expiresIn, 900)

  const me = await app.inject({ url: '/api/auth/me', headers: bearer(signedIn.accessToken) })
  t.equal(me.statusCode, 200)
  t.same(Object.keys(me.json()).sort(), ['avatarUrl', 'createdAt', 'email', 'emailVerified', 'familyName', 'givenName', 'id', 'isActive', 'lastLoginAt', 'name', 'preferredUsername', 'profilePictureUrl', 'role'])
  t.equal(me.json().id, registered.user.id)

  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: signedIn.refreshToken } })
  t.equal(refreshed.statusCode, 200)
  const next = refreshed.json()
  t.type(next.accessToken, 'string')
  t.equal(next.expiresIn, 900)
  t.not(next.refreshToken, signedIn.refreshToken, 'the refresh token rotates')
  t.equal(refreshed.headers['set-cookie'], undefined, 'a body client gets no cookies on refresh')
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(next.accessToken) })).statusCode, 200)

  const stored = await app.db.selectFrom('users').select('password_hash').where('email', '=', 'body.client@example.com').executeTakeFirstOrThrow()
  t.match(stored.password_hash, /^\$argon2id\$/, 'argon2id at rest')

  const logout = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(next.accessToken) })
  t.equal(logout.statusCode, 200)
  t.same(logout.json(), { message: 'Logged out successfully' })
  for (const token of [signedIn.accessToken, next.accessToken]) {
    const after = await app.inject({ url: '/api/auth/me', headers: bearer(token) })
    t.equal(after.statusCode, 401, 'the session\'s access tokens are dead at once')
    t.same(after.json(), { error: 'Invalid or expired token', code: 'TOKEN_INVALID' })
  }
  const again = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: next.refreshToken } })
  t.equal(again.statusCode, 401)
  t.same(again.json(), { error: 'Invalid refresh token', code: 'INVALID_REFRESH_TOKEN' })
  const row = await app.db.selectFrom('sessions').select(['revoked_reason']).where('user_id', '=', registered.user.id).where('method', '=', 'password').orderBy('created_at', 'desc').executeTakeFirstOrThrow()
  t.equal(row.revoked_reason, 'logout')

  const missing = await app.inject({ url: '/api/auth/me' })
  t.equal(missing.statusCode, 401)
  t.same(missing.json(), { error: 'Access token required', code: 'TOKEN_REQUIRED' })
})

t.test('a cookie client never sees the refresh token and refreshes with the cookie', async t => {
  const app = await build(t)
  await register(app, 'spa@example.com')
  const signedIn = await login(app, 'spa@example.com', PASSWORD, {}, { origin: ORIGIN })
  t.equal(signedIn.status, 200)
  t.equal(signedIn.refreshToken, undefined, 'a browser (Origin sent) gets no refresh token in JavaScript')
  const refreshCookie = cookie(signedIn.response, 'refresh_token')!
  t.match(refreshCookie, { path: '/api/auth', httponly: true, samesite: 'Strict' })
  t.notOk('max-age' in refreshCookie || 'expires' in refreshCookie, 'without remember-me: a browser-session cookie')
  t.notOk('secure' in refreshCookie, 'not Secure outside production (http://localhost)')
  const accessCookie = cookie(signedIn.response, 'access_token')!
  t.match(accessCookie, { path: '/api/ws', httponly: true, samesite: 'Strict', value: signedIn.accessToken })

  const headers = { origin: ORIGIN, cookie: `refresh_token=${refreshCookie.value as string}` }
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers })
  t.equal(refreshed.statusCode, 200)
  t.same(Object.keys(refreshed.json()).sort(), ['accessToken', 'expiresIn'], 'no refresh token in the body for a cookie client')
  const rotated = cookie(refreshed, 'refresh_token')!
  t.not(rotated.value, refreshCookie.value)
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(refreshed.json().accessToken) })).statusCode, 200)

  // The access_token cookie is for the WebSocket route only.
  const viaCookie = await app.inject({ url: '/api/auth/me', headers: { cookie: `access_token=${signedIn.accessToken}` } })
  t.equal(viaCookie.statusCode, 401)

  const next = { origin: ORIGIN, cookie: `refresh_token=${rotated.value as string}` }
  const json = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { ...next, 'content-type': 'application/json' }, payload: '{}' })
  t.equal(json.statusCode, 200, 'an empty JSON body is fine')
  const latest = cookie(json, 'refresh_token')!.value as string

  const logout = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: { origin: ORIGIN, cookie: `refresh_token=${latest}` } })
  t.equal(logout.statusCode, 200)
  const cleared = cookie(logout, 'refresh_token')!
  t.match(cleared, { value: '', path: '/api/auth', httponly: true, samesite: 'Strict' })
  t.ok(cleared['max-age'] === '0' || new Date(cleared.expires as string).getTime() < Date.now(), 'the cookie is expired')
  t.match(cookie(logout, 'access_token'), { value: '', path: '/api/ws' })
  const dead = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin: ORIGIN, cookie: `refresh_token=${latest}` } })
  t.equal(dead.statusCode, 401)
  t.equal(cookie(dead, 'refresh_token')?.value, '', 'a dead cookie is cleared')
})

t.test('a cookie-authenticated POST needs an allowed Origin and JSON', async t => {
  const app = await build(t, { CORS_ORIGINS: 'https://app.example.com' })
  await register(app, 'csrf@example.com')
  const signedIn = await login(app, 'csrf@example.com', PASSWORD, {}, { origin: 'https://app.example.com' })
  const token = cookie(signedIn.response, 'refresh_token')!.value as string
  const attempt = async (headers: Record<string, string>, payload?: string) =>
    await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { cookie: `refresh_token=${token}`, ...headers }, ...(payload === undefined ? {} : { payload }) })

  for (const [name, headers, payload] of [
    ['no Origin', {}, undefined],
    ['a foreign Origin', { origin: 'https://evil.example' }, undefined],
    ['a form post', { origin: 'https://evil.example', 'content-type': 'application/x-www-form-urlencoded' }, 'a=1']
  ] as const) {
    const response = await attempt(headers, payload)
    t.equal(response.statusCode, 403, name)
    t.same(response.json(), { error: 'Requests must come from an allowed origin', code: 'ORIGIN_NOT_ALLOWED' }, name)
  }
  // From an allowed origin, a body that is not JSON (a form can send text/plain cross-site) is 415.
  for (const type of ['text/plain', 'application/x-www-form-urlencoded']) {
    const response = await attempt({ origin: 'https://app.example.com', 'content-type': type }, 'x')
    t.equal(response.statusCode, 415, `${type} from an allowed origin`)
    t.same(response.json(), { error: 'Unsupported content type; send application/json', code: 'UNSUPPORTED_MEDIA_TYPE' })
  }
  const logout = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: { cookie: `refresh_token=${token}`, origin: 'https://evil.example' } })
  t.equal(logout.statusCode, 403, 'no cross-site logout')
  const allowed = await attempt({ origin: 'https://app.example.com' })
  t.equal(allowed.statusCode, 200, 'the refused attempts did not spend the token')
})

t.test('remember-me makes a persistent cookie whose Max-Age counts down to the fixed expiry', async t => {
  const clock = manualClock()
  const app = await build(t, {}, undefined, { now: clock.now })
  await register(app, 'remember@example.com')
  const signedIn = await login(app, 'remember@example.com', PASSWORD, { rememberMe: true }, { origin: ORIGIN })
  const first = cookie(signedIn.response, 'refresh_token')!
  t.equal(first['max-age'], String(30 * 86_400), '30 days')
  t.ok(first.expires, 'with an Expires date for old browsers')

  clock.advance(DAY)
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin: ORIGIN, cookie: `refresh_token=${first.value as string}` } })
  t.equal(refreshed.statusCode, 200)
  t.equal(cookie(refreshed, 'refresh_token')!['max-age'], String(29 * 86_400), 'a refresh does not extend the session')
  const rows = await app.db.selectFrom('sessions').select(['remember_me', 'created_at', 'expires_at']).where('remember_me', '=', true).execute()
  t.equal(rows.length, 1)
  t.equal(rows[0]!.expires_at.getTime() - rows[0]!.created_at.getTime(), 30 * DAY, 'stored with its fixed expiry')
})

t.test('refresh never extends the absolute expiry, and access tokens never outlive it', async t => {
  const clock = manualClock()
  const app = await build(t, {}, undefined, { now: clock.now })
  await register(app, 'expiry@example.com')
  let { refreshToken } = await login(app, 'expiry@example.com')
  const refresh = async () => await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken } })

  clock.advance(12 * 3_600_000)
  let response = await refresh()
  t.equal(response.statusCode, 200, 'alive after 12 hours')
  refreshToken = response.json().refreshToken
  clock.advance(11 * 3_600_000 + 55 * 60_000)
  response = await refresh()
  t.equal(response.statusCode, 200, 'alive 5 minutes before the end')
  t.ok(response.json().expiresIn <= 300, 'the access token ends with the session')
  refreshToken = response.json().refreshToken
  clock.advance(5 * 60_000 + 1_000)
  response = await refresh()
  t.equal(response.statusCode, 401, 'dead after one day, however often it was refreshed')
})

t.test('a rotated token: the same successor within the grace window, the whole session revoked after it', async t => {
  const clock = manualClock()
  const app = await build(t, {}, undefined, { now: clock.now })
  const { user } = await register(app, 'reuse@example.com')
  const signedIn = await login(app, 'reuse@example.com')
  const refresh = async (refreshToken: string) => await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken } })

  const first = await refresh(signedIn.refreshToken)
  t.equal(first.statusCode, 200)
  clock.advance(5_000)
  const second = await refresh(signedIn.refreshToken)
  t.equal(second.statusCode, 200, 'within the grace window (10 s)')
  t.equal(second.json().refreshToken, first.json().refreshToken, 'the same successor: one live token per session')

  clock.advance(6_000)
  const stolen = await refresh(signedIn.refreshToken)
  t.equal(stolen.statusCode, 401, 'reuse after the grace window')
  t.equal((await refresh(first.json().refreshToken)).statusCode, 401, 'the legitimate successor is dead too')
  for (const token of [signedIn.accessToken, first.json().accessToken]) {
    t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(token) })).statusCode, 401, 'and so are the session\'s access tokens')
  }
  const rows = await app.db.selectFrom('sessions').select(['id', 'revoked_reason']).where('user_id', '=', user.id).execute()
  t.same(rows.map(row => row.revoked_reason).sort(), [null, 'refresh_reuse'], 'the reused session is revoked, the registration\'s is not')
  const events = await app.db.selectFrom('audit_log').select(['action', 'actor_user_id']).where('action', '=', 'session.refresh_reuse').execute()
  t.same(events, [{ action: 'session.refresh_reuse', actor_user_id: user.id }])
})

t.test('20 parallel refreshes with one token all get the same successor', async t => {
  const app = await build(t)
  await register(app, 'tabs@example.com')
  const { refreshToken } = await login(app, 'tabs@example.com')
  const answers = await Promise.all(Array.from({ length: 20 }, async () =>
    await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken } })))
  t.same(answers.map(answer => answer.statusCode), Array(20).fill(200))
  const successors = new Set(answers.map(answer => answer.json().refreshToken as string))
  t.equal(successors.size, 1, 'one successor')
  const [successor] = [...successors]
  const next = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: successor } })
  t.equal(next.statusCode, 200, 'the successor is the live token')
  for (const answer of answers.slice(0, 3)) {
    t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(answer.json().accessToken) })).statusCode, 200)
  }
})

t.test('refreshes are limited per session (REFRESH_MAX_PER_SESSION), other sessions unaffected', async t => {
  const app = await build(t, { REFRESH_MAX_PER_SESSION: '3' })
  await register(app, 'loop@example.com')
  let { refreshToken } = await login(app, 'loop@example.com')
  for (let index = 0; index < 3; index++) {
    const answer = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken } })
    t.equal(answer.statusCode, 200, `refresh ${index + 1}`)
    refreshToken = answer.json().refreshToken
  }
  const fourth = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken } })
  t.equal(fourth.statusCode, 429)
  t.same(fourth.json(), { error: 'Too many refreshes for this session, please try again later.', code: 'RATE_LIMITED' })
  t.ok(Number(fourth.headers['retry-after']) > 0, 'Retry-After')
  const other = await login(app, 'loop@example.com')
  t.equal((await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: other.refreshToken } })).statusCode, 200, 'another session refreshes')
})

t.test('sessions: list, revoke one, another user\'s is 404, logout-all', async t => {
  const app = await build(t)
  await register(app, 'many@example.com')
  await register(app, 'other@example.com')
  const laptop = await login(app, 'many@example.com', PASSWORD, {}, { 'user-agent': 'Laptop/1.0' })
  const phone = await login(app, 'many@example.com', PASSWORD, { rememberMe: true }, { 'user-agent': 'Phone/2.0' })
  const other = await login(app, 'other@example.com')

  const list = await app.inject({ url: '/api/auth/sessions', headers: bearer(laptop.accessToken) })
  t.equal(list.statusCode, 200)
  const sessions = list.json().sessions as Array<{ id: string, current: boolean, userAgent: string, rememberMe: boolean, ip: string }>
  t.equal(sessions.length, 3, 'registration, laptop and phone')
  t.equal(sessions.filter(session => session.current).length, 1)
  t.match(sessions.find(session => session.current), { userAgent: 'Laptop/1.0', rememberMe: false, ip: '127.0.0.1' })
  const phoneSession = sessions.find(session => session.userAgent === 'Phone/2.0')!

  const foreign = await app.inject({ method: 'DELETE', url: `/api/auth/sessions/${phoneSession.id}`, headers: bearer(other.accessToken) })
  t.equal(foreign.statusCode, 404, 'another user\'s session does not exist for you')
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(phone.accessToken) })).statusCode, 200)

  const revoked = await app.inject({ method: 'DELETE', url: `/api/auth/sessions/${phoneSession.id}`, headers: bearer(laptop.accessToken) })
  t.equal(revoked.statusCode, 200)
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(phone.accessToken) })).statusCode, 401)
  t.equal((await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: phone.refreshToken } })).statusCode, 401)
  t.equal((await app.inject({ method: 'DELETE', url: `/api/auth/sessions/${phoneSession.id}`, headers: bearer(laptop.accessToken) })).statusCode, 404, 'gone')

  const all = await app.inject({ method: 'POST', url: '/api/auth/logout-all', headers: bearer(laptop.accessToken) })
  t.equal(all.statusCode, 200)
  t.equal(all.json().sessionsRevoked, 2)
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(laptop.accessToken) })).statusCode, 401)
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(other.accessToken) })).statusCode, 200, 'other users are untouched')
})

t.test('login does not tell an unknown e-mail from a wrong password', async t => {
  const app = await build(t)
  await register(app, 'known@example.com')
  const unknown = await login(app, 'unknown@example.com', 'whatever password 1')
  const wrong = await login(app, 'known@example.com', 'whatever password 1')
  t.equal(unknown.status, 401)
  t.equal(wrong.status, unknown.status)
  t.equal(unknown.response.body, wrong.response.body)
  t.same(unknown.response.json(), { error: 'Invalid email or password', code: 'INVALID_CREDENTIALS' })
  t.equal(unknown.response.headers['set-cookie'], undefined)
})

t.test('passwords: minimum length, common passwords, no truncation, no mass assignment', async t => {
  const app = await build(t)
  const short = await register(app, 'short@example.com', 'Ab1!xyz')
  t.equal(short.status, 400)
  t.match(short.response.json(), { code: 'WEAK_PASSWORD', error: 'Password must be at least 8 characters long', details: { password: String } })
  const common = await register(app, 'common@example.com', 'password123')
  t.equal(common.status, 400)
  t.match(common.response.json(), { code: 'WEAK_PASSWORD', error: /too common/ })
  // Long enough, yet nothing to guess: only white space, or one character held down.
  for (const [password, error] of [
    [' '.repeat(12), 'Password must not be only white space'],
    ['\t \n \u00a0 \u2003  \t ', 'Password must not be only white space'],
    ['x'.repeat(20), 'Password must not be one character repeated'],
    ['🦜'.repeat(8), 'Password must not be one character repeated']
  ] as const) {
    const weak = await register(app, 'weak@example.com', password)
    t.equal(weak.status, 400, JSON.stringify(password))
    t.match(weak.response.json(), { code: 'WEAK_PASSWORD', error })
  }
  t.equal(await app.db.selectFrom('users').select('id').execute().then(rows => rows.length), 0, 'nothing stored')
  t.equal((await register(app, 'two@example.com', 'xy'.repeat(6))).status, 201, 'two characters are allowed (the length and common lists still apply)')
  await app.db.deleteFrom('users').execute()

  const long = 'a'.repeat(100) + 'long tail that bcrypt would cut'
  t.equal((await register(app, 'long@example.com', long)).status, 201)
  t.equal((await login(app, 'long@example.com', long)).status, 200)
  t.equal((await login(app, 'long@example.com', long.slice(0, 72))).status, 401, 'the whole password counts')

  const sneaky = await register(app, 'sneaky@example.com', PASSWORD, { role: 'ADMIN', isActive: false, emailVerified: true, id: '00000000-0000-4000-8000-000000000000' })
  t.equal(sneaky.status, 201)
  t.match(sneaky.user, { role: 'MEMBER', isActive: true, emailVerified: false })
  t.not(sneaky.user.id, '00000000-0000-4000-8000-000000000000')

  const duplicate = await register(app, ' SNEAKY@example.com ')
  t.equal(duplicate.status, 400, 'spaces are not an e-mail address')
  const again = await register(app, 'Sneaky@Example.com')
  t.equal(again.status, 409, 'addresses are unique whatever their case')
  t.equal(again.response.json().code, 'EMAIL_TAKEN')

  const invalid = await app.inject({ method: 'POST', url: '/api/auth/login', payload: { email: 'not-an-email', password: { a: 1 } } })
  t.equal(invalid.statusCode, 400)
  t.match(invalid.json(), { error: 'Invalid login payload', code: 'VALIDATION_FAILED', details: { email: String, password: String } })
})

t.test('PASSWORD_AUTH=disabled answers 410 with seed 003\'s messages', async t => {
  const app = await build(t, { PASSWORD_AUTH: 'disabled' })
  const registerAnswer = await register(app, 'x@example.com')
  t.equal(registerAnswer.status, 410)
  t.same(registerAnswer.response.json(), { error: 'Password-based registration is disabled. Use a magic link or an identity provider.', code: 'PASSWORD_AUTH_DISABLED' })
  const loginAnswer = await login(app, 'x@example.com')
  t.equal(loginAnswer.status, 410)
  t.same(loginAnswer.response.json(), { error: 'Password-based sign-in is disabled. Use a magic link or an identity provider.', code: 'PASSWORD_AUTH_DISABLED' })
})

t.test('sign-in attempts are throttled per account and per IP', async t => {
  const app = await build(t, { LOGIN_MAX_PER_ACCOUNT: '3' })
  await register(app, 'target@example.com')
  for (let attempt = 0; attempt < 3; attempt++) t.equal((await login(app, 'target@example.com', 'wrong password!')).status, 401)
  const locked = await login(app, 'target@example.com')
  t.equal(locked.status, 429, 'even the right password waits')
  t.equal(locked.response.json().code, 'RATE_LIMITED')
  t.ok(Number(locked.response.headers['retry-after']) > 0)
  for (let attempt = 0; attempt < 3; attempt++) await login(app, 'nobody@example.com', 'wrong password!')
  t.equal((await login(app, 'nobody@example.com', 'wrong password!')).status, 429, 'an unknown address is limited alike')
  t.equal((await register(app, 'bystander@example.com')).status, 201)
  t.equal((await login(app, 'bystander@example.com')).status, 200, 'other accounts are not affected')

  const strict = await build(t, { LOGIN_MAX_PER_IP: '2' })
  t.equal((await login(strict, 'a@example.com')).status, 401)
  t.equal((await login(strict, 'b@example.com')).status, 401)
  t.equal((await login(strict, 'c@example.com')).status, 429, 'per IP across addresses')
  t.equal((await register(strict, 'd@example.com')).status, 429, 'registration shares the budget')
})

t.test('signed-in traffic is limited per user, not per IP', async t => {
  const app = await build(t, { RATE_LIMIT_AUTHENTICATED_MAX: '3', RATE_LIMIT_MAX: '1000' })
  const first = await register(app, 'busy@example.com')
  const second = await register(app, 'calm@example.com')
  const statuses = []
  for (let call = 0; call < 4; call++) statuses.push((await app.inject({ url: '/api/auth/me', headers: bearer(first.accessToken) })).statusCode)
  t.same(statuses, [200, 200, 200, 429])
  const calm = await app.inject({ url: '/api/auth/me', headers: bearer(second.accessToken) })
  t.equal(calm.statusCode, 200, 'another user from the same IP has a budget of their own')
  t.equal(calm.headers['ratelimit-limit'], '3')
})

t.test('GET /api/user/me answers in seed 002\'s envelope', async t => {
  const app = await build(t)
  const { accessToken, user } = await register(app, 'envelope@example.com')
  const ok = await app.inject({ url: '/api/user/me', headers: bearer(accessToken) })
  t.equal(ok.statusCode, 200)
  t.equal(ok.json().success, true)
  t.match(ok.json().data, { id: user.id, email: 'envelope@example.com', isActive: true, profilePictureUrl: null })
  const denied = await app.inject({ url: '/api/user/me' })
  t.equal(denied.statusCode, 401)
  // Seed 002's own text for a missing token ("Common Error Messages").
  t.same(denied.json(), { success: false, message: 'No token provided', code: 'TOKEN_REQUIRED' })
})

t.test('a revocation reaches every instance within a second', async t => {
  if (redisUrl === undefined) {
    // The in-process store serves one instance: nothing to propagate. Same check, one app.
    const app = await build(t)
    const { accessToken } = await register(app, 'single@example.com')
    await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(accessToken) })
    t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(accessToken) })).statusCode, 401)
    return
  }
  const a = await build(t)
  const b = await build(t, { DATABASE_URL: a.config.DATABASE_URL, REDIS_PREFIX: a.config.REDIS_PREFIX })
  const { accessToken } = await register(a, 'roaming@example.com')
  t.equal((await b.inject({ url: '/api/auth/me', headers: bearer(accessToken) })).statusCode, 200, 'instance B accepts (and caches) the token')
  await a.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(accessToken) })
  const deadline = Date.now() + 1_000
  let status = 200
  while (status === 200 && Date.now() < deadline) {
    status = (await b.inject({ url: '/api/auth/me', headers: bearer(accessToken) })).statusCode
    if (status === 200) await new Promise(resolve => setTimeout(resolve, 20))
  }
  t.equal(status, 401, 'instance B refuses it within one second')

  // An instance that starts later learns earlier revocations from the store.
  const c = await build(t, { DATABASE_URL: a.config.DATABASE_URL, REDIS_PREFIX: a.config.REDIS_PREFIX })
  t.equal((await c.inject({ url: '/api/auth/me', headers: bearer(accessToken) })).statusCode, 401)
})

t.test('the per-user limit is shared by instances (counted in batches)', async t => {
  if (redisUrl === undefined) {
    // One instance with the in-process store: the counts still reach the store.
    const app = await build(t, { RATE_LIMIT_AUTHENTICATED_MAX: '5' })
    const { accessToken, user } = await register(app, 'batched@example.com')
    for (let call = 0; call < 3; call++) await app.inject({ url: '/api/auth/me', headers: bearer(accessToken) })
    await new Promise(resolve => setTimeout(resolve, 250))
    t.equal(await app.store.get(`rl:user:${user.id}`), '3', 'flushed to the store')
    return
  }
  const env = { RATE_LIMIT_AUTHENTICATED_MAX: '5' }
  const a = await build(t, env)
  const b = await build(t, { ...env, DATABASE_URL: a.config.DATABASE_URL, REDIS_PREFIX: a.config.REDIS_PREFIX })
  const { accessToken } = await register(a, 'shared@example.com')
  const me = async (app: typeof a) => (await app.inject({ url: '/api/auth/me', headers: bearer(accessToken) })).statusCode
  t.same([await me(a), await me(a), await me(a)], [200, 200, 200])
  await new Promise(resolve => setTimeout(resolve, 250))
  t.same([await me(b), await me(b), await me(b)], [200, 200, 429], 'instance B knows what A served')
})
