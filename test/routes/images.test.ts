import { randomUUID } from 'node:crypto'
import type { LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { build } from '../helper.js'
import { S3_STAND_IN, startS3StandIn } from '../s3-stand-in.js'
import { bearer, registerVerified, type SignedIn } from '../auth-helper.js'
import { expiresInSeconds } from '../../src/images/images.js'

/*
 * Seed 000's presigned image URLs (issue 6) against a real S3 server on this machine: s3rver
 * stores the objects, and a SigV4 gate in front of it — written here from AWS's description of
 * query-string authentication, independently of the SDK that signs — checks every signature the
 * way S3 and R2 do. The gate is needed because s3rver 3.x checks only a V4 URL's expiry and
 * access key, never its signature (jamhall/s3rver#659; shown below). Checked: an image goes up
 * and comes back; a changed key, method, signature, expiry, Content-Type or body length is
 * refused; URLs expire after IMAGE_URL_TTL; keys outside the active workspace are 404; the
 * payload rules, the roles, read-only tokens, and 503 without storage.
 */

const BUCKET = 'gatehouse-images'
const { accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET_ACCESS_KEY, region: REGION } = S3_STAND_IN
const TTL_SECONDS = 60
const MAX_BYTES = 1024
/** A 1×1 transparent PNG. */
const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=', 'base64')
const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
const NOT_FOUND = { error: 'Image not found', code: 'NOT_FOUND' }
const NOT_CONFIGURED = { error: 'image storage is not configured', code: 'IMAGE_STORAGE_NOT_CONFIGURED' }
const FORBIDDEN = { error: 'You do not have permission for that action.', code: 'ROLE_NOT_ALLOWED' }
const READ_ONLY = { error: 'That integration token is read-only.', code: 'TOKEN_READ_ONLY' }

type Headers = Record<string, string>
interface Upload { uploadUrl: string, method: string, key: string, expiresAt: string, headers: Headers }

const { endpoint: ENDPOINT, s3rverEndpoint } = await startS3StandIn(t, BUCKET)

// The app's clock (used to sign URLs) can be moved back to sign URLs in the past.
let clockOffset = 0
const app = await build(t, {
  S3_ENDPOINT: ENDPOINT,
  S3_BUCKET: BUCKET,
  S3_ACCESS_KEY_ID: ACCESS_KEY_ID,
  S3_SECRET_ACCESS_KEY: SECRET_ACCESS_KEY,
  S3_REGION: REGION,
  IMAGE_MAX_BYTES: '1kb',
  IMAGE_URL_TTL: `${TTL_SECONDS}s`
}, undefined, { now: () => Date.now() + clockOffset })

// ---------------------------------------------------------------------------------------------
// Users, workspaces and requests.

const as = (user: SignedIn | string, workspaceId?: number): Headers => ({
  ...bearer(typeof user === 'string' ? user : user.accessToken),
  ...(workspaceId === undefined ? {} : { 'x-workspace-id': String(workspaceId) })
})

/** A verified user acting in their personal workspace. */
async function owner (email: string): Promise<{ user: SignedIn, workspaceId: number, headers: Headers }> {
  const user = await registerVerified(app, email)
  if (user.status !== 201) throw new Error(`register ${email}: ${user.status}`)
  const answer = await app.inject({ url: '/api/workspace', headers: as(user) })
  if (answer.statusCode !== 200) throw new Error(`GET /api/workspace: ${answer.statusCode} ${answer.body}`)
  return { user, workspaceId: answer.json().workspace.id, headers: as(user) }
}

/** A verified account made a member of the owner's active workspace; its headers act there. */
async function member (ownerHeaders: Headers, workspaceId: number, email: string, role: string): Promise<{ user: SignedIn, headers: Headers }> {
  const user = await registerVerified(app, email)
  const added = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: ownerHeaders, payload: { email, role } })
  if (added.statusCode !== 201) throw new Error(`member ${email}: ${added.statusCode} ${added.body}`)
  return { user, headers: as(user, workspaceId) }
}

async function integrationToken (headers: Headers, scope: 'read_only' | 'read_write'): Promise<Headers> {
  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers, payload: { name: `${scope} sync`, scope } })
  if (minted.statusCode !== 201) throw new Error(`integration token: ${minted.statusCode} ${minted.body}`)
  return bearer(minted.json().token)
}

const requestUpload = async (headers: Headers, payload: unknown): Promise<LightMyRequestResponse> =>
  await app.inject({ method: 'POST', url: '/api/images/upload', headers, payload: payload as Record<string, unknown> })
const requestDownload = async (headers: Headers, key: string): Promise<LightMyRequestResponse> =>
  await app.inject({ url: `/api/images?${new URLSearchParams({ key }).toString()}`, headers })

async function uploadUrl (headers: Headers, contentType = 'image/png', size = PNG.length): Promise<Upload> {
  const answer = await requestUpload(headers, { contentType, size })
  if (answer.statusCode !== 200) throw new Error(`POST /api/images/upload: ${answer.statusCode} ${answer.body}`)
  return answer.json()
}

async function downloadUrl (headers: Headers, key: string): Promise<string> {
  const answer = await requestDownload(headers, key)
  if (answer.statusCode !== 200) throw new Error(`GET /api/images: ${answer.statusCode} ${answer.body}`)
  return answer.json().url
}

/** PUT to the store, as a client would (fetch sets Content-Length from the body itself). */
const put = async (url: string, headers: Headers, body: Buffer | string): Promise<Response> =>
  await fetch(url, { method: 'PUT', headers, body })

/** The S3 error code of a refusal. */
const s3Code = async (response: Response): Promise<string | undefined> => /<Code>([^<]+)<\/Code>/.exec(await response.text())?.[1]

async function assertRefused (t: Test, response: Response, code: string, label: string): Promise<void> {
  t.equal(response.status, 403, `${label}: 403`)
  t.equal(await s3Code(response), code, `${label}: ${code}`)
}

/** Changes one query parameter of a URL. */
function withParam (url: string, name: string, value: string): string {
  const changed = new URL(url)
  changed.searchParams.set(name, value)
  return changed.toString()
}

/**
 * The URL with its X-Amz-Date an hour later, and the credential's day moved with it (an hour
 * later may be tomorrow): a well-formed URL whose signature no longer matches.
 */
function laterDate (url: string): string {
  const later = new Date(Date.now() + 3_600_000).toISOString().replace(/[-:]|\.\d{3}/g, '')
  const credential = new URL(url).searchParams.get('X-Amz-Credential')!.split('/')
  credential[1] = later.slice(0, 8)
  return withParam(withParam(url, 'X-Amz-Date', later), 'X-Amz-Credential', credential.join('/'))
}

// ---------------------------------------------------------------------------------------------

t.test('an image goes up through the presigned PUT and comes back through the presigned GET', async t => {
  const alice = await owner('alice@roundtrip.images.test')
  const before = Date.now()
  const answer = await requestUpload(alice.headers, { contentType: 'image/png', size: PNG.length })
  t.equal(answer.statusCode, 200)
  const upload: Upload = answer.json()
  t.same(Object.keys(upload).sort(), ['expiresAt', 'headers', 'key', 'method', 'uploadUrl'])
  t.equal(upload.method, 'PUT')
  t.match(upload.key, new RegExp(`^workspaces/${alice.workspaceId}/images/${UUID}\\.png$`), 'a server-made key under the workspace prefix')
  t.strictSame(upload.headers, { 'Content-Type': 'image/png', 'Content-Length': String(PNG.length) }, 'exactly the headers to send')

  const url = new URL(upload.uploadUrl)
  t.equal(url.origin + url.pathname, `${ENDPOINT}/${BUCKET}/${upload.key}`, 'path-style URL of the key')
  t.equal(url.searchParams.get('X-Amz-SignedHeaders'), 'content-length;content-type;host', 'type and length are signed')
  t.equal(url.searchParams.get('X-Amz-Expires'), String(TTL_SECONDS), 'lives IMAGE_URL_TTL')
  t.equal(url.searchParams.get('x-amz-checksum-crc32'), null, 'no checksum of an empty body in the URL')
  const signedAt = Date.parse(url.searchParams.get('X-Amz-Date')!.replace(/^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/, '$1-$2-$3T$4:$5:$6Z'))
  t.equal(Date.parse(upload.expiresAt), signedAt + TTL_SECONDS * 1000, 'expiresAt is X-Amz-Date + X-Amz-Expires')
  t.ok(signedAt >= Math.floor(before / 1000) * 1000 && signedAt <= Date.now(), 'signed now')

  const stored = await put(upload.uploadUrl, upload.headers, PNG)
  t.equal(stored.status, 200, `the store accepts the PUT with exactly those headers (${stored.status})`)

  const download = await requestDownload(alice.headers, upload.key)
  t.equal(download.statusCode, 200)
  t.same(Object.keys(download.json()).sort(), ['expiresAt', 'url'])
  const got = new URL(download.json().url)
  t.equal(got.origin + got.pathname, `${ENDPOINT}/${BUCKET}/${upload.key}`)
  t.equal(got.searchParams.get('X-Amz-Expires'), String(TTL_SECONDS))
  const fetched = await fetch(download.json().url)
  t.equal(fetched.status, 200)
  t.equal(fetched.headers.get('content-type'), 'image/png', 'stored with its type')
  t.same(Buffer.from(await fetched.arrayBuffer()), PNG, 'the same bytes come back')

  // Every image type gets its own extension, and its URL takes its type.
  const types: Array<[string, string]> = [['image/png', 'png'], ['image/jpeg', 'jpg'], ['image/gif', 'gif'], ['image/webp', 'webp'], ['image/avif', 'avif']]
  for (const [contentType, extension] of types) {
    const typed = await uploadUrl(alice.headers, contentType, 4)
    t.match(typed.key, new RegExp(`^workspaces/${alice.workspaceId}/images/${UUID}\\.${extension}$`), `${contentType} → .${extension}`)
    t.equal((await put(typed.uploadUrl, typed.headers, 'abcd')).status, 200, `${contentType} upload`)
  }
  const keys = new Set<string>()
  for (let i = 0; i < 5; i++) keys.add((await uploadUrl(alice.headers)).key)
  t.equal(keys.size, 5, 'a new key for every upload')
})

t.test('the signature binds key, method, Content-Type, body length and lifetime: anything else is refused', async t => {
  const alice = await owner('alice@tamper.images.test')
  const bob = await owner('bob@tamper.images.test')
  const upload = await uploadUrl(alice.headers)
  const otherKey = `workspaces/${bob.workspaceId}/images/${randomUUID()}.png`
  const signature = new URL(upload.uploadUrl).searchParams.get('X-Amz-Signature')!

  const tampered: Array<[string, string]> = [
    ['another workspace\'s key', upload.uploadUrl.replace(upload.key, otherKey)],
    ['another key in the workspace', upload.uploadUrl.replace(upload.key, `workspaces/${alice.workspaceId}/images/${randomUUID()}.png`)],
    ['another extension', upload.uploadUrl.replace(upload.key, upload.key.replace(/\.png$/, '.gif'))],
    ['another bucket', upload.uploadUrl.replace(`/${BUCKET}/`, '/other-bucket/')],
    ['a changed signature', withParam(upload.uploadUrl, 'X-Amz-Signature', signature.slice(0, -1) + (signature.endsWith('0') ? '1' : '0'))],
    ['a longer X-Amz-Expires', withParam(upload.uploadUrl, 'X-Amz-Expires', '604800')],
    ['a later X-Amz-Date', laterDate(upload.uploadUrl)],
    ['fewer signed headers', withParam(upload.uploadUrl, 'X-Amz-SignedHeaders', 'host')]
  ]
  for (const [label, url] of tampered) {
    await assertRefused(t, await put(url, upload.headers, PNG), 'SignatureDoesNotMatch', label)
  }

  const wrongRequests: Array<[string, Headers, Buffer | string]> = [
    ['Content-Type image/jpeg', { 'Content-Type': 'image/jpeg' }, PNG],
    ['Content-Type text/html', { 'Content-Type': 'text/html' }, '<script>alert(1)</script>'.padEnd(PNG.length)],
    ['Content-Type image/png; charset=utf-8', { 'Content-Type': 'image/png; charset=utf-8' }, PNG],
    ['no Content-Type', {}, PNG],
    ['a longer body', { 'Content-Type': 'image/png' }, Buffer.concat([PNG, Buffer.alloc(MAX_BYTES * 4)])],
    ['a body one byte longer', { 'Content-Type': 'image/png' }, Buffer.concat([PNG, Buffer.alloc(1)])],
    ['a shorter body', { 'Content-Type': 'image/png' }, PNG.subarray(1)],
    ['an empty body', { 'Content-Type': 'image/png' }, Buffer.alloc(0)]
  ]
  for (const [label, headers, body] of wrongRequests) {
    await assertRefused(t, await put(upload.uploadUrl, headers, body), 'SignatureDoesNotMatch', label)
  }
  const chunked = await fetch(upload.uploadUrl, {
    method: 'PUT',
    headers: { 'Content-Type': 'image/png' },
    body: new Blob([PNG]).stream(),
    duplex: 'half'
  } as RequestInit)
  await assertRefused(t, chunked, 'SignatureDoesNotMatch', 'a chunked body without Content-Length')

  // The method is signed: the upload URL does not read, and a download URL does not write.
  await assertRefused(t, await fetch(upload.uploadUrl), 'SignatureDoesNotMatch', 'GET with the upload URL')
  const read = await downloadUrl(alice.headers, upload.key)
  await assertRefused(t, await put(read, upload.headers, PNG), 'SignatureDoesNotMatch', 'PUT with the download URL')
  await assertRefused(t, await fetch(read, { method: 'DELETE' }), 'SignatureDoesNotMatch', 'DELETE with the download URL')
  await assertRefused(t, await fetch(`${ENDPOINT}/${BUCKET}/${upload.key}`), 'AccessDenied', 'no signature at all')

  t.equal((await fetch(read)).status, 404, 'nothing was stored by the refused requests')
  t.equal((await put(upload.uploadUrl, upload.headers, PNG)).status, 200, 'the URL itself still works, with exactly its headers')
  t.equal((await fetch(read)).status, 200)
  const tamperedRead = withParam(read, 'X-Amz-Signature', '0'.repeat(64))
  await assertRefused(t, await fetch(tamperedRead), 'SignatureDoesNotMatch', 'a download URL with a changed signature')
  await assertRefused(t, await fetch(read.replace(upload.key, otherKey)), 'SignatureDoesNotMatch', 'a download URL for another key')

  // Why the gate: s3rver alone takes a V4 URL with a forged signature and another type (jamhall/s3rver#659).
  const direct = withParam(upload.uploadUrl.replace(ENDPOINT, s3rverEndpoint).replace(upload.key, `workspaces/${alice.workspaceId}/images/forged.txt`),
    'X-Amz-Signature', '0'.repeat(64))
  t.equal((await put(direct, { 'Content-Type': 'text/html' }, 'forged')).status, 200, 's3rver by itself does not check SigV4 signatures')
})

t.test('URLs expire IMAGE_URL_TTL after they are signed', async t => {
  const alice = await owner('alice@expiry.images.test')
  const kept = await uploadUrl(alice.headers)
  t.equal((await put(kept.uploadUrl, kept.headers, PNG)).status, 200)
  try {
    // Signed TTL + 2 s ago: expired now.
    clockOffset = -(TTL_SECONDS + 2) * 1000
    const expired = await uploadUrl(alice.headers)
    t.ok(Date.parse(expired.expiresAt) < Date.now(), 'its expiresAt is past')
    await assertRefused(t, await put(expired.uploadUrl, expired.headers, PNG), 'AccessDenied', 'an expired upload URL')
    const expiredRead = await downloadUrl(alice.headers, kept.key)
    await assertRefused(t, await fetch(expiredRead), 'AccessDenied', 'an expired download URL')
    // s3rver, which does check expiry, agrees.
    const direct = expiredRead.replace(ENDPOINT, s3rverEndpoint)
    t.equal((await fetch(direct)).status, 403, 's3rver refuses the expired URL too')

    // Signed TTL − 10 s ago: still valid for about 10 s.
    clockOffset = -(TTL_SECONDS - 10) * 1000
    const late = await uploadUrl(alice.headers)
    const left = Date.parse(late.expiresAt) - Date.now()
    t.ok(left > 7000 && left <= 10_000, `expiresAt is about 10 s away (${left} ms)`)
    t.equal((await put(late.uploadUrl, late.headers, PNG)).status, 200, 'a URL near the end of its life still works')
    const lateRead = await downloadUrl(alice.headers, late.key)
    t.equal((await fetch(lateRead)).status, 200)
  } finally {
    clockOffset = 0
  }
})

t.test('keys outside the active workspace\'s prefix are 404; a missing key is 400', async t => {
  const alice = await owner('alice@keys.images.test')
  const bob = await owner('bob@keys.images.test')
  const ws = alice.workspaceId
  const bobs = await uploadUrl(bob.headers)
  t.equal((await put(bobs.uploadUrl, bobs.headers, PNG)).status, 200)
  const alices = await uploadUrl(alice.headers)
  const uuid = /images\/([0-9a-f-]{36})\./.exec(alices.key)![1]!
  const inside = `workspaces/${ws}/images`

  t.equal((await requestDownload(bob.headers, bobs.key)).statusCode, 200, 'bob reads his own key')
  const refusedKeys = [
    bobs.key,
    `${inside}/../../${bob.workspaceId}/images/${bobs.key.split('/').pop()!}`,
    `${inside}/../../${bob.workspaceId}/images/${uuid}.png`,
    `${inside}/../${uuid}.png`,
    `${inside}/%2e%2e/${uuid}.png`,
    `${inside}/%2E%2E/${uuid}.png`,
    `${inside}/%252e%252e/${uuid}.png`,
    `${inside}/..%2f${uuid}.png`,
    `workspaces%2F${ws}%2Fimages%2F${uuid}.png`,
    `/${inside}/${uuid}.png`,
    `//${inside}/${uuid}.png`,
    `workspaces\\${ws}\\images\\${uuid}.png`,
    `${inside}\\${uuid}.png`,
    `workspaces/${ws}//images/${uuid}.png`,
    `workspaces//${ws}/images/${uuid}.png`,
    `${inside}//${uuid}.png`,
    `${inside}/./${uuid}.png`,
    `${inside}/${uuid}.png\n`,
    `${inside}/\u0007${uuid}.png`,
    ` ${inside}/${uuid}.png`,
    `${inside}/${uuid}.png `,
    `${inside}/${uuid.toUpperCase()}.png`,
    `${inside}/${uuid}.svg`,
    `${inside}/${uuid}.png.html`,
    `${inside}/${uuid}`,
    `${inside}/${uuid}.PNG`,
    `${inside}/`,
    `${inside}/not-a-uuid.png`,
    `workspaces/${ws}`,
    `workspaces/0${ws}/images/${uuid}.png`,
    `workspaces/${ws}0/images/${uuid}.png`,
    `workspaces/${ws}/other/${uuid}.png`,
    `Workspaces/${ws}/images/${uuid}.png`,
    `${inside}/${uuid}.png/..`,
    `${inside}/${uuid}.pn\u0261`,
    `${BUCKET}/${inside}/${uuid}.png`,
    'x'.repeat(1024)
  ]
  for (const key of refusedKeys) {
    const answer = await requestDownload(alice.headers, key)
    t.equal(answer.statusCode, 404, `${JSON.stringify(key)}: 404`)
    t.same(answer.json(), NOT_FOUND)
  }
  // As sent on the wire: escapes the query parser decodes once, and once only.
  const rawQueries = [
    `key=${inside}/%2e%2e/%2e%2e/${bob.workspaceId}/images/${uuid}.png`,
    `key=${inside}/%2E%2E/${uuid}.png`,
    `key=${inside}/%252e%252e/${uuid}.png`,
    `key=%2F${inside}/${uuid}.png`,
    `key=${inside}%5C${uuid}.png`,
    `key=${inside}/${uuid}%2epng%0a`,
    `key=workspaces%252F${ws}%252Fimages%252F${uuid}.png`
  ]
  for (const query of rawQueries) {
    const answer = await app.inject({ url: `/api/images?${query}`, headers: alice.headers })
    t.equal(answer.statusCode, 404, `?${query}: 404`)
    t.same(answer.json(), NOT_FOUND)
  }
  const encodedRight = await app.inject({ url: `/api/images?key=${encodeURIComponent(alices.key)}`, headers: alice.headers })
  t.equal(encodedRight.statusCode, 200, 'the exact key, percent-encoded once, is found')

  // A NUL character is no text at all: 400 naming the field, as in any query string.
  for (const query of [`?key=${inside}/${uuid}.png%00`, `?key=${encodeURIComponent(`${inside}/${uuid}.png\u0000`)}`]) {
    const answer = await app.inject({ url: `/api/images${query}`, headers: alice.headers })
    t.equal(answer.statusCode, 400, `${query}: 400`)
    t.same(answer.json(), { error: 'Invalid query payload', code: 'VALIDATION_FAILED', details: { key: 'must not contain NUL characters' } })
  }
  for (const query of ['', '?', '?key=', '?other=1']) {
    const answer = await app.inject({ url: `/api/images${query}`, headers: alice.headers })
    t.equal(answer.statusCode, 400, `${query || 'no query'}: 400`)
    t.equal(answer.json().code, 'VALIDATION_FAILED')
    t.type(answer.json().details?.key, 'string', 'details name key')
  }
  t.equal((await app.inject({ url: `/api/images?key=${'x'.repeat(1025)}`, headers: alice.headers })).statusCode, 400, 'an over-long key is 400')
})

t.test('upload payloads: only image types, an integer size of 1..IMAGE_MAX_BYTES, server-made keys', async t => {
  const alice = await owner('alice@payload.images.test')
  const invalid: Array<[unknown, string]> = [
    [{ contentType: 'image/svg+xml', size: 10 }, 'contentType'],
    [{ contentType: 'text/html', size: 10 }, 'contentType'],
    [{ contentType: 'application/octet-stream', size: 10 }, 'contentType'],
    [{ contentType: 'IMAGE/PNG', size: 10 }, 'contentType'],
    [{ contentType: 'image/png; charset=utf-8', size: 10 }, 'contentType'],
    [{ contentType: 'image/jpg', size: 10 }, 'contentType'],
    [{ contentType: '', size: 10 }, 'contentType'],
    [{ contentType: ['image/png'], size: 10 }, 'contentType'],
    [{ size: 10 }, 'contentType'],
    [{ contentType: 'image/png' }, 'size'],
    [{ contentType: 'image/png', size: 0 }, 'size'],
    [{ contentType: 'image/png', size: -1 }, 'size'],
    [{ contentType: 'image/png', size: 1.5 }, 'size'],
    [{ contentType: 'image/png', size: MAX_BYTES + 1 }, 'size'],
    [{ contentType: 'image/png', size: 5 * 1024 * 1024 }, 'size'],
    [{ contentType: 'image/png', size: 'big' }, 'size'],
    [{ contentType: 'image/png', size: null }, 'size']
  ]
  for (const [payload, field] of invalid) {
    const answer = await requestUpload(alice.headers, payload)
    const label = JSON.stringify(payload)
    t.equal(answer.statusCode, 400, `${label}: 400`)
    const body = answer.json()
    t.equal(body.error, 'Invalid image payload', `${label}: message`)
    t.equal(body.code, 'VALIDATION_FAILED')
    t.type(body.details?.[field], 'string', `${label}: details name ${field} (${JSON.stringify(body.details)})`)
  }
  t.same((await requestUpload(alice.headers, { contentType: 'image/png' })).json().details, { size: 'is required' }, 'size is required: the signature enforces it')
  const bare = await app.inject({ method: 'POST', url: '/api/images/upload', headers: { ...alice.headers, 'content-type': 'application/json' }, payload: '[]' })
  t.equal(bare.statusCode, 400, 'a body that is not an object')

  const largest = await uploadUrl(alice.headers, 'image/png', MAX_BYTES)
  t.equal(largest.headers['Content-Length'], String(MAX_BYTES), 'IMAGE_MAX_BYTES itself is allowed')
  t.equal((await put(largest.uploadUrl, largest.headers, Buffer.alloc(MAX_BYTES, 1))).status, 200, 'and uploads')
  t.equal((await uploadUrl(alice.headers, 'image/gif', 1)).headers['Content-Length'], '1', 'one byte is allowed')

  // Unknown fields are dropped: a client cannot choose its key, bucket or lifetime.
  const chosen = await requestUpload(alice.headers, { contentType: 'image/png', size: 10, key: 'workspaces/1/images/mine.png', bucket: 'other', expiresIn: 604800 })
  t.equal(chosen.statusCode, 200)
  t.match(chosen.json().key, new RegExp(`^workspaces/${alice.workspaceId}/images/${UUID}\\.png$`))
  t.equal(new URL(chosen.json().uploadUrl).searchParams.get('X-Amz-Expires'), String(TTL_SECONDS))
})

t.test('roles: every member reads, owners, managers and staff upload; read-only tokens only read', async t => {
  const alice = await owner('alice@roles.images.test')
  const ws = alice.workspaceId
  const viewer = await member(alice.headers, ws, 'vic@roles.images.test', 'viewer')
  const staff = await member(alice.headers, ws, 'sam@roles.images.test', 'staff')
  const manager = await member(alice.headers, ws, 'mia@roles.images.test', 'manager')
  const readOnly = await integrationToken(alice.headers, 'read_only')
  const readWrite = await integrationToken(alice.headers, 'read_write')
  const stranger = await owner('eve@roles.images.test')
  const image = await uploadUrl(alice.headers)
  t.equal((await put(image.uploadUrl, image.headers, PNG)).status, 200)

  const refused: Array<[string, Headers, Record<string, string>]> = [['viewer', viewer.headers, FORBIDDEN], ['read-only token', readOnly, READ_ONLY]]
  for (const [who, headers, expected] of refused) {
    const upload = await requestUpload(headers, { contentType: 'image/png', size: PNG.length })
    t.equal(upload.statusCode, 403, `${who}: upload 403`)
    t.same(upload.json(), expected)
    t.equal((await requestUpload(headers, { contentType: 'text/html' })).statusCode, 403, `${who}: refused before the body is read`)
    const read = await requestDownload(headers, image.key)
    t.equal(read.statusCode, 200, `${who}: GET 200`)
    const fetched = await fetch(read.json().url)
    t.same(Buffer.from(await fetched.arrayBuffer()), PNG, `${who}: the URL serves the image`)
  }

  const writers: Array<[string, Headers]> = [['owner', alice.headers], ['manager', manager.headers], ['staff', staff.headers], ['read-write token', readWrite]]
  for (const [who, headers] of writers) {
    const upload = await requestUpload(headers, { contentType: 'image/webp', size: 4 })
    t.equal(upload.statusCode, 200, `${who}: upload 200`)
    t.match(upload.json().key, new RegExp(`^workspaces/${ws}/images/${UUID}\\.webp$`), `${who}: in the workspace acted in`)
    t.equal((await requestDownload(headers, image.key)).statusCode, 200, `${who}: GET 200`)
  }

  // The viewer in their own personal workspace: alice's keys are another workspace's.
  const viewerAtHome = as(viewer.user)
  t.same((await requestDownload(viewerAtHome, image.key)).json(), NOT_FOUND, 'in another active workspace the key is 404')
  const atHome = await requestUpload(viewerAtHome, { contentType: 'image/png', size: 4 })
  t.equal(atHome.statusCode, 200, 'the viewer owns their personal workspace')
  t.notMatch(atHome.json().key, new RegExp(`^workspaces/${ws}/`), 'uploads go to the active workspace, not the one of the other role')

  // Not a member: naming the workspace is 403; acting at home, the key is 404.
  t.equal((await requestDownload(as(stranger.user, ws), image.key)).statusCode, 403, 'a stranger naming the workspace: 403')
  t.equal((await requestUpload(as(stranger.user, ws), { contentType: 'image/png', size: 4 })).statusCode, 403)
  t.same((await requestDownload(stranger.headers, image.key)).json(), NOT_FOUND)

  for (const [label, answer] of [
    ['GET', await app.inject({ url: `/api/images?key=${encodeURIComponent(image.key)}` })],
    ['upload', await app.inject({ method: 'POST', url: '/api/images/upload', payload: { contentType: 'image/png', size: 4 } })],
    ['GET with a bad token', await app.inject({ url: `/api/images?key=${encodeURIComponent(image.key)}`, headers: bearer('not-a-token') })]
  ] as const) {
    t.equal(answer.statusCode, 401, `no auth: ${label} 401`)
    t.equal(answer.json().error, 'Authentication required.')
  }
})

t.test('without image storage both routes answer 503 (after authentication)', async t => {
  const bare = await build(t)
  const user = await registerVerified(bare, 'alice@unconfigured.images.test')
  const headers = bearer(user.accessToken)
  const answers = [
    await bare.inject({ method: 'POST', url: '/api/images/upload', headers, payload: { contentType: 'image/png', size: 4 } }),
    await bare.inject({ method: 'POST', url: '/api/images/upload', headers, payload: { contentType: 'text/html' } }),
    await bare.inject({ url: '/api/images?key=workspaces/1/images/x.png', headers }),
    await bare.inject({ url: '/api/images', headers })
  ]
  for (const answer of answers) {
    t.equal(answer.statusCode, 503)
    t.same(answer.json(), NOT_CONFIGURED)
  }
  t.equal((await bare.inject({ url: '/api/images?key=x' })).statusCode, 401, 'authentication still comes first')
})

t.test('the OpenAPI document describes both routes', async t => {
  const document = (await app.inject({ url: '/docs/json' })).json()
  t.ok(document.paths['/api/images/upload']?.post, 'POST /api/images/upload')
  t.ok(document.paths['/api/images']?.get, 'GET /api/images')
})

t.test('IMAGE_URL_TTL must be a lifetime SigV4 can sign: 1 s to 7 days', async t => {
  t.equal(expiresInSeconds(300_000), 300, 'the default 5m is 300 s')
  t.equal(expiresInSeconds(1000), 1)
  t.equal(expiresInSeconds(7 * 86_400_000), 604_800, '7d is the most')
  t.throws(() => expiresInSeconds(7 * 86_400_000 + 1000), /IMAGE_URL_TTL must be between 1s and 7d/)
  t.throws(() => expiresInSeconds(400), /IMAGE_URL_TTL must be between 1s and 7d/)
})
