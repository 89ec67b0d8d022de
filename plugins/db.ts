import { join } from 'node:path'
import fp from 'fastify-plugin'
import { sql, type Kysely } from 'kysely'
import { createDatabase, createPool, type Database, type StatementCounts } from '../src/db/index.js'
import { openEmbeddedPostgres, type EmbeddedPostgres } from '../src/db/embedded.js'
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
 * A start that fails leaves nothing behind: no lock, no socket, no pool.
 */
export default fp(async (fastify) => {
  const { config } = fastify
  let embedded: EmbeddedPostgres | undefined
  let connectionString = config.DATABASE_URL
  try {
    if (connectionString === undefined) {
      const dataDir = join(fromRoot(config.DATA_DIR), 'pglite')
      embedded = await openEmbeddedPostgres(dataDir, {
        onCreate: () => fastify.log.info(`creating the embedded database in ${dataDir} (the first start takes a few seconds)`)
      })
      connectionString = embedded.connectionString
    }
    if (config.MIGRATE_ON_START) {
      const { applied } = await migrate(connectionString, migrationsDir)
      if (applied.length > 0) fastify.log.info({ applied }, 'applied database migrations')
    }
  } catch (error) {
    await embedded?.close().catch(() => {})
    throw error
  }

  const pool = createPool({
    connectionString,
    // PGlite has a single backend: one connection at a time.
    max: embedded === undefined ? config.DATABASE_POOL_MAX : 1,
    connectTimeoutMs: config.DATABASE_CONNECT_TIMEOUT,
    statementTimeoutMs: config.DATABASE_STATEMENT_TIMEOUT,
    idleTimeoutMs: config.DATABASE_IDLE_TIMEOUT,
    preparedStatements: config.DATABASE_PREPARED_STATEMENTS,
    // PGlite's one backend keeps its session (prepared statements) from one connection to the next.
    sharedSession: embedded !== undefined,
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
  })
}, { name: 'db', dependencies: ['config'], fastify: '5.x' })
