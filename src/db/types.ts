import type { ColumnType, Generated } from 'kysely'

/*
 * Table interfaces for Kysely: Generated<> for columns with database defaults, `| null`
 * (never optional) for nullable columns. Code uses Selectable / Insertable / Updateable.
 */

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>
type Json = ColumnType<Record<string, unknown>, string | undefined, string>

export interface AuditLogTable {
  id: Generated<number>
  occurred_at: Generated<Timestamp>
  actor_user_id: string | null
  action: string
  subject_type: string | null
  subject_id: string | null
  ip: string | null
  user_agent: string | null
  details: Generated<Json>
}

export interface Database {
  audit_log: AuditLogTable
}
