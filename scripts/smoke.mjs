#!/usr/bin/env node
// The first run a newcomer makes, from a fresh clone: `npm ci`, `npm start` with no settings,
// register, sign in, stay idle past every pool and cache timeout, sign in again, refresh by
// cookie from the server's own origin, restart, and sign in again on the same data.
// `.ci/run` runs it; by hand: `node scripts/smoke.mjs` (it clones the committed HEAD).
//   SMOKE_IDLE      seconds to stay idle (default 40: the pool drops idle connections after
//                   30 s, and the user and membership caches expire after 30 s)
//   SMOKE_WORKTREE  1: copy the working tree's files (tracked and new, as git lists them)
//                   instead of cloning HEAD, to try uncommitted changes
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

const repository = resolve(import.meta.dirname, '..')
const idleSeconds = Number(process.env.SMOKE_IDLE ?? 40)
const work = mkdtempSync(join(tmpdir(), 'gh-smoke-'))
const clone = join(work, 'gatehouse')
const started = Date.now()
let server

function step (text) {
  console.log(`[smoke ${((Date.now() - started) / 1000).toFixed(0).padStart(3)} s] ${text}`)
}

function fail (text) {
  console.error(`[smoke] FAILED: ${text}`)
  if (server !== undefined) console.error(`--- server output ---\n${server.output()}`)
  cleanUp()
  process.exit(1)
}

function cleanUp () {
  if (server !== undefined && groupRuns(server.child.pid)) process.kill(-server.child.pid, 'SIGKILL')
  rmSync(work, { recursive: true, force: true, maxRetries: 5 })
}

function run (command, args, options = {}) {
  const result = spawnSync(command, args, { cwd: clone, stdio: 'inherit', ...options })
  if (result.status !== 0) fail(`${command} ${args.join(' ')} exited with ${result.status}`)
}

/** Port 3000, as a newcomer gets it, unless something on this machine holds it already. */
async function choosePort () {
  const probe = createServer()
  const port = await new Promise(resolve => {
    probe.once('error', () => resolve(0))
    probe.listen(3000, '127.0.0.1', () => resolve(3000))
  })
  await new Promise(resolve => probe.close(() => resolve()))
  if (port === 3000) return { port, env: {} }
  const other = createServer()
  await new Promise(resolve => other.listen(0, '127.0.0.1', resolve))
  const free = other.address().port
  await new Promise(resolve => other.close(() => resolve()))
  step(`port 3000 is taken on this machine: PORT=${free}`)
  return { port: free, env: { PORT: String(free) } }
}

/** `npm start` in the clone with nothing but what a fresh shell has (no DATABASE_URL, no REDIS_URL). */
async function start (port, env) {
  let output = ''
  const child = spawn('npm', ['start'], {
    cwd: clone,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true
  })
  child.stdout.on('data', chunk => { output += chunk })
  child.stderr.on('data', chunk => { output += chunk })
  const exited = new Promise(resolve => child.once('exit', code => resolve(code)))
  const deadline = Date.now() + 180_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) fail(`npm start exited with ${child.exitCode}`)
    if (/Gatehouse is ready at/.test(output)) {
      const ready = await fetch(`http://127.0.0.1:${port}/api/health/ready`).catch(() => undefined)
      if (ready?.ok) return { child, exited, output: () => output }
    }
    await sleep(250)
  }
  server = { child, output: () => output }
  fail('the server did not become ready within 3 minutes')
}

/** True while any process of the group (npm and the node it started) still runs. */
function groupRuns (pid) {
  try {
    process.kill(-pid, 0)
    return true
  } catch {
    return false
  }
}

async function stop () {
  // npm start runs node under npm; the signal goes to the whole group, as a terminal's Ctrl-C does.
  const { pid } = server.child
  process.kill(-pid, 'SIGTERM')
  const code = await Promise.race([server.exited, sleep(30_000).then(() => 'timeout')])
  if (code !== 0 && code !== null) fail(`the server exited with ${code} after SIGTERM`)
  // The server itself may outlive npm by a moment (it saves the in-process store on its way out).
  const deadline = Date.now() + 30_000
  while (groupRuns(pid)) {
    if (Date.now() > deadline) fail('the server was still running 30 s after SIGTERM')
    await sleep(100)
  }
  server = undefined
}

async function call (port, method, path, { body, headers = {}, expect }) {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await response.text()
  if (response.status !== expect) fail(`${method} ${path}: expected ${expect}, got ${response.status} ${text}`)
  return { json: text === '' ? {} : JSON.parse(text), cookies: response.headers.getSetCookie() }
}

function refreshCookie (cookies) {
  const found = cookies.find(line => line.startsWith('refresh_token='))
  if (found === undefined) fail('no refresh_token cookie was set')
  return found.split(';')[0]
}

process.on('SIGINT', () => { cleanUp(); process.exit(130) })

if (process.env.SMOKE_WORKTREE === '1') {
  step(`copying the working tree of ${repository} into ${clone}`)
  run('sh', ['-c', `mkdir -p "${clone}" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar cf - | tar xf - -C "${clone}"`], { cwd: repository })
} else {
  step(`cloning ${repository} (committed HEAD) into ${clone}`)
  run('git', ['clone', '--quiet', repository, clone], { cwd: work })
}
step('npm ci')
run('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'])

const { port, env } = await choosePort()
const origin = `http://localhost:${port}`
step('npm start (no settings: embedded PGlite and the in-process store)')
server = await start(port, env)
if (!/embedded default: PGlite/.test(server.output())) fail('the start-up lines do not say the embedded default is in use')
const email = `newcomer-${Date.now()}@example.com`
const password = 'a long enough passphrase 2026'
await call(port, 'POST', '/api/auth/register', { body: { email, password, name: 'Newcomer' }, expect: 201 })
const first = await call(port, 'POST', '/api/auth/login', { body: { email, password }, headers: { origin }, expect: 200 })
const token = first.json.accessToken
const bird = await call(port, 'POST', '/api/birds', { body: { name: 'Kiwi' }, headers: { authorization: `Bearer ${token}` }, expect: 201 })
step(`registered, signed in, made a bird; now idle for ${idleSeconds} s (past the pool's and the caches' 30 s)`)
await sleep(idleSeconds * 1000)

const again = await call(port, 'POST', '/api/auth/login', { body: { email, password }, headers: { origin }, expect: 200 })
await call(port, 'GET', '/api/auth/me', { headers: { authorization: `Bearer ${again.json.accessToken}` }, expect: 200 })
await call(port, 'GET', '/api/birds', { headers: { authorization: `Bearer ${again.json.accessToken}` }, expect: 200 })
// The log names 127.0.0.1; in development both loopback spellings are the server's own origin.
const refreshed = await call(port, 'POST', '/api/auth/refresh', {
  headers: { origin: `http://127.0.0.1:${port}`, cookie: refreshCookie(again.cookies) },
  expect: 200
})
step('after the idle period: sign-in, me, birds and a cookie refresh from http://127.0.0.1 all answer')

step('restart (SIGTERM, then npm start again on the same .data)')
await stop()
server = await start(port, env)
const afterRestart = await call(port, 'POST', '/api/auth/login', { body: { email, password }, headers: { origin }, expect: 200 })
const birds = await call(port, 'GET', '/api/birds', { headers: { authorization: `Bearer ${afterRestart.json.accessToken}` }, expect: 200 })
if (!birds.json.birds.some(each => each.id === bird.json.bird.id)) fail('the bird made before the restart is gone')
await call(port, 'POST', '/api/auth/refresh', { headers: { origin, cookie: refreshCookie(refreshed.cookies) }, expect: 200 })
step('after the restart: the account, its data and the session of before the restart are all there')
await stop()
cleanUp()
step('passed')
