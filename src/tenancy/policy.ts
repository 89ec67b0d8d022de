import type { MemberRole } from '../db/types.js'

/*
 * The one authorization table (issue 5, seed 003's per-endpoint roles). Every protected
 * route names its action in `config.action`; the tenancy plugin looks the action up here
 * and nowhere else decides who may do what.
 *
 *  - roles:        workspace roles allowed; present means the action runs in a workspace (the
 *                  token's, or the one `X-Workspace-Id` names) and needs a membership there.
 *  - browserOnly:  refused to integration tokens (seed 003's browser-session-only endpoints).
 *  - write:        refused to read-only integration tokens.
 */
export interface Policy {
  roles?: readonly MemberRole[]
  browserOnly?: boolean
  write?: boolean
}

export const ALL_ROLES: readonly MemberRole[] = ['owner', 'manager', 'staff', 'viewer']
const ADMINISTER: readonly MemberRole[] = ['owner', 'manager']
const RECORD: readonly MemberRole[] = ['owner', 'manager', 'staff']

export const POLICIES = {
  // The signed-in user's own context: a browser session, no workspace role needed.
  'session.read': { browserOnly: true },
  'session.switch': { browserOnly: true },
  'workspaces.list': { browserOnly: true },
  'workspaces.create': { browserOnly: true, write: true },
  // The active workspace.
  'workspace.read': { roles: ALL_ROLES },
  'workspace.update': { roles: ADMINISTER, write: true },
  'members.read': { roles: ALL_ROLES },
  'members.write': { roles: ADMINISTER, write: true },
  // A member's own integration tokens (any role; a token never does more than its member).
  'tokens.read': { roles: ALL_ROLES, browserOnly: true },
  'tokens.write': { roles: ALL_ROLES, browserOnly: true, write: true },
  // The domain (issue 6).
  'birds.read': { roles: ALL_ROLES },
  'birds.write': { roles: RECORD, write: true },
  'transfers.write': { roles: RECORD, write: true },
  // Images under the workspace's prefix (seed 000): read by members, uploaded by those who record.
  'images.read': { roles: ALL_ROLES },
  'images.write': { roles: RECORD, write: true }
} as const satisfies Record<string, Policy>

export type Action = keyof typeof POLICIES

export const MESSAGES = {
  browserOnly: 'This endpoint requires a browser session instead of an integration token.',
  readOnly: 'That integration token is read-only.',
  forbidden: 'You do not have permission for that action.',
  authRequired: 'Authentication required.'
} as const
