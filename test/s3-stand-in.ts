import { createHash, createHmac, timingSafeEqual } from 'node:crypto'
import { createServer, request as forward, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import { createRequire } from 'node:module'
import { tempDir, type TestContext } from './helper.js'

/*
 * The S3 stand-in of the image tests: s3rver stores the objects, and a SigV4 gate in front of
 * it — written from AWS's description of query-string authentication, independently of the
 * SDK that signs — checks every signature the way S3 and R2 do. The gate is needed because
 * s3rver 3.x checks only a V4 URL's expiry and access key, never its signature
 * (jamhall/s3rver#659).
 */

/** s3rver's built-in account, and the region the gate expects. */
export const S3_STAND_IN = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER', region: 'us-east-1' } as const
const ACCESS_KEY_ID = S3_STAND_IN.accessKeyId
const SECRET_ACCESS_KEY = S3_STAND_IN.secretAccessKey
const REGION = S3_STAND_IN.region

interface S3rverServer { run: () => Promise<{ port: number }>, close: () => Promise<void> }
type S3rverClass = new (options: Record<string, unknown>) => S3rverServer
const S3rver = createRequire(import.meta.url)('s3rver') as S3rverClass

const sha256 = (data: string): string => createHash('sha256').update(data).digest('hex')
const hmac = (key: Buffer | string, data: string): Buffer => createHmac('sha256', key).update(data).digest()
/** RFC 3986 encoding, as SigV4's canonical request wants it. */
const uriEncode = (text: string): string =>
  encodeURIComponent(text).replace(/[!'()*]/g, char => `%${char.charCodeAt(0).toString(16).toUpperCase()}`)
const headerValue = (headers: IncomingHttpHeaders, name: string): string | undefined => {
  const value = headers[name]
  return Array.isArray(value) ? value.join(',') : value
}

class S3Refusal extends Error {
  constructor (readonly code: string, message: string) { super(message) }
}

/**
 * Checks a presigned (query-string) SigV4 request as S3 does: the credential scope, the
 * lifetime, and the signature over the method, path, query and the signed headers *as the
 * request carries them* — so a signed Content-Type or Content-Length that differs fails.
 */
function verifyPresigned (request: IncomingMessage, now: number): void {
  const url = new URL(request.url ?? '/', 'http://gate')
  const query = url.searchParams
  if (query.get('X-Amz-Algorithm') !== 'AWS4-HMAC-SHA256') throw new S3Refusal('AccessDenied', 'Access Denied')
  const [accessKeyId, day, region, service, terminator] = (query.get('X-Amz-Credential') ?? '').split('/')
  const amzDate = query.get('X-Amz-Date') ?? ''
  const expires = Number(query.get('X-Amz-Expires'))
  const signedHeaders = (query.get('X-Amz-SignedHeaders') ?? '').split(';')
  const signature = query.get('X-Amz-Signature') ?? ''
  if (accessKeyId !== ACCESS_KEY_ID) throw new S3Refusal('InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.')
  const start = Date.parse(amzDate.replace(/^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/, '$1-$2-$3T$4:$5:$6Z'))
  if (day !== amzDate.slice(0, 8) || region !== REGION || service !== 's3' || terminator !== 'aws4_request' || Number.isNaN(start) ||
    !Number.isInteger(expires) || expires < 1 || expires > 604_800 || !signedHeaders.includes('host')) {
    throw new S3Refusal('AuthorizationQueryParametersError', 'Error parsing the X-Amz-Credential parameter')
  }
  if (now > start + expires * 1000) throw new S3Refusal('AccessDenied', 'Request has expired')

  const canonicalUri = url.pathname.split('/').map(segment => uriEncode(decodeURIComponent(segment))).join('/')
  const canonicalQuery = [...query.entries()].filter(([name]) => name !== 'X-Amz-Signature')
    .map(([name, value]) => `${uriEncode(name)}=${uriEncode(value)}`).sort().join('&')
  const canonicalHeaders = signedHeaders.map(name => `${name}:${(headerValue(request.headers, name) ?? '').trim().replace(/\s+/g, ' ')}\n`).join('')
  const canonicalRequest = [request.method, canonicalUri, canonicalQuery, canonicalHeaders, signedHeaders.join(';'), 'UNSIGNED-PAYLOAD'].join('\n')
  const scope = `${day}/${region}/${service}/aws4_request`
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonicalRequest)].join('\n')
  const signingKey = hmac(hmac(hmac(hmac(`AWS4${SECRET_ACCESS_KEY}`, day), region), service), 'aws4_request')
  const expected = Buffer.from(hmac(signingKey, stringToSign).toString('hex'))
  const given = Buffer.from(signature)
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new S3Refusal('SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided.')
  }
}

/** The S3 endpoint the app signs for: verifies each request, then hands it to s3rver. */
async function startGate (t: TestContext, upstreamPort: number): Promise<number> {
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      try {
        verifyPresigned(request, Date.now())
      } catch (error) {
        const { code, message } = error as S3Refusal
        response.writeHead(403, { 'content-type': 'application/xml' })
        response.end(`<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`)
        return
      }
      const upstream = forward({ host: '127.0.0.1', port: upstreamPort, method: request.method, path: request.url, headers: request.headers }, answer => {
        response.writeHead(answer.statusCode ?? 502, answer.headers)
        answer.pipe(response)
      })
      upstream.on('error', () => { response.writeHead(502).end() })
      upstream.end(Buffer.concat(chunks))
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return (server.address() as { port: number }).port
}

/**
 * A local S3 for tests: s3rver (which stores the objects) behind the SigV4 gate. Its account
 * is s3rver's built-in one (S3_STAND_IN below); `endpoint` is the gate, `s3rverEndpoint`
 * s3rver itself (which checks no signature).
 */
export async function startS3StandIn (t: TestContext, bucket: string): Promise<{ endpoint: string, s3rverEndpoint: string }> {
  const s3 = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: await tempDir(t), configureBuckets: [{ name: bucket }] })
  const { port } = await s3.run()
  t.teardown(async () => { await s3.close() })
  const gatePort = await startGate(t, port)
  return { endpoint: `http://127.0.0.1:${gatePort}`, s3rverEndpoint: `http://127.0.0.1:${port}` }
}
