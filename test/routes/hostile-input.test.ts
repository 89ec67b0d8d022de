import t from 'tap'
import { admin, bearer, register } from '../auth-helper.js'
import { build } from '../helper.js'

/*
 * Input that PostgreSQL cannot take is refused with a 400 naming the field, before any query
 * runs: a NUL character in text (22021) and a number beyond the column's range (22003) used to
 * answer 500. A JSON `null` is a body, not the absence of one.
 */

const app = await build(t)
const root = await admin(app, 'root@hostile.example.com')
const auth = bearer(root.accessToken)
const NUL = 'a\u0000b'

t.test('a NUL character in any text of a body or query string is 400 naming the field, and nothing is stored', async t => {
  const cases: Array<[string, string, Record<string, unknown>, string]> = [
    ['POST', '/api/auth/register', { email: 'nul@hostile.example.com', password: 'a long enough passphrase', name: NUL }, 'name'],
    ['POST', '/api/birds', { name: NUL }, 'name'],
    ['POST', '/api/birds', { name: 'Kiwi', species: NUL }, 'species'],
    ['POST', '/api/workspaces', { name: NUL, workspaceType: 'standard', billingEmail: 'billing@hostile.example.com', billingPlan: 'household_basic' }, 'name'],
    ['POST', '/api/integration-tokens', { name: NUL, scope: 'read_only' }, 'name']
  ]
  for (const [method, url, payload, field] of cases) {
    const response = await app.inject({ method: method as 'POST', url, headers: auth, payload })
    t.equal(response.statusCode, 400, `${url} ${field}: 400`)
    t.equal(response.json().code, 'VALIDATION_FAILED')
    t.same(response.json().details, { [field]: 'must not contain NUL characters' }, `${url}: names ${field}`)
  }
  t.equal((await app.db.selectFrom('users').select('id').where('email', '=', 'nul@hostile.example.com').execute()).length, 0, 'no account was made')
  t.equal((await app.db.selectFrom('birds').select('id').execute()).length, 0, 'no bird was stored')

  for (const query of ['action=%00', 'subjectId=a%00b', 'action=x%00']) {
    const response = await app.inject({ url: `/api/admin/audit?${query}`, headers: auth })
    t.equal(response.statusCode, 400, `audit ?${query}: 400`)
    t.equal(response.json().code, 'VALIDATION_FAILED')
  }
  // A backslash followed by "u0000" is ordinary text.
  const literal = await app.inject({ method: 'POST', url: '/api/birds', headers: auth, payload: { name: '\\u0000 is not NUL' } })
  t.equal(literal.statusCode, 201)
})

t.test('numeric ids beyond PostgreSQL\'s range are 400, the largest one in range is answered as any other', async t => {
  for (const header of ['2147483648', '4294967296', '9999999999']) {
    const response = await app.inject({ url: '/api/birds', headers: { ...auth, 'x-workspace-id': header } })
    t.equal(response.statusCode, 400, `X-Workspace-Id: ${header}`)
    t.same(response.json(), { error: 'X-Workspace-Id must be a workspace id', code: 'INVALID_WORKSPACE_HEADER' })
  }
  const largest = await app.inject({ url: '/api/birds', headers: { ...auth, 'x-workspace-id': '2147483647' } })
  t.equal(largest.statusCode, 403, 'the largest workspace id: not a member')
  t.equal(largest.json().code, 'NOT_A_MEMBER')

  for (const before of ['99999999999999999999', '9007199254740992', '1e30']) {
    const response = await app.inject({ url: `/api/admin/audit?before=${before}`, headers: auth })
    t.equal(response.statusCode, 400, `audit ?before=${before}`)
  }
  t.equal((await app.inject({ url: '/api/admin/audit?before=9007199254740991', headers: auth })).statusCode, 200, 'the largest safe id')

  for (const body of [{ workspaceId: 2_147_483_648 }, { workspaceId: 1e20 }]) {
    const response = await app.inject({ method: 'POST', url: '/api/auth/switch-workspace', headers: auth, payload: body })
    t.equal(response.statusCode, 400, `switch-workspace ${String(body.workspaceId)}`)
  }
  const live = await app.inject({ url: '/api/ws?workspaceId=2147483648', headers: auth })
  t.not(live.statusCode, 500, 'the WebSocket route bounds ?workspaceId too')
})

t.test('a JSON null is a body: refresh and logout refuse it instead of treating it as none', async t => {
  const user = await register(app, 'null@hostile.example.com')
  for (const url of ['/api/auth/refresh', '/api/auth/logout']) {
    const response = await app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json', ...bearer(user.accessToken) }, payload: 'null' })
    t.equal(response.statusCode, 400, `${url}: 400`)
    t.equal(response.json().code, 'VALIDATION_FAILED')
  }
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(user.accessToken) })).statusCode, 200, 'the session was not ended')
})
