import type { Transaction } from 'kysely'
import type { Database } from '../db/types.js'
import { audit } from './users.js'

/*
 * SPEC decision 11: proof of a mailbox voids what the prover did not make.
 *
 * Anyone can register an address they do not own. The first time the address of an account
 * is proven — a magic link or an invitation link opened, a provider sign-in whose e-mail the
 * provider verified — every way in that existed before is removed or revoked in the proof's
 * own transaction: the password, the sessions, the integration tokens and the linked
 * identities (but the identity that is itself the proof) — and whatever let others into the
 * account's workspaces before the proof (members, invitations, their tokens there, open
 * transfers out). A squatter who registered someone else's address keeps nothing, nor do
 * their accomplices, and the owner signs in by link or provider. An account created by the
 * proof, or whose address was proven before, has nothing to void.
 */

/** What the proof needs of the session service (plugins/auth.ts `sessions.revokeAllIn`). */
export interface SessionRevoker {
  revokeAllIn: (trx: Transaction<Database>, userId: string, reason: 'mailbox_proven') => Promise<string[]>
}

/** What happens after the commit: plugins/integration-tokens.ts, the user cache of plugins/auth.ts, the membership cache of plugins/tenancy.ts. */
export interface AfterProof {
  integrationTokens: { revoked: (ids: string[]) => Promise<void> }
  users: { changed: (id: string) => Promise<void> }
  memberships: { changed: (workspaceId: number, userId: string) => Promise<void> }
}

/** How the mailbox was proven. */
export interface MailboxProof {
  /** An opened magic link (an invitation link is one), or a provider's verified e-mail. */
  method: 'magic_link' | 'oauth'
  /** The provider identity that is the proof: it stays (or gets) linked. */
  identity?: { provider: string, subject: string }
  origin: { ip: string, userAgent?: string }
}

/** What a proof voided; `firstProof` false (and nothing voided) when the address was proven before. */
export interface ProvenMailbox {
  userId: string
  firstProof: boolean
  passwordRemoved: boolean
  /** Sessions ended (already ended in the store and on every instance). */
  sessionIds: string[]
  /** Integration tokens revoked in the transaction: `mailboxProven` drops them from every cache after commit. */
  tokenIds: string[]
  identitiesUnlinked: number
  /** Members removed from the account's workspaces (their caches are dropped after commit). */
  membersRemoved: Array<{ workspaceId: number, userId: string }>
}

/**
 * Marks the address of `userId` proven, in the caller's transaction, before the sign-in that
 * proved it starts its session. On the transition from unproven to proven it voids every way
 * in the prover did not make and writes an `account.mailbox_proven` audit row. The account row
 * stays locked until the caller commits, so no sign-in with the old password or an unlinked
 * identity can slip in meanwhile. The sessions end in the store before the commit (a failure
 * there rolls the whole sign-in back); the caller calls `mailboxProven` after the commit.
 */
export async function proveMailbox (
  trx: Transaction<Database>,
  sessions: SessionRevoker,
  now: Date,
  userId: string,
  proof: MailboxProof
): Promise<ProvenMailbox> {
  const account = await trx.selectFrom('users').select(['email_verified', 'password_hash'])
    .where('id', '=', userId).forUpdate().executeTakeFirstOrThrow()
  const nothing = { userId, passwordRemoved: false, sessionIds: [], tokenIds: [], identitiesUnlinked: 0, membersRemoved: [] }
  if (account.email_verified) return { ...nothing, firstProof: false }
  // Issue 16 adds the one exception here: a proof that shows the registrant made it (their
  // own confirmation of the address they registered) marks the address proven and voids
  // nothing. Until then every first proof voids everything that came before it.

  await trx.updateTable('users').set({ email_verified: true, password_hash: null, updated_at: now }).where('id', '=', userId).execute()
  const { identity } = proof
  const unlinked = await trx.deleteFrom('user_identities').where('user_id', '=', userId)
    .$if(identity !== undefined, query => query.where(eb => eb.not(eb.and([eb('provider', '=', identity!.provider), eb('subject', '=', identity!.subject)]))))
    .returning('id').execute()
  const tokens = await trx.updateTable('integration_tokens').set({ revoked_at: now })
    .where('user_id', '=', userId).where('revoked_at', 'is', null)
    .returning('id').execute()
  // The account's workspaces. Before its address is proven an account joins no one else's
  // (an invitation reaches it only as a link, accepted by the proof), so each is one it made
  // itself, and whoever else is in it was let in before the proof: a squatter's second account
  // must not read what the owner puts there. Their memberships and invitations go, with their
  // integration tokens for those workspaces, and open transfers out of them are cancelled.
  const workspaceIds = (await trx.selectFrom('workspace_members').select('workspace_id').where('user_id', '=', userId).execute())
    .map(row => row.workspace_id)
  let membersRemoved: ProvenMailbox['membersRemoved'] = []
  let memberTokenIds: string[] = []
  let transfersCancelled = 0
  if (workspaceIds.length > 0) {
    // The workspaces first, in id order: every write that lets someone in takes its
    // workspace's row after its caller's (fastify.lockAccess), so one under way is waited for
    // and one that begins later finds its caller's membership gone. NO KEY UPDATE, so that rows
    // merely referencing a workspace (a bird recorded meanwhile) do not wait.
    await trx.selectFrom('workspaces').select('id').where('id', 'in', workspaceIds).orderBy('id').forNoKeyUpdate().execute()
    const removed = await trx.deleteFrom('workspace_members').where('workspace_id', 'in', workspaceIds)
      .where(eb => eb.or([eb('user_id', 'is', null), eb('user_id', '<>', userId)]))
      .returning(['workspace_id', 'user_id']).execute()
    membersRemoved = removed.flatMap(row => row.user_id === null ? [] : [{ workspaceId: row.workspace_id, userId: row.user_id }])
    if (membersRemoved.length > 0) {
      memberTokenIds = (await trx.updateTable('integration_tokens').set({ revoked_at: now })
        .where('workspace_id', 'in', workspaceIds).where('user_id', 'in', membersRemoved.map(member => member.userId)).where('revoked_at', 'is', null)
        .returning('id').execute()).map(token => token.id)
    }
    // The offered birds before their offers, in id order, as an accept locks its bird first:
    // the other order deadlocks with an accept of a bird offered twice.
    await trx.selectFrom('birds').select('id')
      .where('id', 'in', trx.selectFrom('transfers').select('bird_id').where('source_workspace_id', 'in', workspaceIds).where('status', '=', 'pending'))
      .orderBy('id').forNoKeyUpdate().execute()
    transfersCancelled = (await trx.updateTable('transfers').set({ status: 'cancelled', updated_at: now })
      .where('source_workspace_id', 'in', workspaceIds).where('status', '=', 'pending')
      .returning('id').execute()).length
  }
  const sessionIds = await sessions.revokeAllIn(trx, userId, 'mailbox_proven')
  const proven: ProvenMailbox = {
    userId,
    firstProof: true,
    passwordRemoved: account.password_hash !== null,
    sessionIds,
    tokenIds: [...tokens.map(token => token.id), ...memberTokenIds],
    identitiesUnlinked: unlinked.length,
    membersRemoved
  }
  await audit(trx, {
    action: 'account.mailbox_proven',
    actorUserId: userId,
    subjectType: 'user',
    subjectId: userId,
    ip: proof.origin.ip,
    userAgent: proof.origin.userAgent,
    details: {
      method: proof.method,
      ...(identity === undefined ? {} : { provider: identity.provider }),
      passwordRemoved: proven.passwordRemoved,
      sessions: sessionIds.length,
      tokens: tokens.length,
      identities: proven.identitiesUnlinked,
      workspaceMembersRemoved: membersRemoved.length,
      memberTokens: memberTokenIds.length,
      transfersCancelled
    }
  })
  return proven
}

/**
 * After the proof's transaction has committed: drops the revoked integration tokens from every
 * instance's cache (before the commit, another instance could read them back as live) and the
 * account from every user cache.
 */
export async function mailboxProven (services: AfterProof, proven: ProvenMailbox): Promise<void> {
  if (!proven.firstProof) return
  await services.integrationTokens.revoked(proven.tokenIds)
  await services.users.changed(proven.userId)
  for (const member of proven.membersRemoved) await services.memberships.changed(member.workspaceId, member.userId)
}
