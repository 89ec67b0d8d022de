import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { sql } from 'kysely'
import pg from 'pg'
import t from 'tap'
import { proveMailbox } from '../../src/auth/mailbox.js'
import { build, embedded } from '../helper.js'
import { admin, askMagicLink, bearer, confirmLink, login, PASSWORD, register, registerVerified, type SignedIn } from '../auth-helper.js'

/*
 * Writes already let in when their caller is ended (issue 14, follow-up). A squatter holding
 * the victim's unverified account, or a user an admin is deactivating, has a write under way:
 * it passed authentication before the proof or the deactivation, and reaches the database
 * while that change holds the account's row. Every write that lets someone into an account or
 * its workspace (member invitations and changes, transfer drafts and accepts, integration
 * tokens, workspace updates, admin changes) checks its caller again in its own transaction
 * (fastify.lockCaller): it waits for the change to commit, then is refused as the auth hook
 * would now refuse it, and stores nothing. A password sign-in under way is refused alike.
 *
 * Each test holds the change's transaction open at the point where it holds the account's
 * row, starts the write, waits until the write is parked on a lock, and lets the change commit.
 */

const skip = embedded ? 'needs a PostgreSQL server: PGlite serves one connection, so nothing runs while the test holds it' : false
const AUTH_REQUIRED = { error: 'Authentication required.', code: 'TOKEN_INVALID' }
const INACTIVE = { error: 'User account is inactive', code: 'USER_INACTIVE' }

// One app for the file (a database clone each costs time): every test has users of its own.
const app = embedded ? undefined as unknown as FastifyInstance : await build(t, { FRONTEND_URL: 'https://app.example.com' })

const sleep = async (ms: number) => await new Promise(resolve => setTimeout(resolve, ms))

/** Resolves once some connection of the app's database waits for a lock, or once `request` has answered. */
async function parked (request: Promise<unknown>): Promise<void> {
  const state = { answered: false }
  request.then(() => { state.answered = true }, () => { state.answered = true })
  const deadline = Date.now() + 5_000
  while (!state.answered && Date.now() < deadline) {
    const { rows } = await sql<{ waiting: number }>`SELECT count(*)::int AS waiting FROM pg_stat_activity
      WHERE datname = current_database() AND wait_event_type = 'Lock'`.execute(app.db)
    if (rows[0]!.waiting > 0) return
    await sleep(5)
  }
}

/**
 * The squatter's write, let in before the owner's proof and reaching the database while the
 * proof holds the account: the account's row is locked as proveMailbox locks it first, the
 * write starts (its session and token are still live everywhere) and parks, then the proof
 * voids everything and commits.
 */
async function duringProof (userId: string, write: () => Promise<LightMyRequestResponse>): Promise<LightMyRequestResponse> {
  let written: Promise<LightMyRequestResponse> | undefined
  await app.db.transaction().execute(async trx => {
    await trx.selectFrom('users').select('id').where('id', '=', userId).forUpdate().execute()
    written = write()
    await parked(written)
    await proveMailbox(trx, app.sessions, new Date(), userId, { method: 'magic_link', origin: { ip: '127.0.0.1' } })
  })
  return await written!
}

/**
 * Holds the first statement of the app's database that `matches` until the returned promise's
 * `release` is called (its transaction stays open meanwhile), as a slow commit would.
 */
function holdStatement (matches: (text: string, values: unknown[]) => boolean): { reached: Promise<void>, release: () => void } {
  const database = new URL(app.config.DATABASE_URL!).pathname.slice(1)
  type Query = (...args: unknown[]) => Promise<unknown>
  const prototype = pg.Client.prototype as unknown as { query: Query }
  const original = prototype.query
  let reach!: () => void
  let release!: () => void
  const reached = new Promise<void>(resolve => { reach = resolve })
  const gate = new Promise<void>(resolve => { release = resolve })
  prototype.query = function (this: { database?: string }, ...args: unknown[]) {
    const [first, second] = args
    const text = typeof first === 'string' ? first : String((first as { text?: unknown } | undefined)?.text)
    const values = (Array.isArray(second) ? second : (first as { values?: unknown[] } | undefined)?.values) ?? []
    if (this.database === database && matches(text, values)) {
      prototype.query = original
      reach()
      return gate.then(async () => await original.apply(this, args))
    }
    return original.apply(this, args)
  }
  return { reached, release: () => { prototype.query = original; release() } }
}

/**
 * The user's write, let in before an admin's deactivation (or other change) commits: the
 * admin's PATCH is held at its audit row — the user's row already updated, the transaction
 * open — while the write starts and parks; then the PATCH commits.
 */
async function duringAdminChange (adminToken: string, userId: string, change: Record<string, unknown>, write: () => Promise<LightMyRequestResponse>): Promise<{ written: LightMyRequestResponse, patched: LightMyRequestResponse }> {
  const held = holdStatement((text, values) => text.startsWith('insert into "audit_log"') && values.includes('admin.user_updated'))
  const patching = app.inject({ method: 'PATCH', url: `/api/admin/users/${userId}`, headers: bearer(adminToken), payload: change })
  await held.reached
  const writing = write()
  await parked(writing)
  held.release()
  return { patched: await patching, written: await writing }
}

interface Squatter { userId: string, accessToken: string, integrationToken: string, workspaceId: number }

/** The squatter registers the victim's address with a password; a session, its workspace and an integration token. */
async function squat (victim: string): Promise<Squatter> {
  const squatter = await register(app, victim, 'squatter was here first 1234')
  if (squatter.status !== 201) throw new Error(`register: ${squatter.status} ${squatter.response.body}`)
  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: bearer(squatter.accessToken), payload: { name: 'squatter sync', scope: 'read_write' } })
  if (minted.statusCode !== 201) throw new Error(`token: ${minted.statusCode} ${minted.body}`)
  return { userId: squatter.user.id, accessToken: squatter.accessToken, integrationToken: minted.json().token, workspaceId: minted.json().integrationToken.workspaceId }
}

const othersIn = async (workspaceId: number, userId: string) => await app.db.selectFrom('workspace_members').select(['invite_email', 'role'])
  .where('workspace_id', '=', workspaceId).where(eb => eb.or([eb('user_id', 'is', null), eb('user_id', '<>', userId)])).execute()
const liveTokens = async (userId: string) => await app.db.selectFrom('integration_tokens').select('name')
  .where('user_id', '=', userId).where('revoked_at', 'is', null).execute()

t.test('a member invitation the squatter sends while the owner proves the mailbox is refused: nobody is invited', { skip }, async t => {
  for (const [credential, role] of [['session', 'manager'], ['integration token', 'owner']] as const) {
    await t.test(`with the squatter's ${credential}`, async t => {
      const squatter = await squat(`invite-${credential.replace(' ', '-')}@example.com`)
      const token = credential === 'session' ? squatter.accessToken : squatter.integrationToken
      const invited = await duringProof(squatter.userId, async () => await app.inject({
        method: 'POST', url: '/api/workspace/members', headers: bearer(token), payload: { email: `accomplice-${role}@evil.example`, role }
      }))
      t.equal(invited.statusCode, 401, invited.body)
      t.same(invited.json(), AUTH_REQUIRED, 'what the auth hook answers that credential now')
      t.same(await othersIn(squatter.workspaceId, squatter.userId), [], 'no invitation in the owner\'s workspace')
      t.equal((await app.db.selectFrom('audit_log').select('id').where('action', '=', 'member.added').where('actor_user_id', '=', squatter.userId).execute()).length, 0, 'nor an audit row')
    })
  }
})

t.test('a transfer draft the squatter makes while the owner proves the mailbox is refused: no open offer', { skip }, async t => {
  const squatter = await squat('draft@example.com')
  await registerVerified(app, 'mule@evil.example')
  const bird = await app.inject({ method: 'POST', url: '/api/birds', headers: bearer(squatter.accessToken), payload: { name: 'Kiwi' } })
  t.equal(bird.statusCode, 201)
  const drafted = await duringProof(squatter.userId, async () => await app.inject({
    method: 'POST', url: '/api/transfers/draft', headers: bearer(squatter.integrationToken), payload: { birdId: bird.json().bird.id, destinationOwnerEmail: 'mule@evil.example' }
  }))
  t.equal(drafted.statusCode, 401, drafted.body)
  t.same(drafted.json(), AUTH_REQUIRED)
  t.same(await app.db.selectFrom('transfers').select('status').where('source_workspace_id', '=', squatter.workspaceId).execute(), [], 'no transfer stored')
})

t.test('a workspace update the squatter makes while the owner proves the mailbox is refused: the billing e-mail stays', { skip }, async t => {
  const squatter = await squat('billing@example.com')
  const before = await app.db.selectFrom('workspaces').select(['name', 'billing_email']).where('id', '=', squatter.workspaceId).executeTakeFirstOrThrow()
  const updated = await duringProof(squatter.userId, async () => await app.inject({
    method: 'PUT', url: '/api/workspace', headers: bearer(squatter.accessToken), payload: { name: 'Pwned', billingEmail: 'bills@evil.example' }
  }))
  t.equal(updated.statusCode, 401, updated.body)
  t.same(updated.json(), AUTH_REQUIRED)
  t.same(await app.db.selectFrom('workspaces').select(['name', 'billing_email']).where('id', '=', squatter.workspaceId).executeTakeFirstOrThrow(), before, 'the workspace as it was')
})

t.test('an integration token or a workspace the squatter creates while the owner proves the mailbox is refused', { skip }, async t => {
  const creations = [
    { what: 'an integration token', url: '/api/integration-tokens', payload: { name: 'late', scope: 'read_write' } },
    { what: 'a workspace', url: '/api/workspaces', payload: { name: 'Side door', billingEmail: 'bills@evil.example' } }
  ]
  for (const { what, url, payload } of creations) {
    const squatter = await squat(`late-${url.split('/').pop()!}@example.com`)
    const created = await duringProof(squatter.userId, async () => await app.inject({ method: 'POST', url, headers: bearer(squatter.accessToken), payload }))
    t.equal(created.statusCode, 401, `${what}: ${created.body}`)
    t.same(created.json(), AUTH_REQUIRED)
    if (what === 'a workspace') t.same(await app.db.selectFrom('workspaces').select('id').where('name', '=', 'Side door').execute(), [], 'no workspace made')
    else t.same(await liveTokens(squatter.userId), [], 'no live token: the one before was revoked by the proof, none made after')
  }
})

t.test('a stream of the squatter\'s writes does not hold the proof off, and none of them survives it', { skip }, async t => {
  const squatter = await squat('stream@example.com')
  const run = { stop: false }
  let sent = 0
  const statuses = new Set<number>()
  const stream = async (): Promise<void> => {
    while (!run.stop) {
      const answer = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: bearer(squatter.accessToken), payload: { email: `stream-${sent++}@evil.example`, role: 'manager' } })
      statuses.add(answer.statusCode)
    }
  }
  const streams = Array.from({ length: 16 }, stream)
  await sleep(200)
  await app.db.transaction().execute(async trx => {
    // Share locks that overlap one another would keep the proof's FOR UPDATE waiting for ever:
    // past this timeout the proof fails, and so does the test.
    await sql`SET LOCAL lock_timeout = '5s'`.execute(trx)
    await proveMailbox(trx, app.sessions, new Date(), squatter.userId, { method: 'magic_link', origin: { ip: '127.0.0.1' } })
  })
  await sleep(100)
  run.stop = true
  await Promise.all(streams)
  t.same([...statuses].sort(), [201, 401], 'invitations before the proof, refusals after it, nothing else')
  t.same(await othersIn(squatter.workspaceId, squatter.userId), [], 'every invitation voided or refused')
})

/**
 * A write of someone the squatter let into the workspace, reaching the database once the
 * proof has done all its work — the members let in before it are gone, not yet committed —
 * and then the proof commits. The write waits for the workspace's row the proof holds.
 */
async function afterProofBeforeCommit (userId: string, write: () => Promise<LightMyRequestResponse>): Promise<LightMyRequestResponse> {
  let written: Promise<LightMyRequestResponse> | undefined
  await app.db.transaction().execute(async trx => {
    await proveMailbox(trx, app.sessions, new Date(), userId, { method: 'magic_link', origin: { ip: '127.0.0.1' } })
    written = write()
    await parked(written)
  })
  return await written!
}

t.test('a member the squatter let in, writing while the owner\'s proof commits, is refused: the proof removed them', { skip }, async t => {
  const NOT_A_MEMBER = { error: 'You do not have permission for that action.', code: 'NOT_A_MEMBER' }
  const squatter = await squat('crew@example.com')
  const accomplice = await registerVerified(app, 'crew-manager@evil.example')
  await registerVerified(app, 'crew-second@evil.example')
  await registerVerified(app, 'crew-mule@evil.example')
  const added = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: bearer(squatter.accessToken), payload: { email: 'crew-manager@evil.example', role: 'manager' } })
  t.equal(added.statusCode, 201, 'the squatter let a manager in')
  const bird = await app.inject({ method: 'POST', url: '/api/birds', headers: bearer(squatter.accessToken), payload: { name: 'Kiwi' } })
  const before = await app.db.selectFrom('workspaces').select(['name', 'billing_email']).where('id', '=', squatter.workspaceId).executeTakeFirstOrThrow()
  const asAccomplice = { ...bearer(accomplice.accessToken), 'x-workspace-id': String(squatter.workspaceId) }
  const writes: Array<[string, () => Promise<LightMyRequestResponse>]> = [
    ['adding a member', async () => await app.inject({ method: 'POST', url: '/api/workspace/members', headers: asAccomplice, payload: { email: 'crew-second@evil.example', role: 'manager' } })],
    ['updating the workspace', async () => await app.inject({ method: 'PUT', url: '/api/workspace', headers: asAccomplice, payload: { name: 'Pwned', billingEmail: 'bills@evil.example' } })],
    ['drafting a transfer', async () => await app.inject({ method: 'POST', url: '/api/transfers/draft', headers: asAccomplice, payload: { birdId: bird.json().bird.id, destinationOwnerEmail: 'crew-mule@evil.example' } })],
    ['making an integration token', async () => await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: asAccomplice, payload: { name: 'crew', scope: 'read_write' } })]
  ]
  // One proof, with all four writes parked behind it.
  const answers: Array<Promise<LightMyRequestResponse>> = []
  await afterProofBeforeCommit(squatter.userId, async () => {
    for (const [, write] of writes) answers.push(write())
    return await answers[0]!
  })
  for (const [index, [name]] of writes.entries()) {
    const answer = await answers[index]!
    t.equal(answer.statusCode, 403, `${name}: ${answer.body}`)
    t.same(answer.json(), NOT_A_MEMBER, `${name}: what the tenancy hook answers them now`)
  }
  t.same(await othersIn(squatter.workspaceId, squatter.userId), [], 'nobody left in the owner\'s workspace')
  t.same(await app.db.selectFrom('workspaces').select(['name', 'billing_email']).where('id', '=', squatter.workspaceId).executeTakeFirstOrThrow(), before, 'the workspace as it was')
  t.same(await app.db.selectFrom('transfers').select('status').where('source_workspace_id', '=', squatter.workspaceId).where('status', '=', 'pending').execute(), [], 'no open offer of the owner\'s bird')
  t.same(await liveTokens(accomplice.user.id), [], 'no token of the accomplice')
})

t.test('the proof and the accept of a bird offered twice take their locks in one order: no deadlock', { skip }, async t => {
  const squatter = await squat('offered@example.com')
  const buyer = await registerVerified(app, 'buyer@evil.example')
  const bird = (await app.inject({ method: 'POST', url: '/api/birds', headers: bearer(squatter.accessToken), payload: { name: 'Polly' } })).json().bird
  const draft = async (to: string) => (await app.inject({ method: 'POST', url: '/api/transfers/draft', headers: bearer(squatter.accessToken), payload: { birdId: bird.id, destinationOwnerEmail: to } })).json().transfer
  await draft('someone-else@example.com')
  const offer = await draft('buyer@evil.example')
  const { link } = await askMagicLink(app, { email: 'offered@example.com' }, null)
  // The accept holds the bird and its offer; the owner's proof comes in meanwhile.
  const held = holdStatement(text => text.startsWith('update "birds" set "workspace_id"'))
  const accepting = app.inject({ method: 'POST', url: `/api/transfers/${offer.id as string}/accept`, headers: bearer(buyer.accessToken) })
  await held.reached
  const proving = confirmLink(app, link)
  await parked(proving)
  held.release()
  const [accepted, proven] = await Promise.all([accepting, proving])
  t.equal(accepted.statusCode, 200, 'the accept, first, completes')
  t.equal(proven.statusCode, 302, `the owner is signed in (no deadlock): ${proven.body}`)
  t.same((await app.db.selectFrom('transfers').select('status').where('bird_id', '=', bird.id).orderBy('status').execute()).map(row => row.status), ['accepted', 'cancelled'])
})

t.test('deactivation: what the user was doing meanwhile is refused and stays undone after reactivation', { skip }, async t => {
  const root = await admin(app)

  await t.test('an integration token being created', async t => {
    const user = await register(app, 'minting@example.com')
    const { patched, written } = await duringAdminChange(root.accessToken, user.user.id, { isActive: false }, async () =>
      await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: bearer(user.accessToken), payload: { name: 'meanwhile', scope: 'read_write' } }))
    t.equal(patched.statusCode, 200)
    t.equal(written.statusCode, 403, written.body)
    t.same(written.json(), INACTIVE)
    t.same(await liveTokens(user.user.id), [], 'no token to come back on reactivation')
    t.equal((await app.inject({ method: 'PATCH', url: `/api/admin/users/${user.user.id}`, headers: bearer(root.accessToken), payload: { isActive: true } })).statusCode, 200)
    t.same(await liveTokens(user.user.id), [], 'none after it either')
  })

  await t.test('a password sign-in', async t => {
    const user = await register(app, 'signing-in@example.com')
    const created: string[] = []
    const createSession = app.store.createSession.bind(app.store)
    app.store.createSession = async (sessionId, state, tokenHash) => {
      created.push(sessionId)
      await createSession(sessionId, state, tokenHash)
    }
    t.teardown(() => { app.store.createSession = createSession })
    let signedIn: SignedIn | undefined
    const { patched } = await duringAdminChange(root.accessToken, user.user.id, { isActive: false }, async () => {
      const signing = login(app, 'signing-in@example.com', PASSWORD)
      signing.then(answer => { signedIn = answer }, () => {})
      return await signing.then(answer => answer.response)
    })
    t.equal(patched.statusCode, 200)
    t.equal(signedIn!.status, 403, signedIn!.response.body)
    t.same(signedIn!.response.json(), INACTIVE, 'the deactivated account\'s answer, not a wrong password\'s')
    t.equal(signedIn!.response.headers['set-cookie'], undefined, 'no cookie')
    t.equal(created.length, 1, 'the sign-in had stored its session while its row was written …')
    t.equal(await app.store.getSession(created[0]!), null, '… and it was undone')
    const rows = await app.db.selectFrom('sessions').select('revoked_at').where('user_id', '=', user.user.id).execute()
    t.equal(rows.length, 1, 'only the registration\'s session row')
    t.not(rows[0]!.revoked_at, null, 'ended by the deactivation')
    t.equal((await app.db.selectFrom('audit_log').select('id').where('action', '=', 'auth.login_refused').where('actor_user_id', '=', user.user.id).execute()).length, 1, 'audited as a refused sign-in')
    t.equal((await app.inject({ method: 'PATCH', url: `/api/admin/users/${user.user.id}`, headers: bearer(root.accessToken), payload: { isActive: true } })).statusCode, 200)
    t.equal((await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: user.refreshToken } })).statusCode, 401, 'nothing refreshes after reactivation')
  })

  await t.test('a magic-link sign-in', async t => {
    const user = await registerVerified(app, 'linked@example.com')
    const { link } = await askMagicLink(app, { email: 'linked@example.com' }, null)
    // The sign-in has read the account and is about to prove the mailbox when the admin
    // deactivates it: the deactivation waits for the sign-in, then ends its session too.
    const held = holdStatement(text => text.startsWith('select "email_verified", "password_hash" from "users"'))
    const signingIn = confirmLink(app, link)
    await held.reached
    const patching = app.inject({ method: 'PATCH', url: `/api/admin/users/${user.user.id}`, headers: bearer(root.accessToken), payload: { isActive: false } })
    await parked(patching)
    held.release()
    const [signedIn, patched] = await Promise.all([signingIn, patching])
    t.equal(patched.statusCode, 200)
    t.ok([302, 403].includes(signedIn.statusCode), `signed in before the deactivation, or refused after it: ${signedIn.statusCode}`)
    t.same(await app.db.selectFrom('sessions').select('id').where('user_id', '=', user.user.id).where('revoked_at', 'is', null).execute(), [], 'no live session')
    t.equal((await app.inject({ method: 'PATCH', url: `/api/admin/users/${user.user.id}`, headers: bearer(root.accessToken), payload: { isActive: true } })).statusCode, 200)
    t.same(await app.db.selectFrom('sessions').select('id').where('user_id', '=', user.user.id).where('revoked_at', 'is', null).execute(), [], 'none after reactivation either')
  })

  await t.test('a transfer being accepted', async t => {
    const giver = await registerVerified(app, 'giver@example.com')
    const taker = await registerVerified(app, 'taker@example.com')
    const bird = (await app.inject({ method: 'POST', url: '/api/birds', headers: bearer(giver.accessToken), payload: { name: 'Kiwi' } })).json().bird
    const offer = await app.inject({ method: 'POST', url: '/api/transfers/draft', headers: bearer(giver.accessToken), payload: { birdId: bird.id, destinationOwnerEmail: 'taker@example.com' } })
    t.equal(offer.statusCode, 201)
    const { written } = await duringAdminChange(root.accessToken, taker.user.id, { isActive: false }, async () =>
      await app.inject({ method: 'POST', url: `/api/transfers/${offer.json().transfer.id}/accept`, headers: bearer(taker.accessToken) }))
    t.equal(written.statusCode, 403, written.body)
    t.same(written.json(), INACTIVE)
    t.equal((await app.db.selectFrom('birds').select('workspace_id').where('id', '=', bird.id).executeTakeFirstOrThrow()).workspace_id, bird.workspaceId, 'the bird stayed')
    t.equal((await app.db.selectFrom('transfers').select('status').where('id', '=', offer.json().transfer.id).executeTakeFirstOrThrow()).status, 'pending')
  })

  await t.test('an admin demoted while their own change waited for the admins\' lock', async t => {
    const second = await register(app, 'second-admin@example.com')
    t.equal((await app.inject({ method: 'PATCH', url: `/api/admin/users/${second.user.id}`, headers: bearer(root.accessToken), payload: { role: 'ADMIN' } })).statusCode, 200)
    const friend = await register(app, 'friend@example.com')
    const { patched, written } = await duringAdminChange(root.accessToken, second.user.id, { role: 'MEMBER' }, async () =>
      await app.inject({ method: 'PATCH', url: `/api/admin/users/${friend.user.id}`, headers: bearer(second.accessToken), payload: { role: 'ADMIN' } }))
    t.equal(patched.statusCode, 200)
    t.equal(written.statusCode, 403, written.body)
    t.same(written.json(), { error: 'Admin access required', code: 'ADMIN_REQUIRED' })
    t.equal((await app.db.selectFrom('users').select('role').where('id', '=', friend.user.id).executeTakeFirstOrThrow()).role, 'MEMBER', 'the friend was not promoted')
  })
})
