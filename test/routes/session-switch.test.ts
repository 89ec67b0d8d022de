import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { build } from '../helper.js'
import { askMagicLink, bearer, confirmLink, cookie, login, openLink, PASSWORD, registerVerified, type SignedIn } from '../auth-helper.js'

/*
 * The session context and the workspace switch (issue 5; seed 003 GET /api/auth/session and
 * POST /api/auth/switch-workspace; seed 000's POST /api/session/set-active-tenant, SPEC
 * decision 6): a switch changes what the session's next refresh carries and answers a new
 * access token, while X-Workspace-Id lets tabs act in different workspaces at once.
 */

const FRONTEND = 'https://app.example.com'
const FORBIDDEN = 'You do not have permission for that action.'
const BROWSER_ONLY = 'This endpoint requires a browser session instead of an integration token.'
const SESSION_KEYS = ['activeMembership', 'activeWorkspace', 'providers', 'user', 'workspaces']

type Headers = Record<string, string>

const as = (token: SignedIn | string, workspaceId?: number | string): Headers => ({
  ...bearer(typeof token === 'string' ? token : token.accessToken),
  ...(workspaceId === undefined ? {} : { 'x-workspace-id': String(workspaceId) })
})

/** Every key of a JSON value, at any depth. */
function keysOf (value: unknown, into: Set<string> = new Set()): Set<string> {
  if (Array.isArray(value)) for (const item of value) keysOf(item, into)
  else if (value !== null && typeof value === 'object') {
    for (const [key, inner] of Object.entries(value)) {
      into.add(key)
      keysOf(inner, into)
    }
  }
  return into
}

async function session (app: FastifyInstance, headers: Headers): Promise<LightMyRequestResponse> {
  return await app.inject({ url: '/api/auth/session', headers })
}

async function switchTo (app: FastifyInstance, headers: Headers, payload: unknown): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/api/auth/switch-workspace', headers, payload: payload as Record<string, unknown> })
}

async function activeWorkspace (app: FastifyInstance, headers: Headers): Promise<number | undefined> {
  const answer = await app.inject({ url: '/api/workspace', headers })
  return answer.statusCode === 200 ? answer.json().workspace.id : undefined
}

async function refresh (app: FastifyInstance, refreshToken: string): Promise<{ accessToken: string, refreshToken: string }> {
  const answer = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken } })
  if (answer.statusCode !== 200) throw new Error(`refresh: ${answer.statusCode} ${answer.body}`)
  return answer.json()
}

async function newWorkspace (app: FastifyInstance, user: SignedIn, name: string): Promise<number> {
  const answer = await app.inject({ method: 'POST', url: '/api/workspaces', headers: as(user), payload: { name } })
  if (answer.statusCode !== 201) throw new Error(`create: ${answer.statusCode} ${answer.body}`)
  return answer.json().workspace.id
}

async function workspacesOf (app: FastifyInstance, userId: string) {
  return await app.db.selectFrom('workspace_members as m').innerJoin('workspaces as w', 'w.id', 'm.workspace_id')
    .select(['w.id', 'w.name', 'm.role', 'w.created_by']).where('m.user_id', '=', userId).orderBy('w.id').execute()
}

// One app for the whole file (building one costs a database clone): every test has users of its own.
const app = await build(t, { FRONTEND_URL: FRONTEND })

t.test('GET /api/auth/session: the context, no raw token, browser sessions only', async t => {
  const alice = await registerVerified(app, 'alice@context.example.com')
  const home = await activeWorkspace(app, as(alice))
  const second = await newWorkspace(app, alice, 'Second Flock')

  const answer = await session(app, as(alice))
  t.equal(answer.statusCode, 200)
  const body = answer.json()
  t.same(Object.keys(body), ['session'])
  t.same(Object.keys(body.session).sort(), SESSION_KEYS)
  t.notOk(keysOf(body).has('token'), 'no token key anywhere')
  t.notOk(keysOf(body).has('accessToken'))
  t.notOk(keysOf(body).has('refreshToken'))
  t.notMatch(answer.body, alice.accessToken.split('.')[2]!, 'the access token is not echoed')
  const { user, activeWorkspace: active, activeMembership, workspaces, providers } = body.session
  t.match(user, { id: alice.user.id, email: 'alice@context.example.com', name: 'alice', role: 'MEMBER', isActive: true })
  t.notOk('passwordHash' in user || 'password_hash' in user)
  t.match(active, { id: home, name: "alice's workspace", workspaceType: 'standard', billingPlan: 'household_basic', billingEmail: null })
  t.match(activeMembership, { workspaceId: home, userId: alice.user.id, inviteEmail: 'alice@context.example.com', role: 'owner' })
  t.same(Object.keys(activeMembership).sort(), ['acceptedAt', 'createdAt', 'id', 'inviteEmail', 'name', 'role', 'userId', 'workspaceId'])
  t.same(workspaces.map((entry: { id: number, role: string }) => [entry.id, entry.role]), [[home, 'owner'], [second, 'owner']])
  t.equal(workspaces[0].membershipId, activeMembership.id)
  t.same(providers, [], 'no OAuth provider is configured')

  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: as(alice), payload: { name: 'n8n', scope: 'read_write' } })
  t.equal(minted.statusCode, 201)
  const byToken = await session(app, bearer(minted.json().token))
  t.equal(byToken.statusCode, 403, 'an integration token is refused')
  t.same(byToken.json(), { error: BROWSER_ONLY, code: 'BROWSER_SESSION_REQUIRED' })
  const switchByToken = await switchTo(app, bearer(minted.json().token), { workspaceId: second })
  t.equal(switchByToken.statusCode, 403)
  t.same(switchByToken.json(), { error: BROWSER_ONLY, code: 'BROWSER_SESSION_REQUIRED' })
  const tenantByToken = await app.inject({ method: 'POST', url: '/api/session/set-active-tenant', headers: bearer(minted.json().token), payload: { tenantId: second } })
  t.equal(tenantByToken.statusCode, 403)
  t.equal(tenantByToken.json().error, BROWSER_ONLY)
  t.equal(cookie(tenantByToken, 'activeTenantId'), undefined)

  const anonymous = await session(app, {})
  t.equal(anonymous.statusCode, 401)
  t.same(anonymous.json(), { error: 'Authentication required.', code: 'TOKEN_REQUIRED' })
  const forged = await session(app, bearer(`${alice.accessToken.slice(0, -4)}AAAA`))
  t.equal(forged.statusCode, 401)
  t.same(forged.json(), { error: 'Authentication required.', code: 'TOKEN_INVALID' })
  const anonymousSwitch = await switchTo(app, {}, { workspaceId: second })
  t.equal(anonymousSwitch.statusCode, 401)
  t.equal(anonymousSwitch.json().error, 'Authentication required.')
})

t.test('POST /api/auth/switch-workspace: a new token for the new workspace, old tokens keep theirs, refresh carries it', async t => {
  const alice = await registerVerified(app, 'alice@switch.example.com')
  const bob = await registerVerified(app, 'bob@switch.example.com')
  const home = (await activeWorkspace(app, as(alice)))!
  const flock = await newWorkspace(app, alice, 'Flock')
  const bobsHome = (await activeWorkspace(app, as(bob)))!

  const switched = await switchTo(app, as(alice), { workspaceId: flock })
  t.equal(switched.statusCode, 200)
  const body = switched.json()
  t.same(Object.keys(body).sort(), ['accessToken', 'expiresIn', 'session'])
  t.same(Object.keys(body.session).sort(), SESSION_KEYS)
  t.notOk(keysOf(body.session).has('token'))
  t.match(body.session.activeWorkspace, { id: flock, name: 'Flock' })
  t.match(body.session.activeMembership, { workspaceId: flock, role: 'owner', userId: alice.user.id })
  t.equal(body.session.workspaces.length, 2)
  t.type(body.accessToken, 'string')
  t.not(body.accessToken, alice.accessToken)
  t.ok(body.expiresIn > 0 && body.expiresIn <= 900, 'an access token lifetime')
  t.match(cookie(switched, 'access_token'), { value: body.accessToken, path: '/api/ws', httponly: true }, 'the WebSocket cookie follows')

  t.equal(await activeWorkspace(app, as(body.accessToken)), flock, 'the new token acts in the new workspace')
  const renamed = await app.inject({ method: 'PUT', url: '/api/workspace', headers: as(body.accessToken), payload: { name: 'Flock (renamed)' } })
  t.equal(renamed.json().workspace.id, flock)
  t.equal(await activeWorkspace(app, as(alice)), home, 'the old token still acts in the old workspace (another tab)')
  t.equal((await session(app, as(alice))).json().session.activeWorkspace.id, home)
  t.equal((await session(app, as(body.accessToken))).json().session.activeWorkspace.id, flock)

  const refreshed = await refresh(app, alice.refreshToken)
  t.equal(await activeWorkspace(app, as(refreshed.accessToken)), flock, 'a refresh carries the switched workspace')
  t.equal((await session(app, as(refreshed.accessToken))).json().session.activeWorkspace.id, flock)

  const audit = await app.db.selectFrom('audit_log').select(['actor_user_id', 'details']).where('action', '=', 'session.workspace_switched').execute()
  t.same(audit.map(row => [row.actor_user_id, row.details.workspaceId]), [[alice.user.id, flock]])

  // Refusals change nothing.
  for (const [label, workspaceId] of [['a workspace of someone else', bobsHome], ['a nonexistent workspace', 999_999]] as const) {
    const refused = await switchTo(app, as(refreshed.accessToken), { workspaceId })
    t.equal(refused.statusCode, 403, label)
    t.same(refused.json(), { error: FORBIDDEN, code: 'NOT_A_MEMBER' })
    t.equal(cookie(refused, 'access_token'), undefined, 'no new cookie')
  }
  const invalid: Array<[unknown, string]> = [
    [{ workspaceId: 'abc' }, 'workspaceId'],
    [{}, 'workspaceId'],
    [{ workspaceId: 0 }, 'workspaceId'],
    [{ workspaceId: 1.5 }, 'workspaceId'],
    [{ workspaceId: 2_147_483_648 }, 'workspaceId']
  ]
  for (const [payload, field] of invalid) {
    const bad = await switchTo(app, as(refreshed.accessToken), payload)
    t.equal(bad.statusCode, 400, JSON.stringify(payload))
    t.equal(bad.json().error, 'Invalid workspace switch payload')
    t.equal(bad.json().code, 'VALIDATION_FAILED')
    t.type(bad.json().details[field], 'string')
  }
  const after = await refresh(app, refreshed.refreshToken)
  t.equal(await activeWorkspace(app, as(after.accessToken)), flock, 'refused switches left the session where it was')

  // A pending invitation is not a membership.
  const invited = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: as(bob), payload: { email: 'nobody-yet@switch.example.com', role: 'viewer' } })
  t.equal(invited.statusCode, 201)
  const carol = await registerVerified(app, 'nobody-yet@switch.example.com')
  const pending = await switchTo(app, as(carol), { workspaceId: bobsHome })
  t.equal(pending.statusCode, 403, 'a pending invitation does not allow a switch')

  // Back home: the switch works both ways and the next refresh follows.
  const back = await switchTo(app, as(after.accessToken), { workspaceId: home })
  t.equal(back.statusCode, 200)
  t.equal(await activeWorkspace(app, as(back.json().accessToken)), home)
  t.equal(await activeWorkspace(app, as((await refresh(app, after.refreshToken)).accessToken)), home)
})

t.test('two tabs: X-Workspace-Id acts in another workspace without changing the session', async t => {
  const alice = await registerVerified(app, 'alice@tabs.example.com')
  const bob = await registerVerified(app, 'bob@tabs.example.com')
  const home = (await activeWorkspace(app, as(alice)))!
  const flock = await newWorkspace(app, alice, 'Flock')
  const bobsHome = (await activeWorkspace(app, as(bob)))!

  for (let round = 0; round < 3; round++) {
    const [a, b, c, d] = await Promise.all([
      app.inject({ url: '/api/workspace', headers: as(alice, home) }),
      app.inject({ url: '/api/workspace', headers: as(alice, flock) }),
      app.inject({ method: 'PUT', url: '/api/workspace', headers: as(alice, flock), payload: { name: `Flock ${round}` } }),
      session(app, as(alice, flock))
    ])
    t.equal(a.json().workspace.id, home, `round ${round}: tab one in home`)
    t.equal(b.json().workspace.id, flock, 'tab two in flock')
    t.match(c.json().workspace, { id: flock, name: `Flock ${round}` }, 'a write lands in the header\'s workspace')
    t.equal(d.json().session.activeWorkspace.id, flock, 'the session context follows the header')
    t.equal(d.json().session.activeMembership.workspaceId, flock)
  }
  const homeRow = await app.db.selectFrom('workspaces').select('name').where('id', '=', home).executeTakeFirstOrThrow()
  t.equal(homeRow.name, "alice's workspace", 'the home workspace was not touched')
  t.equal((await session(app, as(alice))).json().session.activeWorkspace.id, home, 'without the header: still the original')
  t.equal(await activeWorkspace(app, as((await refresh(app, alice.refreshToken)).accessToken)), home, 'and the refresh too')

  for (const [label, request] of [
    ['GET /api/workspace', { url: '/api/workspace' }],
    ['GET /api/auth/session', { url: '/api/auth/session' }],
    ['PUT /api/workspace', { method: 'PUT' as const, url: '/api/workspace', payload: { name: 'hijack' } }]
  ] as const) {
    const foreign = await app.inject({ ...request, headers: as(alice, bobsHome) })
    t.equal(foreign.statusCode, 403, `${label}: a workspace she is not a member of`)
    t.same(foreign.json(), { error: FORBIDDEN, code: 'NOT_A_MEMBER' })
    const missing = await app.inject({ ...request, headers: as(alice, 999_999) })
    t.equal(missing.statusCode, 403, `${label}: a workspace that does not exist`)
    for (const header of ['abc', '0', '-1', '1001abc', '99999999999']) {
      const malformed = await app.inject({ ...request, headers: as(alice, header) })
      t.equal(malformed.statusCode, 400, `${label}: X-Workspace-Id ${header}`)
      t.same(malformed.json(), { error: 'X-Workspace-Id must be a workspace id', code: 'INVALID_WORKSPACE_HEADER' })
    }
  }
  const bobsRow = await app.db.selectFrom('workspaces').select('name').where('id', '=', bobsHome).executeTakeFirstOrThrow()
  t.equal(bobsRow.name, "bob's workspace", 'bob\'s workspace untouched')
})

t.test('POST /api/session/set-active-tenant: seed 000\'s switch with its cookie', async t => {
  const alice = await registerVerified(app, 'alice@tenant.example.com')
  const bob = await registerVerified(app, 'bob@tenant.example.com')
  const home = (await activeWorkspace(app, as(alice)))!
  const flock = await newWorkspace(app, alice, 'Flock')
  const bobsHome = (await activeWorkspace(app, as(bob)))!
  const setTenant = async (tenantId: unknown, token = alice.accessToken) =>
    await app.inject({ method: 'POST', url: '/api/session/set-active-tenant', headers: as(token), payload: { tenantId } as Record<string, unknown> })

  const set = await setTenant(flock)
  t.equal(set.statusCode, 200)
  const body = set.json()
  t.same(Object.keys(body).sort(), ['accessToken', 'activeTenantId', 'expiresIn', 'ok'])
  t.match(body, { ok: true, activeTenantId: flock, expiresIn: Number })
  const tenantCookie = cookie(set, 'activeTenantId')
  t.match(tenantCookie, { value: String(flock), httponly: true, path: '/' })
  t.equal(await activeWorkspace(app, as(body.accessToken)), flock, 'its token acts in the tenant')
  t.equal(await activeWorkspace(app, as((await refresh(app, alice.refreshToken)).accessToken)), flock, 'and the session switched')

  const numeric = await setTenant(String(home))
  t.equal(numeric.statusCode, 200, 'a numeric string is accepted')
  t.equal(numeric.json().activeTenantId, home)
  t.equal(typeof numeric.json().activeTenantId, 'number')
  t.equal(cookie(numeric, 'activeTenantId')?.value, String(home))
  t.equal(await activeWorkspace(app, as(numeric.json().accessToken)), home)

  for (const [label, tenantId] of [['another user\'s workspace', bobsHome], ['as a string', String(bobsHome)], ['nonexistent', 999_999], ['the largest id', 2_147_483_647], ['the largest id as a string', '2147483647']] as const) {
    const refused = await setTenant(tenantId)
    t.equal(refused.statusCode, 403, label)
    t.same(refused.json(), { error: FORBIDDEN, code: 'NOT_A_MEMBER' })
    t.equal(cookie(refused, 'activeTenantId'), undefined, 'no cookie set')
    t.equal(cookie(refused, 'access_token'), undefined)
  }
  // Beyond PostgreSQL's integer range, as a number or as a string alike: 400, never a 500.
  for (const tenantId of ['abc', '0', '12abc', -5, null, 2_147_483_648, '2147483648', '9999999999']) {
    const bad = await setTenant(tenantId)
    t.equal(bad.statusCode, 400, `tenantId ${JSON.stringify(tenantId)}`)
    t.equal(bad.json().error, 'Invalid tenant payload')
    t.equal(cookie(bad, 'activeTenantId'), undefined)
  }
  t.equal(await activeWorkspace(app, as((await refresh(app, (await login(app, 'alice@tenant.example.com')).refreshToken)).accessToken)), home, 'a new sign-in starts in the oldest membership')
})

t.test('the bootstrapped admin gets one personal workspace at the first login', async t => {
  const created = await app.inject({ method: 'POST', url: '/api/auth/bootstrap', payload: { email: 'admin@example.com', password: PASSWORD, name: 'Admin' } })
  t.equal(created.statusCode, 201)
  const adminId = created.json().user.id as string
  t.same(await workspacesOf(app, adminId), [], 'no workspace before the first login')
  const createdBy = async () => (await app.db.selectFrom('workspaces').select('id').where('created_by', '=', adminId).execute()).length
  t.equal(await createdBy(), 0)

  const first = await login(app, 'admin@example.com')
  t.equal(first.status, 200)
  const owned = await workspacesOf(app, adminId)
  t.same(owned, [{ id: owned[0]?.id, name: "Admin's workspace", role: 'owner', created_by: adminId }], 'a personal workspace, owned')
  const context = (await session(app, as(first))).json().session
  t.equal(context.activeWorkspace.id, owned[0]!.id, 'the session starts in it')
  t.equal(context.activeMembership.role, 'owner')
  t.equal(context.user.role, 'ADMIN')

  const second = await login(app, 'admin@example.com')
  t.equal(second.status, 200)
  t.equal((await workspacesOf(app, adminId)).length, 1, 'a second login makes no second workspace')
  t.equal(await createdBy(), 1)
  t.equal(await activeWorkspace(app, as(second)), owned[0]!.id, 'and starts in the same one')
})

t.test('concurrent first logins of a user without a workspace make only one personal workspace', async t => {
  // Accounts from before workspaces: their memberships are gone (as for the bootstrapped
  // admin). Eight sign-ins of each at once, three times over (a race shows up in some rounds).
  for (const name of ['legacy1', 'legacy2', 'legacy3']) {
    const email = `${name}@race.example.com`
    const registered = await registerVerified(app, email)
    await app.db.deleteFrom('workspaces').where('created_by', '=', registered.user.id).execute()
    t.same(await workspacesOf(app, registered.user.id), [], `${name} has no workspace`)
    const logins = await Promise.all(Array.from({ length: 8 }, async () => await login(app, email)))
    t.same(logins.map(signedIn => signedIn.status), Array(8).fill(200))
    t.equal((await workspacesOf(app, registered.user.id)).length, 1, `${name}: one personal workspace`)
    const active = new Set(await Promise.all(logins.map(async signedIn => await activeWorkspace(app, as(signedIn)))))
    t.equal(active.size, 1, 'every session starts in the same one')
  }
})

t.test('a magic-link sign-in of a new address gets a personal workspace', async t => {
  // Asked for by a browser and opened there (its binding cookie): signed in at once.
  const { response: asked, link, binding } = await askMagicLink(app, { email: 'New.Person@Example.com', name: 'Taylor' })
  t.equal(asked.statusCode, 202)
  const opened = await openLink(app, link, binding)
  t.equal(opened.statusCode, 302)
  const refreshCookie = cookie(opened, 'refresh_token')!
  const refreshed = await app.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin: FRONTEND, cookie: `refresh_token=${refreshCookie.value as string}` } })
  t.equal(refreshed.statusCode, 200)
  const token = refreshed.json().accessToken as string

  const user = await app.db.selectFrom('users').select('id').where('email', '=', 'new.person@example.com').executeTakeFirstOrThrow()
  const owned = await workspacesOf(app, user.id)
  t.same(owned, [{ id: owned[0]?.id, name: "Taylor's workspace", role: 'owner', created_by: user.id }])
  const context = (await session(app, as(token))).json().session
  t.match(context, { user: { email: 'new.person@example.com', emailVerified: true }, activeWorkspace: { id: owned[0]!.id }, activeMembership: { role: 'owner', userId: user.id } })
  t.equal(context.workspaces.length, 1)

  // A second link, asked for by a script, signs in from its page to the same workspace.
  const second = (await askMagicLink(app, { email: 'new.person@example.com' }, null)).link
  t.equal((await openLink(app, second)).statusCode, 200, 'the confirmation page')
  t.equal((await confirmLink(app, second)).statusCode, 302)
  t.equal((await workspacesOf(app, user.id)).length, 1, 'no second workspace')
})
