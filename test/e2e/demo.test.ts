import type { Page } from 'playwright-core'
import t from 'tap'
import { browser } from './browser.js'
import { build, freePort, type TestContext } from '../helper.js'
import { PASSWORD, register } from '../auth-helper.js'
import { startOidcProvider } from '../oidc-stand-in.js'

/*
 * The demo SPA (/demo) in a real headless Chromium (Debian's, driven by playwright-core):
 * sign-in by password, by magic link and by an OpenID Connect provider, a reload that stays signed in through the refresh
 * cookie, and sign-out. .ci/run installs Chromium; this file fails loudly without it.
 */

/** The app listening on a real port, its public URL that very address. */
async function serve (t: TestContext, env: Record<string, string> = {}, port?: number): Promise<{ base: string, app: Awaited<ReturnType<typeof build>> }> {
  port ??= await freePort()
  const base = `http://127.0.0.1:${port}`
  const app = await build(t, { PUBLIC_URL: base, FRONTEND_URL: `${base}/demo`, ...env })
  await app.listen({ port, host: '127.0.0.1' })
  return { base, app }
}

const status = async (page: Page, text: string): Promise<void> => {
  await page.locator('#status').filter({ hasText: text }).waitFor({ timeout: 10_000 })
}

t.test('the demo SPA signs in by password, survives a reload, and signs out', async t => {
  const { base, app } = await serve(t)
  await register(app, 'demo@example.com')
  const page = await (await browser(t)).newPage()
  const failures: string[] = []
  page.on('pageerror', error => failures.push(error.message))

  await page.goto(`${base}/demo`)
  await status(page, 'Not signed in')
  await page.fill('#email', 'demo@example.com')
  await page.fill('#password', PASSWORD)
  await page.click('#sign-in')
  await status(page, 'Signed in as demo@example.com')
  t.match(await page.textContent('#me'), /"role": "MEMBER"/)

  const cookies = await page.context().cookies()
  const refresh = cookies.find(cookie => cookie.name === 'refresh_token')
  t.match(refresh, { httpOnly: true, path: '/api/auth', sameSite: 'Strict' }, 'the refresh token is an HttpOnly cookie')
  t.equal(await page.evaluate('document.cookie'), '', 'JavaScript sees no cookie at all')

  await page.reload()
  await status(page, 'Signed in as demo@example.com')
  t.pass('a reload stays signed in through the refresh cookie')

  await page.click('#sign-out')
  await status(page, 'Signed out')
  await page.reload()
  await status(page, 'Not signed in')
  t.same(failures, [], 'no script errors (the CSP allows what the page needs)')
})

t.test('the demo SPA signs in by magic link (preview link)', async t => {
  const { base } = await serve(t)
  const page = await (await browser(t)).newPage()
  await page.goto(`${base}/demo`)
  await status(page, 'Not signed in')
  await page.fill('#magic-email', 'linked@example.com')
  await page.click('#send-link')
  const link = page.locator('#preview-link')
  await link.waitFor()
  await link.click()
  await page.waitForURL(`${base}/demo`)
  t.notMatch(page.url(), /token/, 'no token in the address bar')
  await status(page, 'Signed in as linked@example.com')
})

t.test('the demo SPA signs in with an OpenID Connect provider', async t => {
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const provider = await startOidcProvider(t, {
    clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: [`${base}/api/auth/oauth/authentik/callback`] }],
    accounts: { carol: { email: 'carol@example.com', email_verified: true, name: 'Carol' } },
    browserAccount: 'carol'
  })
  await serve(t, { OIDC_PROVIDERS: JSON.stringify([{ key: 'authentik', displayName: 'Authentik', issuer: provider.issuer, clientId: 'gatehouse', clientSecret: 'stand-in-secret' }]) }, port)
  const page = await (await browser(t)).newPage()
  await page.goto(`${base}/demo`)
  await status(page, 'Not signed in')
  await page.click('a[data-provider="authentik"]')
  await page.waitForURL(`${base}/demo`)
  await status(page, 'Signed in as carol@example.com')
  t.notMatch(page.url(), /code=|token/, 'nothing secret in the address bar')
})
