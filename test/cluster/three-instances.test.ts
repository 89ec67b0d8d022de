import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { bearer, cookie, registerVerified, type SignedIn } from '../auth-helper.js'
import { build, redisUrl, type Env } from '../helper.js'

/*
 * Scale-out (issue 7): three instances A, B and C of Gatehouse, each listening on a port of
 * its own, on ONE PostgreSQL database and ONE Redis namespace. Every check goes over real
 * HTTP (fetch) or a real WebSocket to the instances' ports, never through inject (sign-ups
 * for setup excepted). What one instance does must hold on the others:
 *   1. refresh rotation and its grace window (REFRESH_GRACE=1s),
 *   2. logout revoking the access token everywhere within a second,
 *   3. the shared rate-limit counters (per user, batched; per IP, exact),
 *   4. integration-token revocation despite the other instances' caches,
 *   5. WebSocket events from a change made on another instance.
 */

const FRONTEND = 'https://app.example.com'
/** The grace window of refresh rotation for this file (REFRESH_GRACE). */
const GRACE_MS = 1_000
/** Per signed-in user per window (RATE_LIMIT_AUTHENTICATED_MAX). */
const USER_MAX = 30
/** Unauthenticated, per IP per window (RATE_LIMIT_MAX), for the second cluster. */
const IP_MAX = 10
/** plugins/rate-limit.ts FLUSH_MS is 100 ms; pauses longer than one flush and its answer. */
const SWITCH_PAUSE_MS = 200
/** Revocations must reach every instance within this (polled every POLL_MS). */
const PROPAGATION_MS = 1_000
const POLL_MS = 50
const REQUEST_TIMEOUT_MS = 3_000

type Json = Record<string, unknown>

interface Node { name: string, app: FastifyInstance, url: string, port: number }
interface Answer { status: number, body: Json, headers: Headers }

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

/** One request over HTTP to an instance's port; JSON in, JSON (or {}) out. */
async function call (node: Node, method: string, path: string, options: { headers?: Record<string, string>, body?: unknown, timeoutMs?: number } = {}): Promise<Answer> {
  const headers: Record<string, string> = { ...options.headers }
  if (options.body !== undefined) headers['content-type'] = 'application/json'
  const response = await fetch(`${node.url}${path}`, {
    method,
    headers,
    ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
    signal: AbortSignal.timeout(options.timeoutMs ?? REQUEST_TIMEOUT_MS)
  })
  const text = await response.text()
  let body: Json = {}
  if (text !== '') {
    try {
      body = JSON.parse(text) as Json
    } catch {
      body = { text }
    }
  }
  return { status: response.status, body, headers: response.headers }
}

/**
 * Polls `probe` every POLL_MS until it holds: the ms it took, or undefined when it still did
 * not hold after `limitMs` (each probe is bounded too).
 */
async function within (limitMs: number, probe: () => Promise<boolean>): Promise<number | undefined> {
  const start = Date.now()
  for (;;) {
    if (await probe()) return Date.now() - start
    if (Date.now() - start >= limitMs) return undefined
    await sleep(POLL_MS)
  }
}

/** Three instances on one database and one Redis prefix, each listening on its own port. */
async function cluster (t: Test, env: Env): Promise<[Node, Node, Node]> {
  const a = await build(t, env)
  const shared = { ...env, DATABASE_URL: a.config.DATABASE_URL, REDIS_PREFIX: a.config.REDIS_PREFIX }
  const apps = [a, await build(t, shared), await build(t, shared)]
  const nodes = [] as Node[]
  for (const [index, app] of apps.entries()) {
    await app.listen({ port: 0, host: '127.0.0.1' })
    const { port } = app.server.address() as { port: number }
    nodes.push({ name: 'ABC'[index]!, app, port, url: `http://127.0.0.1:${port}` })
  }
  return nodes as [Node, Node, Node]
}

async function signUp (node: Node, email: string): Promise<SignedIn> {
  const user = await registerVerified(node.app, email)
  if (user.status !== 201) throw new Error(`register ${email}: ${user.status} ${user.response.body}`)
  return user
}

// Every socket of the file, terminated at teardown whatever happened.
const sockets = new Set<WebSocket>()
t.teardown(() => { for (const socket of sockets) socket.terminate() })

if (redisUrl === undefined) {
  // The in-process store is one instance's by design: there is nothing to share.
  t.skip('three instances share state through Redis; run with Redis (scripts/test.mjs finds it)', async () => {})
} else {
  const [A, B, C] = await cluster(t, {
    FRONTEND_URL: FRONTEND,
    REFRESH_GRACE: `${GRACE_MS}ms`,
    RATE_LIMIT_AUTHENTICATED_MAX: String(USER_MAX)
  })
  const all = [A, B, C]

  t.test('three servers on three ports, one database, one Redis namespace', async t => {
    t.equal(new Set(all.map(node => node.port)).size, 3, 'three ports')
    t.equal(new Set(all.map(node => node.app.config.DATABASE_URL)).size, 1, 'one database')
    t.equal(new Set(all.map(node => node.app.config.REDIS_PREFIX)).size, 1, 'one Redis prefix')
    for (const node of all) t.equal(node.app.store.kind, 'redis', `${node.name} uses Redis`)
    const user = await signUp(A, 'ping@cluster.example.com')
    for (const node of all) {
      const me = await call(node, 'GET', '/api/auth/me', { headers: bearer(user.accessToken) })
      t.equal(me.status, 200, `${node.name} answers over HTTP for a user who signed up on A`)
      t.equal(me.body.id, user.user.id)
    }
  })

  t.test('refresh rotated on A: within the grace B and C answer the same successor; after it B and C refuse it', async t => {
    const user = await signUp(A, 'rotate@cluster.example.com')
    const original = user.refreshToken
    t.ok(typeof original === 'string' && original.length > 0, 'the sign-up answered a refresh token (no Origin: in the body)')

    const rotated = await call(A, 'POST', '/api/auth/refresh', { body: { refreshToken: original } })
    const rotatedAt = Date.now() // the rotation happened before this
    t.equal(rotated.status, 200, 'A rotates')
    const successor = rotated.body.refreshToken as string
    t.ok(typeof successor === 'string' && successor !== original, 'a new refresh token')

    // Within the grace window (two tabs refreshing at once, on different instances).
    const [onB, onC] = await Promise.all([B, C].map(async node => await call(node, 'POST', '/api/auth/refresh', { body: { refreshToken: original } })))
    t.ok(Date.now() - rotatedAt < GRACE_MS, 'still within the grace window') // else the two checks below prove nothing
    t.equal(onB!.status, 200, 'B accepts the rotated token within the grace')
    t.equal(onB!.body.refreshToken, successor, 'B answers the very successor A issued')
    t.equal(onC!.status, 200, 'C accepts it within the grace too')
    t.equal(onC!.body.refreshToken, successor, 'C answers the very successor A issued')
    const graceAccess = onB!.body.accessToken as string
    t.equal((await call(C, 'GET', '/api/auth/me', { headers: bearer(graceAccess) })).status, 200, 'the access token B issued works on C')

    // After the grace window the rotated token is a replay.
    await sleep(rotatedAt + GRACE_MS + 150 - Date.now())
    const [lateB, lateC] = await Promise.all([B, C].map(async node => await call(node, 'POST', '/api/auth/refresh', { body: { refreshToken: original } })))
    t.equal(lateB!.status, 401, 'B refuses the rotated token after the grace')
    t.equal(lateB!.body.code, 'INVALID_REFRESH_TOKEN')
    t.equal(lateC!.status, 401, 'C refuses the rotated token after the grace')
    t.equal(lateC!.body.code, 'INVALID_REFRESH_TOKEN')
    t.notOk('refreshToken' in lateB!.body || 'refreshToken' in lateC!.body, 'no token in a refusal')

    // The replay ended the session on every instance: the successor and its access tokens too.
    const successorOnA = await call(A, 'POST', '/api/auth/refresh', { body: { refreshToken: successor } })
    t.equal(successorOnA.status, 401, 'the successor is refused on A: the reuse revoked the session')
    const tokens = [rotated.body.accessToken as string, graceAccess]
    for (const node of all) {
      const took = await within(PROPAGATION_MS, async () => {
        const answers = await Promise.all(tokens.map(async token => await call(node, 'GET', '/api/auth/me', { headers: bearer(token), timeoutMs: PROPAGATION_MS })))
        return answers.every(answer => answer.status === 401)
      })
      t.ok(took !== undefined, `${node.name} refuses the session's access tokens within ${PROPAGATION_MS} ms (took ${String(took)} ms)`)
    }
  })

  t.test('logout on A makes the access token 401 on B and C within one second', async t => {
    const user = await signUp(A, 'logout@cluster.example.com')
    const headers = bearer(user.accessToken)
    // B and C have verified (and cached) the token before.
    for (const node of all) t.equal((await call(node, 'GET', '/api/auth/me', { headers })).status, 200, `${node.name} accepts the token before`)

    const out = await call(A, 'POST', '/api/auth/logout', { headers })
    t.equal(out.status, 200, 'logged out on A')
    const me = await call(A, 'GET', '/api/auth/me', { headers })
    t.equal(me.status, 401, 'A refuses it at once')
    t.equal(me.body.code, 'TOKEN_INVALID')

    const took = await Promise.all([B, C].map(async node => await within(PROPAGATION_MS, async () =>
      (await call(node, 'GET', '/api/auth/me', { headers, timeoutMs: PROPAGATION_MS })).status === 401)))
    t.ok(took[0] !== undefined, `B answers 401 within ${PROPAGATION_MS} ms (took ${String(took[0])} ms)`)
    t.ok(took[1] !== undefined, `C answers 401 within ${PROPAGATION_MS} ms (took ${String(took[1])} ms)`)
    for (const node of [B, C]) {
      const answer = await call(node, 'GET', '/api/auth/me', { headers })
      t.strictSame([answer.status, answer.body.code], [401, 'TOKEN_INVALID'], `${node.name} keeps refusing it`)
    }
  })

  t.test('rate limit per signed-in user: 30 requests over A, B and C pass, then the limit holds on every instance', async t => {
    /*
     * plugins/rate-limit.ts: "Each decision uses the last shared count plus what this
     * instance counted since; several instances may together overshoot a limit by what they
     * serve within one flush interval." With a pause longer than a flush (and its answer)
     * at every switch, an instance's "last shared count" is the store's count as of its own
     * last flush. So, past the limit:
     *   - the instance that served last (C) knows the whole count: it refuses at once;
     *   - A and B last heard the count before C's requests, and may each let through what they
     *     serve within one flush interval — here one request each (one request per pause);
     *   - after that flush every instance refuses;
     *   - the shared counter holds every request, none lost.
     */
    const user = await signUp(A, 'limit@cluster.example.com')
    const headers = bearer(user.accessToken)
    const hit = async (node: Node): Promise<Answer> => await call(node, 'GET', '/api/auth/me', { headers })

    const served: string[] = []
    for (const node of [A, B, C, A, B, C]) {
      for (let i = 0; i < 5; i++) {
        const answer = await hit(node)
        served.push(`${node.name}${answer.status}`)
        if (served.length === 1) t.equal(answer.headers.get('ratelimit-limit'), String(USER_MAX), 'the per-user limit applies')
      }
      await sleep(SWITCH_PAUSE_MS)
    }
    t.equal(served.filter(entry => entry.endsWith('200')).length, USER_MAX, `all ${USER_MAX} requests over A, B and C pass: ${served.join(' ')}`)

    const first: Record<string, number> = {}
    for (const node of all) {
      const answer = await hit(node)
      first[node.name] = answer.status
      if (answer.status === 429) t.equal(answer.body.code, 'RATE_LIMITED')
      await sleep(SWITCH_PAUSE_MS)
    }
    t.equal(first.C, 429, 'C, whose last shared count holds all 30, refuses the 31st at once')

    for (const node of all) {
      const answer = await hit(node)
      t.equal(answer.status, 429, `${node.name} refuses once it has flushed: the limit holds across instances`)
      t.equal(answer.body.code, 'RATE_LIMITED')
      t.equal(answer.body.error, 'Too many requests, please try again later.')
      await sleep(SWITCH_PAUSE_MS)
    }
    // So the overshoot is at most A's and B's one request each (the documented slack).
    t.comment(`first requests past the limit: ${JSON.stringify(first)}`)
    t.equal(await A.app.store.get(`rl:user:${user.user.id}`), String(USER_MAX + 6), 'the shared counter holds every request of every instance')
  })

  t.test('integration-token revocation on A holds on B and C within a second, despite their caches', async t => {
    const user = await signUp(A, 'tokens@cluster.example.com')
    const minted = await call(A, 'POST', '/api/integration-tokens', { headers: bearer(user.accessToken), body: { name: 'cluster sync', scope: 'read_only' } })
    t.equal(minted.status, 201, 'minted on A')
    const token = minted.body.token as string
    const id = (minted.body.integrationToken as { id: string }).id
    const use = async (node: Node, timeoutMs?: number): Promise<Answer> =>
      await call(node, 'GET', '/api/workspace/members', { headers: bearer(token), ...(timeoutMs === undefined ? {} : { timeoutMs }) })
    // B and C use it first: it is in their caches now (checked twice: the second answer is cached).
    for (const node of [B, C, B, C]) t.equal((await use(node)).status, 200, `${node.name} accepts the token`)

    const revoked = await call(A, 'DELETE', `/api/integration-tokens/${id}`, { headers: bearer(user.accessToken) })
    t.equal(revoked.status, 204, 'revoked on A')
    t.equal((await use(A)).status, 401, 'A refuses it at once')

    const took = await Promise.all([B, C].map(async node => await within(PROPAGATION_MS, async () => (await use(node, PROPAGATION_MS)).status === 401)))
    t.ok(took[0] !== undefined, `B refuses it within ${PROPAGATION_MS} ms (took ${String(took[0])} ms)`)
    t.ok(took[1] !== undefined, `C refuses it within ${PROPAGATION_MS} ms (took ${String(took[1])} ms)`)
    for (const node of [B, C]) t.equal((await use(node)).status, 401, `${node.name} keeps refusing it`)
  })

  t.test('a WebSocket on C receives the bird.created of a bird added on A', async t => {
    const user = await signUp(A, 'live@cluster.example.com')
    const access = cookie(user.response, 'access_token')
    t.ok(access !== undefined, 'the sign-up set the access_token cookie')
    const workspace = await call(A, 'GET', '/api/workspace', { headers: bearer(user.accessToken) })
    t.equal(workspace.status, 200)
    const workspaceId = (workspace.body.workspace as { id: number }).id

    const socket = new WebSocket(`ws://127.0.0.1:${C.port}/api/ws`, {
      headers: { cookie: `access_token=${access?.value as string}`, origin: FRONTEND },
      handshakeTimeout: REQUEST_TIMEOUT_MS
    })
    sockets.add(socket)
    t.teardown(() => { socket.terminate() })
    const messages: Json[] = []
    let wake = (): void => {}
    socket.on('message', data => {
      messages.push(JSON.parse(String(data)) as Json)
      wake()
    })
    /** The first message that matches, or an error after a bounded wait. */
    const waitFor = async (match: (message: Json) => boolean, what: string, ms = 3_000): Promise<Json> => await new Promise((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error(`no ${what} on C within ${ms} ms; got ${JSON.stringify(messages)}`)) }, ms)
      wake = () => {
        const found = messages.find(match)
        if (found === undefined) return
        clearTimeout(timer)
        resolve(found)
      }
      wake()
    })
    const opened = new Promise<void>((resolve, reject) => {
      socket.once('open', () => { resolve() })
      socket.once('unexpected-response', (_request, response) => { reject(new Error(`upgrade refused on C: ${String(response.statusCode)}`)) })
      socket.once('error', reject)
    })
    await opened
    t.strictSame(await waitFor(message => message.type === 'ready', 'ready'), { type: 'ready', workspaceId }, 'C admits the socket for the personal workspace')

    const created = await call(A, 'POST', '/api/birds', { headers: bearer(user.accessToken), body: { name: 'Kiwi' } })
    t.equal(created.status, 201, 'bird added on A')
    const birdId = (created.body.bird as { id: string }).id
    const event = await waitFor(message => message.type === 'bird.created' && message.id === birdId, `bird.created ${birdId}`)
    t.match(event, { type: 'bird.created', workspaceId, id: birdId, birdId }, 'the socket on C received the event caused on A')
    socket.close()
  })
}

t.test('rate limit per IP (unauthenticated, not batched): exactly 10 requests over A, B and C, then 429 on each', { skip: redisUrl === undefined ? 'needs Redis' : false }, async t => {
  const [A, B, C] = await cluster(t, { RATE_LIMIT_MAX: String(IP_MAX) })
  const remaining: string[] = []
  for (let i = 0; i < IP_MAX; i++) {
    const node = [A, B, C][i % 3]!
    const answer = await call(node, 'GET', '/api/auth/providers')
    t.equal(answer.status, 200, `request ${i + 1} on ${node.name} passes`)
    remaining.push(answer.headers.get('ratelimit-remaining') ?? '')
  }
  t.strictSame(remaining, ['9', '8', '7', '6', '5', '4', '3', '2', '1', '0'], 'one counter for the three instances, exact at every request')
  for (const node of [A, B, C]) {
    const answer = await call(node, 'GET', '/api/auth/providers')
    t.equal(answer.status, 429, `the 11th and later are refused on ${node.name}`)
    t.strictSame(answer.body, { error: 'Too many requests from this IP, please try again later.', code: 'RATE_LIMITED' })
  }
  t.equal(await A.app.store.get('rl:127.0.0.1'), String(IP_MAX + 3), 'the shared counter holds every request')
})
