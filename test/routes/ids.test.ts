import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyInstance, type HTTPMethods, type LightMyRequestResponse } from 'fastify'
import fp from 'fastify-plugin'
import t from 'tap'
import gatehouse, { serverOptions } from '../../src/app.js'
import { admin, bearer } from '../auth-helper.js'
import { testConfig } from '../helper.js'

/*
 * Issue 13, "malformed ids: one rule". A malformed id in the URL path answers exactly what a
 * well-formed id that does not exist answers — 404 with the route's not-found body — on every
 * route with an id (or provider key) in its path: a URL that names no resource names nothing,
 * and the answer does not tell a guessed id's shape from a missing resource. A malformed id in
 * a body or query string is a bad field: 400 VALIDATION_FAILED naming it.
 */

// Built as test/helper.ts's build() does, with one hook more: every route with a parameter in
// its path is recorded (`:name` → `:`), so that the table below cannot miss one.
const config = await testConfig(t)
const app = Fastify(serverOptions(config))
const registered = new Set<string>()
app.addHook('onRoute', route => {
  if (!route.url.includes(':')) return
  for (const method of [route.method].flat()) if (method !== 'HEAD') registered.add(`${method} ${route.url.replace(/:[A-Za-z]+/g, ':')}`)
})
await app.register(fp(gatehouse), { config })
t.teardown(async () => { await app.close() })
await app.ready()
// The caller may do everything: a global ADMIN who owns a workspace, with a verified address
// (a transfer is only ever offered to a verified one), through the public endpoints.
const root = await admin(app, 'root@ids.example.com')
await app.db.updateTable('users').set({ email_verified: true }).where('id', '=', root.user.id).execute()
app.users.forget(root.user.id)
const auth = bearer(root.accessToken)
const workspace = (await app.inject({ url: '/api/workspace', headers: auth })).json().workspace
if (workspace?.id === undefined) throw new Error('the admin has no workspace')

const today = new Date().toISOString().slice(0, 10)

/** Ids a client might send by mistake; none names a resource. */
const MALFORMED = [
  'not-a-uuid',
  '12345',
  `${randomUUID()}x`,
  randomUUID().replaceAll('-', ''),
  `urn:uuid:${randomUUID()}`,
  `{${randomUUID()}}`,
  'x'.repeat(80),
  // Longer than Fastify's default 100 characters for a path parameter (it answered 414 with its own body).
  'x'.repeat(300),
  "1' OR '1'='1",
  '%00'
]

interface IdRoute {
  method: HTTPMethods
  /** The URL with `{id}` where the id goes. */
  url: string
  /** A body the route accepts, so that only the id decides the answer. */
  payload?: Record<string, unknown>
  /** A body the route refuses (400) whatever the id: the id must not change that answer either. */
  badPayload?: Record<string, unknown>
  /** The not-found body's message. */
  notFound: string
  /** Ids for this route that are malformed (default MALFORMED) and one well-formed unknown id. */
  malformed?: string[]
  unknown?: string
  anonymous?: boolean
}

const PROVIDER_MALFORMED = ['Google', 'not a key', 'x.y', '-google', '_', 'a'.repeat(80)]

const ROUTES: IdRoute[] = [
  { method: 'PUT', url: '/api/birds/{id}', payload: { name: 'Renamed' }, badPayload: { name: 'Renamed', dateOfBirth: '2023-02-30' }, notFound: 'Bird not found' },
  { method: 'DELETE', url: '/api/birds/{id}', notFound: 'Bird not found' },
  { method: 'GET', url: '/api/birds/{id}/weights?days=30', notFound: 'Bird not found' },
  { method: 'POST', url: '/api/birds/{id}/weights', payload: { weightGrams: 92, recordedOn: today }, badPayload: { weightGrams: 92, recordedOn: '2023-02-30' }, notFound: 'Bird not found' },
  { method: 'GET', url: '/api/birds/{id}/vet-visits', notFound: 'Bird not found' },
  { method: 'POST', url: '/api/birds/{id}/vet-visits', payload: { visitedOn: today }, badPayload: { visitedOn: '2023-02-30' }, notFound: 'Bird not found' },
  { method: 'DELETE', url: '/api/workspace/members/{id}', notFound: 'Member not found' },
  { method: 'DELETE', url: '/api/integration-tokens/{id}', notFound: 'Integration token not found' },
  { method: 'POST', url: '/api/transfers/{id}/accept', notFound: 'Transfer not found' },
  { method: 'DELETE', url: '/api/auth/sessions/{id}', notFound: 'Session not found' },
  { method: 'PATCH', url: '/api/admin/users/{id}', payload: { isActive: true }, badPayload: { isActive: 'yes' }, notFound: 'User not found' },
  // Provider keys: an unconfigured provider is as unknown as a malformed key.
  ...([
    ['GET', '/api/auth/oauth/{id}/start'],
    ['GET', '/api/auth/oauth/{id}/callback?state=abc&code=def'],
    ['POST', '/api/auth/oauth/{id}/callback'],
    ['POST', '/auth/signin/{id}'],
    ['GET', '/auth/callback/{id}?state=abc'],
    ['POST', '/auth/callback/{id}']
  ] as const).map(([method, url]): IdRoute => ({
    method,
    url,
    notFound: 'Provider not found',
    malformed: PROVIDER_MALFORMED,
    unknown: 'nope',
    anonymous: true,
    ...(method === 'POST' ? { payload: { state: 'abc' } } : {})
  }))
]

const call = async (server: FastifyInstance, route: IdRoute, id: string, payload = route.payload): Promise<LightMyRequestResponse> =>
  await server.inject({
    method: route.method,
    url: route.url.replace('{id}', encodeURIComponent(id)),
    headers: route.anonymous === true ? {} : auth,
    ...(payload === undefined ? {} : { payload })
  })

t.test('every route with an id in its path: a malformed id answers what a well-formed unknown id answers', async t => {
  for (const route of ROUTES) {
    const name = `${route.method} ${route.url}`
    const unknown = await call(app, route, route.unknown ?? randomUUID())
    t.equal(unknown.statusCode, 404, `${name}: an unknown id is 404`)
    t.strictSame(unknown.json(), { error: route.notFound, code: 'NOT_FOUND' }, `${name}: the route's not-found body`)
    for (const id of route.malformed ?? MALFORMED) {
      const malformed = await call(app, route, id)
      t.equal(malformed.statusCode, unknown.statusCode, `${name} with ${JSON.stringify(id)}: the same status`)
      t.strictSame(malformed.json(), unknown.json(), `${name} with ${JSON.stringify(id)}: the same body`)
    }
    if (route.badPayload === undefined) continue
    const refused = await call(app, route, route.unknown ?? randomUUID(), route.badPayload)
    t.equal(refused.statusCode, 400, `${name}: a bad body is 400 for an unknown id`)
    for (const id of route.malformed ?? MALFORMED) {
      const malformed = await call(app, route, id, route.badPayload)
      t.strictSame([malformed.statusCode, malformed.json()], [refused.statusCode, refused.json()], `${name} with ${JSON.stringify(id)} and a bad body: the same answer`)
    }
  }
})

t.test('the table covers every route with a parameter in its path', async t => {
  const listed = new Set(ROUTES.map(route => `${route.method} ${route.url.split('?')[0]!.replace('{id}', ':')}`))
  t.ok(registered.size >= ROUTES.length, `${registered.size} routes with a path parameter`)
  for (const route of registered) t.ok(listed.has(route), `${route} is in the table`)
})

t.test('a malformed id in a body or query string is a 400 naming the field', async t => {
  const cases: Array<[string, HTTPMethods, string, Record<string, unknown> | undefined, string, string]> = [
    ['transfer draft', 'POST', '/api/transfers/draft', { birdId: 'not-a-uuid', destinationOwnerEmail: 'someone@ids.example.com' }, 'Invalid transfer payload', 'birdId'],
    ['transfer draft, urn form', 'POST', '/api/transfers/draft', { birdId: `urn:uuid:${randomUUID()}`, destinationOwnerEmail: 'someone@ids.example.com' }, 'Invalid transfer payload', 'birdId'],
    ['workspace switch', 'POST', '/api/auth/switch-workspace', { workspaceId: 'abc' }, 'Invalid workspace switch payload', 'workspaceId'],
    // Seed 003 sends the workspace id as a number; a string is not silently converted.
    ['workspace switch, numeric string', 'POST', '/api/auth/switch-workspace', { workspaceId: String(workspace.id) }, 'Invalid workspace switch payload', 'workspaceId'],
    ['tenant switch', 'POST', '/api/session/set-active-tenant', { tenantId: 'abc' }, 'Invalid tenant payload', 'tenantId'],
    ['audit log', 'GET', '/api/admin/audit?actorUserId=not-a-uuid', undefined, 'Invalid query payload', 'actorUserId'],
    ['audit log, urn form', 'GET', `/api/admin/audit?actorUserId=${encodeURIComponent(`urn:uuid:${root.user.id}`)}`, undefined, 'Invalid query payload', 'actorUserId']
  ]
  for (const [name, method, url, payload, error, field] of cases) {
    const answer = await app.inject({ method, url, headers: auth, ...(payload === undefined ? {} : { payload }) })
    t.equal(answer.statusCode, 400, name)
    t.equal(answer.json().error, error, `${name}: message`)
    t.equal(answer.json().code, 'VALIDATION_FAILED', `${name}: code`)
    t.type(answer.json().details?.[field], 'string', `${name}: details name ${field} (${JSON.stringify(answer.json().details)})`)
  }
  // Seed 000's tenant id may come as the cookie's string: that form is declared, not coerced.
  const asString = await app.inject({ method: 'POST', url: '/api/session/set-active-tenant', headers: auth, payload: { tenantId: String(workspace.id) } })
  t.equal(asString.statusCode, 200, asString.body)
})

t.test('paths the router cannot decode, or whose parameter is too long even for the route, are 404 in the one error shape', async t => {
  for (const path of ['/api/birds/%', '/api/birds/%E0%A4%A', '/api/birds/%FF', '/api/birds/%C0%AF/weights', '/api/auth/sessions/%', `/api/birds/${'x'.repeat(2000)}`, `/api/birds/<script>${'y'.repeat(2000)}`]) {
    const response = await app.inject({ url: path, headers: auth })
    t.equal(response.statusCode, 404, `${path.slice(0, 40)}: 404`)
    t.same(response.json(), { error: 'Not found', code: 'NOT_FOUND' }, 'the one body, with nothing of the path in it')
    t.equal(response.headers['x-content-type-options'], 'nosniff')
  }
})
