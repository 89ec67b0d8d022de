// The database statements Gatehouse issues during a measured run, from PostgreSQL's own
// statistics of the bench database: pg_stat_database.xact_commit (an autocommit statement is
// one transaction) and, per table of pg_stat_user_tables, the rows written
// (n_tup_ins + n_tup_upd + n_tup_del) and the scans (seq_scan + idx_scan).
//
// Other backends flush their statistics lazily (PostgreSQL 15: at most once a second while
// busy, and an idle backend's last ones only when its 10 s idle timer fires), so a reading
// waits SETTLE_MS after the last load ended and then until two readings a second apart agree.
// Each reading is a transaction that is rolled back: it adds no commit to what it counts.
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'

/** After the last load, how long until every backend has flushed (its 10 s idle timer, and a margin). */
const SETTLE_MS = 11_000
/** Give up waiting for agreement this long after the load (under Gatehouse's 30 s pool idle timeout). */
const GIVE_UP_MS = 26_000

export interface Snapshot {
  commits: number
  tables: Map<string, { written: number, scans: number }>
  /** False when the readings still moved when the wait gave up. */
  settled: boolean
}

export interface Delta {
  commits: number
  written: number
  /** Rows written and scans by table, only the tables that changed. */
  tables: Map<string, { written: number, scans: number }>
  settled: boolean
}

interface TableRow { table: string, written: string, scans: string }

export class StatementCounter {
  private constructor (private readonly client: pg.Client) {}

  /** A connection to the database to watch (the bench database). */
  static async connect (databaseUrl: string): Promise<StatementCounter> {
    const client = new pg.Client({ connectionString: databaseUrl, application_name: 'gatehouse-bench-stats' })
    await client.connect()
    return new StatementCounter(client)
  }

  private async read (): Promise<Omit<Snapshot, 'settled'>> {
    await this.client.query('BEGIN')
    try {
      // Statistics are snapshotted per transaction; a new transaction reads fresh ones anyway.
      await this.client.query('SELECT pg_stat_clear_snapshot()')
      const database = await this.client.query<{ commits: string }>('SELECT xact_commit AS commits FROM pg_stat_database WHERE datname = current_database()')
      const tables = await this.client.query<TableRow>(`SELECT relname AS table, n_tup_ins + n_tup_upd + n_tup_del AS written,
        coalesce(seq_scan, 0) + coalesce(idx_scan, 0) AS scans FROM pg_stat_user_tables ORDER BY relname`)
      return {
        commits: Number(database.rows[0]?.commits ?? 0),
        tables: new Map(tables.rows.map(row => [row.table, { written: Number(row.written), scans: Number(row.scans) }]))
      }
    } finally {
      await this.client.query('ROLLBACK')
    }
  }

  /** The statistics once every backend has flushed what it did until `loadEnded` (ms). */
  async settled (loadEnded: number): Promise<Snapshot> {
    const wait = loadEnded + SETTLE_MS - Date.now()
    if (wait > 0) await sleep(wait)
    let previous = await this.read()
    for (;;) {
      await sleep(1000)
      const current = await this.read()
      if (same(previous, current)) return { ...current, settled: true }
      if (Date.now() > loadEnded + GIVE_UP_MS) return { ...current, settled: false }
      previous = current
    }
  }

  async close (): Promise<void> {
    await this.client.end()
  }
}

const same = (a: Omit<Snapshot, 'settled'>, b: Omit<Snapshot, 'settled'>): boolean =>
  a.commits === b.commits && a.tables.size === b.tables.size &&
  [...a.tables].every(([table, stats]) => b.tables.get(table)?.written === stats.written && b.tables.get(table)?.scans === stats.scans)

export function difference (before: Snapshot, after: Snapshot): Delta {
  const tables = new Map<string, { written: number, scans: number }>()
  let written = 0
  for (const [table, stats] of after.tables) {
    const was = before.tables.get(table) ?? { written: 0, scans: 0 }
    const delta = { written: stats.written - was.written, scans: stats.scans - was.scans }
    written += delta.written
    if (delta.written !== 0 || delta.scans !== 0) tables.set(table, delta)
  }
  return { commits: after.commits - before.commits, written, tables, settled: before.settled && after.settled }
}

/** Sums the deltas of several rounds. */
export function sum (deltas: Delta[]): Delta {
  const tables = new Map<string, { written: number, scans: number }>()
  for (const delta of deltas) {
    for (const [table, stats] of delta.tables) {
      const total = tables.get(table) ?? { written: 0, scans: 0 }
      tables.set(table, { written: total.written + stats.written, scans: total.scans + stats.scans })
    }
  }
  return {
    commits: deltas.reduce((total, delta) => total + delta.commits, 0),
    written: deltas.reduce((total, delta) => total + delta.written, 0),
    tables,
    settled: deltas.every(delta => delta.settled)
  }
}
