import { mkdtemp, mkdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PGlite } from '@electric-sql/pglite'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'

/*
 * The embedded default: PGlite (real Postgres compiled to WASM) served over the Postgres
 * wire protocol on a private Unix socket, so the application talks to it through the very
 * same `pg` driver, pool and migrations as to a real server. PGlite has one backend, so
 * the socket takes one connection at a time and the pool in front of it has size 1.
 */

export interface EmbeddedPostgres {
  connectionString: string
  /** Where the data lives; undefined for an in-memory database. */
  dataDir: string | undefined
  close: () => Promise<void>
}

/** Starts PGlite with its data under `dataDir`, or in memory when `dataDir` is undefined. */
export async function startEmbeddedPostgres (dataDir?: string): Promise<EmbeddedPostgres> {
  if (dataDir !== undefined) await mkdir(dataDir, { recursive: true, mode: 0o700 })
  const db = await PGlite.create(dataDir === undefined ? undefined : { dataDir })
  // mkdtemp creates the directory with mode 0700: only this user can reach the socket.
  const socketDir = await mkdtemp(join(tmpdir(), 'gh-pg-'))
  const server = new PGLiteSocketServer({ db, path: join(socketDir, '.s.PGSQL.5432'), maxConnections: 1 })
  await server.start()
  return {
    connectionString: `postgres://postgres@${encodeURIComponent(socketDir)}/postgres`,
    dataDir,
    async close () {
      await server.stop()
      await db.close()
      await rm(socketDir, { recursive: true, force: true })
    }
  }
}
