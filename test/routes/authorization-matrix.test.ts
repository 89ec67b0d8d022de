import { randomUUID } from 'node:crypto'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { bearer, login, registerVerified } from '../auth-helper.js'
import { build } from '../helper.js'

/*
 * Issue 5, "Test it as a matrix": every protected route of the tenancy feature (and the
 * session-only routes that must refuse integration tokens) × every kind of caller, checked
 * against ONE table of expected answers. Workspace A is owned by `owner`; viewer, staff and
 * manager are members of A whose sessions were switched to A; `owner of another workspace`
 * owns workspace B only; the integration tokens are the A owner's (or, "of another
 * workspace", B's owner's). Ids in the id-routes (member, integration token) are A's, made
 * fresh for every cell, so a 204 never takes a resource another cell needs.
 *
 * The domain (issue 6): the bird-id routes name one bird of A (`bird`), except DELETE, which
 * deletes a fresh bird of A in every cell; B has a bird and an outgoing transfer of its own, so
 * that B's lists are not empty and "200 B" says that none of A's birds or transfers are in
 * them. A bird (weight, vet visit) names the workspace the test made the bird in, whatever its
 * workspaceId says; a transfer names its source workspace. The matrix app has no image storage.
 *
 * Each cell is "<status>[ <what>]":
 *   200 A, 201 A   success, and the answer names workspace A (B: workspace B)
 *   200, 201, 204  success where the answer names no one workspace (204: empty body)
 *   401            { error: 'Authentication required.' } (seed 003's routes)
 *   401 missing    { error: 'Access token required' } (the older session routes, no header)
 *   401 invalid    { error: 'Invalid or expired token' } (the older session routes, bad token)
 *   403 browser    { error: 'This endpoint requires a browser session instead of an integration token.' }
 *   403 read-only  { error: 'That integration token is read-only.' }
 *   403 denied     { error: 'You do not have permission for that action.' } (role, or not a member)
 *   404            { error: '<Thing> not found' }: the id is not in the workspace the caller acts in,
 *                  or (integration tokens) not the caller's own
 *   503            { error: 'image storage is not configured', code: 'IMAGE_STORAGE_NOT_CONFIGURED' }:
 *                  authorized (401 and 403 come first), but no S3 store. With one, B's
 *                  principals would get 404 for A's image key (GET /api/images).
 *   ----           not run: it would end the principal's session, which later rows still use
 *                  (logout-all is the last row, so it runs for everyone)
 */

const PRINCIPALS = [
  'no auth', 'expired token', 'viewer', 'staff', 'manager', 'owner', 'owner of another workspace',
  'read-only token', 'read-write token', 'token of another workspace', 'revoked token'
] as const
type Principal = typeof PRINCIPALS[number]

type Cell = '200 A' | '200 B' | '201 A' | '201 B' | '200' | '201' | '204' | '401' | '401 missing' | '401 invalid' |
  '403 browser' | '403 read-only' | '403 denied' | '404' | '503' | '----'
type Row = readonly [Cell, Cell, Cell, Cell, Cell, Cell, Cell, Cell, Cell, Cell, Cell]

/* eslint-disable @stylistic/no-multi-spaces, @stylistic/key-spacing -- a table is read in columns */
const EXPECTED = {
  //                                          no auth        expired        viewer        staff         manager   owner     other owner    read-only        read-write       other token      revoked
  'GET /api/auth/session':                   ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '200 B',       '403 browser',   '403 browser',   '403 browser',   '401'],
  'POST /api/auth/switch-workspace':         ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '403 denied',  '403 browser',   '403 browser',   '403 browser',   '401'],
  'POST /api/session/set-active-tenant':     ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '403 denied',  '403 browser',   '403 browser',   '403 browser',   '401'],
  'GET /api/workspaces':                     ['401',         '401',         '200',        '200',        '200',    '200',    '200',         '403 browser',   '403 browser',   '403 browser',   '401'],
  'POST /api/workspaces':                    ['401',         '401',         '201',        '201',        '201',    '201',    '201',         '403 browser',   '403 browser',   '403 browser',   '401'],
  'GET /api/workspace':                      ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '200 B',       '200 A',         '200 A',         '200 B',         '401'],
  'PUT /api/workspace':                      ['401',         '401',         '403 denied', '403 denied', '200 A',  '200 A',  '200 B',       '403 read-only', '200 A',         '200 B',         '401'],
  'GET /api/workspace/members':              ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '200 B',       '200 A',         '200 A',         '200 B',         '401'],
  'POST /api/workspace/members':             ['401',         '401',         '403 denied', '403 denied', '201 A',  '201 A',  '201 B',       '403 read-only', '201 A',         '201 B',         '401'],
  'DELETE /api/workspace/members/:memberId': ['401',         '401',         '403 denied', '403 denied', '204',    '204',    '404',         '403 read-only', '204',           '404',           '401'],
  'POST /api/integration-tokens':            ['401',         '401',         '201 A',      '201 A',      '201 A',  '201 A',  '201 B',       '403 browser',   '403 browser',   '403 browser',   '401'],
  'GET /api/integration-tokens':             ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '200 B',       '403 browser',   '403 browser',   '403 browser',   '401'],
  'DELETE /api/integration-tokens/:tokenId': ['401',         '401',         '404',        '404',        '404',    '204',    '404',         '403 browser',   '403 browser',   '403 browser',   '401'],
  'POST /api/birds':                         ['401',         '401',         '403 denied', '201 A',      '201 A',  '201 A',  '201 B',       '403 read-only', '201 A',         '201 B',         '401'],
  'GET /api/birds':                          ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '200 B',       '200 A',         '200 A',         '200 B',         '401'],
  'PUT /api/birds/:birdId':                  ['401',         '401',         '403 denied', '200 A',      '200 A',  '200 A',  '404',         '403 read-only', '200 A',         '404',           '401'],
  'DELETE /api/birds/:birdId':               ['401',         '401',         '403 denied', '204',        '204',    '204',    '404',         '403 read-only', '204',           '404',           '401'],
  'POST /api/birds/:birdId/weights':         ['401',         '401',         '403 denied', '201 A',      '201 A',  '201 A',  '404',         '403 read-only', '201 A',         '404',           '401'],
  'GET /api/birds/:birdId/weights':          ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '404',         '200 A',         '200 A',         '404',           '401'],
  'POST /api/birds/:birdId/vet-visits':      ['401',         '401',         '403 denied', '201 A',      '201 A',  '201 A',  '404',         '403 read-only', '201 A',         '404',           '401'],
  'GET /api/birds/:birdId/vet-visits':       ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '404',         '200 A',         '200 A',         '404',           '401'],
  'POST /api/transfers/draft':               ['401',         '401',         '403 denied', '201 A',      '201 A',  '201 A',  '404',         '403 read-only', '201 A',         '404',           '401'],
  'GET /api/transfers':                      ['401',         '401',         '200 A',      '200 A',      '200 A',  '200 A',  '200 B',       '200 A',         '200 A',         '200 B',         '401'],
  'POST /api/images/upload':                 ['401',         '401',         '403 denied', '503',        '503',    '503',    '503',         '403 read-only', '503',           '503',           '401'],
  'GET /api/images':                         ['401',         '401',         '503',        '503',        '503',    '503',    '503',         '503',           '503',           '503',           '401'],
  'GET /api/auth/me':                        ['401 missing', '401 invalid', '200',        '200',        '200',    '200',    '200',         '403 browser',   '403 browser',   '403 browser',   '401 invalid'],
  'GET /api/auth/sessions':                  ['401 missing', '401 invalid', '200',        '200',        '200',    '200',    '200',         '403 browser',   '403 browser',   '403 browser',   '401 invalid'],
  'POST /api/auth/logout':                   ['200',         '200',         '----',       '----',       '----',   '----',   '----',        '403 browser',   '403 browser',   '403 browser',   '200'],
  'POST /api/auth/logout-all':               ['401 missing', '401 invalid', '200',        '200',        '200',    '200',    '200',         '403 browser',   '403 browser',   '403 browser',   '401 invalid']
} as const satisfies Record<string, Row>
/* eslint-enable @stylistic/no-multi-spaces, @stylistic/key-spacing */

type RouteKey = keyof typeof EXPECTED

const ERRORS: Record<string, string> = {
  401: 'Authentication required.',
  '401 missing': 'Access token required',
  '401 invalid': 'Invalid or expired token',
  '403 browser': 'This endpoint requires a browser session instead of an integration token.',
  '403 read-only': 'That integration token is read-only.',
  '403 denied': 'You do not have permission for that action.',
  503: 'image storage is not configured'
}
/** The codes a cell also checks. */
const CODES: Record<string, string> = { 503: 'IMAGE_STORAGE_NOT_CONFIGURED' }

interface Call { url: string, payload?: Record<string, unknown> }

/** How a row is called, and which workspace(s) its answer names (for "200 A"-style cells). */
interface Route {
  call: () => Call | Promise<Call>
  workspaces?: (body: any) => number[]
  /** The 404 text of an id-route. */
  notFound?: string
}

interface World {
  app: FastifyInstance
  A: number
  B: number
  tokens: Record<Principal, string | undefined>
  ownerToken: string
  /** A bird of A, for the bird-id routes that do not consume it. */
  bird: string
  /** The workspace the test made each bird in (the matrix's own POSTs excepted). */
  madeIn: Map<string, number>
}

let counter = 0
const fresh = (what: string): string => `${what}-${++counter}`

async function ok (app: FastifyInstance, method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, token: string, payload?: Record<string, unknown>, headers: Record<string, string> = {}): Promise<any> {
  const response = await app.inject({ method, url, headers: { ...bearer(token), ...headers }, ...(payload === undefined ? {} : { payload }) })
  if (response.statusCode >= 300) throw new Error(`${method} ${url}: ${response.statusCode} ${response.body}`)
  return response.body === '' ? null : response.json()
}

async function signUp (app: FastifyInstance, email: string): Promise<string> {
  const signedIn = await registerVerified(app, email)
  if (signedIn.status !== 201) throw new Error(`register ${email}: ${signedIn.status} ${signedIn.response.body}`)
  return signedIn.accessToken
}

// Distinct days back from one fixed moment (one weight per bird and day), all within GET weights' 30 days.
const START = Date.now()
let daysBack = 0
const day = (): string => new Date(START - daysBack++ * 86_400_000).toISOString().slice(0, 10)

const workspaceOfSession = async (app: FastifyInstance, token: string): Promise<number> =>
  (await ok(app, 'GET', '/api/auth/session', token)).session.activeWorkspace.id as number

/** Adds an existing user to the owner's active workspace with a role; their membership id. */
const addMember = async (app: FastifyInstance, ownerToken: string, email: string, role: string): Promise<string> =>
  (await ok(app, 'POST', '/api/workspace/members', ownerToken, { email, role })).member.id as string

/** A session token of the user, switched to the workspace. */
const switchTo = async (app: FastifyInstance, token: string, workspaceId: number): Promise<string> =>
  (await ok(app, 'POST', '/api/auth/switch-workspace', token, { workspaceId })).accessToken as string

const mintToken = async (app: FastifyInstance, token: string, scope: 'read_only' | 'read_write'): Promise<{ id: string, raw: string }> => {
  const body = await ok(app, 'POST', '/api/integration-tokens', token, { name: fresh('token'), scope })
  return { id: body.integrationToken.id, raw: body.token }
}

/** A new bird of the workspace the token acts in; its id. */
async function makeBird (app: FastifyInstance, token: string, workspaceId: number, madeIn: Map<string, number>): Promise<string> {
  const id = (await ok(app, 'POST', '/api/birds', token, { name: fresh('Bird') })).bird.id as string
  madeIn.set(id, workspaceId)
  return id
}

/** Workspace A (owner, viewer, staff, manager, integration tokens) and workspace B, and every principal's bearer. */
async function world (t: Test): Promise<World> {
  // An injectable clock, moved back an hour only while the expired token is issued.
  let skew = 0
  const app = await build(t, {}, undefined, { now: () => Date.now() + skew })

  const ownerToken = await signUp(app, 'owner@example.com')
  const A = await workspaceOfSession(app, ownerToken)
  const otherToken = await signUp(app, 'other-owner@example.com')
  const B = await workspaceOfSession(app, otherToken)

  const members: Record<'viewer' | 'staff' | 'manager', string> = { viewer: '', staff: '', manager: '' }
  for (const role of ['viewer', 'staff', 'manager'] as const) {
    const email = `${role}@example.com`
    const token = await signUp(app, email)
    await addMember(app, ownerToken, email, role)
    members[role] = await switchTo(app, token, A)
  }

  const readOnly = await mintToken(app, ownerToken, 'read_only')
  const readWrite = await mintToken(app, ownerToken, 'read_write')
  const ofB = await mintToken(app, otherToken, 'read_write')
  // Used once before it is revoked, so that it is in the verification cache when revoked.
  const revoked = await mintToken(app, ownerToken, 'read_write')
  await ok(app, 'GET', '/api/workspace', revoked.raw)
  await ok(app, 'DELETE', `/api/integration-tokens/${revoked.id}`, ownerToken)

  // A second live session of the owner, given an access token an hour ago (15 minute TTL). Its
  // own session, because logging out with an expired token ends the session it names.
  const secondSession = (await login(app, 'owner@example.com')).accessToken
  skew = -3_600_000
  const expired = await switchTo(app, secondSession, A)
  skew = 0
  const { exp } = JSON.parse(Buffer.from(expired.split('.')[1]!, 'base64url').toString()) as { exp: number }
  t.ok(exp * 1000 < Date.now() - 30 * 60_000, 'the expired token expired half an hour ago or more')

  // A's bird, and B's own bird and outgoing transfer (offered to A's owner, so it is incoming there).
  const madeIn = new Map<string, number>()
  const bird = await makeBird(app, ownerToken, A, madeIn)
  const birdOfB = await makeBird(app, otherToken, B, madeIn)
  await ok(app, 'POST', '/api/transfers/draft', otherToken, { birdId: birdOfB, destinationOwnerEmail: 'owner@example.com' })

  const tokens: Record<Principal, string | undefined> = {
    'no auth': undefined,
    'expired token': expired,
    viewer: members.viewer,
    staff: members.staff,
    manager: members.manager,
    owner: ownerToken,
    'owner of another workspace': otherToken,
    'read-only token': readOnly.raw,
    'read-write token': readWrite.raw,
    'token of another workspace': ofB.raw,
    'revoked token': revoked.raw
  }
  return { app, A, B, tokens, ownerToken, bird, madeIn }
}

function routes ({ app, A, ownerToken, bird, madeIn }: World): Record<RouteKey, Route> {
  const activeWorkspace = (body: any): number[] => [body.session.activeWorkspace.id]
  const theWorkspace = (body: any): number[] => [body.workspace.id]
  const birdsIn = (birdIds: string[], workspaceIds: number[]): number[] => birdIds.map((id, i) => madeIn.get(id) ?? workspaceIds[i]!)
  const ofTheirBirds = (list: Array<{ birdId: string }>): number[] => list.map(x => madeIn.get(x.birdId) ?? 0)
  return {
    'GET /api/auth/session': { call: () => ({ url: '/api/auth/session' }), workspaces: activeWorkspace },
    'POST /api/auth/switch-workspace': { call: () => ({ url: '/api/auth/switch-workspace', payload: { workspaceId: A } }), workspaces: activeWorkspace },
    'POST /api/session/set-active-tenant': { call: () => ({ url: '/api/session/set-active-tenant', payload: { tenantId: A } }), workspaces: body => [body.activeTenantId] },
    'GET /api/workspaces': { call: () => ({ url: '/api/workspaces' }) },
    'POST /api/workspaces': { call: () => ({ url: '/api/workspaces', payload: { name: fresh('Flock') } }) },
    'GET /api/workspace': { call: () => ({ url: '/api/workspace' }), workspaces: theWorkspace },
    'PUT /api/workspace': { call: () => ({ url: '/api/workspace', payload: { name: fresh('Renamed') } }), workspaces: theWorkspace },
    'GET /api/workspace/members': { call: () => ({ url: '/api/workspace/members' }), workspaces: body => body.members.map((m: any) => m.workspaceId) },
    'POST /api/workspace/members': {
      call: () => ({ url: '/api/workspace/members', payload: { email: `${fresh('invitee')}@example.com`, role: 'viewer' } }),
      workspaces: body => [body.member.workspaceId]
    },
    'DELETE /api/workspace/members/:memberId': {
      // A fresh removable member of A (an invitation, viewer or staff) for every cell.
      call: async () => ({ url: `/api/workspace/members/${await addMember(app, ownerToken, `${fresh('removable')}@example.com`, counter % 2 === 0 ? 'viewer' : 'staff')}` }),
      notFound: 'Member not found'
    },
    'POST /api/integration-tokens': {
      call: () => ({ url: '/api/integration-tokens', payload: { name: fresh('token'), scope: 'read_only' } }),
      workspaces: body => [body.integrationToken.workspaceId]
    },
    // Runs after the POST row, so every session principal has a token to list.
    'GET /api/integration-tokens': { call: () => ({ url: '/api/integration-tokens' }), workspaces: body => body.integrationTokens.map((x: any) => x.workspaceId) },
    'DELETE /api/integration-tokens/:tokenId': {
      // A fresh live token of the A owner, in A, for every cell.
      call: async () => ({ url: `/api/integration-tokens/${(await mintToken(app, ownerToken, 'read_only')).id}` }),
      notFound: 'Integration token not found'
    },
    'POST /api/birds': { call: () => ({ url: '/api/birds', payload: { name: fresh('Bird') } }), workspaces: body => [body.bird.workspaceId] },
    'GET /api/birds': {
      call: () => ({ url: '/api/birds' }),
      workspaces: body => birdsIn(body.birds.map((b: any) => b.id), body.birds.map((b: any) => b.workspaceId))
    },
    'PUT /api/birds/:birdId': {
      call: () => ({ url: `/api/birds/${bird}`, payload: { name: fresh('Renamed bird') } }),
      workspaces: body => birdsIn([body.bird.id], [body.bird.workspaceId]),
      notFound: 'Bird not found'
    },
    'DELETE /api/birds/:birdId': {
      // A fresh bird of A for every cell.
      call: async () => ({ url: `/api/birds/${await makeBird(app, ownerToken, A, madeIn)}` }),
      notFound: 'Bird not found'
    },
    'POST /api/birds/:birdId/weights': {
      // A day of its own for every cell: a second weight on one day would be 409.
      call: () => ({ url: `/api/birds/${bird}/weights`, payload: { weightGrams: 95, recordedOn: day() } }),
      workspaces: body => ofTheirBirds([body.weight]),
      notFound: 'Bird not found'
    },
    // Runs after the POST row, so the bird has weights (and, below, vet visits) to list.
    'GET /api/birds/:birdId/weights': { call: () => ({ url: `/api/birds/${bird}/weights` }), workspaces: body => ofTheirBirds(body.weights), notFound: 'Bird not found' },
    'POST /api/birds/:birdId/vet-visits': {
      call: () => ({ url: `/api/birds/${bird}/vet-visits`, payload: { visitedOn: '2024-05-01' } }),
      workspaces: body => ofTheirBirds([body.vetVisit]),
      notFound: 'Bird not found'
    },
    'GET /api/birds/:birdId/vet-visits': { call: () => ({ url: `/api/birds/${bird}/vet-visits` }), workspaces: body => ofTheirBirds(body.vetVisits), notFound: 'Bird not found' },
    'POST /api/transfers/draft': {
      // The same bird to the same existing account in every cell: the first success drafts, the others update that draft.
      call: () => ({ url: '/api/transfers/draft', payload: { birdId: bird, destinationOwnerEmail: 'other-owner@example.com' } }),
      workspaces: body => [body.transfer.sourceWorkspaceId, ...birdsIn([body.bird.id], [body.bird.workspaceId])],
      notFound: 'Bird not found'
    },
    // Runs after the draft row, so A has an outgoing transfer to list.
    'GET /api/transfers': { call: () => ({ url: '/api/transfers' }), workspaces: body => body.outgoing.map((x: any) => x.sourceWorkspaceId) },
    'POST /api/images/upload': { call: () => ({ url: '/api/images/upload', payload: { contentType: 'image/png', size: 100 } }) },
    'GET /api/images': { call: () => ({ url: `/api/images?key=workspaces/${A}/images/${randomUUID()}.png` }) },
    'GET /api/auth/me': { call: () => ({ url: '/api/auth/me' }) },
    'GET /api/auth/sessions': { call: () => ({ url: '/api/auth/sessions' }) },
    'POST /api/auth/logout': { call: () => ({ url: '/api/auth/logout' }) },
    'POST /api/auth/logout-all': { call: () => ({ url: '/api/auth/logout-all' }) }
  }
}

/** Checks one answer against one cell. */
function check (t: Test, world: World, cell: Exclude<Cell, '----'>, response: LightMyRequestResponse, route: Route, label: string): void {
  const [status, what] = cell.split(' ') as [string, string | undefined]
  t.equal(response.statusCode, Number(status), `${label}: status ${status}`)
  if (response.statusCode !== Number(status)) {
    t.comment(`${label}: answered ${response.statusCode} ${response.body.slice(0, 300)}`)
    return
  }
  if (status === '204') {
    t.equal(response.body, '', `${label}: empty body`)
    return
  }
  const body = response.json()
  if (Number(status) >= 400) {
    const error = status === '404' ? route.notFound : ERRORS[cell]
    t.equal(body.error, error, `${label}: error`)
    if (CODES[cell] !== undefined) t.equal(body.code, CODES[cell], `${label}: code`)
    return
  }
  if (what === 'A' || what === 'B') {
    const expected = what === 'A' ? world.A : world.B
    const named = route.workspaces!(body)
    t.ok(named.length > 0 && named.every(id => id === expected), `${label}: answers workspace ${what} (${expected}), got ${JSON.stringify(named)}`)
  }
}

t.test('the authorization matrix: every route × every principal against one table', async t => {
  const w = await world(t)
  const table = routes(w)
  let cells = 0
  for (const key of Object.keys(EXPECTED) as RouteKey[]) {
    const [method, template] = key.split(' ') as ['GET' | 'POST' | 'PUT' | 'DELETE', string]
    const route = table[key]
    for (const [index, principal] of PRINCIPALS.entries()) {
      const cell = EXPECTED[key][index]!
      if (cell === '----') continue
      const { url, payload } = await route.call()
      const token = w.tokens[principal]
      const response = await w.app.inject({
        method,
        url,
        headers: token === undefined ? {} : bearer(token),
        ...(payload === undefined ? {} : { payload })
      })
      check(t, w, cell, response, route, `${principal} ${method} ${template}`)
      cells++
    }
  }
  t.equal(cells, Object.values(EXPECTED).flat().filter(cell => cell !== '----').length, 'every cell of the table was run')

  // logout-all (the last row) ended every session principal's session at once; integration tokens live on.
  for (const principal of ['viewer', 'staff', 'manager', 'owner', 'owner of another workspace'] as const) {
    const response = await w.app.inject({ method: 'GET', url: '/api/workspace', headers: bearer(w.tokens[principal]!) })
    t.equal(response.statusCode, 401, `${principal} GET /api/workspace after logout-all`)
    t.equal(response.json().error, ERRORS['401'], `${principal} GET /api/workspace after logout-all: error`)
  }
  t.equal((await w.app.inject({ method: 'GET', url: '/api/workspace', headers: bearer(w.tokens['read-write token']!) })).statusCode, 200,
    'read-write token GET /api/workspace after its owner\'s logout-all')
})

t.test('outside the table (one app for both)', async t => {
  const w = await world(t)
  await t.test('X-Workspace-Id never reaches a workspace the caller is not a member of', async t => { await workspaceHeader(t, w) })
  await t.test('a role change and a removal hold from the member\'s very next request', async t => { await membershipChanges(t, w) })
})

async function workspaceHeader (t: Test, w: World): Promise<void> {
  const { app, A } = w
  const get = async (url: string, principal: Principal) =>
    await app.inject({ method: 'GET', url, headers: { ...bearer(w.tokens[principal]!), 'x-workspace-id': String(A) } })

  for (const url of ['/api/workspace', '/api/workspace/members', '/api/auth/session']) {
    const response = await get(url, 'owner of another workspace')
    t.equal(response.statusCode, 403, `owner of another workspace GET ${url} with X-Workspace-Id: A`)
    t.equal(response.json().error, ERRORS['403 denied'], `owner of another workspace GET ${url} with X-Workspace-Id: A: error`)
  }
  for (const url of ['/api/workspace', '/api/workspace/members']) {
    const response = await get(url, 'token of another workspace')
    t.equal(response.statusCode, 403, `token of another workspace GET ${url} with X-Workspace-Id: A`)
    t.equal(response.json().error, ERRORS['403 denied'], `token of another workspace GET ${url} with X-Workspace-Id: A: error`)
  }

  // Controls: the header does reach A for a member of A, from a session in another workspace.
  const personal = (await login(app, 'viewer@example.com')).accessToken
  t.not(await workspaceOfSession(app, personal), A, 'the viewer\'s new session starts outside A')
  const inA = await app.inject({ method: 'GET', url: '/api/workspace', headers: { ...bearer(personal), 'x-workspace-id': String(A) } })
  t.equal(inA.statusCode, 200, 'a member of A with X-Workspace-Id: A')
  t.equal(inA.json().workspace.id, A, 'a member of A with X-Workspace-Id: A acts in A')
  const ownToken = await get('/api/workspace', 'read-write token')
  t.equal(ownToken.statusCode, 200, 'an integration token of A with X-Workspace-Id: A')
  t.equal(ownToken.json().workspace.id, A, 'an integration token of A with X-Workspace-Id: A acts in A')
}

async function membershipChanges (t: Test, w: World): Promise<void> {
  const { app, A, ownerToken } = w
  const put = async (token: string) => await app.inject({ method: 'PUT', url: '/api/workspace', headers: bearer(token), payload: { name: fresh('Renamed') } })
  const get = async (token: string) => await app.inject({ method: 'GET', url: '/api/workspace', headers: bearer(token) })

  // viewer → manager → viewer; its session and a token it made while manager follow each change.
  const viewer = w.tokens.viewer!
  let response = await put(viewer)
  t.equal(response.statusCode, 403, 'viewer PUT /api/workspace')
  t.equal(response.json().error, ERRORS['403 denied'], 'viewer PUT /api/workspace: error')
  await ok(app, 'POST', '/api/workspace/members', ownerToken, { email: 'viewer@example.com', role: 'manager' })
  response = await put(viewer)
  t.equal(response.statusCode, 200, 'promoted to manager: PUT /api/workspace on the very next request')
  const token = await mintToken(app, viewer, 'read_write')
  t.equal((await put(token.raw)).statusCode, 200, 'a read-write token of the manager writes')
  await ok(app, 'POST', '/api/workspace/members', ownerToken, { email: 'viewer@example.com', role: 'viewer' })
  response = await put(viewer)
  t.equal(response.statusCode, 403, 'demoted to viewer: refused on the very next request')
  t.equal(response.json().error, ERRORS['403 denied'], 'demoted to viewer: refused on the very next request: error')
  response = await put(token.raw)
  t.equal(response.statusCode, 403, 'demoted to viewer: their read-write token is refused too (a token never does more than its member)')
  t.equal(response.json().error, ERRORS['403 denied'], 'demoted to viewer: their read-write token is refused too (a token never does more than its member): error')

  // A removed member: their session is refused, their integration tokens are dead.
  const staff = w.tokens.staff!
  const members = (await ok(app, 'GET', '/api/workspace/members', ownerToken)).members as Array<{ id: string, inviteEmail: string }>
  const staffMember = members.find(m => m.inviteEmail === 'staff@example.com')!
  const staffToken = await mintToken(app, staff, 'read_write')
  t.equal((await get(staff)).statusCode, 200, 'staff GET /api/workspace before the removal')
  t.equal((await get(staffToken.raw)).statusCode, 200, 'staff\'s token GET /api/workspace before the removal')
  await ok(app, 'DELETE', `/api/workspace/members/${staffMember.id}`, ownerToken)
  response = await get(staff)
  t.equal(response.statusCode, 403, 'removed: GET /api/workspace on the very next request')
  t.equal(response.json().error, ERRORS['403 denied'], 'removed: GET /api/workspace on the very next request: error')
  response = await app.inject({ method: 'GET', url: '/api/workspace/members', headers: { ...bearer(staff), 'x-workspace-id': String(A) } })
  t.equal(response.statusCode, 403, 'removed: GET /api/workspace/members with X-Workspace-Id: A')
  t.equal(response.json().error, ERRORS['403 denied'], 'removed: GET /api/workspace/members with X-Workspace-Id: A: error')
  response = await get(staffToken.raw)
  t.equal(response.statusCode, 401, 'removed: their integration token')
  t.equal(response.json().error, ERRORS['401'], 'removed: their integration token: error')
}
