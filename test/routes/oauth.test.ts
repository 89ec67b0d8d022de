import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { generateKeyPairSync } from 'node:crypto'
import { decodeProtectedHeader, importSPKI, jwtVerify } from 'jose'
import * as oidc from 'openid-client'
import t from 'tap'
import { build, type TestContext } from '../helper.js'
import { cookie, register } from '../auth-helper.js'
import { spaAuthorization, startFakeProvider, startOidcProvider, type Misbehaviour } from '../oidc-stand-in.js'

/*
 * Sign-in with an OpenID Connect provider, against real local stand-ins started here: the
 * `oidc-provider` package for the full redirect flow, and a deliberately misbehaving provider.
 */

const PUBLIC = 'http://localhost:3000' // PUBLIC_URL's default in tests
const CALLBACK = (key: string): string => `${PUBLIC}/api/auth/oauth/${key}/callback`
const ACCOUNTS = {
  alice: { email: 'Alice@Example.com', email_verified: true, name: 'Alice Liddell', given_name: 'Alice', family_name: 'Liddell', picture: 'https://img.example.com/alice.png' },
  unverified: { email: 'owner@example.com', email_verified: false, name: 'Not Owner' },
  verified: { email: 'owner@example.com', email_verified: true, name: 'Owner' }
}

function providers (entries: Array<{ key: string, issuer: string }>): string {
  return JSON.stringify(entries.map(({ key, issuer }) => ({ key, displayName: key === 'authentik' ? 'Authentik' : key, issuer, clientId: 'gatehouse', clientSecret: 'stand-in-secret' })))
}

/**
 * The binding cookie a start answer set (one per flow, `__Host-oauth_binding_<hash of the state>`
 * where browsers keep Secure cookies, `oauth_binding_<hash>` on other plain http hosts):
 * its attributes, and `jar`, the Cookie header of the browser that started the flow.
 */
function bindingOf (started: LightMyRequestResponse): { name: string, jar: string, attributes: Record<string, string | boolean> } {
  const headers = started.headers['set-cookie']
  const list = headers === undefined ? [] : Array.isArray(headers) ? headers : [headers]
  const name = list.map(header => header.slice(0, header.indexOf('='))).find(name => /^(__Host-)?oauth_binding_/.test(name))
  if (name === undefined) throw new Error(`no binding cookie in ${started.statusCode} ${started.body}`)
  const attributes = cookie(started, name)!
  return { name, jar: `${name}=${attributes.value as string}`, attributes }
}

/** Follows the start redirect through the provider and back: the callback's answer. */
async function signIn (app: FastifyInstance, key: string, authorize: (url: string) => Promise<string>, redirectTo?: string): Promise<LightMyRequestResponse> {
  const started = await app.inject({ url: `/api/auth/oauth/${key}/start${redirectTo === undefined ? '' : `?redirectTo=${encodeURIComponent(redirectTo)}`}` })
  if (started.statusCode !== 302) throw new Error(`start answered ${started.statusCode} ${started.body}`)
  const back = new URL(await authorize(started.headers.location as string))
  return await app.inject({ url: back.pathname + back.search, headers: { cookie: bindingOf(started).jar } })
}

const FORM = { 'content-type': 'application/x-www-form-urlencoded' }

t.test('providers: listed when configured; unknown 404, known but unconfigured 400', async t => {
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: 'http://127.0.0.1:9' }]) })
  const list = await app.inject({ url: '/api/auth/providers' })
  t.same(list.json(), { providers: [{ providerKey: 'authentik', displayName: 'Authentik', enabled: true }] })
  const unknown = await app.inject({ url: '/api/auth/oauth/nope/start' })
  t.equal(unknown.statusCode, 404)
  const google = await app.inject({ url: '/api/auth/oauth/google/start' })
  t.equal(google.statusCode, 400)
  t.equal(google.json().code, 'PROVIDER_NOT_CONFIGURED')
  const down = await app.inject({ url: '/api/auth/oauth/authentik/start' })
  t.equal(down.statusCode, 503, 'a provider that does not answer discovery is 503, not 500')
})

t.test('the full redirect flow with a real OIDC provider: user, identity, session, cookies', async t => {
  const provider = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [CALLBACK('authentik')] }], accounts: ACCOUNTS })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]), FRONTEND_URL: 'https://app.example.com' })

  const started = await app.inject({ url: '/api/auth/oauth/authentik/start?redirectTo=https://app.example.com/welcome' })
  t.equal(started.statusCode, 302)
  const authorization = new URL(started.headers.location as string)
  t.equal(authorization.origin, provider.issuer)
  t.match(Object.fromEntries(authorization.searchParams), { client_id: 'gatehouse', redirect_uri: CALLBACK('authentik'), code_challenge_method: 'S256', response_type: 'code', state: String, nonce: String })
  const binding = bindingOf(started)
  t.match(binding.name, /^__Host-oauth_binding_[\w-]{22}$/, 'one binding cookie per flow, named after its state; __Host-: no sibling subdomain can plant it')
  t.match(binding.attributes, { httponly: true, samesite: 'Lax', path: '/', secure: true }, 'Lax; Secure with Path=/ as __Host- requires (browsers keep it on http://localhost)')
  t.equal(binding.attributes.domain, undefined, 'no Domain')

  const answered = await signIn(app, 'authentik', provider.login('alice'), 'https://app.example.com/welcome')
  t.equal(answered.statusCode, 302)
  t.equal(answered.headers.location, 'https://app.example.com/welcome')
  t.notMatch(answered.headers.location, /token|code=/, 'no token or code in the redirect')
  t.ok(cookie(answered, 'refresh_token')?.value, 'signed in: the refresh cookie')

  const user = await app.db.selectFrom('users').selectAll().where('email', '=', 'alice@example.com').executeTakeFirstOrThrow()
  t.match(user, { name: 'Alice Liddell', given_name: 'Alice', family_name: 'Liddell', avatar_url: 'https://img.example.com/alice.png', email_verified: true, password_hash: null })
  const identities = await app.db.selectFrom('user_identities').selectAll().execute()
  t.match(identities, [{ provider: 'authentik', subject: 'alice', user_id: user.id }])

  const again = await signIn(app, 'authentik', provider.login('alice'))
  t.equal(again.statusCode, 302)
  t.equal(again.headers.location, 'https://app.example.com/', 'no redirectTo: the frontend')
  t.equal((await app.db.selectFrom('users').select('id').execute()).length, 1, 'the same user the second time')
  const logins = await app.db.selectFrom('audit_log').select('details').where('action', '=', 'auth.login').execute()
  t.same(logins.map(row => row.details.provider), ['authentik', 'authentik'])
})

t.test('state: single use, bound to the browser, never forged', async t => {
  const provider = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [CALLBACK('authentik')] }], accounts: ACCOUNTS })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]) })
  const started = await app.inject({ url: '/api/auth/oauth/authentik/start' })
  const back = new URL(await provider.authorize(started.headers.location as string, 'alice'))
  const answer = async (search: string, cookieHeader?: string) => await app.inject({ url: back.pathname + search, headers: cookieHeader === undefined ? {} : { cookie: cookieHeader } })

  const noBinding = await answer(back.search)
  t.equal(noBinding.statusCode, 400, 'another browser cannot finish the flow')
  t.equal(noBinding.json().code, 'OAUTH_STATE_INVALID')

  const second = await app.inject({ url: '/api/auth/oauth/authentik/start' })
  const secondBinding = bindingOf(second).jar
  const secondBack = new URL(await provider.authorize(second.headers.location as string, 'alice'))
  const tampered = new URLSearchParams(secondBack.search)
  tampered.set('state', `${tampered.get('state')!}x`)
  t.equal((await answer(`?${tampered.toString()}`, secondBinding)).statusCode, 400, 'a tampered state')
  t.equal((await answer('?code=abc', secondBinding)).statusCode, 400, 'no state')
  const ok = await answer(secondBack.search, secondBinding)
  t.equal(ok.statusCode, 302)
  const replay = await answer(secondBack.search, secondBinding)
  t.equal(replay.statusCode, 400, 'a replayed callback')
  t.same(replay.json(), { error: 'Missing or expired OAuth state', code: 'OAUTH_STATE_INVALID' })
  t.equal((await app.db.selectFrom('sessions').select('id').execute()).length, 1, 'one session: the legitimate one')
})

t.test('a misbehaving provider never yields a session', async t => {
  const cases: Misbehaviour[] = ['wrong-nonce', 'wrong-iss', 'wrong-aud', 'expired', 'bad-signature']
  for (const misbehave of cases) {
    const fake = await startFakeProvider(t, { clientId: 'gatehouse', clientSecret: 'stand-in-secret', account: { sub: 'mallory', email: 'mallory@example.com', email_verified: true }, misbehave })
    const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'shady', issuer: fake.issuer }]) })
    const answered = await signIn(app, 'shady', fake.authorize)
    t.equal(answered.statusCode, 400, misbehave)
    t.same(answered.json(), { error: 'Sign-in with the identity provider failed', code: 'OAUTH_FAILED' }, misbehave)
    t.equal(cookie(answered, 'refresh_token'), undefined, `${misbehave}: no cookie`)
    t.equal((await app.db.selectFrom('sessions').select('id').execute()).length, 0, `${misbehave}: no session`)
    t.equal((await app.db.selectFrom('users').select('id').execute()).length, 0, `${misbehave}: no user`)
    const failures = await app.db.selectFrom('audit_log').select('action').where('action', '=', 'auth.login_failed').execute()
    t.equal(failures.length, 1, `${misbehave}: audited`)
  }

  // A well-behaved fake works, and a replayed code is refused by the provider.
  const fake = await startFakeProvider(t, { clientId: 'gatehouse', clientSecret: 'stand-in-secret', account: { sub: 'bob', email: 'bob@example.com', email_verified: 'true' } })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'plain', issuer: fake.issuer }]) })
  t.equal((await signIn(app, 'plain', fake.authorize)).statusCode, 302)
  let firstCode = ''
  const replayed = await signIn(app, 'plain', async url => {
    const back = new URL(await fake.authorize(url))
    if (firstCode === '') firstCode = back.searchParams.get('code')!
    return back.toString()
  })
  t.equal(replayed.statusCode, 302)
  const third = await app.inject({ url: '/api/auth/oauth/plain/start' })
  const back = new URL(await fake.authorize(third.headers.location as string))
  back.searchParams.set('code', firstCode)
  const reuse = await app.inject({ url: back.pathname + back.search, headers: { cookie: bindingOf(third).jar } })
  t.equal(reuse.statusCode, 400, 'a replayed code')
})

t.test('an existing account is linked only when the provider verified the address', async t => {
  const provider = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [CALLBACK('authentik')] }], accounts: ACCOUNTS })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]) })
  const owner = await register(app, 'owner@example.com')

  const refused = await signIn(app, 'authentik', provider.login('unverified'))
  t.equal(refused.statusCode, 409)
  t.equal(refused.json().code, 'ACCOUNT_EXISTS')
  t.equal((await app.db.selectFrom('user_identities').select('id').execute()).length, 0, 'no silent takeover')

  const linked = await signIn(app, 'authentik', provider.login('verified'))
  t.equal(linked.statusCode, 302)
  const identity = await app.db.selectFrom('user_identities').selectAll().executeTakeFirstOrThrow()
  t.equal(identity.user_id, owner.user.id, 'linked to the existing account')
})

t.test('a posted callback takes the e-mail from the id_token, never from the posted user field', async t => {
  const fake = await startFakeProvider(t, { clientId: 'gatehouse', clientSecret: 'stand-in-secret', account: { sub: 'apple-sub', email: 'real@example.com', email_verified: 'true' } })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'fruit', issuer: fake.issuer }]) })
  const started = await app.inject({ url: '/api/auth/oauth/fruit/start' })
  const back = new URL(await fake.authorize(started.headers.location as string))
  const form = new URLSearchParams({
    code: back.searchParams.get('code')!,
    state: back.searchParams.get('state')!,
    user: JSON.stringify({ name: { firstName: 'Mallory' }, email: 'victim@example.com' })
  })
  const answered = await app.inject({ method: 'POST', url: back.pathname, headers: { ...FORM, cookie: bindingOf(started).jar }, payload: form.toString() })
  t.equal(answered.statusCode, 302)
  const users = await app.db.selectFrom('users').select('email').execute()
  t.same(users, [{ email: 'real@example.com' }])
})

t.test('seed 001 and seed 000 aliases start the same flow', async t => {
  const provider = await startOidcProvider(t, {
    clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [`${PUBLIC}/api/auth/google/callback`, `${PUBLIC}/auth/callback/google`] }],
    accounts: ACCOUNTS
  })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'google', issuer: provider.issuer }]) })
  for (const [method, url] of [['GET', '/api/auth/google'], ['POST', '/auth/signin/google']] as const) {
    const started = await app.inject({ method, url })
    t.equal(started.statusCode, 302, url)
    const back = new URL(await provider.authorize(started.headers.location as string, 'alice'))
    const answered = await app.inject({ url: back.pathname + back.search, headers: { cookie: bindingOf(started).jar } })
    t.equal(answered.statusCode, 302, `${url} → ${back.pathname}`)
    t.ok(cookie(answered, 'refresh_token')?.value)
  }
  // Seed 000's sign-out needs a credential (the refresh cookie's Path does not reach it);
  // test/routes/logout.test.ts and test/e2e/signout.test.ts have the rest.
  const signout = await app.inject({ method: 'POST', url: '/auth/signout' })
  t.equal(signout.statusCode, 401, 'sign-out without a credential is 401, not a redirect')
  t.equal(cookie(signout, 'refresh_token'), undefined, 'and clears nothing')
})

t.test('POST /api/auth/callback exchanges a code the SPA received (seed 002)', async t => {
  const provider = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: ['https://app.example.com/callback'] }], accounts: ACCOUNTS })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]), FRONTEND_URL: 'https://app.example.com' })

  // What the SPA does by itself with the provider.
  const configuration = await oidc.discovery(new URL(provider.issuer), 'gatehouse', 'stand-in-secret', undefined, { execute: [oidc.allowInsecureRequests] })
  const codeVerifier = oidc.randomPKCECodeVerifier()
  const nonce = oidc.randomNonce()
  const url = oidc.buildAuthorizationUrl(configuration, {
    redirect_uri: 'https://app.example.com/callback',
    scope: 'openid email profile',
    nonce,
    code_challenge: await oidc.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256'
  })
  const back = new URL(await provider.authorize(url.href, 'alice'))
  const code = back.searchParams.get('code')!

  const missing = await app.inject({ method: 'POST', url: '/api/auth/callback', payload: { codeVerifier, nonce } })
  t.equal(missing.statusCode, 400)
  t.same(missing.json(), { success: false, message: 'Authorization code is required', code: 'CODE_REQUIRED' })
  const elsewhere = await app.inject({ method: 'POST', url: '/api/auth/callback', payload: { code, codeVerifier, nonce, redirectUri: 'https://evil.example/callback' } })
  t.equal(elsewhere.statusCode, 400)
  t.equal(elsewhere.json().code, 'REDIRECT_NOT_ALLOWED')
  // A relative redirectUri is taken against PUBLIC_URL (it used to throw: a 500).
  const relative = await app.inject({ method: 'POST', url: '/api/auth/callback', payload: { code: 'not-a-code', codeVerifier, nonce, redirectUri: '/callback' } })
  t.not(relative.statusCode, 500, 'a relative redirectUri is a 4xx, never a 500')
  t.equal(relative.statusCode, 400)

  const exchanged = await app.inject({ method: 'POST', url: '/api/auth/callback', payload: { code, codeVerifier, nonce, redirectUri: 'https://app.example.com/callback' } })
  t.equal(exchanged.statusCode, 200, exchanged.body)
  t.match(exchanged.json(), { success: true, message: 'Authentication successful', data: { accessToken: String, refreshToken: String, user: { email: 'alice@example.com', isActive: true } } })
  t.ok(cookie(exchanged, 'refresh_token')?.value)
  const replay = await app.inject({ method: 'POST', url: '/api/auth/callback', payload: { code, codeVerifier, nonce, redirectUri: 'https://app.example.com/callback' } })
  t.equal(replay.statusCode, 400, 'a code works once')

  // An inactive user gets seed 002's 403.
  await app.db.updateTable('users').set({ is_active: false }).where('email', '=', 'alice@example.com').execute()
  const verifier = oidc.randomPKCECodeVerifier()
  const next = oidc.buildAuthorizationUrl(configuration, {
    redirect_uri: 'https://app.example.com/callback',
    scope: 'openid email profile',
    nonce,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256'
  })
  const nextCode = new URL(await provider.authorize(next.href, 'alice')).searchParams.get('code')!
  const inactive = await app.inject({ method: 'POST', url: '/api/auth/callback', payload: { code: nextCode, codeVerifier: verifier, nonce, redirectUri: 'https://app.example.com/callback' } })
  t.equal(inactive.statusCode, 403)
  t.same(inactive.json(), { success: false, message: 'User account is inactive', code: 'USER_INACTIVE' })
})

const SPA_CALLBACK = 'https://app.example.com/callback'

/** A provider and a Gatehouse for seed 002's SPA, and `authorize`: what the SPA does by itself with the provider. */
async function spaSetup (t: TestContext) {
  const provider = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [SPA_CALLBACK] }], accounts: ACCOUNTS })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]), FRONTEND_URL: 'https://app.example.com' })
  /** The SPA's authorization request (its own verifier and nonce) and the code the provider sends back to it. */
  const authorize = async (account = 'alice') => await spaAuthorization(provider, 'gatehouse', 'stand-in-secret', SPA_CALLBACK, account)
  const created = async () => ({
    users: (await app.db.selectFrom('users').select('id').execute()).length,
    identities: (await app.db.selectFrom('user_identities').select('id').execute()).length,
    sessions: (await app.db.selectFrom('sessions').select('id').execute()).length
  })
  return { app, authorize, created }
}

t.test('the code exchange requires the SPA\'s PKCE verifier and nonce, and checks them (seed 002)', async t => {
  const { app, authorize, created } = await spaSetup(t)
  const exchange = async (payload: Record<string, unknown>) => await app.inject({ method: 'POST', url: '/api/auth/callback', payload })

  const { code, codeVerifier, nonce, redirectUri } = await authorize()
  const bare = await exchange({ code, redirectUri })
  t.equal(bare.statusCode, 400, 'seed 002\'s bare { code } is refused')
  t.same(bare.json(), { success: false, message: 'Invalid callback payload', code: 'VALIDATION_FAILED', details: { codeVerifier: 'is required', nonce: 'is required' } })
  t.same((await exchange({ code, nonce, redirectUri })).json().details, { codeVerifier: 'is required' }, 'no verifier: named')
  t.same((await exchange({ code, codeVerifier, redirectUri })).json().details, { nonce: 'is required' }, 'no nonce: named')
  t.equal((await exchange({ code, codeVerifier: 'short', nonce, redirectUri })).json().details.codeVerifier, 'must NOT have fewer than 43 characters')

  const failed = { success: false, message: 'Sign-in with the identity provider failed', code: 'OAUTH_FAILED' }
  const wrongVerifier = await exchange({ code, codeVerifier: oidc.randomPKCECodeVerifier(), nonce, redirectUri })
  t.equal(wrongVerifier.statusCode, 400, 'another verifier: the provider refuses the code')
  t.same(wrongVerifier.json(), failed)
  t.equal(cookie(wrongVerifier, 'refresh_token'), undefined)

  const second = await authorize()
  const wrongNonce = await exchange({ ...second, nonce: oidc.randomNonce() })
  t.equal(wrongNonce.statusCode, 400, 'another nonce: the id_token does not carry it')
  t.same(wrongNonce.json(), failed)
  t.equal(cookie(wrongNonce, 'refresh_token'), undefined)
  t.same(await created(), { users: 0, identities: 0, sessions: 0 }, 'nothing created')
  const failures = await app.db.selectFrom('audit_log').select('action').where('action', '=', 'auth.login_failed').execute()
  t.equal(failures.length, 2, 'both audited')

  const right = await exchange({ ...(await authorize()) })
  t.equal(right.statusCode, 200, right.body)
  t.same(await created(), { users: 1, identities: 1, sessions: 1 })
})

t.test('the code exchange gives browsers the refresh token only as the cookie, scripts also in the body (seed 002)', async t => {
  const { app, authorize, created } = await spaSetup(t)
  const exchange = async (payload: Record<string, unknown>, headers: Record<string, string> = {}) =>
    await app.inject({ method: 'POST', url: '/api/auth/callback', headers, payload })

  const browser = await exchange(await authorize(), { origin: 'https://app.example.com' })
  t.equal(browser.statusCode, 200, browser.body)
  t.match(browser.json(), { success: true, message: 'Authentication successful', data: { accessToken: String, user: { email: 'alice@example.com' } } })
  t.notOk('refreshToken' in browser.json().data, 'no refresh token in a browser\'s body')
  const refreshCookie = cookie(browser, 'refresh_token')
  t.match(refreshCookie, { httponly: true, path: '/api/auth', samesite: 'Strict' })
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin: 'https://app.example.com', cookie: `refresh_token=${refreshCookie!.value as string}` } })
  t.equal(refreshed.statusCode, 200, 'the cookie refreshes')

  const script = await exchange(await authorize())
  t.equal(script.statusCode, 200, script.body)
  t.equal(script.json().data.refreshToken, cookie(script, 'refresh_token')!.value, 'a script (no Origin) gets it in the body too')

  // A page elsewhere cannot post the exchange (login CSRF with the attacker's own code, verifier and nonce).
  const mallory = await authorize('verified')
  const foreign = await exchange(mallory, { origin: 'https://evil.example' })
  t.equal(foreign.statusCode, 403)
  t.same(foreign.json(), { success: false, message: 'Requests must come from an allowed origin', code: 'ORIGIN_NOT_ALLOWED' })
  const form = new URLSearchParams(mallory).toString()
  for (const headers of [{ origin: 'https://evil.example' }, { origin: 'https://app.example.com' }, {}]) {
    const posted = await app.inject({ method: 'POST', url: '/api/auth/callback', headers: { ...FORM, ...headers }, payload: form })
    t.equal(posted.statusCode, headers.origin === 'https://evil.example' ? 403 : 415, `a form post from ${headers.origin ?? 'no origin'}`)
  }
  t.same(await created(), { users: 1, identities: 1, sessions: 2 }, 'only alice\'s two sessions')
})

t.test('a flow left open longer than ten minutes has expired', async t => {
  let now = Date.now()
  const provider = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [CALLBACK('authentik')] }], accounts: ACCOUNTS })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]) }, undefined, { now: () => now })
  const answered = await signIn(app, 'authentik', async url => {
    const back = await provider.authorize(url, 'alice')
    now += 10 * 60_000 + 1
    return back
  })
  t.equal(answered.statusCode, 400)
  t.equal(answered.json().code, 'OAUTH_STATE_INVALID')
})

/** Sign in with Apple against the fake provider (form_post, a JWT client secret). */
async function appleStandIn (t: TestContext, env: Record<string, string> = {}, account: { sub: string, email: string, email_verified: string } = { sub: 'mallory-apple', email: 'mallory@privaterelay.appleid.com', email_verified: 'true' }) {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const fake = await startFakeProvider(t, {
    clientId: 'com.example.web',
    clientSecret: 'unused',
    account,
    acceptClientSecret: secret => typeof secret === 'string' && secret.split('.').length === 3
  })
  const app = await build(t, {
    APPLE_CLIENT_ID: 'com.example.web',
    APPLE_TEAM_ID: 'TEAM123456',
    APPLE_KEY_ID: 'KEY1234567',
    APPLE_PRIVATE_KEY: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    APPLE_ISSUER: fake.issuer,
    ...env
  })
  return { fake, app, publicKey }
}

t.test('Sign in with Apple: form_post, a signed client secret, the name from the form and the e-mail from the id_token', async t => {
  const { fake, app, publicKey } = await appleStandIn(t, {}, { sub: 'apple-user', email: 'hidden@privaterelay.appleid.com', email_verified: 'true' })
  t.same((await app.inject({ url: '/api/auth/providers' })).json().providers, [{ providerKey: 'apple', displayName: 'Apple', enabled: true }])

  const started = await app.inject({ url: '/api/auth/oauth/apple/start' })
  t.equal(started.statusCode, 302)
  const authorization = new URL(started.headers.location as string)
  t.equal(authorization.searchParams.get('response_mode'), 'form_post', 'Apple posts its answer')
  t.equal(authorization.searchParams.get('scope'), 'openid email name')

  const back = new URL(await fake.authorize(authorization.href))
  const form = new URLSearchParams({
    code: back.searchParams.get('code')!,
    state: back.searchParams.get('state')!,
    // Unsigned and attacker-controlled: only the name may be used.
    user: JSON.stringify({ name: { firstName: 'Ada', lastName: 'Lovelace' }, email: 'victim@example.com' })
  })
  const binding = bindingOf(started)
  t.match(binding.attributes, { httponly: true, secure: true, samesite: 'None', path: '/' }, 'a binding cookie that follows a cross-site POST')
  const answered = await app.inject({ method: 'POST', url: '/api/auth/oauth/apple/callback', headers: { ...FORM, cookie: binding.jar }, payload: form.toString() })
  t.equal(answered.statusCode, 302)
  t.ok(cookie(answered, 'refresh_token')?.value)
  const users = await app.db.selectFrom('users').select(['email', 'name', 'email_verified']).execute()
  t.same(users, [{ email: 'hidden@privaterelay.appleid.com', name: 'Ada Lovelace', email_verified: true }])

  const secret = fake.lastClientSecret!
  t.match(decodeProtectedHeader(secret), { alg: 'ES256', kid: 'KEY1234567' })
  const verified = await jwtVerify(secret, await importSPKI(publicKey.export({ type: 'spki', format: 'pem' }).toString(), 'ES256'), {
    issuer: 'TEAM123456', audience: 'https://appleid.apple.com', subject: 'com.example.web'
  })
  t.ok(verified.payload.exp! - verified.payload.iat! <= 180 * 86_400, 'the client secret JWT is short-lived (Apple allows six months at most)')
})

/*
 * Login CSRF (issue 14, item 2): an attacker starts a flow in their own browser, signs in at
 * the provider as themselves, and carries the provider's answer (code and state) to the
 * victim's browser, which would then be signed in to the attacker's account. Every callback,
 * GET or POST, must find that the browser finishing the flow is not the one that started it.
 */

/** The ways an answer reaches a callback from the victim's browser: GET or POST, with the victim's cookies. */
function carried (back: URL, victimJar: string, attackerBinding: string): Array<[string, { method: 'GET' | 'POST', url: string, headers: Record<string, string>, payload?: string }]> {
  const form = back.searchParams.toString()
  const jars: Array<[string, Record<string, string>]> = [
    ['no binding cookie', {}],
    ['the victim\'s own binding cookie', { cookie: victimJar }],
    ['a forged binding cookie of the right name', { cookie: `${attackerBinding}=${'A'.repeat(43)}; ${victimJar}` }]
  ]
  return jars.flatMap(([jar, headers]) => [
    [`POST, ${jar}`, { method: 'POST' as const, url: back.pathname, headers: { ...FORM, ...headers }, payload: form }],
    [`GET, ${jar}`, { method: 'GET' as const, url: back.pathname + back.search, headers }]
  ])
}

t.test('login CSRF: a provider\'s answer carried to another browser is refused by GET and by POST, and still completes in its own', async t => {
  const provider = await startOidcProvider(t, {
    clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [CALLBACK('authentik'), `${PUBLIC}/auth/callback/authentik`] }],
    accounts: { ...ACCOUNTS, mallory: { email: 'mallory@example.com', email_verified: true, name: 'Mallory' } }
  })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]) })
  const sessions = async () => await app.db.selectFrom('sessions').select('user_id').execute()
  // The victim has a sign-in of their own going, with its own binding cookie.
  const victim = bindingOf(await app.inject({ url: '/api/auth/oauth/authentik/start' }))

  // The seed 003 routes and seed 000's Auth.js-style ones (POST /auth/callback/:provider).
  for (const [method, url] of [['GET', '/api/auth/oauth/authentik/start'], ['POST', '/auth/signin/authentik']] as const) {
    const attacker = await app.inject({ method, url })
    const attackerBinding = bindingOf(attacker)
    const back = new URL(await provider.authorize(attacker.headers.location as string, 'mallory'))
    for (const [name, request] of carried(back, victim.jar, attackerBinding.name)) {
      const answered = await app.inject(request)
      t.equal(answered.statusCode, 400, `${back.pathname}: ${name}`)
      t.same(answered.json(), { error: 'Missing or expired OAuth state', code: 'OAUTH_STATE_INVALID' }, `${back.pathname}: ${name}`)
      t.equal(cookie(answered, 'refresh_token'), undefined, `${back.pathname}: ${name}: nobody signed in`)
    }
    t.same(await sessions(), [], 'no session at all')

    // Nothing was consumed: the attacker's own browser still finishes the flow (by POST here).
    const own = await app.inject({ method: 'POST', url: back.pathname, headers: { ...FORM, cookie: attackerBinding.jar }, payload: back.searchParams.toString() })
    t.equal(own.statusCode, 302, `${back.pathname}: the browser that started the flow finishes it`)
    t.ok(cookie(own, 'refresh_token')?.value)
    t.match(cookie(own, attackerBinding.name), { value: '', path: '/' }, 'the binding cookie is cleared')
    t.equal((await sessions()).length, 1)
    await app.db.deleteFrom('sessions').execute()
  }
})

t.test('two tabs: two flows started in one browser keep their own binding cookies and both finish', async t => {
  const provider = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [CALLBACK('authentik')] }], accounts: ACCOUNTS })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]) })
  const first = await app.inject({ url: '/api/auth/oauth/authentik/start' })
  const second = await app.inject({ url: '/api/auth/oauth/authentik/start' })
  t.not(bindingOf(first).name, bindingOf(second).name, 'the second flow does not overwrite the first one\'s cookie')
  const jar = `${bindingOf(first).jar}; ${bindingOf(second).jar}`
  const firstBack = new URL(await provider.authorize(first.headers.location as string, 'alice'))
  const secondBack = new URL(await provider.authorize(second.headers.location as string, 'alice'))
  // Finished in the other order than started.
  for (const back of [secondBack, firstBack]) {
    const answered = await app.inject({ url: back.pathname + back.search, headers: { cookie: jar } })
    t.equal(answered.statusCode, 302, answered.body)
    t.ok(cookie(answered, 'refresh_token')?.value)
  }
})

t.test('login CSRF with Apple\'s form_post: the answer posted from another browser is refused, its own browser finishes', async t => {
  const { fake, app } = await appleStandIn(t)
  const victim = bindingOf(await app.inject({ url: '/api/auth/oauth/apple/start' }))
  for (const [method, url] of [['GET', '/api/auth/oauth/apple/start'], ['POST', '/auth/signin/apple']] as const) {
    const attacker = await app.inject({ method, url })
    const attackerBinding = bindingOf(attacker)
    t.match(attackerBinding.attributes, { secure: true, samesite: 'None', httponly: true })
    // What the provider's page would post, as the query of the URL it posts to.
    const back = new URL(await fake.authorize(attacker.headers.location as string))
    t.same([...back.searchParams.keys()].sort(), ['code', 'state'])
    const exchanges = fake.tokenRequests
    for (const [name, request] of carried(back, victim.jar, attackerBinding.name)) {
      const answered = await app.inject(request)
      t.equal(answered.statusCode, 400, `${back.pathname}: ${name}`)
      t.equal(answered.json().code, 'OAUTH_STATE_INVALID', `${back.pathname}: ${name}`)
    }
    t.equal(fake.tokenRequests, exchanges, 'the code was not even exchanged')
    const own = await app.inject({ method: 'POST', url: back.pathname, headers: { ...FORM, cookie: attackerBinding.jar }, payload: back.searchParams.toString() })
    t.equal(own.statusCode, 302, `${back.pathname}: the browser that started the flow finishes it`)
    t.match(cookie(own, attackerBinding.name), { value: '', path: '/', secure: true, samesite: 'None' }, 'cleared with the attributes it was set with')
    t.equal(fake.tokenRequests, exchanges + 1)
    await app.db.deleteFrom('sessions').execute()
  }
})

t.test('a form_post provider needs a Secure cookie: on plain http it starts only on a loopback host', async t => {
  // A Secure cookie sent from http://gatehouse.lan would be dropped by the browser, and no answer could ever be bound: refused, not weakened.
  const refused = await appleStandIn(t, { PUBLIC_URL: 'http://gatehouse.lan:3000' })
  for (const [method, url] of [['GET', '/api/auth/oauth/apple/start'], ['POST', '/auth/signin/apple']] as const) {
    const started = await refused.app.inject({ method, url })
    t.equal(started.statusCode, 503, url)
    t.same(started.json(), { error: 'Apple sign-in needs PUBLIC_URL on https (or http://localhost)', code: 'INSECURE_PUBLIC_URL' }, url)
    t.equal(started.headers['set-cookie'], undefined, 'no cookie')
  }

  for (const PUBLIC_URL of ['http://127.0.0.1:3000', 'http://gatehouse.localhost:3000', 'https://auth.example.com']) {
    const { app } = await appleStandIn(t, { PUBLIC_URL })
    const started = await app.inject({ url: '/api/auth/oauth/apple/start' })
    t.equal(started.statusCode, 302, PUBLIC_URL)
    t.match(bindingOf(started).attributes, { secure: true, samesite: 'None' }, PUBLIC_URL)
  }
})

t.test('cookie tossing: a binding cookie planted without the __Host- prefix (as a sibling subdomain could set it) binds nothing', async t => {
  const provider = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [CALLBACK('authentik')] }], accounts: ACCOUNTS })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]), FRONTEND_URL: 'https://app.example.com' })
  // The attacker starts a flow in his own browser and signs in at the provider as himself.
  const started = await app.inject({ url: '/api/auth/oauth/authentik/start' })
  const attacker = bindingOf(started)
  const back = new URL(await provider.login('alice')(started.headers.location as string))
  // A page on a sibling subdomain plants the same name and value without the prefix (Domain=parent):
  const planted = `${attacker.name.replace(/^__Host-/, '')}=${attacker.attributes.value as string}`
  const victim = await app.inject({ url: back.pathname + back.search, headers: { cookie: planted } })
  t.equal(victim.statusCode, 400, 'the victim\'s browser is not signed in to the attacker\'s account')
  t.same(victim.json(), { error: 'Missing or expired OAuth state', code: 'OAUTH_STATE_INVALID' })
  t.equal(cookie(victim, 'refresh_token'), undefined)
  const own = await app.inject({ url: back.pathname + back.search, headers: { cookie: attacker.jar } })
  t.equal(own.statusCode, 302, 'the flow still completes in the browser that started it')
})

t.test('two first sign-ins of one new identity at once both succeed: one account, one identity', async t => {
  const provider = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [CALLBACK('authentik')] }], accounts: ACCOUNTS })
  const app = await build(t, { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: provider.issuer }]), FRONTEND_URL: 'https://app.example.com' })
  const flows = await Promise.all(Array.from({ length: 6 }, async () => {
    const started = await app.inject({ url: '/api/auth/oauth/authentik/start' })
    return { started, back: new URL(await provider.login('alice')(started.headers.location as string)) }
  }))
  const answers = await Promise.all(flows.map(async ({ started, back }) => await app.inject({ url: back.pathname + back.search, headers: { cookie: bindingOf(started).jar } })))
  t.same(answers.map(answer => answer.statusCode), [302, 302, 302, 302, 302, 302], 'no 500: a lost race is tried again')
  t.equal((await app.db.selectFrom('users').select('id').where('email', '=', 'alice@example.com').execute()).length, 1, 'one account')
  t.equal((await app.db.selectFrom('user_identities').select('id').execute()).length, 1, 'one identity')
})
