import t from 'tap'
import { build } from '../helper.js'
import { bearer, registerVerified } from '../auth-helper.js'

t.test('a new user gets a personal workspace as owner, and the session starts in it', async t => {
  const app = await build(t)
  const alice = await registerVerified(app, 'alice@example.com')
  t.equal(alice.status, 201)
  const session = await app.inject({ method: 'GET', url: '/api/auth/session', headers: bearer(alice.accessToken) })
  t.equal(session.statusCode, 200)
  const body = session.json().session
  t.equal(body.user.email, 'alice@example.com')
  t.equal(body.workspaces.length, 1)
  t.equal(body.activeWorkspace.id, body.workspaces[0].id)
  t.ok(body.activeWorkspace.id >= 1001, 'numeric ids as in seed 003')
  t.equal(body.activeMembership.role, 'owner')
  t.equal(body.activeMembership.userId, alice.user.id)
  t.notOk('token' in session.json(), 'no raw token in the session answer')

  const members = await app.inject({ method: 'GET', url: '/api/workspace/members', headers: bearer(alice.accessToken) })
  t.equal(members.statusCode, 200)
  t.same(members.json().members.map((m: { role: string }) => m.role), ['owner'])
})

t.test('create a workspace, switch to it, invite a member, and an integration token', async t => {
  const app = await build(t)
  const alice = await registerVerified(app, 'alice@example.com')
  const created = await app.inject({
    method: 'POST',
    url: '/api/workspaces',
    headers: bearer(alice.accessToken),
    payload: { name: 'Rescue Flock', workspaceType: 'rescue', billingPlan: 'household_plus' }
  })
  t.equal(created.statusCode, 201)
  const workspace = created.json().workspace
  t.equal(workspace.billingPlan, 'rescue_free', 'rescue forces rescue_free')

  const switched = await app.inject({ method: 'POST', url: '/api/auth/switch-workspace', headers: bearer(alice.accessToken), payload: { workspaceId: workspace.id } })
  t.equal(switched.statusCode, 200)
  t.equal(switched.json().session.activeWorkspace.id, workspace.id)
  const token = switched.json().accessToken as string

  const current = await app.inject({ method: 'GET', url: '/api/workspace', headers: bearer(token) })
  t.equal(current.json().workspace.id, workspace.id)

  const bob = await registerVerified(app, 'bob@example.com')
  const invited = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: bearer(token), payload: { email: 'bob@example.com', role: 'staff' } })
  t.equal(invited.statusCode, 201)
  t.equal(invited.json().member.userId, bob.user.id)

  const pending = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: bearer(token), payload: { email: 'carol@example.com', role: 'viewer', name: 'Carol' } })
  t.equal(pending.statusCode, 201)
  t.equal(pending.json().member.userId, null)
  t.equal(pending.json().inviteDelivery, 'preview')

  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers: bearer(token), payload: { name: 'n8n', scope: 'read_only', expiresInDays: 90 } })
  t.equal(minted.statusCode, 201)
  const raw = minted.json().token as string
  t.match(raw, /^gtk_[A-Za-z0-9_-]{43}$/)
  const asToken = await app.inject({ method: 'GET', url: '/api/workspace/members', headers: bearer(raw) })
  t.equal(asToken.statusCode, 200)
  t.equal(asToken.json().members.length, 3)
  const write = await app.inject({ method: 'PUT', url: '/api/workspace', headers: bearer(raw), payload: { name: 'x' } })
  t.equal(write.statusCode, 403)
  t.equal(write.json().error, 'That integration token is read-only.')
  const browserOnly = await app.inject({ method: 'GET', url: '/api/workspaces', headers: bearer(raw) })
  t.equal(browserOnly.statusCode, 403)
  t.equal(browserOnly.json().error, 'This endpoint requires a browser session instead of an integration token.')

  const revoke = await app.inject({ method: 'DELETE', url: `/api/integration-tokens/${minted.json().integrationToken.id as string}`, headers: bearer(token) })
  t.equal(revoke.statusCode, 204)
  t.equal(revoke.body, '')
  const after = await app.inject({ method: 'GET', url: '/api/workspace/members', headers: bearer(raw) })
  t.equal(after.statusCode, 401)
  t.equal(after.json().error, 'Authentication required.')
})
