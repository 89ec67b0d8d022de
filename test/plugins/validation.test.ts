import Fastify, { type FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import t, { type Test } from 'tap'
import { Type } from 'typebox'
import validation from '../../plugins/validation.js'
import { Email, Timestamp, Uuid } from '../../src/schemas/common.js'

/*
 * plugins/validation.ts alone, on a bare Fastify instance: bodies strict, the query string,
 * path parameters and headers coerced; Fastify's other Ajv behaviour kept (unknown fields
 * dropped, defaults filled in, every error reported, the formats); for routes of encapsulated
 * plugins too. Without the errors plugin, a failure is Fastify's own 400 with Ajv's errors.
 */

const ID = '0b0d2a8e-52c4-4f55-9d3c-4f6f8c2f6d11'

async function bare (t: Test): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(validation)
  // An encapsulated plugin, as every route folder is.
  await app.register(async (child) => {
    const routes = child.withTypeProvider<TypeBoxTypeProvider>()
    routes.post('/things/:count', {
      schema: {
        params: Type.Object({ count: Type.Integer() }),
        querystring: Type.Object({ limit: Type.Integer({ default: 10 }), flag: Type.Optional(Type.Boolean()) }),
        headers: Type.Object({ 'x-number': Type.Optional(Type.Integer()) }),
        body: Type.Object({
          name: Type.String(),
          grams: Type.Optional(Type.Number()),
          notify: Type.Optional(Type.Boolean()),
          email: Type.Optional(Email),
          id: Type.Optional(Uuid),
          at: Type.Optional(Timestamp),
          color: Type.String({ default: '#cb3a35' })
        }, { additionalProperties: false })
      }
    }, async (request) => ({ params: request.params, query: request.query, header: request.headers['x-number'] ?? null, body: request.body }))
  })
  t.teardown(async () => { await app.close() })
  return app
}

const post = async (app: FastifyInstance, payload: unknown, url = '/things/3?limit=5&flag=true', headers: Record<string, string> = {}) =>
  await app.inject({ method: 'POST', url, payload: payload as Record<string, unknown>, headers })

t.test('a JSON body is taken as sent: no coercion in either direction', async t => {
  const app = await bare(t)
  for (const [payload, field, message] of [
    [{ name: 123 }, 'name', 'must be string'],
    [{ name: 'Kiwi', grams: '40' }, 'grams', 'must be number'],
    [{ name: 'Kiwi', notify: 'true' }, 'notify', 'must be boolean'],
    [{ name: 'Kiwi', notify: 1 }, 'notify', 'must be boolean'],
    [{ name: ['Kiwi'] }, 'name', 'must be string'],
    [{ name: null }, 'name', 'must be string']
  ] as const) {
    const response = await post(app, payload)
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.match(response.json().message, `body/${field} ${message}`)
  }
})

t.test('the query string, path parameters and headers are coerced', async t => {
  const app = await bare(t)
  const response = await post(app, { name: 'Kiwi' }, '/things/3?limit=5&flag=true', { 'x-number': '7' })
  t.equal(response.statusCode, 200, response.body)
  t.strictSame(response.json(), { params: { count: 3 }, query: { limit: 5, flag: true }, header: 7, body: { name: 'Kiwi', color: '#cb3a35' } })
  const bad = await post(app, { name: 'Kiwi' }, '/things/3?limit=many')
  t.equal(bad.statusCode, 400)
  t.match(bad.json().message, 'querystring/limit must be integer')
})

t.test('Fastify\'s other Ajv behaviour is kept: unknown fields dropped, defaults, every error at once', async t => {
  const app = await bare(t)
  const dropped = await post(app, { name: 'Kiwi', role: 'ADMIN' }, '/things/1')
  t.strictSame(dropped.json().body, { name: 'Kiwi', color: '#cb3a35' }, 'unknown field dropped, default filled in')
  t.strictSame(dropped.json().query, { limit: 10 }, 'query default filled in')
  const many = await post(app, { name: 1, grams: 'x', notify: 'y' })
  t.equal(many.statusCode, 400)
  t.equal(many.json().message.split(', ').length, 3, 'allErrors: every bad field is reported')
})

t.test('formats: email, date-time, and uuid in the form PostgreSQL takes', async t => {
  const app = await bare(t)
  const good = await post(app, { name: 'Kiwi', email: 'a@example.com', id: ID, at: '2026-04-14T12:34:56.000Z' })
  t.equal(good.statusCode, 200, good.body)
  t.equal((await post(app, { name: 'Kiwi', id: ID.toUpperCase() })).statusCode, 200, 'upper-case hex is a uuid')
  for (const [payload, field] of [
    [{ name: 'Kiwi', email: 'not-an-address' }, 'email'],
    [{ name: 'Kiwi', at: 'yesterday' }, 'at'],
    [{ name: 'Kiwi', id: 'not-a-uuid' }, 'id'],
    [{ name: 'Kiwi', id: `urn:uuid:${ID}` }, 'id'],
    [{ name: 'Kiwi', id: `{${ID}}` }, 'id']
  ] as const) {
    const response = await post(app, payload)
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.match(response.json().message, `body/${field} must match format`)
  }
})
