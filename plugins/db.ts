import { kill } from 'node:process'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import fp from 'fastify-plugin'
import { sql, type Kysely } from 'kysely'
import { createDatabase, createPool, type Database, type StatementCounts } from '../src/db/index.js'
import { startEmbeddedPostgres, type EmbeddedPostgres } from '../src/db/embedded.js'
import { migrate } from '../src/db/migrate.js'
import { fromRoot, migrationsDir } from '../src/paths.js'

declare module 'fastify' {
  interface FastifyInstance {
    db: Kysely<Database>
    database: {
      /** 'embedded' when running on PGlite under DATA_DIR. */
      mode: 'postgres' | 'embedded'
      /** Resolves when Postgres answers a trivial query; rejects otherwise. */
      ping: () => Promise<void>
      /** Statements this instance has run since it started, by kind (a copy). */
      statements: () => StatementCounts
    }
  }
}

/**
 * One Kysely instance over one pg pool, destroyed on close. Without DATABASE_URL, starts the
 * embedded PGlite under DATA_DIR/pglite. Applies migrations at start when MIGRATE_ON_START.
 */
export default fp(async (fastify) => {
  const { config } = fastify
  let embedded: EmbeddedPostgres | undefined
  let releaseLock = async (): Promise<void> => {}
  let connectionString = config.DATABASE_URL
  if (connectionString === undefined) {
    const dataDir = join(fromRoot(config.DATA_DIR), 'pglite')
    releaseLock = await lockDataDir(dataDir)
    embedded = await startEmbeddedPostgres(dataDir)
    connectionString = embedded.connectionString
  }

  try {
    if (config.MIGRATE_ON_START) {
      const { applied } = await migrate(connectionString, migrationsDir)
      if (applied.length > 0) fastify.log.info({ applied }, 'applied database migrations')
    }
  } catch (error) {
    await embedded?.close()
    await releaseLock()
    throw error
  }

  const pool = createPool({
    connectionString,
    // PGlite has a single backend: one connection at a time.
    max: embedded === undefined ? config.DATABASE_POOL_MAX : 1,
    connectTimeoutMs: config.DATABASE_CONNECT_TIMEOUT,
    statementTimeoutMs: config.DATABASE_STATEMENT_TIMEOUT,
    preparedStatements: config.DATABASE_PREPARED_STATEMENTS,
    onError: error => fastify.log.warn({ err: error }, 'idle PostgreSQL connection failed')
  })
  const counts: StatementCounts = { reads: 0, writes: 0, transactions: 0 }
  const db = createDatabase(pool, counts)

  fastify.decorate('db', db)
  fastify.decorate('database', {
    mode: embedded === undefined ? 'postgres' : 'embedded',
    async ping () { await sql`SELECT 1`.execute(db) },
    statements: () => ({ ...counts })
  })
  fastify.addHook('onClose', async () => {
    await db.destroy()
    await embedded?.close()
    await releaseLock()
  })
}, { name: 'db', dependencies: ['config'], fastify: '5.x' })

/**
 * PGlite must never be opened by two processes at once: a lock file holds the owner's pid.
 * A lock left by a process that no longer runs is taken over.
 */
export async function lockDataDir (dataDir: string): Promise<() => Promise<void>> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 })
  const lockFile = `${dataDir}.lock`
  const owner = Number(await readFile(lockFile, 'utf8').catch(() => ''))
  if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && isRunning(owner)) {
    throw new Error(`another Gatehouse process (pid ${owner}) is using the embedded database in ${dataDir}; stop it or set DATA_DIR`)
  }
  await writeFile(lockFile, String(process.pid), { mode: 0o600 })
  return async () => { await rm(lockFile, { force: true }) }
}

function isRunning (pid: number): boolean {
  try {
    kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}
