import type { FastifyError, FastifyReply, FastifyRequest, FastifySchemaValidationError } from 'fastify'
import fp from 'fastify-plugin'
import { errors, isHttpError } from '../src/errors.js'
import type { ErrorBody } from '../src/schemas/common.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Names the body in validation errors: `Invalid <payload> payload` (seed 003). */
    payload?: string
  }
}

type ValidationContext = 'body' | 'querystring' | 'params' | 'headers'

const CONTEXT_NAMES: Record<ValidationContext, string> = {
  body: 'request',
  querystring: 'query',
  params: 'path parameter',
  headers: 'header'
}

/**
 * Field name → problem, one entry per bad field: `required` errors name the missing
 * property, others the property at the instance path ("items.0.name").
 */
export function validationDetails (issues: FastifySchemaValidationError[], context: string): Record<string, string> {
  const details: Record<string, string> = {}
  for (const issue of issues) {
    const path = issue.instancePath.split('/').filter(part => part !== '')
    const params = issue.params as Record<string, unknown>
    let problem = issue.message ?? 'is invalid'
    if (issue.keyword === 'required' && typeof params.missingProperty === 'string') {
      path.push(params.missingProperty)
      problem = 'is required'
    } else if (issue.keyword === 'additionalProperties' && typeof params.additionalProperty === 'string') {
      path.push(params.additionalProperty)
      problem = 'is not allowed'
    }
    const field = path.length > 0 ? path.join('.') : context
    details[field] ??= problem
  }
  return details
}

// PostgreSQL's connection-level SQLSTATEs (class 08), shutdown and start-up (57P01–57P03),
// too many connections (53300) and a statement cancelled by statement_timeout (57014).
const DATABASE_DOWN_CODES = new Set(['57P01', '57P02', '57P03', '53300', '57014'])
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENOTFOUND', 'EAI_AGAIN'])
const POOL_MESSAGES = /^(timeout exceeded when trying to connect|Connection terminated( unexpectedly| due to connection timeout)?|Client has encountered a connection error and is not queryable)$/

/** True for an error that says PostgreSQL cannot be reached or did not answer in time. */
export function databaseUnavailable (error: { code?: unknown, message?: unknown, syscall?: unknown }): boolean {
  const code = typeof error.code === 'string' ? error.code : ''
  return code.startsWith('08') || DATABASE_DOWN_CODES.has(code) || NETWORK_CODES.has(code) ||
    // A Unix socket that is gone (the embedded database's socket folder removed): connect ENOENT.
    // Not ENOENT in general, which also means a file that is not there.
    (code === 'ENOENT' && error.syscall === 'connect') ||
    (typeof error.message === 'string' && POOL_MESSAGES.test(error.message))
}

// ioredis without an offline queue fails a command at once while it is disconnected, and
// after REDIS_COMMAND_TIMEOUT when Redis does not answer.
const REDIS_MESSAGES = /^(Stream isn't writeable and enableOfflineQueue options is false|Connection is closed\.|Command timed out|Reached the max retries per request limit)/

/** True for an error that says Redis (the store) cannot be reached or did not answer in time. */
export function storeUnavailable (error: { name?: unknown, message?: unknown }): boolean {
  return error.name === 'StoreUnavailableError' || error.name === 'MaxRetriesPerRequestError' ||
    (typeof error.message === 'string' && REDIS_MESSAGES.test(error.message))
}

/** The SPEC's error body (decision 1) for any error; 5xx messages never reach the client. */
export function errorBody (error: FastifyError, request: FastifyRequest): { statusCode: number, body: ErrorBody } {
  if (error.validation !== undefined) {
    const context = (error.validationContext ?? 'body') as ValidationContext
    const thing = context === 'body' ? request.routeOptions.config.payload ?? CONTEXT_NAMES.body : CONTEXT_NAMES[context]
    const invalid = errors.invalidPayload(thing, validationDetails(error.validation, context === 'querystring' ? 'query' : context))
    return { statusCode: 400, body: { error: invalid.message, code: invalid.code, details: invalid.details } }
  }
  if (isHttpError(error)) {
    const body: ErrorBody = { error: error.message, code: error.code }
    if (error.details !== undefined) body.details = error.details
    return { statusCode: error.statusCode, body }
  }
  // The store (Redis) or PostgreSQL not answering is a temporary condition, not a bug.
  const statusCode = storeUnavailable(error) || databaseUnavailable(error)
    ? 503
    : error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 600 ? error.statusCode : 500
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { statusCode: 413, body: { error: 'Request body is too large', code: 'PAYLOAD_TOO_LARGE' } }
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': {
      const unsupported = errors.unsupportedMediaType()
      return { statusCode: 415, body: { error: unsupported.message, code: unsupported.code } }
    }
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { statusCode: 400, body: { error: 'Request body length does not match Content-Length', code: 'BAD_REQUEST' } }
  }
  if (statusCode >= 500) {
    return {
      statusCode,
      body: statusCode === 503
        ? { error: 'Service temporarily unavailable', code: 'SERVICE_UNAVAILABLE' }
        : { error: 'Internal server error', code: 'INTERNAL_ERROR' }
    }
  }
  // Other 4xx raised by Fastify or a plugin: their messages are written for clients.
  return { statusCode, body: { error: error.message, code: genericCode(statusCode) } }
}

function genericCode (statusCode: number): string {
  switch (statusCode) {
    case 401: return 'UNAUTHORIZED'
    case 403: return 'FORBIDDEN'
    case 404: return 'NOT_FOUND'
    case 405: return 'METHOD_NOT_ALLOWED'
    case 406: return 'NOT_ACCEPTABLE'
    case 408: return 'REQUEST_TIMEOUT'
    case 409: return 'CONFLICT'
    case 413: return 'PAYLOAD_TOO_LARGE'
    case 415: return 'UNSUPPORTED_MEDIA_TYPE'
    case 429: return 'RATE_LIMITED'
    default: return 'BAD_REQUEST'
  }
}

/** One root error handler and the 404 handler, both rendering the SPEC's error body. */
export default fp(async (fastify) => {
  fastify.setErrorHandler(async (error: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    const { statusCode, body } = errorBody(error, request)
    if (statusCode >= 500 && !isHttpError(error)) {
      request.log.error({ err: error, route: request.routeOptions.url }, 'request failed')
    } else if (statusCode >= 500) {
      // Our own 503s (a store down, storage not configured) are conditions, not bugs: no stack.
      request.log.warn({ statusCode, code: body.code, route: request.routeOptions.url }, body.error)
    } else if (statusCode !== 404) {
      request.log.info({ statusCode, code: body.code }, body.error)
    }
    if (isHttpError(error) && error.retryAfter !== undefined) reply.header('Retry-After', error.retryAfter)
    return await reply.code(statusCode).type('application/json; charset=utf-8').send(body)
  })

  fastify.setNotFoundHandler(async (_request, reply) => {
    return await reply.code(404).send({ error: 'Not found', code: 'NOT_FOUND' } satisfies ErrorBody)
  })
}, { name: 'errors', fastify: '5.x' })
