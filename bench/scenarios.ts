// The benchmark scenarios. Each names the request to drive against Gatehouse and the floor
// route doing the same work. `prepare` may call the API first (sign in, create data).

export interface Target {
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE'
  path: string
  headers?: Record<string, string>
  body?: string
}

export interface BenchContext {
  /** Base URL of the Gatehouse server under test. */
  gatehouse: string
  /** Base URL of the floor server. */
  floor: string
}

export interface Scenario {
  name: string
  prepare?: (context: BenchContext) => Promise<void>
  gatehouse: (context: BenchContext) => Target
  floor: (context: BenchContext) => Target
}

export const scenarios: Scenario[] = [
  {
    name: 'GET /api/health',
    gatehouse: () => ({ path: '/api/health' }),
    floor: () => ({ path: '/floor/health' })
  }
]
