import { createHash } from 'node:crypto'
import { Kysely, PostgresDialect, type Compilable, type Transaction } from 'kysely'
import pg from 'pg'
import type { Database } from './types.js'

export type { Database } from './types.js'

// DATE columns stay 'YYYY-MM-DD' strings (pg would turn them into local-midnight Dates);
// int8 (counts, identities) become numbers.
const DATE_OID = 1082
const INT8_OID = 20
const typeParsers = {
  getTypeParser (oid: number, format?: 'text' | 'binary') {
    if (oid === DATE_OID) return (value: string) => value
    if (oid === INT8_OID) return (value: string) => Number(value)
    return pg.types.getTypeParser(oid, format)
  }
} as pg.CustomTypesConfig

export interface PoolSettings {
  connectionString: string
  max: number
  connectTimeoutMs: number
  statementTimeoutMs: number
  /** Run the statements `prepared` marks as named prepared statements (DATABASE_PREPARED_STATEMENTS). */
  preparedStatements?: boolean
  /** How long an idle connection stays in the pool (DATABASE_IDLE_TIMEOUT). */
  idleTimeoutMs?: number
  /**
   * The server keeps one session for every connection (embedded PGlite: one backend behind
   * the socket), so a new connection finds the prepared statements of the one before it:
   * each new connection starts by dropping them.
   */
  sharedSession?: boolean
  onError?: (error: Error) => void
}

/*
 * Named prepared statements for the hot paths (sign-in, the user lookup): PostgreSQL parses
 * and plans such a statement once per connection instead of on every call, which halves
 * its server CPU for the sign-in's four-part statement (measured with pgbench: 0.97 ms of
 * CPU per call unnamed, 0.46 ms prepared). Only the statements that `prepared` runs are
 * named, at most MAX_PREPARED distinct texts per process, so what each connection keeps
 * is bounded. A name is a digest of the text: the same text always has the same name, and
 * two texts never share one. Off (DATABASE_PREPARED_STATEMENTS=false) for poolers that do
 * not keep a server connection per client (PgBouncer in transaction mode before 1.21).
 */
const MAX_PREPARED = 256
const preparedNames = new Map<string, string>()

/** PostgreSQL's answer to a prepared statement whose result columns changed type meanwhile. */
const isStaleResultType = (error: unknown): boolean =>
  (error as { code?: unknown }).code === '0A000' && /cached plan must not change result type/.test(String((error as Error).message))

/**
 * PostgreSQL's answer to preparing a name the session already has (42P05): a server session
 * that outlived the connection which prepared it (embedded PGlite's one backend, or a pooler
 * that hands one server connection to several clients).
 */
const isAlreadyPrepared = (error: unknown): boolean => (error as { code?: unknown }).code === '42P05'

/** pg's client, running the texts `prepared` marked as named statements. */
class PreparingClient extends pg.Client {
  // pg's overloads (config object, text and values, callbacks) pass through unchanged.
  override query (...args: unknown[]): never {
    const [text, values, callback] = args
    if (typeof text === 'string' && typeof callback !== 'function') {
      const name = preparedNames.get(text)
      if (name !== undefined) return this.named(name, text, values as unknown[] | undefined) as never
    }
    return (super.query as (...parameters: unknown[]) => never)(...args)
  }

  /**
   * Two refusals that come before the statement has done anything, so that it is dropped on
   * this connection, prepared again and run once more (outside a transaction) instead of
   * failing: a migration of another instance changed the type of a column the statement
   * returns, or the server session already holds the name from an earlier connection.
   */
  private async named (name: string, text: string, values: unknown[] | undefined): Promise<pg.QueryResult> {
    try {
      return await super.query({ name, text, values })
    } catch (error) {
      // Inside a transaction the refusal has aborted it: nothing can run again there.
      if (!(isStaleResultType(error) || isAlreadyPrepared(error)) || this.getTransactionStatus() !== 'I') throw error
      // pg's record of what this connection has prepared (no public way to forget one).
      const connection = (this as unknown as { connection: { parsedStatements: Record<string, string> } }).connection
      delete connection.parsedStatements[name]
      // The name is our own digest (gh_ and base64url characters), never input.
      await super.query(`DEALLOCATE "${name}"`)
      return await super.query({ name, text, values })
    }
  }
}

/**
 * Runs a query as a named prepared statement (where the pool allows it) and returns its
 * rows. For statements on hot paths whose result columns are named explicitly: PostgreSQL
 * refuses to reuse a prepared `SELECT *` whose table gained a column meanwhile.
 */
export async function prepared<Row> (db: Kysely<Database> | Transaction<Database>, query: Compilable<Row>): Promise<Row[]> {
  const compiled = query.compile()
  if (!preparedNames.has(compiled.sql) && preparedNames.size < MAX_PREPARED) {
    preparedNames.set(compiled.sql, `gh_${createHash('sha256').update(compiled.sql).digest('base64url').slice(0, 22)}`)
  }
  return (await db.executeQuery(compiled)).rows
}

export function createPool (settings: PoolSettings): pg.Pool {
  const pool = new pg.Pool({
    connectionString: settings.connectionString,
    max: settings.max,
    connectionTimeoutMillis: settings.connectTimeoutMs,
    idleTimeoutMillis: settings.idleTimeoutMs ?? 30_000,
    statement_timeout: settings.statementTimeoutMs,
    application_name: 'gatehouse',
    types: typeParsers,
    ...(settings.preparedStatements === true ? { Client: PreparingClient } : {})
  })
  // An idle connection dropped by a Postgres restart must never crash the process.
  pool.on('error', error => settings.onError?.(error))
  // Nor one dropped while checked out (the pool listens only while a client is idle): the
  // query in flight fails on its own, and the event must not become an uncaught exception.
  pool.on('connect', client => {
    client.on('error', error => settings.onError?.(error))
    // Queued before the pool hands the client out, so it runs before anything else on it.
    if (settings.sharedSession === true) client.query('DEALLOCATE ALL').catch(error => settings.onError?.(error as Error))
  })
  return pool
}

/** Statements run through one Kysely instance, by kind (the benchmark and tests print them). */
export interface StatementCounts { reads: number, writes: number, transactions: number }

const WRITE = /^\s*(insert|update|delete|merge)\b|\b(insert\s+into|delete\s+from)\b|\bupdate\s+"?\w+"?(\s+as\s+\w+)?\s+set\b/i
const TRANSACTION = /^\s*(begin|start transaction|commit|rollback|savepoint|release)\b/i

export function createDatabase (pool: pg.Pool, counts?: StatementCounts): Kysely<Database> {
  return new Kysely<Database>({
    dialect: new PostgresDialect({ pool }),
    ...(counts === undefined
      ? {}
      : {
          log: event => {
            const text = event.query.sql
            if (TRANSACTION.test(text)) counts.transactions++
            else if (WRITE.test(text)) counts.writes++
            else counts.reads++
          }
        })
  })
}

/** A PostgreSQL unique violation of one constraint: the database decides races (the seed's 409s, first sign-ins). */
export const violates = (error: unknown, constraint: string): boolean =>
  (error as { code?: string, constraint?: string }).code === '23505' && (error as { constraint?: string }).constraint === constraint
