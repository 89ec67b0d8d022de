import t from 'tap'
import { build } from '../helper.js'

t.test('GET /docs/json is an OpenAPI 3 document of every route', async t => {
  const server = await build(t)
  const response = await server.inject({ url: '/docs/json' })
  t.equal(response.statusCode, 200)
  const document = response.json()
  t.match(document.openapi, /^3\./)
  t.equal(document.info.title, 'Gatehouse')
  t.ok(document.paths['/api/health'], 'lists /api/health')
  t.ok(document.paths['/api/health/ready'], 'lists /api/health/ready')

  // Every operation documents its tags and its answers (request and response schemas).
  for (const [path, operations] of Object.entries<Record<string, { tags?: string[], responses?: Record<string, unknown> }>>(document.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      t.ok(operation.tags !== undefined && operation.tags.length > 0, `${method.toUpperCase()} ${path} has tags`)
      // A sign-in link's success is a redirect.
      t.ok(Object.keys(operation.responses ?? {}).some(status => /^(2\d\d|302)$/.test(status)), `${method.toUpperCase()} ${path} documents its success answer`)
    }
  }
})

t.test('GET /docs serves the UI', async t => {
  const server = await build(t)
  const response = await server.inject({ url: '/docs' })
  const page = response.statusCode === 302 ? await server.inject({ url: response.headers.location as string }) : response
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /text\/html/)
  t.match(page.body, /swagger-ui/i)
})

t.test('DOCS=disabled: neither the document nor its UI is served', async t => {
  const server = await build(t, { DOCS: 'disabled' })
  for (const url of ['/docs', '/docs/json', '/docs/yaml', '/docs/static/index.html']) {
    const response = await server.inject({ url })
    t.equal(response.statusCode, 404, url)
    t.same(response.json(), { error: 'Not found', code: 'NOT_FOUND' })
  }
  t.equal((await server.inject({ url: '/api/health' })).statusCode, 200, 'the API itself is unchanged')
  t.notMatch((await server.inject({ url: '/' })).body, '/docs', 'the home page does not link to them')
})
