import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify, { type FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import pg from 'pg'
import app, { serverOptions } from '../src/app.js'
import { loadConfig, type Config } from '../src/config.js'
import { startEmbeddedPostgres } from '../src/db/embedded.js'
import { migrate, readMigrations } from '../src/db/migrate.js'
import { migrationsDir, projectRoot } from '../src/paths.js'

/*
 * Every test file runs against its own database (a clone of a migrated template database)
 * and its own Redis key namespace, so that files run in parallel and never see each
 * other's rows or keys. scripts/test.mjs finds the servers and passes them in:
 *   GH_TEST_PG_ADMIN_URL  an admin connection to PostgreSQL (unset: embedded PGlite)
 *   GH_TEST_REDIS_URL     Redis (unset: the in-process store)
 */

// Minimal view of tap's Test that the helpers need.
export interface TestContext { teardown: (fn: () => unknown) => void }

export const pgAdminUrl = process.env.GH_TEST_PG_ADMIN_URL === '' ? undefined : process.env.GH_TEST_PG_ADMIN_URL
export const redisUrl = process.env.GH_TEST_REDIS_URL === '' ? undefined : process.env.GH_TEST_REDIS_URL
export const embedded = pgAdminUrl === undefined

/**
 * Why a test of two instances cannot run here, or false. Instances share sessions, revocations
 * and events only through Redis, and a database only through a PostgreSQL server (PGlite serves
 * one connection): the embedded default is one instance by design.
 */
/** Why a test of production mode cannot run here, or false: production refuses to start without Redis. */
export const productionSkip: string | false = redisUrl === undefined
  ? 'needs a Redis server: NODE_ENV=production refuses to start on the in-process store'
  : false

export const twoInstancesSkip: string | false = embedded || redisUrl === undefined
  ? 'needs PostgreSQL and Redis servers: two instances share a database and sessions only through them (the embedded default is one instance)'
  : false

export function databaseUrl (adminUrl: string, database: string): string {
  const url = new URL(adminUrl)
  url.pathname = `/${database}`
  return url.toString()
}

async function withAdmin<T> (fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: pgAdminUrl, application_name: 'gatehouse-tests' })
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

/** A digest of the migrations: a change of any of them makes new templates. */
async function migrationsDigest (): Promise<string> {
  const migrations = await readMigrations(migrationsDir)
  return createHash('sha256').update(migrations.map(m => m.checksum).join(',')).digest('hex').slice(0, 12)
}

/**
 * The embedded default's template: a migrated PGlite data directory, dumped once per machine
 * (a file in the temp folder, shared by the test processes) and loaded by every test. Loading
 * it takes about a second; creating and migrating a database, four to seven.
 */
let embeddedTemplateBlob: Promise<Blob> | undefined
async function embeddedTemplate (): Promise<Blob> {
  embeddedTemplateBlob ??= (async () => {
    // Named after the migrations and the PGlite release, whose data directories it holds.
    const pglite = JSON.parse(await readFile(join(projectRoot, 'node_modules/@electric-sql/pglite/package.json'), 'utf8')) as { version: string }
    const file = join(tmpdir(), `gh-pglite-template-${pglite.version}-${await migrationsDigest()}.tar`)
    const saved = await readFile(file).catch(() => undefined)
    if (saved !== undefined) return new Blob([saved])
    const database = await startEmbeddedPostgres()
    try {
      await migrate(database.connectionString, migrationsDir)
      const dump = await database.dump()
      // Written aside and renamed, so that a parallel process never reads half a file.
      const partial = `${file}.${process.pid}.tmp`
      await writeFile(partial, Buffer.from(await dump.arrayBuffer()))
      await rename(partial, file)
      return dump
    } finally {
      await database.close()
    }
  })()
  return await embeddedTemplateBlob
}

/** The migrated template database, named after the migrations so that a change makes a new one. */
async function templateDatabase (): Promise<string> {
  const name = `gh_template_${await migrationsDigest()}`
  await withAdmin(async admin => {
    await admin.query('SELECT pg_advisory_lock(hashtext($1))', ['gatehouse:test-template'])
    try {
      const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])
      if (rowCount === 0) {
        await admin.query(`CREATE DATABASE ${name}`)
        try {
          await migrate(databaseUrl(pgAdminUrl!, name), migrationsDir)
        } catch (error) {
          await admin.query(`DROP DATABASE ${name}`)
          throw error
        }
      }
    } finally {
      await admin.query('SELECT pg_advisory_unlock(hashtext($1))', ['gatehouse:test-template'])
    }
  })
  return name
}

/**
 * A database for one test: a clone of the migrated template on PostgreSQL, dropped at
 * teardown; embedded, a fresh in-memory PGlite (migrated unless `migrated: false`).
 */
export async function testDatabase (t: TestContext, options: { migrated?: boolean } = {}): Promise<string> {
  const migrated = options.migrated ?? true
  if (embedded) {
    const database = await startEmbeddedPostgres({ loadDataDir: migrated ? await embeddedTemplate() : undefined })
    t.teardown(async () => { await database.close() })
    return database.connectionString
  }
  const name = `gh_test_${process.pid}_${randomBytes(4).toString('hex')}`
  const template = migrated ? await templateDatabase() : 'template0'
  await withAdmin(async admin => { await admin.query(`CREATE DATABASE ${name} TEMPLATE ${template}`) })
  t.teardown(async () => {
    await withAdmin(async admin => { await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) })
  })
  return databaseUrl(pgAdminUrl!, name)
}

/** A Redis key namespace for one test, emptied at teardown. */
export function testRedisPrefix (t: TestContext): string {
  const prefix = `gh:test:${randomBytes(6).toString('hex')}:`
  if (redisUrl !== undefined) {
    t.teardown(async () => { await deleteKeys(prefix) })
  }
  return prefix
}

async function deleteKeys (prefix: string): Promise<void> {
  const redis = new Redis(redisUrl!, { lazyConnect: true, maxRetriesPerRequest: 1 })
  try {
    await redis.connect()
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500)
      cursor = next
      if (keys.length > 0) await redis.unlink(...keys)
    } while (cursor !== '0')
  } finally {
    redis.disconnect()
  }
}

/** A private scratch directory, removed at teardown. */
export async function tempDir (t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'gh-test-'))
  t.teardown(async () => { await rm(dir, { recursive: true, force: true }) })
  return dir
}

export type Env = Record<string, string | undefined>

/** One signing key per test process (generating RSA keys per test would be slow). */
export const testSigningKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()

/** The configuration of a test app: its own database and namespace, quiet, generous limits. */
export async function testConfig (t: TestContext, env: Env = {}): Promise<Config> {
  const base: Env = {
    NODE_ENV: 'test',
    LOG_LEVEL: process.env.GH_TEST_LOG_LEVEL ?? 'silent',
    DATABASE_URL: 'DATABASE_URL' in env ? env.DATABASE_URL : await testDatabase(t),
    REDIS_URL: redisUrl,
    REDIS_PREFIX: testRedisPrefix(t),
    MIGRATE_ON_START: 'false',
    RATE_LIMIT_MAX: '100000',
    LOGIN_MAX_PER_IP: '100000',
    JWT_PRIVATE_KEY: testSigningKey,
    DATA_DIR: await tempDir(t)
  }
  // Production needs an SMTP server for magic links; tests that send mail start their own.
  if (env.NODE_ENV === 'production') base.SMTP_URL = 'smtp://127.0.0.1:9'
  // PGlite serves one connection at a time.
  if (embedded) base.DATABASE_POOL_MAX = '1'
  return loadConfig({ ...base, ...env })
}

export type TestApp = FastifyInstance & ReturnType<FastifyInstance['withTypeProvider']>

/**
 * Builds the application exactly as src/server.ts does, on a database and Redis namespace
 * of its own, and closes it at teardown. `extend` registers extra routes (for plugin tests).
 */
export async function build (
  t: TestContext,
  env: Env = {},
  extend?: (app: FastifyInstance) => Promise<void> | void,
  options: { now?: () => number } = {}
): Promise<FastifyInstance> {
  const config = await testConfig(t, env)
  const server = Fastify(serverOptions(config)).withTypeProvider<TypeBoxTypeProvider>()
  await server.register(fp(app), options.now === undefined ? { config } : { config, now: options.now })
  if (extend !== undefined) await server.register(fp(async instance => { await extend(instance) }))
  t.teardown(async () => { await server.close() })
  await server.ready()
  return server
}

/** A TCP port that is free on 127.0.0.1 right now. */
export async function freePort (): Promise<number> {
  const probe = createServer()
  await new Promise<void>(resolve => probe.listen(0, '127.0.0.1', resolve))
  const { port } = probe.address() as { port: number }
  await new Promise(resolve => probe.close(resolve))
  return port
}

/**
 * Every statement an app's pool clients send to its database while `fn` runs: pg's Client
 * `query` is wrapped for the duration (and only statements to this app's database count), so
 * a test can show what a request costs without touching server code.
 */
export async function statementsDuring (server: FastifyInstance, fn: () => Promise<void>): Promise<string[]> {
  const database = new URL(server.config.DATABASE_URL!).pathname.slice(1)
  type Query = (...args: unknown[]) => unknown
  const prototype = pg.Client.prototype as unknown as { query: Query }
  const original = prototype.query
  const statements: string[] = []
  prototype.query = function (this: { database?: string }, ...args: unknown[]) {
    if (this.database === database) {
      const [first] = args
      statements.push(typeof first === 'string' ? first : String((first as { text?: unknown } | undefined)?.text))
    }
    return original.apply(this, args)
  }
  try {
    await fn()
  } finally {
    prototype.query = original
  }
  return statements
}
