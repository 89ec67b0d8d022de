import { createHash } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { HelmetOptions } from 'helmet'
import { Type } from 'typebox'
import { DOCUMENT_HELMET } from '../../plugins/security.js'

/*
 * `/`: a small page that says what is running and where to go (SPEC decision 14). It is also
 * where a sign-in lands by default (FRONTEND_URL defaults to PUBLIC_URL), so it says that the
 * session cookie is set and that /demo uses it. Static for the life of the process: no
 * token, no cookie, nothing about the visitor; not under /api/, so not limited per IP.
 */

const STYLE = 'body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.5}code{background:#f4f4f4;padding:0 .2rem}'

/** The page's one inline style is allowed by its hash; nothing else may load or run. */
const homeHelmet: HelmetOptions = {
  ...DOCUMENT_HELMET,
  contentSecurityPolicy: {
    useDefaults: false,
    directives: {
      defaultSrc: ["'none'"],
      styleSrc: [`'sha256-${createHash('sha256').update(STYLE).digest('base64')}'`],
      baseUri: ["'none'"],
      formAction: ["'none'"],
      frameAncestors: ["'none'"]
    }
  }
}

const homeRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, database, store } = fastify
  const embedded = [
    database.mode === 'embedded' ? 'PGlite' : undefined,
    store.kind === 'memory' ? 'the in-process store' : undefined
  ].filter(part => part !== undefined)
  const backing = embedded.length === 0
    ? 'on PostgreSQL and Redis.'
    : `on the embedded default (${embedded.join(' and ')}), not for production.`
  const page = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width">
<title>Gatehouse</title>
<style>${STYLE}</style>
</head>
<body>
<main>
<h1>Gatehouse</h1>
<p>Gatehouse, the authentication and multi-tenancy API server, is running in <strong>${config.NODE_ENV}</strong> mode ${backing}</p>
<ul>
${config.DOCS === 'enabled' ? '<li><a href="/docs">API docs</a>: every endpoint with its schemas (OpenAPI at <a href="/docs/json">/docs/json</a>).</li>\n' : ''}<li><a href="/demo">Demo</a>: sign in by password, e-mail link or an identity provider, see <code>/api/auth/me</code>, sign out.</li>
<li><a href="/api/health">/api/health</a> and <a href="/api/health/ready">/api/health/ready</a>.</li>
</ul>
<p>After a sign-in (an e-mail link or an identity provider brings you back here) the session is set: an HttpOnly <code>refresh_token</code> cookie for <code>/api/auth</code>, which no page can read. <a href="/demo">/demo</a> uses it to get an access token and show who you are.</p>
</main>
</body>
</html>
`

  fastify.get('/', {
    config: { helmet: homeHelmet },
    schema: {
      tags: ['demo'],
      summary: 'What is running, with links to the API docs and the demo (text/html)',
      response: { 200: Type.String() }
    }
  }, async (_request, reply) => await reply.type('text/html; charset=utf-8').header('Cache-Control', 'no-cache').send(page))
}

export default homeRoutes
