import type { IncomingMessage, ServerResponse } from 'node:http'
import cors, { type FastifyCorsOptions } from '@fastify/cors'
import fp from 'fastify-plugin'
import helmet, { type HelmetOptions } from 'helmet'
import { parse as secureJsonParse } from 'secure-json-parse'
import { isProduction } from '../src/config.js'
import { errors } from '../src/errors.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** @fastify/cors's per-route options; PUBLIC_CORS for the public key routes. */
    cors?: FastifyCorsOptions | false
    /** Helmet options of a route that needs its own (a page with scripts). */
    helmet?: HelmetOptions
  }
}

/** Route config for public, cacheable routes: any origin, never with credentials (the JWKS). */
export const PUBLIC_CORS: FastifyCorsOptions = { origin: '*', credentials: false, methods: ['GET', 'HEAD'] }

const BASE_HELMET: HelmetOptions = {
  contentSecurityPolicy: {
    useDefaults: false,
    directives: {
      defaultSrc: ["'none'"],
      baseUri: ["'none'"],
      formAction: ["'none'"],
      frameAncestors: ["'none'"]
    }
  },
  referrerPolicy: { policy: 'no-referrer' },
  xFrameOptions: { action: 'deny' },
  // Headers that only matter for HTML documents (or for IE and Flash) are left off JSON
  // answers: each costs every response its bytes and validation (measured: the full set took
  // 8 µs of a 38 µs health check). Pages add them back with DOCUMENT_HELMET.
  crossOriginOpenerPolicy: false,
  originAgentCluster: false,
  xDnsPrefetchControl: false,
  xDownloadOptions: false,
  xPermittedCrossDomainPolicies: false,
  xXssProtection: false
}

/** The helmet headers of an HTML page (spread into a route's `helmet` option). */
export const DOCUMENT_HELMET: HelmetOptions = {
  crossOriginOpenerPolicy: true,
  originAgentCluster: true,
  xDnsPrefetchControl: true,
  xDownloadOptions: true,
  xPermittedCrossDomainPolicies: true,
  xXssProtection: true
}

type Middleware = (request: IncomingMessage, response: ServerResponse, next: (error?: unknown) => void) => void

/** The headers helmet sets with these options (its middleware is synchronous and request-independent). */
function helmetHeaders (options: HelmetOptions): Record<string, string> {
  const headers: Record<string, string> = {}
  const recorder = {
    setHeader (name: string, value: string) { headers[name.toLowerCase()] = value },
    removeHeader (name: string) { Reflect.deleteProperty(headers, name.toLowerCase()) }
  }
  let outcome: unknown = 'pending'
  ;(helmet(options) as Middleware)({} as IncomingMessage, recorder as unknown as ServerResponse, error => { outcome = error })
  if (outcome !== undefined) throw new Error(`helmet could not compute its headers: ${String(outcome)}`)
  return headers
}

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE']
const ALLOWED_HEADERS = ['Content-Type', 'Authorization', 'X-Workspace-Id']
const EXPOSED_HEADERS = ['RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset', 'Retry-After']

/**
 * Security headers (helmet), CORS and the JSON body parser. JSON answers carry a CSP that forbids everything,
 * HSTS is sent in production, and CORS answers only the origins of CORS_ORIGINS, with
 * credentials; `*` (seed 000) means any origin without credentials. An origin that is not
 * on the list gets no Access-Control-Allow-Origin at all: no origin is ever reflected.
 */
export default fp(async (fastify) => {
  const { config } = fastify
  // helmet decides the headers; they depend only on the options, so each set is computed
  // once (by running helmet's middleware against a recording response) and added to every
  // reply in one call. (@fastify/helmet reruns the middleware on every request: 12.6k instead
  // of 31k req/s measured alone.)
  const hsts = isProduction(config) ? { maxAge: 31_536_000, includeSubDomains: true } : false
  const defaultHeaders = helmetHeaders({ ...BASE_HELMET, strictTransportSecurity: hsts } as HelmetOptions)
  const routeHeaders = new Map<HelmetOptions, Record<string, string>>()
  fastify.addHook('onRoute', route => {
    const options = route.config?.helmet
    if (options !== undefined && !routeHeaders.has(options)) {
      routeHeaders.set(options, helmetHeaders({ ...BASE_HELMET, strictTransportSecurity: hsts, ...options } as HelmetOptions))
    }
  })
  fastify.addHook('onRequest', (request, reply, done) => {
    const options = request.routeOptions.config.helmet
    reply.headers(options === undefined ? defaultHeaders : routeHeaders.get(options) ?? defaultHeaders)
    done()
  })

  const anyOrigin = config.CORS_ORIGINS.includes('*')
  const allowed = new Set(config.CORS_ORIGINS)
  const apiPolicy: FastifyCorsOptions = anyOrigin
    ? { origin: '*', credentials: false, methods: METHODS, allowedHeaders: ALLOWED_HEADERS, exposedHeaders: EXPOSED_HEADERS, maxAge: 600 }
    : {
        origin: (origin, callback) => { callback(null, origin !== undefined && allowed.has(origin)) },
        credentials: true,
        methods: METHODS,
        allowedHeaders: ALLOWED_HEADERS,
        exposedHeaders: EXPOSED_HEADERS,
        maxAge: 600
      }
  await fastify.register(cors, { hook: 'onRequest', ...apiPolicy })

  // The API takes JSON only: any other body is 415 before validation (Fastify would parse
  // text/plain into a string, which the schema then refused as a 400). The routes that take a
  // form (OAuth's, for Apple's form_post; the magic-link page) add a urlencoded parser for themselves.
  fastify.removeContentTypeParser('text/plain')

  // JSON bodies: `__proto__` and `constructor.prototype` keys are refused with their own
  // code (Fastify's parser reports every failure as "not valid JSON").
  fastify.removeContentTypeParser('application/json')
  fastify.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    if (body === '') {
      done(errors.badRequest('Request body is empty', 'EMPTY_BODY'), undefined)
      return
    }
    try {
      done(null, secureJsonParse(body as string, { protoAction: 'error', constructorAction: 'error' }))
    } catch (error) {
      done(/prototype/.test((error as Error).message)
        ? errors.badRequest('Request body contains a forbidden property (__proto__ or constructor.prototype)', 'FORBIDDEN_PROPERTY')
        : errors.badRequest('Request body is not valid JSON', 'INVALID_JSON'), undefined)
    }
  })
}, { name: 'security', dependencies: ['config'], fastify: '5.x' })
