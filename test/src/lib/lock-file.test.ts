import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { acquireLockFile, LockHeldError } from '../../../src/lib/lock-file.js'
import { currentProcess, processStartTime } from '../../../src/lib/processes.js'
import { tempDir, type TestContext } from '../../helper.js'

/*
 * The lock of a data folder trusts more than a pid: a pid is handed out again after a reboot
 * and means nothing on another host or in another pid namespace. Each case writes the lock
 * file another process would have left, then takes (or fails to take) the lock in-process.
 */

const onLinux = process.platform === 'linux'

async function lockPath (t: TestContext, content?: string): Promise<string> {
  const lockFile = join(await tempDir(t), 'pglite.lock')
  if (content !== undefined) await writeFile(lockFile, content)
  return lockFile
}

/** A process that runs until the test ends. */
function running (t: TestContext, command: string, args: string[]): ChildProcess & { pid: number } {
  const child = spawn(command, args, { stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGKILL') })
  if (child.pid === undefined) throw new Error(`${command} did not start`)
  return child as ChildProcess & { pid: number }
}

const nodeChild = (t: TestContext): ChildProcess & { pid: number } => running(t, process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'])

async function heldBy (lockFile: string): Promise<unknown> {
  return JSON.parse(await readFile(lockFile, 'utf8'))
}

async function refusal (promise: Promise<unknown>): Promise<LockHeldError> {
  const error = await promise.then(() => undefined, (error: unknown) => error)
  if (!(error instanceof LockHeldError)) throw new Error(`expected a LockHeldError, got ${String(error)}`)
  return error
}

t.test('a new lock records the pid, host name, pid namespace, boot and start time; its release removes it', async t => {
  const lockFile = await lockPath(t)
  const release = await acquireLockFile(lockFile)
  t.same(await heldBy(lockFile), JSON.parse(JSON.stringify(currentProcess())))
  t.match(await heldBy(lockFile), { pid: process.pid, hostname: hostname() })
  if (onLinux) t.match(await heldBy(lockFile), { startTime: /^\d+$/, bootId: /^[0-9a-f-]{36}$/, pidNamespace: /^pid:\[\d+\]$/ })
  await release()
  t.notOk(existsSync(lockFile))
})

t.test('a plain pid (the earlier format) of a running process that is not Node is stale: taken over', { skip: !onLinux && 'needs /proc' }, async t => {
  const sleeper = running(t, 'sleep', ['60'])
  for (const pid of [1, sleeper.pid]) {
    const lockFile = await lockPath(t, String(pid))
    const release = await acquireLockFile(lockFile)
    t.match(await heldBy(lockFile), { pid: process.pid }, `pid ${pid}: the lock is ours now`)
    await release()
    t.notOk(existsSync(lockFile), `pid ${pid}: and removed on release`)
  }
})

t.test('a plain pid of a running Node process still holds the lock', async t => {
  const other = nodeChild(t)
  const lockFile = await lockPath(t, String(other.pid))
  const error = await refusal(acquireLockFile(lockFile))
  t.match(error, { where: 'here', holder: { pid: other.pid } })
  t.equal(await readFile(lockFile, 'utf8'), String(other.pid), 'the lock file is untouched')
})

t.test('a pid reused by another process (another start time) or a lock from before a reboot is stale', { skip: !onLinux && 'needs /proc' }, async t => {
  const other = nodeChild(t)
  const startTime = processStartTime(other.pid)
  t.ok(startTime)
  const self = currentProcess()
  const live = await lockPath(t, JSON.stringify({ ...self, pid: other.pid, startTime }))
  t.match(await refusal(acquireLockFile(live)), { where: 'here', holder: { pid: other.pid } }, 'the very process it names: held')

  const cases: Array<[string, object]> = [
    ['another start time', { ...self, pid: other.pid, startTime: String(Number(startTime) - 1) }],
    ['another boot', { ...self, pid: other.pid, startTime, bootId: '00000000-0000-0000-0000-000000000000' }],
    ['unreadable', {}]
  ]
  for (const [name, content] of cases) {
    const lockFile = await lockPath(t, JSON.stringify(content))
    const release = await acquireLockFile(lockFile)
    t.match(await heldBy(lockFile), { pid: process.pid }, `${name}: taken over`)
    await release()
  }
})

t.test('a lock of another host or pid namespace is never taken over, even when its pid does not run here', async t => {
  const self = currentProcess()
  const exited = spawn(process.execPath, ['-e', ''])
  await once(exited, 'exit')
  const gone = exited.pid ?? 999_999
  const cases: Array<[string, object, LockHeldError['where']]> = [
    ['another host', { ...self, pid: gone, hostname: 'elsewhere' }, 'other-host'],
    ['another host, our pid', { ...self, hostname: 'elsewhere' }, 'other-host'],
    ['another pid namespace', { ...self, pid: gone, pidNamespace: 'pid:[1]' }, 'other-namespace']
  ]
  for (const [name, content, where] of cases) {
    const text = JSON.stringify(content)
    const lockFile = await lockPath(t, text)
    t.match(await refusal(acquireLockFile(lockFile)), { where }, name)
    t.equal(await readFile(lockFile, 'utf8'), text, `${name}: the lock file is untouched`)
  }
})

t.test("a lock with this process's own pid that it does not hold is stale; one it holds is shared", async t => {
  for (const content of [String(process.pid), JSON.stringify(currentProcess())]) {
    const lockFile = await lockPath(t, content)
    const first = await acquireLockFile(lockFile)
    const text = await readFile(lockFile, 'utf8')
    t.match(JSON.parse(text), { pid: process.pid }, 'taken over')
    const second = await acquireLockFile(lockFile)
    t.equal(await readFile(lockFile, 'utf8'), text, 'a second open in this process shares it')
    await first()
    await first()
    t.ok(existsSync(lockFile), 'kept while the second open holds it (a release counts once)')
    await second()
    t.notOk(existsSync(lockFile), 'removed by the last release')
  }
})

t.test('a lock with its own pid, taken over, goes when the process exits without releasing it', async t => {
  // As a shell that writes its pid and then execs the server leaves it.
  const lockFile = await lockPath(t)
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
    `import { writeFileSync } from 'node:fs'
     import { acquireLockFile } from ${JSON.stringify(new URL('../../../src/lib/lock-file.ts', import.meta.url).href)}
     writeFileSync(${JSON.stringify(lockFile)}, String(process.pid))
     await acquireLockFile(${JSON.stringify(lockFile)})
     process.exit(3)`], { stdio: 'inherit' })
  const [code] = await once(child, 'exit')
  t.equal(code, 3)
  t.notOk(existsSync(lockFile), 'released on exit')
})
