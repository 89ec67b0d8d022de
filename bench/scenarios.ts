// The benchmark scenarios. Each names the request to drive against Gatehouse and the floor
// route doing the same work. `prepare` may call the API first (sign in, create data).

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
}

export const BENCH_PASSWORD = 'bench password that is long enough'
const json = { 'content-type': 'application/json' }

async function post (url: string, body: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(url, { method: 'POST', headers: json, body: JSON.stringify(body) })
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
function rotation (pool: string[], path: string): Target {
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

export const scenarios: Scenario[] = [
  {
    name: 'GET /api/health',
    gatehouse: () => ({ path: '/api/health' }),
    floor: () => ({ path: '/floor/health' })
  },
  {
    name: 'GET /api/auth/me (JWT)',
    async prepare ({ gatehouse }) {
      const answer = await post(`${gatehouse}/api/auth/register`, { email: 'bench-me@example.com', password: BENCH_PASSWORD })
      accessToken = answer.accessToken as string
    },
    gatehouse: () => ({ path: '/api/auth/me', headers: { authorization: `Bearer ${accessToken}` } }),
    floor: () => ({ path: '/floor/me', headers: { authorization: `Bearer ${accessToken}` } })
  },
  {
    name: 'POST /api/auth/refresh (rotation)',
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
    name: 'POST /api/auth/login (argon2id)',
    async prepare ({ gatehouse }) {
      await post(`${gatehouse}/api/auth/register`, { email: 'bench-login@example.com', password: BENCH_PASSWORD })
    },
    gatehouse: () => ({ method: 'POST', path: '/api/auth/login', headers: json, body: loginBody }),
    floor: () => ({ method: 'POST', path: '/floor/login', headers: json, body: JSON.stringify({ password: BENCH_PASSWORD }) })
  },
  {
    name: 'GET /api/health while logins saturate the CPU',
    gatehouse: () => ({ path: '/api/health' }),
    floor: () => ({ path: '/floor/health' }),
    background: {
      gatehouse: () => ({ method: 'POST', path: '/api/auth/login', headers: json, body: loginBody }),
      floor: () => ({ method: 'POST', path: '/floor/login', headers: json, body: JSON.stringify({ password: BENCH_PASSWORD }) })
    }
  }
]
