import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { build, twoInstancesSkip } from '../helper.js'
import { admin, bearer, cookie, login, registerVerified, type SignedIn } from '../auth-helper.js'

/*
 * Live updates over the WebSocket (issue 6, routes/ws): the upgrade is cookie-only (the
 * access_token cookie, Path /api/ws) from an allowed Origin, refused as plain HTTP before any
 * upgrade; a socket hears its workspace's changes made on ANY instance (Redis pub/sub) and
 * nothing of another workspace; it is closed with 4401 when its session ends or its access
 * token expires and with 4403 when its membership goes. Two instances A and B share the
 * database and the Redis prefix; changes are made on A, sockets listen on B.
 */

const FRONTEND = 'https://app.example.com'
const PARTNER = 'https://partner.example.com'
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
/** How long a socket must stay silent to count as "received nothing". */
const QUIET_MS = 300
/** The server checks sockets every second; a close is due within about two. */
const CLOSE_WITHIN_MS = 2_500

type Json = Record<string, unknown>
type Headers = Record<string, string>

/** An open socket with everything it has received. */
class Live {
  readonly messages: Json[] = []
  readonly closed: Promise<{ code: number, reason: string }>
  private readonly waiters = new Set<() => void>()

  constructor (readonly socket: WebSocket) {
    socket.on('message', data => {
      this.messages.push(JSON.parse(String(data)) as Json)
      for (const wake of this.waiters) wake()
    })
    this.closed = new Promise(resolve => socket.once('close', (code, reason) => { resolve({ code, reason: String(reason) }) }))
  }

  /** The first message (already received or to come) that matches, or an error after `ms`. */
  async waitFor (match: (message: Json) => boolean, what: string, ms = 3_000): Promise<Json> {
    const found = this.messages.find(match)
    if (found !== undefined) return found
    return await new Promise((resolve, reject) => {
      const wake = (): void => {
        const hit = this.messages.find(match)
        if (hit === undefined) return
        this.waiters.delete(wake)
        clearTimeout(timer)
        resolve(hit)
      }
      const timer = setTimeout(() => {
        this.waiters.delete(wake)
        reject(new Error(`no ${what} within ${ms} ms; got ${JSON.stringify(this.messages)}`))
      }, ms)
      this.waiters.add(wake)
    })
  }

  async event (type: string, id: string): Promise<Json> {
    return await this.waitFor(message => message.type === type && message.id === id, `${type} ${id}`)
  }

  /** The close code within `ms`, or 'open' when the socket is still open then. */
  async closeCode (ms = CLOSE_WITHIN_MS): Promise<number | 'open'> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<'open'>(resolve => { timer = setTimeout(() => { resolve('open') }, ms) })
    const outcome = await Promise.race([this.closed.then(closed => closed.code), timeout])
    clearTimeout(timer)
    return outcome
  }

  types (): unknown[] {
    return this.messages.map(message => message.type)
  }
}

type Handshake = { live: Live, status?: undefined, body?: undefined } | { status: number, body: Json, live?: undefined }

// Every socket of the file, closed at teardown whatever happened.
const sockets = new Set<WebSocket>()
t.teardown(() => { for (const socket of sockets) socket.terminate() })

/** Opens ws://127.0.0.1:<port>/api/ws: the open socket, or the HTTP status and body of a refusal. */
async function connect (app: FastifyInstance, headers: Headers, query = ''): Promise<Handshake> {
  const { port } = app.server.address() as { port: number }
  const socket = new WebSocket(`ws://127.0.0.1:${port}/api/ws${query}`, { headers, handshakeTimeout: 3_000 })
  sockets.add(socket)
  const live = new Live(socket)
  return await new Promise((resolve, reject) => {
    socket.once('open', () => { resolve({ live }) })
    socket.once('unexpected-response', (request, response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => { text += chunk })
      response.on('end', () => {
        request.destroy()
        let body: Json = {}
        try {
          body = JSON.parse(text) as Json
        } catch {}
        resolve({ status: response.statusCode ?? 0, body })
      })
    })
    socket.on('error', error => { reject(error) })
  })
}

/** An open socket that has received its `ready` message; fails the test otherwise. */
async function open (app: FastifyInstance, headers: Headers, query = ''): Promise<Live> {
  const handshake = await connect(app, headers, query)
  if (handshake.live === undefined) throw new Error(`upgrade refused: ${handshake.status} ${JSON.stringify(handshake.body)}`)
  await handshake.live.waitFor(message => message.type === 'ready', 'ready')
  return handshake.live
}

/** The access_token cookie that a sign-in answer set, as a browser would send it to /api/ws. */
function accessCookie (response: LightMyRequestResponse): string {
  const set = cookie(response, 'access_token')
  if (set === undefined) throw new Error('no access_token cookie')
  return `access_token=${set.value as string}`
}

const browser = (response: LightMyRequestResponse, origin = FRONTEND): Headers => ({ cookie: accessCookie(response), origin })

/** The bearer header, acting in `workspaceId` when given. */
const as = (user: SignedIn, workspaceId?: number): Headers => ({
  ...bearer(user.accessToken),
  ...(workspaceId === undefined ? {} : { 'x-workspace-id': String(workspaceId) })
})

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
const today = (): string => new Date().toISOString().slice(0, 10)

/** The claims of an access token (no verification: the test only reads `exp`). */
const claimsOf = (token: string): { exp: number, wid?: number } => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'))

async function ok (app: FastifyInstance, options: InjectOptions, status: number): Promise<Json> {
  const answer = await app.inject(options)
  if (answer.statusCode !== status) throw new Error(`${options.method ?? 'GET'} ${options.url}: ${answer.statusCode} ${answer.body}`)
  return answer.body === '' ? {} : answer.json()
}

async function personalWorkspace (app: FastifyInstance, user: SignedIn): Promise<number> {
  return ((await ok(app, { url: '/api/workspace', headers: as(user) }, 200)).workspace as { id: number }).id
}

async function signUp (app: FastifyInstance, email: string): Promise<{ user: SignedIn, workspaceId: number }> {
  const user = await registerVerified(app, email)
  if (user.status !== 201) throw new Error(`register ${email}: ${user.status} ${user.response.body}`)
  return { user, workspaceId: await personalWorkspace(app, user) }
}

async function addMember (app: FastifyInstance, headers: Headers, email: string, role: string): Promise<string> {
  const added = await ok(app, { method: 'POST', url: '/api/workspace/members', headers, payload: { email, role } }, 201)
  return (added.member as { id: string }).id
}

async function createBird (app: FastifyInstance, headers: Headers, name = 'Kiwi'): Promise<string> {
  return ((await ok(app, { method: 'POST', url: '/api/birds', headers, payload: { name } }, 201)).bird as { id: string }).id
}

// Two instances on one database and one Redis prefix, both on real ports. The embedded default
// is one instance by design: there A and B are the same one, and every test still holds.
const a = await build(t, { FRONTEND_URL: FRONTEND, CORS_ORIGINS: PARTNER })
if (twoInstancesSkip !== false) t.comment(`one instance plays both A and B: ${twoInstancesSkip}`)
const b = twoInstancesSkip !== false ? a : await build(t, { FRONTEND_URL: FRONTEND, CORS_ORIGINS: PARTNER, DATABASE_URL: a.config.DATABASE_URL, REDIS_PREFIX: a.config.REDIS_PREFIX })
await a.listen({ port: 0, host: '127.0.0.1' })
if (b !== a) await b.listen({ port: 0, host: '127.0.0.1' })

t.test('sign-ins set the access_token cookie for the socket only: HttpOnly, SameSite Strict, Path /api/ws', async t => {
  const alice = await registerVerified(a, 'alice@cookie.example.com')
  const again = await login(a, 'alice@cookie.example.com')
  for (const response of [alice.response, again.response]) {
    const set = cookie(response, 'access_token')
    t.match(set, { path: '/api/ws', httponly: true, samesite: 'Strict' })
    t.equal(set?.value, response.json().accessToken, 'the same token as the answer\'s')
  }
})

t.test('the upgrade is refused as plain HTTP: no or bad cookie 401, bad Origin 403, bearer 401, not a member 403', async t => {
  const { user: alice, workspaceId } = await signUp(a, 'alice@refuse.example.com')
  const { workspaceId: bobs } = await signUp(a, 'bob@refuse.example.com')
  const good = browser(alice.response)
  const expectRefusal = async (headers: Headers, status: number, code: string, what: string, query = ''): Promise<void> => {
    const handshake = await connect(b, headers, query)
    t.equal(handshake.status, status, what)
    t.equal(handshake.body?.code, code, `${what}: ${code}`)
  }

  await expectRefusal({ origin: FRONTEND }, 401, 'TOKEN_REQUIRED', 'no cookie')
  await expectRefusal({ origin: FRONTEND, cookie: 'refresh_token=abc; theme=dark' }, 401, 'TOKEN_REQUIRED', 'other cookies only')
  await expectRefusal({ origin: FRONTEND, cookie: 'access_token=' }, 401, 'TOKEN_REQUIRED', 'an empty cookie')
  await expectRefusal({ origin: FRONTEND, cookie: 'access_token=not.a.jwt' }, 401, 'TOKEN_INVALID', 'a garbage token')
  // The same claims with a changed signature: a forged token.
  const [header, payload, signature] = alice.accessToken.split('.') as [string, string, string]
  const forgedSignature = (signature.startsWith('A') ? 'B' : 'A') + signature.slice(1)
  await expectRefusal({ origin: FRONTEND, cookie: `access_token=${header}.${payload}.${forgedSignature}` }, 401, 'TOKEN_INVALID', 'a forged signature')
  // Claims naming bob's workspace under alice's signature: also forged.
  const claims = { ...JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')), wid: bobs }
  const rewritten = `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${signature}`
  await expectRefusal({ origin: FRONTEND, cookie: `access_token=${rewritten}` }, 401, 'TOKEN_INVALID', 'rewritten claims')

  await expectRefusal({ cookie: good.cookie! }, 403, 'ORIGIN_NOT_ALLOWED', 'no Origin')
  await expectRefusal({ ...good, origin: 'https://evil.example.com' }, 403, 'ORIGIN_NOT_ALLOWED', 'a foreign Origin')
  await expectRefusal({ ...good, origin: 'https://app.example.com.evil.example.com' }, 403, 'ORIGIN_NOT_ALLOWED', 'an Origin that only starts like ours')
  await expectRefusal({ ...good, origin: 'null' }, 403, 'ORIGIN_NOT_ALLOWED', 'Origin null')

  await expectRefusal({ origin: FRONTEND, ...bearer(alice.accessToken) }, 401, 'TOKEN_REQUIRED', 'a bearer header instead of the cookie')
  await expectRefusal({ ...good, cookie: `access_token_x=${alice.accessToken}` }, 401, 'TOKEN_REQUIRED', 'the token under another cookie name')

  await expectRefusal(good, 403, 'NOT_A_MEMBER', 'another user\'s workspace', `?workspaceId=${bobs}`)
  await expectRefusal(good, 403, 'NOT_A_MEMBER', 'a workspace that does not exist', '?workspaceId=2147483647')
  const malformed = await connect(b, good, '?workspaceId=abc')
  t.equal(malformed.status, 400, 'a workspaceId that is not an id')

  // The allowed origins: FRONTEND_URL, PUBLIC_URL (default http://localhost:3000) and CORS_ORIGINS.
  for (const origin of [FRONTEND, 'http://localhost:3000', PARTNER]) {
    const live = await open(b, { ...good, origin })
    t.strictSame(live.messages, [{ type: 'ready', workspaceId }], `${origin} is allowed; the first message is ready`)
    live.socket.close()
  }
})

t.test('a deactivated user is refused with 403 USER_INACTIVE', async t => {
  const root = await admin(a, 'root@live.example.com')
  const { user: dora } = await signUp(a, 'dora@inactive.example.com')
  const live = await open(b, browser(dora.response))
  const patched = await a.inject({ method: 'PATCH', url: `/api/admin/users/${dora.user.id}`, headers: bearer(root.accessToken), payload: { isActive: false } })
  t.equal(patched.statusCode, 200)
  t.equal(await live.closeCode(), 4401, 'her open socket closes: her sessions were revoked')
  const handshake = await connect(b, browser(dora.response))
  t.equal(handshake.status, 403, 'a new upgrade is refused with 403, as every other endpoint refuses her')
  t.strictSame(handshake.body, { error: 'User account is inactive', code: 'USER_INACTIVE' })
  const onA = await connect(a, browser(dora.response))
  t.equal(onA.status, 403, 'the same on A')
})

t.test('a socket on B hears every change of its workspace made on A, and a socket of another workspace hears none', async t => {
  const { user: olive, workspaceId: ws } = await signUp(a, 'olive@events.example.com')
  const { user: oscar, workspaceId: oscars } = await signUp(a, 'oscar@events.example.com')
  await signUp(a, 'sam@events.example.com')
  const onB = await open(b, browser(olive.response))
  const onA = await open(a, browser(olive.response))
  const other = await open(b, browser(oscar.response))
  t.strictSame(onB.messages, [{ type: 'ready', workspaceId: ws }])
  t.strictSame(other.messages, [{ type: 'ready', workspaceId: oscars }])

  const headers = as(olive)
  const birdId = await createBird(a, headers)
  const created = await onB.event('bird.created', birdId)
  t.strictSame(Object.keys(created).sort(), ['at', 'birdId', 'id', 'type', 'workspaceId'], 'ids only')
  t.match(created, { type: 'bird.created', workspaceId: ws, id: birdId, birdId, at: ISO })
  t.ok(Math.abs(Date.parse(created.at as string) - Date.now()) < 10_000, 'at is now')

  await ok(a, { method: 'PUT', url: `/api/birds/${birdId}`, headers, payload: { name: 'Kiwi II' } }, 200)
  t.match(await onB.event('bird.updated', birdId), { workspaceId: ws, birdId, at: ISO })

  const weight = await ok(a, { method: 'POST', url: `/api/birds/${birdId}/weights`, headers, payload: { weightGrams: 92, recordedOn: today() } }, 201)
  const weightId = (weight.weight as { id: string }).id
  t.strictSame(Object.keys(await onB.event('weight.created', weightId)).sort(), ['at', 'birdId', 'id', 'type', 'workspaceId'])
  t.match(await onB.event('weight.created', weightId), { workspaceId: ws, id: weightId, birdId })

  const visit = await ok(a, { method: 'POST', url: `/api/birds/${birdId}/vet-visits`, headers, payload: { visitedOn: today(), clinicName: 'Avian Care' } }, 201)
  const visitId = (visit.vetVisit as { id: string }).id
  t.match(await onB.event('vet_visit.created', visitId), { workspaceId: ws, id: visitId, birdId, at: ISO })

  const memberId = await addMember(a, headers, 'sam@events.example.com', 'staff')
  const added = await onB.event('member.added', memberId)
  t.strictSame(Object.keys(added).sort(), ['at', 'id', 'type', 'workspaceId'], 'a member event names no bird')
  t.match(added, { workspaceId: ws, id: memberId, at: ISO })
  t.equal((await a.inject({ method: 'DELETE', url: `/api/workspace/members/${memberId}`, headers })).statusCode, 204)
  t.match(await onB.event('member.removed', memberId), { workspaceId: ws, id: memberId, at: ISO })

  t.equal((await a.inject({ method: 'DELETE', url: `/api/birds/${birdId}`, headers })).statusCode, 204)
  t.match(await onB.event('bird.deleted', birdId), { workspaceId: ws, id: birdId, birdId, at: ISO })

  const expected = ['ready', 'bird.created', 'bird.updated', 'weight.created', 'vet_visit.created', 'member.added', 'member.removed', 'bird.deleted']
  t.strictSame(onB.types(), expected, 'in the order they happened, each once')
  await onA.waitFor(message => message.type === 'bird.deleted', 'bird.deleted on A')
  t.strictSame(onA.types(), expected, 'a socket on A (where the changes were made) hears the same')

  await sleep(QUIET_MS)
  t.strictSame(other.messages, [{ type: 'ready', workspaceId: oscars }], 'oscar\'s socket heard nothing of olive\'s workspace')

  // And the other way round: oscar's socket does hear his own workspace; olive's does not.
  const oscarsBird = await createBird(a, as(oscar), 'Mango')
  t.match(await other.event('bird.created', oscarsBird), { workspaceId: oscars, birdId: oscarsBird })
  await sleep(QUIET_MS)
  t.strictSame(onB.types(), expected, 'olive heard nothing of oscar\'s workspace')
  t.strictSame(onA.types(), expected)

  // What a client sends is ignored; the socket keeps listening.
  onB.socket.send(JSON.stringify({ type: 'bird.created', workspaceId: oscars }))
  onB.socket.send('not json')
  const later = await createBird(a, headers, 'Pip')
  t.match(await onB.event('bird.created', later), { workspaceId: ws })
  await sleep(QUIET_MS)
  t.strictSame(other.messages.map(message => message.type), ['ready', 'bird.created'], 'nothing a client sends reaches other sockets')
  for (const live of [onA, onB, other]) live.socket.close()
})

t.test('?workspaceId= listens to another workspace of the same user instead of the token\'s', async t => {
  const { user: wren, workspaceId: personal } = await signUp(a, 'wren@switch.example.com')
  const created = await ok(a, { method: 'POST', url: '/api/workspaces', headers: as(wren), payload: { name: 'Rescue flock' } }, 201)
  const rescue = (created.workspace as { id: number }).id
  t.equal(claimsOf(wren.accessToken).wid, personal, 'the token\'s workspace is the personal one')

  const there = await open(b, browser(wren.response), `?workspaceId=${rescue}`)
  const here = await open(b, browser(wren.response))
  t.strictSame(there.messages, [{ type: 'ready', workspaceId: rescue }])
  t.strictSame(here.messages, [{ type: 'ready', workspaceId: personal }])

  const inRescue = await createBird(a, as(wren, rescue), 'Rescued')
  const inPersonal = await createBird(a, as(wren), 'Homed')
  t.match(await there.event('bird.created', inRescue), { workspaceId: rescue })
  t.match(await here.event('bird.created', inPersonal), { workspaceId: personal })
  await sleep(QUIET_MS)
  t.strictSame(there.types(), ['ready', 'bird.created'], 'the rescue socket hears only the rescue workspace')
  t.strictSame(here.types(), ['ready', 'bird.created'], 'the personal socket hears only the personal workspace')
  there.socket.close()
  here.socket.close()
})

t.test('logout on A closes that session\'s socket on B with 4401; another session\'s socket stays', async t => {
  const { user: pat, workspaceId } = await signUp(a, 'pat@logout.example.com')
  const second = await login(a, 'pat@logout.example.com')
  const first = await open(b, browser(pat.response))
  const other = await open(b, browser(second.response))

  const started = Date.now()
  t.equal((await a.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(pat.accessToken) })).statusCode, 200)
  t.equal(await first.closeCode(), 4401, 'closed with 4401 within about two seconds')
  t.ok(Date.now() - started < CLOSE_WITHIN_MS)
  t.equal((await first.closed).reason, 'session ended')
  t.equal(other.socket.readyState, WebSocket.OPEN, 'the other session\'s socket is open')
  const birdId = await createBird(a, as(second))
  t.match(await other.event('bird.created', birdId), { workspaceId }, 'and still hears its workspace')

  const again = await connect(b, browser(pat.response))
  t.equal(again.status, 401, 'the ended session\'s cookie no longer opens a socket')
  t.equal(again.body?.code, 'TOKEN_INVALID')
  other.socket.close()
})

t.test('removal from the workspace on A closes the member\'s socket on B with 4403; their own workspace\'s socket stays', async t => {
  const { user: olive, workspaceId: ws } = await signUp(a, 'olive@remove.example.com')
  const { user: mo, workspaceId: mos } = await signUp(a, 'mo@remove.example.com')
  const memberId = await addMember(a, as(olive), 'mo@remove.example.com', 'staff')
  const inOlives = await open(b, browser(mo.response), `?workspaceId=${ws}`)
  const inHis = await open(b, browser(mo.response))
  t.strictSame(inOlives.messages, [{ type: 'ready', workspaceId: ws }])

  const started = Date.now()
  t.equal((await a.inject({ method: 'DELETE', url: `/api/workspace/members/${memberId}`, headers: as(olive) })).statusCode, 204)
  t.equal(await inOlives.closeCode(), 4403, 'closed with 4403 within about two seconds')
  t.ok(Date.now() - started < CLOSE_WITHIN_MS)
  t.equal((await inOlives.closed).reason, 'no longer a member')
  t.equal(inHis.socket.readyState, WebSocket.OPEN, 'his socket of his own workspace is open')
  const birdId = await createBird(a, as(mo))
  t.match(await inHis.event('bird.created', birdId), { workspaceId: mos })

  const again = await connect(b, browser(mo.response), `?workspaceId=${ws}`)
  t.equal(again.status, 403, 'no new socket in the workspace he left')
  t.equal(again.body?.code, 'NOT_A_MEMBER')
  inHis.socket.close()
})

t.test('an access token that expires closes its socket with 4401; a refreshed cookie opens a new one', async (t: Test) => {
  const short = await build(t, { FRONTEND_URL: FRONTEND, JWT_ACCESS_TTL: '2s' })
  await short.listen({ port: 0, host: '127.0.0.1' })
  const { user: eve, workspaceId } = await signUp(short, 'eve@expiry.example.com')
  const { exp } = claimsOf(eve.accessToken)
  const live = await open(short, browser(eve.response))
  const code = await live.closeCode(exp * 1000 - Date.now() + CLOSE_WITHIN_MS)
  const closedAt = Date.now()
  t.equal(code, 4401, 'closed with 4401')
  t.equal((await live.closed).reason, 'session ended')
  t.ok(closedAt >= exp * 1000, `not before the token expires (closed ${closedAt - exp * 1000} ms after exp)`)

  // The client refreshes with its refresh cookie and reconnects with the new access cookie.
  const refreshCookie = cookie(eve.response, 'refresh_token')
  const refreshed = await short.inject({ method: 'POST', url: '/api/auth/refresh', headers: { origin: FRONTEND, cookie: `refresh_token=${refreshCookie?.value as string}` } })
  t.equal(refreshed.statusCode, 200)
  t.not(accessCookie(refreshed), accessCookie(eve.response), 'a new access cookie')
  const reconnected = await open(short, browser(refreshed))
  t.strictSame(reconnected.messages, [{ type: 'ready', workspaceId }])
  reconnected.socket.close()
})
