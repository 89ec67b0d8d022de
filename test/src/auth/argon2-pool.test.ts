import { availableParallelism } from 'node:os'
import t from 'tap'
import { Argon2Pool } from '../../../src/auth/argon2-pool.js'
import { hashPassword, verifyPassword } from '../../../src/auth/passwords.js'

/*
 * The argon2id worker pool behind every password hash and check: right answers under
 * concurrency, errors instead of crashes for what is not an argon2 hash, and recovery after
 * its workers are gone.
 */

// Cheap parameters keep the file fast; the pool passes them through untouched.
const FAST = { algorithm: 2, memoryCost: 1024, timeCost: 1 }

t.test('hashes are argon2id and verify only the right password, many at once', async t => {
  const pool = new Argon2Pool(2)
  t.teardown(async () => { await pool.close() })
  const passwords = Array.from({ length: 12 }, (_, index) => `password number ${index}`)
  const hashes = await Promise.all(passwords.map(async password => await pool.hash(password, FAST)))
  for (const hash of hashes) t.match(hash, /^\$argon2id\$v=19\$m=1024,t=1,p=1\$/)
  t.equal(new Set(hashes).size, hashes.length, 'every hash has its own salt')
  const right = await Promise.all(hashes.map(async (hash, index) => await pool.verify(hash, passwords[index]!)))
  const wrong = await Promise.all(hashes.map(async (hash, index) => await pool.verify(hash, passwords[(index + 1) % passwords.length]!)))
  t.same(right, hashes.map(() => true))
  t.same(wrong, hashes.map(() => false))
})

t.test('what is not an argon2 hash is an error, and verifyPassword says false', async t => {
  const pool = new Argon2Pool(1)
  t.teardown(async () => { await pool.close() })
  await t.rejects(pool.verify('not a hash', 'whatever'))
  t.equal(await pool.verify(await pool.hash('still works', FAST), 'still works'), true, 'the worker survives the error')
  t.equal(await verifyPassword('$2b$10$abcdefghijklmnopqrstuv', 'whatever'), false, 'a bcrypt hash')
  t.equal(await verifyPassword(null, 'whatever'), false, 'no hash at all (the dummy)')
})

t.test('jobs of stopped workers fail; the next ones start new workers', async t => {
  const pool = new Argon2Pool(2)
  t.teardown(async () => { await pool.close() })
  const hash = await pool.hash('before', FAST)
  // Default parameters: long enough to be still running when the workers stop.
  const running = [pool.hash('slow one', { algorithm: 2 }), pool.hash('slow two', { algorithm: 2 })]
    .map(async job => await job.then(() => 'finished', (error: Error) => error.message))
  await pool.close()
  for (const outcome of await Promise.all(running)) t.match(outcome, /^argon2 worker exited/)
  t.equal(await pool.verify(hash, 'before'), true)
})

t.test('the application\'s hashes use OWASP\'s parameters and verify', async t => {
  const hash = await hashPassword('correct horse battery staple')
  t.match(hash, /^\$argon2id\$v=19\$m=19456,t=2,p=1\$/)
  t.equal(await verifyPassword(hash, 'correct horse battery staple'), true)
  t.equal(await verifyPassword(hash, 'correct horse battery stapl'), false)
  t.ok(availableParallelism() >= 1)
})
