import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { createHash } from 'node:crypto'
import { SMTPServer } from 'smtp-server'
import t, { type Test } from 'tap'
import { build, freePort, type TestContext } from '../helper.js'
import { askMagicLink, bearer, confirmLink, cookie, cookiesOf, openLink, register } from '../auth-helper.js'

/*
 * Magic links end to end: a real SMTP server (smtp-server) started by the test receives the
 * mail, the test follows the link like a mail client would. A link signs in at once only in
 * the browser that asked for it (its binding cookie); opened anywhere else it shows a page that
 * names the address, and the page's button signs in (login CSRF: README, Security).
 */

const PUBLIC = 'http://localhost:3000'

interface Received { from: string, to: string[], raw: string }

/** A local SMTP server that keeps what it receives. */
async function smtp (t: TestContext, options: { failFirst?: number } = {}): Promise<{ url: string, received: Received[], refused: () => number }> {
  const received: Received[] = []
  let refused = 0
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ['STARTTLS', 'AUTH'],
    logger: false,
    onData (stream, session, callback) {
      const chunks: Buffer[] = []
      stream.on('data', (chunk: Buffer) => chunks.push(chunk))
      stream.on('end', () => {
        if (refused < (options.failFirst ?? 0)) {
          refused++
          callback(Object.assign(new Error('Try again later'), { responseCode: 451 }))
          return
        }
        received.push({
          from: session.envelope.mailFrom === false ? '' : session.envelope.mailFrom.address,
          to: session.envelope.rcptTo.map(address => address.address),
          raw: Buffer.concat(chunks).toString('utf8')
        })
        callback()
      })
    }
  })
  const port = await freePort()
  await new Promise<void>(resolve => server.listen(port, '127.0.0.1', resolve))
  t.teardown(async () => { await new Promise<void>(resolve => server.close(() => resolve())) })
  return { url: `smtp://127.0.0.1:${port}`, received, refused: () => refused }
}

/** The text of a MIME message with quoted-printable soft breaks and escapes undone. */
const decoded = (raw: string): string =>
  raw.replace(/=\r?\n/g, '').replace(/=([0-9A-F]{2})/g, (_match, hex: string) => String.fromCharCode(parseInt(hex, 16)))

const linkIn = (raw: string): URL => new URL(/https?:\/\/\S+\/api\/auth\/magic-link\/verify\?token=[A-Za-z0-9_-]+/.exec(decoded(raw))![0])

async function request (app: FastifyInstance, payload: Record<string, unknown>, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/api/auth/magic-link/request', payload, headers })
}

/** The binding cookie a request set (its name is the link's own): name, value and attributes. */
function bindingCookieOf (response: LightMyRequestResponse): Record<string, string | boolean> | undefined {
  const name = /(?:^|; )((?:__Host-)?ml_binding_[A-Za-z0-9_-]{22})=/.exec(cookiesOf(response))?.[1]
  return name === undefined ? undefined : { name, ...cookie(response, name) }
}

/** The confirmation page, naming `email`, with nothing used up or signed in. */
function isConfirmationPage (t: Test, page: LightMyRequestResponse, email: string): void {
  t.equal(page.statusCode, 200, 'the confirmation page')
  t.match(page.headers['content-type'], /text\/html/)
  t.equal(page.headers['cache-control'], 'no-store')
  t.equal(page.headers['referrer-policy'], 'same-origin', 'its form posts with the page\'s Origin (no-referrer would make it null)')
  t.match(page.body, /<form method="post" action="\/api\/auth\/magic-link\/verify">/)
  t.match(page.body, `<p id="email" style="font-size:1.2rem;font-weight:600;overflow-wrap:anywhere">${email}</p>`, 'it names the address the link signs in')
  t.equal(cookie(page, 'refresh_token'), undefined, 'nobody signed in')
}

t.test('without SMTP (development) the answer previews the link; opened in the browser that asked for it, it signs in once', async t => {
  const app = await build(t, { FRONTEND_URL: 'https://app.example.com' })
  const { response: asked, binding } = await askMagicLink(app, { email: 'New.Person@Example.com', name: 'Taylor' })
  t.equal(asked.statusCode, 202)
  t.match(asked.json(), { ok: true, message: 'If that address can sign in, a magic link is on the way.', delivery: 'preview', previewUrl: /^http:\/\/localhost:3000\/api\/auth\/magic-link\/verify\?token=[A-Za-z0-9_-]{43}$/ })

  const opened = await openLink(app, asked.json().previewUrl, binding)
  t.equal(opened.statusCode, 302)
  t.equal(opened.headers.location, 'https://app.example.com/', 'to the frontend')
  t.notMatch(opened.headers.location, /token/i, 'no token in the redirect')
  t.equal(opened.headers['referrer-policy'], 'no-referrer')
  const refresh = cookie(opened, 'refresh_token')!
  t.match(refresh, { httponly: true, path: '/api/auth', samesite: 'Strict' })

  const user = await app.db.selectFrom('users').selectAll().where('email', '=', 'new.person@example.com').executeTakeFirstOrThrow()
  t.match(user, { name: 'Taylor', email_verified: true, role: 'MEMBER', password_hash: null })
  const events = await app.db.selectFrom('audit_log').select(['action', 'details']).where('action', '=', 'auth.login').execute()
  t.same(events.map(event => event.details.method), ['magic_link'])

  // The SPA then refreshes with the cookie (SPEC decision 5) and is signed in.
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin: 'https://app.example.com', cookie: `refresh_token=${refresh.value as string}` } })
  t.equal(refreshed.statusCode, 200)
  const me = await app.inject({ url: '/api/auth/me', headers: bearer(refreshed.json().accessToken) })
  t.equal(me.json().email, 'new.person@example.com')

  const again = await openLink(app, asked.json().previewUrl, binding)
  t.equal(again.statusCode, 400, 'a link works once')
  t.same(again.json(), { error: 'Invalid or expired magic link', code: 'INVALID_MAGIC_LINK' })
  t.equal((await app.inject({ url: '/api/auth/magic-link/verify' })).statusCode, 400, 'no token')
  t.equal((await app.inject({ url: '/api/auth/magic-link/verify?token=forged' })).statusCode, 400, 'unknown token')
})

t.test('over SMTP: the mail has a text and an HTML part and a link built from PUBLIC_URL', async t => {
  const mail = await smtp(t)
  const app = await build(t, { SMTP_URL: mail.url, SMTP_FROM: 'Gatehouse <auth@example.com>', PUBLIC_URL: 'https://auth.example.com', TRUST_PROXY: 'true' })
  const asked = await request(app, { email: 'mailbox@example.com', name: 'Robin' }, { host: 'evil.example', 'x-forwarded-host': 'evil.example' })
  t.equal(asked.statusCode, 202)
  t.same(asked.json(), { ok: true, message: 'If that address can sign in, a magic link is on the way.', delivery: 'email' }, 'no link in the answer')
  await app.mailer.idle()
  t.equal(mail.received.length, 1)
  const [message] = mail.received
  t.same(message!.to, ['mailbox@example.com'])
  t.equal(message!.from, 'auth@example.com')
  t.match(message!.raw, /Content-Type: text\/plain/)
  t.match(message!.raw, /Content-Type: text\/html/)
  t.match(decoded(message!.raw), /Hello Robin,/)
  const link = linkIn(message!.raw)
  t.equal(link.origin, 'https://auth.example.com', 'never from Host or X-Forwarded-Host')
  // Asked for by a script (no Origin): opening the mail's link shows the page, whose button signs in.
  isConfirmationPage(t, await openLink(app, link), 'mailbox@example.com')
  const opened = await confirmLink(app, link)
  t.equal(opened.statusCode, 302)
  t.ok(cookie(opened, 'refresh_token')?.value)
})

t.test('known and unknown addresses get the same answer', async t => {
  const mail = await smtp(t)
  const app = await build(t, { SMTP_URL: mail.url })
  await register(app, 'known@example.com')
  const known = await request(app, { email: 'known@example.com' })
  const unknown = await request(app, { email: 'unknown@example.com' })
  t.equal(known.statusCode, unknown.statusCode)
  t.equal(known.body, unknown.body)
  await app.mailer.idle()
  t.equal(mail.received.length, 2, 'both get a link: the unknown one becomes an account when opened')

  // From a browser both get a binding cookie, alike but for its name and value.
  const shape = (response: LightMyRequestResponse): unknown => {
    const { name, value, ...attributes } = bindingCookieOf(response) ?? {}
    return { status: response.statusCode, body: response.body, headers: Object.keys(response.headers).sort(), attributes, named: typeof name, valued: typeof value }
  }
  const knownBrowser = await request(app, { email: 'known@example.com' }, { origin: PUBLIC })
  const unknownBrowser = await request(app, { email: 'unknown@example.com' }, { origin: PUBLIC })
  t.same(shape(knownBrowser), shape(unknownBrowser))
  t.ok(bindingCookieOf(knownBrowser)?.name, 'a binding cookie for each')
  t.equal(knownBrowser.body, known.body, 'the same body as a script gets')
})

t.test('a link expires after MAGIC_LINK_TTL', async t => {
  let now = Date.now()
  const app = await build(t, {}, undefined, { now: () => now })
  const asked = await request(app, { email: 'late@example.com' })
  now += 10 * 60_000 + 1
  const opened = await openLink(app, asked.json().previewUrl)
  t.equal(opened.statusCode, 400)
  t.equal(opened.headers['set-cookie'], undefined)
  t.equal(await app.db.selectFrom('users').select('id').execute().then(rows => rows.length), 0, 'no account made')
})

t.test('redirects go only to allowed origins', async t => {
  const app = await build(t, { FRONTEND_URL: 'https://app.example.com', ALLOWED_REDIRECTS: 'https://admin.example.com' })
  const cases: Array<[string, string]> = [
    ['//evil.com', 'https://app.example.com/'],
    ['https://app.example.com.evil.com/x', 'https://app.example.com/'],
    ['javascript:alert(1)', 'https://app.example.com/'],
    ['https://evil.com/?next=https://app.example.com', 'https://app.example.com/'],
    ['/\\evil.com', 'https://app.example.com/'],
    ['https://user@app.example.com/', 'https://app.example.com/'],
    ['/dashboard?tab=1', 'https://app.example.com/dashboard?tab=1'],
    ['https://app.example.com/settings', 'https://app.example.com/settings'],
    ['https://admin.example.com/users', 'https://admin.example.com/users']
  ]
  for (const [index, [redirectTo, expected]] of cases.entries()) {
    const { link, binding } = await askMagicLink(app, { email: `redirect${index}@example.com`, redirectTo })
    const opened = await openLink(app, link, binding)
    t.equal(opened.headers.location, expected, redirectTo)
  }
})

t.test('names and addresses cannot inject mail headers', async t => {
  const mail = await smtp(t)
  const app = await build(t, { SMTP_URL: mail.url })
  const asked = await request(app, { email: 'victim@example.com', name: 'Eve\r\nBcc: evil@example.com\r\nSubject: hi' })
  t.equal(asked.statusCode, 202)
  await app.mailer.idle()
  t.same(mail.received[0]!.to, ['victim@example.com'], 'one recipient')
  t.notMatch(mail.received[0]!.raw, /^Bcc:/m)
  t.match(mail.received[0]!.raw, /^Subject: Your sign-in link/m)
  const bad = await request(app, { email: 'victim@example.com\r\nBcc: evil@example.com' })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'VALIDATION_FAILED')
})

t.test('magic links are limited per address and per IP', async t => {
  const app = await build(t, { MAGIC_LINK_MAX_PER_EMAIL: '2' })
  t.equal((await request(app, { email: 'spam@example.com' })).statusCode, 202)
  t.equal((await request(app, { email: 'SPAM@example.com' })).statusCode, 202)
  const limited = await request(app, { email: 'spam@example.com' })
  t.equal(limited.statusCode, 429)
  t.ok(Number(limited.headers['retry-after']) > 0)
  t.equal((await request(app, { email: 'other@example.com' })).statusCode, 202, 'another address is not affected')

  const strict = await build(t, { LOGIN_MAX_PER_IP: '1' })
  t.equal((await request(strict, { email: 'a@example.com' })).statusCode, 202)
  t.equal((await request(strict, { email: 'b@example.com' })).statusCode, 429, 'per IP, across addresses')
})

t.test('MAGIC_LINK_CONFIRM=page: opening shows a page, its button signs in', async t => {
  const app = await build(t, { MAGIC_LINK_CONFIRM: 'page' })
  const { link, binding } = await askMagicLink(app, { email: 'scanned@example.com' })
  const token = link.searchParams.get('token')!
  for (let scan = 0; scan < 2; scan++) {
    const page = await openLink(app, link)
    t.equal(page.statusCode, 200, 'a scanner opening the link does not use it up')
    isConfirmationPage(t, page, 'scanned@example.com')
    t.match(page.headers['content-security-policy'], /form-action 'self'/)
    t.equal(page.headers['cross-origin-opener-policy'], 'same-origin', 'a page gets the document headers too')
  }
  isConfirmationPage(t, await openLink(app, link, binding), 'scanned@example.com')
  t.pass('even in the browser that asked for the link')
  const post = async (origin: string) => await app.inject({
    method: 'POST',
    url: '/api/auth/magic-link/verify',
    headers: { origin, 'content-type': 'application/x-www-form-urlencoded' },
    payload: `token=${token}`
  })
  t.equal((await post('https://evil.example')).statusCode, 403, 'only our page may confirm')
  const confirmed = await post('http://localhost:3000')
  t.equal(confirmed.statusCode, 302)
  t.ok(cookie(confirmed, 'refresh_token')?.value)
  t.equal((await post('http://localhost:3000')).statusCode, 400, 'once')
})

t.test('an inactive account cannot sign in by link', async t => {
  const app = await build(t)
  const { user } = await register(app, 'gone@example.com')
  await app.db.updateTable('users').set({ is_active: false }).where('id', '=', user.id).execute()
  const { response: asked, link, binding } = await askMagicLink(app, { email: 'gone@example.com' })
  t.equal(asked.statusCode, 202, 'the request says nothing')
  const opened = await openLink(app, link, binding)
  t.equal(opened.statusCode, 403)
  t.same(opened.json(), { error: 'User account is inactive', code: 'USER_INACTIVE' })
  t.equal(opened.headers['set-cookie'], undefined)
  const sessions = await app.db.selectFrom('sessions').select('id').where('method', '=', 'magic_link').execute()
  t.equal(sessions.length, 0)
})

t.test('MAGIC_LINKS=disabled answers 410', async t => {
  const app = await build(t, { MAGIC_LINKS: 'disabled' })
  const asked = await request(app, { email: 'x@example.com' })
  t.equal(asked.statusCode, 410)
  t.equal(asked.json().code, 'MAGIC_LINKS_DISABLED')
})

t.test('mail is retried when the SMTP server refuses it for a while', async t => {
  const mail = await smtp(t, { failFirst: 1 })
  const app = await build(t, { SMTP_URL: mail.url })
  const asked = await request(app, { email: 'patient@example.com' })
  t.equal(asked.statusCode, 202, 'the request does not wait for the mail')
  await app.mailer.idle()
  t.equal(mail.refused(), 1, 'the first attempt was refused')
  t.equal(mail.received.length, 1, 'the second went through')
  t.equal((await confirmLink(app, linkIn(mail.received[0]!.raw))).statusCode, 302)
})

t.test('direct: only the binding cookie of the browser that asked opens the link at once; anywhere else the page, which uses nothing up', async t => {
  const app = await build(t, { FRONTEND_URL: 'https://app.example.com' })
  const { response: asked, link, binding } = await askMagicLink(app, { email: 'bound@example.com' })
  const set = bindingCookieOf(asked)!
  t.match(set.name, /^__Host-ml_binding_[A-Za-z0-9_-]{22}$/, 'a __Host- cookie for this link alone (PUBLIC_URL is http://localhost)')
  t.match(set, { httponly: true, secure: true, path: '/', samesite: 'Lax', 'max-age': '600' }, 'HttpOnly, Secure, Path=/, SameSite=Lax, MAGIC_LINK_TTL')
  t.equal(set.domain, undefined, 'no Domain')
  t.match(set.value, /^[A-Za-z0-9_-]{43}$/, '256 random bits')
  const stored = JSON.parse((await app.store.get(`ml:${createHash('sha256').update(link.searchParams.get('token')!).digest('base64url')}`))!)
  t.equal(stored.binding, createHash('sha256').update(set.value as string).digest('base64url'), 'only its hash is stored with the link')

  // Another browser, another device, a forged navigation: the page, again and again.
  isConfirmationPage(t, await openLink(app, link), 'bound@example.com')
  isConfirmationPage(t, await openLink(app, link, `${set.name as string}=${'x'.repeat(43)}`), 'bound@example.com')
  const other = await askMagicLink(app, { email: 'bound@example.com' })
  isConfirmationPage(t, await openLink(app, link, other.binding), 'bound@example.com')
  isConfirmationPage(t, await openLink(app, link, `${(bindingCookieOf(other.response)!.name as string)}=${set.value as string}`), 'bound@example.com')
  t.equal(await app.db.selectFrom('users').select('id').execute().then(rows => rows.length), 0, 'no account made by the pages')

  // Its own browser: signed in at once, and the binding cookie is cleared.
  const opened = await openLink(app, link, binding)
  t.equal(opened.statusCode, 302)
  t.equal(opened.headers.location, 'https://app.example.com/')
  t.ok(cookie(opened, 'refresh_token')?.value, 'signed in')
  t.match(cookie(opened, set.name as string), { value: '', 'max-age': '0', path: '/', secure: true })
  t.equal((await openLink(app, link, binding)).statusCode, 400, 'once')
  t.equal((await confirmLink(app, link)).statusCode, 400, 'once, by the page too')
  t.equal((await confirmLink(app, other.link)).statusCode, 302, 'the other link, confirmed on its page, signs in')
})

t.test('a link asked for by a script (no Origin) opens the page; its button signs in, once', async t => {
  const app = await build(t)
  const { response: asked, link } = await askMagicLink(app, { email: 'script@example.com' }, null)
  t.equal(asked.headers['set-cookie'], undefined, 'no binding cookie')
  isConfirmationPage(t, await openLink(app, link), 'script@example.com')
  isConfirmationPage(t, await openLink(app, link), 'script@example.com')
  const foreign = await app.inject({ method: 'POST', url: '/api/auth/magic-link/verify', headers: { origin: 'https://evil.example', 'content-type': 'application/x-www-form-urlencoded' }, payload: `token=${link.searchParams.get('token')!}` })
  t.equal(foreign.statusCode, 403, 'a page elsewhere cannot press the button')
  const confirmed = await confirmLink(app, link)
  t.equal(confirmed.statusCode, 302)
  t.ok(cookie(confirmed, 'refresh_token')?.value)
  t.equal((await openLink(app, link)).statusCode, 400, 'used up')
})

t.test('the binding cookie: __Host- where browsers keep Secure cookies (https, loopback), none elsewhere', async t => {
  const https = await build(t, { PUBLIC_URL: 'https://auth.example.com' })
  const secure = bindingCookieOf((await askMagicLink(https, { email: 'tls@example.com' }, 'https://auth.example.com')).response)!
  t.match(secure, { name: /^__Host-ml_binding_/, secure: true, path: '/', httponly: true, samesite: 'Lax' })

  const plain = await build(t, { PUBLIC_URL: 'http://auth.internal.example:3000' })
  const asked = await askMagicLink(plain, { email: 'lan@example.com' }, 'http://auth.internal.example:3000')
  t.equal(asked.response.headers['set-cookie'], undefined,
    'none: a browser would drop a Secure cookie from plain http, and one without the prefix could be planted by a sibling host')
  // The planter's own link and a cookie of its choosing, under the name a binding would have.
  const token = asked.link.searchParams.get('token')!
  const planted = `ml_binding_${createHash('sha256').update(`binding:${token}`).digest('base64url').slice(0, 22)}=anything`
  isConfirmationPage(t, await openLink(plain, asked.link, planted), 'lan@example.com')
  t.equal((await confirmLink(plain, asked.link)).statusCode, 302, 'its button signs in')
})
