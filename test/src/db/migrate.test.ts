import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'
import t, { type Test } from 'tap'
import { migrate, readMigrations } from '../../../src/db/migrate.js'
import { migrationsDir } from '../../../src/paths.js'
import { embedded, tempDir, testDatabase } from '../../helper.js'

async function query<T extends pg.QueryResultRow> (url: string, text: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<T>(text)).rows
  } finally {
    await client.end()
  }
}

async function fixture (t: Test, files: Record<string, string>): Promise<string> {
  const dir = await tempDir(t)
  for (const [name, sql] of Object.entries(files)) await writeFile(join(dir, name), sql)
  return dir
}

t.test('applies migrations in numeric order and records them with a checksum', async t => {
  const url = await testDatabase(t, { migrated: false })
  const dir = await fixture(t, {
    '1000_add_column.sql': 'ALTER TABLE things ADD COLUMN label text;',
    '999_create.sql': 'CREATE TABLE things (id int PRIMARY KEY);'
  })
  const result = await migrate(url, dir)
  t.same(result.applied, ['999_create.sql', '1000_add_column.sql'], '999 runs before 1000')
  t.equal(result.current, 1000)
  const rows = await query<{ version: number, name: string, checksum: string }>(url, 'SELECT version, name, checksum FROM schema_migrations ORDER BY version')
  t.same(rows.map(row => [row.version, row.name]), [[999, 'create'], [1000, 'add_column']])
  t.ok(rows.every(row => /^[0-9a-f]{64}$/.test(row.checksum)), 'sha-256 checksums recorded')
  const columns = await query<{ column_name: string }>(url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'things' ORDER BY column_name")
  t.same(columns.map(column => column.column_name), ['id', 'label'])
})

t.test('a second run is a no-op', async t => {
  const url = await testDatabase(t, { migrated: false })
  const dir = await fixture(t, { '001_create.sql': 'CREATE TABLE things (id int);' })
  t.same((await migrate(url, dir)).applied, ['001_create.sql'])
  t.same((await migrate(url, dir)).applied, [], 'nothing applied twice')
  const rows = await query(url, 'SELECT * FROM schema_migrations')
  t.equal(rows.length, 1)
})

t.test('an applied migration that was edited is refused with a clear message', async t => {
  const url = await testDatabase(t, { migrated: false })
  const dir = await fixture(t, { '001_create.sql': 'CREATE TABLE things (id int);' })
  await migrate(url, dir)
  await writeFile(join(dir, '001_create.sql'), 'CREATE TABLE things (id bigint);')
  await writeFile(join(dir, '002_more.sql'), 'CREATE TABLE more_things (id int);')
  await t.rejects(migrate(url, dir), {
    name: 'MigrationError',
    message: /^001_create\.sql was edited after it was applied .*add a new migration instead$/
  })
  const tables = await query(url, "SELECT 1 FROM information_schema.tables WHERE table_name = 'more_things'")
  t.equal(tables.length, 0, 'later migrations are not applied past the refusal')
})

t.test('a failing migration leaves nothing behind and is not recorded', async t => {
  const url = await testDatabase(t, { migrated: false })
  const dir = await fixture(t, {
    '001_good.sql': 'CREATE TABLE good (id int);',
    '002_bad.sql': 'CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;'
  })
  await t.rejects(migrate(url, dir), { name: 'MigrationError', message: /^002_bad\.sql failed: relation "no_such_table" does not exist/ })
  const tables = await query<{ table_name: string }>(url, "SELECT table_name FROM information_schema.tables WHERE table_name IN ('good', 'half_done')")
  t.same(tables.map(table => table.table_name), ['good'], 'the failed migration rolled back as a whole')
  const versions = await query<{ version: number }>(url, 'SELECT version FROM schema_migrations')
  t.same(versions.map(row => row.version), [1])
})

t.test('the database knowing a migration the code lacks is refused', async t => {
  const url = await testDatabase(t, { migrated: false })
  const dir = await fixture(t, { '001_a.sql': 'SELECT 1;', '002_b.sql': 'SELECT 2;' })
  await migrate(url, dir)
  const older = await fixture(t, { '001_a.sql': 'SELECT 1;' })
  await t.rejects(migrate(url, older), { message: /the database has migration 2 \(b\) that this code does not have/ })
})

t.test('file names are checked', async t => {
  await t.rejects(readMigrations(await fixture(t, { 'create-users.sql': '' })), { message: /create-users\.sql: migration files are named NNN_name\.sql/ })
  await t.rejects(readMigrations(await fixture(t, { '001_a.sql': '', '001_b.sql': '' })), { message: '001_a.sql and 001_b.sql have the same number' })
})

t.test('instances migrating at once take turns under the advisory lock', { skip: embedded && 'PGlite serves one connection at a time' }, async t => {
  const url = await testDatabase(t, { migrated: false })
  const dir = await fixture(t, {
    '001_slow.sql': 'SELECT pg_sleep(0.3); CREATE TABLE once (id int);',
    '002_next.sql': 'CREATE TABLE twice (id int);'
  })
  const results = await Promise.all([migrate(url, dir), migrate(url, dir), migrate(url, dir)])
  t.same(results.map(result => result.applied.length).sort(), [0, 0, 2], 'exactly one instance applied them')
  const rows = await query(url, 'SELECT * FROM schema_migrations')
  t.equal(rows.length, 2)
})

t.test('the real migrations apply cleanly to an empty database', async t => {
  const url = await testDatabase(t, { migrated: false })
  const result = await migrate(url, migrationsDir)
  t.ok(result.applied.length > 0)
  t.same((await migrate(url, migrationsDir)).applied, [])
  const tables = await query<{ table_name: string }>(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")
  t.ok(tables.some(table => table.table_name === 'audit_log'))
})
