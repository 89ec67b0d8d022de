import type { Insertable, Kysely, Selectable, Transaction } from 'kysely'
import { Type, type Static } from 'typebox'
import type { AuditLogTable, Database, UsersTable } from '../db/types.js'

export type UserRow = Selectable<UsersTable>

/** SPEC decision 10: the one user object of every `me` endpoint. */
export const PublicUser = Type.Object({
  id: Type.String({ format: 'uuid' }),
  email: Type.String(),
  name: Type.String(),
  role: Type.Enum(['ADMIN', 'MEMBER']),
  avatarUrl: Type.Union([Type.String(), Type.Null()]),
  preferredUsername: Type.Union([Type.String(), Type.Null()]),
  givenName: Type.Union([Type.String(), Type.Null()]),
  familyName: Type.Union([Type.String(), Type.Null()]),
  profilePictureUrl: Type.Union([Type.String(), Type.Null()]),
  isActive: Type.Boolean(),
  emailVerified: Type.Boolean(),
  lastLoginAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  createdAt: Type.String({ format: 'date-time' })
}, { title: 'User' })
export type PublicUser = Static<typeof PublicUser>

/** The columns every user lookup reads (never the password hash unless asked). */
export const USER_COLUMNS = [
  'id', 'email', 'name', 'role', 'is_active', 'email_verified', 'avatar_url', 'preferred_username',
  'given_name', 'family_name', 'last_login_at', 'created_at', 'updated_at'
] as const

export type UserRecord = Pick<UserRow, typeof USER_COLUMNS[number]>

export function publicUser (row: UserRecord): PublicUser {
  return {
    id: row.id,
    email: row.email,
    name: row.name,
    role: row.role,
    avatarUrl: row.avatar_url,
    preferredUsername: row.preferred_username,
    givenName: row.given_name,
    familyName: row.family_name,
    profilePictureUrl: row.avatar_url,
    isActive: row.is_active,
    emailVerified: row.email_verified,
    lastLoginAt: row.last_login_at === null ? null : new Date(row.last_login_at).toISOString(),
    createdAt: new Date(row.created_at).toISOString()
  }
}

const serialized = new WeakMap<UserRecord, string>()

/**
 * publicUser as JSON, computed once per loaded record: the records of the user cache are
 * replaced on every change, so this never serves a stale body.
 */
export function publicUserJson (row: UserRecord): string {
  let json = serialized.get(row)
  if (json === undefined) {
    json = JSON.stringify(publicUser(row))
    serialized.set(row, json)
  }
  return json
}

/** E-mail addresses are compared and stored trimmed and lower-cased. */
export function normalizeEmail (email: string): string {
  return email.trim().toLowerCase()
}

export interface AuditEvent {
  action: string
  actorUserId?: string | null
  subjectType?: string
  subjectId?: string
  ip?: string
  userAgent?: string
  details?: Record<string, unknown>
}

/** The audit_log row of an event. */
export function auditRow (event: AuditEvent): Insertable<AuditLogTable> {
  return {
    action: event.action,
    actor_user_id: event.actorUserId ?? null,
    subject_type: event.subjectType ?? null,
    subject_id: event.subjectId ?? null,
    ip: event.ip ?? null,
    user_agent: event.userAgent === undefined ? null : event.userAgent.slice(0, 512),
    details: JSON.stringify(event.details ?? {})
  }
}

/** Writes one audit row (inside the caller's transaction when given one). */
export async function audit (db: Kysely<Database> | Transaction<Database>, event: AuditEvent): Promise<void> {
  await db.insertInto('audit_log').values(auditRow(event)).execute()
}
