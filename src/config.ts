import { Type, type StaticDecode, type TSchema } from 'typebox'
import { providerProblems } from './auth/providers.js'
import { Value } from 'typebox/value'

/*
 * Every setting is an environment variable. This schema is the single source of truth:
 * it validates and converts the environment at start, documents each variable
 * (`.env.example` and the README table are checked against it by a test), and its
 * decoded static type is the type of `fastify.config`.
 */

const DURATION = /^(\d+)(ms|s|m|h|d)?$/
const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** `15m`, `7d`, `500ms`, or a bare number of seconds (seed 004 style) → milliseconds. */
export function parseDuration (text: string): number {
  const match = DURATION.exec(text.trim())
  if (match === null) throw new Error(`not a duration: ${text}`)
  return Number(match[1]) * DURATION_UNITS[match[2] ?? 's']!
}

const SIZE = /^(\d+)(b|kb|mb)?$/i
const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1024, mb: 1024 * 1024 }
function parseSize (text: string): number {
  const match = SIZE.exec(text.trim())
  if (match === null) throw new Error(`not a size: ${text}`)
  return Number(match[1]) * SIZE_UNITS[(match[2] ?? 'b').toLowerCase()]!
}

interface Doc { description: string, accepts: string, secret?: boolean }

const duration = (fallback: string, doc: Omit<Doc, 'accepts'>) =>
  Type.Codec(Type.String({ pattern: DURATION.source, default: fallback, ...doc, accepts: 'a duration such as 500ms, 30s, 15m, 12h, 7d or a number of seconds' }))
    .Decode((text: string) => parseDuration(text))
    .Encode((ms: number) => `${ms}ms`)

const size = (fallback: string, doc: Omit<Doc, 'accepts'>) =>
  Type.Codec(Type.String({ pattern: SIZE.source, default: fallback, ...doc, accepts: 'a size such as 512kb, 1mb or a number of bytes' }))
    .Decode((text: string) => parseSize(text))
    .Encode((bytes: number) => String(bytes))

const list = (fallback: string, doc: Doc) =>
  Type.Codec(Type.String({ default: fallback, ...doc }))
    .Decode((text: string) => text.split(',').map(item => item.trim()).filter(item => item !== ''))
    .Encode((items: string[]) => items.join(','))

const integer = (fallback: number, minimum: number, maximum: number, description: string) =>
  Type.Integer({ default: fallback, minimum, maximum, description, accepts: `an integer from ${minimum} to ${maximum}` })

const flag = (fallback: boolean, description: string) =>
  Type.Boolean({ default: fallback, description, accepts: 'true or false' })

const oneOf = <const T extends string[]>(values: readonly [...T], fallback: T[number], description: string) =>
  Type.Enum(values, { default: fallback, description, accepts: `one of ${values.join(', ')}` })

const url = (description: string, protocols: string[], secret = false) =>
  Type.Optional(Type.String({
    pattern: `^(${protocols.join('|')})://`,
    description,
    secret,
    accepts: `a URL starting with ${protocols.map(protocol => `${protocol}://`).join(' or ')}`
  }))

const text = (description: string, accepts: string, options: { pattern?: string, secret?: boolean, default?: string } = {}) =>
  Type.Optional(Type.String({ description, accepts, ...options }))

export const ConfigSchema = Type.Object({
  NODE_ENV: oneOf(['development', 'production', 'test'], 'development',
    'Runtime mode. production requires DATABASE_URL, Redis (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES) and a signing key, and marks cookies Secure.'),
  HOST: Type.String({ default: '127.0.0.1', minLength: 1, description: 'Interface to listen on (0.0.0.0 in containers).', accepts: 'a host name or IP address' }),
  PORT: integer(3000, 0, 65535, 'TCP port to listen on.'),
  LOG_LEVEL: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info', 'Minimum pino log level.'),
  PUBLIC_URL: url('Public base URL of this server, used to build links in e-mails and OAuth redirect URIs (default http://localhost:PORT).', ['http', 'https']),
  FRONTEND_URL: url('Where the browser goes after a sign-in (default PUBLIC_URL).', ['http', 'https']),

  DATA_DIR: Type.String({ default: '.data', minLength: 1, description: 'Directory for embedded-mode data (PGlite database, development keys, in-process store snapshot).', accepts: 'a directory path' }),
  DATABASE_URL: url('PostgreSQL connection string. Unset: embedded PGlite under DATA_DIR.', ['postgres', 'postgresql'], true),
  DATABASE_POOL_MAX: integer(10, 1, 200, 'Maximum PostgreSQL connections per instance.'),
  DATABASE_CONNECT_TIMEOUT: duration('5s', { description: 'How long to wait for a PostgreSQL connection before failing the request with 503.' }),
  DATABASE_STATEMENT_TIMEOUT: duration('15s', { description: 'PostgreSQL statement_timeout for every query.' }),
  DATABASE_IDLE_TIMEOUT: duration('30s', { description: 'How long an idle PostgreSQL connection stays open in the pool before it is closed.' }),
  DATABASE_PREPARED_STATEMENTS: flag(true, 'Run the hot statements (sign-in, user lookups) as named prepared statements, parsed and planned once per connection. Turn off behind a pooler that does not keep one server connection per client (PgBouncer in transaction mode before 1.21).'),
  MIGRATE_ON_START: flag(true, 'Apply pending migrations from sql/ at start (under an advisory lock, so several instances may start at once).'),

  REDIS_URL: url('Redis connection string. Unset: an in-process store (single instance only).', ['redis', 'rediss'], true),
  REDIS_PREFIX: Type.String({ default: 'gh:', pattern: '^[A-Za-z0-9:_.{}-]{1,64}$', description: 'Namespace prepended to every Redis key and channel.', accepts: '1-64 characters of A-Z a-z 0-9 : _ . - { }' }),
  SHUTDOWN_DRAIN: duration('2s', { description: 'On SIGTERM, how long to keep accepting (readiness answering 503, so load balancers stop sending) before closing the listener and finishing in-flight requests.' }),
  REDIS_SENTINELS: list('', {
    description: 'Redis Sentinel: comma-separated sentinels (host:port). Gatehouse asks them for the master of REDIS_SENTINEL_NAME and follows failovers. REDIS_URL may still carry the password.',
    accepts: 'a comma-separated list of host:port'
  }),
  REDIS_SENTINEL_NAME: Type.String({ default: 'mymaster', minLength: 1, maxLength: 100, description: 'The master name the sentinels monitor.', accepts: 'a name' }),
  REDIS_CLUSTER_NODES: list('', {
    description: 'Redis Cluster: comma-separated startup nodes (host:port). REDIS_URL may still carry the password.',
    accepts: 'a comma-separated list of host:port'
  }),
  REDIS_COMMAND_TIMEOUT: duration('2s', { description: 'Upper bound for one Redis command; past it the request fails with 503 instead of hanging.' }),
  REDIS_CONNECT_TIMEOUT: duration('5s', { description: 'Upper bound for establishing a Redis connection.' }),

  HEALTH_TIMEOUT: duration('2s', { description: 'Upper bound for each readiness probe (PostgreSQL, Redis).' }),
  CORS_ORIGINS: list('', {
    description: 'Comma-separated origins allowed to call the API with credentials. * allows any origin without credentials (bearer-only deployments). Empty: same-origin only.',
    accepts: 'a comma-separated list of origins such as https://app.example.com, or *'
  }),
  TRUST_PROXY: Type.String({
    default: 'false',
    pattern: '^(true|false|\\d+|[0-9a-fA-F.:/]+(,[0-9a-fA-F.:/ ]+)*)$',
    description: 'Whether X-Forwarded-For is trusted: false, true, a hop count, or comma-separated proxy addresses/CIDRs.',
    accepts: 'false, true, a number of hops, or a comma-separated list of IP addresses or CIDR ranges'
  }),
  BODY_LIMIT: size('1mb', { description: 'Largest accepted request body.' }),
  RATE_LIMIT_MAX: integer(100, 1, 1_000_000_000, 'Unauthenticated requests per IP per RATE_LIMIT_WINDOW on /api/* and /auth/*. A refresh, logout or sign-out that presents a live session is not counted here (a refresh counts against REFRESH_MAX_PER_SESSION instead).'),
  RATE_LIMIT_WINDOW: duration('15m', { description: 'Window of the per-IP rate limit.' }),
  RATE_LIMIT_IPV6_PREFIX: integer(64, 1, 128, 'Every per-IP limit (the one above and the sign-in budget, which magic-link requests spend too) counts an IPv6 client per network of this prefix length, since a client may use any address of the /64 it was given; 128 counts each address. IPv4 addresses, also written as ::ffff:a.b.c.d, count one by one.'),
  DOCS: oneOf(['enabled', 'disabled'], 'enabled', 'The OpenAPI document (/docs/json) and its UI (/docs). disabled answers 404 there, for deployments that do not publish their API description.'),
  RESPONSE_ENVELOPE: oneOf(['none', 'success'], 'none',
    'success wraps every JSON answer of the API in an envelope, for clients written against that shape: {success, data} or {success:false, message, code}.'),

  JWT_PRIVATE_KEY: text('PEM private key that signs access tokens (production: this, JWT_PRIVATE_KEY_FILE or JWT_KEYS_DIR). Its type sets the algorithm: RSA → RS256, P-256 → ES256, Ed25519 → EdDSA.', 'a PEM-encoded private key', { secret: true }),
  JWT_PRIVATE_KEY_FILE: text('Path of a PEM private key file that signs access tokens.', 'a file path'),
  JWT_KEYS_DIR: text('Directory of the signing key set managed by `npm run keys` (rotation with overlap). Development default: DATA_DIR/keys, created at first start.', 'a directory path'),
  JWT_ALG: oneOf(['RS256', 'ES256', 'EdDSA'], 'RS256', 'Algorithm of keys that Gatehouse generates (development key set, `npm run keys -- rotate`).'),
  JWT_ISSUER: url('The `iss` claim of access tokens (default PUBLIC_URL).', ['http', 'https']),
  JWT_AUDIENCE: Type.String({ default: 'gatehouse', minLength: 1, description: 'The `aud` claim of access tokens, checked on every request.', accepts: 'a non-empty string' }),
  JWT_ACCESS_TTL: duration('15m', { description: 'Lifetime of access tokens.' }),
  JWT_REFRESH_TTL: duration('1d', { description: 'Absolute lifetime of a session without remember-me (values such as 7d are accepted).' }),
  JWT_REFRESH_REMEMBER_TTL: duration('30d', { description: 'Absolute lifetime of a session with remember-me.' }),
  REFRESH_GRACE: duration('10s', { description: 'How long a just-rotated refresh token still yields the same successor (two tabs refreshing at once); after it, its reuse revokes the session.' }),
  SESSION_SECRET: text('Secret (at least 32 characters) that derives each refresh token from its predecessor. Default: derived from the signing key material.', 'at least 32 characters', { secret: true, pattern: '^.{32,}$' }),

  PASSWORD_AUTH: oneOf(['enabled', 'disabled'], 'enabled', 'disabled answers 410 on register and login: magic links and identity providers only.'),
  PASSWORD_MIN_LENGTH: integer(8, 8, 128, 'Shortest accepted password (longer ones are never truncated).'),
  ALLOW_BOOTSTRAP: flag(false, 'Allows POST /api/auth/bootstrap in production (it is always allowed outside production) until an admin exists.'),
  RATE_LIMIT_AUTHENTICATED_MAX: integer(3000, 1, 1_000_000_000, 'Requests per RATE_LIMIT_WINDOW per signed-in user (authenticated traffic is counted per user, not per IP).'),
  RATE_LIMIT_TOKEN_MAX: integer(6000, 1, 1_000_000_000, 'Requests per RATE_LIMIT_WINDOW per integration token (automation clients call at high rates).'),
  INTEGRATION_TOKEN_PREFIX: Type.String({ default: 'gtk_', pattern: '^[a-z][a-z0-9]{0,15}_$', description: 'Prefix of new integration tokens (a FlockPal deployment sets flpt_). Tokens are recognised by it.', accepts: 'lower-case letters and digits ending in _, such as gtk_' }),
  INTEGRATION_TOKEN_MAX_DAYS: integer(3650, 1, 36500, 'Longest expiresInDays accepted for an integration token.'),
  LOGIN_MAX_PER_IP: integer(30, 1, 1_000_000, 'Sign-in and registration attempts per IP per LOGIN_WINDOW.'),
  LOGIN_MAX_PER_ACCOUNT: integer(10, 1, 1_000_000, 'Failed sign-ins per e-mail address per LOGIN_WINDOW (whether or not the account exists). Each attempt is counted before its password is checked, so parallel guesses cannot pass it; a successful sign-in clears the count.'),
  LOGIN_WINDOW: duration('15m', { description: 'Window of the sign-in limits.' }),
  REFRESH_MAX_PER_SESSION: integer(120, 1, 1_000_000, 'Refreshes per session per RATE_LIMIT_WINDOW. Only valid refresh tokens count; invalid ones count against the IP.'),

  ALLOWED_REDIRECTS: list('', {
    description: 'Comma-separated origins (besides FRONTEND_URL\'s) that sign-ins may redirect to; anything else falls back to FRONTEND_URL.',
    accepts: 'a comma-separated list of origins such as https://app.example.com'
  }),
  MAGIC_LINKS: oneOf(['enabled', 'disabled'], 'enabled', 'Sign-in by e-mail link. In production it needs SMTP_URL.'),
  MAGIC_LINK_TTL: duration('10m', { description: 'How long a magic link stays valid (it works once).' }),
  MAGIC_LINK_CONFIRM: oneOf(['direct', 'page'], 'direct',
    'direct: opening the link signs in at once in the browser that asked for it (its binding cookie, set where PUBLIC_URL is https or a loopback host); anywhere else — another browser or device, a link asked for by a script (no Origin header), an invitation link — it opens a confirmation page that names the address and whose button signs in. page: the link always opens that page, so mail scanners that pre-open links do not use them up.'),
  INVITE_TTL: duration('7d', { description: 'How long the sign-in link of a workspace invitation stays valid (it works once).' }),
  MAGIC_LINK_MAX_PER_EMAIL: integer(5, 1, 1_000_000, 'Magic links per e-mail address per LOGIN_WINDOW.'),
  SMTP_URL: url('SMTP server for outgoing mail, e.g. smtps://user:pass@smtp.example.com. Unset outside production: magic-link requests answer a previewUrl instead.', ['smtp', 'smtps'], true),
  GOOGLE_CLIENT_ID: text('Google OAuth client id (enables sign-in with Google).', 'a client id'),
  GOOGLE_CLIENT_SECRET: text('Google OAuth client secret.', 'a client secret', { secret: true }),
  MICROSOFT_CLIENT_ID: text('Microsoft Entra ID application (client) id (enables sign-in with Microsoft).', 'a client id'),
  MICROSOFT_CLIENT_SECRET: text('Microsoft Entra ID client secret.', 'a client secret', { secret: true }),
  MICROSOFT_TENANT: text('Microsoft Entra ID tenant id (a GUID): the issuer is https://login.microsoftonline.com/<tenant>/v2.0.', 'a tenant id'),
  APPLE_CLIENT_ID: text('Sign in with Apple service id (enables sign-in with Apple).', 'a service id'),
  APPLE_TEAM_ID: text('Apple developer team id (issuer of the client secret JWT).', 'a team id'),
  APPLE_KEY_ID: text('Id of the Apple private key that signs the client secret JWT.', 'a key id'),
  APPLE_ISSUER: url('Sign in with Apple\'s issuer (default https://appleid.apple.com; another value only for a proxy or a test stand-in).', ['https', 'http']),
  APPLE_PRIVATE_KEY: text('The Apple private key (PEM, P-256) that signs the client secret JWT.', 'a PEM-encoded private key', { secret: true }),
  OIDC_PROVIDERS: text('Generic OpenID Connect providers as JSON: [{"key":"authentik","displayName":"Authentik","issuer":"https://sso.example.com/application/o/app/","clientId":"…","clientSecret":"…"}]. A key of google or microsoft overrides the built-in one.', 'a JSON array of providers', { secret: true }),
  OIDC_DEFAULT_PROVIDER: text('The provider whose codes POST /api/auth/callback exchanges (a SPA that ran the OIDC flow itself posts the code). Default: the first of OIDC_PROVIDERS.', 'a provider key'),
  SMTP_FROM: Type.String({ default: 'Gatehouse <no-reply@localhost>', minLength: 3, maxLength: 200, pattern: '^[^\\r\\n]+$', description: 'From address of outgoing mail.', accepts: 'an address such as Gatehouse <no-reply@example.com>' }),

  S3_ENDPOINT: url('S3-compatible endpoint for images (R2: https://<account>.r2.cloudflarestorage.com). Unset: the image routes answer 503.', ['http', 'https']),
  S3_REGION: Type.String({ default: 'auto', minLength: 1, description: 'Region of the S3 store (R2: auto).', accepts: 'a region name such as auto or eu-central-1' }),
  S3_BUCKET: text('Bucket that holds the images.', 'a bucket name', { pattern: '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$' }),
  S3_ACCESS_KEY_ID: text('Access key id for signing image URLs.', 'an access key id', { secret: true }),
  S3_SECRET_ACCESS_KEY: text('Secret access key for signing image URLs.', 'a secret access key', { secret: true }),
  S3_FORCE_PATH_STYLE: flag(true, 'Address the bucket as <endpoint>/<bucket> (R2, MinIO) rather than <bucket>.<endpoint>.'),
  IMAGE_MAX_BYTES: size('5mb', { description: 'Largest image an upload URL allows (the signature enforces the declared size).' }),
  IMAGE_URL_TTL: duration('5m', { description: 'How long presigned image URLs stay valid.' })
})

export type Config = StaticDecode<typeof ConfigSchema>
export type ConfigKey = keyof typeof ConfigSchema.properties

/*
 * Development is for trying things (SPEC decision 14): where one of these variables is not
 * set, NODE_ENV=development uses this value instead of the schema's default (the seeds'
 * values, which production and test keep). A variable that is set wins in every mode.
 * In development everything comes from one machine, so every curl loop, browser tab and
 * script shares one IP's budget: the values are far above what a person trying the API
 * does, yet finite, so that a client stuck in a loop still meets a 429 and lowering one
 * (say LOGIN_MAX_PER_ACCOUNT=3) still shows a limit at work.
 */
export const DEVELOPMENT_DEFAULTS = {
  // About 11 requests a second for 15 minutes, against the seed's 100 per 15 minutes.
  RATE_LIMIT_MAX: 10_000,
  // Registering test accounts in a loop from 127.0.0.1.
  LOGIN_MAX_PER_IP: 1_000,
  // Enough wrong passwords on one account to try things, still a lock-out to see.
  LOGIN_MAX_PER_ACCOUNT: 100,
  // Preview links (no SMTP in development) asked again and again for the same address.
  MAGIC_LINK_MAX_PER_EMAIL: 100,
  // A page that refreshes on every hot reload.
  REFRESH_MAX_PER_SESSION: 10_000
} as const satisfies Partial<Record<ConfigKey, number>>

/** `900000` → `15 minutes`, `60000` → `minute` (after "per"). */
function spellWindow (ms: number): string {
  const units = [['day', 86_400_000], ['hour', 3_600_000], ['minute', 60_000], ['second', 1000]] as const
  for (const [unit, size] of units) {
    if (ms % size === 0) return ms === size ? unit : `${ms / size} ${unit}s`
  }
  return `${ms} ms`
}

/** The start-up line of development: the limits in force, and what production keeps. */
export function developmentLimits (config: Config): string {
  const api = spellWindow(config.RATE_LIMIT_WINDOW)
  const login = spellWindow(config.LOGIN_WINDOW)
  const seed = `${String(describeVariable('RATE_LIMIT_MAX').default)} requests per ${spellWindow(parseDuration(String(describeVariable('RATE_LIMIT_WINDOW').default)))}`
  return `development limits: ${config.RATE_LIMIT_MAX} requests per ${api} per IP on /api/*, ` +
    `${config.LOGIN_MAX_PER_IP} sign-ins per IP, ${config.LOGIN_MAX_PER_ACCOUNT} per account and ${config.MAGIC_LINK_MAX_PER_EMAIL} magic links per address per ${login}, ` +
    `${config.REFRESH_MAX_PER_SESSION} refreshes per session per ${api}; production keeps ${seed} per IP`
}

export class ConfigError extends Error {
  constructor (readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map(problem => `  - ${problem}`).join('\n')}`)
    this.name = 'ConfigError'
  }
}

interface Documented { description?: string, accepts?: string, secret?: boolean, default?: unknown, developmentDefault?: unknown }
export function describeVariable (key: ConfigKey): Documented {
  const developmentDefault = (DEVELOPMENT_DEFAULTS as Partial<Record<ConfigKey, number>>)[key]
  const doc = ConfigSchema.properties[key] as unknown as Documented
  return developmentDefault === undefined ? doc : { ...doc, developmentDefault }
}

function describeProblem (key: string, raw: unknown): string {
  const doc = (ConfigSchema.properties as Record<string, TSchema & Documented>)[key]
  const shown = doc?.secret === true ? 'value hidden' : `got ${JSON.stringify(raw)}`
  return `${key} must be ${doc?.accepts ?? 'valid'} (${shown})`
}

/**
 * Reads the settings from an environment, applies defaults, validates and converts them.
 * Throws a ConfigError naming every bad variable and what it accepts.
 */
export function loadConfig (env: Record<string, string | undefined> = process.env): Config {
  const raw: Record<string, unknown> = {}
  for (const key of Object.keys(ConfigSchema.properties)) {
    const value = env[key]
    if (value !== undefined && value !== '') raw[key] = value
  }
  // Development's own defaults first, then the schema's for whatever is still unset.
  const development = (raw.NODE_ENV ?? 'development') === 'development'
  const withDefaults = Value.Default(ConfigSchema, { ...(development ? DEVELOPMENT_DEFAULTS : {}), ...raw })
  const input = Value.Convert(ConfigSchema, withDefaults) as Record<string, unknown>

  // Checked one variable at a time so that every bad variable is named, not only the first few.
  const problems: string[] = []
  for (const [key, schema] of Object.entries(ConfigSchema.properties) as Array<[string, TSchema]>) {
    if (input[key] === undefined) continue
    if (!Value.Check(schema, input[key])) problems.push(describeProblem(key, raw[key]))
  }
  if (input.NODE_ENV === 'production') problems.push(...productionProblems(input))
  if (problems.length > 0) throw new ConfigError(problems)

  const config = Value.Decode(ConfigSchema, input) as Config
  const rules = crossFieldProblems(config)
  if (rules.length > 0) throw new ConfigError(rules)
  return config
}

/** `host:port` → its parts; undefined when it is not one. */
export function hostPort (text: string): { host: string, port: number } | undefined {
  const match = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text)
  const port = Number(match?.[2])
  if (match === null || port < 1 || port > 65535) return undefined
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port }
}

/** True when a Redis of any topology is configured (else the in-process store serves). */
export function redisConfigured (config: Config): boolean {
  return config.REDIS_URL !== undefined || config.REDIS_SENTINELS.length > 0 || config.REDIS_CLUSTER_NODES.length > 0
}

/** What production cannot run without; checked even when other variables are bad. */
function productionProblems (input: Record<string, unknown>): string[] {
  const missing: string[] = []
  if (input.DATABASE_URL === undefined) missing.push('DATABASE_URL')
  const unset = (key: string): boolean => input[key] === undefined || input[key] === ''
  if (unset('REDIS_URL') && unset('REDIS_SENTINELS') && unset('REDIS_CLUSTER_NODES')) missing.push('REDIS_URL (or REDIS_SENTINELS, REDIS_CLUSTER_NODES)')
  if (KEY_SETTINGS.every(key => input[key] === undefined)) missing.push(`a signing key (${KEY_SETTINGS.slice(0, -1).join(', ')} or ${KEY_SETTINGS.at(-1)!})`)
  return missing.length > 0 ? [`NODE_ENV=production refuses to start without ${missing.join(', ')}`] : []
}

const KEY_SETTINGS = ['JWT_PRIVATE_KEY', 'JWT_PRIVATE_KEY_FILE', 'JWT_KEYS_DIR'] as const

function crossFieldProblems (config: Config): string[] {
  const problems: string[] = []
  const keySettings = [config.JWT_PRIVATE_KEY, config.JWT_PRIVATE_KEY_FILE, config.JWT_KEYS_DIR].filter(value => value !== undefined)
  if (keySettings.length > 1) {
    problems.push('set only one of JWT_PRIVATE_KEY, JWT_PRIVATE_KEY_FILE and JWT_KEYS_DIR')
  }
  if (config.CORS_ORIGINS.includes('*') && config.CORS_ORIGINS.length > 1) {
    problems.push('CORS_ORIGINS must be either * or a list of origins, not both')
  }
  if (config.NODE_ENV === 'production' && config.MAGIC_LINKS === 'enabled' && config.SMTP_URL === undefined) {
    problems.push('NODE_ENV=production needs SMTP_URL to send magic links (or MAGIC_LINKS=disabled)')
  }
  problems.push(...providerProblems(config))
  for (const [name, nodes] of [['REDIS_SENTINELS', config.REDIS_SENTINELS], ['REDIS_CLUSTER_NODES', config.REDIS_CLUSTER_NODES]] as const) {
    for (const node of nodes) if (hostPort(node) === undefined) problems.push(`${name} must be a comma-separated list of host:port (got ${JSON.stringify(node)})`)
  }
  if (config.REDIS_SENTINELS.length > 0 && config.REDIS_CLUSTER_NODES.length > 0) problems.push('set REDIS_SENTINELS or REDIS_CLUSTER_NODES, not both')
  const s3 = [config.S3_ENDPOINT, config.S3_BUCKET, config.S3_ACCESS_KEY_ID, config.S3_SECRET_ACCESS_KEY]
  if (s3.some(value => value !== undefined) && s3.some(value => value === undefined)) {
    problems.push('image storage needs all of S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY (or none of them)')
  }
  for (const origin of config.ALLOWED_REDIRECTS) {
    if (!isOrigin(origin)) problems.push(`ALLOWED_REDIRECTS must be a comma-separated list of origins such as https://app.example.com (got ${JSON.stringify(origin)})`)
  }
  for (const origin of config.CORS_ORIGINS) {
    if (origin !== '*' && !isOrigin(origin)) {
      problems.push(`CORS_ORIGINS must be a comma-separated list of origins such as https://app.example.com (got ${JSON.stringify(origin)})`)
    }
  }
  return problems
}

function isOrigin (value: string): boolean {
  try {
    const parsed = new URL(value)
    return (parsed.protocol === 'http:' || parsed.protocol === 'https:') && parsed.origin === value
  } catch {
    return false
  }
}

export const isProduction = (config: Config): boolean => config.NODE_ENV === 'production'

/** PUBLIC_URL without a trailing slash, defaulting to the local listen address. */
export function publicUrl (config: Config): string {
  return (config.PUBLIC_URL ?? `http://localhost:${config.PORT}`).replace(/\/+$/, '')
}

const LOOPBACK_HOSTS = ['localhost', '127.0.0.1', '[::1]']

/**
 * Whether browsers keep a Secure cookie from PUBLIC_URL: on https, and over plain http only on
 * a loopback host (a "potentially trustworthy" origin: the names above and *.localhost).
 */
export function keepsSecureCookies (config: Config): boolean {
  const url = new URL(publicUrl(config))
  return url.protocol === 'https:' || LOOPBACK_HOSTS.includes(url.hostname) || url.hostname.endsWith('.localhost')
}

/**
 * The origins of this server's own pages, for every check of an Origin header: PUBLIC_URL's.
 * In development, when PUBLIC_URL is a loopback address, also the same scheme and port under
 * each loopback name: the server listens on 127.0.0.1 while PUBLIC_URL defaults to
 * localhost, and a browser may be at either. Production and test keep PUBLIC_URL's only.
 */
export function serverOrigins (config: Config): string[] {
  const url = new URL(publicUrl(config))
  if (config.NODE_ENV !== 'development' || !LOOPBACK_HOSTS.includes(url.hostname)) return [url.origin]
  const port = url.port === '' ? '' : `:${url.port}`
  return [url.origin, ...LOOPBACK_HOSTS.map(host => `${url.protocol}//${host}${port}`).filter(origin => origin !== url.origin)]
}

/** Fastify's trustProxy option from TRUST_PROXY. */
export function trustProxy (config: Config): boolean | string[] | ((address: string, hop: number) => boolean) {
  const value = config.TRUST_PROXY
  if (value === 'true') return true
  if (value === 'false') return false
  if (/^\d+$/.test(value)) {
    const hops = Number(value)
    return (_address, hop) => hop < hops
  }
  return value.split(',').map(entry => entry.trim()).filter(entry => entry !== '')
}
