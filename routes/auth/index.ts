import type { FastifyPluginAsyncTypebox, TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import { isProduction } from '../../src/config.js'
import { errors } from '../../src/errors.js'
import { MESSAGES } from '../../src/tenancy/policy.js'
import { hashPassword, passwordProblem, preparePasswords, verifyPassword } from '../../src/auth/passwords.js'
import { emailKey, refuseOver, refuseOverSignInBudget, signInIpKey, signInThrottle } from '../../src/auth/throttle.js'
import { audit, auditRow, normalizeEmail, publicUser, PublicUser, publicUserJson, USER_COLUMNS } from '../../src/auth/users.js'
import { Email, errorResponses, PathId, Timestamp, Uuid, UUID_PATTERN } from '../../src/schemas/common.js'
import { defaultWorkspaceQuery, workspaceForSignIn } from '../../src/tenancy/workspaces.js'
import { prepared } from '../../src/db/index.js'
import { REFRESH_COOKIE, type IssuedSession, type Origin } from '../../plugins/auth.js'

const Password = Type.String({ minLength: 1, maxLength: 1024, description: 'Any characters; at least PASSWORD_MIN_LENGTH, never truncated' })
const Name = Type.String({ maxLength: 200 })

const RegisterBody = Type.Object({
  email: Email,
  password: Password,
  name: Type.Optional(Name)
}, { additionalProperties: false })

const LoginBody = Type.Object({
  email: Email,
  password: Password,
  rememberMe: Type.Optional(Type.Boolean({ default: false, description: 'Keep the session for JWT_REFRESH_REMEMBER_TTL (30 days) with a persistent cookie' }))
}, { additionalProperties: false })

const RefreshBody = Type.Object({
  refreshToken: Type.Optional(Type.String({ minLength: 1, maxLength: 512 }))
}, { additionalProperties: false })

const TokenAnswer = Type.Object({
  accessToken: Type.String(),
  expiresIn: Type.Integer({ description: 'Seconds until the access token expires' }),
  refreshToken: Type.Optional(Type.String({ description: 'Only for clients that sent no Origin header (scripts, mobile apps); browsers get the HttpOnly cookie' })),
  user: PublicUser
})

const Message = Type.Object({ message: Type.String() })

const SessionInfo = Type.Object({
  id: Uuid,
  current: Type.Boolean(),
  method: Type.String(),
  rememberMe: Type.Boolean(),
  ip: Type.Union([Type.String(), Type.Null()]),
  userAgent: Type.Union([Type.String(), Type.Null()]),
  createdAt: Timestamp,
  lastUsedAt: Timestamp,
  expiresAt: Timestamp
})

const PASSWORD_DISABLED = {
  register: 'Password-based registration is disabled. Use a magic link or an identity provider.',
  login: 'Password-based sign-in is disabled. Use a magic link or an identity provider.'
}

/**
 * Password accounts, tokens and sessions (SPEC "Tokens and sessions"; seeds 001, 002, 004):
 * register, login, refresh, logout, logout-all, me, the sessions list, and the bootstrap of
 * the first admin.
 */
const authRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, db, store, sessions } = fastify
  const production = isProduction(config)
  const passwordsEnabled = config.PASSWORD_AUTH === 'enabled'
  if (passwordsEnabled) await preparePasswords()

  const signInLimit = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => { await signInThrottle(store, config, request, reply) }

  /** The checks and work before any new password account: throttle, password rules, hash. */
  const newAccount = async (request: FastifyRequest<{ Body: { email: string, password: string } }>, reply: FastifyReply) => {
    await signInLimit(request, reply)
    const problem = passwordProblem(request.body.password, config.PASSWORD_MIN_LENGTH)
    if (problem !== undefined) throw errors.badRequest(problem, 'WEAK_PASSWORD', { password: problem })
    return {
      email: normalizeEmail(request.body.email),
      passwordHash: await hashPassword(request.body.password),
      origin: fastify.originOf(request)
    }
  }

  /**
   * Why a sign-in whose password verified wrote nothing: the account changed while it was
   * checked. Deactivated — 403, as for a deactivated account's right password, and audited
   * alike — or its password removed by a mailbox proof: a wrong password's 401. (A new
   * statement, after the sign-in's own has waited for that change to commit, so it sees it.)
   */
  const refusedMeanwhile = async (userId: string, origin: Origin): Promise<never> => {
    const account = await db.selectFrom('users').select('is_active').where('id', '=', userId).executeTakeFirst()
    if (account?.is_active !== false) throw errors.unauthorized('Invalid email or password', 'INVALID_CREDENTIALS')
    await audit(db, { action: 'auth.login_refused', actorUserId: userId, subjectType: 'user', subjectId: userId, ip: origin.ip, userAgent: origin.userAgent, details: { reason: 'inactive' } })
    throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
  }

  /** Browsers (which send Origin) get the refresh token only as an HttpOnly cookie. */
  const tokenAnswer = (request: FastifyRequest, reply: FastifyReply, session: IssuedSession, user: PublicUser) =>
    ({ ...fastify.sessionTokens(request, reply, session), user })

  fastify.post('/api/auth/register', {
    config: { payload: 'registration' },
    schema: {
      tags: ['auth'],
      summary: 'Create a password account and sign in (seed 001)',
      body: RegisterBody,
      response: { 201: TokenAnswer, ...errorResponses(400, 409, 410, 429) }
    }
  }, async (request, reply) => {
    if (!passwordsEnabled) throw errors.gone(PASSWORD_DISABLED.register, 'PASSWORD_AUTH_DISABLED')
    const { email, passwordHash, origin } = await newAccount(request, reply)
    const { user, session } = await db.transaction().execute(async trx => {
      const user = await trx.insertInto('users').values({
        email,
        name: request.body.name?.trim() ?? email.split('@')[0]!,
        password_hash: passwordHash,
        last_login_at: new Date(fastify.now())
      }).onConflict(conflict => conflict.column('email').doNothing()).returning(USER_COLUMNS).executeTakeFirst()
      if (user === undefined) throw errors.conflict('Email already registered', 'EMAIL_TAKEN')
      const session = await sessions.start(trx, { user, method: 'password', rememberMe: false, origin })
      await audit(trx, { action: 'auth.register', actorUserId: user.id, subjectType: 'user', subjectId: user.id, ip: origin.ip, userAgent: origin.userAgent })
      return { user, session }
    })
    reply.code(201)
    return tokenAnswer(request, reply, session, publicUser(user))
  })

  fastify.post('/api/auth/login', {
    config: { payload: 'login' },
    schema: {
      tags: ['auth'],
      summary: 'Sign in with e-mail and password (seeds 001, 004)',
      description: 'Sets the refresh_token cookie (HttpOnly, Path /api/auth, SameSite Strict; persistent only with rememberMe) and the access_token cookie for the WebSocket route.',
      body: LoginBody,
      response: { 200: TokenAnswer, ...errorResponses(400, 401, 403, 410, 429) }
    }
  }, async (request, reply) => {
    if (!passwordsEnabled) throw errors.gone(PASSWORD_DISABLED.login, 'PASSWORD_AUTH_DISABLED')
    const email = normalizeEmail(request.body.email)
    const origin = fastify.originOf(request)
    // Failures per address, whether or not it has an account, so the limit reveals nothing.
    const failuresKey = `signin:fail:${emailKey(email)}`
    // The counters and the account are asked for at once: the account comes with its default
    // workspace, so that the session can be stored while its row is written below. The attempt
    // is counted on the address before the hash — a reservation, not a read — so that guesses
    // in parallel, on any instance, cannot outrun the limit: at most LOGIN_MAX_PER_ACCOUNT of
    // them are verified per window (SPEC decision 12). But only once the per-IP budget has
    // let the attempt in (one more store round trip, under the database's, before a hash of
    // some 15 ms): an IP past its budget reserves nothing, so it cannot lock accounts out, in
    // parallel or not. (One script cannot do both: the two keys live in different Redis
    // Cluster slots, and tagging them into one would put every sign-in on one node.)
    const [attempts, found] = await Promise.all([
      store.increment(signInIpKey(config, request), config.LOGIN_WINDOW).then(async perIp => {
        refuseOverSignInBudget(config, reply, perIp)
        return await store.increment(failuresKey, config.LOGIN_WINDOW)
      }),
      prepared(db, db.selectFrom('users').select([...USER_COLUMNS, 'password_hash'])
        .select(eb => defaultWorkspaceQuery(db, eb.ref('users.id')).as('workspace_id'))
        .where('email', '=', email)).then(rows => rows[0])
    ])
    refuseOver(reply, attempts, config.LOGIN_MAX_PER_ACCOUNT, 'Too many failed sign-in attempts for this account, please try again later.')
    // Unknown address and wrong password take the same time (a dummy hash) and answer alike.
    const valid = await verifyPassword(found?.password_hash, request.body.password)
    if (!valid || found === undefined) {
      // The reservation stays: it is this failure's count.
      await audit(db, {
        action: 'auth.login_failed',
        subjectType: 'user',
        ...(found === undefined ? {} : { subjectId: found.id }),
        ip: origin.ip,
        userAgent: origin.userAgent,
        details: { email }
      })
      throw errors.unauthorized('Invalid email or password', 'INVALID_CREDENTIALS')
    }
    if (!found.is_active) {
      // The right password is not a failure: the reservation is given back.
      await Promise.all([
        store.release(failuresKey),
        audit(db, { action: 'auth.login_refused', actorUserId: found.id, subjectType: 'user', subjectId: found.id, ip: origin.ip, userAgent: origin.userAgent, details: { reason: 'inactive' } })
      ])
      throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
    }
    const rememberMe = request.body.rememberMe === true
    // Every session has an active workspace: a user without any (the bootstrapped admin, an
    // account from before workspaces) gets a personal one now.
    const workspaceId = found.workspace_id ?? (await db.transaction().execute(async trx => await workspaceForSignIn(trx, found, false))).workspaceId
    const pending = sessions.prepare({ user: found, method: 'password', rememberMe, origin, workspaceId })
    // The right password clears the address's count, this attempt's reservation with it (as
    // a success always has): sent with the session's creation below, in one pipeline.
    const cleared = store.del(failuresKey)
    // The sign-in's three writes (last login, session row, audit row) are one statement: one
    // round trip and one implicit transaction, all or nothing; the store keeps the session
    // meanwhile (undone when the statement fails).
    const [{ session, user }] = await Promise.all([sessions.activate(pending, async () => await prepared(db, db
      // Only while the verified password is still the account's and the account is active: a
      // mailbox proof that removed the password meanwhile (src/auth/mailbox.ts; it holds the
      // account's row until it commits), or a deactivation that committed meanwhile, leaves
      // `signed_in` empty, so no session or audit row is written (see `refusedMeanwhile`).
      .with('signed_in', q => q.updateTable('users').set({ last_login_at: new Date(fastify.now()) })
        .where('id', '=', found.id).where('password_hash', '=', found.password_hash!).where('is_active', '=', true)
        .returning(USER_COLUMNS))
      .with('session', q => q.insertInto('sessions').columns(Object.keys(pending.row) as Array<keyof typeof pending.row>)
        .expression(q.selectFrom('signed_in').select(eb => Object.entries(pending.row).map(([column, value]) => eb.val(value).as(column)))))
      .with('audited', q => {
        const row = auditRow({
          action: 'auth.login', actorUserId: found.id, subjectType: 'session', subjectId: pending.sessionId, ip: origin.ip, userAgent: origin.userAgent, details: { method: 'password', rememberMe }
        })
        return q.insertInto('audit_log').columns(Object.keys(row) as Array<keyof typeof row>)
          .expression(q.selectFrom('signed_in').select(eb => Object.entries(row).map(([column, value]) => eb.val(value).as(column))))
      })
      .selectFrom('signed_in').selectAll('signed_in'))
      .then(async ([signedIn]) => signedIn ?? await refusedMeanwhile(found.id, origin))), cleared])
    // lastLoginAt changed: other instances see it within their user cache's 30 s.
    fastify.users.forget(user.id)
    return tokenAnswer(request, reply, session, publicUser(user))
  })

  /** The refresh token of a request: the body's, or the cookie's for an allowed origin. */
  const presentedRefreshToken = (request: FastifyRequest<{ Body: { refreshToken?: string } | undefined }>): { token?: string, fromCookie: boolean } => {
    const fromBody = request.body?.refreshToken
    if (fromBody !== undefined) return { token: fromBody, fromCookie: false }
    const header = request.headers.cookie
    const cookie = header === undefined ? undefined : fastify.parseCookie(header)[REFRESH_COOKIE]
    if (cookie === undefined || cookie === '') return { fromCookie: true }
    fastify.checkCookieRequest(request)
    return { token: cookie, fromCookie: true }
  }

  // refresh and logout take an optional body (seed 004's clients send none).
  // (A JSON `null` is a body, and not an object: the schema refuses it.)
  const emptyBody = async (request: FastifyRequest): Promise<void> => { if (request.body === undefined) request.body = {} }

  // A cross-site form cannot send JSON: a cookie request with any other body is refused
  // before it is parsed (SPEC: cookie-authenticated POSTs are JSON from an allowed origin).
  const jsonOnlyWithCookie = async (request: FastifyRequest): Promise<void> => {
    const type = request.headers['content-type']
    if (type === undefined || /^application\/json\s*(;|$)/i.test(type)) return
    const header = request.headers.cookie
    if (header !== undefined && fastify.parseCookie(header)[REFRESH_COOKIE] !== undefined) fastify.checkCookieRequest(request)
  }

  fastify.post('/api/auth/refresh', {
    config: { payload: 'refresh', anonymousLimit: 'in-handler' },
    preParsing: jsonOnlyWithCookie,
    preValidation: emptyBody,
    schema: {
      tags: ['auth'],
      summary: 'Rotate the refresh token and get a new access token (seeds 001, 002, 004)',
      description: 'The refresh token comes from the refresh_token cookie (allowed Origin, JSON or no body) or the body. The answer carries refreshToken only when it came in the body.',
      body: RefreshBody,
      response: {
        200: Type.Object({ accessToken: Type.String(), expiresIn: Type.Integer(), refreshToken: Type.Optional(Type.String()) }),
        ...errorResponses(400, 401, 403, 429)
      }
    }
  }, async (request, reply) => {
    // Who pays for a refresh (SPEC decision 12): a valid token is counted against its own
    // session only (REFRESH_MAX_PER_SESSION, in the rotation itself), never against the IP, so
    // that many users behind one address all stay signed in; anything else is counted against
    // the IP, and never against the session it names (a session id is no secret).
    let presented: { token?: string, fromCookie: boolean }
    try {
      presented = presentedRefreshToken(request)
    } catch (error) {
      await fastify.limitAnonymous(request, reply)
      throw error
    }
    const { token, fromCookie } = presented
    if (token === undefined) {
      await fastify.limitAnonymous(request, reply)
      throw errors.badRequest('Refresh token is required', 'REFRESH_TOKEN_REQUIRED')
    }
    let session: IssuedSession
    try {
      session = await sessions.refresh(token, fastify.originOf(request))
    } catch (error) {
      if ((error as { statusCode?: number }).statusCode === 401) {
        if (fromCookie) fastify.clearSessionCookies(reply)
        // Guessing costs: an invalid token counts against the IP's sign-in budget and its
        // anonymous budget (RATE_LIMIT_MAX), both at once.
        const counted = await Promise.allSettled([signInLimit(request, reply), fastify.limitAnonymous(request, reply)])
        for (const outcome of counted) if (outcome.status === 'rejected') throw outcome.reason
      }
      throw error
    }
    if (fromCookie) {
      fastify.setSessionCookies(reply, session)
      return { accessToken: session.accessToken, expiresIn: session.expiresIn }
    }
    return { accessToken: session.accessToken, expiresIn: session.expiresIn, refreshToken: session.refreshToken }
  })

  fastify.post('/api/auth/logout', {
    config: { anonymousLimit: 'in-handler' },
    preParsing: jsonOnlyWithCookie,
    preValidation: emptyBody,
    schema: {
      tags: ['auth'],
      summary: 'End the current session and clear the cookies (SPEC decision 4)',
      description: 'The session is the bearer token\'s (expired or not), or else the refresh token\'s (body or cookie). A refresh token that was already rotated (past REFRESH_GRACE) is reuse: the whole session is revoked, as on refresh. Without a credential that names a session, it only clears the cookies.',
      body: RefreshBody,
      response: { 200: Message, ...errorResponses(400, 403, 429) }
    }
  }, async (request, reply) => {
    if (request.auth?.kind === 'integration') throw errors.forbidden(MESSAGES.browserOnly, 'BROWSER_SESSION_REQUIRED')
    const origin = fastify.originOf(request)
    let sessionId = request.auth?.sessionId ?? undefined
    // An access token that has expired still names its session: logging out with it ends it.
    const bearer = request.auth === null ? /^Bearer +(\S+\.\S+\.\S+) *$/i.exec(request.headers.authorization ?? '')?.[1] : undefined
    if (sessionId === undefined && bearer !== undefined) {
      const named = await sessions.sessionOfAccessToken(bearer)
      if (named.status === 'live') sessionId = named.sessionId
    }
    if (sessionId === undefined) {
      // A stale refresh token comes back `over`: the service has revoked its session as reuse.
      const { token } = presentedRefreshToken(request)
      const named = token === undefined ? undefined : await sessions.sessionOfRefreshToken(token, origin)
      if (named?.status === 'live') sessionId = named.sessionId
    }
    if (sessionId !== undefined) {
      await sessions.revoke(sessionId, 'logout', { userId: request.auth?.userId ?? null, origin })
    }
    fastify.clearSessionCookies(reply)
    // Only a logout that names no live session counts against the IP (SPEC decision 12).
    if (sessionId === undefined) await fastify.limitAnonymous(request, reply)
    return { message: 'Logged out successfully' }
  })

  await fastify.register(async (instance) => {
    const signedIn = instance.withTypeProvider<TypeBoxTypeProvider>()
    signedIn.addHook('preParsing', fastify.authenticateHook)

    signedIn.post('/api/auth/logout-all', {
      schema: {
        tags: ['sessions'],
        summary: 'End every session of the signed-in user, this one included',
        security: [{ bearer: [] }],
        response: { 200: Type.Object({ message: Type.String(), sessionsRevoked: Type.Integer() }), ...errorResponses(401, 403) }
      }
    }, async (request, reply) => {
      const count = await sessions.revokeAll(request.user!.id, 'logout_all', { userId: request.user!.id, origin: fastify.originOf(request) })
      fastify.clearSessionCookies(reply)
      return { message: 'Logged out of all sessions', sessionsRevoked: count }
    })

    signedIn.get('/api/auth/me', {
      schema: {
        tags: ['auth'],
        summary: 'The signed-in user (seeds 001, 004; SPEC decision 10)',
        security: [{ bearer: [] }],
        response: { 200: PublicUser, ...errorResponses(401, 403) }
      }
    }, async (request, reply) => {
      // The hot path of signed-in clients: the body is serialized once per user record.
      reply.type('application/json; charset=utf-8')
      return publicUserJson(request.user!) as unknown as PublicUser
    })

    signedIn.get('/api/user/me', {
      config: { envelope: 'seed002', unauthorized: 'seed002' },
      schema: {
        tags: ['auth'],
        summary: 'The signed-in user in seed 002\'s envelope',
        security: [{ bearer: [] }],
        description: 'Errors are `{ success: false, message, code }` (401 without a valid token, 403 for an inactive account).',
        // Only the success body is declared: errors are wrapped after serialization.
        response: { 200: Type.Object({ success: Type.Literal(true), data: PublicUser }) }
      }
    }, async (request) => ({ success: true as const, data: publicUser(request.user!) }))

    signedIn.get('/api/auth/sessions', {
      schema: {
        tags: ['sessions'],
        summary: 'The signed-in user\'s live sessions, newest first',
        security: [{ bearer: [] }],
        response: { 200: Type.Object({ sessions: Type.Array(SessionInfo) }), ...errorResponses(401, 403) }
      }
    }, async (request) => {
      const rows = await db.selectFrom('sessions').selectAll()
        .where('user_id', '=', request.user!.id).where('revoked_at', 'is', null).where('expires_at', '>', new Date(fastify.now()))
        .orderBy('created_at', 'desc').limit(200).execute()
      return {
        sessions: rows.filter(row => !sessions.isRevoked(row.id)).map(row => ({
          id: row.id,
          current: row.id === request.auth!.sessionId,
          method: row.method,
          rememberMe: row.remember_me,
          ip: row.ip,
          userAgent: row.user_agent,
          createdAt: new Date(row.created_at).toISOString(),
          lastUsedAt: new Date(row.last_used_at).toISOString(),
          expiresAt: new Date(row.expires_at).toISOString()
        }))
      }
    })

    signedIn.delete('/api/auth/sessions/:id', {
      schema: {
        tags: ['sessions'],
        summary: 'End one of the signed-in user\'s sessions (another user\'s is 404)',
        security: [{ bearer: [] }],
        params: Type.Object({ id: PathId }),
        response: { 200: Message, ...errorResponses(401, 403, 404) }
      }
    }, async (request, reply) => {
      if (!UUID_PATTERN.test(request.params.id)) throw errors.notFound('session')
      const row = await db.selectFrom('sessions').select('id')
        .where('id', '=', request.params.id).where('user_id', '=', request.user!.id).where('revoked_at', 'is', null)
        .executeTakeFirst()
      if (row === undefined) throw errors.notFound('session')
      await sessions.revoke(row.id, 'revoked', { userId: request.user!.id, origin: fastify.originOf(request) })
      if (row.id === request.auth!.sessionId) fastify.clearSessionCookies(reply)
      return { message: 'Session revoked' }
    })
  })

  const bootstrapAllowed = !production || config.ALLOW_BOOTSTRAP
  fastify.post('/api/auth/bootstrap', {
    config: { payload: 'bootstrap' },
    schema: {
      tags: ['auth'],
      summary: 'Create the first admin (seed 004; outside production or with ALLOW_BOOTSTRAP=true)',
      body: RegisterBody,
      response: { 201: Type.Object({ message: Type.String(), user: PublicUser }), ...errorResponses(400, 404, 409, 429) }
    }
  }, async (request, reply) => {
    if (!bootstrapAllowed) throw errors.notFound('route')
    const { email, passwordHash, origin } = await newAccount(request, reply)
    const user = await db.transaction().execute(async trx => {
      // One bootstrap at a time, on every instance.
      await trx.selectNoFrom(eb => eb.fn('pg_advisory_xact_lock', [eb.fn('hashtext', [eb.val('gatehouse:bootstrap')])]).as('locked')).execute()
      const admin = await trx.selectFrom('users').select('id').where('role', '=', 'ADMIN').limit(1).executeTakeFirst()
      if (admin !== undefined) throw errors.conflict('An admin user already exists', 'ADMIN_EXISTS')
      const user = await trx.insertInto('users').values({
        email,
        name: request.body.name?.trim() ?? 'Administrator',
        password_hash: passwordHash,
        role: 'ADMIN'
      }).onConflict(conflict => conflict.column('email').doNothing()).returning(USER_COLUMNS).executeTakeFirst()
      if (user === undefined) throw errors.conflict('Email already registered', 'EMAIL_TAKEN')
      await audit(trx, { action: 'auth.bootstrap', actorUserId: user.id, subjectType: 'user', subjectId: user.id, ip: origin.ip, userAgent: origin.userAgent })
      return user
    })
    reply.code(201)
    return { message: 'Admin user created successfully', user: publicUser(user) }
  })
}

export default authRoutes
