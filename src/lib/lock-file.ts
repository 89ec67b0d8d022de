import { randomBytes } from 'node:crypto'
import { readFileSync, rmSync } from 'node:fs'
import { link, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { currentProcess, stillRuns, whereIs, type ProcessIdentity } from './processes.js'
import { StartupError } from './startup-error.js'

/*
 * A lock file, created exclusively, that records its holder (pid, host name, pid namespace,
 * boot and start time: see processes.ts) as JSON. A lock whose holder is gone is stale and
 * taken over; one from another host or pid namespace cannot be checked from here and is
 * never taken over. Plain-pid lock files of earlier versions are still read.
 */

/** Someone else holds the lock; `where` says whether its holder could be checked from here. */
export class LockHeldError extends Error {
  override name = 'LockHeldError'
  constructor (readonly lockFile: string, readonly holder: ProcessIdentity, readonly where: 'here' | 'other-host' | 'other-namespace') {
    super(`${lockFile} is held by pid ${holder.pid}${holder.hostname === undefined ? '' : ` on ${holder.hostname}`}`)
  }
}

/** The locks this process holds, by path, with the number of opens that share each. */
const held = new Map<string, { opens: number, releaseNow: () => void }>()

/**
 * Takes the lock file, or shares it when this process holds it already (a second open in
 * the same process); resolves to its release, which the exit of the process also performs.
 */
export async function acquireLockFile (lockFile: string): Promise<() => Promise<void>> {
  const mine = held.get(lockFile)
  if (mine !== undefined) {
    mine.opens++
    return releaseOnce(lockFile)
  }
  const content = JSON.stringify(currentProcess())
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await writeFile(lockFile, content, { flag: 'wx', mode: 0o600 })
      // Also on an exit without a close (a failed start ends in process.exit): synchronously.
      const releaseNow = (): void => {
        try {
          if (readFileSync(lockFile, 'utf8') === content) rmSync(lockFile, { force: true })
        } catch {}
      }
      process.once('exit', releaseNow)
      held.set(lockFile, { opens: 1, releaseNow })
      return releaseOnce(lockFile)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }
    const found = await readHolder(lockFile)
    if (found === undefined) continue // removed meanwhile
    const { text, holder } = found
    if (holder !== undefined) {
      const where = whereIs(holder)
      if (where !== 'here') throw new LockHeldError(lockFile, holder, where)
      // Our own pid in a lock we do not hold: left by an earlier process that had this pid.
      if (holder.pid !== process.pid && stillRuns(holder)) throw new LockHeldError(lockFile, holder, where)
    }
    await removeIfUnchanged(lockFile, text)
  }
  throw new StartupError(`Could not take the lock file ${lockFile}: other processes keep taking it.`)
}

/** One release per acquisition: the last one removes the file. */
function releaseOnce (lockFile: string): () => Promise<void> {
  let released = false
  return async () => {
    const mine = held.get(lockFile)
    if (released || mine === undefined) return
    released = true
    if (--mine.opens > 0) return
    held.delete(lockFile)
    process.removeListener('exit', mine.releaseNow)
    mine.releaseNow()
  }
}

/**
 * The lock file's text and the holder it names (undefined when it names none: stale). An
 * empty file may be one being written (create and write are two steps): read it again.
 */
async function readHolder (lockFile: string): Promise<{ text: string, holder: ProcessIdentity | undefined } | undefined> {
  let text = ''
  for (let read = 0; read < 5; read++) {
    try {
      text = await readFile(lockFile, 'utf8')
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw error
    }
    if (text !== '') break
    await sleep(50)
  }
  return { text, holder: parseHolder(text) }
}

export function parseHolder (text: string): ProcessIdentity | undefined {
  const trimmed = text.trim()
  // Earlier versions wrote the pid alone.
  if (/^\d+$/.test(trimmed)) return { pid: Number(trimmed) }
  let value: unknown
  try {
    value = JSON.parse(trimmed)
  } catch {
    return undefined
  }
  if (typeof value !== 'object' || value === null) return undefined
  const record = value as Record<string, unknown>
  const pid = record.pid
  if (typeof pid !== 'number' || !Number.isInteger(pid) || pid <= 0) return undefined
  const field = (key: string): string | undefined => typeof record[key] === 'string' ? record[key] : undefined
  return { pid, hostname: field('hostname'), startTime: field('startTime'), bootId: field('bootId'), pidNamespace: field('pidNamespace') }
}

/**
 * Removes a stale lock file only if it still holds the text judged stale: moved aside first
 * (atomic), and put back if a racing start had meanwhile replaced it with a live lock.
 */
async function removeIfUnchanged (lockFile: string, staleText: string): Promise<void> {
  const aside = `${lockFile}.stale-${process.pid}-${randomBytes(4).toString('hex')}`
  try {
    await rename(lockFile, aside)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return
    throw error
  }
  try {
    if (await readFile(aside, 'utf8') !== staleText) {
      await link(aside, lockFile).catch(async (error: NodeJS.ErrnoException) => {
        if (error.code !== 'EEXIST') await rename(aside, lockFile)
      })
    }
  } finally {
    await rm(aside, { force: true })
  }
}
