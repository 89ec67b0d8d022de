import { createServer } from 'node:http'
import type { Page } from 'playwright-core'
import t from 'tap'
import { browser } from './browser.js'
import { build, freePort, type TestContext } from '../helper.js'
import { PASSWORD, register } from '../auth-helper.js'

/*
 * Seed 000's POST /auth/signout from a real browser (Debian's Chromium, driven by
 * playwright-core; see demo.test.ts). Its client posts a form; the refresh cookie
 * (Path=/api/auth) never comes along, so a form with nothing in it is refused (401) and the
 * session stays as it was, where it used to be answered 302 as if signed out. A page that
 * posts its access token (the `access_token` form field, or a fetch with the bearer) really
 * ends the session: the refresh cookie taken before no longer refreshes. A cross-site form
 * signs nobody out.
 */

const status = async (page: Page, text: string): Promise<void> => {
  await page.locator('#status').filter({ hasText: text }).waitFor({ timeout: 10_000 })
}

/** Submits a form to /auth/signout from the page, as a seed 000 page does; the answer to it. */
async function postSignOutForm (page: Page, fields: Record<string, string>): Promise<number> {
  const [response] = await Promise.all([
    page.waitForResponse(response => new URL(response.url()).pathname === '/auth/signout'),
    // Page code as text: this project's TypeScript has no DOM types.
    page.evaluate(`(() => {
      const form = document.createElement('form')
      form.method = 'POST'
      form.action = '/auth/signout'
      for (const [name, value] of Object.entries(${JSON.stringify(fields)})) {
        const input = document.createElement('input')
        input.type = 'hidden'
        input.name = name
        input.value = value
        form.append(input)
      }
      document.body.append(form)
      form.submit()
    })()`)
  ])
  return response.status()
}

t.test('seed 000\'s sign-out from a browser: refused without a credential, a real sign-out with the access token', async t => {
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const app = await build(t, { PUBLIC_URL: base, FRONTEND_URL: `${base}/demo` })
  await app.listen({ port, host: '127.0.0.1' })
  await register(app, 'seed000@example.com')
  const launched = await browser(t)

  /** A fresh browser profile, signed in through the demo SPA: its refresh cookie and access token. */
  const signIn = async (t: TestContext): Promise<{ page: Page, refreshCookie: string, accessToken: string }> => {
    const context = await launched.newContext()
    t.teardown(async () => { await context.close() })
    const page = await context.newPage()
    await page.goto(`${base}/demo`)
    await status(page, 'Not signed in')
    await page.fill('#email', 'seed000@example.com')
    await page.fill('#password', PASSWORD)
    await page.click('#sign-in')
    await status(page, 'Signed in as seed000@example.com')
    const refreshCookie = (await page.context().cookies()).find(cookie => cookie.name === 'refresh_token')!.value
    return { page, refreshCookie, accessToken: await page.evaluate('accessToken') as string }
  }
  /** What the server says of a refresh cookie and an access token taken from the browser. */
  const works = async ({ refreshCookie, accessToken }: { refreshCookie: string, accessToken: string }): Promise<{ refresh: number, me: number }> => ({
    me: (await app.inject({ url: '/api/auth/me', headers: { authorization: `Bearer ${accessToken}` } })).statusCode,
    refresh: (await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin: base, cookie: `refresh_token=${refreshCookie}` } })).statusCode
  })

  t.test('an Auth.js-style form with no credential: 401, and the session is untouched', async t => {
    const session = await signIn(t)
    const { page } = session
    t.equal(await postSignOutForm(page, { csrfToken: 'anything', callbackUrl: `${base}/demo` }), 401, 'refused, not redirected as if signed out')
    t.match(await page.textContent('body'), /Access token required/, 'the browser shows the refusal')
    t.ok((await page.context().cookies()).some(cookie => cookie.name === 'refresh_token' && cookie.value === session.refreshCookie), 'the browser keeps its refresh cookie')
    await page.goto(`${base}/demo`)
    await status(page, 'Signed in as seed000@example.com')
    t.pass('the page is still signed in (its reload refreshed through the cookie): nothing pretended otherwise')
    t.equal((await app.inject({ url: '/api/auth/me', headers: { authorization: `Bearer ${session.accessToken}` } })).statusCode, 200, 'the access token still works')
  })

  t.test('a form that posts the access token (access_token field): the session really ends', async t => {
    const session = await signIn(t)
    const { page } = session
    t.equal(await postSignOutForm(page, { access_token: session.accessToken, callbackUrl: `${base}/demo` }), 302, 'the form post is answered 302 to the frontend')
    await page.waitForURL(`${base}/demo`)
    await status(page, 'Not signed in')
    t.notOk((await page.context().cookies()).some(cookie => cookie.name === 'refresh_token'), 'the refresh cookie is gone from the browser')
    t.same(await works(session), { me: 401, refresh: 401 }, 'the refresh token taken before sign-out is refused, and the access token too')
  })

  t.test('a fetch with the bearer, as the SPA calls its other routes: the session really ends', async t => {
    const session = await signIn(t)
    const { page } = session
    const answer = await page.evaluate(async accessToken => {
      const response = await fetch('/auth/signout', { method: 'POST', headers: { authorization: `Bearer ${accessToken}` }, redirect: 'manual' })
      return response.type
    }, session.accessToken)
    // A redirect a script asked not to follow is opaque: it is the 302, not an error status.
    t.equal(answer, 'opaqueredirect', 'answered with the redirect')
    t.same(await works(session), { me: 401, refresh: 401 }, 'the refresh token taken before sign-out is refused')
  })

  t.test('a cross-site form post signs nobody out', async t => {
    const session = await signIn(t)
    const { page } = session
    // Another site (localhost is not 127.0.0.1) with a form that posts itself on load.
    const evil = createServer((_request, response) => {
      response.setHeader('content-type', 'text/html')
      response.end(`<form method="POST" action="${base}/auth/signout"><input name="callbackUrl" value="/"></form><script>document.forms[0].submit()</script>`)
    })
    const evilPort = await freePort()
    await new Promise<void>(resolve => evil.listen(evilPort, '127.0.0.1', resolve))
    t.teardown(() => new Promise<void>(resolve => evil.close(() => { resolve() })))
    const [response] = await Promise.all([
      page.waitForResponse(response => new URL(response.url()).pathname === '/auth/signout'),
      page.goto(`http://localhost:${evilPort}/`)
    ])
    t.equal(response.status(), 401, 'refused: the browser sent no credential')
    const refreshCookie = (await page.context().cookies()).find(cookie => cookie.name === 'refresh_token')?.value
    t.equal(refreshCookie, session.refreshCookie, 'the browser keeps its refresh cookie')
    t.same(await works(session), { me: 200, refresh: 200 }, 'the session is alive')
  })
})
