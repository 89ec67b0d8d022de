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

// DATE columns read as 'YYYY-MM-DD' strings (src/db/index.ts).
export interface BirdsTable {
  id: Generated<string>
  workspace_id: number
  name: string
  tag_id: string | null
  species: string | null
  date_of_birth: string | null
  gotcha_day: string | null
  chart_color: Generated<string>
  photo_data_url: string | null
  notify_on_dob: Generated<boolean>
  notify_on_gotcha_day: Generated<boolean>
  created_by: string | null
  created_at: GeneratedTimestamp
  updated_at: GeneratedTimestamp
}

export interface BirdWeightsTable {
  id: Generated<string>
  bird_id: string
  weight_grams: number
  recorded_on: string
  notes: string | null
  created_by: string | null
  created_at: GeneratedTimestamp
}

export interface VetVisitsTable {
  id: Generated<string>
  bird_id: string
  visited_on: string
  clinic_name: string | null
  reason: string | null
  notes: string | null
  created_by: string | null
  created_at: GeneratedTimestamp
}

export interface TransfersTable {
  id: Generated<string>
  bird_id: string
  source_workspace_id: number
  destination_email: string
  notes: string | null
  status: Generated<'pending' | 'accepted' | 'cancelled'>
  created_by: string | null
  created_at: GeneratedTimestamp
  updated_at: GeneratedTimestamp
  accepted_at: NullableTimestamp
  accepted_by: string | null
  destination_workspace_id: number | null
}

export interface Database {
  audit_log: AuditLogTable
  users: UsersTable
  sessions: SessionsTable
  user_identities: UserIdentitiesTable
  workspaces: WorkspacesTable
  workspace_members: WorkspaceMembersTable
  integration_tokens: IntegrationTokensTable
  birds: BirdsTable
  bird_weights: BirdWeightsTable
  vet_visits: VetVisitsTable
  transfers: TransfersTable
}
