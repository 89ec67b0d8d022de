import type { FastifyServerOptions } from 'fastify'
import type { Config } from './config.js'

/** Query parameters whose values never reach a log line. */
const SECRET_PARAMS = /^(token|code|state|refresh_?token|access_?token|id_token|password|key)$/i

/** The URL as logged: secret query values replaced (magic-link tokens, OAuth codes). */
export function redactUrl (url: string): string {
  const mark = url.indexOf('?')
  if (mark === -1) return url
  const params = new URLSearchParams(url.slice(mark + 1))
  let changed = false
  for (const name of [...params.keys()]) {
    if (SECRET_PARAMS.test(name)) {
      params.set(name, '[redacted]')
      changed = true
    }
  }
  return changed ? `${url.slice(0, mark)}?${params.toString()}` : url
}

export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'res.headers["set-cookie"]',
  'password', '*.password',
  'token', '*.token',
  'refreshToken', '*.refreshToken',
  'accessToken', '*.accessToken',
  'authorization', '*.authorization',
  'cookie', '*.cookie'
]

/** pino options: redaction of credentials, pretty output only on a terminal. */
export function loggerOptions (config: Config): NonNullable<FastifyServerOptions['logger']> {
  return {
    level: config.LOG_LEVEL,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    serializers: {
      req (request: { method: string, url: string, hostname?: string, ip?: string }) {
        return { method: request.method, url: redactUrl(request.url), host: request.hostname, remoteAddress: request.ip }
      }
    },
    ...(process.stdout.isTTY && config.NODE_ENV !== 'test'
      ? { transport: { target: 'pino-pretty', options: { translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' } } }
      : {})
  }
}
