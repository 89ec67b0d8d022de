import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { ConfigError, ConfigSchema, DEVELOPMENT_DEFAULTS, developmentLimits, loadConfig, parseDuration, publicUrl, serverOrigins } from '../../src/config.js'
import { projectRoot } from '../../src/paths.js'

const problemsOf = (env: Record<string, string>): string[] => {
  try {
    loadConfig(env)
  } catch (error) {
    if (error instanceof ConfigError) return error.problems
    throw error
  }
  return []
}

t.test('defaults give a working development configuration', async t => {
  const config = loadConfig({})
  t.equal(config.NODE_ENV, 'development')
  t.equal(config.PORT, 3000)
  t.equal(config.HOST, '127.0.0.1')
  t.equal(config.DATABASE_URL, undefined, 'no DATABASE_URL: embedded PGlite')
  t.equal(config.REDIS_URL, undefined, 'no REDIS_URL: in-process store')
  t.equal(config.RATE_LIMIT_MAX, 10_000, 'development: generous')
  t.equal(config.RATE_LIMIT_WINDOW, 15 * 60_000, 'seed 002: per 15 minutes')
  t.equal(config.TRUST_PROXY, 'false', 'X-Forwarded-For is not trusted by default')
  t.same(config.CORS_ORIGINS, [])
  t.equal(publicUrl(config), 'http://localhost:3000')
})

const SEED_LIMITS = { RATE_LIMIT_MAX: 100, LOGIN_MAX_PER_IP: 30, LOGIN_MAX_PER_ACCOUNT: 10, MAGIC_LINK_MAX_PER_EMAIL: 5, REFRESH_MAX_PER_SESSION: 120 }
const DEVELOPMENT_LIMITS = { RATE_LIMIT_MAX: 10_000, LOGIN_MAX_PER_IP: 1000, LOGIN_MAX_PER_ACCOUNT: 100, MAGIC_LINK_MAX_PER_EMAIL: 100, REFRESH_MAX_PER_SESSION: 10_000 }
const limitsOf = (env: Record<string, string>): Record<string, number> => {
  const config = loadConfig(env)
  return Object.fromEntries(Object.keys(SEED_LIMITS).map(key => [key, config[key as keyof typeof SEED_LIMITS]]))
}

t.test('development has generous limits where they are not set; production and test keep the seeds\'', async t => {
  t.same(DEVELOPMENT_DEFAULTS, DEVELOPMENT_LIMITS)
  t.same(limitsOf({}), DEVELOPMENT_LIMITS, 'NODE_ENV defaults to development')
  t.same(limitsOf({ NODE_ENV: 'development' }), DEVELOPMENT_LIMITS)
  t.same(limitsOf({ NODE_ENV: 'test' }), SEED_LIMITS, 'test keeps the seeds\' values')
  const production = { NODE_ENV: 'production', DATABASE_URL: 'postgres://db/app', REDIS_URL: 'redis://cache:6379', JWT_KEYS_DIR: '/keys', MAGIC_LINKS: 'disabled' }
  t.same(limitsOf(production), SEED_LIMITS, 'production keeps the seeds\' values exactly')
  t.same(limitsOf({ RATE_LIMIT_MAX: '50', LOGIN_MAX_PER_ACCOUNT: '3', MAGIC_LINK_MAX_PER_EMAIL: '' }), { ...DEVELOPMENT_LIMITS, RATE_LIMIT_MAX: 50, LOGIN_MAX_PER_ACCOUNT: 3 },
    'a variable that is set wins in development (an empty one counts as unset)')
  t.same(limitsOf({ ...production, RATE_LIMIT_MAX: '5000', REFRESH_MAX_PER_SESSION: '7' }), { ...SEED_LIMITS, RATE_LIMIT_MAX: 5000, REFRESH_MAX_PER_SESSION: 7 },
    'and in production')
  t.match(problemsOf({ RATE_LIMIT_MAX: '0' }), [/^RATE_LIMIT_MAX must be an integer from 1/], 'a set value is still checked in development')
  t.equal(developmentLimits(loadConfig({})),
    'development limits: 10000 requests per 15 minutes per IP on /api/*, 1000 sign-ins per IP, 100 per account and 100 magic links per address per 15 minutes, ' +
    '10000 refreshes per session per 15 minutes; production keeps 100 requests per 15 minutes per IP')
  t.match(developmentLimits(loadConfig({ RATE_LIMIT_WINDOW: '1m', LOGIN_WINDOW: '2h', LOGIN_MAX_PER_IP: '4' })),
    /^development limits: 10000 requests per minute per IP on \/api\/\*, 4 sign-ins per IP, .* per 2 hours, 10000 refreshes per session per minute; /)
})

t.test('the server\'s own origins: in development both loopback spellings of a loopback PUBLIC_URL', async t => {
  t.same(serverOrigins(loadConfig({})), ['http://localhost:3000', 'http://127.0.0.1:3000', 'http://[::1]:3000'])
  t.same(serverOrigins(loadConfig({ PUBLIC_URL: 'http://127.0.0.1:8080/' })), ['http://127.0.0.1:8080', 'http://localhost:8080', 'http://[::1]:8080'])
  t.same(serverOrigins(loadConfig({ PUBLIC_URL: 'https://[::1]' })), ['https://[::1]', 'https://localhost', 'https://127.0.0.1'], 'same scheme, default port')
  t.same(serverOrigins(loadConfig({ PUBLIC_URL: 'https://auth.example.com' })), ['https://auth.example.com'], 'a public name stays alone')
  t.same(serverOrigins(loadConfig({ PUBLIC_URL: 'http://localhost.example.com:3000' })), ['http://localhost.example.com:3000'])
  t.same(serverOrigins(loadConfig({ NODE_ENV: 'test' })), ['http://localhost:3000'], 'test keeps PUBLIC_URL\'s only')
  const production = { NODE_ENV: 'production', DATABASE_URL: 'postgres://db/app', REDIS_URL: 'redis://cache:6379', JWT_KEYS_DIR: '/keys', MAGIC_LINKS: 'disabled' }
  t.same(serverOrigins(loadConfig(production)), ['http://localhost:3000'], 'production never adds any')
})

t.test('values are converted from their environment strings', async t => {
  const config = loadConfig({
    PORT: '8080',
    MIGRATE_ON_START: 'false',
    CORS_ORIGINS: 'https://app.example.com, http://localhost:5173',
    RATE_LIMIT_WINDOW: '900',
    BODY_LIMIT: '512kb',
    PUBLIC_URL: 'https://auth.example.com/'
  })
  t.equal(config.PORT, 8080)
  t.equal(config.MIGRATE_ON_START, false)
  t.same(config.CORS_ORIGINS, ['https://app.example.com', 'http://localhost:5173'])
  t.equal(config.RATE_LIMIT_WINDOW, 900_000, 'a bare number is seconds')
  t.equal(config.BODY_LIMIT, 512 * 1024)
  t.equal(publicUrl(config), 'https://auth.example.com', 'trailing slash dropped')
})

t.test('durations accept seed 004 style values', async t => {
  t.equal(parseDuration('15m'), 900_000)
  t.equal(parseDuration('7d'), 7 * 86_400_000)
  t.equal(parseDuration('500ms'), 500)
  t.equal(parseDuration('12h'), 12 * 3_600_000)
  t.equal(parseDuration('30'), 30_000)
  t.throws(() => parseDuration('soon'))
})

t.test('a bad value names the variable and what it accepts', async t => {
  const problems = problemsOf({
    PORT: 'abc',
    LOG_LEVEL: 'loud',
    RATE_LIMIT_WINDOW: '15 minutes',
    TRUST_PROXY: 'yes',
    MIGRATE_ON_START: 'maybe',
    DATABASE_URL: 'mysql://user:secret@db/app'
  })
  t.equal(problems.length, 6, 'every bad variable is reported, not only the first')
  const expected = [
    /^PORT must be an integer from 0 to 65535 \(got "abc"\)$/,
    /^LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent \(got "loud"\)$/,
    /^DATABASE_URL must be a URL starting with postgres:\/\/ or postgresql:\/\/ \(value hidden\)$/,
    /^MIGRATE_ON_START must be true or false \(got "maybe"\)$/,
    /^TRUST_PROXY must be false, true, a number of hops/,
    /^RATE_LIMIT_WINDOW must be a duration such as 500ms, 30s, 15m, 12h, 7d or a number of seconds \(got "15 minutes"\)$/
  ]
  expected.forEach((pattern, index) => t.match(problems[index], pattern))
  t.notOk(problems.join('\n').includes('secret'), 'a secret value is never echoed')
})

t.test('the error message lists every problem', async t => {
  t.throws(() => loadConfig({ PORT: '-1' }), { name: 'ConfigError', message: /Invalid configuration:\n {2}- PORT must be/ })
})

t.test('production refuses to start without DATABASE_URL, REDIS_URL and a signing key', async t => {
  const [problem] = problemsOf({ NODE_ENV: 'production' })
  t.equal(problem, 'NODE_ENV=production refuses to start without DATABASE_URL, REDIS_URL (or REDIS_SENTINELS, REDIS_CLUSTER_NODES), a signing key (JWT_PRIVATE_KEY, JWT_PRIVATE_KEY_FILE or JWT_KEYS_DIR)')
  t.same(problemsOf({ NODE_ENV: 'production', DATABASE_URL: 'postgres://db/app', REDIS_CLUSTER_NODES: '10.0.0.1:6379,10.0.0.2:6379', JWT_KEYS_DIR: '/keys', MAGIC_LINKS: 'disabled' }), [],
    'a Redis Cluster is a Redis')
  t.same(problemsOf({ NODE_ENV: 'production', DATABASE_URL: 'postgres://db/app', REDIS_URL: 'redis://cache:6379' }),
    ['NODE_ENV=production refuses to start without a signing key (JWT_PRIVATE_KEY, JWT_PRIVATE_KEY_FILE or JWT_KEYS_DIR)'])
  const complete = { NODE_ENV: 'production', DATABASE_URL: 'postgres://db/app', REDIS_URL: 'redis://cache:6379', JWT_KEYS_DIR: '/run/secrets/keys' }
  t.same(problemsOf(complete), ['NODE_ENV=production needs SMTP_URL to send magic links (or MAGIC_LINKS=disabled)'])
  t.same(problemsOf({ ...complete, SMTP_URL: 'smtps://mail.example.com' }), [])
  t.same(problemsOf({ ...complete, MAGIC_LINKS: 'disabled' }), [])
})

t.test('cross-field rules', async t => {
  t.same(problemsOf({ CORS_ORIGINS: '*,https://app.example.com' }), ['CORS_ORIGINS must be either * or a list of origins, not both'])
  t.match(problemsOf({ CORS_ORIGINS: 'https://app.example.com/path' }), [/CORS_ORIGINS must be a comma-separated list of origins/])
  t.match(problemsOf({ CORS_ORIGINS: 'app.example.com' }), [/CORS_ORIGINS must be/])
  t.same(problemsOf({ JWT_KEYS_DIR: '/keys', JWT_PRIVATE_KEY_FILE: '/key.pem' }), ['set only one of JWT_PRIVATE_KEY, JWT_PRIVATE_KEY_FILE and JWT_KEYS_DIR'])
  t.same(problemsOf({ REDIS_SENTINELS: 'sentinel-1:26379,oops' }), ['REDIS_SENTINELS must be a comma-separated list of host:port (got "oops")'])
  t.same(problemsOf({ REDIS_SENTINELS: 'a:26379', REDIS_CLUSTER_NODES: 'b:6379' }), ['set REDIS_SENTINELS or REDIS_CLUSTER_NODES, not both'])
  t.same(problemsOf({ REDIS_CLUSTER_NODES: '[::1]:7000, 127.0.0.1:7001' }), [])
})

t.test('.env.example and the README document every variable', async t => {
  const example = readFileSync(join(projectRoot, '.env.example'), 'utf8')
  const readme = readFileSync(join(projectRoot, 'README.md'), 'utf8')
  for (const key of Object.keys(ConfigSchema.properties)) {
    t.match(example, new RegExp(`^#? ?${key}=`, 'm'), `.env.example lists ${key}`)
    t.match(readme, new RegExp(`\\| \`${key}\` \\|`), `README configuration table lists ${key}`)
  }
  for (const [key, value] of Object.entries(DEVELOPMENT_DEFAULTS)) {
    const fallback = (ConfigSchema.properties as Record<string, { default?: unknown }>)[key]!.default
    t.match(readme, `| \`${key}\` | \`${String(fallback)}\` (development: \`${value}\`) |`, `README gives ${key}'s development default`)
    t.match(example, `# Unset: ${String(fallback)}, in development ${value}; a value set here applies in every mode.\n# ${key}=${String(fallback)}\n`,
      `.env.example leaves ${key} unset, so a copied .env keeps development's default`)
  }
})
