import { sql } from 'kysely'
import t from 'tap'
import { build, statementsDuring } from '../helper.js'
import { login, register } from '../auth-helper.js'

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
