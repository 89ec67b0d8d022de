import { createHash, randomBytes } from 'node:crypto'
import { parse as parseQuery } from 'node:querystring'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { createSigner } from 'fast-jwt'
import type { FastifyReply, FastifyRequest } from 'fastify'
import * as oidc from 'openid-client'
import { Type } from 'typebox'
import { isProduction, keepsSecureCookies as keepsSecureCookiesOf, publicUrl } from '../../src/config.js'
import { violates } from '../../src/db/index.js'
import { errors } from '../../src/errors.js'
import { MESSAGES } from '../../src/tenancy/policy.js'
import { providerRegistry, type Provider } from '../../src/auth/providers.js'
import { redirectPolicy } from '../../src/auth/redirects.js'
import { mailboxProven, proveMailbox, type ProvenMailbox } from '../../src/auth/mailbox.js'
import { signInThrottle } from '../../src/auth/throttle.js'
import { audit, normalizeEmail, publicUser, PublicUser, USER_COLUMNS, type UserRecord } from '../../src/auth/users.js'
import { errorResponses } from '../../src/schemas/common.js'
import { REFRESH_COOKIE } from '../../plugins/auth.js'

const STATE_TTL = 10 * 60_000
const BINDING_COOKIE = 'oauth_binding'
const STATE_INVALID = 'Missing or expired OAuth state'

/** A started flow, stored under its state and the hash of its binding cookie (`flowKey`). */
interface PendingFlow {
  provider: string
  nonce: string
  verifier: string
  redirectTo: string
  redirectUri: string
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
/**
 * One binding cookie per flow, named after its state: two tabs that start two flows each
 * keep their own (a cookie name may hold letters, digits, - and _, as base64url does). Where
 * browsers keep Secure cookies it carries the `__Host-` prefix: such a cookie can only have
 * been set by this host itself, never planted by a sibling subdomain (cookie tossing).
 */
const bindingCookieName = (state: string, hostOnly: boolean): string => `${hostOnly ? '__Host-' : ''}${BINDING_COOKIE}_${sha256(state).slice(0, 22)}`
/** A flow is found only with its state and the binding cookie of the browser that started it. */
const flowKey = (state: string, binding: string): string => `oauth:${sha256(state)}:${sha256(binding)}`
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

  // A browser keeps a Secure cookie from https, and from http only on a loopback host.
  const keepsSecureCookies = keepsSecureCookiesOf(config)
  const formPost = (provider: Provider): boolean => provider.apple !== undefined
  if (!keepsSecureCookies) {
    for (const provider of registry.configured.values()) {
      if (formPost(provider)) fastify.log.warn({ provider: provider.key }, `${provider.displayName} sign-in needs PUBLIC_URL on https (or http://localhost): its answer is a cross-site form post, which only a Secure cookie can tie to the browser`)
    }
  }
  /**
   * The binding cookie's attributes. Where browsers keep Secure cookies (https, or http on a
   * loopback host) it is a `__Host-` cookie: Secure, Path=/, no Domain, so that no sibling
   * subdomain can plant one. Elsewhere (plain http in development) it is sent only to the
   * flow's callback. A provider that answers with a form post (Apple) posts from its own site,
   * which a SameSite=Lax cookie does not follow: its flows get SameSite=None (always Secure).
   */
  const bindingCookie = (provider: Provider, redirectUri: string) => ({
    httpOnly: true,
    ...(keepsSecureCookies ? { path: '/', secure: true } : { path: new URL(redirectUri).pathname, secure: production }),
    sameSite: formPost(provider) ? 'none' as const : 'lax' as const
  })

  /** Starts a flow: state, nonce and PKCE verifier stored for one use; 302 to the provider. */
  const start = async (reply: FastifyReply, key: string, redirectUri: string, redirectTo: string | undefined): Promise<FastifyReply> => {
    const provider = providerOf(key)
    if (formPost(provider) && !keepsSecureCookies) {
      // Refused rather than weakened: without its Secure cookie no answer could ever be bound to this browser.
      throw errors.unavailable(`${provider.displayName} sign-in needs PUBLIC_URL on https (or http://localhost)`, 'INSECURE_PUBLIC_URL')
    }
    const configuration = await configurationOf(provider)
    const state = oidc.randomState()
    const nonce = oidc.randomNonce()
    const verifier = oidc.randomPKCECodeVerifier()
    const binding = randomBytes(32).toString('base64url')
    const pending: PendingFlow = { provider: key, nonce, verifier, redirectTo: safeRedirect(redirectTo), redirectUri, expiresAt: fastify.now() + STATE_TTL }
    await store.set(flowKey(state, binding), JSON.stringify(pending), STATE_TTL)
    const parameters: Record<string, string> = {
      redirect_uri: redirectUri,
      scope: provider.scopes,
      state,
      nonce,
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256'
    }
    if (formPost(provider)) parameters.response_mode = 'form_post'
    reply.setCookie(bindingCookieName(state, keepsSecureCookies), binding, { ...bindingCookie(provider, redirectUri), maxAge: STATE_TTL / 1000 })
    return await reply.redirect(oidc.buildAuthorizationUrl(configuration, parameters).href, 302)
  }

  const signIn = async (request: FastifyRequest, key: string, claims: IdClaims, nameHint: string | null) => {
    const origin = fastify.originOf(request)
    const email = typeof claims.email === 'string' ? normalizeEmail(claims.email) : null
    const verified = claims.email_verified === true || claims.email_verified === 'true'
    const proof = { method: 'oauth' as const, identity: { provider: key, subject: claims.sub }, origin }
    const attempt = async () => await db.transaction().execute(async trx => {
      const now = new Date(fastify.now())
      const linked = async () => await trx.selectFrom('user_identities').select(['id', 'user_id'])
        .where('provider', '=', key).where('subject', '=', claims.sub).executeTakeFirst()
      let identity = await linked()
      if (identity !== undefined) {
        // The account first (the order proveMailbox locks in), then the identity read again:
        // one unlinked by a mailbox proof that committed meanwhile signs in no more.
        await trx.selectFrom('users').select('id').where('id', '=', identity.user_id).forUpdate().execute()
        identity = await linked()
      }
      let user: UserRecord | undefined
      let created = false
      let proven: ProvenMailbox | undefined
      if (identity !== undefined) {
        user = await trx.selectFrom('users').select(USER_COLUMNS).where('id', '=', identity.user_id).executeTakeFirstOrThrow()
        if (!user.is_active) throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
        // The provider now vouches for the account's address: a first proof voids what came before it.
        if (verified && email === user.email) proven = await proveMailbox(trx, sessions, now, user.id, proof)
      } else {
        if (email === null) throw errors.badRequest('The identity provider did not share an e-mail address', 'OAUTH_NO_EMAIL')
        user = await trx.selectFrom('users').select(USER_COLUMNS).where('email', '=', email).forUpdate().executeTakeFirst()
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
        } else {
          if (!user.is_active) throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
          // Linking by a verified address proves the mailbox: what came before a first proof is voided.
          proven = await proveMailbox(trx, sessions, now, user.id, proof)
        }
        await trx.insertInto('user_identities').values({ user_id: user.id, provider: key, subject: claims.sub, email }).execute()
      }
      user = await trx.updateTable('users').set({ last_login_at: now }).where('id', '=', user.id).returning(USER_COLUMNS).executeTakeFirstOrThrow()
      await trx.updateTable('user_identities').set({ last_used_at: now }).where('provider', '=', key).where('subject', '=', claims.sub).execute()
      // Invitations to the address are accepted only when the provider vouches for it.
      const session = await sessions.start(trx, { user, method: 'oauth', rememberMe: false, origin, emailProven: verified && email === user.email })
      await audit(trx, { action: 'auth.login', actorUserId: user.id, subjectType: 'session', subjectId: session.sessionId, ip: origin.ip, userAgent: origin.userAgent, details: { method: 'oauth', provider: key, created } })
      return { user, session, proven }
    })
    // Two first sign-ins of one identity (or one address) at once: one inserts, the other's insert
    // violates the key and rolls back; tried again, it finds what the first made.
    const result = await attempt().catch(async (error: unknown) => {
      if (!violates(error, 'users_email_key') && !violates(error, 'user_identities_provider_subject_key')) throw error
      return await attempt()
    })
    if (result.proven?.firstProof === true) await mailboxProven(fastify, result.proven)
    else fastify.users.forget(result.user.id)
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

  /**
   * A provider's answer, by GET or POST alike: the flow is found only with its state and the
   * binding cookie of the browser that started it, and taken for one use; then the code
   * exchange and the id_token checks. An answer carried to another browser (login CSRF) finds
   * nothing and consumes nothing: the flow still completes in its own browser.
   */
  const callback = async (request: FastifyRequest, reply: FastifyReply, key: string, parameters: Record<string, string | undefined>): Promise<FastifyReply> => {
    const provider = providerOf(key)
    const { state } = parameters
    if (state === undefined || state === '') throw errors.badRequest(STATE_INVALID, 'OAUTH_STATE_INVALID')
    const header = request.headers.cookie
    const name = bindingCookieName(state, keepsSecureCookies)
    const binding = header === undefined ? undefined : fastify.parseCookie(header)[name]
    if (binding === undefined || binding === '') throw errors.badRequest(STATE_INVALID, 'OAUTH_STATE_INVALID')
    const stored = await store.take(flowKey(state, binding))
    const pending = stored === null ? undefined : JSON.parse(stored) as PendingFlow
    if (pending === undefined || pending.provider !== key || pending.expiresAt <= fastify.now()) throw errors.badRequest(STATE_INVALID, 'OAUTH_STATE_INVALID')
    reply.clearCookie(name, bindingCookie(provider, pending.redirectUri))
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
  /*
   * Seed 000's sign-out. A browser's refresh cookie never reaches this path (Path=/api/auth),
   * so the request carries a credential of its own: the access token (the Authorization
   * header, or the `access_token` field of a form post, RFC 6750 section 2.2) or the refresh
   * token (body; or the cookie, sent by hand, from an allowed origin and not as a form).
   * Without one it is 401, never the redirect: a sign-out that ended nothing must not look
   * like one that did. A browser sends none of these by itself, so a cross-site form cannot
   * sign anyone out.
   */
  const sessionToSignOut = async (request: FastifyRequest, body: { access_token?: string, refreshToken?: string }): Promise<{ status: 'live' | 'over', sessionId: string }> => {
    if (request.auth?.kind === 'session') return { status: 'live', sessionId: request.auth.sessionId }
    // An expired or revoked access token still names its session (see sessionOfAccessToken).
    const accessToken = request.headers.authorization === undefined
      ? body.access_token
      : /^Bearer +(\S+\.\S+\.\S+) *$/i.exec(request.headers.authorization)?.[1] ?? ''
    if (accessToken !== undefined) {
      const named = accessToken === '' ? { status: 'invalid' as const } : await sessions.sessionOfAccessToken(accessToken)
      if (named.status === 'invalid') throw errors.unauthorized('Invalid or expired token', 'TOKEN_INVALID')
      return named
    }
    let refreshToken = body.refreshToken
    const cookie = request.headers.cookie === undefined ? undefined : fastify.parseCookie(request.headers.cookie)[REFRESH_COOKIE]
    if (refreshToken === undefined && cookie !== undefined && cookie !== '') {
      fastify.checkCookieRequest(request)
      refreshToken = cookie
    }
    if (refreshToken === undefined) throw errors.unauthorized('Access token required', 'TOKEN_REQUIRED')
    // A stale refresh token comes back `over`: the service has revoked its session as reuse.
    const named = await sessions.sessionOfRefreshToken(refreshToken, fastify.originOf(request))
    if (named.status === 'invalid') throw errors.unauthorized('Invalid refresh token', 'INVALID_REFRESH_TOKEN')
    return named
  }

  fastify.post('/auth/signout', {
    // Like logout: a sign-out that names a live session is not charged to the anonymous per-IP budget.
    config: { anonymousLimit: 'in-handler' },
    preValidation: async (request) => { if (request.body === undefined) request.body = {} },
    schema: {
      tags: ['oauth'],
      summary: 'Sign out and go back to the frontend (seed 000)',
      description: 'Needs a credential: `Authorization: Bearer <access token>` (expired or not), the `access_token` field of a form post, or `refreshToken` in the body (or the refresh_token cookie, JSON or no body, from an allowed origin). The session ends (a refresh token already rotated past REFRESH_GRACE revokes it as reuse), the cookies are cleared, 302 to the frontend. Without a credential 401, and nothing is cleared.',
      body: Type.Object({
        access_token: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'The access token as a form field (RFC 6750 section 2.2), for a page that signs out by posting a form' })),
        refreshToken: Type.Optional(Type.String({ minLength: 1, maxLength: 512 }))
      }),
      response: { 302: Type.Null({ description: 'The session is over: to the frontend' }), ...errorResponses(400, 401, 403, 415, 429) }
    }
  }, async (request, reply) => {
    if (request.auth?.kind === 'integration') throw errors.forbidden(MESSAGES.browserOnly, 'BROWSER_SESSION_REQUIRED')
    const named = await sessionToSignOut(request, request.body).catch(async (error: unknown) => {
      await fastify.limitAnonymous(request, reply)
      throw error
    })
    if (named.status === 'live') await sessions.revoke(named.sessionId, 'logout', { userId: request.auth?.userId ?? null, origin: fastify.originOf(request) })
    else await fastify.limitAnonymous(request, reply)
    fastify.clearSessionCookies(reply)
    return await reply.redirect(safeRedirect(undefined), 302)
  })

  /*
   * Seed 002: the SPA ran the code flow itself and posts the code; the server exchanges it.
   * The SPA made the PKCE verifier and the nonce, and the server requires both: the provider
   * checks the verifier against the challenge it was given, openid-client the nonce in the
   * id_token, so only the SPA that started the flow can finish it. The state never reaches the
   * server (the provider sends it to the SPA's redirect URI, where the SPA compares it with
   * the one it keeps), so there is nothing here to check it against.
   */
  fastify.post('/api/auth/callback', {
    config: { envelope: 'seed002', payload: 'callback' },
    // From a browser only JSON from an allowed origin, which no cross-site form can send: a
    // page elsewhere could otherwise sign its visitor in with the attacker's own code,
    // verifier and nonce (login CSRF).
    preValidation: async (request) => {
      if (request.headers.origin !== undefined) fastify.checkCookieRequest(request)
      else if (!/^application\/json\s*(;|$)/i.test(request.headers['content-type'] ?? '')) throw errors.unsupportedMediaType()
    },
    schema: {
      tags: ['oauth'],
      summary: 'Exchange an authorization code the SPA received from the OpenID Connect provider (seed 002)',
      description: 'Requires the PKCE verifier and the nonce of the SPA\'s authorization request. The refresh token is in `data` only for clients that send no Origin header; browsers get it only as the HttpOnly cookie.',
      body: Type.Object({
        code: Type.Optional(Type.String({ maxLength: 4096 })),
        codeVerifier: Type.String({ minLength: 43, maxLength: 128, pattern: '^[A-Za-z0-9._~-]+$', description: 'The PKCE code verifier (RFC 7636) whose S256 challenge the SPA sent to the provider' }),
        nonce: Type.String({ minLength: 16, maxLength: 512, description: 'The nonce the SPA sent to the provider; the id_token must carry it' }),
        redirectUri: Type.Optional(Type.String({ maxLength: 2048 })),
        iss: Type.Optional(Type.String({ maxLength: 2048, description: 'The iss parameter of the authorization response, when the provider sends one' }))
      }),
      response: {
        200: Type.Object({
          success: Type.Literal(true),
          message: Type.String(),
          data: Type.Object({
            accessToken: Type.String(),
            refreshToken: Type.Optional(Type.String({ description: 'Only for clients that sent no Origin header (scripts, mobile apps); browsers get the HttpOnly cookie' })),
            user: PublicUser
          })
        }),
        ...errorResponses(400, 403, 409, 415, 429, 503)
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
    const currentUrl = new URL(target, base)
    currentUrl.searchParams.set('code', code)
    // RFC 9207's `iss` guards against mix-ups between providers; this endpoint talks to one
    // provider only, so when the SPA does not pass it on, it is that provider's.
    if (configuration.serverMetadata().authorization_response_iss_parameter_supported === true) {
      currentUrl.searchParams.set('iss', iss ?? configuration.serverMetadata().issuer)
    }
    // No state in currentUrl, so none is expected (openid-client's default, expectNoState).
    const claims = await exchange(request, reply, key, configuration, currentUrl, {
      pkceCodeVerifier: codeVerifier,
      expectedNonce: nonce,
      idTokenExpected: true
    })
    const { user, session } = await signIn(request, key, claims, null)
    const { accessToken, refreshToken } = fastify.sessionTokens(request, reply, session)
    return { success: true as const, message: 'Authentication successful', data: { accessToken, ...(refreshToken === undefined ? {} : { refreshToken }), user: publicUser(user) } }
  })
}

export default oauthRoutes
