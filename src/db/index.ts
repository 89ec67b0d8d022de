import { Kysely, PostgresDialect } from 'kysely'
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
  onError?: (error: Error) => void
}

export function createPool (settings: PoolSettings): pg.Pool {
  const pool = new pg.Pool({
    connectionString: settings.connectionString,
    max: settings.max,
    connectionTimeoutMillis: settings.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    statement_timeout: settings.statementTimeoutMs,
    application_name: 'gatehouse',
    types: typeParsers
  })
  // An idle connection dropped by a Postgres restart must never crash the process.
  pool.on('error', error => settings.onError?.(error))
  // Nor one dropped while checked out (the pool listens only while a client is idle): the
  // query in flight fails on its own, and the event must not become an uncaught exception.
  pool.on('connect', client => {
    client.on('error', error => settings.onError?.(error))
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
