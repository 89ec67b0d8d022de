import { createPrivateKey, createPublicKey, generateKeyPairSync, type JsonWebKey, type KeyObject } from 'node:crypto'
import { createServer } from 'node:http'
import type { FastifyInstance } from 'fastify'
import { createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, exportJWK, jwtVerify, SignJWT, type JWK, type JWTPayload } from 'jose'
import t, { type Test } from 'tap'
import { keyId, rotateKeySet } from '../../src/keys/keyset.js'
import { bearer, login, register } from '../auth-helper.js'
import { build, freePort, tempDir, testSigningKey } from '../helper.js'

/*
 * Access tokens on GET /api/auth/me: what verifies and, above all, what must not. Every
 * refused token answers 401 TOKEN_INVALID, never a 500. Forged tokens are made with jose;
 * the valid ones come from the server (login) or are signed with the server's own key
 * (testSigningKey) to check one claim at a time.
 */

const PUBLIC_URL = 'http://gatehouse.test'
const AUDIENCE = 'gatehouse'

const ourPrivateKey = createPrivateKey(testSigningKey)
const ourPublicKey = createPublicKey(ourPrivateKey)
const ourKid = keyId(ourPublicKey)
const ourPublicPem = ourPublicKey.export({ type: 'spki', format: 'pem' }).toString()
const otherRsaKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey

const b64url = (value: unknown): string => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')
const decodePart = (part: string): Record<string, unknown> => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>

interface Me { statusCode: number, body: { code?: string, error?: string, id?: string } }

async function me (app: FastifyInstance, authorization?: string): Promise<Me> {
  const response = await app.inject({ url: '/api/auth/me', headers: authorization === undefined ? {} : { authorization } })
  return { statusCode: response.statusCode, body: response.json() }
}

/** Asserts the refusal every bad token gets. */
async function refused (t: Test, app: FastifyInstance, authorization: string, message: string): Promise<void> {
  const response = await me(app, authorization)
  t.equal(response.statusCode, 401, message)
  t.same(response.body, { error: 'Invalid or expired token', code: 'TOKEN_INVALID' }, `${message}: TOKEN_INVALID`)
}

/** Signs claims with a key of our choice; the header has our kid unless told otherwise. */
async function forge (payload: JWTPayload, options: { key?: KeyObject | Uint8Array, header?: Record<string, unknown> } = {}): Promise<string> {
  const header = { alg: 'RS256', kid: ourKid, typ: 'JWT', ...options.header }
  return await new SignJWT(payload).setProtectedHeader(header as { alg: string }).sign(options.key ?? ourPrivateKey)
}

/** The claims of a genuine token, with a fresh iat/exp, for forging variants of it. */
function claimsOf (token: string, changes: Record<string, unknown> = {}): JWTPayload {
  const now = Math.floor(Date.now() / 1000)
  return { ...decodePart(token.split('.')[1]!), iat: now, exp: now + 600, ...changes }
}

let counter = 0
async function signIn (app: FastifyInstance): Promise<{ token: string, userId: string, email: string }> {
  const email = `user${++counter}@example.com`
  const registered = await register(app, email)
  if (registered.status !== 201) throw new Error(`register failed: ${registered.status} ${registered.response.body}`)
  const signedIn = await login(app, email)
  if (signedIn.status !== 200) throw new Error(`login failed: ${signedIn.status} ${signedIn.response.body}`)
  return { token: signedIn.accessToken, userId: signedIn.user.id, email }
}

async function jwksOf (app: FastifyInstance): Promise<{ keys: JWK[] }> {
  const response = await app.inject({ url: '/.well-known/jwks.json' })
  return response.json()
}

t.test('tokens against a server signing with one RSA key', async t => {
  const app = await build(t, { PUBLIC_URL })
  const { token, userId } = await signIn(app)
  const [header, payload, signature] = token.split('.') as [string, string, string]

  t.test('a valid token is accepted; a tampered one is not', async t => {
    const ok = await me(app, `Bearer ${token}`)
    t.equal(ok.statusCode, 200)
    t.equal(ok.body.id, userId)

    const claims = decodePart(payload)
    t.equal(claims.role, 'MEMBER')
    const tampered = `${header}.${b64url({ ...claims, role: 'ADMIN' })}.${signature}`
    await refused(t, app, `Bearer ${tampered}`, 'role changed to ADMIN, signature kept')
    const otherSubject = `${header}.${b64url({ ...claims, sub: '00000000-0000-0000-0000-000000000000' })}.${signature}`
    await refused(t, app, `Bearer ${otherSubject}`, 'sub changed, signature kept')
    const flipped = signature.slice(0, -4) + (signature.endsWith('AAAA') ? 'BBBB' : 'AAAA')
    await refused(t, app, `Bearer ${header}.${payload}.${flipped}`, 'signature altered')
    const otherToken = (await signIn(app)).token
    await refused(t, app, `Bearer ${header}.${payload}.${otherToken.split('.')[2]!}`, 'signature of another token')
  })

  t.test('alg none is refused', async t => {
    const claims = decodePart(payload)
    for (const alg of ['none', 'None', 'NONE']) {
      const unsigned = `${b64url({ alg, typ: 'JWT' })}.${b64url(claims)}`
      await refused(t, app, `Bearer ${unsigned}.`, `alg ${alg}, empty signature`)
      await refused(t, app, `Bearer ${unsigned}.${signature}`, `alg ${alg}, a signature attached`)
      const withKid = `${b64url({ alg, typ: 'JWT', kid: ourKid })}.${b64url(claims)}`
      await refused(t, app, `Bearer ${withKid}.`, `alg ${alg} with our kid`)
      await refused(t, app, `Bearer ${withKid}.AAAA`, `alg ${alg} with our kid and a dummy signature`)
    }
  })

  t.test('HS256 signed with our public key as the HMAC secret is refused', async t => {
    const jwks = await jwksOf(app)
    const fromJwks = createPublicKey({ key: jwks.keys[0]! as JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()
    t.equal(fromJwks, ourPublicPem, 'the JWKS publishes the public half of our key')
    const claims = claimsOf(token)
    for (const [name, secret] of [
      ['SPKI PEM', ourPublicPem],
      ['SPKI PEM without the final newline', ourPublicPem.trimEnd()],
      ['PKCS#1 PEM', ourPublicKey.export({ type: 'pkcs1', format: 'pem' }).toString()]
    ] as Array<[string, string]>) {
      const key = new TextEncoder().encode(secret)
      await refused(t, app, `Bearer ${await forge(claims, { key, header: { alg: 'HS256' } })}`, `HS256 with the ${name}, our kid`)
      await refused(t, app, `Bearer ${await forge(claims, { key, header: { alg: 'HS256', kid: undefined } })}`, `HS256 with the ${name}, no kid`)
    }
  })

  t.test('RS256 tokens signed by another key are refused', async t => {
    const claims = claimsOf(token)
    t.equal((await me(app, `Bearer ${await forge(claims)}`)).statusCode, 200, 'control: the same claims signed with our key pass')
    const otherKid = keyId(createPublicKey(otherRsaKey))
    await refused(t, app, `Bearer ${await forge(claims, { key: otherRsaKey, header: { kid: otherKid } })}`, 'another key, its own (unknown) kid')
    await refused(t, app, `Bearer ${await forge(claims, { key: otherRsaKey, header: { kid: ourKid } })}`, 'another key carrying our kid')
    await refused(t, app, `Bearer ${await forge(claims, { key: otherRsaKey, header: { kid: undefined } })}`, 'another key, no kid')
    await refused(t, app, `Bearer ${await forge(claims, { header: { kid: undefined } })}`, 'our key but no kid')
    await refused(t, app, `Bearer ${await forge(claims, { header: { alg: 'PS256' } })}`, 'our key, PS256 instead of RS256')
  })

  t.test('wrong audience or issuer is refused even when signed with our key', async t => {
    t.equal((await me(app, `Bearer ${await forge(claimsOf(token, { aud: AUDIENCE, iss: PUBLIC_URL }))}`)).statusCode, 200, 'control: our aud and iss pass')
    await refused(t, app, `Bearer ${await forge(claimsOf(token, { aud: 'another-service' }))}`, 'wrong aud')
    await refused(t, app, `Bearer ${await forge(claimsOf(token, { aud: undefined }))}`, 'no aud')
    await refused(t, app, `Bearer ${await forge(claimsOf(token, { iss: 'https://evil.example' }))}`, 'wrong iss')
    await refused(t, app, `Bearer ${await forge(claimsOf(token, { iss: `${PUBLIC_URL}/` }))}`, 'iss with a trailing slash')
    await refused(t, app, `Bearer ${await forge(claimsOf(token, { iss: undefined }))}`, 'no iss')
  })

  t.test('nbf in the future, missing claims and expiry are refused when signed with our key', async t => {
    const now = Math.floor(Date.now() / 1000)
    await refused(t, app, `Bearer ${await forge(claimsOf(token, { nbf: now + 600 }))}`, 'nbf in 10 minutes')
    t.equal((await me(app, `Bearer ${await forge(claimsOf(token, { nbf: now - 10 }))}`)).statusCode, 200, 'control: nbf in the past passes')
    for (const claim of ['sid', 'sub', 'role', 'jti', 'iat', 'exp']) {
      await refused(t, app, `Bearer ${await forge(claimsOf(token, { [claim]: undefined }))}`, `no ${claim} claim`)
    }
    await refused(t, app, `Bearer ${await forge(claimsOf(token, { iat: now - 1200, exp: now - 600 }))}`, 'exp 10 minutes ago')
  })

  t.test('jku, jwk and x5u headers are never followed', async t => {
    let fetched = 0
    const attacker = createServer((request, response) => {
      fetched++
      response.setHeader('content-type', 'application/json')
      response.end(JSON.stringify({ keys: [] }))
    })
    const port = await freePort()
    await new Promise<void>(resolve => attacker.listen(port, '127.0.0.1', resolve))
    t.teardown(() => new Promise<void>(resolve => attacker.close(() => { resolve() })))
    const url = `http://127.0.0.1:${port}/jwks.json`
    const attackerJwk = await exportJWK(createPublicKey(otherRsaKey))
    const otherKid = keyId(createPublicKey(otherRsaKey))
    const claims = claimsOf(token)
    const headers: Array<[string, Record<string, unknown>]> = [
      ['jku, unknown kid', { jku: url, kid: otherKid }],
      ['jku, our kid', { jku: url }],
      ['x5u, unknown kid', { x5u: url, kid: otherKid }],
      ['x5u, our kid', { x5u: url }],
      ['embedded jwk, unknown kid', { jwk: { ...attackerJwk, kid: otherKid }, kid: otherKid }],
      ['embedded jwk, our kid', { jwk: { ...attackerJwk, kid: ourKid } }],
      ['jku, x5u and jwk together', { jku: url, x5u: url, jwk: attackerJwk }]
    ]
    for (const [name, header] of headers) {
      await refused(t, app, `Bearer ${await forge(claims, { key: otherRsaKey, header })}`, name)
    }
    // Headers alone do not spoil a token signed by our key: they are simply ignored.
    t.equal((await me(app, `Bearer ${await forge(claims, { header: { jku: url } })}`)).statusCode, 200, 'our key with a jku header: the header is ignored')
    await new Promise(resolve => setTimeout(resolve, 100))
    t.equal(fetched, 0, 'the server never fetched the jku/x5u URL')
  })

  t.test('malformed Authorization headers are 401, never 500', async t => {
    t.same((await me(app)).body, { error: 'Access token required', code: 'TOKEN_REQUIRED' }, 'no header: TOKEN_REQUIRED')
    const garbage = 'A'.repeat(10_240)
    const headers = [
      'Bearer',
      'Bearer ',
      'Bearer a.b',
      'Bearer a.b.c',
      'Bearer ...',
      'Bearer a.b.c.d',
      `Bearer ${b64url('{')}.${b64url('{')}.${b64url('x')}`,
      `Bearer ${b64url('[]')}.${b64url('[]')}.${b64url('x')}`,
      `Bearer ${b64url('null')}.${b64url('null')}.${b64url('x')}`,
      `Bearer ${b64url({ alg: 'RS256', kid: { toString: 1 } })}.${b64url({})}.${b64url('x')}`,
      `Bearer ${b64url({ alg: 'RS256', kid: ourKid })}.${b64url('not json')}.${signature}`,
      `Bearer ${b64url({ alg: 'RS256', kid: '__proto__' })}.${payload}.${signature}`,
      `Bearer ${b64url({ alg: 'RS256', kid: 'constructor' })}.${payload}.${signature}`,
      `Bearer ${token} extra`,
      `Bearer  ${token}x`,
      'Basic xyz',
      `Basic ${Buffer.from('user:pass').toString('base64')}`,
      token,
      garbage,
      `Bearer ${garbage}`,
      `Bearer ${garbage}.${garbage}.${garbage}`
    ]
    for (const authorization of headers) {
      const response = await me(app, authorization)
      const shown = authorization.length > 60 ? `${authorization.slice(0, 40)}… (${authorization.length} chars)` : authorization
      t.equal(response.statusCode, 401, `${JSON.stringify(shown)} is 401`)
      t.equal(response.body.code, 'TOKEN_INVALID', `${JSON.stringify(shown)} is TOKEN_INVALID`)
    }
    t.equal((await me(app, `Bearer ${token}`)).statusCode, 200, 'the real token still works afterwards')
  })

  t.test('the JWKS: both paths, public CORS, cacheable, public fields only', async t => {
    const bodies: string[] = []
    for (const url of ['/api/jwks_json', '/.well-known/jwks.json']) {
      for (const origin of [undefined, 'https://evil.example', 'https://app.example.com', 'null']) {
        const response = await app.inject({ url, headers: origin === undefined ? {} : { origin } })
        const label = `${url} with Origin ${origin ?? '(none)'}`
        t.equal(response.statusCode, 200, label)
        t.equal(response.headers['access-control-allow-origin'], '*', `${label}: ACAO *`)
        t.notOk('access-control-allow-credentials' in response.headers, `${label}: no ACAC`)
        t.equal(response.headers['cache-control'], 'public, max-age=3600', `${label}: cacheable for an hour`)
        t.match(response.headers['content-type'], /^application\/json/, `${label}: JSON`)
        bodies.push(response.body)
      }
    }
    t.ok(bodies.every(body => body === bodies[0]), 'every answer is the same document')
    const { keys } = JSON.parse(bodies[0]!) as { keys: JWK[] }
    t.equal(keys.length, 1)
    const ourJwk = await exportJWK(ourPublicKey)
    t.match(keys[0], { kty: 'RSA', kid: ourKid, alg: 'RS256', use: 'sig', n: ourJwk.n, e: ourJwk.e })
    for (const key of keys) {
      for (const field of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k', 'oth']) t.notOk(field in key, `no private field ${field}`)
    }
    t.equal(decodeProtectedHeader(token).kid, ourKid, 'tokens carry the published kid')
  })
})

t.test('a token the server issued an hour ago (15 minute TTL) is refused', async t => {
  const app = await build(t, { PUBLIC_URL }, undefined, { now: () => Date.now() - 3_600_000 })
  const { token } = await signIn(app)
  const { exp, iat } = decodePart(token.split('.')[1]!) as { exp: number, iat: number }
  t.equal(exp - iat, 900)
  t.ok(Math.abs(exp - (Date.now() / 1000 - 2_700)) < 60, 'it expired 45 minutes ago')
  await refused(t, app, `Bearer ${token}`, 'expired token')
})

t.test('logging out with an expired access token still ends its session', async t => {
  let offset = -3_600_000
  const app = await build(t, { PUBLIC_URL }, undefined, { now: () => Date.now() + offset })
  const signedUp = await register(app, 'expired-logout@example.com')
  t.equal(signedUp.status, 201)
  offset = 0
  const me = await app.inject({ url: '/api/auth/me', headers: bearer(signedUp.accessToken) })
  t.equal(me.statusCode, 401, 'the access token has expired')
  const logout = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(signedUp.accessToken) })
  t.equal(logout.statusCode, 200)
  t.same(logout.json(), { message: 'Logged out successfully' })
  const refresh = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: signedUp.refreshToken } })
  t.equal(refresh.statusCode, 401, 'the session it named is over: its refresh token is refused')
  const row = await app.db.selectFrom('sessions').select(['revoked_reason']).where('user_id', '=', signedUp.user.id).executeTakeFirstOrThrow()
  t.equal(row.revoked_reason, 'logout')

  const other = await register(app, 'expired-logout-2@example.com')
  const forged = `${other.accessToken.slice(0, -4)}${other.accessToken.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`
  const refused = await app.inject({ method: 'POST', url: '/api/auth/logout', headers: bearer(forged) })
  t.equal(refused.statusCode, 200, 'a token that does not verify ends nothing, and says nothing')
  const stillAlive = await app.inject({ method: 'POST', url: '/api/auth/refresh', payload: { refreshToken: other.refreshToken } })
  t.equal(stillAlive.statusCode, 200)
})

t.test('independent verification of a token over real HTTP with jose and the JWKS', async t => {
  const app = await build(t, { PUBLIC_URL })
  const { token, userId } = await signIn(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const jwks = createRemoteJWKSet(new URL(`http://127.0.0.1:${port}/.well-known/jwks.json`))
  const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer: PUBLIC_URL, audience: AUDIENCE })
  t.match(protectedHeader, { alg: 'RS256', kid: ourKid })
  t.equal(payload.sub, userId)
  t.equal(payload.role, 'MEMBER')
  t.equal(payload.iss, PUBLIC_URL)
  t.equal(payload.aud, AUDIENCE)
  for (const claim of ['sub', 'sid', 'role', 'iat', 'exp', 'jti']) t.ok(payload[claim] !== undefined, `has ${claim}`)
  t.type(payload.sid, 'string')
  t.type(payload.jti, 'string')
  t.equal(payload.exp! - payload.iat!, 900, '15 minutes')

  await t.rejects(jwtVerify(token, jwks, { issuer: 'http://localhost:3000', audience: AUDIENCE }), 'jose checks the issuer too')
  const response = await fetch(`http://127.0.0.1:${port}/api/auth/me`, { headers: bearer(token) })
  t.equal(response.status, 200, 'the token works over HTTP')
})

t.test('the issuer defaults to PUBLIC_URL, which defaults to http://localhost:PORT', async t => {
  const app = await build(t, { PUBLIC_URL: undefined, PORT: '3000' })
  const { token } = await signIn(app)
  t.equal(decodePart(token.split('.')[1]!).iss, 'http://localhost:3000')
})

for (const [alg, kty, generate] of [
  ['ES256', 'EC', () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey],
  ['EdDSA', 'OKP', () => generateKeyPairSync('ed25519').privateKey]
] as Array<[string, string, () => KeyObject]>) {
  t.test(`a server signing with ${alg}`, async t => {
    const privateKey = generate()
    const kid = keyId(createPublicKey(privateKey))
    const app = await build(t, { PUBLIC_URL, JWT_PRIVATE_KEY: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() })
    const { token, userId } = await signIn(app)
    t.match(decodeProtectedHeader(token), { alg, kid })
    const ok = await me(app, `Bearer ${token}`)
    t.equal(ok.statusCode, 200)
    t.equal(ok.body.id, userId)

    const jwks = await jwksOf(app)
    t.equal(jwks.keys.length, 1)
    t.match(jwks.keys[0], { kty, kid, alg, use: 'sig' })
    t.notOk('d' in jwks.keys[0]!, 'no private part')
    const verified = await jwtVerify(token, createLocalJWKSet(jwks), { issuer: PUBLIC_URL, audience: AUDIENCE })
    t.equal(verified.payload.sub, userId, 'jose verifies it with the published key')

    const claims = claimsOf(token)
    await refused(t, app, `Bearer ${await forge(claims, { header: { kid } })}`, 'RS256 signed by an RSA key, this server\'s kid')
    await refused(t, app, `Bearer ${await forge(claims)}`, 'RS256 signed by an RSA key, its own kid')
    await refused(t, app, `Bearer ${await forge(claims, { key: new TextEncoder().encode(createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }).toString()), header: { alg: 'HS256', kid } })}`, 'HS256 with the public key as secret')
    const otherAlg = alg === 'ES256' ? 'EdDSA' : 'ES256'
    const other = alg === 'ES256' ? generateKeyPairSync('ed25519').privateKey : generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey
    await refused(t, app, `Bearer ${await forge(claims, { key: other, header: { alg: otherAlg, kid } })}`, `${otherAlg} by another key, this server's kid`)
    const same = generate()
    await refused(t, app, `Bearer ${await forge(claims, { key: same, header: { alg, kid } })}`, `${alg} by another key, this server's kid`)
    t.equal((await me(app, `Bearer ${await forge(claims, { key: privateKey, header: { alg, kid } })}`)).statusCode, 200, `control: ${alg} by this server's key passes`)
  })
}

t.test('key rotation through a key set directory', async t => {
  const dir = await tempDir(t)
  const app = await build(t, { PUBLIC_URL, JWT_KEYS_DIR: dir, JWT_PRIVATE_KEY: undefined })
  const before = await jwksOf(app)
  t.equal(before.keys.length, 1)
  const oldKid = before.keys[0]!.kid!
  const first = await signIn(app)
  const second = await signIn(app)
  t.equal(decodeProtectedHeader(first.token).kid, oldKid)
  t.equal((await me(app, `Bearer ${first.token}`)).statusCode, 200, 'before the rotation')

  const entry = await rotateKeySet(dir, 'RS256', { immediately: true })
  await app.keys.refresh()
  t.not(entry.kid, oldKid)

  const after = await jwksOf(app)
  t.same(after.keys.map(key => key.kid).sort(), [oldKid, entry.kid].sort(), 'the JWKS publishes both keys')
  t.equal((await me(app, `Bearer ${first.token}`)).statusCode, 200, 'an old token seen before still works')
  t.equal((await me(app, `Bearer ${second.token}`)).statusCode, 200, 'an old token never seen before verifies with the retired key')
  const verified = await jwtVerify(second.token, createLocalJWKSet(after), { issuer: PUBLIC_URL, audience: AUDIENCE })
  t.equal(verified.protectedHeader.kid, oldKid, 'jose verifies the old token with the new JWKS')

  const third = await login(app, first.email)
  t.equal(third.status, 200)
  t.equal(decodeProtectedHeader(third.accessToken).kid, entry.kid, 'new tokens carry the new kid')
  t.equal((await me(app, `Bearer ${third.accessToken}`)).statusCode, 200, 'and work')
  const fresh = await jwtVerify(third.accessToken, createLocalJWKSet(after), { issuer: PUBLIC_URL, audience: AUDIENCE })
  t.equal(fresh.protectedHeader.kid, entry.kid)
})
