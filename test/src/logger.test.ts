import { Writable } from 'node:stream'
import Fastify from 'fastify'
import t from 'tap'
import { loadConfig } from '../../src/config.js'
import { loggerOptions, redactUrl } from '../../src/logger.js'

t.test('secret query parameters never reach a log line', async t => {
  t.equal(redactUrl('/api/auth/magic-link/verify?token=abc123&redirectTo=%2Fapp'), '/api/auth/magic-link/verify?token=%5Bredacted%5D&redirectTo=%2Fapp')
  t.equal(redactUrl('/api/auth/oauth/google/callback?code=xyz&state=s1'), '/api/auth/oauth/google/callback?code=%5Bredacted%5D&state=%5Bredacted%5D')
  t.equal(redactUrl('/api/birds?days=30'), '/api/birds?days=30')
  t.equal(redactUrl('/api/health'), '/api/health')
})

t.test('credentials are redacted from request logs', async t => {
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _encoding, callback) { lines.push(String(chunk)); callback() } })
  const options = loggerOptions(loadConfig({ NODE_ENV: 'test', LOG_LEVEL: 'info' })) as Record<string, unknown>
  const server = Fastify({ logger: { ...options, stream } })
  server.post('/login', async (request) => {
    request.log.info({ body: request.body, headers: request.headers }, 'login attempt')
    return { ok: true }
  })
  await server.inject({
    method: 'POST',
    url: '/login?token=magic-secret',
    headers: { authorization: 'Bearer jwt-secret', cookie: 'refresh_token=cookie-secret' },
    payload: { email: 'a@example.com', password: 'hunter2-secret', refreshToken: 'rt-secret' }
  })
  await server.close()
  const log = lines.join('')
  t.match(log, /login attempt/)
  t.match(log, /a@example\.com/, 'non-secret fields stay')
  for (const secret of ['magic-secret', 'jwt-secret', 'cookie-secret', 'hunter2-secret', 'rt-secret']) {
    t.notMatch(log, secret, `${secret} is not logged`)
  }
})
