import { Type } from 'typebox'
import t from 'tap'
import { errors } from '../../src/errors.js'
import { build } from '../helper.js'

const BirdBody = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 100 }),
  weightGrams: Type.Number({ exclusiveMinimum: 0, maximum: 10_000 }),
  chartColor: Type.Optional(Type.String({ pattern: '^#[0-9A-Fa-f]{6}$' }))
}, { additionalProperties: false })

/** A small app: the real plugins plus routes that exercise the error handler. */
async function app (t: Parameters<typeof build>[0], env: Record<string, string> = {}) {
  return await build(t, env, async instance => {
    instance.post('/api/test/birds', { config: { payload: 'bird' }, schema: { body: BirdBody } }, async (request) => ({ stored: request.body }))
    instance.get('/api/test/query', { schema: { querystring: Type.Object({ days: Type.Integer({ minimum: 1 }) }) } }, async () => ({ ok: true }))
    instance.get('/api/test/crash', async () => { throw new Error('SELECT password_hash FROM users WHERE id = 1 failed at /srv/app/src/db.ts:12') })
    instance.get('/api/test/unavailable', async () => { throw Object.assign(new Error('connect ECONNREFUSED 10.0.0.5:5432'), { statusCode: 503 }) })
    instance.get('/api/test/forbidden', async () => { throw errors.forbidden() })
    instance.get('/api/test/conflict', async () => { throw errors.conflict('That tag is already used in this workspace.', 'TAG_TAKEN') })
  })
}

t.test('validation failures are 400 "Invalid <thing> payload" naming each bad field', async t => {
  const server = await app(t)
  const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload: { weightGrams: 20_000, chartColor: 'red' } })
  t.equal(response.statusCode, 400)
  t.same(response.json(), {
    error: 'Invalid bird payload',
    code: 'VALIDATION_FAILED',
    details: {
      name: 'is required',
      weightGrams: 'must be <= 10000',
      chartColor: 'must match pattern "^#[0-9A-Fa-f]{6}$"'
    }
  })
})

t.test('unknown fields are dropped, never stored (no mass assignment)', async t => {
  const server = await app(t)
  const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload: { name: 'Kiwi', weightGrams: 92, role: 'ADMIN', workspaceId: 7 } })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { stored: { name: 'Kiwi', weightGrams: 92 } })
})

t.test('query string validation names the query', async t => {
  const server = await app(t)
  const response = await server.inject({ url: '/api/test/query?days=zero' })
  t.equal(response.statusCode, 400)
  t.same(response.json(), { error: 'Invalid query payload', code: 'VALIDATION_FAILED', details: { days: 'must be integer' } })
})

t.test('a body that is not an object is named as the body', async t => {
  const server = await app(t)
  const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload: '"just a string"', headers: { 'content-type': 'application/json' } })
  t.equal(response.statusCode, 400)
  t.same(response.json(), { error: 'Invalid bird payload', code: 'VALIDATION_FAILED', details: { body: 'must be object' } })
})

t.test('unknown routes are 404 in the error body', async t => {
  const server = await app(t)
  const response = await server.inject({ url: '/api/nothing/here?token=abc' })
  t.equal(response.statusCode, 404)
  t.same(response.json(), { error: 'Not found', code: 'NOT_FOUND' })
})

t.test('malformed JSON is 400', async t => {
  const server = await app(t)
  const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload: '{"name": "Kiwi",', headers: { 'content-type': 'application/json' } })
  t.equal(response.statusCode, 400)
  t.same(response.json(), { error: 'Request body is not valid JSON', code: 'INVALID_JSON' })
})

t.test('prototype poisoning is refused with 400', async t => {
  const server = await app(t)
  for (const payload of ['{"name":"Kiwi","weightGrams":1,"__proto__":{"isAdmin":true}}', '{"name":"Kiwi","weightGrams":1,"constructor":{"prototype":{"isAdmin":true}}}']) {
    const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload, headers: { 'content-type': 'application/json' } })
    t.equal(response.statusCode, 400)
    t.same(response.json(), { error: 'Request body contains a forbidden property (__proto__ or constructor.prototype)', code: 'FORBIDDEN_PROPERTY' })
  }
  t.equal(({} as Record<string, unknown>).isAdmin, undefined, 'Object.prototype untouched')
})

t.test('an empty JSON body is 400', async t => {
  const server = await app(t)
  const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload: '', headers: { 'content-type': 'application/json' } })
  t.equal(response.statusCode, 400)
  t.same(response.json(), { error: 'Request body is empty', code: 'EMPTY_BODY' })
})

t.test('a body over BODY_LIMIT is 413', async t => {
  const server = await app(t, { BODY_LIMIT: '1kb' })
  const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload: { name: 'x'.repeat(2000), weightGrams: 1 } })
  t.equal(response.statusCode, 413)
  t.same(response.json(), { error: 'Request body is too large', code: 'PAYLOAD_TOO_LARGE' })
})

t.test('an unsupported content type is 415', async t => {
  const server = await app(t)
  const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload: 'name=Kiwi', headers: { 'content-type': 'application/x-www-form-urlencoded' } })
  t.equal(response.statusCode, 415)
  t.same(response.json(), { error: 'Unsupported content type; send application/json', code: 'UNSUPPORTED_MEDIA_TYPE' })
})

t.test('text/plain (or no parser at all) is 415 before validation, with or without a body', async t => {
  const server = await app(t)
  for (const [type, payload] of [['text/plain', '{"name":"Kiwi","weightGrams":1}'], ['text/plain; charset=utf-8', 'Kiwi'], ['text/plain', ''], ['application/xml', '<bird/>']] as const) {
    const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload, headers: { 'content-type': type } })
    t.equal(response.statusCode, 415, `${type} ${JSON.stringify(payload)}`)
    t.same(response.json(), { error: 'Unsupported content type; send application/json', code: 'UNSUPPORTED_MEDIA_TYPE' })
  }
  const json = await server.inject({ method: 'POST', url: '/api/test/birds', payload: '{"name":"Kiwi","weightGrams":1}', headers: { 'content-type': 'application/json; charset=utf-8' } })
  t.equal(json.statusCode, 200, 'JSON with a charset is JSON')
})

t.test('bodies are not coerced: a number for a string or a string for a number is a 400 naming the field', async t => {
  const server = await app(t)
  const response = await server.inject({ method: 'POST', url: '/api/test/birds', payload: { name: 123, weightGrams: '40' } })
  t.equal(response.statusCode, 400)
  t.same(response.json(), { error: 'Invalid bird payload', code: 'VALIDATION_FAILED', details: { name: 'must be string', weightGrams: 'must be number' } })
  const ok = await server.inject({ method: 'POST', url: '/api/test/birds', payload: { name: 'Kiwi', weightGrams: 40 } })
  t.same(ok.json(), { stored: { name: 'Kiwi', weightGrams: 40 } })
})

t.test('query strings are still coerced: ?days=30 is the integer 30', async t => {
  const server = await app(t)
  const response = await server.inject({ url: '/api/test/query?days=30' })
  t.equal(response.statusCode, 200)
  t.same(response.json(), { ok: true })
})

t.test('5xx answers never carry internal messages, SQL or stack traces', async t => {
  const server = await app(t)
  const crash = await server.inject({ url: '/api/test/crash' })
  t.equal(crash.statusCode, 500)
  t.same(crash.json(), { error: 'Internal server error', code: 'INTERNAL_ERROR' })
  t.notMatch(crash.body, /SELECT|password|\/srv|\.ts/)
  const unavailable = await server.inject({ url: '/api/test/unavailable' })
  t.equal(unavailable.statusCode, 503)
  t.same(unavailable.json(), { error: 'Service temporarily unavailable', code: 'SERVICE_UNAVAILABLE' })
  t.notMatch(unavailable.body, /ECONNREFUSED|10\.0\.0\.5/)
})

t.test('errors made by the factories keep their message and code', async t => {
  const server = await app(t)
  const forbidden = await server.inject({ url: '/api/test/forbidden' })
  t.equal(forbidden.statusCode, 403)
  t.same(forbidden.json(), { error: 'You do not have permission for that action.', code: 'FORBIDDEN' })
  const conflict = await server.inject({ url: '/api/test/conflict' })
  t.equal(conflict.statusCode, 409)
  t.same(conflict.json(), { error: 'That tag is already used in this workspace.', code: 'TAG_TAKEN' })
})

t.test('RESPONSE_ENVELOPE=success wraps bodies as seed 002 does', async t => {
  const server = await app(t, { RESPONSE_ENVELOPE: 'success' })
  const ok = await server.inject({ url: '/api/health' })
  t.equal(ok.statusCode, 200)
  t.same(ok.json(), { success: true, data: { ok: true } })
  const invalid = await server.inject({ method: 'POST', url: '/api/test/birds', payload: { weightGrams: 1 } })
  t.equal(invalid.statusCode, 400)
  t.same(invalid.json(), { success: false, message: 'Invalid bird payload', code: 'VALIDATION_FAILED', details: { name: 'is required' } })
  const missing = await server.inject({ url: '/api/missing' })
  t.same(missing.json(), { success: false, message: 'Not found', code: 'NOT_FOUND' })
})
