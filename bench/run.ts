// npm run bench: starts Gatehouse (the built dist/, as production runs it) against real
// PostgreSQL and Redis, and the bare-Fastify floor (bench/floor.ts), each in a process of its
// own, then drives every scenario with autocannon from this process and prints a markdown
// table: scenario, req/s, p50, p99, errors, server RSS, the ratio to the floor, and the CPU
// time each server spent per request (from /proc: steadier than req/s on a shared machine,
// where the load generator and Redis compete with the server for the same cores).
//   BENCH_DURATION     seconds per measurement (default 10)
//   BENCH_CONNECTIONS  concurrent connections (default 32)
//   BENCH_ONLY         only the scenarios whose name contains this text
//   BENCH_WARMUP       seconds of warm-up per server before a scenario's rounds (default 2;
//                      a scenario may ask for more)
//   BENCH_ROUNDS       measurements per scenario, alternating with the floor (default 1);
//                      the median round is printed, with the range of the ratios
//   TEST_DATABASE_URL / TEST_REDIS_URL  the servers, as for npm test
// Under the table: the goals of issue 5, and for the scenarios marked `statements` the
// database statements Gatehouse issued during its measured runs (bench/statements.ts).
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import { Redis } from 'ioredis'
import pg from 'pg'
import { projectRoot } from '../src/paths.js'
import { freePort } from '../test/helper.js'
import { hashPassword } from '../src/auth/passwords.js'
import { soak } from './soak.js'
import { autocannonRequest, BENCH_PASSWORD, BIRDS_JWT, BIRDS_TOKEN, HEALTH_DURING_LOGINS, LOGIN, ME_JWT, MEMBERS_JWT, MEMBERS_TOKEN, REFRESH, scenarios, type BenchContext, type Target } from './scenarios.js'
import { difference, StatementCounter, sum, type Delta } from './statements.js'

const duration = Number(process.env.BENCH_DURATION ?? 10)
const connections = Number(process.env.BENCH_CONNECTIONS ?? 32)
const only = process.env.BENCH_ONLY
const warmup = Number(process.env.BENCH_WARMUP ?? 2)
/** `npm run bench -- --soak`: the soak (bench/soak.ts) instead of the scenarios. */
const soakMode = process.argv.includes('--soak')
const rounds = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 1))
const adminUrl = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const redisUrl = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

export interface Measurement {
  requestsPerSecond: number
  p50: number
  p99: number
  errors: number
  /** Responses received. */
  requests: number
  /** Server CPU time (user + system) per request, in microseconds; 0 when unknown. */
  cpuPerRequest: number
}

const CLOCK_TICK_US = 10_000 // USER_HZ is 100 on Linux

/** CPU time used so far by a process, in microseconds (from /proc). */
async function cpuTime (pid: number | undefined): Promise<number | undefined> {
  if (pid === undefined) return undefined
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined)
  if (stat === undefined) return undefined
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_US
}

export async function measure (base: string, target: Target, seconds = duration, pid?: number): Promise<Measurement> {
  const cpuBefore = await cpuTime(pid)
  const result = await autocannon({
    url: base,
    requests: [autocannonRequest(target)],
    connections,
    duration: seconds
  })
  return {
    cpuPerRequest: cpuBefore === undefined || result.requests.total === 0 ? 0 : Math.round(((await cpuTime(pid))! - cpuBefore) / result.requests.total),
    requestsPerSecond: Math.round(result.requests.average),
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.timeouts + result.non2xx,
    requests: result.requests.total
  }
}

interface Started { child: ChildProcess, base: string }

async function startServer (args: string[], env: Record<string, string>, healthPath: string): Promise<Started> {
  const port = await freePort()
  const child = spawn(process.execPath, args, {
    cwd: projectRoot,
    env: { PATH: process.env.PATH ?? '', ...env, PORT: String(port) },
    stdio: ['ignore', 'inherit', 'inherit']
  })
  const base = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${args.join(' ')} exited with ${child.exitCode}`)
    try {
      if ((await fetch(base + healthPath)).ok) return { child, base }
    } catch {}
    await sleep(200)
  }
  child.kill('SIGKILL')
  throw new Error(`${args.join(' ')} did not answer in time`)
}

async function stopServer (started: Started): Promise<void> {
  if (started.child.exitCode !== null) return
  started.child.kill('SIGTERM')
  await once(started.child, 'exit')
}

export async function rssMegabytes (pid: number | undefined): Promise<number> {
  if (pid === undefined) return 0
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
  const match = /VmRSS:\s+(\d+) kB/.exec(status)
  return match === null ? 0 : Math.round(Number(match[1]) / 1024)
}

interface Row {
  scenario: string
  gatehouse: Measurement
  rss: number
  floor: Measurement
  ratios: number[]
  /** Statements during the measured Gatehouse runs (all rounds), and those runs' requests. */
  statements?: { delta: Delta, requests: number }
}

const percent = (ratio: number): string => `${(ratio * 100).toFixed(0)}%`
const ratioOf = (row: Row): number => row.floor.requestsPerSecond === 0 ? 0 : row.gatehouse.requestsPerSecond / row.floor.requestsPerSecond

function table (rows: Row[]): string {
  const ranged = rows.some(row => row.ratios.length > 1)
  const lines = [
    `| scenario | req/s | p50 ms | p99 ms | errors | server RSS MB | floor req/s | ratio to floor |${ranged ? ' ratio range |' : ''} CPU µs/req | floor CPU µs/req |`,
    `|---|---:|---:|---:|---:|---:|---:|---:|${ranged ? '---:|' : ''}---:|---:|`
  ]
  const cpu = (measurement: Measurement): string => measurement.cpuPerRequest === 0 ? '–' : String(measurement.cpuPerRequest)
  for (const row of rows) {
    const range = ranged ? ` ${percent(row.ratios[0]!)}–${percent(row.ratios.at(-1)!)} |` : ''
    lines.push(`| ${row.scenario} | ${row.gatehouse.requestsPerSecond} | ${row.gatehouse.p50} | ${row.gatehouse.p99} | ${row.gatehouse.errors} | ${row.rss} | ${row.floor.requestsPerSecond} | ${percent(ratioOf(row))} |${range} ${cpu(row.gatehouse)} | ${cpu(row.floor)} |`)
  }
  return lines.join('\n')
}

/** Issues 3, 5 and 6's goals, for the scenarios measured in this run. */
function goals (rows: Row[]): string {
  const jwt = rows.find(row => row.scenario === MEMBERS_JWT)
  const token = rows.find(row => row.scenario === MEMBERS_TOKEN)
  const lines: string[] = []
  const verdict = (ratio: number, goal: number): string => `goal ≥ ${percent(goal)}: ${ratio >= goal ? 'met' : 'NOT met'}`
  // Issue 3: me, refresh and login against their floors; health's p99 while logins saturate.
  for (const [name, goal] of [[ME_JWT, 0.7], [REFRESH, 0.6], [LOGIN, 0.9]] as const) {
    const row = rows.find(candidate => candidate.scenario === name)
    if (row !== undefined) lines.push(`- ${name} vs its floor: ${percent(ratioOf(row))}, rounds ${percent(row.ratios[0]!)}–${percent(row.ratios.at(-1)!)} (${verdict(ratioOf(row), goal)})`)
  }
  const health = rows.find(row => row.scenario === HEALTH_DURING_LOGINS)
  if (health !== undefined) lines.push(`- ${HEALTH_DURING_LOGINS}: p99 ${health.gatehouse.p99} ms (goal < 50 ms: ${health.gatehouse.p99 < 50 ? 'met' : 'NOT met'})`)
  if (jwt !== undefined && token !== undefined && jwt.gatehouse.requestsPerSecond > 0) {
    const ratio = token.gatehouse.requestsPerSecond / jwt.gatehouse.requestsPerSecond
    const cpu = jwt.gatehouse.cpuPerRequest === 0 || token.gatehouse.cpuPerRequest === 0 ? '' : `; CPU ${token.gatehouse.cpuPerRequest} vs ${jwt.gatehouse.cpuPerRequest} µs/req`
    lines.push(`- members list, read-only integration token vs JWT: ${percent(ratio)} of the JWT scenario's req/s (${token.gatehouse.requestsPerSecond} vs ${jwt.gatehouse.requestsPerSecond}; ${verdict(ratio, 0.9)})` +
      `${cpu}; against the same floor: ${percent(ratioOf(token))} vs ${percent(ratioOf(jwt))}`)
  }
  if (jwt !== undefined) lines.push(`- members list (JWT) vs its floor: ${percent(ratioOf(jwt))} (${verdict(ratioOf(jwt), 0.6)})`)
  // Issue 6: the birds list, with a JWT and with an integration token, each ≥ 60% of the floor.
  for (const name of [BIRDS_JWT, BIRDS_TOKEN]) {
    const row = rows.find(candidate => candidate.scenario === name)
    if (row !== undefined) lines.push(`- ${name} vs its floor: ${percent(ratioOf(row))} (${verdict(ratioOf(row), 0.6)})`)
  }
  return lines.length === 0 ? '' : `Goals (issues 3, 5 and 6):\n${lines.join('\n')}`
}

function statementTable (rows: Row[]): string {
  const counted = rows.filter(row => row.statements !== undefined)
  if (counted.length === 0) return ''
  const each = (count: number, requests: number): string => requests === 0 ? '–' : (count / requests).toFixed(count === 0 ? 0 : 3)
  const lines = [
    '| scenario | requests | statements | per request | rows written | per request | tables written | integration_tokens scans | scans per request, by table |',
    '|---|---:|---:|---:|---:|---:|---|---:|---|'
  ]
  for (const row of counted) {
    const { delta, requests } = row.statements!
    const written = [...delta.tables].filter(([, stats]) => stats.written !== 0).map(([table, stats]) => `${table} ${stats.written}`).join(', ')
    const scans = [...delta.tables].filter(([, stats]) => stats.scans !== 0).map(([table, stats]) => stats.scans >= requests / 100 ? `${table} ${each(stats.scans, requests)}` : `${table} ${stats.scans} in all`).join(', ')
    lines.push(`| ${row.scenario}${delta.settled ? '' : ' (unsettled)'} | ${requests} | ${delta.commits} | ${each(delta.commits, requests)} | ${delta.written} | ${each(delta.written, requests)} | ${written === '' ? '–' : written} | ${delta.tables.get('integration_tokens')?.scans ?? 0} | ${scans === '' ? '–' : scans} |`)
  }
  return `Statements during the run (Gatehouse only):\n\n${lines.join('\n')}\n\n` +
    'Counted from PostgreSQL\'s statistics of the bench database, read before and after each measured Gatehouse run (the floor runs outside ' +
    'those windows): statements = pg_stat_database.xact_commit (each statement of these routes is an autocommit statement, one transaction; ' +
    'a BEGIN…COMMIT block would count once, and a new pool connection adds one); rows written = n_tup_ins + n_tup_upd + n_tup_del over ' +
    'pg_stat_user_tables; scans = seq_scan + idx_scan per table (a join scans both tables). A statement that writes no row is a read. ' +
    '"requests" are the answers autocannon received: the request each connection still has in flight when it stops is served too ' +
    `(about ${connections} more statements than requests for a one-query route). ` +
    'Backends flush their statistics lazily (an idle one up to 10 s later), so each reading waits 11 s after the last load and then until ' +
    'two readings a second apart agree ("unsettled": they still moved after 26 s); the readings are rolled back and add no commit.'
}

async function main (): Promise<void> {
  // A name of its own, so that a bench run elsewhere on the same server never drops this one.
  const database = `gh_bench_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
  await admin.query(`CREATE DATABASE ${database}`)
  const databaseUrl = new URL(adminUrl)
  databaseUrl.pathname = `/${database}`
  const prefix = `gh:bench:${randomBytes(4).toString('hex')}:`
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const privatePem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()

  const gatehouse = await startServer(['dist/src/server.js'], {
    NODE_ENV: 'production',
    LOG_LEVEL: 'warn',
    DATABASE_URL: databaseUrl.toString(),
    REDIS_URL: redisUrl,
    REDIS_PREFIX: prefix,
    // One client address drives the whole load: the per-IP limit would stop it at once.
    RATE_LIMIT_MAX: '1000000000',
    RATE_LIMIT_AUTHENTICATED_MAX: '1000000000',
    RATE_LIMIT_TOKEN_MAX: '1000000000',
    REFRESH_MAX_PER_SESSION: '1000000',
    LOGIN_MAX_PER_IP: '1000000',
    // One account signs in on every connection at once, and an attempt holds its place in the
    // account's limit until it is decided (a success then clears the count).
    LOGIN_MAX_PER_ACCOUNT: '1000000',
    MAGIC_LINKS: 'disabled',
    JWT_PRIVATE_KEY: privatePem
  }, '/api/health')
  const floor = await startServer(['--import', 'tsx', 'bench/floor.ts'], {
    FLOOR_JWT_KEY: privatePem,
    FLOOR_PASSWORD_HASH: await hashPassword(BENCH_PASSWORD),
    FLOOR_REDIS_URL: redisUrl,
    FLOOR_DATABASE_URL: databaseUrl.toString()
  }, '/floor/health')
  const context: BenchContext = { gatehouse: gatehouse.base, floor: floor.base, connections, rounds }
  const counter = await StatementCounter.connect(databaseUrl.toString())

  const rows: Row[] = []
  try {
    if (soakMode) {
      const report = await soak(gatehouse.base, async () => await rssMegabytes(gatehouse.child.pid))
      console.log(`\n${report}`)
      await mkdir(join(projectRoot, 'bench/results'), { recursive: true })
      await writeFile(join(projectRoot, 'bench/results/soak.md'), `${report}\n`)
      return
    }
    for (const scenario of scenarios) {
      if (only !== undefined && !scenario.name.includes(only)) continue
      await scenario.prepare?.(context)
      // A warm-up lets the JIT and the caches settle before measuring: seconds, or the
      // scenario's own (a slow route needs longer to run its code often enough to optimize it).
      await measure(gatehouse.base, scenario.gatehouse(context), scenario.warmup ?? warmup)
      await measure(floor.base, scenario.floor(context), scenario.warmup ?? warmup)
      // Rounds alternate Gatehouse and its floor, so that a noisy neighbour hurts both alike;
      // the round with the median ratio is reported, with the range of all rounds.
      const measured: Row[] = []
      const deltas: Delta[] = []
      let requests = 0
      for (let round = 0; round < rounds; round++) {
        // The floor shares the database: the statistics are read only around Gatehouse's run.
        const before = scenario.statements === true ? await counter.settled(Date.now()) : undefined
        const [ours] = await Promise.all([
          measure(gatehouse.base, scenario.gatehouse(context), duration, scenario.background === undefined ? gatehouse.child.pid : undefined),
          scenario.background === undefined ? undefined : measure(gatehouse.base, scenario.background.gatehouse(context))
        ])
        const rss = await rssMegabytes(gatehouse.child.pid)
        if (before !== undefined) {
          deltas.push(difference(before, await counter.settled(Date.now())))
          requests += ours.requests
        }
        const [theirs] = await Promise.all([
          measure(floor.base, scenario.floor(context), duration, scenario.background === undefined ? floor.child.pid : undefined),
          scenario.background === undefined ? undefined : measure(floor.base, scenario.background.floor(context))
        ])
        measured.push({ scenario: scenario.name, gatehouse: ours, rss, floor: theirs, ratios: [] })
      }
      const ratios = measured.map(ratioOf).sort((a, b) => a - b)
      measured.sort((a, b) => ratioOf(a) - ratioOf(b))
      rows.push({ ...measured[Math.floor(measured.length / 2)]!, ratios, ...(deltas.length === 0 ? {} : { statements: { delta: sum(deltas), requests } }) })
      process.stderr.write(`measured ${scenario.name}\n`)
    }
  } finally {
    await counter.close()
    await stopServer(gatehouse)
    await stopServer(floor)
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
    await admin.end()
    const redis = new Redis(redisUrl)
    const keys = await redis.keys(`${prefix}*`)
    if (keys.length > 0) await redis.unlink(...keys)
    redis.disconnect()
  }

  // The floor's errors are not in the table: a floor that failed fast would flatter nobody.
  const floorErrors = rows.filter(row => row.floor.errors > 0).map(row => `- ${row.scenario}: ${row.floor.errors} floor errors`).join('\n')
  const output = [table(rows), floorErrors === '' ? '' : `Floor errors (its req/s are not comparable):\n${floorErrors}`, goals(rows), statementTable(rows)]
    .filter(part => part !== '').join('\n\n')
  console.log(`\nGatehouse bench — ${connections} connections, ${duration} s per measurement, ${rounds} round(s), Node ${process.version}\n`)
  console.log(output)
  await mkdir(join(projectRoot, 'bench/results'), { recursive: true })
  await writeFile(join(projectRoot, 'bench/results/last.md'), `${output}\n`)
}

await main()
