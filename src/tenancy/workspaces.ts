import { Type, type Static } from 'typebox'
import type { Expression, Kysely, Selectable, Transaction } from 'kysely'
import type { BillingPlan, Database, WorkspaceMembersTable, WorkspacesTable, WorkspaceType } from '../db/types.js'
import { MAX_INT4, Nullable, Timestamp, Uuid } from '../schemas/common.js'

type Executor = Kysely<Database> | Transaction<Database>

// --- shapes (seed 003 "Data Shapes") ---------------------------------------------------------
export const WORKSPACE_TYPES = ['standard', 'rescue'] as const
export const BILLING_PLANS = ['household_basic', 'household_plus', 'household_macaw'] as const
export const MEMBER_ROLES = ['owner', 'manager', 'staff', 'viewer'] as const

export const WorkspaceId = Type.Integer({ minimum: 1, maximum: MAX_INT4, description: 'Numeric workspace id (seed 003)' })

export const Workspace = Type.Object({
  id: WorkspaceId,
  name: Type.String(),
  workspaceType: Type.Enum(WORKSPACE_TYPES),
  billingEmail: Nullable(Type.String()),
  billingPlan: Type.Enum([...BILLING_PLANS, 'rescue_free']),
  createdAt: Timestamp,
  updatedAt: Timestamp
}, { title: 'Workspace' })
export type Workspace = Static<typeof Workspace>

export const Member = Type.Object({
  id: Uuid,
  workspaceId: WorkspaceId,
  userId: Nullable(Uuid),
  inviteEmail: Type.String(),
  name: Type.String(),
  role: Type.Enum(MEMBER_ROLES),
  acceptedAt: Nullable(Timestamp),
  createdAt: Timestamp
}, { title: 'WorkspaceMember' })
export type Member = Static<typeof Member>

/** An entry of the signed-in user's workspace list: the workspace and their role in it. */
export const Membership = Type.Object({
  ...Workspace.properties,
  role: Type.Enum(MEMBER_ROLES),
  membershipId: Uuid
}, { title: 'WorkspaceMembership' })
export type Membership = Static<typeof Membership>

export type WorkspaceRow = Selectable<WorkspacesTable>
export type MemberRow = Selectable<WorkspaceMembersTable>

const iso = (value: Date | string): string => new Date(value).toISOString()

export function workspaceJson (row: WorkspaceRow): Workspace {
  return {
    id: row.id,
    name: row.name,
    workspaceType: row.workspace_type,
    billingEmail: row.billing_email,
    billingPlan: row.billing_plan,
    createdAt: iso(row.created_at),
    updatedAt: iso(row.updated_at)
  }
}

export function memberJson (row: MemberRow): Member {
  return {
    id: row.id,
    workspaceId: row.workspace_id,
    userId: row.user_id,
    inviteEmail: row.invite_email,
    name: row.name,
    role: row.role,
    acceptedAt: row.accepted_at === null ? null : iso(row.accepted_at),
    createdAt: iso(row.created_at)
  }
}

/** Seed 003: rescue workspaces are forced to `rescue_free`; a standard one needs a household plan. */
export function planFor (type: WorkspaceType, plan: BillingPlan | undefined, current?: BillingPlan): BillingPlan {
  if (type === 'rescue') return 'rescue_free'
  if (plan !== undefined) return plan
  return current === undefined || current === 'rescue_free' ? 'household_basic' : current
}

// --- queries -------------------------------------------------------------------------------

export interface NewWorkspace {
  name: string
  workspaceType?: WorkspaceType | undefined
  billingEmail?: string | null | undefined
  billingPlan?: BillingPlan | undefined
}

export interface WorkspaceOwner { id: string, email: string, name: string }

/** Creates a workspace with `owner` as its (accepted) owner; both rows in the caller's transaction. */
export async function createWorkspace (trx: Transaction<Database>, input: NewWorkspace, owner: WorkspaceOwner): Promise<{ workspace: WorkspaceRow, member: MemberRow }> {
  const type = input.workspaceType ?? 'standard'
  const workspace = await trx.insertInto('workspaces').values({
    name: input.name,
    workspace_type: type,
    billing_email: input.billingEmail ?? null,
    billing_plan: planFor(type, input.billingPlan),
    created_by: owner.id
  }).returningAll().executeTakeFirstOrThrow()
  const member = await trx.insertInto('workspace_members').values({
    workspace_id: workspace.id,
    user_id: owner.id,
    invite_email: owner.email,
    name: owner.name,
    role: 'owner',
    accepted_at: workspace.created_at
  }).returningAll().executeTakeFirstOrThrow()
  return { workspace, member }
}

/** The user's memberships with their workspaces, oldest first. */
export async function membershipsOf (db: Executor, userId: string): Promise<Membership[]> {
  const rows = await db.selectFrom('workspace_members as m')
    .innerJoin('workspaces as w', 'w.id', 'm.workspace_id')
    .selectAll('w')
    .select(['m.id as membership_id', 'm.role'])
    .where('m.user_id', '=', userId)
    .orderBy('m.accepted_at').orderBy('w.id')
    .execute()
  return rows.map(row => ({ ...workspaceJson(row), role: row.role, membershipId: row.membership_id }))
}

/**
 * The workspace a new session of `userId` starts in: the oldest membership. `userId` may be
 * a column reference, for use as a correlated subquery (the sign-in's account lookup).
 */
export function defaultWorkspaceQuery (db: Executor, userId: string | Expression<string>) {
  return db.selectFrom('workspace_members').select('workspace_id')
    .where('user_id', '=', userId)
    .orderBy('accepted_at').orderBy('workspace_id').limit(1)
}

export interface SigningInUser { id: string, email: string, name: string }

/**
 * The workspace a sign-in starts in, in the sign-in's transaction. When the sign-in proved
 * the address (magic link, a provider's verified e-mail), pending invitations to it are
 * accepted first (`joined`: the caller tells the membership caches once committed). A user
 * with no membership at all gets a personal workspace (owner), so every session has an
 * active workspace.
 */
export async function workspaceForSignIn (trx: Transaction<Database>, user: SigningInUser, emailProven: boolean): Promise<{ workspaceId: number, joined: number[] }> {
  // One sign-in at a time per user gets here: concurrent first sign-ins make one workspace.
  await trx.selectFrom('users').select('id').where('id', '=', user.id).forUpdate().executeTakeFirst()
  let joined: number[] = []
  if (emailProven) {
    joined = (await trx.updateTable('workspace_members')
      .set({ user_id: user.id, accepted_at: new Date(), updated_at: new Date() })
      .where('invite_email', '=', user.email).where('user_id', 'is', null)
      // A user already in that workspace (invited under another address) keeps that membership.
      .where(eb => eb.not(eb.exists(eb.selectFrom('workspace_members as other').select('other.id')
        .whereRef('other.workspace_id', '=', 'workspace_members.workspace_id').where('other.user_id', '=', user.id))))
      .returning('workspace_id').execute()).map(row => row.workspace_id)
  }
  const existing = await defaultWorkspaceQuery(trx, user.id).executeTakeFirst()
  if (existing !== undefined) return { workspaceId: existing.workspace_id, joined }
  const name = user.name.trim() === '' ? user.email.split('@')[0]! : user.name.trim()
  const { workspace } = await createWorkspace(trx, { name: `${name.slice(0, 180)}'s workspace` }, user)
  return { workspaceId: workspace.id, joined }
}
