// The "floor": a bare Fastify server doing the same work as each Gatehouse scenario and
// nothing else (no plugins, no hooks, no logging). Each scenario's req/s is printed beside
// its floor's, measured in the same run on the same machine.
//   FLOOR_JWT_KEY       the PEM private key Gatehouse signs with (the same RS256 work)
//   FLOOR_PASSWORD_HASH the argon2id hash the login floor verifies against
//   FLOOR_REDIS_URL     Redis for the rotation floor
//   FLOOR_DATABASE_URL  PostgreSQL (the bench database) for the one-query floors
import { createHmac, createHash, createPublicKey, randomBytes, randomUUID } from 'node:crypto'
import { verify as argon2Verify } from '@node-rs/argon2'
import { createSigner, createVerifier } from 'fast-jwt'
import Fastify from 'fastify'
import { Kysely, PostgresDialect } from 'kysely'
import { birdJson, birdsQuery, type BirdRow } from '../src/birds/birds.js'
import { createPool, type Database } from '../src/db/index.js'
import { RedisStore } from '../src/store/redis.js'
import { memberJson, workspaceJson, type MemberRow, type WorkspaceRow } from '../src/tenancy/workspaces.js'

const server = Fastify({ logger: false })

server.get('/floor/health', async () => ({ ok: true }))

const privatePem = process.env.FLOOR_JWT_KEY
if (privatePem !== undefined) {
  const publicPem = createPublicKey(privatePem).export({ type: 'spki', format: 'pem' }).toString()
  // The same verification Gatehouse does: RS256, iss/aud, and fast-jwt's verification cache.
  const verify = createVerifier({ key: publicPem, algorithms: ['RS256'], cache: 10_000, allowedAud: 'gatehouse' })
  server.get('/floor/me', async (request) => {
    const token = (request.headers.authorization ?? '').slice(7)
    const claims = verify(token) as { sub: string }
    return { id: claims.sub }
  })

  // One Lua rotation (the very script Gatehouse runs) and one JWT signature.
  const sign = createSigner({ key: privatePem, algorithm: 'RS256', expiresIn: 900_000 })
  const secret = randomBytes(32)
  const hash = (token: string): string => createHash('sha256').update(token).digest('base64url')
  const { store } = await RedisStore.connect({
    url: process.env.FLOOR_REDIS_URL ?? 'redis://127.0.0.1:6379',
    prefix: `gh:floor:${randomBytes(4).toString('hex')}:`,
    commandTimeoutMs: 2000,
    connectTimeoutMs: 2000
  })
  server.post('/floor/session', async () => {
    const sessionId = randomUUID()
    const token = `${sessionId}.${randomBytes(32).toString('base64url')}`
    await store.createSession(sessionId, { userId: sessionId, rememberMe: false, expiresAt: Date.now() + 86_400_000, workspaceId: null }, hash(token))
    return { refreshToken: token }
  })
  server.post<{ Body: { refreshToken: string } }>('/floor/refresh', async (request, reply) => {
    const token = request.body.refreshToken
    const sessionId = token.slice(0, 36)
    const successor = `${sessionId}.${createHmac('sha256', secret).update(token).digest('base64url')}`
    const result = await store.rotateRefreshToken(sessionId, hash(token), hash(successor), Date.now(), 10_000)
    if (result.status !== 'rotated' && result.status !== 'grace') return await reply.code(401).send({ error: 'invalid' })
    return { accessToken: sign({ sub: result.session.userId, sid: sessionId }), expiresIn: 900, refreshToken: successor }
  })
  server.addHook('onClose', async () => { await store.close() })

  // JWT + one query: the same verification as /floor/me, then the very statement (as Kysely
  // compiles it) Gatehouse runs for the route, on a pool as large as Gatehouse's default.
  const databaseUrl = process.env.FLOOR_DATABASE_URL
  if (databaseUrl !== undefined) {
    // Gatehouse's pool settings and type parsers (DATE columns stay YYYY-MM-DD strings).
    const pool = createPool({ connectionString: databaseUrl, max: 10, connectTimeoutMs: 5000, statementTimeoutMs: 15_000 })
    server.addHook('onClose', async () => { await pool.end() })

    // routes/workspaces/index.ts, GET /api/workspace/members (the workspace is the token's).
    const membersSql = 'select * from "workspace_members" where "workspace_id" = $1 order by "created_at", "id" limit $2'
    server.get('/floor/members', async (request) => {
      const claims = verify((request.headers.authorization ?? '').slice(7)) as { sub: string, wid: number }
      const { rows } = await pool.query<MemberRow>(membersSql, [claims.wid, 1000])
      return { members: rows.map(memberJson) }
    })

    // routes/birds/index.ts, GET /api/birds: the very statement, compiled once by Kysely with a
    // marker workspace id that each request replaces.
    const MARKER = -424242
    const birds = birdsQuery(new Kysely<Database>({ dialect: new PostgresDialect({ pool }) }), MARKER).orderBy('b.created_at').orderBy('b.id').compile()
    server.get('/floor/birds', async (request) => {
      const claims = verify((request.headers.authorization ?? '').slice(7)) as { wid: number }
      const { rows } = await pool.query<BirdRow>(birds.sql, birds.parameters.map(value => value === MARKER ? claims.wid : value))
      return { birds: rows.map(birdJson) }
    })

    // routes/auth/session.ts, `context`: the user's memberships joined with their workspaces.
    const contextSql = 'select "w".*, "m"."id" as "m_id", "m"."user_id" as "m_user_id", "m"."invite_email" as "m_invite_email", ' +
      '"m"."name" as "m_name", "m"."role" as "m_role", "m"."accepted_at" as "m_accepted_at", "m"."created_at" as "m_created_at" ' +
      'from "workspace_members" as "m" inner join "workspaces" as "w" on "w"."id" = "m"."workspace_id" ' +
      'where "m"."user_id" = $1 order by "m"."accepted_at", "w"."id"'
    type ContextRow = WorkspaceRow & { m_id: string, m_user_id: string, m_invite_email: string, m_name: string, m_role: MemberRow['role'], m_accepted_at: Date | null, m_created_at: Date }
    server.get('/floor/session-context', async (request) => {
      const claims = verify((request.headers.authorization ?? '').slice(7)) as { sub: string, wid: number }
      const { rows } = await pool.query<ContextRow>(contextSql, [claims.sub])
      const active = rows.find(row => row.id === claims.wid)
      return {
        session: {
          user: { id: claims.sub },
          activeWorkspace: active === undefined ? null : workspaceJson(active),
          activeMembership: active === undefined
            ? null
            : memberJson({ id: active.m_id, workspace_id: active.id, user_id: active.m_user_id, invite_email: active.m_invite_email, name: active.m_name, role: active.m_role, accepted_at: active.m_accepted_at, created_at: active.m_created_at, invited_by: null, updated_at: active.updated_at }),
          workspaces: rows.map(row => ({ ...workspaceJson(row), role: row.m_role, membershipId: row.m_id })),
          providers: []
        }
      }
    })
  }
}

const passwordHash = process.env.FLOOR_PASSWORD_HASH
if (passwordHash !== undefined) {
  server.post<{ Body: { password: string } }>('/floor/login', async (request) => {
    return { ok: await argon2Verify(passwordHash, request.body.password) }
  })
}

await server.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) })
const address = server.server.address()
process.stdout.write(`listening ${typeof address === 'object' && address !== null ? address.port : ''}\n`)
process.on('SIGTERM', () => { server.close().then(() => process.exit(0), () => process.exit(1)) })
