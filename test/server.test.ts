import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { projectRoot } from '../src/paths.js'
import { freePort, tempDir } from './helper.js'

/*
 * The embedded default, end to end: src/server.ts started as `npm start` starts it, with no
 * DATABASE_URL and no REDIS_URL, answers /api/health and /docs, stops cleanly on SIGTERM,
 * and finds its data again after a restart.
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
  t.equal(await stop(first), 0, 'SIGTERM ends the process cleanly')

  const second = await start({ DATA_DIR: dataDir })
  t.teardown(() => { second.child.kill('SIGKILL') })
  t.notMatch(second.output(), /applied database migrations/, 'the data survived: nothing to migrate again')
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
