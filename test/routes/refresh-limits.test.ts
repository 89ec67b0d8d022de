import { randomBytes } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { build, productionSkip } from '../helper.js'
import { register } from '../auth-helper.js'

/*
 * Who pays for a refresh or a logout (SPEC decision 12): a valid session presented is
 * counted against that session only (REFRESH_MAX_PER_SESSION), never against the anonymous
 * per-IP budget — an office behind one NAT address keeps its users signed in; anything else
 * counts against the IP (the sign-in budget and the anonymous budget), and never against the
 * session it names — a session id is no secret (every access token's `sid`, the refresh
 * token's prefix).
 */

function tally (statuses: number[]): Record<number, number> {
  const counts: Record<number, number> = {}
  for (const status of statuses) counts[status] = (counts[status] ?? 0) + 1
  return counts
}

const refreshByBody = async (app: FastifyInstance, refreshToken: string, remoteAddress: string): Promise<LightMyRequestResponse> =>
  await app.inject({ method: 'POST', url: '/api/auth/refresh', remoteAddress, payload: { refreshToken } })

t.test('200 garbage refresh tokens naming a victim\'s session: the victim still refreshes, the attacker\'s IP meets 429', async t => {
  const app = await build(t, { LOGIN_MAX_PER_IP: '30', REFRESH_MAX_PER_SESSION: '3' })
  const victim = await register(app, 'victim@example.com')
  const sessionId = victim.refreshToken.split('.')[0]!
  const attacker = '198.51.100.66'
  const statuses: number[] = []
  for (let attempt = 0; attempt < 200; attempt++) {
    statuses.push((await refreshByBody(app, `${sessionId}.${randomBytes(32).toString('base64url')}`, attacker)).statusCode)
  }
  t.same(tally(statuses), { 401: 30, 429: 170 }, 'thirty guesses (LOGIN_MAX_PER_IP), then the attacker\'s IP is refused')
  const refused = await refreshByBody(app, `${sessionId}.${randomBytes(32).toString('base64url')}`, attacker)
  t.equal(refused.json().error, 'Too many sign-in attempts from this IP, please try again later.')

  // Not one of the 200 was charged to the session: its three refreshes are all there.
  let { refreshToken } = victim
  for (let refresh = 1; refresh <= 3; refresh++) {
    const answer = await refreshByBody(app, refreshToken, '203.0.113.20')
    t.equal(answer.statusCode, 200, `the victim's refresh ${refresh} of 3`)
    refreshToken = answer.json().refreshToken
  }
  const fourth = await refreshByBody(app, refreshToken, '203.0.113.20')
  t.equal(fourth.statusCode, 429, 'the fourth valid one is the session\'s own limit')
  t.same(fourth.json(), { error: 'Too many refreshes for this session, please try again later.', code: 'RATE_LIMITED' })
  t.ok(Number(fourth.headers['retry-after']) > 0 && Number(fourth.headers['retry-after']) <= 900, 'Retry-After')
})

t.test('a valid refresh from an IP past its budget still succeeds', async t => {
  const app = await build(t, { LOGIN_MAX_PER_IP: '2' })
  const user = await register(app, 'behind-nat@example.com')
  const shared = '198.51.100.1'
  for (let attempt = 0; attempt < 3; attempt++) await refreshByBody(app, `${user.refreshToken.split('.')[0]!}.${randomBytes(32).toString('base64url')}`, shared)
  t.equal((await refreshByBody(app, 'garbage', shared)).statusCode, 429, 'the address is past its sign-in budget')
  t.equal((await refreshByBody(app, user.refreshToken, shared)).statusCode, 200, 'a valid token from it is the session\'s business')
})

for (const mode of ['test', 'production'] as const) {
  t.test(`${mode}: 150 users behind one address all refresh and log out by cookie; garbage from it meets 429`, { skip: mode === 'production' && productionSkip }, async t => {
    const origin = 'https://auth.example.com'
    const app = await build(t, { NODE_ENV: mode, PUBLIC_URL: origin, RATE_LIMIT_MAX: '5', LOGIN_MAX_PER_IP: '30' })
    t.equal(app.config.NODE_ENV, mode)
    // Each signed in from home (an address of their own)…
    const users = await Promise.all(Array.from({ length: 150 }, async (_, index) => {
      const response = await app.inject({
        method: 'POST',
        url: '/api/auth/register',
        remoteAddress: `10.0.${index >> 8}.${index & 0xff}`,
        payload: { email: `colleague${index}@example.com`, password: 'correct horse battery staple 42' }
      })
      if (response.statusCode !== 201) throw new Error(`register: ${response.statusCode} ${response.body}`)
      return response.json().refreshToken as string
    }))
    // …and now all work behind the office's one address, as their browsers do: the cookie,
    // from the app's origin.
    const office = '203.0.113.77'
    const byCookie = async (url: string, refreshToken: string) => await app.inject({
      method: 'POST', url, remoteAddress: office, headers: { origin, cookie: `refresh_token=${refreshToken}` }
    })
    const cookieOf = (response: LightMyRequestResponse): string => {
      const header = ([] as string[]).concat(response.headers['set-cookie'] ?? []).find(value => value.startsWith('refresh_token='))!
      return decodeURIComponent(header.slice('refresh_token='.length, header.indexOf(';')))
    }
    const first = await Promise.all(users.map(async token => await byCookie('/api/auth/refresh', token)))
    t.same(tally(first.map(answer => answer.statusCode)), { 200: 150 }, 'all 150 refresh (RATE_LIMIT_MAX is 5)')
    t.equal(first[0]!.headers['ratelimit-limit'], undefined, 'a valid refresh is not counted per IP')

    // Garbage from the same address is anonymous traffic: five, then 429.
    const garbage = []
    for (let attempt = 0; attempt < 8; attempt++) garbage.push(await byCookie('/api/auth/refresh', `garbage-${attempt}`))
    t.same(garbage.map(answer => answer.statusCode), [401, 401, 401, 401, 401, 429, 429, 429])
    t.equal(garbage[0]!.headers['ratelimit-limit'], '5', 'with the anonymous budget\'s headers')
    t.same(garbage[5]!.json(), { error: 'Too many requests from this IP, please try again later.', code: 'RATE_LIMITED' })
    t.equal((await app.inject({ url: '/api/auth/providers', remoteAddress: office })).statusCode, 429, 'one anonymous budget with the rest of /api')

    // The office's users are not signed out by it: they refresh again, then log out.
    const second = await Promise.all(first.map(async answer => await byCookie('/api/auth/refresh', cookieOf(answer))))
    t.same(tally(second.map(answer => answer.statusCode)), { 200: 150 }, 'every user refreshes again')
    const logouts = await Promise.all(second.map(async answer => await byCookie('/api/auth/logout', cookieOf(answer))))
    t.same(tally(logouts.map(answer => answer.statusCode)), { 200: 150 }, 'and logs out')
    const rows = await app.db.selectFrom('sessions').select('id').where('revoked_reason', '=', 'logout').execute()
    t.equal(rows.length, 150, 'each logout ended its session')
    t.equal((await byCookie('/api/auth/logout', cookieOf(second[0]!))).statusCode, 429, 'a logout that names no live session is anonymous traffic')
  })
}
