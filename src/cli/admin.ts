import { existsSync } from 'node:fs'
import { userInfo } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import type { Kysely } from 'kysely'
import { Value } from 'typebox/value'
import { hashPassword, passwordProblem } from '../auth/passwords.js'
import { audit, normalizeEmail } from '../auth/users.js'
import { ConfigError, loadConfig, type Config } from '../config.js'
import { DataDirInUseError, openEmbeddedPostgres } from '../db/embedded.js'
import { createDatabase, createPool, type Database } from '../db/index.js'
import { migrate, MigrationError } from '../db/migrate.js'
import { StartupError } from '../lib/startup-error.js'
import { fromRoot, migrationsDir } from '../paths.js'
import { Email } from '../schemas/common.js'

/*
 * `npm run admin -- create --email you@example.com [--name "Your Name"] [--promote [--promote-unverified]]`
 * (in the image: `node dist/src/cli/admin.js create …`): makes the first admin of a
 * deployment where POST /api/auth/bootstrap is off (production without ALLOW_BOOTSTRAP).
 * It reads the configuration as the server does, applies pending migrations as
 * `npm run migrate` does, then in one transaction creates the user with role ADMIN (or,
 * with --promote, makes an existing user ADMIN without touching its password) and writes
 * an audit row. The password never comes from the command line: it is read from
 * GATEHOUSE_ADMIN_PASSWORD when set (automation), else from the first line of standard
 * input when that is not a terminal, else asked twice at the terminal without echo.
 * It answers with one line; the exit code is 0 on success, 1 otherwise.
 *
 * Anyone can register an address they do not own, so an account whose address was never
 * proven (email_verified false) may be a stranger's, whose password would then sign in as
 * ADMIN: --promote refuses it unless --promote-unverified says the operator registered it.
 */
const USAGE = `usage: npm run admin -- create --email you@example.com [--name "Your Name"] [--promote [--promote-unverified]]
  --promote             make the existing account of that address an ADMIN; its password stays as it is
                        (no password is read; GATEHOUSE_ADMIN_PASSWORD must be unset)
  --promote-unverified  with --promote, also an account whose address was never verified:
                        only for an account you registered yourself`
/** The bounds of the registration schemas (routes/auth): passwords are never truncated. */
const MAX_PASSWORD = 1024
const MAX_NAME = 200

/** A refusal said in one line, without a stack trace. */
class AdminCommandError extends Error {
  override name = 'AdminCommandError'
}

interface Request { email: string, name: string, promote: boolean, promoteUnverified: boolean }

function parseRequest (): Request {
  let parsed
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        email: { type: 'string' },
        name: { type: 'string' },
        promote: { type: 'boolean', default: false },
        'promote-unverified': { type: 'boolean', default: false }
      }
    })
  } catch (error) {
    throw new AdminCommandError(`${(error as Error).message}\n${USAGE}`)
  }
  const { positionals, values } = parsed
  if (positionals.length !== 1 || positionals[0] !== 'create' || values.email === undefined) throw new AdminCommandError(USAGE)
  if (values['promote-unverified'] && !values.promote) throw new AdminCommandError(`--promote-unverified goes with --promote\n${USAGE}`)
  const email = normalizeEmail(values.email)
  if (!Value.Check(Email, email)) throw new AdminCommandError(`--email must be an e-mail address (got ${JSON.stringify(values.email)})`)
  const name = values.name?.trim() ?? ''
  if ([...name].length > MAX_NAME) throw new AdminCommandError(`--name must be at most ${MAX_NAME} characters long`)
  return { email, name: name === '' ? 'Administrator' : name, promote: values.promote, promoteUnverified: values['promote-unverified'] }
}

/** The database of this configuration, migrated: DATABASE_URL, or the embedded one under DATA_DIR. */
async function openDatabase (config: Config): Promise<{ db: Kysely<Database>, migratedTo: number | undefined, close: () => Promise<void> }> {
  let connectionString = config.DATABASE_URL
  let closeEmbedded = async (): Promise<void> => {}
  if (connectionString === undefined) {
    const dataDir = join(fromRoot(config.DATA_DIR), 'pglite')
    try {
      const embedded = await openEmbeddedPostgres(dataDir)
      connectionString = embedded.connectionString
      closeEmbedded = embedded.close
    } catch (error) {
      // PGlite serves one process: the admin must be written into the server's database, not another DATA_DIR's.
      if (error instanceof DataDirInUseError) {
        throw new AdminCommandError(`The embedded database in ${dataDir} is held by another Gatehouse process (pid ${error.pid}), ` +
          'most likely the running server, and it serves one process at a time: stop the server, run this command, then start the server again.')
      }
      // Another host's lock, a data folder that cannot be written: said as the server says it.
      if (error instanceof StartupError) throw new AdminCommandError(error.message)
      throw error
    }
  }
  try {
    const { applied, current } = await migrate(connectionString, migrationsDir)
    const pool = createPool({
      connectionString,
      max: 1,
      connectTimeoutMs: config.DATABASE_CONNECT_TIMEOUT,
      statementTimeoutMs: config.DATABASE_STATEMENT_TIMEOUT
    })
    const db = createDatabase(pool)
    return {
      db,
      migratedTo: applied.length > 0 ? current : undefined,
      async close () {
        try {
          await db.destroy()
        } finally {
          await closeEmbedded()
        }
      }
    }
  } catch (error) {
    await closeEmbedded().catch(() => {})
    throw error
  }
}

/** Who ran the command, for the audit row (an uid without a passwd entry has no name). */
function operator (): Record<string, string> {
  try {
    return { osUser: userInfo().username }
  } catch {
    return {}
  }
}

async function createAdmin (db: Kysely<Database>, request: Request, password: string): Promise<string> {
  const passwordHash = await hashPassword(password)
  const user = await db.transaction().execute(async trx => {
    const user = await trx.insertInto('users')
      .values({ email: request.email, name: request.name, password_hash: passwordHash, role: 'ADMIN' })
      .onConflict(conflict => conflict.column('email').doNothing())
      .returning('id').executeTakeFirst()
    if (user === undefined) throw new AdminCommandError(`A user with e-mail ${request.email} was created meanwhile; run the command again with --promote.`)
    await audit(trx, { action: 'admin.created_by_cli', subjectType: 'user', subjectId: user.id, details: { email: request.email, ...operator() } })
    return user
  })
  return `created ADMIN ${request.email} (user ${user.id})`
}

async function promoteToAdmin (db: Kysely<Database>, request: Request): Promise<string> {
  return await db.transaction().execute(async trx => {
    // Serialized with the admin API's role changes (routes/admin).
    await trx.selectNoFrom(eb => eb.fn('pg_advisory_xact_lock', [eb.fn('hashtext', [eb.val('gatehouse:admins')])]).as('locked')).execute()
    const before = await trx.selectFrom('users').select(['id', 'role', 'is_active', 'email_verified'])
      .where('email', '=', request.email).forUpdate().executeTakeFirst()
    if (before === undefined) throw new AdminCommandError(`No user has the e-mail ${request.email} any more; run the command again.`)
    if (before.role === 'ADMIN') return `${request.email} (user ${before.id}) is already an ADMIN; nothing changed`
    if (!before.email_verified) {
      if (!request.promoteUnverified) {
        throw new AdminCommandError(`Refused: the address ${request.email} (user ${before.id}) has never been verified, so anyone could have registered it, ` +
          'and whoever did would sign in as ADMIN with their password. Only if you registered this account yourself, ' +
          'run the command again with --promote --promote-unverified; otherwise make your admin with another address. Nothing was changed.')
      }
      // Said before the change, not after it.
      console.error(`Warning: the address ${request.email} (user ${before.id}) has never been verified: anyone could have registered it, ` +
        'and its password, whoever chose it, will sign in as ADMIN. Promoting it because --promote-unverified says you registered it yourself.')
    }
    await trx.updateTable('users').set({ role: 'ADMIN', updated_at: new Date() }).where('id', '=', before.id).execute()
    await audit(trx, {
      action: 'admin.promoted_by_cli',
      subjectType: 'user',
      subjectId: before.id,
      details: {
        email: request.email,
        before: { role: before.role },
        after: { role: 'ADMIN' },
        ...(before.email_verified ? {} : { emailVerified: false }),
        ...operator()
      }
    })
    const notes = ['its password was not changed', ...(before.is_active ? [] : ['the account is deactivated'])]
    return `promoted ${request.email} (user ${before.id}) from ${before.role} to ADMIN; ${notes.join('; ')}`
  })
}

function passwordFromEnvironment (): string | undefined {
  const password = process.env.GATEHOUSE_ADMIN_PASSWORD
  return password === '' ? undefined : password
}

/** The password: the environment, the first line of piped input, or asked twice at the terminal. */
async function readPassword (email: string, minLength: number): Promise<string> {
  let password: string
  const fromEnvironment = passwordFromEnvironment()
  if (fromEnvironment !== undefined) {
    password = fromEnvironment
  } else if (process.stdin.isTTY) {
    password = await askHidden('Password for the new admin: ')
    if (password !== await askHidden('Repeat the password: ')) throw new AdminCommandError('The two passwords differ; nothing was changed.')
  } else {
    password = await firstLine(process.stdin) ?? ''
  }
  if (password === '') throw new AdminCommandError(`No password given for the new admin ${email}: pipe it on standard input, type it at the prompt, or set GATEHOUSE_ADMIN_PASSWORD.`)
  if ([...password].length > MAX_PASSWORD) throw new AdminCommandError(`Password must be at most ${MAX_PASSWORD} characters long`)
  const problem = passwordProblem(password, minLength)
  if (problem !== undefined) throw new AdminCommandError(problem)
  return password
}

/** The first line of a stream, without its line ending; undefined when the stream is empty. */
async function firstLine (stream: NodeJS.ReadStream): Promise<string | undefined> {
  stream.setEncoding('utf8')
  let text = ''
  for await (const chunk of stream) {
    text += chunk as string
    const end = text.indexOf('\n')
    // Leaving the loop ends the stream: nothing after the first line is read.
    if (end !== -1) return text.slice(0, end).replace(/\r$/, '')
    if (text.length > 4 * MAX_PASSWORD) break
  }
  return text === '' ? undefined : text.replace(/\r$/, '')
}

/** Reads a line at the terminal without echoing it (raw mode: each key arrives as typed). */
async function askHidden (prompt: string): Promise<string> {
  const input = process.stdin
  // Raw mode before the prompt: a key typed as soon as it shows is not echoed either.
  input.setRawMode(true)
  input.setEncoding('utf8')
  input.resume()
  process.stderr.write(prompt)
  try {
    return await new Promise<string>((resolve, reject) => {
      let typed = ''
      const done = (finish: () => void): void => {
        input.off('data', onData)
        process.stderr.write('\n')
        finish()
      }
      const onData = (chunk: string): void => {
        // Arrow keys and other escape sequences are not part of a password.
        if (chunk.startsWith('\u001b')) return
        for (const char of chunk) {
          if (char === '\r' || char === '\n' || char === '\u0004') return done(() => resolve(typed))
          if (char === '\u0003') return done(() => reject(new AdminCommandError('Cancelled; nothing was changed.')))
          if (char === '\u007f' || char === '\b') typed = [...typed].slice(0, -1).join('')
          else if (char === '\u0015') typed = ''
          else if (char >= ' ') typed += char
        }
      }
      input.on('data', onData)
    })
  } finally {
    input.setRawMode(false)
    input.pause()
  }
}

async function run (): Promise<string> {
  const request = parseRequest()
  const config = loadConfig()
  const { db, migratedTo, close } = await openDatabase(config)
  try {
    const existing = await db.selectFrom('users').select(['id', 'email_verified']).where('email', '=', request.email).executeTakeFirst()
    if (existing !== undefined && !request.promote) throw new AdminCommandError(alreadyExists(request.email, existing.email_verified))
    // Promoting reads no password (standard input may be an interactive shell's); one given is a mistake, not a wish.
    if (existing !== undefined && passwordFromEnvironment() !== undefined) {
      throw new AdminCommandError(`--promote keeps the account's password; do not give one (unset GATEHOUSE_ADMIN_PASSWORD). ${request.email} already exists; nothing was changed.`)
    }
    const line = existing === undefined
      ? await createAdmin(db, request, await readPassword(request.email, config.PASSWORD_MIN_LENGTH))
      : await promoteToAdmin(db, request)
    return migratedTo === undefined ? line : `${line} (the database was migrated to version ${migratedTo})`
  } finally {
    await close()
  }
}

function alreadyExists (email: string, verified: boolean): string {
  return verified
    ? `A user with e-mail ${email} already exists and its address is verified; add --promote to make that account an ADMIN (its password stays as it is).`
    : `A user with e-mail ${email} already exists, and its address has never been verified: anyone could have registered it, and would know its password. ` +
      'Only if you registered it yourself, add --promote --promote-unverified to make that account an ADMIN (its password stays as it is); ' +
      'otherwise make your admin with another address.'
}

// A .env file in the working directory is read when present, as src/server.ts does; the environment wins over it.
if (existsSync('.env')) process.loadEnvFile('.env')

try {
  console.log(await run())
} catch (error) {
  const known = error instanceof AdminCommandError || error instanceof ConfigError || error instanceof MigrationError
  console.error(known ? error.message : `admin create failed: ${describe(error)}`)
  process.exitCode = 1
}

/** A one-line reason for an unexpected failure (a refused connection is an AggregateError with no message). */
function describe (error: unknown): string {
  if (error instanceof AggregateError && error.message === '') return error.errors.map(describe).join('; ')
  if (error instanceof Error) return error.message === '' ? String((error as NodeJS.ErrnoException).code ?? error.name) : error.message
  return String(error)
}
