import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { generateKeyPairSync } from 'node:crypto'
import { decodeProtectedHeader, importSPKI, jwtVerify } from 'jose'
import * as oidc from 'openid-client'
import t from 'tap'
import { build } from '../helper.js'
import { cookie, register } from '../auth-helper.js'
import { startFakeProvider, startOidcProvider, type Misbehaviour } from '../oidc-stand-in.js'

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

/** Follows the start redirect through the provider and back: the callback's answer. */
async function signIn (app: FastifyInstance, key: string, authorize: (url: string) => Promise<string>, redirectTo?: string): Promise<LightMyRequestResponse> {
  const started = await app.inject({ url: `/api/auth/oauth/${key}/start${redirectTo === undefined ? '' : `?redirectTo=${encodeURIComponent(redirectTo)}`}` })
  if (started.statusCode !== 302) throw new Error(`start answered ${started.statusCode} ${started.body}`)
  const binding = cookie(started, 'oauth_binding')!.value as string
  const back = new URL(await authorize(started.headers.location as string))
  return await app.inject({ url: back.pathname + back.search, headers: { cookie: `oauth_binding=${binding}` } })
}

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
  t.match(cookie(started, 'oauth_binding'), { httponly: true, samesite: 'Lax' })

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
  const secondBinding = cookie(second, 'oauth_binding')!.value as string
  const secondBack = new URL(await provider.authorize(second.headers.location as string, 'alice'))
  const tampered = new URLSearchParams(secondBack.search)
  tampered.set('state', `${tampered.get('state')!}x`)
  t.equal((await answer(`?${tampered.toString()}`, `oauth_binding=${secondBinding}`)).statusCode, 400, 'a tampered state')
  t.equal((await answer('?code=abc', `oauth_binding=${secondBinding}`)).statusCode, 400, 'no state')
  const ok = await answer(secondBack.search, `oauth_binding=${secondBinding}`)
  t.equal(ok.statusCode, 302)
  const replay = await answer(secondBack.search, `oauth_binding=${secondBinding}`)
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
  const reuse = await app.inject({ url: back.pathname + back.search, headers: { cookie: `oauth_binding=${cookie(third, 'oauth_binding')!.value as string}` } })
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
  const answered = await app.inject({ method: 'POST', url: back.pathname, headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: form.toString() })
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
    const answered = await app.inject({ url: back.pathname + back.search, headers: { cookie: `oauth_binding=${cookie(started, 'oauth_binding')!.value as string}` } })
    t.equal(answered.statusCode, 302, `${url} → ${back.pathname}`)
    t.ok(cookie(answered, 'refresh_token')?.value)
  }
  const signout = await app.inject({ method: 'POST', url: '/auth/signout' })
  t.equal(signout.statusCode, 302)
  t.match(cookie(signout, 'refresh_token'), { value: '' })
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

  const missing = await app.inject({ method: 'POST', url: '/api/auth/callback', payload: {} })
  t.equal(missing.statusCode, 400)
  t.same(missing.json(), { success: false, message: 'Authorization code is required', code: 'CODE_REQUIRED' })
  const elsewhere = await app.inject({ method: 'POST', url: '/api/auth/callback', payload: { code, codeVerifier, nonce, redirectUri: 'https://evil.example/callback' } })
  t.equal(elsewhere.statusCode, 400)
  t.equal(elsewhere.json().code, 'REDIRECT_NOT_ALLOWED')

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

t.test('Sign in with Apple: form_post, a signed client secret, the name from the form and the e-mail from the id_token', async t => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const fake = await startFakeProvider(t, {
    clientId: 'com.example.web',
    clientSecret: 'unused',
    account: { sub: 'apple-user', email: 'hidden@privaterelay.appleid.com', email_verified: 'true' },
    acceptClientSecret: secret => typeof secret === 'string' && secret.split('.').length === 3
  })
  const app = await build(t, {
    APPLE_CLIENT_ID: 'com.example.web',
    APPLE_TEAM_ID: 'TEAM123456',
    APPLE_KEY_ID: 'KEY1234567',
    APPLE_PRIVATE_KEY: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    APPLE_ISSUER: fake.issuer
  })
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
  const answered = await app.inject({ method: 'POST', url: '/api/auth/oauth/apple/callback', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: form.toString() })
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
