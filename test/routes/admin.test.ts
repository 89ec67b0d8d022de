import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { admin, bearer, login, PASSWORD, register } from '../auth-helper.js'
import { build, redisUrl } from '../helper.js'

/*
 * The first admin (bootstrap, seed 004) and global administration: the user list, role and
 * activation changes (deactivation ends every session at once) and the audit log.
 */

const USER_AGENT = 'gatehouse-admin-test/1.0'
const UA = { 'user-agent': USER_AGENT }

async function bootstrap (app: FastifyInstance, payload: Record<string, unknown>, headers: Record<string, string> = {}) {
  return await app.inject({ method: 'POST', url: '/api/auth/bootstrap', payload, headers })
}

async function userRow (app: FastifyInstance, email: string) {
  return await app.db.selectFrom('users').selectAll().where('email', '=', email).executeTakeFirstOrThrow()
}

async function patchUser (app: FastifyInstance, token: string, id: string, payload: unknown) {
  return await app.inject({ method: 'PATCH', url: `/api/admin/users/${id}`, headers: bearer(token), payload: payload as Record<string, unknown> })
}

async function auditActions (app: FastifyInstance, action: string) {
  return await app.db.selectFrom('audit_log').selectAll().where('action', '=', action).execute()
}

t.test('bootstrap creates the first ADMIN once; a second bootstrap is 409 ADMIN_EXISTS', async t => {
  const app = await build(t)
  const response = await bootstrap(app, { email: 'Root@Example.COM', password: PASSWORD, name: 'Root' })
  t.equal(response.statusCode, 201)
  const body = response.json()
  t.equal(body.message, 'Admin user created successfully')
  t.match(body.user, { email: 'root@example.com', name: 'Root', role: 'ADMIN', isActive: true, emailVerified: false })
  t.notOk('accessToken' in body, 'bootstrap does not sign in')
  t.notOk(JSON.stringify(body).includes('$argon2'), 'no password hash in the answer')

  const row = await userRow(app, 'root@example.com')
  t.equal(row.id, body.user.id)
  t.equal(row.role, 'ADMIN')
  t.equal(row.is_active, true)
  t.ok(row.password_hash?.startsWith('$argon2id$'), 'the password is stored as an argon2id hash')
  t.not(row.password_hash, PASSWORD)

  const again = await bootstrap(app, { email: 'second@example.com', password: PASSWORD })
  t.equal(again.statusCode, 409)
  t.same(again.json(), { error: 'An admin user already exists', code: 'ADMIN_EXISTS' })
  const users = await app.db.selectFrom('users').select(['email', 'role']).execute()
  t.same(users, [{ email: 'root@example.com', role: 'ADMIN' }], 'the second bootstrap stored nothing')

  t.equal((await login(app, 'root@example.com')).status, 200, 'the admin can sign in')
})

if (redisUrl !== undefined) {
  // Production refuses to start without Redis, so these run only where Redis answers.
  t.test('bootstrap in production is 404 unless ALLOW_BOOTSTRAP=true', async t => {
    t.test('without ALLOW_BOOTSTRAP', async t => {
      const app = await build(t, { NODE_ENV: 'production' })
      const response = await bootstrap(app, { email: 'root@example.com', password: PASSWORD })
      t.equal(response.statusCode, 404)
      t.same(response.json(), { error: 'Route not found', code: 'NOT_FOUND' })
      t.equal((await app.db.selectFrom('users').select('id').execute()).length, 0, 'no user was created')
    })

    t.test('with ALLOW_BOOTSTRAP=true', async t => {
      const app = await build(t, { NODE_ENV: 'production', ALLOW_BOOTSTRAP: 'true' })
      const response = await bootstrap(app, { email: 'root@example.com', password: PASSWORD })
      t.equal(response.statusCode, 201)
      t.equal(response.json().message, 'Admin user created successfully')
      t.equal(response.json().user.role, 'ADMIN')
      t.equal((await userRow(app, 'root@example.com')).role, 'ADMIN')
      t.equal((await bootstrap(app, { email: 'other@example.com', password: PASSWORD })).statusCode, 409, 'still only once')
    })
  })
}

t.test('bootstrap refuses weak or common passwords and a taken e-mail', async t => {
  const app = await build(t)
  const short = await bootstrap(app, { email: 'root@example.com', password: 'short' })
  t.equal(short.statusCode, 400)
  t.same(short.json(), {
    error: 'Password must be at least 8 characters long',
    code: 'WEAK_PASSWORD',
    details: { password: 'Password must be at least 8 characters long' }
  })
  const common = await bootstrap(app, { email: 'root@example.com', password: 'password123' })
  t.equal(common.statusCode, 400)
  t.equal(common.json().code, 'WEAK_PASSWORD')
  t.equal(common.json().error, 'Password is too common; choose a less guessable one')
  t.equal((await app.db.selectFrom('users').select('id').execute()).length, 0, 'no user was created')

  const member = await register(app, 'member@example.com')
  t.equal(member.status, 201)
  const taken = await bootstrap(app, { email: 'MEMBER@example.com', password: PASSWORD })
  t.equal(taken.statusCode, 409)
  t.same(taken.json(), { error: 'Email already registered', code: 'EMAIL_TAKEN' })
  const row = await userRow(app, 'member@example.com')
  t.equal(row.role, 'MEMBER', 'the existing account was not promoted')
  t.equal((await app.db.selectFrom('users').select('id').where('role', '=', 'ADMIN').execute()).length, 0)
})

t.test('the admin routes: 403 ADMIN_REQUIRED for a member, 401 TOKEN_REQUIRED without a token', async t => {
  const app = await build(t)
  await admin(app)
  const member = await register(app, 'member@example.com')
  t.equal(member.status, 201)
  const requests = [
    { method: 'GET' as const, url: '/api/admin/users' },
    { method: 'PATCH' as const, url: `/api/admin/users/${member.user.id}`, payload: { role: 'ADMIN' } },
    { method: 'GET' as const, url: '/api/admin/audit' }
  ]
  for (const request of requests) {
    const forbidden = await app.inject({ ...request, headers: bearer(member.accessToken) })
    t.equal(forbidden.statusCode, 403, `${request.method} ${request.url} as a member`)
    t.same(forbidden.json(), { error: 'Admin access required', code: 'ADMIN_REQUIRED' })

    const anonymous = await app.inject(request)
    t.equal(anonymous.statusCode, 401, `${request.method} ${request.url} without a token`)
    t.same(anonymous.json(), { error: 'Access token required', code: 'TOKEN_REQUIRED' })

    const invalid = await app.inject({ ...request, headers: bearer('a.b.c') })
    t.equal(invalid.statusCode, 401, `${request.method} ${request.url} with a bad token`)
    t.equal(invalid.json().code, 'TOKEN_INVALID')
  }
  t.equal((await userRow(app, 'member@example.com')).role, 'MEMBER', 'the member did not promote itself')
  t.equal((await auditActions(app, 'admin.user_updated')).length, 0)
})

t.test('an admin lists users with total, limit/offset pagination and search, never with password hashes', async t => {
  const app = await build(t)
  const root = await admin(app)
  for (const name of ['alice', 'bob', 'carol', 'dave']) {
    t.equal((await register(app, `${name}@example.com`)).status, 201)
  }
  t.equal((await register(app, 'erin@other.test')).status, 201)

  const all = await app.inject({ url: '/api/admin/users', headers: bearer(root.accessToken) })
  t.equal(all.statusCode, 200)
  const body = all.json()
  t.equal(body.total, 6)
  t.equal(body.limit, 50)
  t.equal(body.offset, 0)
  t.same(body.users.map((user: { email: string }) => user.email).sort(),
    ['admin@example.com', 'alice@example.com', 'bob@example.com', 'carol@example.com', 'dave@example.com', 'erin@other.test'])
  t.equal(body.users.find((user: { email: string }) => user.email === 'admin@example.com').role, 'ADMIN')
  for (const user of body.users) {
    t.same(Object.keys(user).sort(), [
      'avatarUrl', 'createdAt', 'email', 'emailVerified', 'familyName', 'givenName', 'id', 'isActive',
      'lastLoginAt', 'name', 'preferredUsername', 'profilePictureUrl', 'role'
    ], `${user.email}: the public user object only`)
  }
  t.notOk(/argon2|password/i.test(all.body), 'no password hash anywhere in the answer')

  const pages = []
  for (const offset of [0, 2, 4]) {
    const page = await app.inject({ url: `/api/admin/users?limit=2&offset=${offset}`, headers: bearer(root.accessToken) })
    t.equal(page.statusCode, 200)
    t.match(page.json(), { total: 6, limit: 2, offset })
    t.equal(page.json().users.length, 2)
    pages.push(...page.json().users.map((user: { id: string }) => user.id))
  }
  t.equal(new Set(pages).size, 6, 'the pages do not overlap and cover every user')
  t.same(pages, body.users.map((user: { id: string }) => user.id), 'the same order as the full list')
  const past = await app.inject({ url: '/api/admin/users?limit=2&offset=10', headers: bearer(root.accessToken) })
  t.match(past.json(), { users: [], total: 6 })

  const search = await app.inject({ url: '/api/admin/users?search=OTHER.te', headers: bearer(root.accessToken) })
  t.equal(search.statusCode, 200)
  t.equal(search.json().total, 1)
  t.same(search.json().users.map((user: { email: string }) => user.email), ['erin@other.test'])
  const byPart = await app.inject({ url: '/api/admin/users?search=example.com&limit=1', headers: bearer(root.accessToken) })
  t.equal(byPart.json().total, 5, 'total counts every match, not the page')
  t.equal(byPart.json().users.length, 1)
  const wildcard = await app.inject({ url: '/api/admin/users?search=%25', headers: bearer(root.accessToken) })
  t.equal(wildcard.json().total, 0, 'LIKE wildcards in the search are literal')

  const bad = await app.inject({ url: '/api/admin/users?limit=0', headers: bearer(root.accessToken) })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'VALIDATION_FAILED')
})

t.test('the last active admin cannot be demoted or deactivated; with a second admin it can', async t => {
  const app = await build(t)
  const root = await admin(app)
  const member = await register(app, 'member@example.com')
  const before = await userRow(app, 'admin@example.com')

  for (const change of [{ role: 'MEMBER' }, { isActive: false }, { role: 'MEMBER', isActive: false }]) {
    const refused = await patchUser(app, root.accessToken, root.user.id, change)
    t.equal(refused.statusCode, 409, `refuses ${JSON.stringify(change)}`)
    t.same(refused.json(), { error: 'Cannot remove the last active admin', code: 'LAST_ADMIN' })
  }
  const after = await userRow(app, 'admin@example.com')
  t.same(after, before, 'nothing changed in the database')
  t.equal((await auditActions(app, 'admin.user_updated')).length, 0, 'nothing audited')

  const promoted = await patchUser(app, root.accessToken, member.user.id, { role: 'ADMIN' })
  t.equal(promoted.statusCode, 200)
  t.match(promoted.json().user, { id: member.user.id, role: 'ADMIN', isActive: true })
  t.equal((await userRow(app, 'member@example.com')).role, 'ADMIN')

  // The promotion counts at once, with the member's existing token.
  const list = await app.inject({ url: '/api/admin/users', headers: bearer(member.accessToken) })
  t.equal(list.statusCode, 200, 'the promoted user is an admin without signing in again')

  const demoted = await patchUser(app, member.accessToken, root.user.id, { role: 'MEMBER' })
  t.equal(demoted.statusCode, 200)
  t.equal(demoted.json().user.role, 'MEMBER')
  t.equal((await userRow(app, 'admin@example.com')).role, 'MEMBER')
  const formerAdmin = await app.inject({ url: '/api/admin/users', headers: bearer(root.accessToken) })
  t.equal(formerAdmin.statusCode, 403, 'the demotion counts at once too')
  t.equal(formerAdmin.json().code, 'ADMIN_REQUIRED')

  const last = await patchUser(app, member.accessToken, member.user.id, { role: 'MEMBER' })
  t.equal(last.statusCode, 409, 'the new admin is now the last one')
  t.equal(last.json().code, 'LAST_ADMIN')

  const events = await auditActions(app, 'admin.user_updated')
  t.equal(events.length, 2)
})

t.test('deactivation ends the user\'s sessions at once; reactivation lets them sign in again', async t => {
  const app = await build(t)
  const root = await admin(app)
  const member = await register(app, 'member@example.com')
  const second = await login(app, 'member@example.com')
  t.equal(second.status, 200)
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(member.accessToken) })).statusCode, 200)

  const deactivated = await patchUser(app, root.accessToken, member.user.id, { isActive: false })
  t.equal(deactivated.statusCode, 200)
  t.match(deactivated.json().user, { id: member.user.id, isActive: false, role: 'MEMBER' })
  t.equal((await userRow(app, 'member@example.com')).is_active, false)

  // The sessions are revoked: their access tokens are refused at once, saying why.
  for (const token of [member.accessToken, second.accessToken]) {
    const me = await app.inject({ url: '/api/auth/me', headers: bearer(token) })
    t.equal(me.statusCode, 403, 'the existing access token is refused right away')
    t.same(me.json(), { error: 'User account is inactive', code: 'USER_INACTIVE' })
  }

  const refresh = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: member.refreshToken } })
  t.equal(refresh.statusCode, 401)
  t.equal(refresh.json().code, 'INVALID_REFRESH_TOKEN')

  const refused = await login(app, 'member@example.com')
  t.equal(refused.status, 403)
  t.same(refused.response.json(), { error: 'User account is inactive', code: 'USER_INACTIVE' })

  const sessions = await app.db.selectFrom('sessions').selectAll().where('user_id', '=', member.user.id).execute()
  t.equal(sessions.length, 2, 'register and login made one session each; the refused login made none')
  for (const session of sessions) {
    t.ok(session.revoked_at !== null, 'revoked_at is set')
    t.equal(session.revoked_reason, 'user_deactivated')
  }
  const adminSessions = await app.db.selectFrom('sessions').selectAll().where('user_id', '=', root.user.id).execute()
  t.ok(adminSessions.every(session => session.revoked_at === null), 'the admin\'s sessions are untouched')
  const revokedEvent = (await auditActions(app, 'session.revoked')).find(event => event.subject_id === member.user.id)
  t.match(revokedEvent, { actor_user_id: root.user.id, details: { reason: 'user_deactivated', sessions: 2 } })

  const reactivated = await patchUser(app, root.accessToken, member.user.id, { isActive: true })
  t.equal(reactivated.statusCode, 200)
  t.equal(reactivated.json().user.isActive, true)
  const again = await login(app, 'member@example.com')
  t.equal(again.status, 200, 'the member can sign in again')
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(again.accessToken) })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/auth/me', headers: bearer(member.accessToken) })).statusCode, 401, 'the old sessions stay ended')
  const oldRefresh = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: member.refreshToken } })
  t.equal(oldRefresh.statusCode, 401)
})

t.test('PATCH /api/admin/users/:id: unknown user or malformed id 404, bad bodies 400', async t => {
  const app = await build(t)
  const root = await admin(app)
  const member = await register(app, 'member@example.com')
  const before = await userRow(app, 'member@example.com')

  const unknown = await patchUser(app, root.accessToken, randomUUID(), { isActive: false })
  t.equal(unknown.statusCode, 404)
  t.same(unknown.json(), { error: 'User not found', code: 'NOT_FOUND' })

  const empty = await patchUser(app, root.accessToken, member.user.id, {})
  t.equal(empty.statusCode, 400, 'an empty body')
  t.equal(empty.json().code, 'VALIDATION_FAILED')
  t.equal(empty.json().error, 'Invalid user update payload')

  const badValue = await patchUser(app, root.accessToken, member.user.id, { role: 'OWNER', isActive: 'no' })
  t.equal(badValue.statusCode, 400, 'values outside the schema')
  t.equal(badValue.json().code, 'VALIDATION_FAILED')
  t.ok(badValue.json().details.role, 'names role')
  t.ok(badValue.json().details.isActive, 'names isActive')

  // A URL that names no user: what an unknown id gets (issue 13, test/routes/ids.test.ts).
  const badId = await patchUser(app, root.accessToken, 'not-a-uuid', { isActive: false })
  t.equal(badId.statusCode, 404, 'a malformed id')
  t.same(badId.json(), { error: 'User not found', code: 'NOT_FOUND' })

  t.same(await userRow(app, 'member@example.com'), before, 'nothing changed in the database')
  t.equal((await auditActions(app, 'admin.user_updated')).length, 0, 'nothing audited')
})

t.test('PATCH /api/admin/users/:id with unknown fields only is 400, like an empty body', async t => {
  const app = await build(t)
  const root = await admin(app)
  const member = await register(app, 'member@example.com')
  const before = await userRow(app, 'member@example.com')

  // The schema asks for at least one of isActive and role (minProperties: 1); unknown fields
  // are dropped, so what is left is an empty update.
  const unknownFields = await patchUser(app, root.accessToken, member.user.id, { email: 'evil@example.com', password_hash: 'x' })
  t.equal(unknownFields.statusCode, 400, 'a body of unknown fields only is refused like an empty one')
  t.equal(unknownFields.json().code, 'VALIDATION_FAILED')

  const row = await userRow(app, 'member@example.com')
  t.equal(row.email, 'member@example.com', 'unknown fields are never stored')
  t.equal(row.password_hash, before.password_hash, 'unknown fields are never stored')
  t.same(row, before, 'nothing changed in the database')
  t.equal((await auditActions(app, 'admin.user_updated')).length, 0, 'no admin change audited')
})

t.test('the audit log records sign-ins, sign-outs, admin changes and the bootstrap, with ip and user agent', async t => {
  const app = await build(t)
  const created = await bootstrap(app, { email: 'admin@example.com', password: PASSWORD, name: 'Admin' }, UA)
  t.equal(created.statusCode, 201)
  const adminId = created.json().user.id
  const root = await login(app, 'admin@example.com', PASSWORD, {}, UA)
  t.equal(root.status, 200)
  const member = await register(app, 'member@example.com')

  const failed = await login(app, 'member@example.com', 'not the password at all', {}, UA)
  t.equal(failed.status, 401)
  const signedIn = await login(app, 'member@example.com', PASSWORD, {}, UA)
  t.equal(signedIn.status, 200)
  const logout = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: { ...bearer(signedIn.accessToken), ...UA } })
  t.equal(logout.statusCode, 200)
  const changed = await app.inject({ method: 'PATCH', url: `/api/admin/users/${member.user.id}`, headers: { ...bearer(root.accessToken), ...UA }, payload: { role: 'ADMIN' } })
  t.equal(changed.statusCode, 200)

  const response = await app.inject({ url: '/api/admin/audit', headers: bearer(root.accessToken) })
  t.equal(response.statusCode, 200)
  const { events, nextCursor } = response.json()
  t.equal(nextCursor, null, 'everything fits on one page')
  const ids = events.map((event: { id: number }) => event.id)
  t.same(ids, [...ids].sort((a: number, b: number) => b - a), 'newest first')

  const byAction = (action: string) => events.filter((event: { action: string }) => event.action === action)
  const expected: Array<[string, Record<string, unknown>]> = [
    ['auth.bootstrap', { actorUserId: adminId, subjectType: 'user', subjectId: adminId }],
    ['auth.login_failed', { actorUserId: null, subjectType: 'user', subjectId: member.user.id, details: { email: 'member@example.com' } }],
    ['auth.login', { actorUserId: member.user.id, subjectType: 'session', details: { method: 'password', rememberMe: false } }],
    ['auth.logout', { actorUserId: member.user.id, subjectType: 'session', details: { reason: 'logout', userId: member.user.id } }],
    ['admin.user_updated', {
      actorUserId: adminId,
      subjectType: 'user',
      subjectId: member.user.id,
      details: { before: { isActive: true, role: 'MEMBER' }, after: { isActive: true, role: 'ADMIN' } }
    }]
  ]
  for (const [action, fields] of expected) {
    const matching = byAction(action).filter((event: { actorUserId: string | null, userAgent: string | null }) =>
      event.actorUserId === fields.actorUserId && event.userAgent === USER_AGENT)
    t.equal(matching.length, 1, `one ${action} event of that actor from the test's user agent`)
    t.match(matching[0], { action, ip: '127.0.0.1', userAgent: USER_AGENT, ...fields }, action)
    t.ok(Number.isFinite(Date.parse(matching[0]?.occurredAt)), `${action} has a timestamp`)
  }
  const memberLogins = byAction('auth.login').filter((event: { actorUserId: string }) => event.actorUserId === member.user.id)
  t.equal(memberLogins.length, 1)
  t.equal(byAction('auth.logout')[0].subjectId, memberLogins[0].subjectId, 'the logout ended the session of that login')

  const filtered = await app.inject({ url: '/api/admin/audit?action=auth.login', headers: bearer(root.accessToken) })
  t.equal(filtered.statusCode, 200)
  const logins = filtered.json().events
  t.equal(logins.length, 2, 'the admin\'s and the member\'s sign-ins')
  t.ok(logins.every((event: { action: string }) => event.action === 'auth.login'), 'only that action')
  const byActor = await app.inject({ url: `/api/admin/audit?actorUserId=${adminId}`, headers: bearer(root.accessToken) })
  t.ok(byActor.json().events.length > 0)
  t.ok(byActor.json().events.every((event: { actorUserId: string }) => event.actorUserId === adminId), 'only that actor')

  const first = await app.inject({ url: '/api/admin/audit?limit=1', headers: bearer(root.accessToken) })
  t.equal(first.statusCode, 200)
  t.equal(first.json().events.length, 1)
  t.equal(first.json().events[0].id, events[0].id, 'the newest event first')
  const cursor = first.json().nextCursor
  t.equal(cursor, events[0].id)
  const next = await app.inject({ url: `/api/admin/audit?limit=1&before=${cursor}`, headers: bearer(root.accessToken) })
  t.equal(next.statusCode, 200)
  t.equal(next.json().events.length, 1)
  t.not(next.json().events[0].id, first.json().events[0].id, 'the next page holds another event')
  t.equal(next.json().events[0].id, events[1].id, 'the next older one')
  t.equal(next.json().nextCursor, events[1].id)

  const oldest = events[events.length - 1]
  const end = await app.inject({ url: `/api/admin/audit?limit=5&before=${oldest.id}`, headers: bearer(root.accessToken) })
  t.same(end.json(), { events: [], nextCursor: null }, 'nothing before the oldest event')
})

t.test('register ignores role, isActive, emailVerified and id in the body (no mass assignment)', async t => {
  const app = await build(t)
  const chosenId = randomUUID()
  const signedUp = await register(app, 'sneaky@example.com', PASSWORD, { role: 'ADMIN', isActive: false, emailVerified: true, id: chosenId })
  t.equal(signedUp.status, 201)
  t.match(signedUp.user, { email: 'sneaky@example.com', role: 'MEMBER', isActive: true, emailVerified: false })
  t.not(signedUp.user.id, chosenId, 'the id is the server\'s')

  const row = await userRow(app, 'sneaky@example.com')
  t.equal(row.id, signedUp.user.id)
  t.not(row.id, chosenId)
  t.equal(row.role, 'MEMBER')
  t.equal(row.is_active, true)
  t.equal(row.email_verified, false)
  t.equal((await app.db.selectFrom('users').select('id').where('id', '=', chosenId).execute()).length, 0)

  const me = await app.inject({ url: '/api/auth/me', headers: bearer(signedUp.accessToken) })
  t.equal(me.statusCode, 200)
  t.match(me.json(), { role: 'MEMBER', isActive: true })
  const adminList = await app.inject({ url: '/api/admin/users', headers: bearer(signedUp.accessToken) })
  t.equal(adminList.statusCode, 403, 'no admin rights either')
})
