import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { projectRoot } from '../src/paths.js'
import { freePort, tempDir } from './helper.js'

/*
 * The embedded default, end to end: src/server.ts started as `npm start` starts it, with no
 * DATABASE_URL and no REDIS_URL, answers /api/health and /docs, stops cleanly on SIGTERM,
 * and finds its data again after a restart. In development (the default) it says where to
 * go and which limits are in force, answers `/`, takes a browser at 127.0.0.1 as its own,
 * and a restart keeps the sessions but starts the rate-limit counters over.
 */

interface Running { child: ChildProcess, output: () => string, port: number }

async function start (env: Record<string, string>): Promise<Running> {
  const port = await freePort()
  let output = ''
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: projectRoot,
    // A clean environment: nothing but what a fresh shell has.
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', PORT: String(port), ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  child.stdout!.on('data', chunk => { output += String(chunk) })
  child.stderr!.on('data', chunk => { output += String(chunk) })
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server exited early:\n${output}`)
    try {
      const response = await fetch(`http://127.0.0.1:${port}/api/health`)
      if (response.ok) return { child, output: () => output, port }
    } catch {}
    await sleep(200)
  }
  child.kill('SIGKILL')
  throw new Error(`server did not answer in time:\n${output}`)
}

/** Waits for a line of the server's log (it may arrive just after the first answer). */
async function logged (running: Running, pattern: RegExp): Promise<string> {
  const deadline = Date.now() + 5_000
  while (!pattern.test(running.output()) && Date.now() < deadline) await sleep(50)
  return running.output()
}

/** The cookies a response sets, as a Cookie header. */
const cookiesOf = (response: Response): string => response.headers.getSetCookie().map(header => header.split(';')[0]).join('; ')

async function stop (running: Running): Promise<number | null> {
  running.child.kill('SIGTERM')
  const [code] = await once(running.child, 'exit')
  return code as number | null
}

t.test('the embedded default starts with no configuration and survives a restart', async t => {
  const dataDir = await tempDir(t)
  const first = await start({ DATA_DIR: dataDir })
  t.teardown(() => { first.child.kill('SIGKILL') })
  t.same(await (await fetch(`http://127.0.0.1:${first.port}/api/health`)).json(), { ok: true })
  const docs = await fetch(`http://127.0.0.1:${first.port}/docs/json`)
  t.equal(docs.status, 200)
  t.match((await docs.json() as { openapi: string }).openapi, /^3\./)
  const ready = await fetch(`http://127.0.0.1:${first.port}/api/health/ready`)
  t.equal(ready.status, 200, 'PGlite and the in-process store are ready')
  t.match(first.output(), /embedded default: PGlite in .* and an in-process store/, 'says so in one line')
  t.match(first.output(), /applied database migrations/, 'migrated the new database')

  const base = `http://localhost:${first.port}`
  const log = await logged(first, /Gatehouse is ready at/)
  t.match(log, `Gatehouse is ready at ${base} — API docs ${base}/docs, demo ${base}/demo`, 'the URL to open, from PUBLIC_URL')
  t.match(log, `Server listening at http://127.0.0.1:${first.port}`, 'Fastify\'s own listening line is kept')
  t.match(log, /development limits: 10000 requests per 15 minutes per IP on \/api\/\*, 1000 sign-ins per IP, .*; production keeps 100 requests per 15 minutes per IP/,
    'the limits in force, said at start')
  const home = await fetch(`http://127.0.0.1:${first.port}/`)
  t.equal(home.status, 200)
  t.match(home.headers.get('content-type'), /^text\/html/)
  t.match(await home.text(), /href="\/docs".*\n*.*href="\/demo"/s, '/ links to the docs and the demo')

  // A browser at 127.0.0.1 (the address the server listens on, not PUBLIC_URL's localhost).
  const page = `http://127.0.0.1:${first.port}`
  const account = { email: 'restart@example.com', password: 'correct horse battery staple 42' }
  const json = { 'content-type': 'application/json', origin: page }
  t.equal((await fetch(`${page}/api/auth/register`, { method: 'POST', headers: json, body: JSON.stringify(account) })).status, 201)
  const signedIn = await fetch(`${page}/api/auth/login`, { method: 'POST', headers: json, body: JSON.stringify({ ...account, rememberMe: true }) })
  t.equal(signedIn.status, 200)
  const refreshed = await fetch(`${page}/api/auth/refresh`, { method: 'POST', headers: { origin: page, cookie: cookiesOf(signedIn) } })
  t.equal(refreshed.status, 200, 'a cookie refresh from http://127.0.0.1:PORT')
  const session = cookiesOf(refreshed)
  const before = await fetch(`${page}/api/auth/providers`)
  t.ok(Number(before.headers.get('ratelimit-remaining')) < 10_000 - 1, 'the per-IP counter has counted this run\'s requests')
  t.equal(await stop(first), 0, 'SIGTERM ends the process cleanly')

  const second = await start({ DATA_DIR: dataDir })
  t.teardown(() => { second.child.kill('SIGKILL') })
  t.notMatch(second.output(), /applied database migrations/, 'the data survived: nothing to migrate again')
  const again = `http://127.0.0.1:${second.port}`
  const after = await fetch(`${again}/api/auth/providers`)
  t.equal(after.headers.get('ratelimit-remaining'), String(10_000 - 1), 'the rate-limit counters started over')
  const kept = await fetch(`${again}/api/auth/refresh`, { method: 'POST', headers: { origin: again, cookie: session } })
  t.equal(kept.status, 200, 'the session survived the restart')
  t.equal(await stop(second), 0)
})

t.test('a bad setting stops the start with a message naming it', async t => {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: projectRoot,
    env: { PATH: process.env.PATH ?? '', PORT: 'eighty', NODE_ENV: 'production' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stderr = ''
  child.stderr.on('data', chunk => { stderr += String(chunk) })
  const [code] = await once(child, 'exit')
  t.equal(code, 1)
  t.match(stderr, /PORT must be an integer from 0 to 65535 \(got "eighty"\)/)
  t.match(stderr, /NODE_ENV=production refuses to start without DATABASE_URL, REDIS_URL \(or REDIS_SENTINELS, REDIS_CLUSTER_NODES\), a signing key/)
})
