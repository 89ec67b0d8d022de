import { Type, type Static, type TSchema } from 'typebox'

/** The SPEC's error body (decision 1). */
export const ErrorBody = Type.Object({
  error: Type.String({ description: 'Human-readable message' }),
  code: Type.String({ description: 'Stable UPPER_SNAKE code' }),
  details: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: 'Per-field problems for validation errors' }))
}, { title: 'Error' })
export type ErrorBody = Static<typeof ErrorBody>

/** Response entries for the error statuses a route can answer. */
export function errorResponses (...statuses: number[]): Record<number, typeof ErrorBody> {
  return Object.fromEntries(statuses.map(status => [status, ErrorBody]))
}

/** The largest PostgreSQL integer (int4): numeric ids (workspaces) are bounded by it. */
export const MAX_INT4 = 2_147_483_647
/** The largest integer a JavaScript number holds exactly (bigint ids such as the audit log's). */
export const MAX_SAFE_ID = Number.MAX_SAFE_INTEGER

/** A uuid in a body or query string: a malformed one is a 400 naming the field. */
export const Uuid = Type.String({ format: 'uuid' })
/** The uuids PostgreSQL's uuid type takes (plugins/validation.ts gives the `uuid` format this meaning). */
export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
/**
 * An id in the URL path, deliberately left unchecked by the schema: a URL with a malformed id
 * names no resource, so it answers exactly what a well-formed unknown id answers (404 with the
 * route's not-found body, as another workspace's id does), never a 400. The handler checks it
 * with UUID_PATTERN before it reaches a query.
 */
export const PathId = Type.String({ description: 'A uuid; anything else is not found (404)' })
export const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()])
export const Email = Type.String({ format: 'email', maxLength: 254 })
export const IsoDate = Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$', description: 'YYYY-MM-DD' })
export const HexColor = Type.String({ pattern: '^#[0-9A-Fa-f]{6}$', description: '#RRGGBB' })
export const Timestamp = Type.String({ format: 'date-time' })
