import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'

/*
 * Migrations are numbered plain .sql files (sql/001_init.sql …). Each runs in its own
 * transaction, under a session advisory lock so that instances starting together take
 * turns, and is recorded with a checksum. A recorded migration whose file changed is
 * refused: applied migrations are never edited, a new one is added instead.
 */

const FILE_NAME = /^(\d{3,})_([a-z0-9_]+)\.sql$/
const LOCK_KEY = 'gatehouse:migrations'

export interface Migration { version: number, name: string, file: string, sql: string, checksum: string }
export interface MigrationResult { applied: string[], current: number }

export class MigrationError extends Error {
  override name = 'MigrationError'
}

export function checksum (sql: string): string {
  return createHash('sha256').update(sql.replace(/\r\n/g, '\n')).digest('hex')
}

export async function readMigrations (dir: string): Promise<Migration[]> {
  const files = (await readdir(dir)).filter(file => file.endsWith('.sql')).sort()
  const migrations: Migration[] = []
  for (const file of files) {
    const match = FILE_NAME.exec(file)
    if (match === null) throw new MigrationError(`${file}: migration files are named NNN_name.sql (lower case, digits, underscores)`)
    const sql = await readFile(join(dir, file), 'utf8')
    migrations.push({ version: Number(match[1]), name: match[2]!, file, sql, checksum: checksum(sql) })
  }
  migrations.sort((a, b) => a.version - b.version)
  for (let i = 1; i < migrations.length; i++) {
    if (migrations[i]!.version === migrations[i - 1]!.version) {
      throw new MigrationError(`${migrations[i - 1]!.file} and ${migrations[i]!.file} have the same number`)
    }
  }
  return migrations
}

/** Applies pending migrations from `dir` to the database at `connectionString`. */
export async function migrate (connectionString: string, dir: string): Promise<MigrationResult> {
  const migrations = await readMigrations(dir)
  const client = new pg.Client({ connectionString, application_name: 'gatehouse-migrate' })
  await client.connect()
  try {
    await client.query('SELECT pg_advisory_lock(hashtext($1))', [LOCK_KEY])
    try {
      return await applyPending(client, migrations)
    } finally {
      await client.query('SELECT pg_advisory_unlock(hashtext($1))', [LOCK_KEY])
    }
  } finally {
    await client.end()
  }
}

async function applyPending (client: pg.Client, migrations: Migration[]): Promise<MigrationResult> {
  await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
  )`)
  const { rows } = await client.query<{ version: number, name: string, checksum: string }>(
    'SELECT version, name, checksum FROM schema_migrations ORDER BY version')
  const known = new Map(migrations.map(migration => [migration.version, migration]))
  for (const row of rows) {
    const migration = known.get(row.version)
    if (migration === undefined) {
      throw new MigrationError(`the database has migration ${row.version} (${row.name}) that this code does not have; deploy the newer code instead`)
    }
    if (migration.checksum !== row.checksum) {
      throw new MigrationError(`${migration.file} was edited after it was applied (checksum ${row.checksum.slice(0, 12)} recorded, ${migration.checksum.slice(0, 12)} on disk); restore it and add a new migration instead`)
    }
  }
  const done = new Set(rows.map(row => row.version))
  const applied: string[] = []
  for (const migration of migrations) {
    if (done.has(migration.version)) continue
    await client.query('BEGIN')
    try {
      await client.query(migration.sql)
      await client.query('INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)',
        [migration.version, migration.name, migration.checksum])
      await client.query('COMMIT')
    } catch (error) {
      await client.query('ROLLBACK')
      throw new MigrationError(`${migration.file} failed: ${(error as Error).message}`, { cause: error })
    }
    applied.push(migration.file)
  }
  return { applied, current: migrations.at(-1)?.version ?? 0 }
}
