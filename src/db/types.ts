import type { ColumnType, Generated } from 'kysely'

/*
 * Table interfaces for Kysely: Generated<> for columns with database defaults, `| null`
 * (never optional) for nullable columns. Code uses Selectable / Insertable / Updateable.
 */

// Timestamps read as Date and are written as Date or ISO text. (Generated<> cannot wrap a
// ColumnType, so the generated and nullable variants are spelled out.)
type Timestamp = ColumnType<Date, Date | string, Date | string>
type GeneratedTimestamp = ColumnType<Date, Date | string | undefined, Date | string>
type NullableTimestamp = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>
type GeneratedJson = ColumnType<Record<string, unknown>, string | undefined, string>

export interface AuditLogTable {
  id: Generated<number>
  occurred_at: GeneratedTimestamp
  actor_user_id: string | null
  action: string
  subject_type: string | null
  subject_id: string | null
  ip: string | null
  user_agent: string | null
  details: GeneratedJson
}

export interface UsersTable {
  id: Generated<string>
  email: string
  name: Generated<string>
  password_hash: string | null
  role: Generated<'ADMIN' | 'MEMBER'>
  is_active: Generated<boolean>
  email_verified: Generated<boolean>
  avatar_url: string | null
  preferred_username: string | null
  given_name: string | null
  family_name: string | null
  last_login_at: NullableTimestamp
  created_at: GeneratedTimestamp
  updated_at: GeneratedTimestamp
}

export interface SessionsTable {
  id: string
  user_id: string
  method: string
  remember_me: boolean
  ip: string | null
  user_agent: string | null
  created_at: GeneratedTimestamp
  last_used_at: GeneratedTimestamp
  expires_at: Timestamp
  revoked_at: NullableTimestamp
  revoked_reason: string | null
}

export interface UserIdentitiesTable {
  id: Generated<string>
  user_id: string
  provider: string
  subject: string
  email: string | null
  created_at: GeneratedTimestamp
  last_used_at: GeneratedTimestamp
}

export type WorkspaceType = 'standard' | 'rescue'
export type BillingPlan = 'household_basic' | 'household_plus' | 'household_macaw' | 'rescue_free'
export type MemberRole = 'owner' | 'manager' | 'staff' | 'viewer'
export type TokenScope = 'read_only' | 'read_write'

export interface WorkspacesTable {
  id: Generated<number>
  name: string
  workspace_type: Generated<WorkspaceType>
  billing_email: string | null
  billing_plan: Generated<BillingPlan>
  created_by: string | null
  created_at: GeneratedTimestamp
  updated_at: GeneratedTimestamp
}

export interface WorkspaceMembersTable {
  id: Generated<string>
  workspace_id: number
  user_id: string | null
  invite_email: string
  name: Generated<string>
  role: MemberRole
  accepted_at: NullableTimestamp
  invited_by: string | null
  created_at: GeneratedTimestamp
  updated_at: GeneratedTimestamp
}

export interface IntegrationTokensTable {
  id: Generated<string>
  user_id: string
  workspace_id: number
  name: string
  token_prefix: string
  token_hash: string
  scope: TokenScope
  last_used_at: NullableTimestamp
  expires_at: NullableTimestamp
  revoked_at: NullableTimestamp
  created_at: GeneratedTimestamp
}

export interface Database {
  audit_log: AuditLogTable
  users: UsersTable
  sessions: SessionsTable
  user_identities: UserIdentitiesTable
  workspaces: WorkspacesTable
  workspace_members: WorkspaceMembersTable
  integration_tokens: IntegrationTokensTable
}
