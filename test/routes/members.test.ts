import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { build } from '../helper.js'
import { acceptInvitation, bearer, register, registerVerified, type SignedIn } from '../auth-helper.js'

/*
 * Workspaces and their members (issue 5, seed 003 "Workspaces"): the payload rules of
 * POST /api/workspaces and PUT /api/workspace, the member upsert and its invitations, the
 * role rules (owner only grants owner, a workspace keeps one owner), removals that hold from
 * the member's very next request, and the audit trail.
 */

const FRONTEND = 'https://app.example.com'
const FORBIDDEN = { error: 'You do not have permission for that action.' }
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

type Headers = Record<string, string>

/** The bearer header, acting in `workspaceId` when given (a second tab, seed 003's X-Workspace-Id). */
const as = (user: SignedIn | string, workspaceId?: number): Headers => ({
  ...bearer(typeof user === 'string' ? user : user.accessToken),
  ...(workspaceId === undefined ? {} : { 'x-workspace-id': String(workspaceId) })
})

async function createWorkspace (app: FastifyInstance, user: SignedIn, payload: Record<string, unknown>): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/api/workspaces', headers: as(user), payload })
}

async function upsert (app: FastifyInstance, headers: Headers, payload: Record<string, unknown>): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/api/workspace/members', headers, payload })
}

async function remove (app: FastifyInstance, headers: Headers, memberId: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'DELETE', url: `/api/workspace/members/${memberId}`, headers })
}

/** The active workspace of a fresh registration: their personal workspace. */
async function personalWorkspace (app: FastifyInstance, user: SignedIn): Promise<number> {
  const answer = await app.inject({ url: '/api/workspace', headers: as(user) })
  if (answer.statusCode !== 200) throw new Error(`GET /api/workspace: ${answer.statusCode} ${answer.body}`)
  return answer.json().workspace.id
}

async function memberRow (app: FastifyInstance, workspaceId: number, email: string) {
  return await app.db.selectFrom('workspace_members').selectAll()
    .where('workspace_id', '=', workspaceId).where('invite_email', '=', email).executeTakeFirst()
}

async function ownerCount (app: FastifyInstance, workspaceId: number): Promise<number> {
  const rows = await app.db.selectFrom('workspace_members').select('id')
    .where('workspace_id', '=', workspaceId).where('role', '=', 'owner').execute()
  return rows.length
}

// One app for the whole file (building one costs a database clone): every test has users of its own.
const app = await build(t, { FRONTEND_URL: FRONTEND })

t.test('POST /api/workspaces validates its payload, stores only known fields and makes the creator owner', async t => {
  const alice = await registerVerified(app, 'alice@create.example.com')
  const bob = await registerVerified(app, 'bob@create.example.com')
  const countWorkspaces = async () => (await app.db.selectFrom('workspaces').select('id').execute()).length
  const before = await countWorkspaces()

  const invalid: Array<[Record<string, unknown>, string]> = [
    [{}, 'name'],
    [{ name: '   ' }, 'name'],
    [{ name: 'x'.repeat(201) }, 'name'],
    [{ name: 'Castle', workspaceType: 'castle' }, 'workspaceType'],
    [{ name: 'Gold', billingPlan: 'gold' }, 'billingPlan'],
    [{ name: 'Rescue gold', workspaceType: 'rescue', billingPlan: 'rescue_free' }, 'billingPlan'],
    [{ name: 'Mail', billingEmail: 'nope' }, 'billingEmail']
  ]
  for (const [payload, field] of invalid) {
    const answer = await createWorkspace(app, alice, payload)
    t.equal(answer.statusCode, 400, `${JSON.stringify(payload).slice(0, 60)} is refused`)
    const body = answer.json()
    t.equal(body.error, 'Invalid workspace payload')
    t.equal(body.code, 'VALIDATION_FAILED')
    t.type(body.details?.[field], 'string', `details name ${field}`)
    t.same(Object.keys(body).sort(), ['code', 'details', 'error'])
  }
  const missing = await createWorkspace(app, alice, { workspaceType: 'castle' })
  t.same(Object.keys(missing.json().details).sort(), ['name', 'workspaceType'], 'every bad field is named')
  t.equal(missing.json().details.name, 'is required')
  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: as(alice), payload: { name: 'ci', scope: 'read_write' } })
  const byToken = await app.inject({ method: 'POST', url: '/api/workspaces', headers: bearer(minted.json().token), payload: { name: 'By token' } })
  t.equal(byToken.statusCode, 403, 'an integration token cannot create workspaces')
  t.same(byToken.json(), { error: 'This endpoint requires a browser session instead of an integration token.', code: 'BROWSER_SESSION_REQUIRED' })
  t.equal(await countWorkspaces(), before, 'nothing stored for a refused payload')

  // Unknown fields are dropped: neither the id nor the creator can be chosen.
  const standard = await createWorkspace(app, alice, { name: '  Home Flock  ', id: 1, created_by: bob.user.id, createdBy: bob.user.id, role: 'viewer' })
  t.equal(standard.statusCode, 201)
  const workspace = standard.json().workspace
  t.same(Object.keys(workspace).sort(), ['billingEmail', 'billingPlan', 'createdAt', 'id', 'name', 'updatedAt', 'workspaceType'])
  t.match(workspace, { name: 'Home Flock', workspaceType: 'standard', billingPlan: 'household_basic', billingEmail: null, createdAt: ISO, updatedAt: ISO })
  t.not(workspace.id, 1, 'the id is not the client\'s')
  t.ok(workspace.id > 1001)
  const row = await app.db.selectFrom('workspaces').selectAll().where('id', '=', workspace.id).executeTakeFirstOrThrow()
  t.equal(row.created_by, alice.user.id, 'created_by is the caller, not the body\'s')
  t.equal(row.name, 'Home Flock')
  t.equal(row.billing_plan, 'household_basic')
  t.notOk(await app.db.selectFrom('workspaces').select('id').where('id', '=', 1).executeTakeFirst(), 'no workspace 1')

  const owner = await memberRow(app, workspace.id, 'alice@create.example.com')
  t.match(owner, { user_id: alice.user.id, role: 'owner', invited_by: null })
  t.ok(owner?.accepted_at instanceof Date, 'the creator is an accepted member')
  t.equal((await app.db.selectFrom('workspace_members').select('id').where('workspace_id', '=', workspace.id).execute()).length, 1, 'only the creator')

  const rescue = await createWorkspace(app, alice, { name: 'Rescue', workspaceType: 'rescue', billingPlan: 'household_macaw', billingEmail: 'billing@create.example.com' })
  t.equal(rescue.statusCode, 201)
  t.match(rescue.json().workspace, { workspaceType: 'rescue', billingPlan: 'rescue_free', billingEmail: 'billing@create.example.com' }, 'rescue forces rescue_free')
  const rescueRow = await app.db.selectFrom('workspaces').selectAll().where('id', '=', rescue.json().workspace.id).executeTakeFirstOrThrow()
  t.equal(rescueRow.billing_plan, 'rescue_free')

  const plus = await createWorkspace(app, alice, { name: 'Plus', workspaceType: 'standard', billingPlan: 'household_plus' })
  t.equal(plus.json().workspace.billingPlan, 'household_plus', 'a standard workspace takes the given plan')

  const list = await app.inject({ url: '/api/workspaces', headers: as(alice) })
  t.equal(list.statusCode, 200)
  const listed = list.json().workspaces as Array<{ id: number, role: string, name: string, membershipId: string }>
  t.equal(listed.length, 4, 'personal + three created')
  const home = listed.find(entry => entry.id === workspace.id)
  t.match(home, { name: 'Home Flock', role: 'owner', membershipId: owner!.id })
  t.same(listed.map(entry => entry.role), ['owner', 'owner', 'owner', 'owner'])
  const bobs = await app.inject({ url: '/api/workspaces', headers: as(bob) })
  t.same(bobs.json().workspaces.map((entry: { id: number }) => entry.id), [await personalWorkspace(app, bob)], 'bob sees none of alice\'s')
})

t.test('PUT /api/workspace: name and plan, the rescue plan rule, owner or manager only', async t => {
  const alice = await registerVerified(app, 'alice@update.example.com')
  const created = await createWorkspace(app, alice, { name: 'Flock', billingPlan: 'household_plus' })
  const ws = created.json().workspace
  const team: Record<string, SignedIn> = {}
  for (const [email, role] of [['mia@update.example.com', 'manager'], ['sam@update.example.com', 'staff'], ['vic@update.example.com', 'viewer']] as const) {
    team[role] = await registerVerified(app, email)
    t.equal((await upsert(app, as(alice, ws.id), { email, role })).statusCode, 201)
  }
  const { manager: mia, staff: sam, viewer: vic } = team as Record<'manager' | 'staff' | 'viewer', SignedIn>
  const outsider = await registerVerified(app, 'outsider@update.example.com')

  const put = async (headers: Headers, payload: Record<string, unknown>) => await app.inject({ method: 'PUT', url: '/api/workspace', headers, payload })
  const stored = async () => await app.db.selectFrom('workspaces').selectAll().where('id', '=', ws.id).executeTakeFirstOrThrow()

  await new Promise(resolve => setTimeout(resolve, 15))
  const renamed = await put(as(alice, ws.id), { name: '  Renamed Flock ', billingPlan: 'household_macaw', billingEmail: 'pay@update.example.com', id: 5 })
  t.equal(renamed.statusCode, 200)
  t.match(renamed.json().workspace, { id: ws.id, name: 'Renamed Flock', workspaceType: 'standard', billingPlan: 'household_macaw', billingEmail: 'pay@update.example.com', createdAt: ws.createdAt })
  t.ok(Date.parse(renamed.json().workspace.updatedAt) > Date.parse(ws.updatedAt), 'updatedAt moves on')
  t.match(await stored(), { name: 'Renamed Flock', billing_plan: 'household_macaw', billing_email: 'pay@update.example.com' })

  const toRescue = await put(as(alice, ws.id), { workspaceType: 'rescue', billingPlan: 'household_plus' })
  t.equal(toRescue.statusCode, 200)
  t.match(toRescue.json().workspace, { workspaceType: 'rescue', billingPlan: 'rescue_free', name: 'Renamed Flock', billingEmail: 'pay@update.example.com' }, 'standard→rescue forces rescue_free')
  const stayRescue = await put(as(alice, ws.id), { billingPlan: 'household_plus' })
  t.equal(stayRescue.json().workspace.billingPlan, 'rescue_free', 'a rescue workspace cannot take a household plan')

  const backDefault = await put(as(alice, ws.id), { workspaceType: 'standard' })
  t.match(backDefault.json().workspace, { workspaceType: 'standard', billingPlan: 'household_basic' }, 'rescue→standard without a plan: household_basic')
  await put(as(alice, ws.id), { workspaceType: 'rescue' })
  const backGiven = await put(as(alice, ws.id), { workspaceType: 'standard', billingPlan: 'household_plus' })
  t.match(backGiven.json().workspace, { workspaceType: 'standard', billingPlan: 'household_plus' }, 'rescue→standard takes the given plan')
  const keepPlan = await put(as(alice, ws.id), { name: 'Only the name' })
  t.match(keepPlan.json().workspace, { name: 'Only the name', billingPlan: 'household_plus', billingEmail: 'pay@update.example.com' }, 'unnamed fields are kept')
  const clearEmail = await put(as(alice, ws.id), { billingEmail: null })
  t.equal(clearEmail.json().workspace.billingEmail, null, 'billingEmail null clears it')
  t.match(await stored(), { workspace_type: 'standard', billing_plan: 'household_plus', billing_email: null, name: 'Only the name' })

  const bad = await put(as(alice, ws.id), { workspaceType: 'castle', billingPlan: 'gold', name: '' })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().error, 'Invalid workspace payload')
  t.equal(bad.json().code, 'VALIDATION_FAILED')
  t.same(Object.keys(bad.json().details).sort(), ['billingPlan', 'name', 'workspaceType'])

  const byManager = await put(as(mia, ws.id), { name: 'Manager was here' })
  t.equal(byManager.statusCode, 200, 'a manager may update')
  t.equal(byManager.json().workspace.name, 'Manager was here')

  const before = await stored()
  for (const [who, user] of [['staff', sam], ['viewer', vic]] as const) {
    const refused = await put(as(user, ws.id), { name: `by ${who}`, workspaceType: 'rescue' })
    t.equal(refused.statusCode, 403, `${who} may not update`)
    t.same(refused.json(), { ...FORBIDDEN, code: 'ROLE_NOT_ALLOWED' })
  }
  const stranger = await put(as(outsider, ws.id), { name: 'by a stranger' })
  t.equal(stranger.statusCode, 403, 'a non-member may not update')
  t.same(stranger.json(), { ...FORBIDDEN, code: 'NOT_A_MEMBER' })
  t.same(await stored(), before, 'refused updates change nothing')
  t.equal((await app.inject({ method: 'PUT', url: '/api/workspace', payload: { name: 'anon' } })).statusCode, 401)

  // Alice's own (personal) workspace was not touched by updates aimed at another one.
  const personal = await app.inject({ url: '/api/workspace', headers: as(alice) })
  t.equal(personal.json().workspace.name, "alice's workspace")
})

t.test('members: an existing user joins at once, an unknown address is invited and joins by the link', async t => {
  const alice = await registerVerified(app, 'alice@invite.example.com')
  const ws = await personalWorkspace(app, alice)
  const bob = await registerVerified(app, 'bob@invite.example.com')

  const added = await upsert(app, as(alice), { email: 'Bob@Invite.Example.com', role: 'staff', name: 'Bobby' })
  t.equal(added.statusCode, 201)
  const bobMember = added.json().member
  t.same(Object.keys(added.json()), ['member'], 'no invitation for an existing account')
  t.match(bobMember, { id: UUID, workspaceId: ws, userId: bob.user.id, inviteEmail: 'bob@invite.example.com', name: 'Bobby', role: 'staff', acceptedAt: ISO, createdAt: ISO })
  const bobRow = await memberRow(app, ws, 'bob@invite.example.com')
  t.match(bobRow, { user_id: bob.user.id, role: 'staff', invited_by: alice.user.id })
  t.ok(bobRow?.accepted_at instanceof Date)
  const bobList = await app.inject({ url: '/api/workspaces', headers: as(bob) })
  t.match(bobList.json().workspaces.find((entry: { id: number }) => entry.id === ws), { role: 'staff', membershipId: bobMember.id })
  const bobReads = await app.inject({ url: '/api/workspace', headers: as(bob, ws) })
  t.equal(bobReads.statusCode, 200, 'bob acts in the workspace at once')
  t.equal(bobReads.json().workspace.id, ws)

  // Upsert: the same address again changes role and name, in the same row.
  const updated = await upsert(app, as(alice), { email: 'bob@invite.example.com', role: 'manager', name: 'Robert' })
  t.equal(updated.statusCode, 201)
  t.match(updated.json().member, { id: bobMember.id, role: 'manager', name: 'Robert', userId: bob.user.id, acceptedAt: bobMember.acceptedAt })
  t.same(Object.keys(updated.json()), ['member'])
  const keepName = await upsert(app, as(alice), { email: 'bob@invite.example.com', role: 'manager' })
  t.equal(keepName.json().member.name, 'Robert', 'no name: the member keeps theirs')
  const bobRows = await app.db.selectFrom('workspace_members').select('id').where('workspace_id', '=', ws).where('user_id', '=', bob.user.id).execute()
  t.equal(bobRows.length, 1, 'no duplicate row')
  const managerNow = await app.inject({ method: 'PUT', url: '/api/workspace', headers: as(bob, ws), payload: { name: 'Bob manages' } })
  t.equal(managerNow.statusCode, 200, 'the new role holds from the very next request')

  // An address without an account: a pending member and an invitation link.
  const invited = await upsert(app, as(alice), { email: 'Carol@Invite.Example.com', role: 'viewer', name: 'Carol' })
  t.equal(invited.statusCode, 201)
  const carolMember = invited.json().member
  t.match(carolMember, { id: UUID, workspaceId: ws, userId: null, acceptedAt: null, inviteEmail: 'carol@invite.example.com', name: 'Carol', role: 'viewer' })
  t.equal(invited.json().inviteDelivery, 'preview')
  t.match(invited.json().invitePreviewUrl, /^http:\/\/localhost:3000\/api\/auth\/magic-link\/verify\?token=[A-Za-z0-9_-]{43}$/)
  t.match(await memberRow(app, ws, 'carol@invite.example.com'), { user_id: null, accepted_at: null, invited_by: alice.user.id })
  const listedPending = await app.inject({ url: '/api/workspace/members', headers: as(alice) })
  t.same(listedPending.json().members.map((m: { inviteEmail: string, userId: string | null }) => [m.inviteEmail, m.userId === null]),
    [['alice@invite.example.com', false], ['bob@invite.example.com', false], ['carol@invite.example.com', true]])

  // Re-inviting with the same role sends no new link; a role change does.
  const same = await upsert(app, as(alice), { email: 'carol@invite.example.com', role: 'viewer' })
  t.same(Object.keys(same.json()), ['member'], 'same role: no second invitation')
  t.equal(same.json().member.id, carolMember.id)
  const changed = await upsert(app, as(alice), { email: 'carol@invite.example.com', role: 'staff' })
  t.equal(changed.json().member.id, carolMember.id, 'a pending member is updated in place')
  t.equal(changed.json().member.role, 'staff')
  t.equal(changed.json().inviteDelivery, 'preview')
  t.not(changed.json().invitePreviewUrl, invited.json().invitePreviewUrl, 'a fresh link for the new role')
  t.equal((await app.db.selectFrom('workspace_members').select('id').where('invite_email', '=', 'carol@invite.example.com').execute()).length, 1)

  // Carol opens the link: her browser never asked for it, so a page names her address; its
  // button signs her in, a member of alice's workspace (not of a new personal one).
  const { page, opened, accessToken } = await acceptInvitation(app, changed.json().invitePreviewUrl, FRONTEND)
  t.equal(page.statusCode, 200, 'the confirmation page')
  t.match(page.body, '>carol@invite.example.com</p>', 'naming the invited address')
  t.equal(page.headers['set-cookie'], undefined, 'the page signs nobody in')
  t.equal(opened.statusCode, 302)
  t.match(opened.headers.location, /^https:\/\/app\.example\.com\/?$/, 'to the frontend')
  t.ok(accessToken, 'signed in')
  const carol = await app.db.selectFrom('users').selectAll().where('email', '=', 'carol@invite.example.com').executeTakeFirstOrThrow()
  t.match(carol, { name: 'Carol', email_verified: true })
  const accepted = await memberRow(app, ws, 'carol@invite.example.com')
  t.equal(accepted?.user_id, carol.id, 'the member row is hers')
  t.ok(accepted?.accepted_at instanceof Date, 'accepted')
  t.equal(accepted?.role, 'staff')
  const carolList = await app.inject({ url: '/api/workspaces', headers: as(accessToken) })
  t.equal(carolList.statusCode, 200)
  t.same(carolList.json().workspaces.map((entry: { id: number, role: string }) => [entry.id, entry.role]), [[ws, 'staff']], 'only the invited workspace')
  const carolSession = await app.inject({ url: '/api/auth/session', headers: as(accessToken) })
  t.equal(carolSession.json().session.activeWorkspace.id, ws, 'her session starts in it')
  t.equal(carolSession.json().session.activeMembership.id, carolMember.id)
  const members = await app.inject({ url: '/api/workspace/members', headers: as(alice) })
  t.match(members.json().members.find((m: { id: string }) => m.id === carolMember.id), { userId: carol.id, acceptedAt: ISO })
  const used = await acceptInvitation(app, changed.json().invitePreviewUrl, FRONTEND)
  t.equal(used.opened.statusCode, 400, 'the invitation link works once')
  const stale = await acceptInvitation(app, invited.json().invitePreviewUrl, FRONTEND)
  t.equal(stale.opened.statusCode, 302, 'the first link still signs carol in')
  t.equal((await app.db.selectFrom('workspace_members').select('id').where('invite_email', '=', 'carol@invite.example.com').execute()).length, 1, 'and adds no row')

  // Bad payloads.
  const cases: Array<[Record<string, unknown>, string[]]> = [
    [{ email: 'dan@invite.example.com', role: 'admin' }, ['role']],
    [{ email: 'dan@invite.example.com' }, ['role']],
    [{ email: 'not-an-address', role: 'viewer' }, ['email']],
    [{ role: 'viewer' }, ['email']],
    [{ email: 'dan@invite.example.com', role: 'viewer', name: 'x'.repeat(201) }, ['name']]
  ]
  for (const [payload, fields] of cases) {
    const answer = await upsert(app, as(alice), payload)
    t.equal(answer.statusCode, 400, JSON.stringify(payload).slice(0, 60))
    t.equal(answer.json().error, 'Invalid member payload')
    t.equal(answer.json().code, 'VALIDATION_FAILED')
    t.same(Object.keys(answer.json().details), fields)
  }
  t.notOk(await memberRow(app, ws, 'dan@invite.example.com'), 'no row for a refused payload')
})

t.test('role rules: owner grants owner, the last owner stays, owners are not removed', async t => {
  const alice = await registerVerified(app, 'alice@roles.example.com')
  const ws = await personalWorkspace(app, alice)
  const users: Record<string, SignedIn> = {}
  const ids: Record<string, string> = {}
  for (const [name, role] of [['bob', 'manager'], ['carol', 'staff'], ['dave', 'viewer'], ['erin', 'viewer']] as const) {
    users[name] = await registerVerified(app, `${name}@roles.example.com`)
    const added = await upsert(app, as(alice), { email: `${name}@roles.example.com`, role })
    t.equal(added.statusCode, 201)
    ids[name] = added.json().member.id
  }
  const { bob, carol, dave, erin } = users as Record<'bob' | 'carol' | 'dave' | 'erin', SignedIn>
  const aliceId = (await memberRow(app, ws, 'alice@roles.example.com'))!.id
  const roleOf = async (email: string) => (await memberRow(app, ws, email))?.role

  // A manager administers, but not owners.
  const grant = await upsert(app, as(bob, ws), { email: 'carol@roles.example.com', role: 'owner' })
  t.equal(grant.statusCode, 403, 'a manager cannot grant owner')
  t.same(grant.json(), { ...FORBIDDEN, code: 'OWNER_REQUIRED' })
  t.equal(await roleOf('carol@roles.example.com'), 'staff')
  const newOwner = await upsert(app, as(bob, ws), { email: 'newcomer@roles.example.com', role: 'owner' })
  t.equal(newOwner.statusCode, 403, 'nor invite an owner')
  t.notOk(await memberRow(app, ws, 'newcomer@roles.example.com'))
  const demote = await upsert(app, as(bob, ws), { email: 'alice@roles.example.com', role: 'viewer' })
  t.equal(demote.statusCode, 403, 'a manager cannot change an owner\'s role')
  t.same(demote.json(), { ...FORBIDDEN, code: 'OWNER_REQUIRED' })
  t.equal(await roleOf('alice@roles.example.com'), 'owner')
  const rename = await upsert(app, as(bob, ws), { email: 'alice@roles.example.com', role: 'owner', name: 'Al' })
  t.equal(rename.statusCode, 403, 'nor touch an owner\'s row at all')
  t.equal((await memberRow(app, ws, 'alice@roles.example.com'))?.name, 'alice')
  const managerOk = await upsert(app, as(bob, ws), { email: 'carol@roles.example.com', role: 'viewer' })
  t.equal(managerOk.statusCode, 201, 'a manager changes other roles')
  t.equal(managerOk.json().member.role, 'viewer')
  await upsert(app, as(bob, ws), { email: 'carol@roles.example.com', role: 'staff' })
  const byStaff = await upsert(app, as(carol, ws), { email: 'dave@roles.example.com', role: 'staff' })
  t.equal(byStaff.statusCode, 403, 'staff cannot manage members')
  t.same(byStaff.json(), { ...FORBIDDEN, code: 'ROLE_NOT_ALLOWED' })
  const byViewer = await remove(app, as(dave, ws), ids.erin!)
  t.equal(byViewer.statusCode, 403, 'a viewer cannot remove members')
  t.same(byViewer.json(), { ...FORBIDDEN, code: 'ROLE_NOT_ALLOWED' })

  // The last owner.
  const self = await upsert(app, as(alice), { email: 'alice@roles.example.com', role: 'manager' })
  t.equal(self.statusCode, 409, 'the last owner cannot demote themselves')
  t.same(self.json(), { error: 'A workspace must keep at least one owner.', code: 'LAST_OWNER' })
  t.equal(await roleOf('alice@roles.example.com'), 'owner')
  const promote = await upsert(app, as(alice), { email: 'carol@roles.example.com', role: 'owner' })
  t.equal(promote.statusCode, 201, 'an owner promotes to owner')
  t.equal(promote.json().member.role, 'owner')
  t.equal(await ownerCount(app, ws), 2)
  const demoted = await upsert(app, as(carol, ws), { email: 'alice@roles.example.com', role: 'manager' })
  t.equal(demoted.statusCode, 201, 'with two owners one demotes the other')
  t.equal(demoted.json().member.role, 'manager')
  t.equal(await roleOf('alice@roles.example.com'), 'manager')
  const aliceNow = await upsert(app, as(alice), { email: 'dave@roles.example.com', role: 'owner' })
  t.equal(aliceNow.statusCode, 403, 'alice is a manager from her very next request')
  const carolLast = await upsert(app, as(carol, ws), { email: 'carol@roles.example.com', role: 'staff' })
  t.equal(carolLast.statusCode, 409, 'carol is now the last owner')
  t.equal(carolLast.json().code, 'LAST_OWNER')
  t.equal(await ownerCount(app, ws), 1)

  // Removals: owners, other workspaces' members and unknown ids all answer 404.
  const notFound = { error: 'Member not found', code: 'NOT_FOUND' }
  for (const [label, headers, id] of [
    ['an owner, by a manager', as(bob, ws), ids.carol!],
    ['an owner, by an owner', as(carol, ws), ids.carol!],
    ['a non-uuid id', as(carol, ws), 'abc'],
    ['an unknown uuid', as(carol, ws), '00000000-0000-4000-8000-000000000000']
  ] as const) {
    const answer = await remove(app, headers, id)
    t.equal(answer.statusCode, 404, label)
    t.same(answer.json(), notFound)
  }
  t.equal(await roleOf('carol@roles.example.com'), 'owner', 'the owner is still there')
  const frank = await registerVerified(app, 'frank@roles.example.com')
  const other = await personalWorkspace(app, frank)
  await registerVerified(app, 'gus@roles.example.com')
  const gus = await upsert(app, as(frank), { email: 'gus@roles.example.com', role: 'viewer' })
  const foreign = await remove(app, as(carol, ws), gus.json().member.id)
  t.equal(foreign.statusCode, 404, 'a member of another workspace')
  t.same(foreign.json(), notFound)
  t.ok(await memberRow(app, other, 'gus@roles.example.com'), 'still in their workspace')
  const pendingInvite = await upsert(app, as(carol, ws), { email: 'ghost@roles.example.com', role: 'viewer' })
  t.equal((await remove(app, as(carol, ws), pendingInvite.json().member.id)).statusCode, 204, 'a pending invitation can be withdrawn')
  t.notOk(await memberRow(app, ws, 'ghost@roles.example.com'))

  // Dave (viewer) has a tab in the workspace and an integration token for it.
  const switched = await app.inject({ method: 'POST', url: '/api/auth/switch-workspace', headers: as(dave), payload: { workspaceId: ws } })
  t.equal(switched.statusCode, 200)
  const daveTab = switched.json().accessToken as string
  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: as(dave, ws), payload: { name: 'sync', scope: 'read_only' } })
  t.equal(minted.statusCode, 201)
  const daveToken = minted.json().token as string
  t.equal((await app.inject({ url: '/api/workspace/members', headers: bearer(daveToken) })).statusCode, 200, 'the token works')
  t.equal((await app.inject({ url: '/api/workspace', headers: as(daveTab) })).statusCode, 200, 'the tab works')
  t.equal((await app.inject({ url: '/api/workspace', headers: as(dave, ws) })).statusCode, 200, 'the header works')

  const removed = await remove(app, as(bob, ws), ids.dave!)
  t.equal(removed.statusCode, 204, 'a manager removes a viewer')
  t.equal(removed.body, '')
  t.notOk(await memberRow(app, ws, 'dave@roles.example.com'), 'the row is gone')
  const tabAfter = await app.inject({ url: '/api/workspace', headers: as(daveTab) })
  t.equal(tabAfter.statusCode, 403, 'the removed member\'s very next request is refused')
  t.same(tabAfter.json(), { ...FORBIDDEN, code: 'NOT_A_MEMBER' })
  const headerAfter = await app.inject({ url: '/api/workspace/members', headers: as(dave, ws) })
  t.equal(headerAfter.statusCode, 403)
  const tokenAfter = await app.inject({ url: '/api/workspace/members', headers: bearer(daveToken) })
  t.equal(tokenAfter.statusCode, 401, 'their integration token is revoked with them')
  t.same(tokenAfter.json(), { error: 'Authentication required.', code: 'TOKEN_INVALID' })
  const tokenRow = await app.db.selectFrom('integration_tokens').selectAll().where('id', '=', minted.json().integrationToken.id).executeTakeFirstOrThrow()
  t.ok(tokenRow.revoked_at instanceof Date, 'revoked in the database')
  const daveHome = await app.inject({ url: '/api/workspace', headers: as(dave) })
  t.equal(daveHome.statusCode, 200, 'dave\'s other tab still acts in his own workspace')
  t.not(daveHome.json().workspace.id, ws)
  const daveList = await app.inject({ url: '/api/workspaces', headers: as(dave) })
  t.notOk(daveList.json().workspaces.some((entry: { id: number }) => entry.id === ws), 'no longer listed for them')
  const again = await remove(app, as(bob, ws), ids.dave!)
  t.equal(again.statusCode, 404, 'removing twice')

  // A demotion holds from the next request too (erin is a viewer; make her a manager and back).
  t.equal((await upsert(app, as(carol, ws), { email: 'erin@roles.example.com', role: 'manager' })).statusCode, 201)
  t.equal((await remove(app, as(erin, ws), aliceId)).statusCode, 204, 'erin, now a manager, removes alice (a manager)')
  t.equal((await upsert(app, as(carol, ws), { email: 'erin@roles.example.com', role: 'viewer' })).statusCode, 201)
  const erinAfter = await remove(app, as(erin, ws), ids.bob!)
  t.equal(erinAfter.statusCode, 403, 'and as a viewer again she cannot')
  t.equal(await roleOf('bob@roles.example.com'), 'manager')
})

t.test('two owners demoting each other at once leave exactly one owner', async t => {
  const alice = await registerVerified(app, 'alice@race.example.com')
  const ws = await personalWorkspace(app, alice)
  const bob = await registerVerified(app, 'bob@race.example.com')
  t.equal((await upsert(app, as(alice), { email: 'bob@race.example.com', role: 'owner' })).statusCode, 201)

  for (let round = 0; round < 5; round++) {
    t.equal(await ownerCount(app, ws), 2, `round ${round}: two owners`)
    // Both have acted in the workspace (their memberships are cached), then both demote the other.
    t.equal((await app.inject({ url: '/api/workspace', headers: as(alice, ws) })).statusCode, 200)
    t.equal((await app.inject({ url: '/api/workspace', headers: as(bob, ws) })).statusCode, 200)
    const answers = await Promise.all([
      upsert(app, as(alice, ws), { email: 'bob@race.example.com', role: 'manager' }),
      upsert(app, as(bob, ws), { email: 'alice@race.example.com', role: 'manager' })
    ])
    // The loser's role is read again under the workspace lock: by then it is no longer an owner.
    t.same(answers.map(answer => answer.statusCode).sort(), [201, 403], 'one wins, the other is refused')
    const loser = answers.find(answer => answer.statusCode === 403)
    t.same(loser?.json(), { error: 'You do not have permission for that action.', code: 'OWNER_REQUIRED' })
    t.equal(await ownerCount(app, ws), 1, 'exactly one owner')
    const owner = answers[0]!.statusCode === 201 ? alice : bob
    const other = owner === alice ? 'bob@race.example.com' : 'alice@race.example.com'
    t.equal((await upsert(app, as(owner, ws), { email: other, role: 'owner' })).statusCode, 201, 'the remaining owner promotes the other again')
  }
})

t.test('a pending owner invitation does not count as an owner', async t => {
  const alice = await registerVerified(app, 'alice@pending.example.com')
  const ws = await personalWorkspace(app, alice)
  const invited = await upsert(app, as(alice), { email: 'heir@pending.example.com', role: 'owner' })
  t.equal(invited.statusCode, 201)
  t.match(invited.json().member, { role: 'owner', userId: null, acceptedAt: null })

  // Until the invitee signs in, alice is the only owner anyone can act as.
  const demote = await upsert(app, as(alice), { email: 'alice@pending.example.com', role: 'manager' })
  t.equal(demote.statusCode, 409, 'the last accepted owner cannot step down')
  t.same(demote.json(), { error: 'A workspace must keep at least one owner.', code: 'LAST_OWNER' })
  t.equal((await memberRow(app, ws, 'alice@pending.example.com'))?.role, 'owner')

  // Once the invitation is accepted there are two owners, and alice may step down.
  const { accessToken } = await acceptInvitation(app, invited.json().invitePreviewUrl, FRONTEND)
  t.ok(accessToken)
  t.ok((await memberRow(app, ws, 'heir@pending.example.com'))?.user_id, 'the heir accepted')
  const stepDown = await upsert(app, as(alice), { email: 'alice@pending.example.com', role: 'manager' })
  t.equal(stepDown.statusCode, 201)
  t.equal(stepDown.json().member.role, 'manager')
  t.equal(await ownerCount(app, ws), 1)
})

t.test('the audit log records workspace and member changes with their actor', async t => {
  const alice = await registerVerified(app, 'alice@audit.example.com')
  const bob = await registerVerified(app, 'bob@audit.example.com')
  const created = await createWorkspace(app, alice, { name: 'Audited' })
  const ws = created.json().workspace.id as number
  const added = await upsert(app, as(alice, ws), { email: 'bob@audit.example.com', role: 'viewer' })
  const member = added.json().member.id as string
  t.equal((await upsert(app, as(alice, ws), { email: 'bob@audit.example.com', role: 'staff' })).statusCode, 201)
  t.equal((await remove(app, as(alice, ws), member)).statusCode, 204)
  // Refused changes leave no trace.
  t.equal((await upsert(app, as(bob, ws), { email: 'bob@audit.example.com', role: 'owner' })).statusCode, 403)
  t.equal((await upsert(app, as(alice, ws), { email: 'alice@audit.example.com', role: 'viewer' })).statusCode, 409)

  const rows = await app.db.selectFrom('audit_log').select(['action', 'actor_user_id', 'subject_type', 'subject_id', 'details'])
    .where('action', 'in', ['workspace.created', 'member.added', 'member.updated', 'member.removed'])
    .where(eb => eb.or([eb('actor_user_id', '=', alice.user.id), eb('actor_user_id', '=', bob.user.id)]))
    .orderBy('id').execute()
  t.same(rows.map(row => row.action), ['workspace.created', 'member.added', 'member.updated', 'member.removed'])
  t.ok(rows.every(row => row.actor_user_id === alice.user.id), 'alice is the actor of each')
  t.match(rows[0], { subject_type: 'workspace', subject_id: String(ws) })
  t.match(rows[1], { subject_type: 'workspace_member', subject_id: member, details: { workspaceId: ws, role: 'viewer', previousRole: null, pending: false } })
  t.match(rows[2], { subject_type: 'workspace_member', subject_id: member, details: { workspaceId: ws, role: 'staff', previousRole: 'viewer' } })
  t.match(rows[3], { subject_type: 'workspace_member', subject_id: member, details: { workspaceId: ws, userId: bob.user.id, role: 'staff', tokensRevoked: 0 } })
})

t.test('an account whose address is not verified is invited by a link, never joined at once', async t => {
  const alice = await registerVerified(app, 'alice@squat.example.com')
  const ws = await personalWorkspace(app, alice)
  // Someone registers an address they may not own (password accounts are not verified) …
  const squatter = await register(app, 'boss@squat.example.com')
  t.equal(squatter.status, 201)
  // … and is invited by the workspace owner, who means the address's real owner.
  const invited = await upsert(app, as(alice), { email: 'boss@squat.example.com', role: 'manager' })
  t.equal(invited.statusCode, 201)
  t.match(invited.json().member, { userId: null, acceptedAt: null, role: 'manager' })
  t.equal(invited.json().inviteDelivery, 'preview')
  const asSquatter = await app.inject({ url: '/api/workspace', headers: { ...bearer(squatter.accessToken), 'x-workspace-id': String(ws) } })
  t.equal(asSquatter.statusCode, 403, 'the password account is not a member')

  // Opening the link proves the mailbox: the same account becomes the member.
  const { accessToken } = await acceptInvitation(app, invited.json().invitePreviewUrl as string, FRONTEND)
  const joined = await app.inject({ url: '/api/workspace', headers: { ...bearer(accessToken), 'x-workspace-id': String(ws) } })
  t.equal(joined.statusCode, 200)
  const row = await app.db.selectFrom('workspace_members').select(['user_id', 'accepted_at']).where('workspace_id', '=', ws).where('invite_email', '=', 'boss@squat.example.com').executeTakeFirstOrThrow()
  t.equal(row.user_id, squatter.user.id, 'the existing account joined, once the address was proven')
  t.ok(row.accepted_at !== null)
})
