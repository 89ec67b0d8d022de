// npm run bench -- --soak: a bounded soak of mixed traffic against one Gatehouse server on
// loopback — reads with a JWT and with an integration token, writes, refresh rotations and
// sign-ins at once — reported slice by slice (req/s, p99 per kind, errors, server RSS), with
// the error count and the RSS growth from start to end (issue 7: no errors, ≤ 20% growth).
//   SOAK_DURATION  seconds in all (default 600)     SOAK_SLICE  seconds per row (default 60)
import autocannon from 'autocannon'
import { autocannonRequest, BENCH_PASSWORD, birdsUser, json, post, rotation, type Target } from './scenarios.js'

interface Mix { name: string, connections: number, target: Target }
interface Slice { index: number, requests: number, errors: number, p99: Record<string, number>, rss: number }

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

async function run (base: string, mix: Mix, seconds: number): Promise<autocannon.Result> {
  return await autocannon({ url: base, connections: mix.connections, duration: seconds, requests: [autocannonRequest(mix.target)] })
}

export async function soak (base: string, rss: () => Promise<number>): Promise<string> {
  const total = Number(process.env.SOAK_DURATION ?? 600)
  const sliceSeconds = Math.min(total, Number(process.env.SOAK_SLICE ?? 60))
  const { jwt, token } = await birdsUser(base)
  const { birds } = await (await fetch(`${base}/api/birds`, { headers: bearer(jwt) })).json() as { birds: Array<{ id: string }> }
  const email = 'bench-soak@example.com'
  await post(`${base}/api/auth/register`, { email, password: BENCH_PASSWORD })
  const pool: string[] = []
  for (let index = 0; index < 64; index++) pool.push((await post(`${base}/api/auth/login`, { email, password: BENCH_PASSWORD })).refreshToken as string)
  let species = 0
  const mixes: Mix[] = [
    { name: 'members (JWT)', connections: 6, target: { path: '/api/workspace/members', headers: bearer(jwt) } },
    { name: 'birds (token)', connections: 6, target: { path: '/api/birds', headers: bearer(token) } },
    {
      name: 'PUT bird',
      connections: 4,
      target: {
        method: 'PUT',
        path: `/api/birds/${birds[0]!.id}`,
        headers: { ...json, ...bearer(jwt) },
        setupRequest: request => ({ ...request, path: `/api/birds/${birds[species % birds.length]!.id}`, body: JSON.stringify({ species: `Cockatiel ${species++}` }) })
      }
    },
    { name: 'refresh', connections: 4, target: rotation(pool, '/api/auth/refresh') },
    { name: 'sign-in', connections: 2, target: { method: 'POST', path: '/api/auth/login', headers: json, body: JSON.stringify({ email, password: BENCH_PASSWORD }) } }
  ]

  const idleRss = await rss()
  const slices: Slice[] = []
  for (let elapsed = 0, index = 1; elapsed < total; elapsed += sliceSeconds, index++) {
    const seconds = Math.min(sliceSeconds, total - elapsed)
    const results = await Promise.all(mixes.map(async mix => await run(base, mix, seconds)))
    slices.push({
      index,
      requests: results.reduce((sum, result) => sum + result.requests.total, 0),
      errors: results.reduce((sum, result) => sum + result.errors + result.timeouts + result.non2xx, 0),
      p99: Object.fromEntries(mixes.map((mix, at) => [mix.name, results[at]!.latency.p99])),
      rss: await rss()
    })
    process.stderr.write(`soak slice ${index}: ${slices.at(-1)!.requests} requests, ${slices.at(-1)!.errors} errors\n`)
  }

  // Growth is judged from the end of the first slice (warm: JIT, caches, pools and socket
  // buffers in place) to the end; the idle figure before any traffic is shown beside it.
  const startRss = slices[0]?.rss ?? idleRss
  const endRss = slices.at(-1)?.rss ?? startRss
  const errors = slices.reduce((sum, slice) => sum + slice.errors, 0)
  const growth = startRss === 0 ? 0 : (endRss - startRss) / startRss
  const lines = [
    `| slice (${sliceSeconds} s) | requests | req/s | errors | ${mixes.map(mix => `p99 ms ${mix.name}`).join(' | ')} | server RSS MB |`,
    `|---:|---:|---:|---:|${mixes.map(() => '---:').join('|')}|---:|`,
    ...slices.map(slice => `| ${slice.index} | ${slice.requests} | ${Math.round(slice.requests / sliceSeconds)} | ${slice.errors} | ${mixes.map(mix => slice.p99[mix.name]).join(' | ')} | ${slice.rss} |`)
  ]
  const verdict = errors === 0 && growth <= 0.2 ? 'met' : 'NOT met'
  return `Soak — ${total} s of mixed traffic (${mixes.map(mix => `${mix.name} ×${mix.connections}`).join(', ')}), Node ${process.version}\n\n${lines.join('\n')}\n\n` +
    `Errors: ${errors}. Server RSS ${idleRss} MB idle before the soak, ${startRss} MB after the first slice, ${endRss} MB at the end ` +
    `(${growth >= 0 ? '+' : ''}${(growth * 100).toFixed(0)}% from the first slice; highest ${Math.max(...slices.map(slice => slice.rss))} MB). Goal (no errors, growth ≤ 20%): ${verdict}.`
}
