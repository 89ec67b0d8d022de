import * as client from 'openid-client'
import t from 'tap'
import { startFakeProvider, startOidcProvider, type Misbehaviour } from './oidc-stand-in.js'

// Self-test of the stand-ins: a full code flow with openid-client against each of them.

const redirectUri = 'http://127.0.0.1:3999/auth/oidc/callback'

async function codeFlow (
  issuer: string,
  clientId: string,
  clientSecret: string,
  authorize: (url: string) => Promise<string>,
  options: { clientAuth?: client.ClientAuth, nonRepudiation?: boolean } = {}
): Promise<{ claims: client.IDToken | undefined, tokens: client.TokenEndpointResponse }> {
  const execute = [client.allowInsecureRequests]
  if (options.nonRepudiation === true) execute.push(client.enableNonRepudiationChecks)
  const config = await client.discovery(new URL(issuer), clientId, clientSecret, options.clientAuth, { execute })
  const pkceCodeVerifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid email profile',
    code_challenge: await client.calculatePKCECodeChallenge(pkceCodeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce
  })
  const callbackUrl = await authorize(url.href)
  const tokens = await client.authorizationCodeGrant(config, new URL(callbackUrl), {
    pkceCodeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true
  })
  return { claims: tokens.claims(), tokens }
}

// The OAuth error a token request failed with (undefined when it did not fail that way).
async function rejection (promise: Promise<unknown>): Promise<client.ResponseBodyError | undefined> {
  try {
    await promise
  } catch (error) {
    if (error instanceof client.ResponseBodyError) return error
    throw error
  }
  return undefined
}

t.test('oidc-provider: code flow with PKCE yields the account claims', async t => {
  const idp = await startOidcProvider(t, {
    clients: [{ client_id: 'gatehouse', client_secret: 'a-long-enough-client-secret-for-tests', redirect_uris: [redirectUri] }],
    accounts: { alice: { email: 'alice@example.com', email_verified: true, name: 'Alice Liddell' } }
  })
  t.equal(idp.issuer, new URL(idp.issuer).origin)
  const { claims, tokens } = await codeFlow(idp.issuer, 'gatehouse', 'a-long-enough-client-secret-for-tests', idp.login('alice'))
  t.equal(claims?.iss, idp.issuer)
  t.equal(claims?.sub, 'alice')
  t.equal(claims?.email, 'alice@example.com')
  t.equal(claims?.email_verified, true)
  t.equal(claims?.name, 'Alice Liddell')
  t.equal(tokens.token_type.toLowerCase(), 'bearer')

  // A second login in a row (fresh cookie jar) works too, for another account.
  const again = await codeFlow(idp.issuer, 'gatehouse', 'a-long-enough-client-secret-for-tests', async url => await idp.authorize(url, 'bob'))
  t.equal(again.claims?.sub, 'bob')
  t.equal(again.claims?.email, undefined)
})

t.test('oidc-provider: client_secret_basic clients', async t => {
  const idp = await startOidcProvider(t, {
    clients: [{ client_id: 'basic', client_secret: 'another-secret', redirect_uris: [redirectUri], token_endpoint_auth_method: 'client_secret_basic' }],
    accounts: { carol: { email: 'carol@example.com' } }
  })
  const { claims } = await codeFlow(idp.issuer, 'basic', 'another-secret', idp.login('carol'), { clientAuth: client.ClientSecretBasic('another-secret') })
  t.equal(claims?.email, 'carol@example.com')
})

t.test('oidc-provider: the authorization request must carry PKCE', async t => {
  const idp = await startOidcProvider(t, {
    clients: [{ client_id: 'gatehouse', client_secret: 'secret', redirect_uris: [redirectUri] }]
  })
  const config = await client.discovery(new URL(idp.issuer), 'gatehouse', 'secret', undefined, { execute: [client.allowInsecureRequests] })
  const url = client.buildAuthorizationUrl(config, { redirect_uri: redirectUri, scope: 'openid', state: 'xyz' })
  const back = new URL(await idp.authorize(url.href, 'alice'))
  t.equal(back.searchParams.get('error'), 'invalid_request')
})

t.test('fake provider, well behaved: code flow yields the account claims, codes are single use', async t => {
  const idp = await startFakeProvider(t, {
    clientId: 'gatehouse',
    clientSecret: 'secret',
    account: { sub: 'fake-1', email: 'fake@example.com', email_verified: 'true', name: 'Fake Person' }
  })
  const { claims } = await codeFlow(idp.issuer, 'gatehouse', 'secret', idp.authorize)
  t.equal(claims?.sub, 'fake-1')
  t.equal(claims?.email, 'fake@example.com')
  t.equal(claims?.email_verified, 'true')
  t.equal(idp.tokenRequests, 1)

  // client_secret_basic is accepted too.
  const basic = await codeFlow(idp.issuer, 'gatehouse', 'secret', idp.authorize, { clientAuth: client.ClientSecretBasic('secret') })
  t.equal(basic.claims?.sub, 'fake-1')
  t.equal(idp.tokenRequests, 2)

  // Replaying a code fails with invalid_grant.
  const config = await client.discovery(new URL(idp.issuer), 'gatehouse', 'secret', undefined, { execute: [client.allowInsecureRequests] })
  const pkceCodeVerifier = client.randomPKCECodeVerifier()
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid',
    code_challenge: await client.calculatePKCECodeChallenge(pkceCodeVerifier),
    code_challenge_method: 'S256',
    state: 'replay'
  })
  const callbackUrl = new URL(await idp.authorize(url.href))
  await client.authorizationCodeGrant(config, callbackUrl, { pkceCodeVerifier, expectedState: 'replay', idTokenExpected: true })
  const replay = await rejection(client.authorizationCodeGrant(config, callbackUrl, { pkceCodeVerifier, expectedState: 'replay', idTokenExpected: true }))
  t.equal(replay?.error, 'invalid_grant')

  // A wrong code_verifier fails too.
  const other = client.randomPKCECodeVerifier()
  const url2 = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid',
    code_challenge: await client.calculatePKCECodeChallenge(other),
    code_challenge_method: 'S256',
    state: 'pkce'
  })
  const callback2 = new URL(await idp.authorize(url2.href))
  const wrongVerifier = await rejection(client.authorizationCodeGrant(config, callback2, { pkceCodeVerifier, expectedState: 'pkce', idTokenExpected: true }))
  t.equal(wrongVerifier?.error, 'invalid_grant')
  t.equal(idp.tokenRequests, 5)
})

const misbehaviours: Array<Exclude<Misbehaviour, 'none' | 'bad-signature'>> = ['wrong-nonce', 'wrong-iss', 'wrong-aud', 'expired']
for (const misbehave of misbehaviours) {
  t.test(`fake provider, ${misbehave}: the id_token is refused`, async t => {
    const idp = await startFakeProvider(t, { clientId: 'gatehouse', clientSecret: 'secret', account: { sub: 'fake-1' }, misbehave })
    const error = await codeFlow(idp.issuer, 'gatehouse', 'secret', idp.authorize).then(() => undefined, (e: unknown) => e)
    t.ok(error instanceof Error, 'authorizationCodeGrant rejects')
    t.comment(`${misbehave}: ${(error as Error | undefined)?.message}`)
    t.equal(idp.tokenRequests, 1, 'the code was exchanged: the id_token itself was refused')
  })
}

/*
 * OIDC Core 3.1.3.7 lets a client skip the signature check of an id_token it got straight
 * from the token endpoint over TLS, and openid-client v6 does skip it by default: only
 * enableNonRepudiationChecks makes it fetch the JWKS and verify.
 */
t.test('fake provider, bad-signature: refused only with enableNonRepudiationChecks', async t => {
  const idp = await startFakeProvider(t, { clientId: 'gatehouse', clientSecret: 'secret', account: { sub: 'fake-1' }, misbehave: 'bad-signature' })
  const { claims } = await codeFlow(idp.issuer, 'gatehouse', 'secret', idp.authorize)
  t.equal(claims?.sub, 'fake-1', 'accepted by default (signature not checked)')
  await t.rejects(codeFlow(idp.issuer, 'gatehouse', 'secret', idp.authorize, { nonRepudiation: true }), 'rejected with the JWKS check')
  t.equal(idp.tokenRequests, 2)
})

t.test('oidc-provider id_token passes the non-repudiation (JWKS signature) check', async t => {
  const idp = await startOidcProvider(t, {
    clients: [{ client_id: 'gatehouse', client_secret: 'secret', redirect_uris: [redirectUri] }],
    accounts: { alice: { email: 'alice@example.com' } }
  })
  const { claims } = await codeFlow(idp.issuer, 'gatehouse', 'secret', idp.login('alice'), { nonRepudiation: true })
  t.equal(claims?.email, 'alice@example.com')
})
