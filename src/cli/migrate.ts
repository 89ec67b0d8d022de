import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { ConfigError, loadConfig } from '../config.js'
import { openEmbeddedPostgres } from '../db/embedded.js'
import { migrate, MigrationError } from '../db/migrate.js'
import { StartupError } from '../lib/startup-error.js'
import { fromRoot, migrationsDir } from '../paths.js'

/*
 * `npm run migrate`: applies the pending migrations of sql/ to DATABASE_URL, or to the
 * embedded database under DATA_DIR when it is unset. A second run is a no-op.
 */
if (existsSync('.env')) process.loadEnvFile('.env')

try {
  const config = loadConfig()
  let connectionString = config.DATABASE_URL
  let close = async (): Promise<void> => {}
  if (connectionString === undefined) {
    const dataDir = join(fromRoot(config.DATA_DIR), 'pglite')
    const embedded = await openEmbeddedPostgres(dataDir)
    connectionString = embedded.connectionString
    close = async () => { await embedded.close() }
  }
  try {
    const { applied, current } = await migrate(connectionString, migrationsDir)
    console.log(applied.length === 0 ? `database is up to date (version ${current})` : `applied ${applied.join(', ')}; now at version ${current}`)
  } finally {
    await close()
  }
} catch (error) {
  if (!(error instanceof ConfigError || error instanceof MigrationError || error instanceof StartupError)) throw error
  console.error(error.message)
  process.exitCode = 1
}
