import { spawn } from 'node:child_process'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import { hashPassword } from '../../../src/auth/passwords.js'
import { openEmbeddedPostgres } from '../../../src/db/embedded.js'
import { projectRoot } from '../../../src/paths.js'
import { bearer, login, PASSWORD } from '../../auth-helper.js'
import { build, tempDir, testDatabase, testSigningKey, type TestContext } from '../../helper.js'

/*
 * `npm run admin -- create`: the first admin of a production deployment. The command runs
 * as a child process, as an operator runs it (the password piped on standard input or set
 * in GATEHOUSE_ADMIN_PASSWORD, never on the command line); the app then signs the admin in.
 */

// Every command is a Node process of its own (seconds to start through tsx on a busy machine),
// and the embedded case starts PGlite three times: more than the default budget of a file.
t.setTimeout(240_000)

interface Run { code: number | null, stdout: string, stderr: string }

async function admin (args: string[], env: Record<string, string>, input = ''): Promise<Run> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/admin.ts', ...args], {
    cwd: projectRoot,
    // A clean environment: nothing but what a fresh shell has and what the test sets.
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', NODE_ENV: 'test', ...env },
    stdio: ['pipe', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', chunk => { stdout += String(chunk) })
  child.stderr.on('data', chunk => { stderr += String(chunk) })
  // The command does not read its input when it needs no password.
  child.stdin.on('error', () => {})
  child.stdin.end(input)
  const code = await new Promise<number | null>(resolve => child.on('close', resolve))
  return { code, stdout, stderr }
}

/** The environment of a production deployment (docker-compose.yml); Redis and SMTP are never contacted. */
async function production (t: TestContext, databaseUrl: string): Promise<Record<string, string>> {
  return {
    NODE_ENV: 'production',
    DATABASE_URL: databaseUrl,
    REDIS_URL: 'redis://127.0.0.1:9',
    SMTP_URL: 'smtp://127.0.0.1:9',
    JWT_PRIVATE_KEY: testSigningKey,
    DATA_DIR: await tempDir(t)
  }
}

async function rows<T extends pg.QueryResultRow> (url: string, text: string, values: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<T>(text, values)).rows
  } finally {
    await client.end()
  }
}

t.test('create: a piped password makes an ADMIN of a new address, who signs in', async t => {
  const url = await testDatabase(t, { migrated: false })
  const env = await production(t, url)
  const run = await admin(['create', '--email', ' Root@Example.com ', '--name', 'Root'], env, `${PASSWORD}\n`)
  t.equal(run.code, 0, run.stderr)
  t.match(run.stdout, /^created ADMIN root@example\.com \(user [0-9a-f-]{36}\) \(the database was migrated to version \d+\)\n$/, 'one line, the migrations applied as npm run migrate does')
  t.equal(run.stderr, '')
  // Every run before the app is built: an embedded test database serves one connection at a time.
  const again = await admin(['create', '--email', 'root@example.com'], env, 'another long password 99\n')
  t.equal(again.code, 1, 'an existing address is an error without --promote')
  t.match(again.stderr, /^A user with e-mail root@example\.com already exists, and its address has never been verified: anyone could have registered it/,
    'said with whether the address was ever verified (one made by this command never was)')
  t.equal(again.stdout, '')

  const app = await build(t, { DATABASE_URL: url })
  const signedIn = await login(app, 'root@example.com')
  t.equal(signedIn.status, 200)
  t.match(signedIn.user, { email: 'root@example.com', role: 'ADMIN' })
  t.equal((await app.inject({ method: 'GET', url: '/api/admin/users', headers: bearer(signedIn.accessToken) })).statusCode, 200, 'the admin API answers')
  const [user] = await app.db.selectFrom('users').select(['id', 'name', 'password_hash']).where('email', '=', 'root@example.com').execute()
  t.equal(user?.name, 'Root')
  t.match(user?.password_hash, /^\$argon2id\$/, 'an argon2id hash')
  const events = await app.db.selectFrom('audit_log').select(['action', 'actor_user_id', 'subject_id']).where('action', 'like', 'admin.%').execute()
  t.same(events, [{ action: 'admin.created_by_cli', actor_user_id: null, subject_id: user?.id }], 'one audit row')
  t.equal((await login(app, 'root@example.com', 'another long password 99')).status, 401, 'the refused second run changed nothing')
})

t.test('create: refuses what registration refuses, and changes nothing', async t => {
  const url = await testDatabase(t)
  const env = await production(t, url)
  const cases: Array<[string, RegExp]> = [
    ['short\n', /^Password must be at least 8 characters long\n$/],
    ['password123\n', /^Password is too common/],
    ['', /^No password given for the new admin root@example\.com: pipe it on standard input, type it at the prompt, or set GATEHOUSE_ADMIN_PASSWORD/]
  ]
  for (const [input, message] of cases) {
    const run = await admin(['create', '--email', 'root@example.com'], env, input)
    t.equal(run.code, 1, JSON.stringify(input))
    t.match(run.stderr, message)
    t.equal(run.stdout, '')
  }
  const minimum = await admin(['create', '--email', 'root@example.com'], { ...env, PASSWORD_MIN_LENGTH: '40' }, `${PASSWORD}\n`)
  t.match(minimum.stderr, /at least 40 characters/, 'PASSWORD_MIN_LENGTH applies as it does to registration')

  // Refused before the configuration is read: these never reach the database, so they run at once.
  const [usage, badEmail, unknown, unverifiedAlone] = await Promise.all([
    admin(['create'], env),
    admin(['create', '--email', 'not an address'], env, `${PASSWORD}\n`),
    admin(['create', '--email', 'root@example.com', '--password', 'x'], env),
    admin(['create', '--email', 'root@example.com', '--promote-unverified'], env, `${PASSWORD}\n`)
  ])
  t.equal(usage.code, 1)
  t.match(usage.stderr, /^usage: npm run admin -- create --email/)
  t.match(usage.stderr, /--promote-unverified +with --promote, also an account whose address was never verified:\s+only for an account you registered yourself/, 'the usage text says what the flag is for')
  t.equal(unverifiedAlone.code, 1)
  t.match(unverifiedAlone.stderr, /^--promote-unverified goes with --promote\n/, 'the second flag is never enough on its own')
  t.equal(badEmail.code, 1)
  t.match(badEmail.stderr, /--email must be an e-mail address/)
  t.equal(unknown.code, 1, 'no password option: it would end up in the shell history')
  t.match(unknown.stderr, /Unknown option '--password'/)

  t.same(await rows(url, 'SELECT email FROM users'), [], 'no user was created')
})

t.test('--promote: an existing member becomes ADMIN and keeps its password', async t => {
  const url = await testDatabase(t)
  const env = await production(t, url)
  await rows(url, 'INSERT INTO users (email, name, password_hash, email_verified) VALUES ($1, $2, $3, true)', ['member@example.com', 'Member', await hashPassword(PASSWORD)])

  const given = await admin(['create', '--email', 'member@example.com', '--promote'], { ...env, GATEHOUSE_ADMIN_PASSWORD: 'a password from the secret store' })
  t.equal(given.code, 1, 'a password given for an account that keeps its own is an error, not ignored')
  t.match(given.stderr, /^--promote keeps the account's password; do not give one \(unset GATEHOUSE_ADMIN_PASSWORD\)\. member@example\.com already exists; nothing was changed\.\n$/)
  t.same(await rows(url, 'SELECT role FROM users'), [{ role: 'MEMBER' }])

  // Standard input is not read when promoting: what is piped there changes nothing.
  const run = await admin(['create', '--email', 'member@example.com', '--promote'], env, 'another long password 99\n')
  t.equal(run.code, 0, run.stderr)
  t.match(run.stdout, /^promoted member@example\.com \(user [0-9a-f-]{36}\) from MEMBER to ADMIN; its password was not changed\n$/,
    'no password is asked for, and the line says the password stays')
  t.equal(run.stderr, '', 'no warning for a verified address')
  const [event] = await rows<{ action: string, details: unknown }>(url, "SELECT action, details FROM audit_log WHERE action LIKE 'admin.%'")
  t.match(event, { action: 'admin.promoted_by_cli', details: { email: 'member@example.com', before: { role: 'MEMBER' }, after: { role: 'ADMIN' } } })

  const twice = await admin(['create', '--email', 'member@example.com', '--promote'], env)
  t.equal(twice.code, 0)
  t.match(twice.stdout, /is already an ADMIN; nothing changed\n$/)

  // A new address with --promote is created; GATEHOUSE_ADMIN_PASSWORD serves automation.
  const automated = await admin(['create', '--email', 'ops@example.com', '--promote'], { ...env, GATEHOUSE_ADMIN_PASSWORD: 'a password from the secret store' })
  t.equal(automated.code, 0, automated.stderr)
  t.match(automated.stdout, /^created ADMIN ops@example\.com/)

  const app = await build(t, { DATABASE_URL: url })
  t.match((await login(app, 'member@example.com')).user, { role: 'ADMIN' }, 'signs in with the password it had')
  t.equal((await login(app, 'member@example.com', 'another long password 99')).status, 401, 'the piped line was not taken as its password')
  t.match((await login(app, 'ops@example.com', 'a password from the secret store')).user, { role: 'ADMIN' })
  t.equal((await app.db.selectFrom('audit_log').select('id').where('action', 'like', 'admin.%').execute()).length, 2, 'nothing audited for a no-op')
})

t.test('--promote: an account whose address was never verified is refused, unless --promote-unverified says it is yours', async t => {
  // The attack: someone registers the address the operator is about to use, with a password of their own.
  const url = await testDatabase(t)
  const env = await production(t, url)
  await rows(url, 'INSERT INTO users (email, name, password_hash) VALUES ($1, $2, $3)', ['boss@example.com', 'Boss', await hashPassword('the attacker password 77')])
  const unchanged = async (): Promise<void> => {
    t.same(await rows(url, 'SELECT role FROM users'), [{ role: 'MEMBER' }], 'still a MEMBER')
    t.same(await rows(url, "SELECT id FROM audit_log WHERE action LIKE 'admin.%'"), [], 'nothing audited')
  }

  const plain = await admin(['create', '--email', 'Boss@Example.com'], env, 'pw of the operator 1234\n')
  t.equal(plain.code, 1)
  t.match(plain.stderr, /^A user with e-mail boss@example\.com already exists, and its address has never been verified: anyone could have registered it, and would know its password\. Only if you registered it yourself, add --promote --promote-unverified/,
    'the refusal says the address is unverified and what that means')
  t.notMatch(plain.stderr, /add --promote to make/, 'no bare --promote suggested')

  const promote = await admin(['create', '--email', 'boss@example.com', '--promote'], env, 'pw of the operator 1234\n')
  t.equal(promote.code, 1, '--promote alone refuses an unverified address')
  t.match(promote.stderr, /^Refused: the address boss@example\.com \(user [0-9a-f-]{36}\) has never been verified, so anyone could have registered it, .* run the command again with --promote --promote-unverified; .* Nothing was changed\.\n$/)
  t.equal(promote.stdout, '')
  await unchanged()

  const withPassword = await admin(['create', '--email', 'boss@example.com', '--promote', '--promote-unverified'], { ...env, GATEHOUSE_ADMIN_PASSWORD: 'pw of the operator 1234' })
  t.equal(withPassword.code, 1)
  t.match(withPassword.stderr, /^--promote keeps the account's password; do not give one/)
  await unchanged()

  // The operator did register it: the warning comes first, then the change.
  const allowed = await admin(['create', '--email', 'boss@example.com', '--promote', '--promote-unverified'], env)
  t.equal(allowed.code, 0, allowed.stderr)
  t.match(allowed.stderr, /^Warning: the address boss@example\.com \(user [0-9a-f-]{36}\) has never been verified: anyone could have registered it, and its password, whoever chose it, will sign in as ADMIN\./)
  t.match(allowed.stdout, /^promoted boss@example\.com \(user [0-9a-f-]{36}\) from MEMBER to ADMIN; its password was not changed\n$/, 'the warning came before; the line says what was done')
  const [event] = await rows<{ details: unknown }>(url, "SELECT details FROM audit_log WHERE action = 'admin.promoted_by_cli'")
  t.match(event?.details, { email: 'boss@example.com', emailVerified: false }, 'the audit row records that the address was unverified')
})

t.test('the embedded database: refused while a server holds it, then written', async t => {
  const dataDir = await tempDir(t)
  const env = { DATA_DIR: dataDir }
  // What a running server holds (plugins/db.ts opens it the same way).
  const running = await openEmbeddedPostgres(join(dataDir, 'pglite'))
  let closed = false
  t.teardown(async () => { if (!closed) await running.close() })
  const refused = await admin(['create', '--email', 'root@example.com'], env, `${PASSWORD}\n`)
  t.equal(refused.code, 1)
  t.match(refused.stderr, new RegExp(`^The embedded database in .* is held by another Gatehouse process \\(pid ${process.pid}\\), most likely the running server, .*: stop the server, run this command, then start the server again\\.\\n$`))
  await running.close()
  closed = true

  const run = await admin(['create', '--email', 'root@example.com'], env, `${PASSWORD}\n`)
  t.equal(run.code, 0, run.stderr)
  t.match(run.stdout, /^created ADMIN root@example\.com/)
  const app = await build(t, { DATABASE_URL: undefined, DATA_DIR: dataDir })
  t.match((await login(app, 'root@example.com')).user, { role: 'ADMIN' }, 'the server finds the admin in its data folder')
})
