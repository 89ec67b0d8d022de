import { createHash, randomUUID } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import pg from 'pg'
import t from 'tap'
import { admin, bearer, PASSWORD, registerVerified } from '../auth-helper.js'
import { build, statementsDuring, twoInstancesSkip, type Env, type TestContext } from '../helper.js'

/*
 * Integration tokens (issue 5, seed 003 "### Integration Tokens" and "### 2. Integration
 * tokens"): creation, listing and revocation by a browser session; use as a bearer token;
 * revocation on every instance; expiry; removal and deactivation of the member; the no-query
 * steady state; batched lastUsedAt; the per-token rate limit; and what a token may not call.
 */

const DAY = 86_400_000
const GTK = /^gtk_[A-Za-z0-9_-]{43}$/
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/
const AUTH_REQUIRED = 'Authentication required.'
const BROWSER_ONLY = 'This endpoint requires a browser session instead of an integration token.'
const TOKEN_FIELDS = ['createdAt', 'expiresAt', 'id', 'lastUsedAt', 'name', 'revokedAt', 'scope', 'tokenPrefix', 'userId', 'workspaceId']

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex')

function manualClock (start = Date.now()): { now: () => number, advance: (ms: number) => void } {
  let current = start
  return { now: () => current, advance: ms => { current += ms } }
}

interface Minted { id: string, token: string, integrationToken: Record<string, unknown> }

async function create (app: FastifyInstance, accessToken: string, payload: unknown = { name: 'n8n household sync', scope: 'read_write' }): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: bearer(accessToken), payload: payload as Record<string, unknown> })
}

async function mint (app: FastifyInstance, accessToken: string, payload?: Record<string, unknown>): Promise<Minted> {
  const response = await create(app, accessToken, payload)
  if (response.statusCode !== 201) throw new Error(`token creation failed: ${response.statusCode} ${response.body}`)
  const body = response.json()
  return { id: body.integrationToken.id, token: body.token, integrationToken: body.integrationToken }
}

async function list (app: FastifyInstance, accessToken: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'GET', url: '/api/integration-tokens', headers: bearer(accessToken) })
}

async function listed (app: FastifyInstance, accessToken: string): Promise<Array<Record<string, unknown>>> {
  const response = await list(app, accessToken)
  if (response.statusCode !== 200) throw new Error(`token list failed: ${response.statusCode} ${response.body}`)
  return response.json().integrationTokens
}

async function revoke (app: FastifyInstance, accessToken: string, id: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'DELETE', url: `/api/integration-tokens/${id}`, headers: bearer(accessToken) })
}

/** A request that integration tokens may make (members.read, any role). */
async function members (app: FastifyInstance, token: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'GET', url: '/api/workspace/members', headers: bearer(token) })
}

async function activeWorkspaceId (app: FastifyInstance, accessToken: string): Promise<number> {
  const response = await app.inject({ method: 'GET', url: '/api/auth/session', headers: bearer(accessToken) })
  return response.json().session.activeWorkspace.id
}

/** A second instance of the application on the same PostgreSQL database and Redis namespace. */
async function sibling (t: TestContext, app: FastifyInstance, env: Env = {}): Promise<FastifyInstance> {
  return await build(t, { DATABASE_URL: app.config.DATABASE_URL, REDIS_PREFIX: app.config.REDIS_PREFIX, ...env })
}

/** Alice's workspace with Bob in it as staff: Bob's member id and an access token of his for that workspace. */
async function withBob (app: FastifyInstance, aliceToken: string): Promise<{ memberId: string, accessToken: string, personalToken: string, userId: string }> {
  const bob = await registerVerified(app, 'bob@example.com')
  const invited = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: bearer(aliceToken), payload: { email: 'bob@example.com', role: 'staff' } })
  if (invited.statusCode !== 201) throw new Error(`invite failed: ${invited.statusCode} ${invited.body}`)
  const workspaceId = await activeWorkspaceId(app, aliceToken)
  const switched = await app.inject({ method: 'POST', url: '/api/auth/switch-workspace', headers: bearer(bob.accessToken), payload: { workspaceId } })
  if (switched.statusCode !== 200) throw new Error(`switch failed: ${switched.statusCode} ${switched.body}`)
  return { memberId: invited.json().member.id, accessToken: switched.json().accessToken, personalToken: bob.accessToken, userId: bob.user.id }
}

/** The batched lastUsedAt write of plugins/integration-tokens.ts (every 15 s, may fall in any window). */
const LAST_USED_FLUSH = /^\s*UPDATE integration_tokens AS t SET last_used_at/i
const WRITE = /^\s*(insert|update|delete|merge)\b/i

t.test('creation answers the token once with no-store; the list and the database never hold it (seed 003 shapes)', async t => {
  const app = await build(t)
  const alice = await registerVerified(app, 'alice@example.com')
  const workspaceId = await activeWorkspaceId(app, alice.accessToken)

  const created = await create(app, alice.accessToken, { name: '  n8n household sync  ', scope: 'read_write', expiresInDays: 90 })
  t.equal(created.statusCode, 201)
  t.equal(created.headers['cache-control'], 'no-store', 'the one answer carrying the raw token is not cached')
  const body = created.json()
  t.same(Object.keys(body).sort(), ['integrationToken', 'token'])
  const token = body.token as string
  const first = body.integrationToken
  t.match(token, GTK)
  t.same(Object.keys(first).sort(), TOKEN_FIELDS)
  t.match(first.id, UUID)
  t.equal(first.userId, alice.user.id)
  t.equal(first.workspaceId, workspaceId, 'the active workspace')
  t.equal(first.name, 'n8n household sync', 'trimmed')
  t.equal(first.tokenPrefix, token.slice(0, 14), 'the prefix and ten characters')
  t.equal(first.scope, 'read_write')
  t.equal(first.lastUsedAt, null)
  t.equal(first.revokedAt, null)
  t.match(first.createdAt, ISO)
  t.match(first.expiresAt, ISO)
  t.equal(Date.parse(first.expiresAt) - Date.parse(first.createdAt), 90 * DAY)
  t.ok(Math.abs(Date.parse(first.createdAt) - Date.now()) < 60_000, 'created now')

  const second = await mint(app, alice.accessToken, { name: 'script', scope: 'read_only' })
  t.equal(second.integrationToken.expiresAt, null, 'no expiresInDays: no expiry')
  t.equal(second.integrationToken.scope, 'read_only')
  t.not(second.token, token)

  const listing = await list(app, alice.accessToken)
  t.equal(listing.statusCode, 200)
  t.same(Object.keys(listing.json()), ['integrationTokens'])
  const tokens = listing.json().integrationTokens as Array<Record<string, unknown>>
  t.same(tokens, [second.integrationToken, first], 'the caller\'s active tokens, newest first, as created')
  for (const entry of tokens) t.same(Object.keys(entry).sort(), TOKEN_FIELDS, 'no raw token field')
  t.notOk(listing.body.includes(token) || listing.body.includes(second.token), 'no raw token anywhere in the list')

  t.equal((await members(app, token)).statusCode, 200, 'the token works as a bearer token')
  t.equal((await members(app, second.token)).statusCode, 200)

  const bob = await registerVerified(app, 'bob@example.com')
  t.same(await listed(app, bob.accessToken), [], 'another user sees none of them')

  const rows = await app.db.selectFrom('integration_tokens').selectAll().orderBy('created_at').execute()
  t.equal(rows.length, 2)
  for (const [row, raw] of [[rows[0]!, token], [rows[1]!, second.token]] as const) {
    t.equal(row.token_hash, sha256(raw), 'stored as the SHA-256 hex of the token')
    t.equal(row.token_prefix, raw.slice(0, 14))
    for (const [column, value] of Object.entries(row)) {
      if (value !== null && String(value).includes(raw)) t.fail(`column ${column} holds the raw token`)
    }
    t.notOk(Object.values(row).some(value => value === raw), 'no column equals the token')
  }
  const audit = JSON.stringify(await app.db.selectFrom('audit_log').selectAll().execute())
  t.ok(audit.includes('token.created'), 'the creations are audited')
  t.notOk(audit.includes(token) || audit.includes(second.token), 'the audit log never holds a raw token')
})

t.test('INTEGRATION_TOKEN_PREFIX=flpt_: tokens start with flpt_ and work; a gtk_ token is refused', async t => {
  const app = await build(t, { INTEGRATION_TOKEN_PREFIX: 'flpt_' })
  const alice = await registerVerified(app, 'alice@example.com')
  const { token, integrationToken } = await mint(app, alice.accessToken)
  t.match(token, /^flpt_[A-Za-z0-9_-]{43}$/)
  t.equal(integrationToken.tokenPrefix, token.slice(0, 15), 'as in seed 003: flpt_1234abcd56')
  t.equal((await members(app, token)).statusCode, 200)

  const foreign = `gtk_${token.slice('flpt_'.length)}`
  t.match(foreign, GTK, 'the right shape for the default prefix')
  const refused = await members(app, foreign)
  t.equal(refused.statusCode, 401)
  t.equal(refused.json().error, AUTH_REQUIRED)
  const unknown = await members(app, `flpt_${'A'.repeat(43)}`)
  t.equal(unknown.statusCode, 401, 'an unknown token of the right shape')
  t.equal(unknown.json().error, AUTH_REQUIRED)
})

t.test('creation payloads are validated; a token past its expiresAt is refused and no longer listed', async t => {
  const clock = manualClock()
  const app = await build(t, { INTEGRATION_TOKEN_MAX_DAYS: '30' }, undefined, { now: clock.now })
  const alice = await registerVerified(app, 'alice@example.com')

  const bad = async (payload: Record<string, unknown>, field: string): Promise<void> => {
    const response = await create(app, alice.accessToken, payload)
    t.equal(response.statusCode, 400, `${JSON.stringify(payload)} is 400`)
    t.equal(response.json().error, 'Invalid integration token payload')
    t.equal(response.json().code, 'VALIDATION_FAILED')
    t.type(response.json().details?.[field], 'string', `details name ${field}`)
  }
  for (const expiresInDays of [0, -1, 1.5, 'x', 31, 36_501]) await bad({ name: 'n8n', scope: 'read_only', expiresInDays }, 'expiresInDays')
  await bad({ scope: 'read_only' }, 'name')
  await bad({ name: '', scope: 'read_only' }, 'name')
  await bad({ name: '   ', scope: 'read_only' }, 'name')
  await bad({ name: 'n8n', scope: 'admin' }, 'scope')
  await bad({ name: 'n8n' }, 'scope')
  t.same(await listed(app, alice.accessToken), [], 'no refused request created a token')
  t.equal((await create(app, alice.accessToken, { name: 'n8n', scope: 'read_only', expiresInDays: 30 })).statusCode, 201, 'INTEGRATION_TOKEN_MAX_DAYS itself is accepted')

  const start = clock.now()
  const daily = await mint(app, alice.accessToken, { name: 'daily', scope: 'read_write', expiresInDays: 1 })
  t.equal(daily.integrationToken.createdAt, new Date(start).toISOString())
  t.equal(daily.integrationToken.expiresAt, new Date(start + DAY).toISOString(), 'now + 1 day')
  const unused = await mint(app, alice.accessToken, { name: 'unused', scope: 'read_only', expiresInDays: 1 })
  const forever = await mint(app, alice.accessToken, { name: 'forever', scope: 'read_only' })
  t.equal((await members(app, daily.token)).statusCode, 200, 'alive (and now cached)')

  clock.advance(DAY - 1_000)
  t.equal((await members(app, daily.token)).statusCode, 200, 'alive a second before its expiry')
  t.same((await listed(app, alice.accessToken)).map(entry => entry.name).sort(), ['daily', 'forever', 'n8n', 'unused'])

  clock.advance(2_000)
  const expired = await members(app, daily.token)
  t.equal(expired.statusCode, 401, 'refused past expiresAt, although cached')
  t.equal(expired.json().error, AUTH_REQUIRED)
  const neverSeen = await members(app, unused.token)
  t.equal(neverSeen.statusCode, 401, 'refused past expiresAt when read from the database')
  t.equal((await members(app, forever.token)).statusCode, 200, 'a token without expiry lives on')
  t.same((await listed(app, alice.accessToken)).map(entry => entry.name).sort(), ['forever', 'n8n'], 'expired tokens are no longer listed')
})

t.test('DELETE revokes at once on this instance and, through pub/sub, on another one', { skip: twoInstancesSkip }, async t => {
  const app = await build(t)
  const other = await sibling(t, app)
  const alice = await registerVerified(app, 'alice@example.com')
  const { id, token } = await mint(app, alice.accessToken)
  t.equal((await members(other, token)).statusCode, 200, 'the other instance has verified (and cached) the token')
  t.equal((await members(app, token)).statusCode, 200)

  const revoked = await revoke(app, alice.accessToken, id)
  t.equal(revoked.statusCode, 204)
  t.equal(revoked.body, '', 'no body')
  const here = await members(app, token)
  t.equal(here.statusCode, 401, 'refused at once where it was revoked')
  t.equal(here.json().error, AUTH_REQUIRED)

  const started = Date.now()
  let there = await members(other, token)
  while (there.statusCode === 200 && Date.now() - started < 1_000) {
    await new Promise(resolve => setTimeout(resolve, 20))
    there = await members(other, token)
  }
  t.equal(there.statusCode, 401, `refused on the other instance within a second (after ${Date.now() - started} ms)`)
  t.equal(there.json().error, AUTH_REQUIRED)

  t.same(await listed(app, alice.accessToken), [], 'no longer listed')
  const row = await app.db.selectFrom('integration_tokens').select(['revoked_at']).where('id', '=', id).executeTakeFirstOrThrow()
  t.ok(row.revoked_at instanceof Date, 'revoked_at is set')
  const audit = await app.db.selectFrom('audit_log').select(['action', 'subject_id']).where('action', '=', 'token.revoked').execute()
  t.same(audit, [{ action: 'token.revoked', subject_id: id }])

  for (const [what, tokenId] of [['twice', id], ['a non-uuid', 'not-a-uuid'], ['an unknown uuid', randomUUID()]] as const) {
    const response = await revoke(app, alice.accessToken, tokenId)
    t.equal(response.statusCode, 404, `DELETE of ${what} is 404`)
    t.equal(response.json().code, 'NOT_FOUND')
  }
})

t.test('DELETE of another member\'s token in the same workspace is 404 and leaves it working', async t => {
  const app = await build(t)
  const alice = await registerVerified(app, 'alice@example.com')
  const bob = await withBob(app, alice.accessToken)
  const bobs = await mint(app, bob.accessToken, { name: 'bob-sync', scope: 'read_only' })
  t.same(await listed(app, alice.accessToken), [], 'the owner does not see a member\'s tokens')

  const response = await revoke(app, alice.accessToken, bobs.id)
  t.equal(response.statusCode, 404)
  t.equal(response.json().code, 'NOT_FOUND')
  t.equal((await members(app, bobs.token)).statusCode, 200, 'still alive')
  t.equal((await revoke(app, bob.accessToken, bobs.id)).statusCode, 204, 'its owner can revoke it')
  t.equal((await members(app, bobs.token)).statusCode, 401)
})

t.test('a removed member\'s tokens are revoked; a deactivated user\'s token is 403 User account is inactive', async t => {
  const app = await build(t)
  const root = await admin(app)
  const alice = await registerVerified(app, 'alice@example.com')
  const bob = await withBob(app, alice.accessToken)
  const inAlices = await mint(app, bob.accessToken, { name: 'in-alices', scope: 'read_write' })
  const inHis = await mint(app, bob.personalToken, { name: 'in-his', scope: 'read_write' })
  t.equal((await members(app, inAlices.token)).statusCode, 200)
  t.equal((await members(app, inHis.token)).statusCode, 200)

  const removed = await app.inject({ method: 'DELETE', url: `/api/workspace/members/${bob.memberId}`, headers: bearer(alice.accessToken) })
  t.equal(removed.statusCode, 204)
  const refused = await members(app, inAlices.token)
  t.equal(refused.statusCode, 401, 'the removed member\'s token for that workspace is refused at once')
  t.equal(refused.json().error, AUTH_REQUIRED)
  const rows = await app.db.selectFrom('integration_tokens').select(['id', 'revoked_at']).where('user_id', '=', bob.userId).execute()
  t.same(rows.filter(row => row.revoked_at !== null).map(row => row.id), [inAlices.id], 'revoked in the database, and only that workspace\'s')
  t.equal((await members(app, inHis.token)).statusCode, 200, 'his token for another workspace is untouched')

  const deactivated = await app.inject({ method: 'PATCH', url: `/api/admin/users/${bob.userId}`, headers: bearer(root.accessToken), payload: { isActive: false } })
  t.equal(deactivated.statusCode, 200)
  const inactive = await members(app, inHis.token)
  t.equal(inactive.statusCode, 403, 'the cached user is dropped at once')
  t.equal(inactive.json().error, 'User account is inactive')
  t.equal(inactive.json().code, 'USER_INACTIVE')
})

t.test('deactivation revokes a user\'s tokens for good: 403 while inactive, still refused (401) and not listed once reactivated', async t => {
  const app = await build(t)
  const other = twoInstancesSkip === false ? await sibling(t, app) : undefined
  const root = await admin(app)
  const bob = await registerVerified(app, 'bob@example.com')
  const minted = await mint(app, bob.accessToken, { name: 'nightly export', scope: 'read_only' })
  t.equal((await members(app, minted.token)).statusCode, 200)
  if (other !== undefined) t.equal((await members(other, minted.token)).statusCode, 200, 'the other instance has verified (and cached) the token')
  const patch = async (isActive: boolean) => await app.inject({ method: 'PATCH', url: `/api/admin/users/${bob.user.id}`, headers: bearer(root.accessToken), payload: { isActive } })

  t.equal((await patch(false)).statusCode, 200)
  const inactive = await members(app, minted.token)
  t.equal(inactive.statusCode, 403, 'while deactivated the token is told why')
  t.same(inactive.json(), { error: 'User account is inactive', code: 'USER_INACTIVE' })
  const row = await app.db.selectFrom('integration_tokens').select('revoked_at').where('id', '=', minted.id).executeTakeFirstOrThrow()
  t.ok(row.revoked_at instanceof Date, 'revoked in the database')
  const updated = await app.db.selectFrom('audit_log').select('details').where('action', '=', 'admin.user_updated').executeTakeFirstOrThrow()
  t.match(updated.details, { after: { isActive: false }, tokensRevoked: 1 })

  t.equal((await patch(true)).statusCode, 200)
  const reactivated = await members(app, minted.token)
  t.equal(reactivated.statusCode, 401, 'reactivation does not bring the token back')
  t.equal(reactivated.json().error, AUTH_REQUIRED)
  const signedIn = await app.inject({ method: 'POST', url: '/api/auth/login', payload: { email: 'bob@example.com', password: PASSWORD } })
  t.equal(signedIn.statusCode, 200, 'the user signs in again')
  t.same(await listed(app, signedIn.json().accessToken), [], 'the revoked token is no longer listed')
  t.ok((await mint(app, signedIn.json().accessToken)).token, 'and may mint a new one')

  await t.test('on another instance, through pub/sub', { skip: twoInstancesSkip }, async t => {
    const started = Date.now()
    let there = await members(other!, minted.token)
    while (there.statusCode === 200 && Date.now() - started < 1_000) {
      await new Promise(resolve => setTimeout(resolve, 20))
      there = await members(other!, minted.token)
    }
    t.equal(there.statusCode, 401, `refused on the other instance too (after ${Date.now() - started} ms)`)
  })
})

t.test('the steady state of a token costs no query: N requests run exactly N member listings and no write', async t => {
  const app = await build(t)
  const alice = await registerVerified(app, 'alice@example.com')
  const { token } = await mint(app, alice.accessToken)

  // The counter sees a cold token's lookup (so the count below can fail).
  const cold = await statementsDuring(app, async () => { t.equal((await members(app, token)).statusCode, 200) })
  t.ok(cold.some(statement => /from "integration_tokens"/i.test(statement)), 'a token\'s first request reads integration_tokens')

  const N = 50
  const statuses: number[] = []
  const statements = await statementsDuring(app, async () => {
    for (let i = 0; i < N; i++) statuses.push((await members(app, token)).statusCode)
  })
  t.same(statuses, Array(N).fill(200))
  const flushes = statements.filter(statement => LAST_USED_FLUSH.test(statement))
  const others = statements.filter(statement => !LAST_USED_FLUSH.test(statement))
  t.ok(flushes.length <= 1, 'at most the one batched lastUsedAt write of the warm-up (its timer may fall in this window)')
  t.equal(others.length, N, 'exactly one statement per request')
  t.ok(others.every(statement => /^select \* from "workspace_members" where "workspace_id" = \$1/i.test(statement)), 'each one the member listing itself')
  t.same(others.filter(statement => WRITE.test(statement)), [], 'no write per request')
})

t.test('lastUsedAt is written in batches: null after a use, set within a minute of it once flushed (at close)', async t => {
  const app = await build(t)
  const alice = await registerVerified(app, 'alice@example.com')
  const { id, token } = await mint(app, alice.accessToken)
  const usedAt = Date.now()
  t.equal((await members(app, token)).statusCode, 200)
  t.equal((await members(app, token)).statusCode, 200)
  t.equal((await listed(app, alice.accessToken))[0]!.lastUsedAt, null, 'not written per request')
  const before = await app.db.selectFrom('integration_tokens').select('last_used_at').where('id', '=', id).executeTakeFirstOrThrow()
  t.equal(before.last_used_at, null)

  await app.close()
  const next = await sibling(t, app)
  const [entry] = await listed(next, alice.accessToken)
  t.equal(entry!.id, id)
  t.match(entry!.lastUsedAt, ISO, 'written when the instance closed')
  const lastUsed = Date.parse(entry!.lastUsedAt as string)
  t.ok(lastUsed >= usedAt - 1_000 && lastUsed <= usedAt + 60_000, `within a minute of the use (${lastUsed - usedAt} ms)`)
  t.ok(lastUsed >= Date.parse(entry!.createdAt as string), 'not before its creation')
})

t.test('integration tokens are rate limited per token (RATE_LIMIT_TOKEN_MAX), apart from the user\'s browser session', async t => {
  const app = await build(t, { RATE_LIMIT_TOKEN_MAX: '5', RATE_LIMIT_AUTHENTICATED_MAX: '100000' })
  const alice = await registerVerified(app, 'alice@example.com')
  const { token } = await mint(app, alice.accessToken)
  const second = await mint(app, alice.accessToken, { name: 'second', scope: 'read_only' })

  for (let i = 0; i < 5; i++) {
    const response = await members(app, token)
    t.equal(response.statusCode, 200, `request ${i + 1} of 5`)
    t.equal(response.headers['ratelimit-limit'], '5')
    t.equal(response.headers['ratelimit-remaining'], String(4 - i))
  }
  for (const n of [6, 7]) {
    const limited = await members(app, token)
    t.equal(limited.statusCode, 429, `request ${n} is limited`)
    t.equal(limited.json().code, 'RATE_LIMITED')
    t.type(limited.json().error, 'string')
    t.equal(limited.headers['ratelimit-remaining'], '0')
    t.ok(Number(limited.headers['retry-after']) > 0, 'with Retry-After')
  }

  const session = await members(app, alice.accessToken)
  t.equal(session.statusCode, 200, 'the same user\'s browser session is not limited by the token\'s counter')
  t.equal(session.headers['ratelimit-limit'], '100000')
  const other = await members(app, second.token)
  t.equal(other.statusCode, 200, 'another token of the same user counts on its own')
  t.equal(other.headers['ratelimit-limit'], '5')
  t.equal(other.headers['ratelimit-remaining'], '4')
})

t.test('malformed bearers are 401; /api/auth/me, logout and the token routes refuse integration tokens with 403', async t => {
  const app = await build(t)
  const alice = await registerVerified(app, 'alice@example.com')
  const { id, token } = await mint(app, alice.accessToken)

  for (const [what, header] of [
    ['Bearer gtk_short', 'Bearer gtk_short'],
    ['44 characters after the prefix', `Bearer gtk_${'A'.repeat(44)}`],
    ['a character outside base64url', `Bearer gtk_${'A'.repeat(42)}!`],
    ['a real token under another scheme', `Basic ${token}`]
  ] as const) {
    const response = await app.inject({ method: 'GET', url: '/api/workspace/members', headers: { authorization: header } })
    t.equal(response.statusCode, 401, `${what} is 401`)
    t.equal(response.json().error, AUTH_REQUIRED)
  }

  const me = await app.inject({ method: 'GET', url: '/api/auth/me', headers: bearer(token) })
  t.equal(me.statusCode, 403)
  t.equal(me.json().error, BROWSER_ONLY)
  t.equal(me.json().code, 'BROWSER_SESSION_REQUIRED')

  const logout = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(token) })
  t.equal(logout.statusCode, 403)
  t.equal(logout.json().error, BROWSER_ONLY)

  for (const request of [
    { method: 'GET' as const, url: '/api/integration-tokens' },
    { method: 'POST' as const, url: '/api/integration-tokens', payload: { name: 'child', scope: 'read_only' } },
    { method: 'DELETE' as const, url: `/api/integration-tokens/${id}` }
  ]) {
    const response = await app.inject({ ...request, headers: bearer(token) })
    t.equal(response.statusCode, 403, `${request.method} ${request.url} with a token is 403`)
    t.equal(response.json().error, BROWSER_ONLY)
  }

  t.equal((await members(app, token)).statusCode, 200, 'the token is still alive')
  t.equal((await members(app, alice.accessToken)).statusCode, 200, 'and so is the session')
  t.equal((await listed(app, alice.accessToken)).length, 1, 'nothing was created or revoked')
})

t.test('a single instance counts exactly while a batch of counts is on its way to Redis', async t => {
  const app = await build(t, { RATE_LIMIT_TOKEN_MAX: '5', RATE_LIMIT_AUTHENTICATED_MAX: '100000' })
  const alice = await registerVerified(app, 'alice@example.com')
  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: bearer(alice.accessToken), payload: { name: 'x', scope: 'read_only' } })
  const token = minted.json().token as string
  // Make the store's batched increments (the flushes: `by` given) slow, as a loaded Redis would be.
  const store = app.store as unknown as { increment: (key: string, windowMs: number, by?: number) => Promise<unknown> }
  const original = store.increment.bind(store)
  store.increment = async (key, windowMs, by) => {
    if (by !== undefined) await new Promise(resolve => setTimeout(resolve, 300))
    return await original(key, windowMs, by)
  }
  const hit = async () => (await app.inject({ url: '/api/workspace/members', headers: bearer(token) }))
  const statuses: Array<string> = []
  for (let i = 0; i < 3; i++) {
    const r = await hit()
    statuses.push(`${r.statusCode}/${r.headers['ratelimit-remaining'] as string}`)
  }
  await new Promise(resolve => setTimeout(resolve, 150)) // the flush of hits 2-3 is now in flight
  for (let i = 0; i < 4; i++) {
    const r = await hit()
    statuses.push(`${r.statusCode}/${r.headers['ratelimit-remaining'] as string}`)
  }
  t.same(statuses.map(s => s.split('/')[0]), ['200', '200', '200', '200', '200', '429', '429'], statuses.join(' '))
})

t.test('a token read from the database while it is being revoked is not cached as live', { skip: twoInstancesSkip }, async t => {
  const a = await build(t)
  const b = await build(t, { DATABASE_URL: a.config.DATABASE_URL, REDIS_PREFIX: a.config.REDIS_PREFIX })
  const alice = await registerVerified(a, 'alice@example.com')
  const minted = await a.inject({ method: 'POST', url: '/api/integration-tokens', headers: bearer(alice.accessToken), payload: { name: 'x', scope: 'read_only' } })
  const { token } = minted.json()
  const id = minted.json().integrationToken.id as string

  const prototype = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown }
  const query = prototype.query
  let release!: () => void
  const gate = new Promise<void>(resolve => { release = resolve })
  let held = false
  let issued!: () => void
  const selectIssued = new Promise<void>(resolve => { issued = resolve })
  prototype.query = function (this: unknown, ...args: unknown[]) {
    const result = query.apply(this, args)
    if (!held && typeof args[0] === 'string' && /from "integration_tokens"/i.test(args[0])) {
      held = true
      issued()
      return (result as Promise<unknown>).then(async value => {
        await gate
        return value
      })
    }
    return result
  }
  t.teardown(() => { prototype.query = query })

  const inFlight = b.inject({ url: '/api/workspace/members', headers: bearer(token) }) // B: cache miss, SELECT held
  await selectIssued
  const revoked = await a.inject({ method: 'DELETE', url: `/api/integration-tokens/${id}`, headers: bearer(alice.accessToken) })
  t.equal(revoked.statusCode, 204)
  await new Promise(resolve => setTimeout(resolve, 300)) // the 'tokens' message has reached B (a no-op: nothing cached yet)
  release()
  t.equal((await inFlight).statusCode, 200, 'the request that started before the revocation may pass')
  const after = await b.inject({ url: '/api/workspace/members', headers: bearer(token) })
  t.equal(after.statusCode, 401, 'a request after the revocation must be refused on B')
})
