import { existsSync, statSync } from 'node:fs'
import { userInfo } from 'node:os'
import { dirname, parse, sep } from 'node:path'

/**
 * A reason the server cannot start that the operator must fix (a data folder in use, a
 * missing setting): src/server.ts prints its message as it is, without a stack trace.
 */
export class StartupError extends Error {
  override name = 'StartupError'
}

/**
 * A file-system refusal on a path (no permission, a file where a folder should be, a
 * read-only or full disk), said in one line with what to do ("cannot create /data: …");
 * `instead` is the other way out ("set DATA_DIR to another folder"). Undefined for any
 * other error.
 */
export function fileSystemProblem (error: unknown, instead: string): string | undefined {
  const { code, path, syscall } = (error ?? {}) as NodeJS.ErrnoException
  if (typeof path !== 'string') return undefined
  const cannot = `cannot ${syscall === 'mkdir' || syscall === 'mkdtemp' ? 'create' : 'write'} ${path}`
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return `${cannot}: permission denied to ${whoAmI()}. Give that user write access to ${nearestExisting(path)}, or ${instead}.`
    case 'ENOTDIR':
    case 'EEXIST': {
      if (code === 'EEXIST' && syscall !== 'mkdir') return undefined
      const file = fileOnPath(path)
      return `${cannot}: ${file === undefined ? 'part of that path' : file} is a file, not a folder. Move it away, or ${instead}.`
    }
    case 'ENOENT':
      return syscall === 'mkdtemp' ? `${cannot}: the folder ${dirname(path)} does not exist. Create it, or ${instead}.` : undefined
    case 'EROFS':
      return `${cannot}: the file system is read-only. Mount it writable, or ${instead}.`
    case 'ENOSPC':
      return `${cannot}: no space left on the device. Free some, or ${instead}.`
    default:
      return undefined
  }
}

function whoAmI (): string {
  const uid = process.getuid?.()
  let name: string | undefined
  try {
    name = userInfo().username
  } catch {} // a uid without a passwd entry (containers) has no name
  if (uid === undefined) return name ?? 'this user'
  return name === undefined ? `uid ${uid}` : `user ${name} (uid ${uid})`
}

/** The path itself or its nearest ancestor that exists: the folder to fix. */
function nearestExisting (path: string): string {
  let current = dirname(path)
  while (!existsSync(current) && dirname(current) !== current) current = dirname(current)
  return current
}

/** The first part of a path, from the root down, that exists and is not a folder. */
function fileOnPath (path: string): string | undefined {
  const { root } = parse(path)
  let current = root
  for (const part of path.slice(root.length).split(sep).filter(part => part !== '')) {
    current = current === root ? `${root}${part}` : `${current}${sep}${part}`
    try {
      if (!statSync(current).isDirectory()) return current
    } catch {
      return undefined
    }
  }
  return undefined
}
