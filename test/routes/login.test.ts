import type { FastifyInstance } from 'fastify'
import { sql } from 'kysely'
import t from 'tap'
import { build, statementsDuring, twoInstancesSkip } from '../helper.js'
import { login, PASSWORD, register } from '../auth-helper.js'

/*
 * What a password sign-in writes, and that it is all or nothing: two statements (the
 * account with its workspace, then last login + session row + audit row in one), run as
 * prepared statements; the session stored in the store while its row is written, and
 * undone when either write fails.
 */

t.test('a sign-in runs two statements, prepared once per connection', async t => {
  // One connection, so that what it has prepared can be read back through the same pool.
  const app = await build(t, { DATABASE_POOL_MAX: '1' })
  t.equal((await register(app, 'prepared@example.com')).status, 201)
  const statements = await statementsDuring(app, async () => {
    t.equal((await login(app, 'prepared@example.com')).status, 200)
  })
  t.equal(statements.length, 2, statements.join('\n'))
  t.match(statements[0], /^select .* from "users" where "email" = \$\d+$/)
  t.match(statements[1], /^with "signed_in" as \(update "users"/)
  t.equal((await login(app, 'prepared@example.com')).status, 200, 'again, on the prepared statements')
  const { rows } = await sql<{ name: string, statement: string }>`SELECT name, statement FROM pg_prepared_statements ORDER BY statement`.execute(app.db)
  t.same(rows.map(row => row.statement).sort(), [...statements].sort(), 'exactly the sign-in\'s two statements are prepared')
  for (const row of rows) t.match(row.name, /^gh_[A-Za-z0-9_-]{22}$/)

  const plain = await build(t, { DATABASE_POOL_MAX: '1', DATABASE_PREPARED_STATEMENTS: 'false' })
  t.equal((await register(plain, 'plain@example.com')).status, 201)
  t.equal((await login(plain, 'plain@example.com')).status, 200)
  const none = await sql<{ name: string }>`SELECT name FROM pg_prepared_statements`.execute(plain.db)
  t.same(none.rows, [], 'DATABASE_PREPARED_STATEMENTS=false prepares nothing')
})

t.test('a migration that changes a returned column\'s type does not break prepared sign-ins', async t => {
  const app = await build(t, { DATABASE_POOL_MAX: '1' })
  t.equal((await register(app, 'migrated@example.com')).status, 201)
  t.equal((await login(app, 'migrated@example.com')).status, 200, 'prepares the sign-in\'s statements')
  // What another instance's migration may do while this one runs: both statements return it.
  await sql`ALTER TABLE users ALTER COLUMN name TYPE varchar(300)`.execute(app.db)
  const again = await login(app, 'migrated@example.com')
  t.equal(again.status, 200, again.response.body)
  t.equal(again.user.email, 'migrated@example.com')
  t.equal((await login(app, 'migrated@example.com')).status, 200, 'and after')
})

t.test('a sign-in whose rows cannot be written leaves no session behind', async t => {
  const app = await build(t)
  const { user } = await register(app, 'refused@example.com')
  const before = await app.db.selectFrom('users').select('last_login_at').where('id', '=', user.id).executeTakeFirstOrThrow()
  // The audit row of a sign-in fails, as a full disk or a lost connection would.
  await sql`CREATE FUNCTION refuse_sign_in() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.action = 'auth.login' THEN RAISE EXCEPTION 'audit refused'; END IF; RETURN NEW; END $$`.execute(app.db)
  await sql`CREATE TRIGGER refuse_sign_in BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_sign_in()`.execute(app.db)
  const created: string[] = []
  const createSession = app.store.createSession.bind(app.store)
  app.store.createSession = async (sessionId, state, tokenHash) => {
    created.push(sessionId)
    await createSession(sessionId, state, tokenHash)
  }

  const refused = await login(app, 'refused@example.com')
  t.equal(refused.status, 500)
  t.notMatch(refused.response.body, /audit refused|audit_log|signed_in/, 'no SQL or database message in the answer')
  t.equal(refused.response.headers['set-cookie'], undefined)
  t.equal(created.length, 1, 'the session was stored while its row was written')
  t.equal(await app.store.getSession(created[0]!), null, 'and deleted when the row failed')
  const rows = await app.db.selectFrom('sessions').select('id').where('user_id', '=', user.id).execute()
  t.equal(rows.length, 1, 'only the registration\'s session row')
  t.not(rows[0]!.id, created[0])
  const after = await app.db.selectFrom('users').select('last_login_at').where('id', '=', user.id).executeTakeFirstOrThrow()
  t.same(after.last_login_at, before.last_login_at, 'last login untouched: the statement is all or nothing')

  await sql`DROP TRIGGER refuse_sign_in ON audit_log`.execute(app.db)
  t.equal((await login(app, 'refused@example.com')).status, 200, 'signs in once the database accepts the rows')
})

t.test('a sign-in whose session the store cannot keep leaves a revoked row, not a live one', async t => {
  const app = await build(t)
  const { user } = await register(app, 'storeless@example.com')
  const createSession = app.store.createSession.bind(app.store)
  app.store.createSession = async () => { throw Object.assign(new Error('connection lost'), { code: 'ECONNRESET' }) }
  const refused = await login(app, 'storeless@example.com')
  t.ok(refused.status >= 500, `answered ${refused.status}`)
  t.equal(refused.response.headers['set-cookie'], undefined)
  app.store.createSession = createSession
  const rows = await app.db.selectFrom('sessions').select(['id', 'revoked_at', 'revoked_reason']).where('user_id', '=', user.id).orderBy('created_at').execute()
  t.equal(rows.length, 2)
  t.equal(rows[0]!.revoked_at, null, 'the registration\'s session lives')
  t.not(rows[1]!.revoked_at, null, 'the failed sign-in\'s row is revoked')
  t.equal(rows[1]!.revoked_reason, 'revoked')
  const listed = await app.inject({ method: 'GET', url: '/api/auth/sessions', headers: { authorization: `Bearer ${(await login(app, 'storeless@example.com')).accessToken}` } })
  t.equal(listed.statusCode, 200)
  t.equal(listed.json().sessions.length, 2, 'the sessions list shows the live ones only')
})

/*
 * The per-account limit holds under concurrency (SPEC decision 12): each attempt reserves its
 * count on the address before the hash, so parallel guesses, on any number of instances,
 * get exactly LOGIN_MAX_PER_ACCOUNT verifications per window. The audit rows of failed
 * sign-ins count the verifications.
 */
const WRONG = 'not the right password 1'

async function failedSignIns (app: FastifyInstance): Promise<number> {
  const rows = await app.db.selectFrom('audit_log').select('id').where('action', '=', 'auth.login_failed').execute()
  return rows.length
}

function tally (statuses: number[]): Record<number, number> {
  const counts: Record<number, number> = {}
  for (const status of statuses) counts[status] = (counts[status] ?? 0) + 1
  return counts
}

t.test('60 parallel wrong passwords against one account: exactly LOGIN_MAX_PER_ACCOUNT are verified, the rest 429', async t => {
  const app = await build(t)
  t.equal(app.config.LOGIN_MAX_PER_ACCOUNT, 10, 'the seed\'s ten')
  await register(app, 'besieged@example.com')
  const answers = await Promise.all(Array.from({ length: 60 }, async () => await login(app, 'besieged@example.com', WRONG)))
  t.same(tally(answers.map(answer => answer.status)), { 401: 10, 429: 50 })
  t.equal(await failedSignIns(app), 10, 'ten passwords were verified, not 59')
  const refused = answers.find(answer => answer.status === 429)!.response
  t.same(refused.json(), { error: 'Too many failed sign-in attempts for this account, please try again later.', code: 'RATE_LIMITED' })
  t.ok(Number(refused.headers['retry-after']) > 0 && Number(refused.headers['retry-after']) <= 900, 'Retry-After: what is left of the window')
  t.equal((await login(app, 'besieged@example.com')).status, 429, 'the right password waits too')

  // An address without an account is limited alike (the limit reveals nothing).
  const unknown = await Promise.all(Array.from({ length: 30 }, async () => await login(app, 'nobody@example.com', WRONG)))
  t.same(tally(unknown.map(answer => answer.status)), { 401: 10, 429: 20 })
})

t.test('60 parallel wrong passwords over two instances: the limit holds across them', { skip: twoInstancesSkip }, async t => {
  const a = await build(t)
  const b = await build(t, { DATABASE_URL: a.config.DATABASE_URL, REDIS_PREFIX: a.config.REDIS_PREFIX })
  await register(a, 'shared@example.com')
  const answers = await Promise.all(Array.from({ length: 60 }, async (_, index) => await login(index % 2 === 0 ? a : b, 'shared@example.com', WRONG)))
  t.same(tally(answers.map(answer => answer.status)), { 401: 10, 429: 50 })
  t.equal(await failedSignIns(a), 10, 'ten verifications over both instances')
})

t.test('LOGIN_MAX_PER_ACCOUNT counts failures: nine, then the right password signs in and starts over', async t => {
  const app = await build(t)
  await register(app, 'forgetful@example.com')
  for (let attempt = 0; attempt < 9; attempt++) t.equal((await login(app, 'forgetful@example.com', WRONG)).status, 401)
  t.equal((await login(app, 'forgetful@example.com')).status, 200, 'the tenth attempt, with the right password, signs in')
  const again = []
  for (let attempt = 0; attempt < 11; attempt++) again.push((await login(app, 'forgetful@example.com', WRONG)).status)
  t.same(again, [...Array(10).fill(401), 429], 'the success cleared the count: ten more failures before the lock')

  // An inactive account with the right password is refused (403), and that is no failure.
  const { user } = await register(app, 'dormant@example.com')
  await app.db.updateTable('users').set({ is_active: false }).where('id', '=', user.id).execute()
  for (let attempt = 0; attempt < 12; attempt++) t.equal((await login(app, 'dormant@example.com')).status, 403)
  const failures = []
  for (let attempt = 0; attempt < 11; attempt++) failures.push((await login(app, 'dormant@example.com', WRONG)).status)
  t.same(failures, [...Array(10).fill(401), 429], 'its ten failures are still ahead of it')
})

t.test('an attempt refused for its IP spends nothing of the account\'s limit', async t => {
  const app = await build(t, { LOGIN_MAX_PER_IP: '2', LOGIN_MAX_PER_ACCOUNT: '3' })
  await register(app, 'victim@example.com')
  const fromAttacker = async () => (await app.inject({ method: 'POST', url: '/api/auth/login', remoteAddress: '198.51.100.7', payload: { email: 'victim@example.com', password: WRONG } })).statusCode
  const statuses = []
  for (let attempt = 0; attempt < 20; attempt++) statuses.push(await fromAttacker())
  t.same(statuses, [401, 401, ...Array(18).fill(429)], 'two guesses, then the IP\'s limit')
  t.equal(await failedSignIns(app), 2)
  const fromOwner = await app.inject({ method: 'POST', url: '/api/auth/login', remoteAddress: '203.0.113.5', payload: { email: 'victim@example.com', password: PASSWORD } })
  t.equal(fromOwner.statusCode, 200, 'the owner, one failure short of the lock, still signs in')
})

t.test('parallel attempts from an IP past its budget reserve nothing on the account: the owner still signs in', async t => {
  const app = await build(t, { LOGIN_MAX_PER_IP: '5', LOGIN_MAX_PER_ACCOUNT: '10' })
  await register(app, 'victim@example.com')
  const attempt = async (ip: string, email: string, password: string) =>
    await app.inject({ method: 'POST', url: '/api/auth/login', remoteAddress: ip, payload: { email, password } })
  // The attacker spends the IP's budget on another address, then fires at the victim at once.
  for (let guess = 0; guess < 5; guess++) t.equal((await attempt('198.51.100.7', 'nobody@example.com', WRONG)).statusCode, 401)
  for (const burst of [11, 21, 40]) {
    const answers = await Promise.all(Array.from({ length: burst }, async () => (await attempt('198.51.100.7', 'victim@example.com', WRONG)).statusCode))
    t.same(tally(answers), { 429: burst }, `${burst} at once: every one refused for the IP`)
  }
  t.equal(await failedSignIns(app), 5, 'no password of the victim\'s was checked')
  const fromOwner = await attempt('203.0.113.5', 'victim@example.com', PASSWORD)
  t.equal(fromOwner.statusCode, 200, 'the owner signs in from another IP')
  t.equal(fromOwner.headers['retry-after'], undefined)
})

t.test('the sign-in limit per IP counts an IPv6 client per /64 (RATE_LIMIT_IPV6_PREFIX)', async t => {
  const app = await build(t, { LOGIN_MAX_PER_IP: '2', TRUST_PROXY: 'true' })
  const from = async (ip: string, url = '/api/auth/login') => (await app.inject({
    method: 'POST', url, headers: { 'x-forwarded-for': ip }, payload: { email: 'rotating@example.com', password: WRONG }
  })).statusCode
  t.equal(await from('2001:db8:5:6::1'), 401)
  t.equal(await from('2001:db8:5:6:aaaa:bbbb:cccc:dddd'), 401)
  t.equal(await from('2001:db8:5:6:1234::9'), 429, 'a new address in the same /64 is the same client')
  t.equal(await from('2001:db8:5:6:1234::10', '/api/auth/magic-link/request'), 429, 'magic-link requests share the budget')
  t.equal(await from('2001:db8:5:7::1'), 401, 'another /64 is another client')
  t.equal(await from('203.0.113.8'), 401)
  t.equal(await from('::ffff:203.0.113.8'), 401, 'an IPv4 address written as IPv6 is that IPv4 address…')
  t.equal(await from('203.0.113.8'), 429, '…whose budget it spent')
  t.equal(await from('203.0.113.9'), 401, 'IPv4 addresses count one by one')

  const exact = await build(t, { LOGIN_MAX_PER_IP: '1', TRUST_PROXY: 'true', RATE_LIMIT_IPV6_PREFIX: '128' })
  const at = async (ip: string) => (await exact.inject({ method: 'POST', url: '/api/auth/login', headers: { 'x-forwarded-for': ip }, payload: { email: 'x@example.com', password: WRONG } })).statusCode
  t.same([await at('2001:db8:5:6::1'), await at('2001:db8:5:6::1'), await at('2001:db8:5:6::2')], [401, 429, 401], '128: each address')
})
