// The benchmark scenarios. Each names the request to drive against Gatehouse and the floor
// route doing the same work. `prepare` may call the API first (sign in, create data).
import type autocannon from 'autocannon'

export interface Target {
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE'
  path: string
  headers?: Record<string, string>
  body?: string
  /** Builds each request from the connection's context (autocannon's setupRequest). */
  setupRequest?: (request: { body?: string }, context: Record<string, unknown>) => { body?: string }
  /** Sees each answer (autocannon's onResponse): chained requests keep state in the context. */
  onResponse?: (status: number, body: string, context: Record<string, unknown>) => void
}

export interface BenchContext {
  /** Base URL of the Gatehouse server under test. */
  gatehouse: string
  /** Base URL of the floor server. */
  floor: string
  /** Concurrent connections of each measurement. */
  connections: number
  /** Measurements per scenario (besides the warm-up). */
  rounds: number
}

export interface Scenario {
  name: string
  prepare?: (context: BenchContext) => Promise<void>
  gatehouse: (context: BenchContext) => Target
  floor: (context: BenchContext) => Target
  /** Load driven at the same time as the measured target (on the same server). */
  background?: { gatehouse: (context: BenchContext) => Target, floor: (context: BenchContext) => Target }
  /** Count the database statements Gatehouse issues during the measured run (bench/statements.ts). */
  statements?: boolean
  /** Seconds of warm-up for each server, when the default (BENCH_WARMUP) is too short. */
  warmup?: number
}

/** A target as autocannon's request (the measurements and the soak drive it alike). */
export function autocannonRequest (target: Target): autocannon.Request {
  return {
    method: target.method ?? 'GET',
    path: target.path,
    ...(target.headers === undefined ? {} : { headers: target.headers }),
    ...(target.body === undefined ? {} : { body: target.body }),
    ...(target.setupRequest === undefined ? {} : { setupRequest: target.setupRequest }),
    ...(target.onResponse === undefined ? {} : { onResponse: target.onResponse })
  } as autocannon.Request
}

export const BENCH_PASSWORD = 'bench password that is long enough'
export const json = { 'content-type': 'application/json' }

export async function post (url: string, body: unknown, accessToken?: string): Promise<Record<string, unknown>> {
  const headers = accessToken === undefined ? json : { ...json, authorization: `Bearer ${accessToken}` }
  const response = await fetch(url, { method: 'POST', headers, body: JSON.stringify(body) })
  const answer = await response.json() as Record<string, unknown>
  if (!response.ok) throw new Error(`${url}: ${response.status} ${JSON.stringify(answer)}`)
  return answer
}

/**
 * Refresh rotation: each request takes a session's current token from a pool and puts the
 * successor back, as a real client does (presenting a rotated token again would be reuse).
 * autocannon resets a connection's context after every answer, hence a pool rather than a
 * token per connection; sessions whose answer was cut off at the end of a run are dropped.
 */
export function rotation (pool: string[], path: string): Target {
  return {
    method: 'POST',
    path,
    headers: json,
    setupRequest: (request, context) => {
      const token = pool.shift()
      if (token === undefined) throw new Error('the refresh pool ran dry')
      context.token = token
      return { ...request, body: JSON.stringify({ refreshToken: token }) }
    },
    onResponse: (status, body) => {
      if (status === 200) pool.push((JSON.parse(body) as { refreshToken: string }).refreshToken)
    }
  }
}

let accessToken = ''
const gatehouseTokens: string[] = []
const floorTokens: string[] = []
const loginBody = JSON.stringify({ email: 'bench-login@example.com', password: BENCH_PASSWORD })

/**
 * The issue-5 user, made once whichever of its scenarios runs first: registered (so the owner
 * of a personal workspace, their sessions' active one: the JWT's `wid`), five invited viewers
 * (a list of six members) and a read-only integration token for that workspace. Each scenario
 * signs in again for an access token of its own (they last 15 minutes).
 */
const MEMBERS_EMAIL = 'bench-members@example.com'
let workspaceUser: Promise<string> | undefined
async function membersUser (gatehouse: string): Promise<{ jwt: string, token: string }> {
  workspaceUser ??= (async () => {
    const { accessToken } = await post(`${gatehouse}/api/auth/register`, { email: MEMBERS_EMAIL, password: BENCH_PASSWORD }) as { accessToken: string }
    for (let index = 1; index <= 5; index++) {
      await post(`${gatehouse}/api/workspace/members`, { email: `bench-viewer-${index}@example.com`, role: 'viewer' }, accessToken)
    }
    const { token } = await post(`${gatehouse}/api/integration-tokens`, { name: 'bench', scope: 'read_only' }, accessToken) as { token: string }
    return token
  })()
  const token = await workspaceUser
  const { accessToken: jwt } = await post(`${gatehouse}/api/auth/login`, { email: MEMBERS_EMAIL, password: BENCH_PASSWORD }) as { accessToken: string }
  return { jwt, token }
}
let membersJwt = ''
let membersToken = ''
const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

/**
 * Issue 6: a workspace of 50 birds, each with three weights, listed with a JWT and with a
 * read-only integration token of its owner.
 */
const BIRDS_EMAIL = 'bench-birds@example.com'
let flock: Promise<string> | undefined
export async function birdsUser (gatehouse: string): Promise<{ jwt: string, token: string }> {
  flock ??= (async () => {
    const { accessToken } = await post(`${gatehouse}/api/auth/register`, { email: BIRDS_EMAIL, password: BENCH_PASSWORD }) as { accessToken: string }
    const today = Date.now()
    for (let index = 1; index <= 50; index++) {
      const { bird } = await post(`${gatehouse}/api/birds`, { name: `Bird ${index}`, tagId: `B-${index}`, species: 'Cockatiel' }, accessToken) as { bird: { id: string } }
      for (let day = 0; day < 3; day++) {
        await post(`${gatehouse}/api/birds/${bird.id}/weights`, { weightGrams: 90 + day, recordedOn: new Date(today - day * 86_400_000).toISOString().slice(0, 10) }, accessToken)
      }
    }
    const { token } = await post(`${gatehouse}/api/integration-tokens`, { name: 'bench birds', scope: 'read_only' }, accessToken) as { token: string }
    return token
  })()
  const token = await flock
  const { accessToken: jwt } = await post(`${gatehouse}/api/auth/login`, { email: BIRDS_EMAIL, password: BENCH_PASSWORD }) as { accessToken: string }
  return { jwt, token }
}
let birdsJwt = ''
let birdsToken = ''

/** The names the goals of issues 3, 5 and 6 refer to (bench/run.ts prints them under the table). */
export const ME_JWT = 'GET /api/auth/me (JWT)'
export const REFRESH = 'POST /api/auth/refresh (rotation)'
export const LOGIN = 'POST /api/auth/login (argon2id)'
export const HEALTH_DURING_LOGINS = 'GET /api/health while logins saturate the CPU'
export const BIRDS_JWT = 'GET /api/birds, 50 birds (JWT)'
export const BIRDS_TOKEN = 'GET /api/birds, 50 birds (integration token)'
export const MEMBERS_JWT = 'GET /api/workspace/members (JWT)'
export const MEMBERS_TOKEN = 'GET /api/workspace/members (read-only integration token)'
export const SESSION_CONTEXT = 'GET /api/auth/session'

export const scenarios: Scenario[] = [
  {
    name: 'GET /api/health',
    gatehouse: () => ({ path: '/api/health' }),
    floor: () => ({ path: '/floor/health' })
  },
  {
    name: ME_JWT,
    async prepare ({ gatehouse }) {
      const answer = await post(`${gatehouse}/api/auth/register`, { email: 'bench-me@example.com', password: BENCH_PASSWORD })
      accessToken = answer.accessToken as string
    },
    gatehouse: () => ({ path: '/api/auth/me', headers: { authorization: `Bearer ${accessToken}` } }),
    floor: () => ({ path: '/floor/me', headers: { authorization: `Bearer ${accessToken}` } })
  },
  {
    // Issue 5: the JWT verified as /floor/me does, then the route's one query.
    name: MEMBERS_JWT,
    statements: true,
    async prepare ({ gatehouse }) { membersJwt = (await membersUser(gatehouse)).jwt },
    gatehouse: () => ({ path: '/api/workspace/members', headers: bearer(membersJwt) }),
    floor: () => ({ path: '/floor/members', headers: bearer(membersJwt) })
  },
  {
    // The same list through an integration token; compared with the same (JWT) floor, and
    // with the JWT scenario (issue 5: at least 90% of its req/s).
    name: MEMBERS_TOKEN,
    statements: true,
    async prepare ({ gatehouse }) { ({ jwt: membersJwt, token: membersToken } = await membersUser(gatehouse)) },
    gatehouse: () => ({ path: '/api/workspace/members', headers: bearer(membersToken) }),
    floor: () => ({ path: '/floor/members', headers: bearer(membersJwt) })
  },
  {
    name: SESSION_CONTEXT,
    statements: true,
    async prepare ({ gatehouse }) { membersJwt = (await membersUser(gatehouse)).jwt },
    gatehouse: () => ({ path: '/api/auth/session', headers: bearer(membersJwt) }),
    floor: () => ({ path: '/floor/session-context', headers: bearer(membersJwt) })
  },
  {
    // Issue 6: the birds with their latest weights, one statement; the floor runs the same one.
    name: BIRDS_JWT,
    statements: true,
    async prepare ({ gatehouse }) { birdsJwt = (await birdsUser(gatehouse)).jwt },
    gatehouse: () => ({ path: '/api/birds', headers: bearer(birdsJwt) }),
    floor: () => ({ path: '/floor/birds', headers: bearer(birdsJwt) })
  },
  {
    name: BIRDS_TOKEN,
    statements: true,
    async prepare ({ gatehouse }) { ({ jwt: birdsJwt, token: birdsToken } = await birdsUser(gatehouse)) },
    gatehouse: () => ({ path: '/api/birds', headers: bearer(birdsToken) }),
    floor: () => ({ path: '/floor/birds', headers: bearer(birdsJwt) })
  },
  {
    name: REFRESH,
    async prepare ({ gatehouse, floor, connections, rounds }) {
      await post(`${gatehouse}/api/auth/register`, { email: 'bench-refresh@example.com', password: BENCH_PASSWORD })
      // Each measurement (warm-up, rounds) may drop up to one session per connection.
      for (let index = 0; index < (rounds + 3) * connections; index++) {
        gatehouseTokens.push((await post(`${gatehouse}/api/auth/login`, { email: 'bench-refresh@example.com', password: BENCH_PASSWORD })).refreshToken as string)
        floorTokens.push((await post(`${floor}/floor/session`, {})).refreshToken as string)
      }
    },
    gatehouse: () => rotation(gatehouseTokens, '/api/auth/refresh'),
    floor: () => rotation(floorTokens, '/floor/refresh')
  },
  {
    name: LOGIN,
    // At about 100 sign-ins a second, V8 needs some 20 s to optimize the route's code: its
    // compiler threads spent 770 ms in the first 10 s and 100–160 ms in each 10 s after.
    warmup: 20,
    async prepare ({ gatehouse }) {
      await post(`${gatehouse}/api/auth/register`, { email: 'bench-login@example.com', password: BENCH_PASSWORD })
    },
    gatehouse: () => ({ method: 'POST', path: '/api/auth/login', headers: json, body: loginBody }),
    floor: () => ({ method: 'POST', path: '/floor/login', headers: json, body: JSON.stringify({ password: BENCH_PASSWORD }) })
  },
  {
    name: HEALTH_DURING_LOGINS,
    gatehouse: () => ({ path: '/api/health' }),
    floor: () => ({ path: '/floor/health' }),
    background: {
      gatehouse: () => ({ method: 'POST', path: '/api/auth/login', headers: json, body: loginBody }),
      floor: () => ({ method: 'POST', path: '/floor/login', headers: json, body: JSON.stringify({ password: BENCH_PASSWORD }) })
    }
  }
]
