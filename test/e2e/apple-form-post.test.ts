import { generateKeyPairSync } from 'node:crypto'
import type { Page } from 'playwright-core'
import t from 'tap'
import { build, freePort, type TestContext } from '../helper.js'
import { startFakeProvider } from '../oidc-stand-in.js'
import { browser } from './browser.js'

/*
 * Sign in with Apple in a real browser (issue 14, item 2). Apple answers with response_mode
 * form_post: its page posts code and state to the callback from Apple's own site, a cross-site
 * POST that no SameSite=Lax cookie follows. Gatehouse runs at http://localhost:PORT and the
 * stand-in provider at http://127.0.0.1:PORT — two sites (a port does not make another site),
 * so the browser treats the post exactly as it treats Apple's.
 */

const status = async (page: Page, text: string): Promise<void> => {
  await page.locator('#status').filter({ hasText: text }).waitFor({ timeout: 10_000 })
}

/** Gatehouse with Sign in with Apple against the fake provider, listening at http://localhost:PORT. */
async function appleSignIn (t: TestContext) {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const fake = await startFakeProvider(t, {
    clientId: 'com.example.web',
    clientSecret: 'unused',
    account: { sub: 'apple-user', email: 'ada@privaterelay.appleid.com', email_verified: 'true' },
    acceptClientSecret: secret => typeof secret === 'string' && secret.split('.').length === 3
  })
  const port = await freePort()
  const base = `http://localhost:${port}`
  const app = await build(t, {
    PUBLIC_URL: base,
    FRONTEND_URL: `${base}/demo`,
    APPLE_CLIENT_ID: 'com.example.web',
    APPLE_TEAM_ID: 'TEAM123456',
    APPLE_KEY_ID: 'KEY1234567',
    APPLE_PRIVATE_KEY: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    APPLE_ISSUER: fake.issuer
  })
  await app.listen({ port, host: '127.0.0.1' })
  return { app, base, fake, callback: `${base}/api/auth/oauth/apple/callback` }
}

/** A page of another site that posts `fields` to `action` at once, as Apple's does. */
const postingPage = (action: string, fields: URLSearchParams): string =>
  `<!doctype html><body onload="document.forms[0].submit()"><form method="post" action="${action}">` +
  [...fields].map(([name, value]) => `<input type="hidden" name="${name}" value="${value}">`).join('') + '</form></body>'

t.test('Sign in with Apple in a real browser: the answer is posted from another site with the SameSite=None binding cookie', async t => {
  const { base, fake, callback } = await appleSignIn(t)
  const page = await (await browser(t)).newPage()
  await page.goto(`${base}/demo`)
  await status(page, 'Not signed in')

  const posted = page.waitForRequest(request => request.url() === callback)
  await page.click('a[data-provider="apple"]')
  const answer = await posted
  t.equal(answer.method(), 'POST', 'the provider posts its answer (form_post)')
  t.equal(await answer.headerValue('origin'), fake.issuer, 'from the provider\'s page')
  t.equal(await answer.headerValue('sec-fetch-site'), 'cross-site', 'a cross-site POST, as Apple\'s is')
  t.match(await answer.headerValue('cookie'), /(^|; )__Host-oauth_binding_[\w-]{22}=[\w-]{43}($|;)/, 'the binding cookie came with it')

  await page.waitForURL(`${base}/demo`)
  await status(page, 'Signed in as ada@privaterelay.appleid.com')
  const cookies = await page.context().cookies()
  t.same(cookies.filter(cookie => cookie.name.includes('oauth_binding')), [], 'the binding cookie is gone')
  t.ok(cookies.some(cookie => cookie.name === 'refresh_token'), 'the session cookie is set')
})

t.test('login CSRF in a real browser: the attacker\'s answer posted in the victim\'s browser signs nobody in', async t => {
  const { app, base, callback } = await appleSignIn(t)
  const chromium = await browser(t)
  const start = `${base}/api/auth/oauth/apple/start`

  /** Starts a flow in `page`'s browser and keeps the provider's answer instead of posting it. */
  const startAndKeep = async (page: Page): Promise<URLSearchParams> => {
    let keep: (answer: URLSearchParams) => void = () => {}
    const kept = new Promise<URLSearchParams>(resolve => { keep = resolve })
    await page.route(callback, async route => {
      keep(new URLSearchParams(route.request().postData() ?? ''))
      await route.abort()
    })
    await page.goto(start)
    const answer = await kept
    await page.unroute(callback)
    return answer
  }

  // The attacker starts a flow in their own browser and keeps the provider's answer.
  const attacker = await (await chromium.newContext()).newPage()
  const answer = await startAndKeep(attacker)
  t.same([...answer.keys()].sort(), ['code', 'state'], 'the attacker holds a code and its state')

  // The victim has a sign-in of their own going (its own binding cookie) and visits the attacker's page.
  const victim = await (await chromium.newContext()).newPage()
  await startAndKeep(victim)
  t.equal((await victim.context().cookies()).filter(cookie => cookie.name.startsWith('__Host-oauth_binding_')).length, 1, 'the victim\'s own binding cookie')
  await victim.route('http://attacker.example/', async route => { await route.fulfill({ contentType: 'text/html', body: postingPage(callback, answer) }) })
  const refused = victim.waitForResponse(callback)
  await victim.goto('http://attacker.example/')
  const response = await refused
  t.equal(response.status(), 400, 'the victim\'s browser did not start that flow')
  t.match(await response.json(), { error: 'Missing or expired OAuth state', code: 'OAUTH_STATE_INVALID' })
  await victim.goto(`${base}/demo`)
  await status(victim, 'Not signed in')
  t.equal((await app.db.selectFrom('sessions').select('id').execute()).length, 0, 'nobody signed in')

  // Nothing was consumed: the same answer still completes in the attacker's own browser.
  await attacker.route('http://attacker.example/', async route => { await route.fulfill({ contentType: 'text/html', body: postingPage(callback, answer) }) })
  await attacker.goto('http://attacker.example/')
  await attacker.waitForURL(`${base}/demo`)
  await status(attacker, 'Signed in as ada@privaterelay.appleid.com')
  t.equal((await app.db.selectFrom('sessions').select('id').execute()).length, 1, 'one session: the attacker\'s, in the attacker\'s browser')
})
