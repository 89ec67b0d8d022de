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

export const Uuid = Type.String({ format: 'uuid' })
/** For path ids checked by hand: a malformed id is simply not found (404), like another workspace's. */
export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
export const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()])
export const Email = Type.String({ format: 'email', maxLength: 254 })
export const IsoDate = Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$', description: 'YYYY-MM-DD' })
export const HexColor = Type.String({ pattern: '^#[0-9A-Fa-f]{6}$', description: '#RRGGBB' })
export const Timestamp = Type.String({ format: 'date-time' })
