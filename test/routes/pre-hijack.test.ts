import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { proveMailbox } from '../../src/auth/mailbox.js'
import { build, embedded, twoInstancesSkip, type Env, type TestContext } from '../helper.js'
import { askMagicLink, bearer, confirmLink, cookie, login, openLink, register, registerVerified, type AskedLink } from '../auth-helper.js'
import { spaAuthorization, startOidcProvider, type OidcProviderStandIn } from '../oidc-stand-in.js'

/*
 * Pre-hijacked accounts (issue 14 item 1, SPEC decision 11). A squatter registers the
 * victim's address with a password and holds a session, an integration token and perhaps a
 * provider identity; then the owner proves the mailbox — by magic link (direct and page
 * mode), invitation link, a provider sign-in with a verified e-mail, or seed 002's code
 * exchange. The first proof voids everything the squatter made, in the proof's transaction.
 */

const VICTIM = 'victim@example.com'
const SQUATTER_PASSWORD = 'squatter was here first 1234'
const PUBLIC = 'http://localhost:3000' // PUBLIC_URL's default in tests: one of the server's own origins
const FRONTEND = 'https://app.example.com'
const SPA_CALLBACK = `${FRONTEND}/callback`
const ACCOUNTS = {
  owner: { email: VICTIM, email_verified: true, name: 'The Owner' },
  squatter: { email: VICTIM, email_verified: false, name: 'Not the Owner' }
}

interface Held { userId: string, accessToken: string, refreshToken: string, integrationToken: string }

async function mintToken (app: FastifyInstance, accessToken: string): Promise<string> {
  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: bearer(accessToken), payload: { name: 'squatter sync', scope: 'read_write' } })
  if (minted.statusCode !== 201) throw new Error(`token creation failed: ${minted.statusCode} ${minted.body}`)
  return minted.json().token
}

/** The squatter registers the victim's address with a password: a session and an integration token. */
async function squatWithPassword (app: FastifyInstance): Promise<Held> {
  const squatter = await register(app, VICTIM, SQUATTER_PASSWORD)
  if (squatter.status !== 201) throw new Error(`register failed: ${squatter.status} ${squatter.response.body}`)
  return { userId: squatter.user.id, accessToken: squatter.accessToken, refreshToken: squatter.refreshToken, integrationToken: await mintToken(app, squatter.accessToken) }
}

/** The cookies a response set, as a Cookie header (every oauth_binding cookie, whatever its name). */
function cookiesOf (response: LightMyRequestResponse): string {
  const headers = response.headers['set-cookie']
  const list = headers === undefined ? [] : Array.isArray(headers) ? headers : [headers]
  return list.map(header => header.split(';')[0]!).join('; ')
}

/** A session cookie turned into tokens, as the SPA does after a redirect (SPEC decision 5). */
async function refreshedFrom (app: FastifyInstance, response: LightMyRequestResponse): Promise<{ accessToken: string, refreshToken: string }> {
  const refresh = cookie(response, 'refresh_token')?.value as string | undefined
  if (refresh === undefined || refresh === '') throw new Error(`no session cookie: ${response.statusCode} ${response.body}`)
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin: PUBLIC, cookie: `refresh_token=${refresh}` } })
  if (refreshed.statusCode !== 200) throw new Error(`refresh failed: ${refreshed.statusCode} ${refreshed.body}`)
  return { accessToken: refreshed.json().accessToken, refreshToken: cookie(refreshed, 'refresh_token')!.value as string }
}

/**
 * A magic link for the victim's address (outside production without SMTP: the preview), asked
 * for by the owner's browser: opened there with its binding cookie (`open`), it signs in at once.
 */
async function magicLink (app: FastifyInstance): Promise<AskedLink & { open: () => Promise<LightMyRequestResponse> }> {
  const asked = await askMagicLink(app, { email: VICTIM }, PUBLIC)
  return { ...asked, open: async () => await openLink(app, asked.link, asked.binding) }
}

/** A provider sign-in through the redirect flow (`start` then the callback, with the binding cookie). */
async function providerSignIn (app: FastifyInstance, provider: OidcProviderStandIn, account: string, start: { method: 'GET' | 'POST', url: string }): Promise<LightMyRequestResponse> {
  const started = await app.inject(start)
  if (started.statusCode !== 302) throw new Error(`start answered ${started.statusCode} ${started.body}`)
  const back = new URL(await provider.authorize(started.headers.location as string, account))
  return await app.inject({ url: back.pathname + back.search, headers: { cookie: cookiesOf(started) } })
}

function providers (entries: Array<{ key: string, issuer: string }>): string {
  return JSON.stringify(entries.map(({ key, issuer }) => ({ key, displayName: key, issuer, clientId: 'gatehouse', clientSecret: 'stand-in-secret' })))
}

const redirectUris = (key: string): string[] => [`${PUBLIC}/api/auth/oauth/${key}/callback`, `${PUBLIC}/auth/callback/${key}`, SPA_CALLBACK]

/** Gatehouse with two providers: `authentik` (the owner's, which verifies e-mail) and `shady` (which does not). */
async function withProviders (t: TestContext): Promise<{ app: FastifyInstance, env: Env, authentik: OidcProviderStandIn, shady: OidcProviderStandIn }> {
  const authentik = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: redirectUris('authentik') }], accounts: ACCOUNTS })
  const shady = await startOidcProvider(t, { clients: [{ client_id: 'gatehouse', client_secret: 'stand-in-secret', redirect_uris: redirectUris('shady') }], accounts: ACCOUNTS })
  const env = { OIDC_PROVIDERS: providers([{ key: 'authentik', issuer: authentik.issuer }, { key: 'shady', issuer: shady.issuer }]), FRONTEND_URL: FRONTEND }
  return { app: await build(t, env), env, authentik, shady }
}

/** A second instance on the same database and Redis namespace, or undefined on the embedded default. */
async function sibling (t: TestContext, app: FastifyInstance, env: Env = {}): Promise<FastifyInstance | undefined> {
  if (twoInstancesSkip !== false) return undefined
  return await build(t, { ...env, DATABASE_URL: app.config.DATABASE_URL, REDIS_PREFIX: app.config.REDIS_PREFIX })
}

const me = async (app: FastifyInstance, token: string) => await app.inject({ url: '/api/auth/me', headers: bearer(token) })
/** A request integration tokens may make. */
const members = async (app: FastifyInstance, token: string) => await app.inject({ url: '/api/workspace/members', headers: bearer(token) })

/** The other instance accepts the squatter's credentials before the proof (so that it has them cached). */
async function warm (t: Test, other: FastifyInstance | undefined, held: Held): Promise<void> {
  if (other === undefined) return
  t.equal((await me(other, held.accessToken)).statusCode, 200, 'the other instance: the squatter\'s access token works before the proof')
  t.equal((await members(other, held.integrationToken)).statusCode, 200, 'the other instance: the squatter\'s integration token works before the proof')
}

/** A status on another instance, asked again for up to a second while it is still 200 (pub/sub is asynchronous). */
async function settled (status: () => Promise<number>): Promise<number> {
  const started = Date.now()
  let answer = await status()
  while (answer === 200 && Date.now() - started < 1_000) {
    await new Promise(resolve => setTimeout(resolve, 20))
    answer = await status()
  }
  return answer
}

interface Voided { passwordRemoved: boolean, sessions: number, tokens: number, identities: number, method: 'magic_link' | 'oauth', provider?: string }

/**
 * Everything the squatter held is refused, on this instance and the other (null: a test without
 * one); the rows and the audit say so.
 */
async function checkVoided (t: Test, app: FastifyInstance, other: FastifyInstance | undefined | null, held: Held, owner: { accessToken: string }, voided: Voided): Promise<void> {
  const refused = await me(app, held.accessToken)
  t.equal(refused.statusCode, 401, 'the squatter\'s access token is refused at once')
  t.equal(refused.json().code, 'TOKEN_INVALID')
  const refresh = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: held.refreshToken } })
  t.equal(refresh.statusCode, 401, 'the squatter\'s refresh token is refused')
  t.equal(refresh.json().code, 'INVALID_REFRESH_TOKEN')
  const token = await members(app, held.integrationToken)
  t.equal(token.statusCode, 401, 'the squatter\'s integration token is refused')

  if (voided.passwordRemoved) {
    const withOldPassword = await login(app, VICTIM, SQUATTER_PASSWORD)
    const wrongPassword = await login(app, VICTIM, 'some other wrong password 987')
    const unknownAddress = await login(app, 'nobody@example.com', SQUATTER_PASSWORD)
    t.equal(withOldPassword.status, 401, 'the squatter\'s password no longer signs in')
    t.same(withOldPassword.response.json(), { error: 'Invalid email or password', code: 'INVALID_CREDENTIALS' })
    t.same([wrongPassword.status, wrongPassword.response.json()], [withOldPassword.status, withOldPassword.response.json()], 'answered exactly as a wrong password')
    t.same([unknownAddress.status, unknownAddress.response.json()], [withOldPassword.status, withOldPassword.response.json()], 'and as an unknown address')
    t.equal(withOldPassword.response.headers['set-cookie'], undefined, 'no cookie')
  }

  const account = await app.db.selectFrom('users').select(['id', 'email_verified', 'password_hash']).where('email', '=', VICTIM).executeTakeFirstOrThrow()
  t.same(account, { id: held.userId, email_verified: true, password_hash: null }, 'the same account, proven, without a password')
  const sessions = await app.db.selectFrom('sessions').select(['revoked_at', 'revoked_reason']).where('user_id', '=', held.userId).where('revoked_reason', '=', 'mailbox_proven').execute()
  t.equal(sessions.length, voided.sessions, 'the sessions before the proof are marked revoked')
  const tokens = await app.db.selectFrom('integration_tokens').select('revoked_at').where('user_id', '=', held.userId).execute()
  t.ok(tokens.length === voided.tokens && tokens.every(row => row.revoked_at !== null), 'the integration tokens are revoked in the database')
  const audited = await app.db.selectFrom('audit_log').select(['actor_user_id', 'subject_id', 'details']).where('action', '=', 'account.mailbox_proven').execute()
  t.same(audited, [{
    actor_user_id: held.userId,
    subject_id: held.userId,
    details: {
      method: voided.method,
      ...(voided.provider === undefined ? {} : { provider: voided.provider }),
      passwordRemoved: voided.passwordRemoved,
      sessions: voided.sessions,
      tokens: voided.tokens,
      identities: voided.identities,
      workspaceMembersRemoved: 0,
      memberTokens: 0,
      transfersCancelled: 0
    }
  }], 'one account.mailbox_proven row with what was voided')

  const owners = await me(app, owner.accessToken)
  t.equal(owners.statusCode, 200, 'the owner\'s new session works')
  t.match(owners.json(), { id: held.userId, email: VICTIM, emailVerified: true })

  if (other === null) return
  await t.test('on a second instance too', { skip: twoInstancesSkip }, async t => {
    t.equal(await settled(async () => (await me(other!, held.accessToken)).statusCode), 401, 'the other instance refuses the squatter\'s access token (pub/sub, within a second)')
    t.equal(await settled(async () => (await members(other!, held.integrationToken)).statusCode), 401, 'and the integration token')
    t.equal((await me(other!, owner.accessToken)).statusCode, 200, 'and accepts the owner\'s')
  })
}

t.test('magic link (direct): the squatter\'s password, sessions and token are voided', async t => {
  const app = await build(t)
  const other = await sibling(t, app)
  const held = await squatWithPassword(app)
  const second = await login(app, VICTIM, SQUATTER_PASSWORD)
  t.equal(second.status, 200, 'before the proof the squatter\'s password signs in')
  await warm(t, other, held)

  const proof = await magicLink(app)
  const opened = await proof.open()
  t.equal(opened.statusCode, 302)
  const owner = await refreshedFrom(app, opened)
  await checkVoided(t, app, other, held, owner, { method: 'magic_link', passwordRemoved: true, sessions: 2, tokens: 1, identities: 0 })
  t.equal((await me(app, second.accessToken)).statusCode, 401, 'every session of the squatter, not only the first')

  // A second proof finds the address proven: nothing more is voided.
  const again = await (await magicLink(app)).open()
  t.equal(again.statusCode, 302)
  t.equal((await me(app, owner.accessToken)).statusCode, 200, 'the owner\'s first session survives a later proof')
  t.equal((await app.db.selectFrom('audit_log').select('id').where('action', '=', 'account.mailbox_proven').execute()).length, 1, 'audited once')
})

t.test('magic link (MAGIC_LINK_CONFIRM=page): the confirmation voids what the squatter made', async t => {
  const app = await build(t, { MAGIC_LINK_CONFIRM: 'page' })
  const other = await sibling(t, app)
  const held = await squatWithPassword(app)
  await warm(t, other, held)
  const { link, binding } = await magicLink(app)
  const page = await openLink(app, link, binding)
  t.equal(page.statusCode, 200, 'the page, even in the browser that asked for the link')
  t.equal((await me(app, held.accessToken)).statusCode, 200, 'showing the page proves nothing')
  const confirmed = await app.inject({
    method: 'POST',
    url: '/api/auth/magic-link/verify',
    headers: { origin: PUBLIC, 'content-type': 'application/x-www-form-urlencoded' },
    payload: `token=${link.searchParams.get('token')!}`
  })
  t.equal(confirmed.statusCode, 302)
  await checkVoided(t, app, other, held, await refreshedFrom(app, confirmed), { method: 'magic_link', passwordRemoved: true, sessions: 1, tokens: 1, identities: 0 })
})

t.test('invitation link: the owner joins; the squatter keeps nothing and gains no workspace', async t => {
  const app = await build(t, { FRONTEND_URL: FRONTEND })
  const other = await sibling(t, app)
  const alice = await registerVerified(app, 'alice@example.com')
  const held = await squatWithPassword(app)
  await warm(t, other, held)
  const invited = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: bearer(alice.accessToken), payload: { email: VICTIM, role: 'staff' } })
  t.equal(invited.statusCode, 201)
  t.equal(invited.json().member.userId, null, 'an unproven address is invited, not added')
  const link = new URL(invited.json().invitePreviewUrl)

  const page = await openLink(app, link)
  t.equal(page.statusCode, 200, 'the invitee\'s browser never asked for the link: the confirmation page')
  t.equal((await me(app, held.accessToken)).statusCode, 200, 'showing the page proves nothing')
  const opened = await confirmLink(app, link)
  t.equal(opened.statusCode, 302)
  const owner = await refreshedFrom(app, opened)
  await checkVoided(t, app, other, held, owner, { method: 'magic_link', passwordRemoved: true, sessions: 1, tokens: 1, identities: 0 })
  const workspaces = await app.inject({ url: '/api/workspaces', headers: bearer(owner.accessToken) })
  t.ok(workspaces.json().workspaces.some((entry: { name: string, role: string }) => entry.role === 'staff'), 'the owner joined the invited workspace')
  const member = await app.db.selectFrom('workspace_members').select('user_id').where('invite_email', '=', VICTIM).where('role', '=', 'staff').executeTakeFirstOrThrow()
  t.equal(member.user_id, held.userId)
  t.equal((await app.inject({ url: '/api/workspaces', headers: bearer(held.accessToken) })).statusCode, 401, 'the squatter cannot see it')
})

t.test('provider sign-in with a verified e-mail (query callback and seed 000\'s route): password, sessions, token and earlier identities voided', async t => {
  for (const start of [{ method: 'GET' as const, url: '/api/auth/oauth/authentik/start' }, { method: 'POST' as const, url: '/auth/signin/authentik' }]) {
    await t.test(`${start.method} ${start.url}`, async t => {
      const { app, env, authentik } = await withProviders(t)
      const other = await sibling(t, app, env)
      const held = await squatWithPassword(app)
      await warm(t, other, held)
      const answered = await providerSignIn(app, authentik, 'owner', start)
      t.equal(answered.statusCode, 302, 'signed in through the provider')
      await checkVoided(t, app, other, held, await refreshedFrom(app, answered), { method: 'oauth', provider: 'authentik', passwordRemoved: true, sessions: 1, tokens: 1, identities: 0 })
      const identities = await app.db.selectFrom('user_identities').select(['provider', 'subject', 'user_id']).execute()
      t.same(identities, [{ provider: 'authentik', subject: 'owner', user_id: held.userId }], 'the proving identity is linked')
    })
  }

  await t.test('a squatter who came in through a provider that does not verify e-mail loses that identity', async t => {
    const { app, env, authentik, shady } = await withProviders(t)
    const other = await sibling(t, app, env)
    const squatted = await providerSignIn(app, shady, 'squatter', { method: 'GET', url: '/api/auth/oauth/shady/start' })
    t.equal(squatted.statusCode, 302, 'an unverified address makes a new, unproven account')
    const tokens = await refreshedFrom(app, squatted)
    const userId = (await me(app, tokens.accessToken)).json().id
    const held: Held = { userId, ...tokens, integrationToken: await mintToken(app, tokens.accessToken) }
    await warm(t, other, held)

    const answered = await providerSignIn(app, authentik, 'owner', { method: 'GET', url: '/api/auth/oauth/authentik/start' })
    t.equal(answered.statusCode, 302, 'signed in through the provider')
    await checkVoided(t, app, other, held, await refreshedFrom(app, answered), { method: 'oauth', provider: 'authentik', passwordRemoved: false, sessions: 1, tokens: 1, identities: 1 })
    t.same(await app.db.selectFrom('user_identities').select(['provider', 'subject']).execute(), [{ provider: 'authentik', subject: 'owner' }], 'the identity linked before the proof is unlinked')
    const again = await providerSignIn(app, shady, 'squatter', { method: 'GET', url: '/api/auth/oauth/shady/start' })
    t.equal(again.statusCode, 409, 'its next sign-in does not land in the account')
    t.equal(again.json().code, 'ACCOUNT_EXISTS')
    t.equal(cookie(again, 'refresh_token'), undefined)
  })
})

t.test('seed 002\'s code exchange with a verified e-mail voids what the squatter made', async t => {
  const { app, env, authentik } = await withProviders(t)
  const other = await sibling(t, app, env)
  const held = await squatWithPassword(app)
  await warm(t, other, held)
  // What the SPA does by itself with the provider.
  const exchange = await spaAuthorization(authentik, 'gatehouse', 'stand-in-secret', SPA_CALLBACK, 'owner')
  const exchanged = await app.inject({ method: 'POST', url: '/api/auth/callback', payload: exchange })
  t.equal(exchanged.statusCode, 200, 'the code is exchanged')
  await checkVoided(t, app, other, held, { accessToken: exchanged.json().data.accessToken }, { method: 'oauth', provider: 'authentik', passwordRemoved: true, sessions: 1, tokens: 1, identities: 0 })
})

t.test('the squatter\'s accomplices lose the workspace the owner lands in: members, invitations, their tokens and open transfers from before the proof', async t => {
  const app = await build(t, { FRONTEND_URL: FRONTEND })
  const held = await squatWithPassword(app)
  const squat = bearer(held.accessToken)
  const workspaceId = (await app.inject({ url: '/api/workspace', headers: squat })).json().workspace.id as number
  // A second account of the squatter's, with a verified address, joins at once as a co-owner.
  const accomplice = await registerVerified(app, 'accomplice@evil.example.com')
  t.equal((await app.inject({ method: 'POST', url: '/api/workspace/members', headers: squat, payload: { email: 'accomplice@evil.example.com', role: 'owner' } })).statusCode, 201)
  t.equal((await app.inject({ method: 'POST', url: '/api/workspace/members', headers: squat, payload: { email: 'later@evil.example.com', role: 'viewer' } })).statusCode, 201, 'an invitation by link')
  const inside = { ...bearer(accomplice.accessToken), 'x-workspace-id': String(workspaceId) }
  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: bearer((await app.inject({ method: 'POST', url: '/api/auth/switch-workspace', headers: bearer(accomplice.accessToken), payload: { workspaceId } })).json().accessToken), payload: { name: 'exfil', scope: 'read_only' } })
  t.equal(minted.statusCode, 201, 'the accomplice holds a token for the workspace')
  const bird = await app.inject({ method: 'POST', url: '/api/birds', headers: squat, payload: { name: 'Decoy' } })
  const offered = await app.inject({ method: 'POST', url: '/api/transfers/draft', headers: squat, payload: { birdId: bird.json().bird.id, destinationOwnerEmail: 'accomplice@evil.example.com' } })
  t.equal(offered.statusCode, 201, 'an open transfer out of the workspace')
  t.equal((await app.inject({ url: '/api/birds', headers: inside })).statusCode, 200, 'before the proof the accomplice reads the workspace')

  const proof = await magicLink(app)
  const owner = await refreshedFrom(app, await proof.open())
  const birds = await app.inject({ method: 'POST', url: '/api/birds', headers: bearer(owner.accessToken), payload: { name: 'The owner\'s own' } })
  t.equal(birds.statusCode, 201, 'the owner uses the workspace')

  t.equal((await app.inject({ url: '/api/birds', headers: inside })).statusCode, 403, 'the accomplice is no longer a member')
  t.equal((await app.inject({ url: '/api/workspace/members', headers: bearer(minted.json().token) })).statusCode, 401, 'and their token for it is revoked')
  const listed = (await app.inject({ url: '/api/workspace/members', headers: bearer(owner.accessToken) })).json()
  t.same(listed.members.map((member: { inviteEmail: string }) => member.inviteEmail), [VICTIM], 'the owner is alone in it: no member, no invitation from before')
  const transfers = await app.inject({ url: '/api/transfers', headers: bearer(accomplice.accessToken) })
  t.same(transfers.json().incoming, [], 'the transfer offered before the proof is cancelled')
  t.match((await app.db.selectFrom('audit_log').select('details').where('action', '=', 'account.mailbox_proven').executeTakeFirstOrThrow()).details,
    { workspaceMembersRemoved: 1, memberTokens: 1, transfersCancelled: 1 })
})

t.test('control: an address already proven keeps its password, sessions and token when its owner signs in by link', async t => {
  const app = await build(t)
  const owner = await registerVerified(app, VICTIM, SQUATTER_PASSWORD)
  const token = await mintToken(app, owner.accessToken)
  const opened = await (await magicLink(app)).open()
  t.equal(opened.statusCode, 302)
  await refreshedFrom(app, opened)
  t.equal((await me(app, owner.accessToken)).statusCode, 200, 'the other session lives on')
  t.equal((await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: owner.refreshToken } })).statusCode, 200)
  t.equal((await members(app, token)).statusCode, 200, 'the integration token works')
  t.equal((await login(app, VICTIM, SQUATTER_PASSWORD)).status, 200, 'the password signs in')

  // Nor is anything voided when the proof creates the account.
  const fresh = await askMagicLink(app, { email: 'new@example.com' }, PUBLIC)
  t.equal((await openLink(app, fresh.link, fresh.binding)).statusCode, 302)
  t.equal((await app.db.selectFrom('audit_log').select('id').where('action', '=', 'account.mailbox_proven').execute()).length, 0, 'no proof to audit')
})

t.test('a store failure during the proof rolls it back: the account is as it was, and nobody is signed in', async t => {
  const app = await build(t)
  const held = await squatWithPassword(app)
  const proof = await magicLink(app)
  const store = app.store as unknown as { addRevocation: (...args: unknown[]) => Promise<void> }
  const original = store.addRevocation
  store.addRevocation = async () => { throw new Error('the store is down') }
  let failed: LightMyRequestResponse
  try {
    failed = await proof.open()
  } finally {
    store.addRevocation = original
  }
  t.equal(failed.statusCode, 500)
  t.equal(cookie(failed, 'refresh_token'), undefined, 'no session for the prover')
  const account = await app.db.selectFrom('users').select(['email_verified', 'password_hash']).where('id', '=', held.userId).executeTakeFirstOrThrow()
  t.equal(account.email_verified, false, 'still unproven')
  t.not(account.password_hash, null, 'the password is still there')
  t.same(await app.db.selectFrom('integration_tokens').select('revoked_at').execute(), [{ revoked_at: null }], 'the token is not revoked in the database')
  t.same(await app.db.selectFrom('sessions').select('revoked_reason').where('user_id', '=', held.userId).execute(), [{ revoked_reason: null }])
  t.equal((await app.db.selectFrom('audit_log').select('id').where('action', '=', 'account.mailbox_proven').execute()).length, 0, 'nothing audited')

  // With the store back, a new link proves the mailbox and voids everything.
  const opened = await (await magicLink(app)).open()
  t.equal(opened.statusCode, 302)
  await checkVoided(t, app, null, held, await refreshedFrom(app, opened), { method: 'magic_link', passwordRemoved: true, sessions: 1, tokens: 1, identities: 0 })
})

t.test('a password sign-in that verified the old password while a proof was under way gets no session', { skip: embedded ? 'needs a PostgreSQL server: PGlite serves one connection, so nothing runs while the proof holds it' : false }, async t => {
  const app = await build(t)
  const held = await squatWithPassword(app)
  let signingIn: Promise<Awaited<ReturnType<typeof login>>> | undefined
  await app.db.transaction().execute(async trx => {
    await proveMailbox(trx, app.sessions, new Date(), held.userId, { method: 'magic_link', origin: { ip: '127.0.0.1' } })
    // The sign-in reads the committed password (the proof has not committed), verifies it,
    // then waits for the account's row, which the proof holds until it commits.
    signingIn = login(app, VICTIM, SQUATTER_PASSWORD)
    await new Promise(resolve => setTimeout(resolve, 1_000))
  })
  const raced = await signingIn!
  t.equal(raced.status, 401, 'refused once the proof has committed')
  t.same(raced.response.json(), { error: 'Invalid email or password', code: 'INVALID_CREDENTIALS' })
  t.equal(raced.response.headers['set-cookie'], undefined, 'no cookie')
  const sessions = await app.db.selectFrom('sessions').select(['revoked_reason']).where('user_id', '=', held.userId).execute()
  t.same(sessions, [{ revoked_reason: 'mailbox_proven' }], 'no session row was written for it')
  t.equal((await app.db.selectFrom('audit_log').select('id').where('action', '=', 'auth.login').execute()).length, 0, 'nor an auth.login row')
  t.equal((await app.db.selectFrom('audit_log').select('id').where('action', '=', 'auth.login_failed').execute()).length, 0, 'the password did verify: this was the race, not a wrong password')
})
