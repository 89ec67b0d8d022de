import { createHash } from 'node:crypto'
import { readFileSync, readlinkSync } from 'node:fs'
import { hostname } from 'node:os'
import { basename } from 'node:path'
import { kill } from 'node:process'

/*
 * What tells one process from another beyond its pid, which the system hands out again
 * (after a reboot, or once the counter wraps) and which means nothing in another pid
 * namespace (a container) or on another machine sharing the folder. The /proc readings are
 * Linux's; elsewhere they are undefined and the callers fall back to the pid alone.
 */

/** True while a process with this pid runs (one of another user counts: it answers EPERM). */
export function isRunning (pid: number): boolean {
  try {
    kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** When a process started, in clock ticks after boot: field 22 of /proc/<pid>/stat. */
export function processStartTime (pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Field 2, the command name, is in parentheses and may itself hold spaces and parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[22 - 3]
  } catch {
    return undefined
  }
}

/** Whether a process runs Node (its argv[0] is node); undefined when that cannot be read. */
export function isNodeProcess (pid: number): boolean | undefined {
  let argv0: string
  try {
    argv0 = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0] ?? ''
  } catch {
    return undefined
  }
  const name = basename(argv0)
  return /^node(js)?[\d.]*$/.test(name) || name === basename(process.execPath)
}

/** The id of this boot of the kernel (containers share their host's). */
function bootId (): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  } catch {
    return undefined
  }
}

/** The pid namespace this process lives in ("pid:[4026531836]"): pids of another mean nothing here. */
function pidNamespace (): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid')
  } catch {
    return undefined
  }
}

/** A process as a lock file records it: enough to recognise it again, or a reused pid. */
export interface ProcessIdentity {
  pid: number
  hostname?: string | undefined
  /** processStartTime of the pid. */
  startTime?: string | undefined
  bootId?: string | undefined
  pidNamespace?: string | undefined
}

export function currentProcess (): ProcessIdentity {
  return { pid: process.pid, hostname: hostname(), startTime: processStartTime(process.pid), bootId: bootId(), pidNamespace: pidNamespace() }
}

/** Where a recorded process lives as seen from this one: only 'here' can be checked by pid. */
export function whereIs (recorded: ProcessIdentity): 'here' | 'other-host' | 'other-namespace' {
  const self = currentProcess()
  if (recorded.hostname !== undefined && recorded.hostname !== self.hostname) return 'other-host'
  if (recorded.pidNamespace !== undefined && self.pidNamespace !== undefined && recorded.pidNamespace !== self.pidNamespace) return 'other-namespace'
  return 'here'
}

/**
 * Whether the process a record names (on this host, in this namespace) still runs: not when
 * the machine has rebooted since, nor when its pid now belongs to a process that started at
 * another time. Where the start time cannot be compared (a record of the pid alone, written
 * by an earlier version, or no /proc), the pid counts only while it is a Node process.
 */
export function stillRuns (recorded: ProcessIdentity): boolean {
  const { pid } = recorded
  if (recorded.bootId !== undefined) {
    const now = bootId()
    if (now !== undefined && now !== recorded.bootId) return false
  }
  if (!isRunning(pid)) return false
  const startedAt = recorded.startTime === undefined ? undefined : processStartTime(pid)
  if (startedAt !== undefined) return startedAt === recorded.startTime
  return isNodeProcess(pid) !== false
}

/**
 * A short tag of this host and pid namespace, for names in a folder that several of them
 * may share (the temporary folder): each cleans up only what carries its own tag.
 */
export function hostTag (): string {
  return createHash('sha256').update(`${hostname()}\0${pidNamespace() ?? ''}`).digest('hex').slice(0, 8)
}
