import { parse as parseQuery } from 'node:querystring'
import type { FastifyPluginAsyncTypebox, TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { HelmetOptions } from 'helmet'
import { Type } from 'typebox'
import { DOCUMENT_HELMET } from '../../plugins/security.js'
import { isProduction, keepsSecureCookies, publicUrl, serverOrigins } from '../../src/config.js'
import { errors } from '../../src/errors.js'
import { bindingCookieName, bindingMatches, cleanName, confirmationPage, createMagicLink, escapeHtml, linkKey, newBinding, type PendingLink } from '../../src/auth/magic-links.js'
import { mailboxProven, proveMailbox, type ProvenMailbox } from '../../src/auth/mailbox.js'
import { redirectPolicy } from '../../src/auth/redirects.js'
import { emailKey, signInThrottle, throttle } from '../../src/auth/throttle.js'
import { audit, normalizeEmail, USER_COLUMNS } from '../../src/auth/users.js'
import { Email, errorResponses } from '../../src/schemas/common.js'

const RequestBody = Type.Object({
  email: Email,
  name: Type.Optional(Type.String({ maxLength: 200 })),
  redirectTo: Type.Optional(Type.String({ maxLength: 2048 }))
}, { additionalProperties: false })

const Accepted = Type.Object({
  ok: Type.Literal(true),
  message: Type.String(),
  delivery: Type.Enum(['email', 'preview']),
  previewUrl: Type.Optional(Type.String({ description: 'Outside production without SMTP_URL only: the link itself' }))
})

const Token = Type.String({ minLength: 1, maxLength: 128 })

const ACCEPTED_MESSAGE = 'If that address can sign in, a magic link is on the way.'
const INVALID = 'Invalid or expired magic link'

/**
 * Sign-in by e-mail link (seed 003). The request answers 202 with the same body whether or
 * not the address has an account, and sends the mail off the request path; the link carries a
 * 256-bit single-use token, stored hashed, valid MAGIC_LINK_TTL. Opening it creates or loads
 * the user, starts a session, sets the cookies and redirects to an allowed frontend URL —
 * without any token in that URL (SPEC decision 5). Without a click only in the browser that
 * asked for the link (its binding cookie): anywhere else a page names the address and its
 * button signs in, so that nobody is signed in to someone else's account by a forged
 * navigation (login CSRF).
 */
const magicLinkRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, store, db, sessions } = fastify
  const enabled = config.MAGIC_LINKS === 'enabled'
  const base = publicUrl(config)
  const preview = !fastify.mailer.delivers && !isProduction(config)
  const safeRedirect = redirectPolicy(config)
  const ownOrigins = new Set(serverOrigins(config))
  // The binding cookie goes to the link's own origin, PUBLIC_URL, as a __Host- cookie (Secure,
  // Path=/): only this host can set such a cookie. Where the browser does not keep Secure
  // cookies from PUBLIC_URL (plain http on a host that is not a loopback one) there is none,
  // and every link opens its page: a cookie without the prefix could be planted by a sibling
  // host, or by anyone on the network, with the value of the planter's own link.
  const secureBinding = keepsSecureCookies(config)
  const bindingCookie = { httpOnly: true, sameSite: 'lax' as const, secure: true, path: '/' }
  const bindingOf = (request: FastifyRequest, token: string): string | undefined =>
    request.headers.cookie === undefined ? undefined : fastify.parseCookie(request.headers.cookie)[bindingCookieName(token)]
  if (enabled && config.MAGIC_LINK_CONFIRM === 'direct' && !secureBinding) {
    fastify.log.warn('magic links open their confirmation page in every browser: signing in without a click needs PUBLIC_URL on https (or http://localhost)')
  }

  fastify.post('/api/auth/magic-link/request', {
    config: { payload: 'magic link' },
    schema: {
      tags: ['auth'],
      summary: 'E-mail a single-use sign-in link (seed 003)',
      description: 'Always 202 with the same body, whether or not the address has an account. Without SMTP outside production the answer carries the link as previewUrl. From a browser (a request with Origin) it sets the link\'s binding cookie: opened in that browser, with MAGIC_LINK_CONFIRM=direct, the link signs in without a click.',
      body: RequestBody,
      response: { 202: Accepted, ...errorResponses(400, 410, 429) }
    }
  }, async (request, reply) => {
    if (!enabled) throw errors.gone('Magic-link sign-in is disabled.', 'MAGIC_LINKS_DISABLED')
    const email = normalizeEmail(request.body.email)
    await signInThrottle(store, config, request, reply)
    await throttle(store, reply, `ml:rate:${emailKey(email)}`, config.MAGIC_LINK_MAX_PER_EMAIL, config.LOGIN_WINDOW,
      'Too many sign-in links for this address, please try again later.')
    const name = cleanName(request.body.name)
    // A browser (it sends Origin; scripts do not) gets a cookie for this link alone, the same for every address.
    const binding = request.headers.origin === undefined || !secureBinding ? undefined : newBinding()
    const { url: link, token } = await createMagicLink(store, base, {
      email, name, redirectTo: safeRedirect(request.body.redirectTo), ...(binding === undefined ? {} : { binding: binding.hash })
    }, fastify.now(), config.MAGIC_LINK_TTL)
    if (binding !== undefined) reply.setCookie(bindingCookieName(token), binding.value, { ...bindingCookie, maxAge: Math.ceil(config.MAGIC_LINK_TTL / 1000) })
    reply.code(202)
    if (preview) return { ok: true as const, message: ACCEPTED_MESSAGE, delivery: 'preview' as const, previewUrl: link }
    const minutes = Math.round(config.MAGIC_LINK_TTL / 60_000)
    const greeting = name === null ? 'Hello,' : `Hello ${name},`
    fastify.mailer.enqueue({
      to: email,
      subject: 'Your sign-in link',
      text: `${greeting}\n\nOpen this link to sign in. It works once, for ${minutes} minutes:\n\n${link}\n\nIf you did not ask to sign in, ignore this e-mail.\n`,
      html: `<p>${escapeHtml(greeting)}</p><p><a href="${escapeHtml(link)}">Sign in</a> — the link works once, for ${minutes} minutes.</p><p>If you did not ask to sign in, ignore this e-mail.</p>`
    })
    await audit(db, { action: 'auth.magic_link_requested', subjectType: 'email', subjectId: emailKey(email), ip: request.ip, userAgent: request.headers['user-agent'] })
    return { ok: true as const, message: ACCEPTED_MESSAGE, delivery: 'email' as const }
  })

  /** The link still valid under `token`; read with `store.get` (peek) or `store.take` (one use). */
  const pendingLink = (stored: string | null): PendingLink => {
    const pending = stored === null ? undefined : JSON.parse(stored) as PendingLink
    if (pending === undefined || pending.expiresAt <= fastify.now()) throw errors.badRequest(INVALID, 'INVALID_MAGIC_LINK')
    return pending
  }

  /** Uses up the link and signs in: cookies set, 302 to the stored (allowed) redirect. */
  const consume = async (request: FastifyRequest, reply: FastifyReply, token: string): Promise<FastifyReply> => {
    if (!enabled) throw errors.gone('Magic-link sign-in is disabled.', 'MAGIC_LINKS_DISABLED')
    const stored = await store.take(linkKey(token))
    const pending = pendingLink(stored)
    const origin = fastify.originOf(request)
    const { session, proven } = await db.transaction().execute(async trx => {
      const now = new Date(fastify.now())
      // Opening the link proves the mailbox: a new account is created verified; an existing
      // one is verified by proveMailbox, which voids what came before a first proof.
      let user = await trx.insertInto('users')
        .values({ email: pending.email, name: pending.name ?? pending.email.split('@')[0]!, email_verified: true, last_login_at: now })
        .onConflict(conflict => conflict.column('email').doNothing())
        .returning(USER_COLUMNS).executeTakeFirst()
      let proven: ProvenMailbox | undefined
      if (user === undefined) {
        // Locked before is_active is read: a deactivation under way is waited for and seen, and
        // one that begins later waits for this sign-in and then ends its session with the rest.
        const { id, is_active: active } = await trx.selectFrom('users').select(['id', 'is_active']).where('email', '=', pending.email).forUpdate().executeTakeFirstOrThrow()
        if (!active) throw errors.forbidden('User account is inactive', 'USER_INACTIVE')
        proven = await proveMailbox(trx, sessions, now, id, { method: 'magic_link', origin })
        user = await trx.updateTable('users').set({ last_login_at: now }).where('id', '=', id).returning(USER_COLUMNS).executeTakeFirstOrThrow()
      }
      const session = await sessions.start(trx, { user, method: 'magic_link', rememberMe: false, origin, emailProven: true })
      await audit(trx, { action: 'auth.login', actorUserId: user.id, subjectType: 'session', subjectId: session.sessionId, ip: origin.ip, userAgent: origin.userAgent, details: { method: 'magic_link' } })
      return { session: { ...session, userId: user.id }, proven }
    }).catch(async (error: unknown) => {
      // A failure of ours (not the link's or the account's 4xx) does not use the link up.
      const status = (error as { statusCode?: number }).statusCode
      if (status === undefined || status >= 500) {
        await store.set(linkKey(token), stored!, pending.expiresAt - fastify.now()).catch(() => {})
      }
      throw error
    })
    if (proven?.firstProof === true) await mailboxProven(fastify, proven)
    else fastify.users.forget(session.userId)
    // Accepted invitations: the new member's very next request sees them, on every instance.
    for (const workspaceId of session.joined ?? []) await fastify.memberships.changed(workspaceId, session.userId)
    fastify.setSessionCookies(reply, session)
    if (bindingOf(request, token) !== undefined) reply.clearCookie(bindingCookieName(token), bindingCookie)
    return await reply.header('Referrer-Policy', 'no-referrer').redirect(pending.redirectTo, 302)
  }

  const pageHelmet: HelmetOptions = {
    ...DOCUMENT_HELMET,
    // Under no-referrer a browser posts the page's form with `Origin: null`, which the POST
    // refuses; same-origin sends the page's origin to this server and nothing to anyone else.
    referrerPolicy: { policy: 'same-origin' },
    contentSecurityPolicy: {
      useDefaults: false as const,
      directives: { defaultSrc: ["'none'"], styleSrc: ["'unsafe-inline'"], formAction: ["'self'"], baseUri: ["'none'"], frameAncestors: ["'none'"] }
    }
  }

  fastify.get('/api/auth/magic-link/verify', {
    config: { helmet: pageHelmet },
    schema: {
      tags: ['auth'],
      summary: 'Open a magic link: in the browser that asked for it sign in and redirect (seed 003), anywhere else a page whose button signs in',
      description: 'With MAGIC_LINK_CONFIRM=direct, a link opened with the binding cookie its request set (the browser that asked for it) signs in at once. Otherwise — another browser or device, a link asked for by a script, an invitation link, MAGIC_LINK_CONFIRM=page — the answer is a page that names the address and whose button POSTs the token. The page uses nothing up.',
      querystring: Type.Object({ token: Type.Optional(Token) }),
      response: {
        200: Type.String({ description: 'The confirmation page (text/html), naming the address the link signs in' }),
        302: Type.Null({ description: 'Signed in: the cookies are set and Location is the frontend' }),
        ...errorResponses(400, 403, 410)
      }
    }
  }, async (request, reply) => {
    if (!enabled) throw errors.gone('Magic-link sign-in is disabled.', 'MAGIC_LINKS_DISABLED')
    const { token } = request.query
    if (token === undefined) throw errors.badRequest(INVALID, 'INVALID_MAGIC_LINK')
    const pending = pendingLink(await store.get(linkKey(token)))
    // Without a click only where the link was asked for: a page elsewhere that navigates a
    // visitor here (with a link to its own address) signs nobody in.
    if (config.MAGIC_LINK_CONFIRM === 'direct' && bindingMatches(pending, bindingOf(request, token))) return await consume(request, reply, token)
    // Otherwise a page, which also keeps mail scanners that open links from using them up.
    return await reply.header('Cache-Control', 'no-store').type('text/html; charset=utf-8').send(confirmationPage(token, pending.email))
  })

  // The page's form posts urlencoded; only this route accepts that type.
  await fastify.register(async (instance) => {
    const confirm = instance.withTypeProvider<TypeBoxTypeProvider>()
    confirm.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 4096 }, (_request, body, done) => {
      done(null, parseQuery(body as string))
    })
    confirm.post('/api/auth/magic-link/verify', {
      config: { payload: 'magic link' },
      schema: {
        tags: ['auth'],
        summary: 'Confirm a magic link from its page',
        body: Type.Object({ token: Token }),
        response: {
          302: Type.Null({ description: 'Signed in: the cookies are set and Location is the frontend' }),
          ...errorResponses(400, 403, 410)
        }
      }
    }, async (request, reply) => {
      // Only our own page may post here (no sign-in CSRF).
      if (!ownOrigins.has(request.headers.origin ?? '')) throw errors.originNotAllowed()
      return await consume(request, reply, request.body.token)
    })
  })
}

export default magicLinkRoutes
