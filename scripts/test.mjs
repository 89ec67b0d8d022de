#!/usr/bin/env node
// npm test: finds PostgreSQL and Redis, says in its first line what the tests run on, then
// runs tap. Where neither answers, the tests run on the embedded default (PGlite and the
// in-process store). With GH_TEST_REQUIRE_SERVERS=1 (.ci/run) a missing server is an error.
//   TEST_DATABASE_URL  admin connection (default postgres://postgres@127.0.0.1:5432/postgres)
//   TEST_REDIS_URL     Redis (default redis://127.0.0.1:6379)
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { Redis } from 'ioredis'
import pg from 'pg'

const pgUrl = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const redisUrl = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'
const requireServers = process.env.GH_TEST_REQUIRE_SERVERS === '1'

function isRunning (pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return error.code === 'EPERM'
  }
}

async function postgresAnswers () {
  const client = new pg.Client({ connectionString: pgUrl, connectionTimeoutMillis: 3000 })
  try {
    await client.connect()
    // Leftovers of interrupted runs: test databases of processes that no longer run (each
    // is named gh_test_<pid>_…), and templates when no other run is going on — several runs
    // may share one PostgreSQL, and one must never drop another's databases.
    const { rows } = await client.query("SELECT datname FROM pg_database WHERE datname LIKE 'gh\\_test\\_%'")
    let live = 0
    for (const { datname } of rows) {
      const pid = Number(/^gh_test_(\d+)_/.exec(datname)?.[1])
      if (Number.isInteger(pid) && pid > 0 && isRunning(pid)) live++
      else await client.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`)
    }
    if (live === 0) {
      await client.query('SELECT pg_advisory_lock(hashtext($1))', ['gatehouse:test-template'])
      try {
        const templates = await client.query("SELECT datname FROM pg_database WHERE datname LIKE 'gh\\_template\\_%'")
        for (const { datname } of templates.rows) await client.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`)
      } finally {
        await client.query('SELECT pg_advisory_unlock(hashtext($1))', ['gatehouse:test-template'])
      }
    }
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}

async function redisAnswers () {
  const client = new Redis(redisUrl, { lazyConnect: true, connectTimeout: 3000, maxRetriesPerRequest: 0, retryStrategy: () => null })
  client.on('error', () => {})
  try {
    await client.connect()
    await client.ping()
    return true
  } catch {
    return false
  } finally {
    client.disconnect()
  }
}

const [hasPostgres, hasRedis] = await Promise.all([postgresAnswers(), redisAnswers()])
const safeUrl = url => url.replace(/\/\/[^@/]*@/, '//')
const parts = [
  hasPostgres ? `PostgreSQL at ${safeUrl(pgUrl)}` : 'embedded PGlite (no PostgreSQL answered)',
  hasRedis ? `Redis at ${safeUrl(redisUrl)}` : 'the in-process store (no Redis answered)'
]
const embedded = !hasPostgres || !hasRedis
console.log(`Gatehouse tests on ${parts.join(' and ')}${embedded ? ' — embedded default' : ''}`)
if (embedded && requireServers) {
  console.error('GH_TEST_REQUIRE_SERVERS=1: the tests must run on real PostgreSQL and Redis')
  process.exit(1)
}

// The browser test needs Debian's Chromium (.ci/run installs it). Without it the rest runs,
// and the first lines say the browser test was left out; CI never leaves it out.
const chromium = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const extra = []
if (!existsSync(chromium)) {
  if (requireServers) {
    console.error(`GH_TEST_REQUIRE_SERVERS=1: the browser test needs Chromium at ${chromium}`)
    process.exit(1)
  }
  console.log(`No Chromium at ${chromium}: test/e2e (the demo SPA in a browser) is left out; apt-get install chromium to run it`)
  extra.push('--exclude=test/e2e/**')
}

// Files in parallel: each has a database of its own, and most of a file's time is spent waiting
// (on PostgreSQL, Redis, a browser, a child process). tap's own default leaves one CPU free,
// which on a 2-core machine means one file at a time.
const asked = process.argv.slice(2).some(arg => /^(-j|--jobs)/.test(arg))
if (!asked) extra.push(`--jobs=${Math.max(2, Math.min(8, availableParallelism()))}`)

const child = spawn(process.execPath, ['node_modules/tap/dist/esm/run.mjs', ...extra, ...process.argv.slice(2)], {
  stdio: 'inherit',
  env: {
    ...process.env,
    GH_TEST_PG_ADMIN_URL: hasPostgres ? pgUrl : '',
    GH_TEST_REDIS_URL: hasRedis ? redisUrl : ''
  }
})
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)))
