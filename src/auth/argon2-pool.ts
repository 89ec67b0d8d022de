import { createRequire } from 'node:module'
import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'

/*
 * argon2id on worker threads: one worker per CPU, each running @node-rs/argon2's synchronous
 * hash and verify, one computation after another. A worker is handed its next job while it
 * still computes the current one, so it starts the next the moment it finishes, without
 * waiting for the main thread to be scheduled: the CPUs never sit idle between two hashes
 * under a sign-in storm (with a semaphore over libuv's pool they did, 5–7% of the time) and
 * are never oversubscribed (at most one computation per CPU, so health probes and token
 * checks on the main thread are not starved). libuv's pool stays free for the file system
 * and DNS. Jobs wait in one FIFO queue here; a worker that dies fails its jobs and is
 * replaced on the next job.
 */

const argon2Path = createRequire(import.meta.url).resolve('@node-rs/argon2')

// CommonJS, evaluated in the worker: the module is required by absolute path, so it loads
// the same whether Gatehouse runs from dist/ or from source.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads')
const { hashSync, verifySync } = require(workerData.argon2)
parentPort.on('message', ({ id, op, password, hash, options }) => {
  try {
    const result = op === 'hash' ? hashSync(password, options) : verifySync(hash, password)
    parentPort.postMessage({ id, result })
  } catch (error) {
    parentPort.postMessage({ id, error: String(error && error.message ? error.message : error) })
  }
})`

type Message = { op: 'hash', password: string, options: object } | { op: 'verify', hash: string, password: string }

interface Job {
  id: number
  message: Message
  resolve: (value: unknown) => void
  reject: (error: Error) => void
}

interface Slot { worker: Worker, jobs: Map<number, Job> }

/** Jobs handed to one worker at a time: the one it computes and the one it starts next. */
const PER_WORKER = 2

export class Argon2Pool {
  private readonly slots: Slot[] = []
  private readonly queue: Job[] = []
  private nextId = 0

  constructor (private readonly size = Math.max(1, availableParallelism())) {}

  async hash (password: string, options: object): Promise<string> {
    return await this.run({ op: 'hash', password, options }) as string
  }

  /** Throws for a hash that is not an argon2 hash. */
  async verify (hash: string, password: string): Promise<boolean> {
    return await this.run({ op: 'verify', hash, password }) as boolean
  }

  /** Stops every worker; their jobs fail, and the next job starts new ones. */
  async close (): Promise<void> {
    await Promise.all(this.slots.map(async slot => await slot.worker.terminate()))
  }

  private async run (message: Message): Promise<unknown> {
    return await new Promise((resolve, reject) => {
      this.queue.push({ id: this.nextId++, message, resolve, reject })
      this.dispatch()
    })
  }

  private dispatch (): void {
    while (this.queue.length > 0) {
      const slot = this.freeSlot()
      if (slot === undefined) return
      const job = this.queue.shift()!
      if (slot.jobs.size === 0) slot.worker.ref()
      slot.jobs.set(job.id, job)
      slot.worker.postMessage({ id: job.id, ...job.message })
    }
  }

  /** The least busy worker with room for a job, starting one while there are fewer than `size`. */
  private freeSlot (): Slot | undefined {
    let best: Slot | undefined
    for (const slot of this.slots) if (slot.jobs.size < PER_WORKER && (best === undefined || slot.jobs.size < best.jobs.size)) best = slot
    if (best !== undefined && best.jobs.size === 0) return best
    if (this.slots.length < this.size) return this.start()
    return best
  }

  private start (): Slot {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { argon2: argon2Path } })
    const slot: Slot = { worker, jobs: new Map() }
    this.slots.push(slot)
    worker.on('message', ({ id, result, error }: { id: number, result?: unknown, error?: string }) => {
      const job = slot.jobs.get(id)
      if (job === undefined) return
      slot.jobs.delete(id)
      // An idle worker does not keep the process alive.
      if (slot.jobs.size === 0) worker.unref()
      if (error === undefined) job.resolve(result)
      else job.reject(new Error(error))
      this.dispatch()
    })
    const fail = (error: Error): void => {
      const index = this.slots.indexOf(slot)
      if (index === -1) return
      this.slots.splice(index, 1)
      for (const job of slot.jobs.values()) job.reject(error)
      slot.jobs.clear()
      this.dispatch()
    }
    worker.on('error', fail)
    worker.on('exit', code => { fail(new Error(`argon2 worker exited with code ${code}`)) })
    return slot
  }
}
