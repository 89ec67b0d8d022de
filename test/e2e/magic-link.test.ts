import { createServer } from 'node:http'
import type { BrowserContext, Page } from 'playwright-core'
import t from 'tap'
import { browser } from './browser.js'
import { build, freePort, type TestContext } from '../helper.js'

/*
 * Login CSRF with a magic link, in a real Chromium (see demo.test.ts). An attacker asks for a
 * link to his own address and a page on another site navigates the victim's browser to it:
 * the victim sees the confirmation page naming the attacker's address, and nobody is signed
 * in. A link asked for from /demo and opened in the same browser signs in at once, as it
 * always did; opened in another browser, it shows the page, whose button signs in.
 */

const status = async (page: Page, text: string): Promise<void> => {
  await page.locator('#status').filter({ hasText: text }).waitFor({ timeout: 10_000 })
}

/** A fresh browser profile, closed at teardown. */
async function profile (t: TestContext, launched: Awaited<ReturnType<typeof browser>>): Promise<{ context: BrowserContext, page: Page }> {
  const context = await launched.newContext()
  t.teardown(async () => { await context.close() })
  return { context, page: await context.newPage() }
}

/** Asks for a link from the demo SPA, as a person would: the preview link it shows. */
async function askFromDemo (page: Page, base: string, email: string): Promise<string> {
  await page.goto(`${base}/demo`)
  await status(page, 'Not signed in')
  await page.fill('#magic-email', email)
  await page.click('#send-link')
  const link = page.locator('#preview-link')
  await link.waitFor()
  return (await link.getAttribute('href'))!
}

const isVerify = (url: string): boolean => new URL(url).pathname === '/api/auth/magic-link/verify'

t.test('magic links in a browser: the attacker\'s link forced on a victim shows the page; one\'s own link signs in at once', async t => {
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const app = await build(t, { PUBLIC_URL: base, FRONTEND_URL: `${base}/demo` })
  await app.listen({ port, host: '127.0.0.1' })
  const launched = await browser(t)

  // The attacker asks for a link to his own address, in his own browser, and reads it from his mailbox (the preview).
  const attacker = await profile(t, launched)
  const attackerLink = await askFromDemo(attacker.page, base, 'attacker@evil.example')

  // A page on another site (localhost is not the site of 127.0.0.1) sends the victim there.
  const evilPort = await freePort()
  const token = new URL(attackerLink).searchParams.get('token')!
  const evil = createServer((request, response) => {
    response.setHeader('content-type', 'text/html')
    // /press: the page's button pressed from elsewhere, a form that posts itself.
    response.end(request.url === '/press'
      ? `<!doctype html><form method="post" action="${base}/api/auth/magic-link/verify"><input type="hidden" name="token" value="${token}"></form><script>document.forms[0].submit()</script>`
      : `<!doctype html><script>location.href = ${JSON.stringify(attackerLink)}</script>`)
  })
  await new Promise<void>(resolve => evil.listen(evilPort, '127.0.0.1', resolve))
  t.teardown(async () => { await new Promise(resolve => evil.close(resolve)) })

  await t.test('the victim, navigated from another site, sees the page naming the attacker\'s address; nobody is signed in', async t => {
    const victim = await profile(t, launched)
    const opened = victim.page.waitForResponse(response => isVerify(response.url()))
    await victim.page.goto(`http://localhost:${evilPort}/`)
    const answer = await opened
    t.equal(answer.status(), 200, 'the confirmation page, not a sign-in')
    t.equal(answer.request().headers().referer, `http://localhost:${evilPort}/`, 'it came from the other site')
    await victim.page.waitForURL(url => isVerify(url.toString()))
    t.equal(await victim.page.textContent('#email'), 'attacker@evil.example', 'the page names the address the link signs in')
    t.notOk((await victim.context.cookies()).some(cookie => cookie.name === 'refresh_token'), 'no session cookie in the victim\'s browser')
    await victim.page.goto(`${base}/demo`)
    await status(victim.page, 'Not signed in')

    const pressed = victim.page.waitForResponse(response => isVerify(response.url()) && response.request().method() === 'POST')
    await victim.page.goto(`http://localhost:${evilPort}/press`)
    t.equal((await pressed).status(), 403, 'nor can the other site press the page\'s button')
    t.equal((await app.db.selectFrom('sessions').select('id').execute()).length, 0, 'no session anywhere')
  })

  await t.test('the attacker\'s link was not used up: in his own browser it signs him in at once', async t => {
    const verified = attacker.page.waitForResponse(response => isVerify(response.url()))
    await attacker.page.click('#preview-link')
    t.equal((await verified).status(), 302, 'signed in without a page')
    await attacker.page.waitForURL(`${base}/demo`)
    await status(attacker.page, 'Signed in as attacker@evil.example')
  })

  await t.test('one\'s own link, asked for from /demo and opened in the same browser, signs in at once', async t => {
    const own = await profile(t, launched)
    await askFromDemo(own.page, base, 'victim@example.com')
    const binding = (await own.context.cookies()).find(cookie => cookie.name.startsWith('__Host-ml_binding_'))
    t.match(binding, { path: '/', httpOnly: true, secure: true, sameSite: 'Lax' }, 'the browser keeps the link\'s __Host- binding cookie (http on a loopback host)')
    t.equal(await own.page.evaluate('document.cookie'), '', 'out of JavaScript\'s reach')
    const verified = own.page.waitForResponse(response => isVerify(response.url()))
    await own.page.click('#preview-link')
    t.equal((await verified).status(), 302, 'no page in between')
    await own.page.waitForURL(`${base}/demo`)
    t.notMatch(own.page.url(), /token/, 'no token in the address bar')
    await status(own.page, 'Signed in as victim@example.com')
    t.notOk((await own.context.cookies()).some(cookie => cookie.name.startsWith('__Host-ml_binding_')), 'the binding cookie is gone')
  })

  await t.test('a link opened in another browser shows the page; its button signs in there', async t => {
    const asker = await profile(t, launched)
    const link = await askFromDemo(asker.page, base, 'phone@example.com')
    const other = await profile(t, launched)
    await other.page.goto(link)
    t.equal(await other.page.textContent('#email'), 'phone@example.com')
    const confirmed = other.page.waitForResponse(response => isVerify(response.url()) && response.request().method() === 'POST')
    await other.page.click('button[type=submit]')
    t.equal((await confirmed).status(), 302, 'the button signs in')
    await other.page.waitForURL(`${base}/demo`)
    await status(other.page, 'Signed in as phone@example.com')
  })
})
