import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { freePort, tempDir, type TestContext } from './helper.js'

/*
 * Real Redis topologies for the tests that need more than one server: a three-master Cluster
 * and a master watched by one Sentinel. Every server runs from the installed redis-server
 * binary (Debian's redis-server package, which .ci/run installs) on free loopback ports, with
 * its files in a scratch directory, and is killed at teardown — also when starting the
 * topology failed half-way. A watchdog kills the servers should the test process die without
 * running its teardown (a tap timeout ends with SIGKILL).
 *
 * Without the binaries the tests that use these helpers skip (see redisTopologiesSkip);
 * with GH_TEST_REQUIRE_SERVERS=1 (CI) they run, and fail.
 */

export interface HostPort { host: string, port: number }

const HOST = '127.0.0.1'
const execFileAsync = promisify(execFile)

function runs (binary: string): boolean {
  const result = spawnSync(binary, ['--version'], { stdio: 'ignore', timeout: 5000 })
  return result.error === undefined && result.status === 0
}

const missing = ['redis-server', 'redis-cli'].filter(binary => !runs(binary))

/**
 * false when redis-server and redis-cli are installed, otherwise why the topology tests skip:
 * pass it as tap's `skip` option. CI (GH_TEST_REQUIRE_SERVERS=1) never skips them.
 */
export const redisTopologiesSkip: string | false =
  missing.length === 0 || process.env.GH_TEST_REQUIRE_SERVERS === '1'
    ? false
    : `Redis Cluster and Sentinel tests skipped: ${missing.join(' and ')} not found on PATH (apt-get install redis-server)`

/** Servers still running, killed synchronously should the process exit before teardown. */
const running = new Set<ChildProcess>()
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

/** Options of redis-cli: the password (REDISCLI_AUTH keeps it off the command line). */
interface CliOptions { password?: string | undefined }

const cliEnv = (options: CliOptions): NodeJS.ProcessEnv =>
  options.password === undefined ? process.env : { ...process.env, REDISCLI_AUTH: options.password }

/** redis-cli against one server; resolves with its standard output. */
export async function redisCli (port: number, args: string[], options: CliOptions = {}): Promise<string> {
  const { stdout } = await execFileAsync('redis-cli', ['-h', HOST, '-p', String(port), ...args], { timeout: 10_000, maxBuffer: 16 * 1024 * 1024, env: cliEnv(options) })
  return stdout
}

/** The keys one server holds (of its own slots, on a Cluster node) that match a pattern. */
export async function scanKeys (port: number, pattern = '*', options: CliOptions = {}): Promise<string[]> {
  const output = await redisCli(port, ['--scan', '--pattern', pattern], options)
  return output.split('\n').filter(line => line !== '')
}

interface Server { port: number, child: ChildProcess, output: () => string }

function exited (child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null
}

async function stop (child: ChildProcess): Promise<void> {
  running.delete(child)
  if (child.pid === undefined || exited(child)) return
  const gone = new Promise(resolve => child.once('exit', resolve))
  child.kill('SIGKILL')
  await Promise.race([gone, sleep(5000, undefined, { ref: false })])
}

/**
 * Starts one redis-server on a free port (retrying on another port when the port was taken
 * in the meantime) and waits until it answers PING. `args` builds its arguments for a port.
 */
async function startServer (t: TestContext, name: string, args: (port: number) => Promise<string[]>, cli: CliOptions = {}): Promise<Server> {
  let lastProblem = ''
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort()
    const child = spawn('redis-server', await args(port), { stdio: ['ignore', 'pipe', 'pipe'] })
    running.add(child)
    // Never throws: a teardown that throws makes tap skip the remaining ones.
    t.teardown(async () => { await stop(child).catch(() => {}) })
    if (child.pid !== undefined) watch(child.pid)
    let output = ''
    let spawnError: Error | undefined
    const collect = (chunk: Buffer): void => { output = (output + chunk.toString()).slice(-4000) }
    child.stdout!.on('data', collect)
    child.stderr!.on('data', collect)
    child.on('error', error => { spawnError = error })
    const server = { port, child, output: () => output }
    const deadline = Date.now() + 10_000
    while (true) {
      if (spawnError !== undefined) throw new Error(`${name}: cannot run redis-server: ${spawnError.message}`)
      if (exited(child)) break
      // PING, then INFO's process_id: the server answering is this one, not another that took the port.
      if ((await redisCli(port, ['ping'], cli).catch(() => '')).trim() === 'PONG' &&
        (await redisCli(port, ['info', 'server'], cli).catch(() => '')).includes(`process_id:${child.pid}\r`)) return server
      if (Date.now() > deadline) {
        await stop(child)
        throw new Error(`${name} on port ${port} did not answer PING within 10 s:\n${output}`)
      }
      await sleep(50)
    }
    await stop(child)
    lastProblem = output
    if (!/address already in use/i.test(output)) break
  }
  throw new Error(`${name} did not start:\n${lastProblem}`)
}

/**
 * Kills the server should this process go away without its teardown: a detached shell
 * that polls both and ends by itself once the server is gone.
 */
function watch (pid: number): void {
  const script = 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done; kill -9 "$2" 2>/dev/null'
  const watchdog = spawn('sh', ['-c', script, 'gatehouse-redis-watchdog', String(process.pid), String(pid)], { stdio: 'ignore', detached: true })
  watchdog.on('error', () => {})
  watchdog.unref()
}

const common = (port: number, dir: string, password: string | undefined): string[] => [
  '--save', '', '--appendonly', 'no', '--bind', HOST, '--port', String(port), '--dir', dir,
  ...(password === undefined ? [] : ['--requirepass', password, '--masterauth', password])
]

export interface TopologyOptions {
  /** Every server asks for this password (requirepass); the Cluster's nodes use it among themselves too. */
  password?: string
}

async function waitUntil (what: string, condition: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await condition().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what} (waited ${timeoutMs} ms)`)
    await sleep(100)
  }
}

export interface RedisCluster { nodes: HostPort[], password: string | undefined }

/**
 * A Redis Cluster of three masters without replicas (every slot served, so cluster_state:ok).
 * Each node's cluster bus gets a free port of its own (cluster-port), so that high ephemeral
 * ports work too (the default bus port is the port + 10000).
 */
export async function startRedisCluster (t: TestContext, options: TopologyOptions = {}): Promise<RedisCluster> {
  const { password } = options
  const dir = await tempDir(t)
  const servers = await Promise.all([0, 1, 2].map(async i => await startServer(t, `cluster node ${i + 1}`, async port => [
    ...common(port, dir, password),
    '--cluster-enabled', 'yes',
    '--cluster-config-file', `nodes-${port}.conf`,
    '--cluster-port', String(await freePort()),
    '--cluster-node-timeout', '2000'
  ], { password })))
  const addresses = servers.map(server => `${HOST}:${server.port}`)
  try {
    await execFileAsync('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-replicas', '0', '--cluster-yes'], { timeout: 30_000, env: cliEnv({ password }) })
  } catch (error) {
    const { stdout = '', stderr = '' } = error as { stdout?: string, stderr?: string }
    throw new Error(`redis-cli --cluster create failed: ${(error as Error).message}\n${stdout}${stderr}`)
  }
  // Every node must agree, since a client may ask any of them for the slot map.
  await Promise.all(servers.map(async server => {
    await waitUntil(`cluster node ${server.port} did not reach cluster_state:ok`,
      async () => (await redisCli(server.port, ['cluster', 'info'], { password })).includes('cluster_state:ok'), 20_000)
  }))
  return { nodes: servers.map(server => ({ host: HOST, port: server.port })), password }
}

export interface RedisSentinel { sentinels: HostPort[], name: string, masterPort: number, password: string | undefined }

/**
 * A master and one Sentinel monitoring it as `mymaster` (quorum 1). Sentinel rewrites its
 * configuration file, so it lives, writable, in the scratch directory.
 */
export async function startRedisSentinel (t: TestContext, options: TopologyOptions = {}): Promise<RedisSentinel> {
  const { password } = options
  const name = 'mymaster'
  const dir = await tempDir(t)
  const master = await startServer(t, 'Sentinel master', async port => common(port, dir, password), { password })
  const sentinel = await startServer(t, 'Sentinel', async port => {
    const file = join(dir, `sentinel-${port}.conf`)
    await writeFile(file, [
      `port ${port}`,
      `bind ${HOST}`,
      `dir ${dir}`,
      `sentinel monitor ${name} ${HOST} ${master.port} 1`,
      `sentinel down-after-milliseconds ${name} 1000`,
      `sentinel failover-timeout ${name} 2000`,
      ...(password === undefined ? [] : [`sentinel auth-pass ${name} ${password}`]),
      ''
    ].join('\n'), { mode: 0o600 })
    return [file, '--sentinel']
  })
  await waitUntil(`Sentinel ${sentinel.port} does not name the master of ${name}`, async () => {
    const answer = (await redisCli(sentinel.port, ['sentinel', 'get-master-addr-by-name', name])).split('\n')
    return answer[0] === HOST && answer[1] === String(master.port)
  }, 10_000)
  return { sentinels: [{ host: HOST, port: sentinel.port }], name, masterPort: master.port, password }
}
