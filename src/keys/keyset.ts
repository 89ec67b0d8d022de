import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, hkdfSync, randomBytes, type KeyObject } from 'node:crypto'
import { chmod, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

/*
 * Signing keys for access tokens. Two sources:
 *  - one private key from configuration (JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE);
 *  - a key set directory (JWT_KEYS_DIR; in development DATA_DIR/keys, created at first
 *    start) managed by `npm run keys`, which supports rotation with overlap: a new key is
 *    published first and signs only once JWKS caches (1 hour) have seen it; a retired key
 *    stays published until every token it signed has expired.
 * The directory holds keyset.json, one PKCS#8 PEM file per key, and session-secret.
 */

export type SigningAlgorithm = 'RS256' | 'ES256' | 'EdDSA'

export interface SigningKey {
  kid: string
  alg: SigningAlgorithm
  privateKey: KeyObject
  publicKey: KeyObject
  createdAt: Date
  /** When the key starts signing (it is published before). */
  activatesAt: Date
  /** When the key stopped signing, if it did. */
  retiredAt: Date | null
}

export interface KeySetEntry {
  kid: string
  alg: SigningAlgorithm
  file: string
  createdAt: string
  activatesAt: string
  retiredAt: string | null
}

interface KeySetFile { version: 1, keys: KeySetEntry[] }

/** How long a published key is announced before it signs: the JWKS Cache-Control max-age. */
export const PUBLISH_AHEAD_MS = 3_600_000

export class KeyConfigError extends Error {
  override name = 'KeyConfigError'
}

export function algorithmOf (key: KeyObject): SigningAlgorithm {
  switch (key.asymmetricKeyType) {
    case 'rsa': {
      const bits = key.asymmetricKeyDetails?.modulusLength ?? 0
      if (bits < 2048) throw new KeyConfigError(`RSA signing keys must have at least 2048 bits (this one has ${bits})`)
      return 'RS256'
    }
    case 'ec':
      if (key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') throw new KeyConfigError('EC signing keys must use the P-256 curve (ES256)')
      return 'ES256'
    case 'ed25519':
      return 'EdDSA'
    default:
      throw new KeyConfigError(`unsupported signing key type ${String(key.asymmetricKeyType)}; use RSA (RS256), P-256 (ES256) or Ed25519 (EdDSA)`)
  }
}

/** A stable key id: the start of the SHA-256 of the public key. */
export function keyId (publicKey: KeyObject): string {
  return createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('base64url').slice(0, 22)
}

export function generatePrivateKey (alg: SigningAlgorithm): KeyObject {
  switch (alg) {
    case 'RS256': return generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
    case 'ES256': return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
    case 'EdDSA': return generateKeyPairSync('ed25519').privateKey
  }
}

export function signingKeyFromPem (pem: string, dates: { createdAt?: Date, activatesAt?: Date, retiredAt?: Date | null } = {}): SigningKey {
  let privateKey: KeyObject
  try {
    privateKey = createPrivateKey(pem)
  } catch {
    throw new KeyConfigError('the signing key is not a readable PEM private key')
  }
  const publicKey = createPublicKey(privateKey)
  const epoch = new Date(0)
  return {
    kid: keyId(publicKey),
    alg: algorithmOf(privateKey),
    privateKey,
    publicKey,
    createdAt: dates.createdAt ?? epoch,
    activatesAt: dates.activatesAt ?? epoch,
    retiredAt: dates.retiredAt ?? null
  }
}

/** The secret that derives refresh tokens, when SESSION_SECRET is not set: from a private key. */
export function deriveSessionSecret (privateKey: KeyObject): Buffer {
  const material = privateKey.export({ type: 'pkcs8', format: 'der' })
  return Buffer.from(hkdfSync('sha256', material, 'gatehouse', 'refresh-token-successor', 32))
}

const keysetPath = (dir: string): string => join(dir, 'keyset.json')

async function writePrivate (path: string, content: string): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`
  await writeFile(temporary, content, { mode: 0o600 })
  await rename(temporary, path)
}

export async function readKeySetFile (dir: string): Promise<KeySetFile | undefined> {
  let text: string
  try {
    text = await readFile(keysetPath(dir), 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw error
  }
  const parsed = JSON.parse(text) as KeySetFile
  if (parsed.version !== 1 || !Array.isArray(parsed.keys)) throw new KeyConfigError(`${keysetPath(dir)} is not a Gatehouse key set`)
  return parsed
}

async function writeKeySetFile (dir: string, keyset: KeySetFile): Promise<void> {
  await writePrivate(keysetPath(dir), `${JSON.stringify(keyset, null, 2)}\n`)
}

/** The key set's modification time (to notice a rotation made by the CLI). */
export async function keySetVersion (dir: string): Promise<number> {
  return await stat(keysetPath(dir)).then(stats => stats.mtimeMs, () => 0)
}

export interface LoadedKeySet { keys: SigningKey[], sessionSecret: Buffer }

export async function loadKeySet (dir: string): Promise<LoadedKeySet> {
  const file = await readKeySetFile(dir)
  if (file === undefined || file.keys.length === 0) throw new KeyConfigError(`no signing keys in ${dir}; run \`npm run keys -- init\``)
  const keys: SigningKey[] = []
  for (const entry of file.keys) {
    const pem = await readFile(join(dir, entry.file), 'utf8')
    const key = signingKeyFromPem(pem, {
      createdAt: new Date(entry.createdAt),
      activatesAt: new Date(entry.activatesAt),
      retiredAt: entry.retiredAt === null ? null : new Date(entry.retiredAt)
    })
    if (key.kid !== entry.kid) throw new KeyConfigError(`${entry.file} does not hold key ${entry.kid}`)
    keys.push(key)
  }
  const secret = await readFile(join(dir, 'session-secret'), 'utf8').catch(() => undefined)
  if (secret === undefined) throw new KeyConfigError(`${join(dir, 'session-secret')} is missing; run \`npm run keys -- init\``)
  return { keys, sessionSecret: Buffer.from(secret.trim(), 'base64url') }
}

async function addKey (dir: string, keyset: KeySetFile, alg: SigningAlgorithm, activatesAt: Date, now: Date): Promise<KeySetEntry> {
  const privateKey = generatePrivateKey(alg)
  const kid = keyId(createPublicKey(privateKey))
  const file = `${kid}.pem`
  await writePrivate(join(dir, file), privateKey.export({ type: 'pkcs8', format: 'pem' }).toString())
  const entry: KeySetEntry = { kid, alg, file, createdAt: now.toISOString(), activatesAt: activatesAt.toISOString(), retiredAt: null }
  keyset.keys.push(entry)
  return entry
}

/**
 * Creates the directory with a first, immediately active key and a session secret. No-op if
 * the key set exists. Instances starting together on a shared directory take turns through a
 * lock directory: one creates the set, the others wait for it and use it. A lock left by a
 * crashed process is broken after 30 s.
 */
export async function initKeySet (dir: string, alg: SigningAlgorithm, now = new Date()): Promise<boolean> {
  await mkdir(dir, { recursive: true, mode: 0o700 })
  await chmod(dir, 0o700)
  const lock = join(dir, '.init.lock')
  const deadline = Date.now() + 15_000
  for (;;) {
    if (await readKeySetFile(dir) !== undefined) return false
    try {
      await mkdir(lock)
      break
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
      const since = await stat(lock).then(stats => Date.now() - stats.mtimeMs, () => 0)
      if (since > 30_000) await rm(lock, { recursive: true, force: true })
      else if (Date.now() > deadline) throw new KeyConfigError(`another process holds ${lock}; remove it if no Gatehouse is starting`)
      else await sleep(50)
    }
  }
  try {
    if (await readKeySetFile(dir) !== undefined) return false
    const keyset: KeySetFile = { version: 1, keys: [] }
    await addKey(dir, keyset, alg, now, now)
    // An earlier, interrupted init may have left a secret: it is kept.
    await writeFile(join(dir, 'session-secret'), `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' }).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error
    })
    await writeKeySetFile(dir, keyset)
    return true
  } finally {
    await rm(lock, { recursive: true, force: true })
  }
}

/** The key that signs at `now`: the most recently activated one that is not retired. */
export function activeKey (keys: SigningKey[], now: number): SigningKey | undefined {
  return keys
    .filter(key => key.activatesAt.getTime() <= now && (key.retiredAt === null || key.retiredAt.getTime() > now))
    .sort((a, b) => b.activatesAt.getTime() - a.activatesAt.getTime())[0]
}

/** The keys the JWKS publishes: upcoming, active, and retired ones whose tokens may still be alive. */
export function publishedKeys (keys: SigningKey[], now: number, accessTtlMs: number): SigningKey[] {
  return keys.filter(key => key.retiredAt === null || key.retiredAt.getTime() + accessTtlMs + 60_000 > now)
}

/**
 * Adds a new key. It is published at once and starts signing after PUBLISH_AHEAD_MS (or at
 * once with `immediately`); the key that signs until then is retired at that moment.
 */
export async function rotateKeySet (dir: string, alg: SigningAlgorithm, options: { immediately?: boolean, now?: Date } = {}): Promise<KeySetEntry> {
  const now = options.now ?? new Date()
  const keyset = await readKeySetFile(dir)
  if (keyset === undefined) throw new KeyConfigError(`no key set in ${dir}; run \`npm run keys -- init\` first`)
  const activatesAt = new Date(now.getTime() + (options.immediately === true ? 0 : PUBLISH_AHEAD_MS))
  for (const entry of keyset.keys) {
    if (entry.retiredAt === null) entry.retiredAt = activatesAt.toISOString()
  }
  const entry = await addKey(dir, keyset, alg, activatesAt, now)
  await writeKeySetFile(dir, keyset)
  return entry
}

/** Deletes keys that are no longer published. Returns their ids. */
export async function pruneKeySet (dir: string, accessTtlMs: number, now = new Date()): Promise<string[]> {
  const keyset = await readKeySetFile(dir)
  if (keyset === undefined) return []
  const removed: KeySetEntry[] = []
  keyset.keys = keyset.keys.filter(entry => {
    const expired = entry.retiredAt !== null && Date.parse(entry.retiredAt) + accessTtlMs + 60_000 <= now.getTime()
    if (expired) removed.push(entry)
    return !expired
  })
  await writeKeySetFile(dir, keyset)
  for (const entry of removed) await rm(join(dir, entry.file), { force: true })
  return removed.map(entry => entry.kid)
}
