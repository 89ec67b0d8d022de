import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t, { type Test } from 'tap'
import { openEmbeddedPostgres, removeStaleSocketDirs, socketParentDir, startEmbeddedPostgres } from '../src/db/embedded.js'
import { hostTag, isNodeProcess } from '../src/lib/processes.js'
import { projectRoot } from '../src/paths.js'
import { bearer, cookie, login, register } from './auth-helper.js'
import { build, freePort, tempDir, type Env } from './helper.js'

/*
 * The embedded default as a newcomer meets it: PGlite under DATA_DIR and the in-process store,
 * whatever servers npm test found. Left idle past the pool's idle timeout, restarted, started
 * twice on one folder, or failing to start, it must behave as a real server would.
 */

// Real server processes (seconds each to start through tsx on a busy machine, more for a user
// without a warm tsx cache) and several PGlite starts: more than the default budget of a file.
t.setTimeout(240_000)

/** An app on the embedded default: no DATABASE_URL, no REDIS_URL, its own DATA_DIR. */
async function embeddedApp (t: Test, env: Env = {}): Promise<Awaited<ReturnType<typeof build>>> {
  return await build(t, { DATABASE_URL: undefined, REDIS_URL: undefined, MIGRATE_ON_START: 'true', ...env })
}

t.test('sign-in keeps working after the pool has dropped its idle connection', async t => {
  // 42P05 "prepared statement already exists" used to follow: PGlite's one backend keeps the
  // statements the dropped connection prepared, and the next connection prepared them again.
  const app = await embeddedApp(t, { DATABASE_IDLE_TIMEOUT: '100ms' })
  t.equal((await register(app, 'idle@embedded.test')).status, 201)
  const first = await login(app, 'idle@embedded.test')
  t.equal(first.status, 200, 'first sign-in')
  for (let round = 1; round <= 3; round++) {
    await sleep(400) // past the idle timeout: the next statement runs on a new connection
    const again = await login(app, 'idle@embedded.test')
    t.equal(again.status, 200, `sign-in after idle period ${round}`)
    app.users.forget(again.user.id) // the next `me` reads the user from the database (a prepared statement)
    await sleep(400)
    const me = await app.inject({ url: '/api/auth/me', headers: bearer(again.accessToken) })
    t.equal(me.statusCode, 200, `me after idle period ${round}`)
    await sleep(400)
    t.equal((await app.inject({ url: '/api/birds', headers: bearer(again.accessToken) })).statusCode, 200, `birds after idle period ${round}`)
  }
})

t.test('readiness names what it checked: PGlite, and no Redis', async t => {
  const app = await embeddedApp(t)
  const ready = await app.inject({ url: '/api/health/ready' })
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), {
    status: 'ready',
    checks: { postgres: 'ok', redis: 'not_configured' },
    backends: { postgres: 'embedded', store: 'in-process' }
  })
})

t.test('sign-ins, sessions and data survive a restart on the same DATA_DIR', async t => {
  const dataDir = await tempDir(t)
  const env: Env = { NODE_ENV: 'development', DATA_DIR: dataDir, LOG_LEVEL: 'silent' }
  const first = await embeddedApp(t, env)
  env.REDIS_PREFIX = first.config.REDIS_PREFIX // the same store namespace after the restart, as a real restart has
  t.equal((await register(first, 'restart@embedded.test')).status, 201)
  const signedIn = await login(first, 'restart@embedded.test', undefined, {}, { origin: 'http://localhost:3000' })
  const refreshToken = cookie(signedIn.response, 'refresh_token')!.value as string
  await first.close()

  const second = await embeddedApp(t, env)
  t.equal((await login(second, 'restart@embedded.test')).status, 200, 'the account is still there')
  const refreshed = await second.inject({
    method: 'POST',
    url: '/api/auth/refresh',
    headers: { origin: 'http://localhost:3000', cookie: `refresh_token=${refreshToken}` }
  })
  t.equal(refreshed.statusCode, 200, 'the session of before the restart refreshes by cookie')
  t.type(refreshed.json().accessToken, 'string')
})

// ---------------------------------------------------------------------------------------------
// The real server process, as `npm start` runs it.

interface Exited { code: number | null, output: string }

/** Servers still running, killed should this process end first (a timed-out test, say). */
const running = new Set<ChildProcess>()
process.once('exit', () => { for (const child of running) child.kill('SIGKILL') })

async function runServer (t: Test, env: Record<string, string>, until: (output: string) => boolean = () => false): Promise<{ exited: Promise<Exited>, stop: () => void, output: () => string }> {
  let output = ''
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: projectRoot,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  running.add(child)
  child.once('exit', () => running.delete(child))
  t.teardown(() => { child.kill('SIGKILL') })
  let ready: () => void = () => {}
  const seen = new Promise<void>(resolve => { ready = resolve })
  const collect = (chunk: Buffer): void => { output += String(chunk); if (until(output)) ready() }
  child.stdout.on('data', collect)
  child.stderr.on('data', collect)
  const exited = once(child, 'exit').then(([code]) => ({ code: code as number | null, output }))
  await Promise.race([seen, exited])
  return { exited, stop: () => child.kill('SIGTERM'), output: () => output }
}

t.test('a second server on the same data folder is refused with a message that says why', async t => {
  const dataDir = await tempDir(t)
  const first = await runServer(t, { DATA_DIR: dataDir, PORT: String(await freePort()) }, output => /Gatehouse is ready|listening/i.test(output))
  const second = await runServer(t, { DATA_DIR: dataDir, PORT: String(await freePort()) })
  const { code, output } = await second.exited
  t.equal(code, 1, 'the second process exits with 1')
  t.match(output, /Gatehouse cannot start: The embedded database in .*pglite is in use by another Gatehouse process \(pid \d+\)/)
  t.notMatch(output, /\n\s+at /, 'no stack trace')
  first.stop()
  t.equal((await first.exited).code, 0, 'the first one was untouched and stops cleanly')
})

/** The embedded database's socket folders in a TMPDIR (tsx keeps its cache there too). */
async function socketDirs (dir: string): Promise<string[]> {
  return (await readdir(dir)).filter(name => name.startsWith('gh-pg-'))
}

t.test('a start that fails leaves nothing behind: no socket folder, no lock, and the next start works', async t => {
  const dataDir = await tempDir(t)
  const scratch = await tempDir(t) // the process's TMPDIR, where the embedded socket lives
  const blocker = createServer()
  await new Promise<void>(resolve => blocker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { blocker.close() })
  const busyPort = (blocker.address() as { port: number }).port

  const failed = await runServer(t, { DATA_DIR: dataDir, TMPDIR: scratch, PORT: String(busyPort) })
  const { code, output } = await failed.exited
  t.equal(code, 1)
  t.match(output, new RegExp(`Gatehouse cannot start: port ${busyPort} on 127\\.0\\.0\\.1 is already in use`))
  t.same(await socketDirs(scratch), [], 'no gh-pg-* socket folder left in TMPDIR')
  t.notOk(existsSync(join(dataDir, 'pglite.lock')), 'no lock file left')

  const port = await freePort()
  const next = await runServer(t, { DATA_DIR: dataDir, TMPDIR: scratch, PORT: String(port) }, output => /Gatehouse is ready|listening/i.test(output))
  t.equal((await fetch(`http://127.0.0.1:${port}/api/health/ready`)).status, 200, 'the next start on the same folder is ready')
  next.stop()
  t.equal((await next.exited).code, 0)
  t.same(await socketDirs(scratch), [], 'a clean stop leaves nothing either')
})

t.test('a DATA_DIR that cannot be written, or that is a file, is said in one line', async t => {
  const scratch = await tempDir(t)
  // A folder nobody may write in. Root writes anywhere but in sysfs (EPERM; read-only, EROFS,
  // in some containers), so root gets /sys. (Running the server as another user instead
  // depends on that user reaching Node's binary and the checkout, which CI's need not.)
  const root = process.getuid?.() === 0
  const readOnly = root ? '/sys' : join(scratch, 'read-only')
  if (!root) {
    await mkdir(readOnly)
    await chmod(readOnly, 0o555)
  }
  const file = join(scratch, 'a-file')
  await writeFile(file, '')
  const [notWritable, isFile] = await Promise.all([
    runServer(t, { DATA_DIR: join(readOnly, 'gatehouse-data'), PORT: String(await freePort()) }).then(async server => await server.exited),
    runServer(t, { DATA_DIR: file, PORT: String(await freePort()) }).then(async server => await server.exited)
  ])
  t.equal(notWritable.code, 1)
  t.match(notWritable.output, new RegExp(`Gatehouse cannot start: The embedded database needs a writable DATA_DIR, and cannot create ${readOnly}/gatehouse-data: ` +
    `(permission denied to (user \\S+ \\()?uid \\d+\\)?\\. Give that user write access to ${readOnly}|the file system is read-only\\. Mount it writable), ` +
    'or set DATA_DIR to another folder\\.\n'))
  t.equal(isFile.code, 1)
  t.match(isFile.output, new RegExp(`Gatehouse cannot start: The embedded database needs a writable DATA_DIR, and cannot create ${file}/pglite: ` +
    `${file} is a file, not a folder\\. Move it away, or set DATA_DIR to another folder\\.\n`))
  for (const { output } of [notWritable, isFile]) {
    t.notMatch(output, /\n\s+at |"level":60/, 'no stack trace, no JSON log line')
  }
})

// ---------------------------------------------------------------------------------------------
// The data-folder lock and the socket folders, in this process.

t.test("the data-folder lock: a stale pid (pid 1, or this process's own from before) is taken over and removed on close", async t => {
  const dataDir = join(await tempDir(t), 'pglite')
  const lockFile = `${dataDir}.lock`
  // pid 1 runs everywhere; it is stale unless it is Node (as in a container whose first process is the server).
  const stale = isNodeProcess(1) === false ? ['1', String(process.pid)] : [String(process.pid)]
  for (const pid of stale) {
    await writeFile(lockFile, pid)
    const database = await openEmbeddedPostgres(dataDir)
    t.match(JSON.parse(await readFile(lockFile, 'utf8')), { pid: process.pid, hostname: hostname() }, `a lock of pid ${pid}: taken over, with more than the pid`)
    await database.close()
    t.notOk(existsSync(lockFile), `a lock of pid ${pid}: removed on close`)
  }
})

t.test('the data-folder lock of another host is never taken over: the refusal names the host, the pid and the file to delete', async t => {
  const dataDir = join(await tempDir(t), 'pglite')
  const lockFile = `${dataDir}.lock`
  const lock = JSON.stringify({ pid: 4242, hostname: 'gatehouse-2' })
  await writeFile(lockFile, lock)
  await t.rejects(openEmbeddedPostgres(dataDir), {
    name: 'StartupError',
    message: `The embedded database in ${dataDir} is locked by process 4242 on the host gatehouse-2, which cannot be checked from here, so the lock is not taken over: ` +
      `two machines or containers must never open one data folder at once. If that process is really gone, delete ${lockFile} and start again; ` +
      'otherwise give this one its own DATA_DIR (or a DATABASE_URL).'
  })
  t.equal(await readFile(lockFile, 'utf8'), lock, 'the lock file is untouched')
})

t.test('the socket clean-up removes only folders of this host whose process is gone', async t => {
  const scratch = await tempDir(t)
  const exited = spawn(process.execPath, ['-e', ''])
  await once(exited, 'exit')
  const gone = exited.pid ?? 999_999
  const names = {
    oursGone: `gh-pg-${hostTag()}-${gone}-aaaaaa`,
    oursRunning: `gh-pg-${hostTag()}-${process.pid}-bbbbbb`,
    // Another host's (or pid namespace's) tag; all digits, which the earlier rule read as a dead pid.
    otherHost: `gh-pg-99999999-${gone}-cccccc`,
    // The earlier versions' name: whose it is cannot be told.
    earlier: `gh-pg-${gone}-dddddd`
  }
  for (const name of Object.values(names)) await mkdir(join(scratch, name))
  await removeStaleSocketDirs(scratch)
  t.same((await socketDirs(scratch)).sort(), [names.oursRunning, names.otherHost, names.earlier].sort())
})

t.test('a temporary folder too long for a Unix socket path: the socket goes to /tmp; when that is too long too, a clear message', async t => {
  const long = join(await tempDir(t), 'x'.repeat(100))
  await mkdir(long)
  const saved = process.env.TMPDIR
  process.env.TMPDIR = long
  let database: Awaited<ReturnType<typeof startEmbeddedPostgres>>
  try {
    database = await startEmbeddedPostgres()
  } finally {
    if (saved === undefined) delete process.env.TMPDIR
    else process.env.TMPDIR = saved
  }
  t.teardown(async () => { await database.close() })
  t.ok(database.connectionString.startsWith(`postgres://postgres@${encodeURIComponent('/tmp/gh-pg-')}`), database.connectionString)
  t.same(await socketDirs(long), [], 'nothing in the long folder')
  const client = new pg.Client({ connectionString: database.connectionString })
  await client.connect()
  t.same((await client.query('SELECT 1 AS one')).rows, [{ one: 1 }], 'the database answers on it')
  await client.end()

  t.throws(() => socketParentDir([long, join(long, 'y')]), {
    name: 'StartupError',
    message: new RegExp(`^The embedded database's socket path ${long}/gh-pg-\\w+-\\d+-XXXXXX/\\.s\\.PGSQL\\.5432 would be \\d+ bytes long, more than the \\d+ this system takes, ` +
      `and under ${long}/y too\\. Set TMPDIR to a folder with a shorter path\\.$`)
  })
})
