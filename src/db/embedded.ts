import { readFileSync, rmSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PGlite } from '@electric-sql/pglite'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'
import { isRunning } from '../lib/processes.js'
import { StartupError } from '../lib/startup-error.js'

/*
 * The embedded default: PGlite (real Postgres compiled to WASM) served over the Postgres
 * wire protocol on a private Unix socket, so the application talks to it through the very
 * same `pg` driver, pool and migrations as to a real server. PGlite has one backend, so
 * the socket takes one connection at a time and the pool in front of it has size 1; the
 * backend's session outlives each connection (see `sharedSession` in src/db/index.ts).
 */

export interface EmbeddedPostgres {
  connectionString: string
  /** Where the data lives; undefined for an in-memory database. */
  dataDir: string | undefined
  /** The whole data directory as a tarball, which `loadDataDir` starts another database from. */
  dump: () => Promise<Blob>
  close: () => Promise<void>
}

export interface EmbeddedOptions {
  /** Where the data lives; undefined for an in-memory database. */
  dataDir?: string | undefined
  /** A data directory made by PGlite's dumpDataDir, to start from (tests clone a migrated one). */
  loadDataDir?: Blob | undefined
}

/** The socket directories of this process are named after it, so leftovers can be told apart. */
const SOCKET_DIR_PREFIX = 'gh-pg-'

/**
 * Starts PGlite with its data under `dataDir`, or in memory. Nothing is left behind when
 * it fails or the process exits without closing it: the socket directory goes with it.
 */
export async function startEmbeddedPostgres (options: EmbeddedOptions | string = {}): Promise<EmbeddedPostgres> {
  const { dataDir, loadDataDir } = typeof options === 'string' ? { dataDir: options, loadDataDir: undefined } : options
  if (dataDir !== undefined) await mkdir(dataDir, { recursive: true, mode: 0o700 })
  await removeStaleSocketDirs()
  const db = await PGlite.create({
    ...(dataDir === undefined ? {} : { dataDir }),
    ...(loadDataDir === undefined ? {} : { loadDataDir })
  })
  let socketDir: string | undefined
  const removeSocketDir = (): void => { if (socketDir !== undefined) rmSync(socketDir, { recursive: true, force: true }) }
  try {
    // mkdtemp creates the directory with mode 0700: only this user can reach the socket.
    socketDir = await mkdtemp(join(tmpdir(), `${SOCKET_DIR_PREFIX}${process.pid}-`))
    process.once('exit', removeSocketDir)
    const server = new PGLiteSocketServer({ db, path: join(socketDir, '.s.PGSQL.5432'), maxConnections: 1 })
    await server.start()
    const directory = socketDir
    return {
      connectionString: `postgres://postgres@${encodeURIComponent(directory)}/postgres`,
      dataDir,
      dump: async () => await db.dumpDataDir('none'),
      async close () {
        await server.stop()
        await db.close()
        await rm(directory, { recursive: true, force: true })
        process.removeListener('exit', removeSocketDir)
      }
    }
  } catch (error) {
    await db.close().catch(() => {})
    removeSocketDir()
    process.removeListener('exit', removeSocketDir)
    throw error
  }
}

/** Socket directories of processes that no longer run (killed before they could clean up). */
async function removeStaleSocketDirs (): Promise<void> {
  const names = await readdir(tmpdir()).catch(() => [])
  for (const name of names) {
    const pid = Number(new RegExp(`^${SOCKET_DIR_PREFIX}(\\d+)-`).exec(name)?.[1])
    if (Number.isInteger(pid) && pid > 0 && !isRunning(pid)) {
      await rm(join(tmpdir(), name), { recursive: true, force: true }).catch(() => {})
    }
  }
}

/**
 * The embedded database of a data folder, for the server and the CLIs: locked for this
 * process (PGlite takes one), started, and unlocked again when it closes or fails to start.
 */
export async function openEmbeddedPostgres (dataDir: string, hooks: { onCreate?: () => void } = {}): Promise<EmbeddedPostgres> {
  const release = await lockDataDir(dataDir)
  try {
    if ((await readdir(dataDir)).length === 0) hooks.onCreate?.()
    const embedded = await startEmbeddedPostgres({ dataDir })
    return {
      ...embedded,
      async close () {
        try {
          await embedded.close()
        } finally {
          await release()
        }
      }
    }
  } catch (error) {
    await release()
    throw error
  }
}

/**
 * PGlite must never be opened by two processes at once: a lock file, created exclusively,
 * holds the owner's pid. A lock left by a process that no longer runs is taken over.
 */
async function lockDataDir (dataDir: string): Promise<() => Promise<void>> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 })
  const lockFile = `${dataDir}.lock`
  // Also on an exit without a close (a failed start ends in process.exit): synchronously.
  const releaseNow = (): void => {
    try {
      if (readFileSync(lockFile, 'utf8') === String(process.pid)) rmSync(lockFile, { force: true })
    } catch {}
  }
  const release = async (): Promise<void> => {
    process.removeListener('exit', releaseNow)
    releaseNow()
  }
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await writeFile(lockFile, String(process.pid), { flag: 'wx', mode: 0o600 })
      process.once('exit', releaseNow)
      return release
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }
    const owner = Number(await readFile(lockFile, 'utf8').catch(() => ''))
    if (owner === process.pid) return async () => {}
    if (Number.isInteger(owner) && owner > 0 && isRunning(owner)) {
      throw new StartupError(`The embedded database in ${dataDir} is in use by another Gatehouse process (pid ${owner}). ` +
        'Stop that process, or give this one its own DATA_DIR (or a DATABASE_URL).')
    }
    // Left by a process that no longer runs: take it over (one of several racing starts wins).
    await rm(lockFile, { force: true })
  }
  throw new StartupError(`Could not lock the embedded database in ${dataDir}: another process keeps taking the lock file ${lockFile}.`)
}
