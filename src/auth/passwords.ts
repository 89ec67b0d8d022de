import { availableParallelism } from 'node:os'
import { hash, verify } from '@node-rs/argon2'
import { dictionary } from '@zxcvbn-ts/language-common'

/*
 * Passwords: argon2id through @node-rs/argon2, whose hash and verify run on libuv's thread
 * pool, off the event loop. Its defaults are OWASP's (19 MiB, 2 passes, 1 lane). The whole
 * password is hashed: nothing is truncated (bcrypt's 72-byte limit does not apply); the
 * schemas bound it to 1024 characters so one request cannot cost unbounded work.
 */

// Algorithm.Argon2id (an ambient const enum, which verbatimModuleSyntax cannot import).
const OPTIONS = { algorithm: 2 as const }

/*
 * At most one argon2 computation per CPU at a time. More would only queue on libuv's thread
 * pool and oversubscribe the CPUs, starving the event loop: every other request (health
 * probes, token checks) would wait behind the hashes.
 */
const MAX_CONCURRENT = Math.max(1, availableParallelism())
let running = 0
const waiting: Array<() => void> = []

async function limited<T> (work: () => Promise<T>): Promise<T> {
  if (running >= MAX_CONCURRENT) await new Promise<void>(resolve => waiting.push(resolve))
  running++
  try {
    return await work()
  } finally {
    running--
    waiting.shift()?.()
  }
}

export async function hashPassword (password: string): Promise<string> {
  return await limited(async () => await hash(password, OPTIONS))
}

let dummy: Promise<string> | undefined

/**
 * Verifies a password against a stored hash. With no hash (unknown e-mail, or an account
 * without a password) it verifies against a dummy hash of the same cost and answers false,
 * so that both cases take the same time.
 */
export async function verifyPassword (storedHash: string | null | undefined, password: string): Promise<boolean> {
  if (storedHash === null || storedHash === undefined) {
    dummy ??= hashPassword('gatehouse dummy password that never matches')
    const dummyHash = await dummy
    await limited(async () => await verify(dummyHash, password)).catch(() => false)
    return false
  }
  try {
    return await limited(async () => await verify(storedHash, password))
  } catch {
    return false
  }
}

/** Warms the dummy hash so that the first unknown-e-mail sign-in costs what the others do. */
export async function preparePasswords (): Promise<void> {
  dummy ??= hashPassword('gatehouse dummy password that never matches')
  await dummy
}

let common: Set<string> | undefined

/** One of the 49,000 most common passwords (zxcvbn's list), compared case-insensitively. */
export function isCommonPassword (password: string): boolean {
  common ??= new Set(dictionary['passwords-common'].map(entry => String(entry).toLowerCase()))
  return common.has(password.toLowerCase())
}

/** The reason a new password is refused, or undefined when it is acceptable. */
export function passwordProblem (password: string, minLength: number): string | undefined {
  if ([...password].length < minLength) return `Password must be at least ${minLength} characters long`
  if (isCommonPassword(password)) return 'Password is too common; choose a less guessable one'
  return undefined
}
