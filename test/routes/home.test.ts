import t from 'tap'
import { build, embedded, productionSkip, redisUrl } from '../helper.js'

/*
 * `/` (SPEC decision 14): a small page in every mode that says what is running and links to
 * the API docs and the demo; it is where a sign-in lands by default. A page's security
 * headers, no token, no cookie, no per-IP limit.
 */

for (const mode of ['development', 'production'] as const) {
  t.test(`GET / answers a page with links to /docs and /demo (${mode})`, { skip: mode === 'production' && productionSkip }, async t => {
    const app = await build(t, { NODE_ENV: mode, RATE_LIMIT_MAX: '2' })
    const page = await app.inject({ url: '/' })
    t.equal(page.statusCode, 200)
    t.equal(page.headers['content-type'], 'text/html; charset=utf-8')
    t.match(page.body, /^<!doctype html>/)
    t.match(page.body, '<a href="/docs">')
    t.match(page.body, '<a href="/demo">')
    t.match(page.body, `running in <strong>${mode}</strong> mode`)
    const backing = embedded || redisUrl === undefined ? /on the embedded default \(/ : /on PostgreSQL and Redis\./
    t.match(page.body, backing, 'says whether it runs on the embedded default')
    t.match(page.body, /refresh_token<\/code> cookie/, 'says that a sign-in sets the session cookie')
    t.match(page.body, /\/demo<\/a> uses it/, 'and that /demo uses it')

    const csp = page.headers['content-security-policy'] as string
    t.match(csp, /default-src 'none'/)
    t.match(csp, /style-src 'sha256-[A-Za-z0-9+/]+=*'/, 'its one inline style by hash, nothing inline else')
    t.notMatch(csp, /unsafe-inline|script-src/)
    t.match(csp, /frame-ancestors 'none'/)
    t.equal(page.headers['x-frame-options'], 'DENY')
    t.equal(page.headers['x-content-type-options'], 'nosniff')
    t.equal(page.headers['cross-origin-opener-policy'], 'same-origin', 'the document headers of the other pages')
    t.equal(page.headers['referrer-policy'], 'no-referrer')
    if (mode === 'production') t.match(page.headers['strict-transport-security'], /max-age=/)

    t.equal(page.headers['set-cookie'], undefined, 'no cookie')
    t.notMatch(page.body, /eyJ|access_token=|refreshToken/, 'no token')
    t.equal(page.headers['ratelimit-limit'], undefined, 'not under the per-IP limit of /api/*')
    for (let i = 0; i < 5; i++) t.equal((await app.inject({ url: '/' })).statusCode, 200)
    t.equal((await app.inject({ url: '/api/auth/providers' })).statusCode, 200)
    t.equal((await app.inject({ url: '/api/auth/providers' })).statusCode, 200)
    t.equal((await app.inject({ url: '/api/auth/providers' })).statusCode, 429, 'while /api/* is limited (RATE_LIMIT_MAX=2)')
    t.equal((await app.inject({ url: '/' })).statusCode, 200, 'and / still answers')

    const head = await app.inject({ method: 'HEAD', url: '/' })
    t.equal(head.statusCode, 200)
  })
}
