import { rmSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PGlite } from '@electric-sql/pglite'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'
import { acquireLockFile, LockHeldError } from '../lib/lock-file.js'
import { hostTag, isRunning } from '../lib/processes.js'
import { fileSystemProblem, StartupError } from '../lib/startup-error.js'

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

/**
 * Socket folders are named gh-pg-<host tag>-<pid>-XXXXXX: the clean-up of leftovers tells a
 * dead process's folder by its pid, and touches only folders of this host and pid namespace —
 * the temporary folder may be shared with containers whose pids mean nothing here.
 */
const SOCKET_DIR_PREFIX = 'gh-pg-'
const SOCKET_NAME = '.s.PGSQL.5432'
/** The longest Unix socket path the system takes (sun_path, less its final NUL byte). */
const MAX_SOCKET_PATH = process.platform === 'linux' ? 107 : 103

/**
 * Starts PGlite with its data under `dataDir`, or in memory. Nothing is left behind when
 * it fails or the process exits without closing it: the socket directory goes with it.
 */
export async function startEmbeddedPostgres (options: EmbeddedOptions | string = {}): Promise<EmbeddedPostgres> {
  const { dataDir, loadDataDir } = typeof options === 'string' ? { dataDir: options, loadDataDir: undefined } : options
  if (dataDir !== undefined) await mkdir(dataDir, { recursive: true, mode: 0o700 })
  const socketParent = socketParentDir()
  await removeStaleSocketDirs(socketParent)
  const db = await PGlite.create({
    ...(dataDir === undefined ? {} : { dataDir }),
    ...(loadDataDir === undefined ? {} : { loadDataDir })
  })
  let socketDir: string | undefined
  const removeSocketDir = (): void => { if (socketDir !== undefined) rmSync(socketDir, { recursive: true, force: true }) }
  try {
    // mkdtemp creates the directory with mode 0700: only this user can reach the socket.
    socketDir = await mkdtemp(join(socketParent, `${socketDirPrefix()}-`)).catch((error: unknown) => {
      const problem = fileSystemProblem(error, 'set TMPDIR to another folder')
      throw problem === undefined ? error : new StartupError(`The embedded database needs a folder for its socket, and ${problem}`)
    })
    process.once('exit', removeSocketDir)
    const server = new PGLiteSocketServer({ db, path: join(socketDir, SOCKET_NAME), maxConnections: 1 })
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

function socketDirPrefix (): string {
  return `${SOCKET_DIR_PREFIX}${hostTag()}-${process.pid}`
}

/**
 * Where the socket folder goes: the temporary folder, or /tmp when the socket's path under
 * it would be longer than the system takes (a listen that fails with EINVAL, or one that
 * silently binds a truncated path on older Node versions).
 */
export function socketParentDir (candidates: string[] = [...new Set([tmpdir(), '/tmp'])]): string {
  const socketPath = (parent: string): string => join(parent, `${socketDirPrefix()}-XXXXXX`, SOCKET_NAME)
  const fits = candidates.find(parent => Buffer.byteLength(socketPath(parent)) <= MAX_SOCKET_PATH)
  if (fits !== undefined) return fits
  const first = socketPath(candidates[0] ?? tmpdir())
  throw new StartupError(`The embedded database's socket path ${first} would be ${Buffer.byteLength(first)} bytes long, ` +
    `more than the ${MAX_SOCKET_PATH} this system takes${candidates.length > 1 ? `, and under ${candidates.slice(1).join(', ')} too` : ''}. ` +
    'Set TMPDIR to a folder with a shorter path.')
}

/**
 * Socket folders in `parent` of processes of this host and pid namespace that no longer run
 * (killed before they could clean up). Another host's folders are never touched: its pids
 * say nothing here, and its server may be using them.
 */
export async function removeStaleSocketDirs (parent: string): Promise<void> {
  const names = await readdir(parent).catch(() => [])
  const ours = new RegExp(`^${SOCKET_DIR_PREFIX}${hostTag()}-(\\d+)-`)
  for (const name of names) {
    const pid = Number(ours.exec(name)?.[1])
    if (Number.isInteger(pid) && pid > 0 && !isRunning(pid)) {
      await rm(join(parent, name), { recursive: true, force: true }).catch(() => {})
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

/** The embedded database is held by another process of this host: most likely a running server. */
export class DataDirInUseError extends StartupError {
  override name = 'DataDirInUseError'
  constructor (readonly dataDir: string, readonly pid: number) {
    super(`The embedded database in ${dataDir} is in use by another Gatehouse process (pid ${pid}). ` +
      'Stop that process, or give this one its own DATA_DIR (or a DATABASE_URL).')
  }
}

/**
 * PGlite must never be opened by two processes at once: a lock file next to the data
 * (src/lib/lock-file.ts). A lock left by a process that no longer runs is taken over; one
 * of another host or pid namespace, which cannot be checked from here, never is.
 */
async function lockDataDir (dataDir: string): Promise<() => Promise<void>> {
  const lockFile = `${dataDir}.lock`
  try {
    await mkdir(dataDir, { recursive: true, mode: 0o700 })
    return await acquireLockFile(lockFile)
  } catch (error) {
    if (error instanceof LockHeldError) {
      const { holder, where } = error
      if (where === 'here') throw new DataDirInUseError(dataDir, holder.pid)
      const place = where === 'other-host'
        ? `on the host ${holder.hostname ?? '?'}`
        : `in another pid namespace (another container?) on this host, ${holder.hostname ?? '?'}`
      throw new StartupError(`The embedded database in ${dataDir} is locked by process ${holder.pid} ${place}, which cannot be checked from here, ` +
        'so the lock is not taken over: two machines or containers must never open one data folder at once. ' +
        `If that process is really gone, delete ${lockFile} and start again; otherwise give this one its own DATA_DIR (or a DATABASE_URL).`)
    }
    const problem = fileSystemProblem(error, 'set DATA_DIR to another folder')
    throw problem === undefined ? error : new StartupError(`The embedded database needs a writable DATA_DIR, and ${problem}`)
  }
}
