import { generateKeyPairSync } from 'node:crypto'
import t from 'tap'
import { build } from '../helper.js'

t.test('helmet headers on every answer: nosniff and a CSP that forbids everything', async t => {
  const server = await build(t)
  const response = await server.inject({ url: '/api/health' })
  t.equal(response.headers['x-content-type-options'], 'nosniff')
  t.equal(response.headers['content-security-policy'], "default-src 'none';base-uri 'none';form-action 'none';frame-ancestors 'none'")
  t.equal(response.headers['x-frame-options'], 'DENY')
  t.equal(response.headers['cross-origin-resource-policy'], 'same-origin')
  t.notOk(response.headers['x-dns-prefetch-control'], 'no document-only headers on JSON')
  t.equal(response.headers['referrer-policy'], 'no-referrer')
  t.notOk(response.headers['x-powered-by'])
  t.notOk(response.headers['strict-transport-security'], 'no HSTS outside production')
  const missing = await server.inject({ url: '/api/missing' })
  t.equal(missing.headers['x-content-type-options'], 'nosniff', 'also on errors')
})

t.test('HSTS in production', async t => {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const server = await build(t, {
    NODE_ENV: 'production',
    REDIS_URL: process.env.GH_TEST_REDIS_URL || 'redis://127.0.0.1:6379',
    JWT_PRIVATE_KEY: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  })
  const response = await server.inject({ url: '/api/health' })
  t.equal(response.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains')
})

t.test('CORS answers the allow-listed origin with credentials', async t => {
  const server = await build(t, { CORS_ORIGINS: 'https://app.example.com,http://localhost:5173' })
  const response = await server.inject({ url: '/api/health', headers: { origin: 'https://app.example.com' } })
  t.equal(response.headers['access-control-allow-origin'], 'https://app.example.com')
  t.equal(response.headers['access-control-allow-credentials'], 'true')
  t.match(response.headers.vary, /Origin/)

  const preflight = await server.inject({
    method: 'OPTIONS',
    url: '/api/health',
    headers: { origin: 'http://localhost:5173', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type,authorization' }
  })
  t.equal(preflight.statusCode, 204)
  t.equal(preflight.headers['access-control-allow-origin'], 'http://localhost:5173')
  t.equal(preflight.headers['access-control-allow-credentials'], 'true')
  t.match(preflight.headers['access-control-allow-headers'], /Authorization/)
})

t.test('CORS never answers an origin that is not on the list', async t => {
  const server = await build(t, { CORS_ORIGINS: 'https://app.example.com' })
  for (const origin of ['https://evil.example', 'https://app.example.com.evil.example', 'null', 'http://app.example.com']) {
    const response = await server.inject({ url: '/api/health', headers: { origin } })
    t.equal(response.statusCode, 200)
    t.notOk(response.headers['access-control-allow-origin'], `${origin} gets no Access-Control-Allow-Origin`)
    t.notOk(response.headers['access-control-allow-credentials'])
    const preflight = await server.inject({ method: 'OPTIONS', url: '/api/health', headers: { origin, 'access-control-request-method': 'POST' } })
    t.notOk(preflight.headers['access-control-allow-origin'], `${origin} preflight refused`)
  }
})

t.test('without CORS_ORIGINS no cross-origin reader is allowed', async t => {
  const server = await build(t)
  const response = await server.inject({ url: '/api/health', headers: { origin: 'https://app.example.com' } })
  t.notOk(response.headers['access-control-allow-origin'])
})

t.test('CORS_ORIGINS=* is seed 000: any origin, never with credentials', async t => {
  const server = await build(t, { CORS_ORIGINS: '*' })
  const response = await server.inject({ url: '/api/health', headers: { origin: 'https://anywhere.example' } })
  t.equal(response.headers['access-control-allow-origin'], '*')
  t.notOk(response.headers['access-control-allow-credentials'])
})
