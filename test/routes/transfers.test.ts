import type { LightMyRequestResponse } from 'fastify'
import t from 'tap'
import { build } from '../helper.js'
import { acceptInvitation, bearer, register, registerVerified, type SignedIn } from '../auth-helper.js'

/*
 * Seed 003's transfer drafts (issue 6): a bird of the active workspace is offered to another
 * owner by e-mail (an address without an account gets a sign-in link), the destination sees
 * it as incoming — only with a verified address — and accepts it into a workspace of theirs,
 * where the bird arrives with all its weights and vet visits. Every refusal moves nothing;
 * concurrent accepts move the bird once.
 */

const FRONTEND = 'https://app.example.com'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
const PREVIEW_URL = /^http:\/\/localhost:3000\/api\/auth\/magic-link\/verify\?token=[A-Za-z0-9_-]{43}$/
const DRAFT_KEYS = ['bird', 'destinationOwnerEmail', 'destinationOwnerExists', 'inviteSent', 'ok', 'transfer']
const TRANSFER_KEYS = ['acceptedAt', 'birdId', 'createdAt', 'destinationOwnerEmail', 'destinationWorkspaceId', 'id', 'notes', 'sourceWorkspaceId', 'status']
const BIRD_NOT_FOUND = { error: 'Bird not found', code: 'NOT_FOUND' }
const TRANSFER_NOT_FOUND = { error: 'Transfer not found', code: 'NOT_FOUND' }
const FORBIDDEN = { error: 'You do not have permission for that action.', code: 'ROLE_NOT_ALLOWED' }
const READ_ONLY = { error: 'That integration token is read-only.', code: 'TOKEN_READ_ONLY' }
const TAG_TAKEN = { error: 'That tagId is already used in this workspace.', code: 'TAG_TAKEN' }
const SAME_WORKSPACE = { error: 'The bird is already in this workspace.', code: 'SAME_WORKSPACE' }

type Headers = Record<string, string>
type Json = Record<string, unknown>
interface TransferJson { id: string, birdId: string, status: string, destinationWorkspaceId: number | null, notes: string | null, birdName?: string, [key: string]: unknown }
interface Owner { user: SignedIn, userId: string, workspaceId: number, headers: Headers }

/** The bearer header, acting in `workspaceId` when given (seed 003's X-Workspace-Id). */
const as = (user: SignedIn | string, workspaceId?: number): Headers => ({
  ...bearer(typeof user === 'string' ? user : user.accessToken),
  ...(workspaceId === undefined ? {} : { 'x-workspace-id': String(workspaceId) })
})

/** The day `offset` days from today (UTC), YYYY-MM-DD. */
const day = (offset = 0): string => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10)

// One app for the whole file (building one costs a database clone): every test has users of its own.
const app = await build(t, { FRONTEND_URL: FRONTEND })

async function personalWorkspace (headers: Headers): Promise<number> {
  const answer = await app.inject({ url: '/api/workspace', headers })
  if (answer.statusCode !== 200) throw new Error(`GET /api/workspace: ${answer.statusCode} ${answer.body}`)
  return answer.json().workspace.id
}

/** A verified user with their personal workspace. */
async function owner (email: string): Promise<Owner> {
  const user = await registerVerified(app, email)
  if (user.status !== 201) throw new Error(`register ${email}: ${user.status}`)
  return { user, userId: user.user.id, workspaceId: await personalWorkspace(as(user)), headers: as(user) }
}

/** A further workspace owned by `who`; headers that act there. */
async function secondWorkspace (who: Owner, name: string): Promise<{ workspaceId: number, headers: Headers }> {
  const created = await app.inject({ method: 'POST', url: '/api/workspaces', headers: who.headers, payload: { name } })
  if (created.statusCode !== 201) throw new Error(`POST /api/workspaces: ${created.statusCode} ${created.body}`)
  const workspaceId = created.json().workspace.id as number
  return { workspaceId, headers: as(who.user, workspaceId) }
}

/** Makes a verified account a member of the owner's active workspace; its headers act there. */
async function member (of: Owner, email: string, role: string): Promise<{ headers: Headers, user: SignedIn }> {
  const user = await registerVerified(app, email)
  const added = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: of.headers, payload: { email, role } })
  if (added.statusCode !== 201) throw new Error(`member ${email}: ${added.statusCode} ${added.body}`)
  return { headers: as(user, of.workspaceId), user }
}

async function integrationToken (headers: Headers, scope: 'read_only' | 'read_write'): Promise<Headers> {
  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers, payload: { name: `${scope} sync`, scope } })
  if (minted.statusCode !== 201) throw new Error(`integration token: ${minted.statusCode} ${minted.body}`)
  return bearer(minted.json().token)
}

async function createBird (headers: Headers, payload: Json = { name: 'Kiwi' }): Promise<string> {
  const created = await app.inject({ method: 'POST', url: '/api/birds', headers, payload })
  if (created.statusCode !== 201) throw new Error(`POST /api/birds: ${created.statusCode} ${created.body}`)
  return created.json().bird.id
}

/** A bird with a history: three weights over the year and two vet visits. */
async function birdWithHistory (headers: Headers, payload: Json = { name: 'Kiwi' }): Promise<string> {
  const birdId = await createBird(headers, payload)
  for (const [weightGrams, offset] of [[88, -200], [90, -10], [92, 0]] as const) {
    const weight = await app.inject({ method: 'POST', url: `/api/birds/${birdId}/weights`, headers, payload: { weightGrams, recordedOn: day(offset) } })
    if (weight.statusCode !== 201) throw new Error(`weight: ${weight.statusCode} ${weight.body}`)
  }
  for (const [clinicName, offset] of [['Avian Care', -100], ['Feather Clinic', -3]] as const) {
    const visit = await app.inject({ method: 'POST', url: `/api/birds/${birdId}/vet-visits`, headers, payload: { visitedOn: day(offset), clinicName, reason: 'checkup' } })
    if (visit.statusCode !== 201) throw new Error(`visit: ${visit.statusCode} ${visit.body}`)
  }
  return birdId
}

const draft = async (headers: Headers, payload: unknown): Promise<LightMyRequestResponse> =>
  await app.inject({ method: 'POST', url: '/api/transfers/draft', headers, payload: payload as Json })
const accept = async (headers: Headers, transferId: string): Promise<LightMyRequestResponse> =>
  await app.inject({ method: 'POST', url: `/api/transfers/${transferId}/accept`, headers })

async function transfers (headers: Headers): Promise<{ incoming: TransferJson[], outgoing: TransferJson[] }> {
  const answer = await app.inject({ url: '/api/transfers', headers })
  if (answer.statusCode !== 200) throw new Error(`GET /api/transfers: ${answer.statusCode} ${answer.body}`)
  return answer.json()
}

async function drafted (headers: Headers, birdId: string, destinationOwnerEmail: string, notes?: string): Promise<TransferJson> {
  const answer = await draft(headers, { birdId, destinationOwnerEmail, ...(notes === undefined ? {} : { notes }) })
  if (answer.statusCode !== 201) throw new Error(`draft: ${answer.statusCode} ${answer.body}`)
  return answer.json().transfer
}

const rows = async (birdId: string) => await app.db.selectFrom('transfers').selectAll().where('bird_id', '=', birdId).orderBy('created_at').execute()
const birdRow = async (birdId: string) => await app.db.selectFrom('birds').selectAll().where('id', '=', birdId).executeTakeFirst()
const auditRows = async (action: string, subjectId: string) =>
  await app.db.selectFrom('audit_log').selectAll().where('action', '=', action).where('subject_id', '=', subjectId).execute()

/** The bird as GET /api/birds lists it in the caller's active workspace (undefined when not there). */
async function listedBird (headers: Headers, birdId: string): Promise<Json | undefined> {
  const answer = await app.inject({ url: '/api/birds', headers })
  return (answer.json().birds as Json[]).find(bird => bird.id === birdId)
}

t.test('a draft to an address without an account: 201, a sign-in link, the address normalized; the invitee accepts after signing in', async t => {
  const alice = await owner('alice@invite.transfer.example.com')
  const birdId = await birdWithHistory(alice.headers, { name: 'Kiwi', tagId: 'RING-1', species: 'Budgie' })
  const listed = await listedBird(alice.headers, birdId)

  const answer = await draft(alice.headers, { birdId, destinationOwnerEmail: 'New.Owner@Invite.Transfer.Example.com', notes: '  Healthy, loves millet  ' })
  t.equal(answer.statusCode, 201)
  const body = answer.json()
  t.strictSame(Object.keys(body).sort(), [...DRAFT_KEYS, 'inviteDelivery', 'invitePreviewUrl'].sort())
  t.equal(body.ok, true)
  t.strictSame(body.bird, listed, 'the bird as GET /api/birds shows it')
  t.equal(body.destinationOwnerEmail, 'new.owner@invite.transfer.example.com', 'lower-cased')
  t.equal(body.destinationOwnerExists, false)
  t.equal(body.inviteSent, true)
  t.equal(body.inviteDelivery, 'preview')
  t.match(body.invitePreviewUrl, PREVIEW_URL, 'a magic-link URL')
  const transfer = body.transfer as TransferJson
  t.strictSame(Object.keys(transfer).sort(), TRANSFER_KEYS)
  t.match(transfer, {
    id: UUID,
    birdId,
    sourceWorkspaceId: alice.workspaceId,
    destinationOwnerEmail: 'new.owner@invite.transfer.example.com',
    notes: 'Healthy, loves millet',
    status: 'pending',
    createdAt: ISO
  })
  t.equal(transfer.acceptedAt, null)
  t.equal(transfer.destinationWorkspaceId, null)
  t.match(await rows(birdId), [{ id: transfer.id, destination_email: 'new.owner@invite.transfer.example.com', status: 'pending', created_by: alice.userId }])

  const drafts = await auditRows('transfer.drafted', transfer.id)
  t.equal(drafts.length, 1, 'audited')
  t.match(drafts[0], { actor_user_id: alice.userId, subject_type: 'transfer', details: { workspaceId: alice.workspaceId, birdId, destinationExists: false } })

  // Drafting again for the same bird and address (spelled differently) updates the open draft.
  const again = await draft(alice.headers, { birdId, destinationOwnerEmail: 'NEW.OWNER@invite.transfer.example.com', notes: 'Changed my mind about the cage' })
  t.equal(again.statusCode, 201)
  t.equal(again.json().transfer.id, transfer.id, 'the same draft')
  t.equal(again.json().transfer.notes, 'Changed my mind about the cage')
  const stored = await rows(birdId)
  t.equal(stored.length, 1, 'one row')
  t.equal(stored[0]?.notes, 'Changed my mind about the cage')

  const outgoing = await transfers(alice.headers)
  t.strictSame(outgoing.incoming, [])
  t.match(outgoing.outgoing, [{ id: transfer.id, status: 'pending', notes: 'Changed my mind about the cage' }])
  t.equal(outgoing.outgoing.length, 1)

  // The invitee follows the link: a new, verified account with a workspace of its own.
  const { opened, accessToken } = await acceptInvitation(app, again.json().invitePreviewUrl, FRONTEND)
  t.equal(opened.statusCode, 302)
  t.ok(accessToken, 'signed in')
  const invitee = await app.db.selectFrom('users').selectAll().where('email', '=', 'new.owner@invite.transfer.example.com').executeTakeFirstOrThrow()
  t.equal(invitee.email_verified, true)
  const theirs = as(accessToken)
  const destination = await personalWorkspace(theirs)
  const incoming = await transfers(theirs)
  t.equal(incoming.incoming.length, 1, 'the invitee sees the offer')
  t.match(incoming.incoming[0], { id: transfer.id, birdId, birdName: 'Kiwi', status: 'pending', sourceWorkspaceId: alice.workspaceId })
  t.strictSame(incoming.outgoing, [])

  const accepted = await accept(theirs, transfer.id)
  t.equal(accepted.statusCode, 200)
  t.match(accepted.json(), { transfer: { id: transfer.id, status: 'accepted', destinationWorkspaceId: destination, acceptedAt: ISO }, bird: { id: birdId, workspaceId: destination, name: 'Kiwi', tagId: 'RING-1' } })
  t.equal((await birdRow(birdId))?.workspace_id, destination)
})

t.test('a draft to an existing verified account: no invitation; incoming for them, outgoing for the source', async t => {
  const alice = await owner('alice@existing.transfer.example.com')
  const bob = await owner('bob@existing.transfer.example.com')
  const birdId = await createBird(alice.headers, { name: 'Mango' })

  const answer = await draft(alice.headers, { birdId, destinationOwnerEmail: 'Bob@Existing.Transfer.Example.com' })
  t.equal(answer.statusCode, 201)
  const body = answer.json()
  t.strictSame(Object.keys(body).sort(), DRAFT_KEYS, 'no invitePreviewUrl, no inviteDelivery')
  t.match(body, { ok: true, destinationOwnerEmail: 'bob@existing.transfer.example.com', destinationOwnerExists: true, inviteSent: false })
  t.equal(body.transfer.notes, null, 'no notes')
  const transferId = body.transfer.id as string
  t.match(await auditRows('transfer.drafted', transferId), [{ details: { destinationExists: true } }])

  const bobs = await transfers(bob.headers)
  t.equal(bobs.incoming.length, 1)
  t.strictSame(Object.keys(bobs.incoming[0]!).sort(), [...TRANSFER_KEYS, 'birdName'].sort())
  t.match(bobs.incoming[0], { id: transferId, birdId, birdName: 'Mango', status: 'pending', destinationOwnerEmail: 'bob@existing.transfer.example.com' })
  t.strictSame(bobs.outgoing, [], 'nothing offered from bob\'s workspace')
  const alices = await transfers(alice.headers)
  t.strictSame(alices.incoming, [], 'alice is offered nothing')
  t.strictSame(alices.outgoing.map(transfer => transfer.id), [transferId])
  t.equal(await listedBird(bob.headers, birdId), undefined, 'a draft moves nothing')
})

t.test('draft refusals: another workspace\'s bird or an unknown id 404; a malformed id or bad payload 400; nothing stored', async t => {
  const alice = await owner('alice@refuse.transfer.example.com')
  const bob = await owner('bob@refuse.transfer.example.com')
  const bobsBird = await createBird(bob.headers, { name: 'Bob\'s' })
  const alicesBird = await createBird(alice.headers)
  const to = 'carol@refuse.transfer.example.com'
  const count = async () => (await app.db.selectFrom('transfers').select('id').execute()).length
  const before = await count()

  for (const birdId of [bobsBird, '00000000-0000-4000-8000-000000000000']) {
    const answer = await draft(alice.headers, { birdId, destinationOwnerEmail: to })
    t.equal(answer.statusCode, 404, `bird ${birdId}`)
    t.strictSame(answer.json(), BIRD_NOT_FOUND)
  }
  const invalid: Array<[Json, string]> = [
    [{ birdId: alicesBird, destinationOwnerEmail: 'not-an-address' }, 'destinationOwnerEmail'],
    [{ birdId: alicesBird, destinationOwnerEmail: '' }, 'destinationOwnerEmail'],
    [{ birdId: alicesBird }, 'destinationOwnerEmail'],
    [{ destinationOwnerEmail: to }, 'birdId'],
    // A malformed id in a body is a bad field, not an unknown bird.
    [{ birdId: 'not-a-uuid', destinationOwnerEmail: to }, 'birdId'],
    [{ birdId: `${alicesBird}x`, destinationOwnerEmail: to }, 'birdId'],
    [{ birdId: `urn:uuid:${alicesBird}`, destinationOwnerEmail: to }, 'birdId'],
    [{ birdId: alicesBird, destinationOwnerEmail: to, notes: 'x'.repeat(2001) }, 'notes']
  ]
  for (const [payload, field] of invalid) {
    const answer = await draft(alice.headers, payload)
    t.equal(answer.statusCode, 400, `${JSON.stringify(payload).slice(0, 70)} is refused`)
    t.equal(answer.json().error, 'Invalid transfer payload')
    t.equal(answer.json().code, 'VALIDATION_FAILED')
    t.type(answer.json().details?.[field], 'string', `details name ${field}`)
  }
  t.equal(await count(), before, 'nothing stored')
  t.equal((await birdRow(bobsBird))?.workspace_id, bob.workspaceId)
})

t.test('roles: viewers and read-only tokens cannot draft or accept; staff, managers and read-write tokens can', async t => {
  const alice = await owner('alice@roles.transfer.example.com')
  const viewer = await member(alice, 'vic@roles.transfer.example.com', 'viewer')
  const staff = await member(alice, 'sam@roles.transfer.example.com', 'staff')
  const manager = await member(alice, 'mia@roles.transfer.example.com', 'manager')
  const readOnly = await integrationToken(alice.headers, 'read_only')
  const readWrite = await integrationToken(alice.headers, 'read_write')
  const birdId = await createBird(alice.headers)
  const to = 'dest@roles.transfer.example.com'

  const byViewer = await draft(viewer.headers, { birdId, destinationOwnerEmail: to })
  t.equal(byViewer.statusCode, 403)
  t.strictSame(byViewer.json(), FORBIDDEN)
  const byToken = await draft(readOnly, { birdId, destinationOwnerEmail: to })
  t.equal(byToken.statusCode, 403)
  t.strictSame(byToken.json(), READ_ONLY)
  t.strictSame(await rows(birdId), [], 'nothing drafted')
  const unauthenticated = await draft({}, { birdId, destinationOwnerEmail: to })
  t.equal(unauthenticated.statusCode, 401)

  t.equal((await draft(staff.headers, { birdId, destinationOwnerEmail: to, notes: 'by staff' })).statusCode, 201, 'staff drafts')
  t.equal((await draft(manager.headers, { birdId, destinationOwnerEmail: 'other@roles.transfer.example.com' })).statusCode, 201, 'a manager drafts')
  t.equal((await draft(readWrite, { birdId, destinationOwnerEmail: 'third@roles.transfer.example.com' })).statusCode, 201, 'a read-write token drafts')
  const stored = await rows(birdId)
  t.equal(stored.length, 3)
  t.equal(stored[0]?.created_by, staff.user.user.id, 'created_by is the caller')

  // Viewers and read-only tokens see the outgoing list.
  t.equal((await transfers(viewer.headers)).outgoing.length, 3)
  t.equal((await transfers(readOnly)).outgoing.length, 3)

  // Accepting needs owner, manager or staff in the workspace it goes to.
  const dest = await owner(to)
  // dest is a viewer in a third workspace: accepting into it is refused.
  const third = await owner('third-owner@roles.transfer.example.com')
  const added = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: third.headers, payload: { email: to, role: 'viewer' } })
  t.equal(added.statusCode, 201)
  const transferId = stored[0]!.id
  const asViewer = await accept(as(dest.user, third.workspaceId), transferId)
  t.equal(asViewer.statusCode, 403, 'a viewer of the destination workspace cannot accept into it')
  t.strictSame(asViewer.json(), FORBIDDEN)
  const destReadOnly = await integrationToken(dest.headers, 'read_only')
  const byReadOnly = await accept(destReadOnly, transferId)
  t.equal(byReadOnly.statusCode, 403)
  t.strictSame(byReadOnly.json(), READ_ONLY)
  t.equal((await birdRow(birdId))?.workspace_id, alice.workspaceId, 'not moved')
  const byOwner = await accept(dest.headers, transferId)
  t.equal(byOwner.statusCode, 200, 'the owner of the destination workspace accepts')
})

t.test('an unverified account with the destination address sees no incoming transfer and cannot accept it', async t => {
  const alice = await owner('alice@unverified.transfer.example.com')
  const birdId = await createBird(alice.headers, { name: 'Sunny' })
  const transfer = await drafted(alice.headers, birdId, 'target@unverified.transfer.example.com')
  // Someone registers the address with a password (nothing proves it is theirs).
  const squatter = await register(app, 'target@unverified.transfer.example.com')
  t.equal(squatter.status, 201)
  const theirs = as(squatter)
  t.strictSame((await transfers(theirs)).incoming, [], 'no incoming transfers')
  const refused = await accept(theirs, transfer.id)
  t.equal(refused.statusCode, 404)
  t.strictSame(refused.json(), TRANSFER_NOT_FOUND)
  t.equal((await birdRow(birdId))?.workspace_id, alice.workspaceId, 'the bird stays')
  t.match(await rows(birdId), [{ status: 'pending' }])

  // Drafted while the unverified account exists: still invisible to it.
  const second = await createBird(alice.headers, { name: 'Cloud' })
  const later = await drafted(alice.headers, second, 'target@unverified.transfer.example.com')
  t.strictSame((await transfers(theirs)).incoming, [])
  t.equal((await accept(theirs, later.id)).statusCode, 404)
  t.equal((await birdRow(second))?.workspace_id, alice.workspaceId)
})

t.test('accept: the bird moves with all its weights and vet visits; the source loses it; twice or by another is 404', async t => {
  const alice = await owner('alice@accept.transfer.example.com')
  const bob = await owner('bob@accept.transfer.example.com')
  const carol = await owner('carol@accept.transfer.example.com')
  const birdId = await birdWithHistory(alice.headers, { name: 'Kiwi', tagId: 'RING-9' })
  const weightsBefore = (await app.inject({ url: `/api/birds/${birdId}/weights?days=365`, headers: alice.headers })).json().weights
  const visitsBefore = (await app.inject({ url: `/api/birds/${birdId}/vet-visits`, headers: alice.headers })).json().vetVisits
  t.equal(weightsBefore.length, 3)
  t.equal(visitsBefore.length, 2)
  const transfer = await drafted(alice.headers, birdId, 'bob@accept.transfer.example.com', 'with the cage')

  for (const id of ['not-a-uuid', '00000000-0000-4000-8000-000000000000']) {
    const answer = await accept(bob.headers, id)
    t.equal(answer.statusCode, 404, `transfer ${id}`)
    t.strictSame(answer.json(), TRANSFER_NOT_FOUND)
  }
  const byCarol = await accept(carol.headers, transfer.id)
  t.equal(byCarol.statusCode, 404, 'offered to someone else')
  t.strictSame(byCarol.json(), TRANSFER_NOT_FOUND)
  const byAlice = await accept(alice.headers, transfer.id)
  t.equal(byAlice.statusCode, 404, 'not even the source may accept an offer to bob')
  t.equal((await birdRow(birdId))?.workspace_id, alice.workspaceId)

  const accepted = await accept(bob.headers, transfer.id)
  t.equal(accepted.statusCode, 200)
  const body = accepted.json()
  t.strictSame(Object.keys(body).sort(), ['bird', 'transfer'])
  t.strictSame(Object.keys(body.transfer).sort(), TRANSFER_KEYS)
  t.match(body.transfer, { id: transfer.id, birdId, status: 'accepted', destinationWorkspaceId: bob.workspaceId, sourceWorkspaceId: alice.workspaceId, acceptedAt: ISO, notes: 'with the cage' })
  t.match(body.bird, { id: birdId, workspaceId: bob.workspaceId, name: 'Kiwi', tagId: 'RING-9', latestWeightGrams: 92, latestRecordedOn: day(0) })
  t.strictSame(await listedBird(bob.headers, birdId), body.bird, 'bob lists it as the answer shows it')

  const weightsAfter = await app.inject({ url: `/api/birds/${birdId}/weights?days=365`, headers: bob.headers })
  t.equal(weightsAfter.statusCode, 200)
  t.strictSame(weightsAfter.json().weights, weightsBefore, 'every weight came along')
  const visitsAfter = await app.inject({ url: `/api/birds/${birdId}/vet-visits`, headers: bob.headers })
  t.strictSame(visitsAfter.json().vetVisits, visitsBefore, 'every vet visit came along')
  const newWeight = await app.inject({ method: 'POST', url: `/api/birds/${birdId}/weights`, headers: bob.headers, payload: { weightGrams: 93, recordedOn: day(-1) } })
  t.equal(newWeight.statusCode, 201, 'bob records on it')

  t.equal(await listedBird(alice.headers, birdId), undefined, 'gone from alice\'s list')
  for (const [method, url, payload] of [
    ['GET', `/api/birds/${birdId}/weights?days=365`, undefined],
    ['GET', `/api/birds/${birdId}/vet-visits`, undefined],
    ['PUT', `/api/birds/${birdId}`, { name: 'Mine' }],
    ['POST', `/api/birds/${birdId}/weights`, { weightGrams: 50, recordedOn: day(-2) }],
    ['DELETE', `/api/birds/${birdId}`, undefined]
  ] as const) {
    const answer = await app.inject({ method, url, headers: alice.headers, ...(payload === undefined ? {} : { payload }) })
    t.equal(answer.statusCode, 404, `alice: ${method} ${url}`)
  }
  const redraft = await draft(alice.headers, { birdId, destinationOwnerEmail: 'carol@accept.transfer.example.com' })
  t.equal(redraft.statusCode, 404, 'alice can no longer offer it')

  const twice = await accept(bob.headers, transfer.id)
  t.equal(twice.statusCode, 404, 'accepting twice')
  t.strictSame(twice.json(), TRANSFER_NOT_FOUND)
  t.strictSame((await transfers(bob.headers)).incoming, [], 'no longer incoming')
  t.match((await transfers(alice.headers)).outgoing, [{ id: transfer.id, status: 'accepted', destinationWorkspaceId: bob.workspaceId }])
  t.match(await rows(birdId), [{ status: 'accepted', accepted_by: bob.userId, destination_workspace_id: bob.workspaceId }])

  const audited = await auditRows('transfer.accepted', transfer.id)
  t.equal(audited.length, 1)
  t.match(audited[0], { actor_user_id: bob.userId, subject_type: 'transfer', details: { birdId, from: alice.workspaceId, to: bob.workspaceId } })
  t.equal((await auditRows('transfer.drafted', transfer.id)).length, 1)
})

t.test('accept 409s: into the source workspace itself (SAME_WORKSPACE); a tagId taken there (TAG_TAKEN) moves nothing', async t => {
  const alice = await owner('alice@conflict.transfer.example.com')
  const sam = await member(alice, 'sam@conflict.transfer.example.com', 'staff')
  const samsOwn = await personalWorkspace(as(sam.user))
  const birdId = await birdWithHistory(alice.headers, { name: 'Kiwi', tagId: 'RING-7' })
  const transfer = await drafted(alice.headers, birdId, 'sam@conflict.transfer.example.com')

  const same = await accept(sam.headers, transfer.id)
  t.equal(same.statusCode, 409, 'sam acting in the source workspace')
  t.strictSame(same.json(), SAME_WORKSPACE)
  t.match(await rows(birdId), [{ status: 'pending' }])

  // Sam already has a bird tagged RING-7 in his own workspace.
  const samsBird = await createBird(as(sam.user), { name: 'Sam\'s', tagId: 'RING-7' })
  const taken = await accept(as(sam.user), transfer.id)
  t.equal(taken.statusCode, 409)
  t.strictSame(taken.json(), TAG_TAKEN)
  t.equal((await birdRow(birdId))?.workspace_id, alice.workspaceId, 'the bird is still in the source')
  t.match(await rows(birdId), [{ status: 'pending', accepted_at: null, destination_workspace_id: null }], 'the transfer is still pending')
  t.equal((await app.inject({ url: `/api/birds/${birdId}/weights?days=365`, headers: alice.headers })).json().weights.length, 3, 'its weights stay with it')
  t.strictSame((await transfers(as(sam.user))).incoming.map(open => open.id), [transfer.id], 'still offered')
  t.equal((await auditRows('transfer.accepted', transfer.id)).length, 0, 'nothing audited')

  t.equal((await app.inject({ method: 'PUT', url: `/api/birds/${samsBird}`, headers: as(sam.user), payload: { tagId: 'RING-7b' } })).statusCode, 200)
  const accepted = await accept(as(sam.user), transfer.id)
  t.equal(accepted.statusCode, 200, 'accepted once the tag is free')
  t.equal(accepted.json().bird.workspaceId, samsOwn)
  t.equal(accepted.json().bird.tagId, 'RING-7')
})

t.test('a bird deleted before acceptance: the offer is gone (404)', async t => {
  const alice = await owner('alice@deleted.transfer.example.com')
  const bob = await owner('bob@deleted.transfer.example.com')
  const birdId = await createBird(alice.headers)
  const transfer = await drafted(alice.headers, birdId, 'bob@deleted.transfer.example.com')
  t.equal((await transfers(bob.headers)).incoming.length, 1)
  t.equal((await app.inject({ method: 'DELETE', url: `/api/birds/${birdId}`, headers: alice.headers })).statusCode, 204)
  t.strictSame((await transfers(bob.headers)).incoming, [], 'no longer incoming')
  const answer = await accept(bob.headers, transfer.id)
  t.equal(answer.statusCode, 404)
  t.strictSame(answer.json(), TRANSFER_NOT_FOUND)
  t.equal(await birdRow(birdId), undefined, 'nothing came back')
})

t.test('two offers of one bird: when one is accepted the other is cancelled', async t => {
  const alice = await owner('alice@two.transfer.example.com')
  const bob = await owner('bob@two.transfer.example.com')
  const carol = await owner('carol@two.transfer.example.com')
  const birdId = await createBird(alice.headers)
  const toBob = await drafted(alice.headers, birdId, 'bob@two.transfer.example.com')
  const toCarol = await drafted(alice.headers, birdId, 'carol@two.transfer.example.com')
  t.not(toBob.id, toCarol.id, 'two drafts')
  t.equal((await transfers(carol.headers)).incoming.length, 1)

  t.equal((await accept(bob.headers, toBob.id)).statusCode, 200)
  t.strictSame((await transfers(carol.headers)).incoming, [], 'carol\'s offer is no longer incoming')
  const late = await accept(carol.headers, toCarol.id)
  t.equal(late.statusCode, 404)
  t.strictSame(late.json(), TRANSFER_NOT_FOUND)
  t.equal((await birdRow(birdId))?.workspace_id, bob.workspaceId)
  const outgoing = (await transfers(alice.headers)).outgoing
  t.strictSame(outgoing.map(transfer => [transfer.id, transfer.status]).sort(), [[toBob.id, 'accepted'], [toCarol.id, 'cancelled']].sort())
  t.equal(outgoing.find(transfer => transfer.id === toCarol.id)?.destinationWorkspaceId, null)

  // Bob may now offer it onwards, even to carol again.
  const onwards = await draft(bob.headers, { birdId, destinationOwnerEmail: 'carol@two.transfer.example.com' })
  t.equal(onwards.statusCode, 201)
  t.not(onwards.json().transfer.id, toCarol.id, 'a new draft, not the cancelled one')
  t.equal((await accept(carol.headers, onwards.json().transfer.id)).statusCode, 200)
  t.equal((await birdRow(birdId))?.workspace_id, carol.workspaceId)
})

t.test('concurrent accepts move the bird exactly once', async t => {
  const alice = await owner('alice@race.transfer.example.com')
  const bob = await owner('bob@race.transfer.example.com')
  const bobsOther = await secondWorkspace(bob, 'Bob\'s rescue')

  for (let round = 0; round < 3; round++) {
    // The same user from two workspaces.
    const birdId = await birdWithHistory(alice.headers, { name: `Racer ${round}` })
    const transfer = await drafted(alice.headers, birdId, 'bob@race.transfer.example.com')
    const answers = await Promise.all([accept(bob.headers, transfer.id), accept(bobsOther.headers, transfer.id)])
    const statuses = answers.map(answer => answer.statusCode)
    t.strictSame([...statuses].sort(), [200, 404], `round ${round}: one 200, one 404 (${statuses.join(', ')})`)
    const winner = answers.find(answer => answer.statusCode === 200)?.json()
    t.equal((await birdRow(birdId))?.workspace_id, winner?.transfer.destinationWorkspaceId, 'the bird is where the winner says')
    t.equal((await auditRows('transfer.accepted', transfer.id)).length, 1, 'accepted once')

    // The same user twice in one workspace.
    const second = await createBird(alice.headers, { name: `Twin ${round}` })
    const again = await drafted(alice.headers, second, 'bob@race.transfer.example.com')
    const twice = await Promise.all([accept(bob.headers, again.id), accept(bob.headers, again.id)])
    t.strictSame(twice.map(answer => answer.statusCode).sort(), [200, 404], `round ${round}: twice in one workspace`)
    t.equal((await birdRow(second))?.workspace_id, bob.workspaceId)
  }
})

t.test('concurrent accepts of two offers of one bird by two people: one wins, the other is refused (never 500)', async t => {
  const alice = await owner('alice@race2.transfer.example.com')
  const bob = await owner('bob@race2.transfer.example.com')
  const carol = await owner('carol@race2.transfer.example.com')
  for (let round = 0; round < 3; round++) {
    const birdId = await createBird(alice.headers, { name: `Contested ${round}` })
    const toBob = await drafted(alice.headers, birdId, 'bob@race2.transfer.example.com')
    const toCarol = await drafted(alice.headers, birdId, 'carol@race2.transfer.example.com')
    const answers = await Promise.all([accept(bob.headers, toBob.id), accept(carol.headers, toCarol.id)])
    const statuses = answers.map(answer => answer.statusCode)
    t.equal(statuses.filter(status => status === 200).length, 1, `round ${round}: exactly one 200 (${statuses.join(', ')}; ${answers.map(answer => answer.body).join(' | ')})`)
    t.ok(statuses.every(status => status === 200 || status === 404 || status === 409), `round ${round}: the loser gets 404 or 409`)
    const winner = statuses[0] === 200 ? bob : carol
    t.equal((await birdRow(birdId))?.workspace_id, winner.workspaceId)
    t.strictSame((await rows(birdId)).map(row => row.status).sort(), ['accepted', 'cancelled'])
  }
})
