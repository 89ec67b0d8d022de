import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createSigner, createVerifier, type Algorithm } from 'fast-jwt'
import fp from 'fastify-plugin'
import { isProduction, publicUrl } from '../src/config.js'
import {
  activeKey, deriveSessionSecret, initKeySet, keySetVersion, loadKeySet, publishedKeys, signingKeyFromPem,
  KeyConfigError, type SigningKey
} from '../src/keys/keyset.js'
import { fromRoot } from '../src/paths.js'

/** The claims of a Gatehouse access token (SPEC "Tokens and sessions"). */
export interface AccessTokenClaims {
  iss: string
  aud: string
  sub: string
  sid: string
  wid?: number
  role: 'ADMIN' | 'MEMBER'
  iat: number
  exp: number
  jti: string
}

export interface IssuedAccessToken {
  token: string
  /** Seconds until it expires. */
  expiresIn: number
}

export interface Keys {
  /** Signs an access token; it never outlives `notAfter` (ms; the session's absolute expiry). */
  signAccessToken: (claims: { sub: string, sid: string, role: 'ADMIN' | 'MEMBER', wid?: number }, notAfter?: number) => IssuedAccessToken
  /** Verifies signature, algorithm, kid, iss, aud, exp, nbf and required claims; rejects with a fast-jwt TokenError. */
  verifyAccessToken: (token: string) => Promise<AccessTokenClaims>
  /** The same checks but expiry: for logout, where an expired token still names its session. */
  verifyIgnoringExpiry: (token: string) => Promise<AccessTokenClaims>
  /** The claims of a token verified before and not yet expired, without any work; else undefined. */
  verifiedBefore: (token: string) => AccessTokenClaims | undefined
  /** The JWKS document, serialized once per key change. */
  jwks: () => string
  /** The server secret that derives each refresh token from its predecessor. */
  sessionSecret: Buffer
  /** Re-reads the key set directory (the CLI rotated it) and recomputes the active key. */
  refresh: () => Promise<void>
}

declare module 'fastify' {
  interface FastifyInstance {
    keys: Keys
  }
}

const ALGORITHMS: Algorithm[] = ['RS256', 'ES256', 'EdDSA']
const REQUIRED_CLAIMS = ['iss', 'aud', 'sub', 'sid', 'role', 'iat', 'exp', 'jti']
const CLOCK_TOLERANCE = 5_000
const VERIFIED_CACHE_MAX = 10_000

/**
 * Access-token signing and verification (fast-jwt), and the public key set. Verification
 * accepts only our algorithms and our keys, picked by `kid` from our own key set — never
 * from a `jku`, `jwk` or `x5u` header — and checks iss, aud, exp, nbf and the required
 * claims. Verified tokens are cached (bounded, never past their expiry), so a token seen
 * before does not pay for its signature again; revocation is checked after the cache by the
 * auth plugin.
 */
export default fp(async (fastify) => {
  const { config } = fastify
  const issuer = config.JWT_ISSUER ?? publicUrl(config)
  const audience = config.JWT_AUDIENCE
  const accessTtlSeconds = Math.floor(config.JWT_ACCESS_TTL / 1000)

  let source: { kind: 'single', key: SigningKey } | { kind: 'dir', dir: string }
  let sessionSecret: Buffer
  let keys: SigningKey[]
  if (config.JWT_PRIVATE_KEY !== undefined || config.JWT_PRIVATE_KEY_FILE !== undefined) {
    const pem = config.JWT_PRIVATE_KEY ?? await readFile(config.JWT_PRIVATE_KEY_FILE!, 'utf8').catch(() => {
      throw new KeyConfigError(`JWT_PRIVATE_KEY_FILE ${config.JWT_PRIVATE_KEY_FILE!} cannot be read`)
    })
    const key = signingKeyFromPem(pem)
    source = { kind: 'single', key }
    keys = [key]
    sessionSecret = deriveSessionSecret(key.privateKey)
  } else {
    const dir = fromRoot(config.JWT_KEYS_DIR ?? join(config.DATA_DIR, 'keys'))
    if (await initKeySet(dir, config.JWT_ALG)) fastify.log.info({ dir }, 'created a new signing key set')
    const loaded = await loadKeySet(dir)
    source = { kind: 'dir', dir }
    keys = loaded.keys
    sessionSecret = loaded.sessionSecret
  }
  if (config.SESSION_SECRET !== undefined) sessionSecret = Buffer.from(config.SESSION_SECRET, 'utf8')

  let byKid = new Map<string, { key: SigningKey, publicPem: string }>()
  // Verified tokens, so that a token seen before does not pay for its signature again: keyed
  // by the token itself (no hashing per request), bounded, dropped at expiry and whenever the
  // published keys change. Revocation is checked after this cache, by the auth plugin.
  const verified = new Map<string, AccessTokenClaims>()
  let signer: ((payload: Record<string, unknown>) => string) | undefined
  let signingKid = ''
  let jwksBody = ''
  let version = source.kind === 'dir' ? await keySetVersion(source.dir) : 0

  /** Recomputes the active key and the published set; cheap when nothing changed. */
  const arrange = (): void => {
    const now = fastify.now()
    const active = activeKey(keys, now)
    if (active === undefined) throw new KeyConfigError('no signing key is active now; check the key set with `npm run keys -- list`')
    const published = publishedKeys(keys, now, config.JWT_ACCESS_TTL)
    const kids = published.map(key => key.kid).join(',')
    if (active.kid === signingKid && kids === [...byKid.keys()].join(',')) return
    byKid = new Map(published.map(key => [key.kid, { key, publicPem: key.publicKey.export({ type: 'spki', format: 'pem' }).toString() }]))
    verified.clear()
    signingKid = active.kid
    signer = createSigner({
      key: active.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      algorithm: active.alg,
      kid: active.kid
    })
    jwksBody = JSON.stringify({
      keys: published.map(key => ({ ...key.publicKey.export({ format: 'jwk' }), kid: key.kid, alg: key.alg, use: 'sig' }))
    })
  }
  arrange()

  const verifierOptions = {
    key: async ({ header }: { header: { kid?: unknown, alg?: unknown } }) => {
      const entry = typeof header.kid === 'string' ? byKid.get(header.kid) : undefined
      if (entry === undefined || header.alg !== entry.key.alg) throw new Error('unknown key')
      return entry.publicPem
    },
    algorithms: ALGORITHMS,
    allowedIss: issuer,
    allowedAud: audience,
    requiredClaims: REQUIRED_CLAIMS,
    clockTolerance: CLOCK_TOLERANCE
  }
  const verify = createVerifier(verifierOptions)
  const verifyExpired = createVerifier({ ...verifierOptions, ignoreExpiration: true })

  const reload = async (): Promise<void> => {
    if (source.kind === 'dir') {
      const current = await keySetVersion(source.dir)
      if (current !== version) {
        const loaded = await loadKeySet(source.dir)
        keys = loaded.keys
        version = current
      }
    }
    arrange()
  }
  // A rotation made by the CLI, or a scheduled activation, is picked up within 30 s.
  const timer = setInterval(() => {
    reload().catch(error => fastify.log.error({ err: error }, 'could not reload the signing keys'))
  }, 30_000).unref()
  fastify.addHook('onClose', async () => { clearInterval(timer) })

  if (isProduction(config) && source.kind === 'dir' && config.JWT_KEYS_DIR === undefined) {
    throw new KeyConfigError('production needs JWT_KEYS_DIR, JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE')
  }

  const verifiedBefore = (token: string): AccessTokenClaims | undefined => {
    const hit = verified.get(token)
    if (hit === undefined) return undefined
    if (hit.exp * 1000 + CLOCK_TOLERANCE > Date.now()) return hit
    verified.delete(token)
    return undefined
  }

  fastify.decorate('keys', {
    signAccessToken (claims, notAfter) {
      const iat = Math.floor(fastify.now() / 1000)
      const exp = notAfter === undefined ? iat + accessTtlSeconds : Math.max(iat + 1, Math.min(iat + accessTtlSeconds, Math.floor(notAfter / 1000)))
      const payload: AccessTokenClaims = {
        iss: issuer,
        aud: audience,
        ...claims,
        iat,
        exp,
        jti: randomBytes(12).toString('base64url')
      }
      return { token: signer!(payload as unknown as Record<string, unknown>), expiresIn: exp - iat }
    },
    verifiedBefore,
    async verifyAccessToken (token) {
      const hit = verifiedBefore(token)
      if (hit !== undefined) return hit
      const claims = await (verify(token) as Promise<AccessTokenClaims>)
      if (verified.size >= VERIFIED_CACHE_MAX) verified.delete(verified.keys().next().value!)
      verified.set(token, claims)
      return claims
    },
    verifyIgnoringExpiry: async token => await (verifyExpired(token) as Promise<AccessTokenClaims>),
    jwks: () => jwksBody,
    sessionSecret,
    refresh: reload
  } satisfies Keys)
}, { name: 'keys', dependencies: ['config'], fastify: '5.x' })
