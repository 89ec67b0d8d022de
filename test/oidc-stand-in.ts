import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import Fastify from 'fastify'
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose'
import Provider, { type Adapter, type AdapterPayload, type Configuration } from 'oidc-provider'
import * as oidc from 'openid-client'
import { freePort, type TestContext } from './helper.js'

/*
 * Local OpenID Connect providers that tests start themselves, so that the OIDC login is
 * tested end to end without any outside service:
 *
 *   startOidcProvider  a real oidc-provider (v9): what a conforming IdP does.
 *   startFakeProvider  a small hand-written IdP that can be told to misbehave (wrong nonce,
 *                      issuer, audience, expired or badly signed id_token), which a real
 *                      provider cannot be made to do.
 *
 * Neither needs a browser: `authorize` follows the redirects itself and returns the URL the
 * provider sends the user back to (the client's redirect_uri with `code` and `state`).
 */

export interface OidcAccount {
  email?: string
  email_verified?: boolean
  name?: string
  given_name?: string
  family_name?: string
  picture?: string
  preferred_username?: string
}

export interface OidcClient {
  client_id: string
  client_secret: string
  /**
   * Exact URIs; http is fine on any host for a `web` client in oidc-provider v9 (only the
   * implicit flow demands https and forbids localhost), e.g. http://127.0.0.1:3000/cb.
   */
  redirect_uris: string[]
  /**
   * oidc-provider accepts exactly one method per client. Defaults to client_secret_post,
   * which is what openid-client's `discovery(url, id, secret)` uses when given a secret.
   */
  token_endpoint_auth_method?: 'client_secret_post' | 'client_secret_basic'
}

export interface OidcProviderOptions {
  clients: OidcClient[]
  accounts?: Record<string, OidcAccount>
  /** The account a real browser (which cannot add ?account=) signs in as. */
  browserAccount?: string
}

export interface OidcProviderStandIn {
  /** http://127.0.0.1:<port>, also the discovery base. */
  issuer: string
  provider: Provider
  /**
   * Drives the authorization request (login and consent) as `accountId` and returns the
   * final redirect: the client's redirect_uri with `code`, `state` and `iss`, or with
   * `error` when the provider refused the request.
   */
  authorize: (authorizationUrl: string, accountId: string) => Promise<string>
  /** `authorize` bound to one account: the same shape as the fake provider's `authorize`. */
  login: (accountId: string) => (authorizationUrl: string) => Promise<string>
}

// RSA key generation takes a while: one signing key per test process is enough.
let signingKeys: Promise<{ privateJwk: JWK, privateKey: CryptoKey, publicJwk: JWK }> | undefined
async function signingKey (): Promise<{ privateJwk: JWK, privateKey: CryptoKey, publicJwk: JWK }> {
  signingKeys ??= (async () => {
    const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true })
    const kid = randomUUID()
    const privateJwk = { ...await exportJWK(privateKey), kid, alg: 'RS256', use: 'sig' }
    const publicJwk = { ...await exportJWK(publicKey), kid, alg: 'RS256', use: 'sig' }
    return { privateJwk, privateKey, publicJwk }
  })()
  return await signingKeys
}

const INTERACTION_PATH = '/interaction/'

/*
 * oidc-provider's storage, one Map per provider: the built-in memory adapter would do, but
 * it warns on every start and is shared by all providers of the process.
 */
function memoryAdapter (): (name: string) => Adapter {
  const store = new Map<string, { payload: AdapterPayload, expiresAt?: number }>()
  return name => {
    const key = (id: string): string => `${name}:${id}`
    const live = (id: string): AdapterPayload | undefined => {
      const entry = store.get(key(id))
      if (entry?.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
        store.delete(key(id))
        return undefined
      }
      return entry?.payload
    }
    const findBy = (field: 'uid' | 'userCode', value: string): AdapterPayload | undefined => {
      for (const [k, { payload }] of store) {
        if (k.startsWith(`${name}:`) && payload[field] === value) return live(k.slice(name.length + 1))
      }
      return undefined
    }
    return {
      async upsert (id, payload, expiresIn) {
        store.set(key(id), expiresIn === undefined ? { payload } : { payload, expiresAt: Date.now() + expiresIn * 1000 })
      },
      async find (id) { return live(id) },
      async findByUid (uid) { return findBy('uid', uid) },
      async findByUserCode (userCode) { return findBy('userCode', userCode) },
      async consume (id) {
        const payload = live(id)
        if (payload !== undefined) payload.consumed = Math.floor(Date.now() / 1000)
      },
      async destroy (id) { store.delete(key(id)) },
      async revokeByGrantId (grantId) {
        for (const [k, { payload }] of store) if (payload.grantId === grantId) store.delete(k)
      }
    }
  }
}

/** A real oidc-provider on 127.0.0.1, closed at teardown. */
export async function startOidcProvider (t: TestContext, options: OidcProviderOptions): Promise<OidcProviderStandIn> {
  const port = await freePort()
  const issuer = `http://127.0.0.1:${port}`
  const accounts = options.accounts ?? {}
  const { privateJwk } = await signingKey()

  const configuration: Configuration = {
    adapter: memoryAdapter(),
    clients: options.clients.map(client => ({
      client_id: client.client_id,
      client_secret: client.client_secret,
      redirect_uris: client.redirect_uris,
      token_endpoint_auth_method: client.token_endpoint_auth_method ?? 'client_secret_post',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      application_type: 'web',
      id_token_signed_response_alg: 'RS256'
    })),
    jwks: { keys: [privateJwk as any] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    scopes: ['openid', 'email', 'profile', 'offline_access'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name', 'picture', 'preferred_username']
    },
    // By default a code flow id_token carries only `sub` (the rest is at userinfo); real
    // IdPs such as Google put email and profile claims in the id_token, so do the same.
    conformIdTokenClaims: false,
    // v9 supports only S256, so requiring PKCE means requiring S256.
    pkce: { required: () => true },
    // Explicit lifetimes (seconds), which also keeps the "default ttl" notices out of test output.
    ttl: { AccessToken: 300, AuthorizationCode: 60, Grant: 600, IdToken: 300, Interaction: 600, Session: 600 },
    clientBasedCORS: () => true,
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `${INTERACTION_PATH}${interaction.uid}` },
    findAccount: (_ctx, sub) => ({
      accountId: sub,
      claims: () => ({ sub, ...accounts[sub] })
    })
  }
  const provider = new Provider(issuer, configuration)

  /*
   * The interaction "UI": `authorize` adds ?account=<id> to the interaction URL and this
   * logs that account in and consents to everything requested, all in one step.
   */
  async function interaction (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const details = await provider.interactionDetails(req, res)
    const accountId = new URL(req.url ?? '/', issuer).searchParams.get('account') ??
      (details.session?.accountId as string | undefined) ?? options.browserAccount
    if (accountId === undefined || accountId === '') {
      res.statusCode = 400
      res.end('no account to log in: use authorize(url, accountId)')
      return
    }
    const clientId = String(details.params.client_id)
    const grant = details.grantId !== undefined
      ? (await provider.Grant.find(details.grantId))!
      : new provider.Grant({ accountId, clientId })
    grant.addOIDCScope(typeof details.params.scope === 'string' ? details.params.scope : 'openid email profile')
    const grantId = await grant.save()
    await provider.interactionFinished(req, res, { login: { accountId }, consent: { grantId } }, { mergeWithLastSubmission: false })
  }

  const callback = provider.callback()
  const server = createServer((req, res) => {
    const handled = req.method === 'GET' && req.url?.startsWith(INTERACTION_PATH) === true
      ? interaction(req, res)
      : callback(req, res)
    handled.catch((error: unknown) => {
      res.statusCode = 500
      res.end(String(error))
    })
  })
  await new Promise<void>(resolve => server.listen(port, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })

  async function authorize (authorizationUrl: string, accountId: string): Promise<string> {
    // A fresh cookie jar per call: every authorization is a new login.
    const jar = new Map<string, string>()
    let url = new URL(authorizationUrl)
    for (let hop = 0; hop < 10; hop++) {
      if (url.origin !== issuer) return url.toString()
      if (url.pathname.startsWith(INTERACTION_PATH)) url.searchParams.set('account', accountId)
      const response = await fetch(url, {
        redirect: 'manual',
        headers: jar.size === 0 ? {} : { cookie: [...jar].map(([name, value]) => `${name}=${value}`).join('; ') }
      })
      for (const header of response.headers.getSetCookie()) {
        const [pair = ''] = header.split(';')
        const at = pair.indexOf('=')
        const name = pair.slice(0, at).trim()
        const value = pair.slice(at + 1).trim()
        // oidc-provider clears cookies by setting them empty and expired.
        if (value === '') jar.delete(name)
        else jar.set(name, value)
      }
      const location = response.headers.get('location')
      if (response.status < 300 || response.status >= 400 || location === null) {
        throw new Error(`oidc-provider answered ${response.status} to ${url.pathname}: ${(await response.text()).slice(0, 500)}`)
      }
      await response.body?.cancel()
      url = new URL(location, url)
    }
    throw new Error('too many redirects in the oidc-provider authorization')
  }

  return {
    issuer,
    provider,
    authorize,
    login: accountId => async authorizationUrl => await authorize(authorizationUrl, accountId)
  }
}

export type Misbehaviour = 'wrong-nonce' | 'wrong-iss' | 'wrong-aud' | 'expired' | 'bad-signature' | 'none'

export interface FakeProviderOptions {
  clientId: string
  clientSecret: string
  // email_verified may be a string: some IdPs send "true"/"false".
  account: { sub: string, email?: string, email_verified?: boolean | string, name?: string }
  misbehave?: Misbehaviour
  /** Decides client authentication instead of comparing with clientSecret (Apple's secret is a JWT). */
  acceptClientSecret?: (secret: string | undefined) => boolean
}

export interface FakeProviderStandIn {
  issuer: string
  /**
   * Fetches the authorization URL and returns where it redirects (code and state, no login);
   * for response_mode=form_post, where its page posts, with the posted fields as the query.
   */
  authorize: (authorizationUrl: string) => Promise<string>
  /** How many requests reached /token (successful or not). */
  readonly tokenRequests: number
  /** The client secret of the last token request. */
  readonly lastClientSecret: string | undefined
}

interface PendingCode { clientId: string, redirectUri: string, nonce?: string, codeChallenge: string }

function oauthError (error: string, description: string): { error: string, error_description: string } {
  return { error, error_description: description }
}

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }
const escapeHtml = (value: string): string => value.replace(/[&<>"']/g, character => HTML_ESCAPES[character]!)
const unescapeHtml = (value: string): string => value.replace(/&(amp|lt|gt|quot|#39);/g, entity => Object.entries(HTML_ESCAPES).find(([, escaped]) => escaped === entity)![0])

// RFC 6749 2.3.1: client_secret_basic credentials are form-encoded before base64.
function formDecode (value: string): string {
  return decodeURIComponent(value.replace(/\+/g, ' '))
}

/**
 * A hand-written IdP (Fastify + jose) that skips login and consent and, on request, issues
 * a broken id_token. With response_mode=form_post it answers as Apple does: a page that posts
 * code and state to the redirect_uri from its own origin. Everything else (discovery, JWKS, PKCE, one-time codes, client
 * authentication) is done properly, so that only the chosen fault makes a client fail.
 */
export async function startFakeProvider (t: TestContext, options: FakeProviderOptions): Promise<FakeProviderStandIn> {
  const port = await freePort()
  const issuer = `http://127.0.0.1:${port}`
  const misbehave = options.misbehave ?? 'none'
  const { privateKey, publicJwk } = await signingKey()
  // Same kid as the published key, so that the client really checks the signature.
  const strangerKey = misbehave === 'bad-signature'
    ? (await generateKeyPair('RS256')).privateKey
    : undefined
  const codes = new Map<string, PendingCode>()
  let tokenRequests = 0
  let lastClientSecret: string | undefined

  const app = Fastify({ logger: false })
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)))
  })

  app.get('/.well-known/openid-configuration', async () => ({
    issuer,
    authorization_endpoint: `${issuer}/authorize`,
    token_endpoint: `${issuer}/token`,
    jwks_uri: `${issuer}/jwks`,
    response_types_supported: ['code'],
    grant_types_supported: ['authorization_code'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
    code_challenge_methods_supported: ['S256'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    scopes_supported: ['openid', 'email', 'profile'],
    claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'nonce', 'email', 'email_verified', 'name']
  }))

  app.get('/jwks', async () => ({ keys: [publicJwk] }))

  app.get('/authorize', async (request, reply) => {
    const query = request.query as Record<string, string | undefined>
    if (query.client_id !== options.clientId) return await reply.code(400).send(oauthError('invalid_client', 'unknown client_id'))
    if (query.redirect_uri === undefined) return await reply.code(400).send(oauthError('invalid_request', 'redirect_uri missing'))
    if (query.response_type !== 'code') return await reply.code(400).send(oauthError('unsupported_response_type', 'only code'))
    if (query.code_challenge === undefined || query.code_challenge_method !== 'S256') {
      return await reply.code(400).send(oauthError('invalid_request', 'PKCE with S256 is required'))
    }
    const code = randomBytes(24).toString('base64url')
    codes.set(code, {
      clientId: query.client_id,
      redirectUri: query.redirect_uri,
      codeChallenge: query.code_challenge,
      ...(query.nonce === undefined ? {} : { nonce: query.nonce })
    })
    const answer: Record<string, string> = { code }
    if (query.state !== undefined) answer.state = query.state
    if (query.response_mode === 'form_post') {
      // As Apple does: a page that posts the answer to the redirect_uri at once, from this origin.
      const fields = Object.entries(answer).map(([name, value]) => `<input type="hidden" name="${escapeHtml(name)}" value="${escapeHtml(value)}">`).join('')
      return await reply.type('text/html; charset=utf-8').send('<!doctype html><html><body onload="document.forms[0].submit()">' +
        `<form method="post" action="${escapeHtml(query.redirect_uri)}">${fields}</form></body></html>`)
    }
    const target = new URL(query.redirect_uri)
    for (const [name, value] of Object.entries(answer)) target.searchParams.set(name, value)
    return await reply.redirect(target.toString(), 302)
  })

  app.post('/token', async (request, reply) => {
    tokenRequests++
    const body = (request.body ?? {}) as Record<string, string | undefined>
    let clientId = body.client_id
    let clientSecret = body.client_secret
    const authorization = request.headers.authorization
    if (authorization?.startsWith('Basic ') === true) {
      const decoded = Buffer.from(authorization.slice(6), 'base64').toString()
      const at = decoded.indexOf(':')
      clientId = formDecode(decoded.slice(0, at))
      clientSecret = formDecode(decoded.slice(at + 1))
    }
    lastClientSecret = clientSecret
    const secretAccepted = options.acceptClientSecret === undefined ? clientSecret === options.clientSecret : options.acceptClientSecret(clientSecret)
    if (clientId !== options.clientId || !secretAccepted) {
      return await reply.code(401).send(oauthError('invalid_client', 'client authentication failed'))
    }
    if (body.grant_type !== 'authorization_code') {
      return await reply.code(400).send(oauthError('unsupported_grant_type', 'only authorization_code'))
    }
    const pending = body.code === undefined ? undefined : codes.get(body.code)
    // One use only: a replayed code is gone.
    if (body.code !== undefined) codes.delete(body.code)
    if (pending === undefined) return await reply.code(400).send(oauthError('invalid_grant', 'unknown or used code'))
    if (pending.redirectUri !== body.redirect_uri) {
      return await reply.code(400).send(oauthError('invalid_grant', 'redirect_uri does not match'))
    }
    const challenge = createHash('sha256').update(body.code_verifier ?? '').digest('base64url')
    if (body.code_verifier === undefined || challenge !== pending.codeChallenge) {
      return await reply.code(400).send(oauthError('invalid_grant', 'code_verifier does not match'))
    }

    const now = Math.floor(Date.now() / 1000)
    const claims: Record<string, unknown> = { ...options.account }
    for (const key of Object.keys(claims)) if (claims[key] === undefined) delete claims[key]
    const nonce = misbehave === 'wrong-nonce' ? 'not-the-nonce' : pending.nonce
    if (nonce !== undefined) claims.nonce = nonce
    const idToken = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: publicJwk.kid!, typ: 'JWT' })
      .setIssuer(misbehave === 'wrong-iss' ? `${issuer}/someone-else` : issuer)
      .setAudience(misbehave === 'wrong-aud' ? 'someone-else' : options.clientId)
      .setIssuedAt(misbehave === 'expired' ? now - 3900 : now)
      .setExpirationTime(misbehave === 'expired' ? now - 3600 : now + 300)
      .sign(strangerKey ?? privateKey)
    return await reply.header('cache-control', 'no-store').send({
      access_token: randomBytes(24).toString('base64url'),
      token_type: 'Bearer',
      expires_in: 300,
      id_token: idToken
    })
  })

  await app.listen({ port, host: '127.0.0.1' })
  t.teardown(async () => { await app.close() })

  return {
    issuer,
    async authorize (authorizationUrl: string): Promise<string> {
      const response = await fetch(authorizationUrl, { redirect: 'manual' })
      if (response.status === 200 && new URL(authorizationUrl).searchParams.get('response_mode') === 'form_post') {
        // The fields the page would post, as the query of the URL it posts to.
        const page = await response.text()
        const target = new URL(unescapeHtml(/<form method="post" action="([^"]*)">/.exec(page)![1]!))
        for (const [, name, value] of page.matchAll(/<input type="hidden" name="([^"]*)" value="([^"]*)">/g)) target.searchParams.set(unescapeHtml(name!), unescapeHtml(value!))
        return target.toString()
      }
      const location = response.headers.get('location')
      if (response.status !== 302 || location === null) {
        throw new Error(`fake provider answered ${response.status}: ${(await response.text()).slice(0, 500)}`)
      }
      await response.body?.cancel()
      return location
    },
    get tokenRequests () { return tokenRequests },
    get lastClientSecret () { return lastClientSecret }
  }
}

/**
 * What a SPA does by itself with the provider for the code exchange (`POST /api/auth/callback`):
 * its own PKCE verifier and nonce, the authorization as `account`, and the code sent back to it.
 */
export async function spaAuthorization (provider: OidcProviderStandIn, clientId: string, clientSecret: string, redirectUri: string, account: string): Promise<{ code: string, codeVerifier: string, nonce: string, redirectUri: string }> {
  const configuration = await oidc.discovery(new URL(provider.issuer), clientId, clientSecret, undefined, { execute: [oidc.allowInsecureRequests] })
  const codeVerifier = oidc.randomPKCECodeVerifier()
  const nonce = oidc.randomNonce()
  const url = oidc.buildAuthorizationUrl(configuration, {
    redirect_uri: redirectUri,
    scope: 'openid email profile',
    nonce,
    code_challenge: await oidc.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256'
  })
  const code = new URL(await provider.authorize(url.href, account)).searchParams.get('code')!
  return { code, codeVerifier, nonce, redirectUri }
}
