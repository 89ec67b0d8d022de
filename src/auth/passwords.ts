import { dictionary } from '@zxcvbn-ts/language-common'
import { Argon2Pool } from './argon2-pool.js'

/*
 * Passwords: argon2id through @node-rs/argon2, on worker threads (src/auth/argon2-pool.ts),
 * off the event loop and at most one computation per CPU. Its defaults are OWASP's (19 MiB,
 * 2 passes, 1 lane). The whole password is hashed: nothing is truncated (bcrypt's 72-byte
 * limit does not apply); the schemas bound it to 1024 characters so one request cannot cost
 * unbounded work.
 */

// Algorithm.Argon2id (an ambient const enum, which verbatimModuleSyntax cannot import).
const OPTIONS = { algorithm: 2 as const }

const pool = new Argon2Pool()

export async function hashPassword (password: string): Promise<string> {
  return await pool.hash(password, OPTIONS)
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
    await pool.verify(dummyHash, password).catch(() => false)
    return false
  }
  try {
    return await pool.verify(storedHash, password)
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
  const characters = [...password]
  if (characters.length < minLength) return `Password must be at least ${minLength} characters long`
  // Length alone is no strength: eight spaces, or one key held down, are found at once.
  if (password.trim() === '') return 'Password must not be only white space'
  if (new Set(characters).size === 1) return 'Password must not be one character repeated'
  if (isCommonPassword(password)) return 'Password is too common; choose a less guessable one'
  return undefined
}
