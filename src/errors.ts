import createError from '@fastify/error'

/*
 * Errors are values with a stable code. Each factory makes an error that the root error
 * handler (plugins/errors.ts) renders as the SPEC's body: { error, code, details? }.
 * Messages are the seeds' own where a seed gives one.
 */

export interface HttpError extends Error {
  statusCode: number
  code: string
  details?: Record<string, unknown>
  /** Seconds a client should wait (a 429's Retry-After header), when the thrower knows it. */
  retryAfter?: number
}

const BadRequest = createError('BAD_REQUEST', '%s', 400)
const Unauthorized = createError('UNAUTHORIZED', '%s', 401)
const Forbidden = createError('FORBIDDEN', '%s', 403)
const NotFound = createError('NOT_FOUND', '%s', 404)
const Conflict = createError('CONFLICT', '%s', 409)
const Gone = createError('GONE', '%s', 410)
const UnsupportedMediaType = createError('UNSUPPORTED_MEDIA_TYPE', '%s', 415)
const TooManyRequests = createError('RATE_LIMITED', '%s', 429)
const Unavailable = createError('SERVICE_UNAVAILABLE', '%s', 503)

function make (Base: new (message: string) => Error, message: string, code?: string, details?: Record<string, unknown>): HttpError {
  const error = new Base(message) as HttpError
  if (code !== undefined) error.code = code
  if (details !== undefined) error.details = details
  return error
}

const capitalize = (text: string): string => text.charAt(0).toUpperCase() + text.slice(1)

export const errors = {
  badRequest: (message: string, code = 'BAD_REQUEST', details?: Record<string, unknown>) => make(BadRequest, message, code, details),
  invalidPayload: (thing: string, details: Record<string, unknown>) => make(BadRequest, `Invalid ${thing} payload`, 'VALIDATION_FAILED', details),
  unauthorized: (message = 'Authentication required.', code = 'UNAUTHORIZED') => make(Unauthorized, message, code),
  forbidden: (message = 'You do not have permission for that action.', code = 'FORBIDDEN') => make(Forbidden, message, code),
  /** A cookie-authenticated request (or the magic-link page's form) from an origin that is not ours. */
  originNotAllowed: () => make(Forbidden, 'Requests must come from an allowed origin', 'ORIGIN_NOT_ALLOWED'),
  notFound: (thing: string) => make(NotFound, `${capitalize(thing)} not found`, 'NOT_FOUND'),
  conflict: (message: string, code = 'CONFLICT') => make(Conflict, message, code),
  gone: (message: string, code = 'GONE') => make(Gone, message, code),
  /** A body that is not JSON where JSON is expected (415). */
  unsupportedMediaType: () => make(UnsupportedMediaType, 'Unsupported content type; send application/json', 'UNSUPPORTED_MEDIA_TYPE'),
  tooManyRequests: (message = 'Too many requests from this IP, please try again later.', retryAfterMs?: number) => {
    const error = make(TooManyRequests, message, 'RATE_LIMITED')
    if (retryAfterMs !== undefined) error.retryAfter = Math.max(1, Math.ceil(retryAfterMs / 1000))
    return error
  },
  unavailable: (message: string, code = 'SERVICE_UNAVAILABLE') => make(Unavailable, message, code)
}

/** True for errors made by the factories above: their messages are written for clients. */
export function isHttpError (error: unknown): error is HttpError {
  return error instanceof BadRequest || error instanceof Unauthorized || error instanceof Forbidden ||
    error instanceof NotFound || error instanceof Conflict || error instanceof Gone || error instanceof UnsupportedMediaType ||
    error instanceof TooManyRequests || error instanceof Unavailable
}
