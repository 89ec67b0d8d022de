import { createHash, randomBytes } from 'node:crypto'
import { parse as parseQuery } from 'node:querystring'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { createSigner } from 'fast-jwt'
import type { FastifyReply, FastifyRequest } from 'fastify'
import * as oidc from 'openid-client'
import { Type } from 'typebox'
import { isProduction, publicUrl } from '../../src/config.js'
import { errors } from '../../src/errors.js'
import { MESSAGES } from '../../src/tenancy/policy.js'
import { providerRegistry, type Provider } from '../../src/auth/providers.js'
import { redirectPolicy } from '../../src/auth/redirects.js'
import { signInThrottle } from '../../src/auth/throttle.js'
import { audit, normalizeEmail, publicUser, PublicUser, USER_COLUMNS, type UserRecord } from '../../src/auth/users.js'
import { errorResponses } from '../../src/schemas/common.js'
import { REFRESH_COOKIE } from '../../plugins/auth.js'

const STATE_TTL = 10 * 60_000
const BINDING_COOKIE = 'oauth_binding'
const STATE_INVALID = 'Missing or expired OAuth state'

interface PendingFlow {
  provider: string
  nonce: string
  verifier: string
  redirectTo: string
  redirectUri: string
  /** SHA-256 of the browser-binding cookie set at the start. */
  binding: string
  expiresAt: number
}

interface IdClaims {
  sub: string
  email?: unknown
  email_verified?: unknown
  name?: unknown
  given_name?: unknown
  family_name?: unknown
  picture?: unknown
  preferred_username?: unknown
}

const sha256 = (text: string): string => createHash('sha256').update(text).digest('base64url')
const text = (value: unknown, max = 200): string | null => typeof value === 'string' && value.trim() !== '' ? value.trim().slice(0, max) : null

const CallbackParams = Type.Object({
  code: Type.Optional(Type.String({ maxLength: 4096 })),
  state: Type.Optional(Type.String({ maxLength: 512 })),
  error: Type.Optional(Type.String({ maxLength: 200 })),
  error_description: Type.Optional(Type.String({ maxLength: 2000 })),
  iss: Type.Optional(Type.String({ maxLength: 2048 })),
  user: Type.Optional(Type.String({ maxLength: 4096, description: 'Apple: the user\'s name on the first sign-in (its e-mail is never taken from here)' }))
})

/**
 * Sign-in with Google, Microsoft Entra ID, Apple and any OpenID Connect provider (seeds
 * 000–003) through openid-client: authorization code flow with state, PKCE (S256) and nonce,
 * kept server-side for one use and bound to the browser that started it; the id_token's
 * signature, iss, aud, nonce and exp are checked by openid-client. Identities are keyed by
 * (provider, subject); an existing account is linked by e-mail only when the provider says
 * the address is verified.
 */
const oauthRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, db, store, sessions } = fastify
  const production = isProduction(config)
  const base = publicUrl(config)
  const registry = providerRegistry(config)
  const safeRedirect = redirectPolicy(config)

  // Apple (form_post) and the seed 000 routes post forms.
  fastify.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 16_384 }, (_request, body, done) => {
    done(null, parseQuery(body as string))
  })

  const discovered = new Map<string, { at: number, configuration: Promise<oidc.Configuration> }>()
  const appleSecret = (provider: Provider): string => createSigner({
    key: provider.apple!.privateKey,
    algorithm: 'ES256',
    kid: provider.apple!.keyId,
    iss: provider.apple!.teamId,
    sub: provider.clientId,
    aud: 'https://appleid.apple.com',
    expiresIn: 86_400_000
  })({})

  const unavailable = (provider: Provider) => errors.unavailable(`${provider.displayName} sign-in is unavailable right now`, 'PROVIDER_UNAVAILABLE')
  /** The provider's discovered configuration, fetched once (again after a failure, and daily for Apple's secret). */
  const configurationOf = async (provider: Provider): Promise<oidc.Configuration> => {
    const cached = discovered.get(provider.key)
    if (cached !== undefined && (provider.apple === undefined || Date.now() - cached.at < 12 * 3_600_000)) return await cached.configuration
    const issuer = new URL(provider.issuer)
    const insecure = issuer.protocol === 'http:'
    if (insecure && production) {
      fastify.log.warn({ provider: provider.key }, 'the provider\'s issuer must use https in production')
      throw unavailable(provider)
    }
    const secret = provider.apple === undefined ? provider.clientSecret : appleSecret(provider)
    // enableNonRepudiationChecks: the id_token's signature is verified against the provider's
    // JWKS even though it came straight from the token endpoint (openid-client skips it by default).
    const execute = insecure ? [oidc.allowInsecureRequests, oidc.enableNonRepudiationChecks] : [oidc.enableNonRepudiationChecks]
    const configuration = oidc.discovery(issuer, provider.clientId, secret, secret === undefined ? oidc.None() : oidc.ClientSecretPost(secret), { execute, timeout: 10 })
    discovered.set(provider.key, { at: Date.now(), configuration })
    configuration.catch(() => { discovered.delete(provider.key) })
    try {
      return await configuration
    } catch (error) {
      fastify.log.warn({ err: error, provider: provider.key }, 'OpenID Connect discovery failed')
      throw unavailable(provider)
    }
  }

  const providerOf = (key: string): Provider => {
    const provider = registry.configured.get(key)
    if (provider !== undefined) return provider
    if (registry.known.has(key)) throw errors.badRequest(`The ${key} provider is not configured`, 'PROVIDER_NOT_CONFIGURED')
    throw errors.notFound('provider')
  }

  const bindingCookie = { httpOnly: true, secure: production, sameSite: 'lax' as const, path: '/' }

  /** Starts a flow: state, nonce and PKCE verifier stored for one use; 302 to the provider. */
  const start = async (reply: FastifyReply, key: string, redirectUri: string, redirectTo: string | undefined): Promise<FastifyReply> => {
    const provider = providerOf(key)
    const configuration = await configurationOf(provider)
    const state = oidc.randomState()
    const nonce = oidc.randomNonce()
    const verifier = oidc.randomPKCECodeVerifier()
    const binding = randomBytes(32).toString('base64url')
    const pending: PendingFlow = { provider: key, nonce, verifier, redirectTo: safeRedirect(redirectTo), redirectUri, binding: sha256(binding), expiresAt: fastify.now() + STATE_TTL }
    await store.set(`oauth:${sha256(state)}`, JSON.stringify(pending), STATE_TTL)
    const parameters: Record<string, string> = {
      redirect_uri: redirectUri,
      scope: provider.scopes,
      state,
      nonce,
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256'
    }
    if (provider.apple !== undefined) parameters.response_mode = 'form_post'
    reply.setCookie(BINDING_COOKIE, binding, { ...bindingCookie, maxAge: STATE_TTL / 1000 })
    return await reply.redirect(oidc.buildAuthorizationUrl(configuration, parameters).href, 302)
  }

  const signIn = async (request: FastifyRequest, key: string, claims: IdClaims, nameHint: string | null) => {
    const origin = fastify.originOf(request)
    const email = typeof claims.email === 'string' ? normalizeEmail(claims.email) : null
    const verified = claims.email_verified === true || claims.email_verified === 'true'
    const result = await db.transaction().execute(async trx => {
      const now = new Date(fastify.now())
      const identity = await trx.selectFrom('user_identities').select(['id', 'user_id'])
        .where('provider', '=', key).where('subject', '=', claims.sub).executeTakeFirst()
      let user: UserRecord | undefined
      let created = false
      if (identity !== undefined) {
        user = await trx.selectFrom('users').select(USER_COLUMNS).where('id', '=', identity.user_id).executeTakeFirstOrThrow()
      } else {
        if (email === null) throw errors.badRequest('The identity provider did not share an e-mail address', 'OAUTH_NO_EMAIL')
        user = await trx.selectFrom('users').select(USER_COLUMNS).where('email', '=', email).executeTakeFirst()
        if (user !== undefined && !verified) {
          // Never a silent takeover: only a verified address may join an existing account.
          throw errors.conflict('An account with this e-mail address already exists, and the identity provider has not verified the address. Sign in to that account another way.', 'ACCOUNT_EXISTS')
        }
        if (user === undefined) {
          user = await trx.insertInto('users').values({
            email,
            name: text(claims.name) ?? nameHint ?? email.split('@')[0]!,
            email_verified: verified,
            avatar_url: text(claims.picture, 2048),
            given_name: text(claims.given_name),
            family_name: text(claims.family_name),
            preferred_username: text(claims.preferred_username)
          }).returning(USER_COLUMNS).executeTakeFirstOrThrow()
          created = true
        }
        await trx.insertInto('user_identities').values({ user_id: user.id, provider: key, subject: claims.sub, email }).execute()
      }
      if (!user.is_active) throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
      user = await trx.updateTable('users').set({ last_login_at: now }).where('id', '=', user.id).returning(USER_COLUMNS).executeTakeFirstOrThrow()
      await trx.updateTable('user_identities').set({ last_used_at: now }).where('provider', '=', key).where('subject', '=', claims.sub).execute()
      // Invitations to the address are accepted only when the provider vouches for it.
      const session = await sessions.start(trx, { user, method: 'oauth', rememberMe: false, origin, emailProven: verified && email === user.email })
      await audit(trx, { action: 'auth.login', actorUserId: user.id, subjectType: 'session', subjectId: session.sessionId, ip: origin.ip, userAgent: origin.userAgent, details: { method: 'oauth', provider: key, created } })
      return { user, session }
    })
    fastify.users.forget(result.user.id)
    for (const workspaceId of result.session.joined ?? []) await fastify.memberships.changed(workspaceId, result.user.id)
    return result
  }

  const failed = async (request: FastifyRequest, reply: FastifyReply, key: string, reason: string): Promise<never> => {
    await audit(db, { action: 'auth.login_failed', subjectType: 'provider', subjectId: key, ip: request.ip, userAgent: request.headers['user-agent'], details: { method: 'oauth', reason } })
    await signInThrottle(store, config, request, reply)
    throw errors.badRequest('Sign-in with the identity provider failed', 'OAUTH_FAILED')
  }

  /** The code exchange; openid-client validates the id_token. Any failure is a 400 and an audit row. */
  const exchange = async (request: FastifyRequest, reply: FastifyReply, key: string, configuration: oidc.Configuration, currentUrl: URL, checks: oidc.AuthorizationCodeGrantChecks): Promise<IdClaims> => {
    try {
      const tokens = await oidc.authorizationCodeGrant(configuration, currentUrl, checks)
      return tokens.claims() as IdClaims
    } catch (error) {
      request.log.info({ err: error, provider: key }, 'OAuth code exchange failed')
      return await failed(request, reply, key, (error as { code?: string }).code ?? 'exchange')
    }
  }

  /** A provider's answer: one-use state, browser binding, then the code exchange and id_token checks. */
  const callback = async (request: FastifyRequest, reply: FastifyReply, key: string, parameters: Record<string, string | undefined>): Promise<FastifyReply> => {
    const provider = providerOf(key)
    const { state } = parameters
    if (state === undefined || state === '') throw errors.badRequest(STATE_INVALID, 'OAUTH_STATE_INVALID')
    const stored = await store.take(`oauth:${sha256(state)}`)
    const pending = stored === null ? undefined : JSON.parse(stored) as PendingFlow
    if (pending === undefined || pending.provider !== key || pending.expiresAt <= fastify.now()) throw errors.badRequest(STATE_INVALID, 'OAUTH_STATE_INVALID')
    // The browser that started the flow must be the one finishing it. A form_post (Apple) is
    // cross-site, and a SameSite=Lax cookie does not come with it: there state, PKCE and nonce
    // carry the proof.
    const header = request.headers.cookie
    const binding = header === undefined ? undefined : fastify.parseCookie(header)[BINDING_COOKIE]
    if (request.method === 'GET' && (binding === undefined || sha256(binding) !== pending.binding)) {
      throw errors.badRequest(STATE_INVALID, 'OAUTH_STATE_INVALID')
    }
    reply.clearCookie(BINDING_COOKIE, bindingCookie)
    if (parameters.error !== undefined) return await failed(request, reply, key, `provider:${parameters.error.slice(0, 50)}`)
    const configuration = await configurationOf(provider)
    const currentUrl = new URL(pending.redirectUri)
    for (const name of ['code', 'state', 'iss'] as const) {
      const value = parameters[name]
      if (value !== undefined) currentUrl.searchParams.set(name, value)
    }
    const claims = await exchange(request, reply, key, configuration, currentUrl, {
      pkceCodeVerifier: pending.verifier,
      expectedState: state,
      expectedNonce: pending.nonce,
      idTokenExpected: true
    })
    let nameHint: string | null = null
    if (provider.apple !== undefined && parameters.user !== undefined) {
      // Apple's `user` field is not signed: only the name is taken from it, never the e-mail.
      try {
        const posted = JSON.parse(parameters.user) as { name?: { firstName?: unknown, lastName?: unknown } }
        nameHint = [text(posted.name?.firstName), text(posted.name?.lastName)].filter(part => part !== null).join(' ') || null
      } catch {}
    }
    const { session } = await signIn(request, key, claims, nameHint)
    fastify.setSessionCookies(reply, session)
    return await reply.header('Referrer-Policy', 'no-referrer').redirect(pending.redirectTo, 302)
  }

  // --- routes --------------------------------------------------------------------------
  // Unchecked by the schema: a provider key that is not configured, malformed or not, is 404 (providerOf).
  const Key = Type.String({ description: 'google, microsoft, apple or a key of OIDC_PROVIDERS' })
  const redirectAnswer = { 302: Type.Null({ description: 'To the provider, or signed in: to the frontend' }) }

  fastify.get('/api/auth/providers', {
    schema: {
      tags: ['oauth'],
      summary: 'The configured identity providers (seed 003)',
      response: { 200: Type.Object({ providers: Type.Array(Type.Object({ providerKey: Type.String(), displayName: Type.String(), enabled: Type.Boolean() })) }) }
    }
  }, async () => ({
    providers: [...registry.configured.values()].map(provider => ({ providerKey: provider.key, displayName: provider.displayName, enabled: true }))
  }))

  fastify.get('/api/auth/oauth/:provider/start', {
    schema: {
      tags: ['oauth'],
      summary: 'Start a sign-in with a provider: 302 to it (seed 003)',
      params: Type.Object({ provider: Key }),
      querystring: Type.Object({ redirectTo: Type.Optional(Type.String({ maxLength: 2048 })) }),
      response: { ...redirectAnswer, ...errorResponses(400, 404, 503) }
    }
  }, async (request, reply) => await start(reply, request.params.provider, `${base}/api/auth/oauth/${request.params.provider}/callback`, request.query.redirectTo))

  for (const method of ['GET', 'POST'] as const) {
    fastify.route({
      method,
      url: '/api/auth/oauth/:provider/callback',
      schema: {
        tags: ['oauth'],
        summary: `The provider's answer (${method === 'POST' ? 'form_post, Apple' : 'query'}): session, cookies, 302 to the frontend`,
        params: Type.Object({ provider: Key }),
        ...(method === 'GET' ? { querystring: CallbackParams } : { body: CallbackParams }),
        response: { ...redirectAnswer, ...errorResponses(400, 403, 404, 409, 503) }
      },
      handler: async (request, reply) => {
        const parameters = (method === 'GET' ? request.query : request.body) as Record<string, string | undefined>
        return await callback(request, reply, (request.params as { provider: string }).provider, parameters)
      }
    })
  }

  // Seed 001's Google routes.
  fastify.get('/api/auth/google', {
    schema: {
      tags: ['oauth'],
      summary: 'Start a sign-in with Google (seed 001)',
      querystring: Type.Object({ redirectTo: Type.Optional(Type.String({ maxLength: 2048 })) }),
      response: { ...redirectAnswer, ...errorResponses(400, 503) }
    }
  }, async (request, reply) => await start(reply, 'google', `${base}/api/auth/google/callback`, request.query.redirectTo))
  fastify.get('/api/auth/google/callback', {
    schema: { tags: ['oauth'], summary: 'Google\'s answer (seed 001)', querystring: CallbackParams, response: { ...redirectAnswer, ...errorResponses(400, 403, 409, 503) } }
  }, async (request, reply) => await callback(request, reply, 'google', request.query))

  // Seed 000's Auth.js-style routes.
  fastify.post('/auth/signin/:provider', {
    preValidation: async (request) => { if (request.body === undefined) request.body = {} },
    schema: {
      tags: ['oauth'],
      summary: 'Start a sign-in with a provider (seed 000)',
      params: Type.Object({ provider: Key }),
      body: Type.Object({ redirectTo: Type.Optional(Type.String({ maxLength: 2048 })), callbackUrl: Type.Optional(Type.String({ maxLength: 2048 })) }),
      response: { ...redirectAnswer, ...errorResponses(400, 404, 503) }
    }
  }, async (request, reply) => await start(reply, request.params.provider, `${base}/auth/callback/${request.params.provider}`, request.body.redirectTo ?? request.body.callbackUrl))
  for (const method of ['GET', 'POST'] as const) {
    fastify.route({
      method,
      url: '/auth/callback/:provider',
      schema: {
        tags: ['oauth'],
        summary: 'A provider\'s answer (seed 000)',
        params: Type.Object({ provider: Key }),
        ...(method === 'GET' ? { querystring: CallbackParams } : { body: CallbackParams }),
        response: { ...redirectAnswer, ...errorResponses(400, 403, 404, 409, 503) }
      },
      handler: async (request, reply) => await callback(request, reply, (request.params as { provider: string }).provider,
        (method === 'GET' ? request.query : request.body) as Record<string, string | undefined>)
    })
  }
  fastify.post('/auth/signout', {
    schema: { tags: ['oauth'], summary: 'Sign out and go back to the frontend (seed 000)', response: { ...redirectAnswer, ...errorResponses(403) } }
  }, async (request, reply) => {
    if (request.auth?.kind === 'integration') throw errors.forbidden(MESSAGES.browserOnly, 'BROWSER_SESSION_REQUIRED')
    let sessionId = request.auth?.sessionId ?? undefined
    const header = request.headers.cookie
    const refreshToken = header === undefined ? undefined : fastify.parseCookie(header)[REFRESH_COOKIE]
    if (sessionId === undefined && refreshToken !== undefined && refreshToken !== '') {
      fastify.checkCookieRequest(request)
      sessionId = await sessions.sessionOfRefreshToken(refreshToken)
    }
    if (sessionId !== undefined) await sessions.revoke(sessionId, 'logout', { userId: request.auth?.userId ?? null, origin: fastify.originOf(request) })
    fastify.clearSessionCookies(reply)
    return await reply.redirect(safeRedirect(undefined), 302)
  })

  // Seed 002: the SPA got the code from the provider itself; the server exchanges it.
  fastify.post('/api/auth/callback', {
    config: { envelope: 'seed002', payload: 'callback' },
    schema: {
      tags: ['oauth'],
      summary: 'Exchange an authorization code the SPA received from the OpenID Connect provider (seed 002)',
      body: Type.Object({
        code: Type.Optional(Type.String({ maxLength: 4096 })),
        codeVerifier: Type.Optional(Type.String({ minLength: 43, maxLength: 128 })),
        redirectUri: Type.Optional(Type.String({ maxLength: 2048 })),
        nonce: Type.Optional(Type.String({ maxLength: 512 })),
        iss: Type.Optional(Type.String({ maxLength: 2048, description: 'The iss parameter of the authorization response, when the provider sends one' }))
      }),
      response: {
        200: Type.Object({
          success: Type.Literal(true),
          message: Type.String(),
          data: Type.Object({ accessToken: Type.String(), refreshToken: Type.String(), user: PublicUser })
        })
      }
    }
  }, async (request, reply) => {
    const { code, codeVerifier, redirectUri, nonce, iss } = request.body
    if (code === undefined || code === '') throw errors.badRequest('Authorization code is required', 'CODE_REQUIRED')
    const key = registry.defaultKey
    if (key === undefined) throw errors.badRequest('The OpenID Connect provider is not configured', 'PROVIDER_NOT_CONFIGURED')
    const provider = providerOf(key)
    const target = redirectUri ?? safeRedirect(undefined)
    if (safeRedirect(target) !== new URL(target, base).toString()) throw errors.badRequest('redirectUri is not allowed', 'REDIRECT_NOT_ALLOWED')
    const configuration = await configurationOf(provider)
    const currentUrl = new URL(target)
    currentUrl.searchParams.set('code', code)
    // RFC 9207's `iss` guards against mix-ups between providers; this endpoint talks to one
    // provider only, so when the SPA does not pass it on, it is that provider's.
    if (configuration.serverMetadata().authorization_response_iss_parameter_supported === true) {
      currentUrl.searchParams.set('iss', iss ?? configuration.serverMetadata().issuer)
    }
    const claims = await exchange(request, reply, key, configuration, currentUrl, {
      ...(codeVerifier === undefined ? {} : { pkceCodeVerifier: codeVerifier }),
      ...(nonce === undefined ? {} : { expectedNonce: nonce }),
      expectedState: oidc.skipStateCheck,
      idTokenExpected: true
    })
    const { user, session } = await signIn(request, key, claims, null)
    fastify.setSessionCookies(reply, session)
    return { success: true as const, message: 'Authentication successful', data: { accessToken: session.accessToken, refreshToken: session.refreshToken, user: publicUser(user) } }
  })
}

export default oauthRoutes
