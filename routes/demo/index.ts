import type { FastifyPluginAsync } from 'fastify'
import type { HelmetOptions } from 'helmet'
import { DOCUMENT_HELMET } from '../../plugins/security.js'

/*
 * /demo: what a seed SPA does, in one static page and plain JavaScript (no build step). It
 * signs in by password, by magic link and by each configured identity provider, shows
 * /api/auth/me, survives a reload by refreshing through the HttpOnly cookie, and signs out.
 * The access token lives only in a JavaScript variable; the refresh token never reaches
 * JavaScript.
 */

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width">
<title>Gatehouse demo</title>
<link rel="stylesheet" href="/demo/demo.css">
</head>
<body>
<main>
<h1>Gatehouse demo</h1>
<p id="status" role="status">Checking your session…</p>
<section id="signed-in" hidden>
  <pre id="me"></pre>
  <button id="sign-out" type="button">Sign out</button>
</section>
<section id="signed-out" hidden>
  <h2>Password</h2>
  <form id="password-form">
    <label>E-mail <input id="email" name="email" type="email" autocomplete="username" required></label>
    <label>Password <input id="password" name="password" type="password" autocomplete="current-password" required></label>
    <label><input id="remember" type="checkbox"> Remember me</label>
    <button id="sign-in" type="submit">Sign in</button>
  </form>
  <h2>E-mail link</h2>
  <form id="magic-form">
    <label>E-mail <input id="magic-email" type="email" required></label>
    <button id="send-link" type="submit">Send me a link</button>
  </form>
  <p id="magic-result"></p>
  <h2>Identity providers</h2>
  <ul id="providers"></ul>
</section>
<p id="error" role="alert"></p>
</main>
<script src="/demo/demo.js"></script>
</body>
</html>
`

const STYLE = `body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}
label{display:block;margin:.4rem 0}pre{background:#f4f4f4;padding:1rem;overflow:auto}#error{color:#b00020}`

const SCRIPT = `'use strict'
let accessToken = null
const $ = id => document.getElementById(id)
const json = { 'content-type': 'application/json' }

function show (signedIn) {
  $('signed-in').hidden = !signedIn
  $('signed-out').hidden = signedIn
}

async function api (path, options = {}) {
  const headers = { ...(options.headers || {}) }
  if (accessToken) headers.authorization = 'Bearer ' + accessToken
  const response = await fetch(path, { credentials: 'same-origin', ...options, headers })
  const body = response.headers.get('content-type')?.includes('json') ? await response.json() : null
  return { response, body }
}

async function loadMe () {
  const { response, body } = await api('/api/auth/me')
  if (!response.ok) return false
  $('me').textContent = JSON.stringify(body, null, 2)
  $('status').textContent = 'Signed in as ' + body.email
  show(true)
  return true
}

async function refresh () {
  const { response, body } = await api('/api/auth/refresh', { method: 'POST' })
  if (!response.ok) return false
  accessToken = body.accessToken
  return true
}

async function signedOut (message) {
  accessToken = null
  $('status').textContent = message
  show(false)
  const { body } = await api('/api/auth/providers')
  $('providers').replaceChildren(...(body?.providers || []).map(provider => {
    const item = document.createElement('li')
    const link = document.createElement('a')
    link.href = '/api/auth/oauth/' + encodeURIComponent(provider.providerKey) + '/start?redirectTo=' + encodeURIComponent(location.origin + '/demo')
    link.textContent = 'Sign in with ' + provider.displayName
    link.dataset.provider = provider.providerKey
    item.append(link)
    return item
  }))
}

$('password-form').addEventListener('submit', async event => {
  event.preventDefault()
  $('error').textContent = ''
  const { response, body } = await api('/api/auth/login', {
    method: 'POST',
    headers: json,
    body: JSON.stringify({ email: $('email').value, password: $('password').value, rememberMe: $('remember').checked })
  })
  if (!response.ok) { $('error').textContent = body?.error || 'Sign-in failed'; return }
  accessToken = body.accessToken
  await loadMe()
})

$('magic-form').addEventListener('submit', async event => {
  event.preventDefault()
  const { response, body } = await api('/api/auth/magic-link/request', {
    method: 'POST',
    headers: json,
    body: JSON.stringify({ email: $('magic-email').value, redirectTo: location.origin + '/demo' })
  })
  if (!response.ok) { $('error').textContent = body?.error || 'Could not send a link'; return }
  $('magic-result').replaceChildren(body.message)
  if (body.previewUrl) {
    const link = document.createElement('a')
    link.id = 'preview-link'
    link.href = body.previewUrl
    link.textContent = ' Open the link (preview)'
    $('magic-result').append(link)
  }
})

$('sign-out').addEventListener('click', async () => {
  await api('/api/auth/logout', { method: 'POST', headers: json, body: '{}' })
  await signedOut('Signed out')
})

;(async () => {
  if (await refresh() && await loadMe()) return
  await signedOut('Not signed in')
})()
`

/** The demo page needs scripts and styles from its own origin; everything else stays forbidden. */
const demoHelmet: HelmetOptions = {
  ...DOCUMENT_HELMET,
  contentSecurityPolicy: {
    useDefaults: false,
    directives: {
      defaultSrc: ["'none'"],
      scriptSrc: ["'self'"],
      styleSrc: ["'self'"],
      connectSrc: ["'self'"],
      formAction: ["'self'"],
      baseUri: ["'none'"],
      frameAncestors: ["'none'"]
    }
  }
}

const demo: FastifyPluginAsync = async (fastify) => {
  const files: Array<[string, string, string]> = [
    ['/demo', 'text/html; charset=utf-8', PAGE],
    ['/demo/demo.js', 'text/javascript; charset=utf-8', SCRIPT],
    ['/demo/demo.css', 'text/css; charset=utf-8', STYLE]
  ]
  for (const [url, type, body] of files) {
    fastify.get(url, {
      config: { helmet: demoHelmet },
      schema: { tags: ['demo'], summary: 'The demo SPA (static)', response: { 200: { type: 'string' } } }
    }, async (_request, reply) => await reply.type(type).header('Cache-Control', 'no-cache').send(body))
  }
}

export default demo
