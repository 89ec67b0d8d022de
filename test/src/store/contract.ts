import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import type { Store } from '../../../src/store/types.js'

/*
 * The store contract: every behaviour the application relies on, as one suite that runs
 * against each implementation and topology — the in-process store, a Redis server
 * (contract.test.ts), a Redis Cluster and a master behind Sentinel (topologies.test.ts).
 */

export type Factory = (t: Test, prefix?: string) => Promise<Store>

export function storeContract (t: Test, create: Factory): void {
  t.test('values with and without TTL', async t => {
    const store = await create(t)
    t.equal(await store.get('missing'), null)
    await store.set('plain', 'one')
    await store.set('short', 'two', 80)
    t.equal(await store.get('plain'), 'one')
    t.equal(await store.get('short'), 'two')
    await sleep(150)
    t.equal(await store.get('short'), null, 'expired after its TTL')
    t.equal(await store.get('plain'), 'one', 'no TTL: kept')
    t.equal(await store.del('plain'), true)
    t.equal(await store.del('plain'), false, 'deleting twice reports absence')
    t.equal(await store.get('plain'), null)
  })

  t.test('setIfAbsent sets only once', async t => {
    const store = await create(t)
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => store.setIfAbsent('nx', String(i), 1000)))
    t.equal(results.filter(Boolean).length, 1, 'exactly one writer wins')
    t.equal(await store.get('nx'), String(results.indexOf(true)))
    await store.set('gone', 'x', 50)
    await sleep(100)
    t.equal(await store.setIfAbsent('gone', 'y', 1000), true, 'an expired key counts as absent')
  })

  t.test('take consumes a value exactly once', async t => {
    const store = await create(t)
    await store.set('once', 'secret', 10_000)
    const results = await Promise.all(Array.from({ length: 20 }, () => store.take('once')))
    t.same(results.filter(result => result !== null), ['secret'], 'one caller gets it, the others nothing')
    t.equal(await store.get('once'), null)
    t.equal(await store.take('never'), null)
  })

  t.test('compareAndSwap replaces only the expected value, atomically', async t => {
    const store = await create(t)
    await store.set('cas', 'v1', 10_000)
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => store.compareAndSwap('cas', 'v1', `v2-${i}`)))
    t.equal(results.filter(Boolean).length, 1, 'one swap from v1 wins')
    t.match(await store.get('cas'), /^v2-\d+$/)
    t.equal(await store.compareAndSwap('cas', 'v1', 'v3'), false, 'stale expectation refused')
    t.equal(await store.compareAndSwap('absent', 'v1', 'v3'), false, 'absent key refused')
    t.equal(await store.get('absent'), null, 'and not created')
  })

  t.test('compareAndSwap keeps the TTL unless given one', async t => {
    const store = await create(t)
    await store.set('ttl', 'a', 100)
    t.equal(await store.compareAndSwap('ttl', 'a', 'b'), true)
    await sleep(160)
    t.equal(await store.get('ttl'), null, 'the original TTL still applied')
    await store.set('ttl2', 'a', 100)
    t.equal(await store.compareAndSwap('ttl2', 'a', 'b', 10_000), true)
    await sleep(160)
    t.equal(await store.get('ttl2'), 'b', 'the new TTL replaced it')
  })

  t.test('increment counts within a fixed window', async t => {
    const store = await create(t)
    const first = await store.increment('hits', 150)
    t.equal(first.count, 1)
    t.ok(first.ttlMs > 0 && first.ttlMs <= 150, 'window started on the first hit')
    const counts = await Promise.all(Array.from({ length: 9 }, () => store.increment('hits', 150)))
    t.same(counts.map(counter => counter.count).sort((a, b) => a - b), [2, 3, 4, 5, 6, 7, 8, 9, 10], 'no lost increments')
    t.ok(counts.every(counter => counter.ttlMs <= 150), 'later hits do not extend the window')
    await sleep(220)
    t.equal((await store.increment('hits', 150)).count, 1, 'a new window starts from one')
    t.equal((await store.increment('hits', 150, 25)).count, 26, 'several hits at once (batched counting)')
    t.equal((await store.increment('fresh', 150, 7)).count, 7, 'a batch can open a window')
  })

  t.test('release gives back one hit of a live counter, and never makes one', async t => {
    const store = await create(t)
    await store.increment('reserved', 10_000)
    await store.increment('reserved', 10_000)
    await store.release('reserved')
    t.equal((await store.increment('reserved', 10_000)).count, 2, 'one hit given back')
    await Promise.all(Array.from({ length: 2 }, async () => { await store.release('reserved') }))
    const after = await store.increment('reserved', 10_000)
    t.equal(after.count, 1, 'no lost releases')
    t.ok(after.ttlMs > 0 && after.ttlMs <= 10_000, 'the window kept')
    await store.release('absent')
    t.equal(await store.get('absent'), null, 'an absent counter is not created')
    await store.increment('brief', 100)
    await sleep(160)
    await store.release('brief')
    t.equal((await store.increment('brief', 100)).count, 1, 'an expired counter starts over from one, not zero')
  })

  t.test('publish reaches subscribers until they unsubscribe', async t => {
    const store = await create(t)
    const received: string[] = []
    const unsubscribe = await store.subscribe('events', message => received.push(message))
    const other: string[] = []
    await store.subscribe('other', message => other.push(message))
    await store.publish('events', 'one')
    await store.publish('events', 'two')
    await waitFor(() => received.length === 2)
    t.same(received, ['one', 'two'], 'delivered in order')
    t.same(other, [], 'only to that channel')
    await unsubscribe()
    await store.publish('events', 'three')
    await sleep(100)
    t.same(received, ['one', 'two'], 'nothing after unsubscribing')
  })

  t.test('namespaces keep stores apart', async t => {
    const a = await create(t)
    const b = await create(t)
    await a.set('shared-name', 'a')
    t.equal(await b.get('shared-name'), null, 'another prefix does not see the key')
    const heard: string[] = []
    await b.subscribe('channel', message => heard.push(message))
    await a.publish('channel', 'from a')
    await sleep(100)
    t.same(heard, [], 'nor the channel')
  })

  t.test('sessions: create, read, change workspace, delete', async t => {
    const store = await create(t)
    const expiresAt = Date.now() + 60_000
    await store.createSession('s1', { userId: 'u1', rememberMe: true, expiresAt, workspaceId: null }, 'hash-0')
    t.same(await store.getSession('s1'), { userId: 'u1', rememberMe: true, expiresAt, workspaceId: null })
    t.equal(await store.setSessionWorkspace('s1', 1009), true)
    t.equal((await store.getSession('s1'))?.workspaceId, 1009)
    t.equal(await store.setSessionWorkspace('nope', 1009), false, 'a missing session is not changed')
    t.equal(await store.getSession('nope'), null, 'nor created')
    t.equal(await store.deleteSession('s1'), true)
    t.equal(await store.getSession('s1'), null)
    t.equal(await store.deleteSession('s1'), false)
  })

  t.test('sessions expire at their absolute expiry', async t => {
    const store = await create(t)
    await store.createSession('brief', { userId: 'u1', rememberMe: false, expiresAt: Date.now() + 100, workspaceId: null }, 'h')
    await sleep(180)
    t.equal(await store.getSession('brief'), null)
  })

  t.test('refresh rotation: current, grace, reuse, unknown', async t => {
    const store = await create(t)
    const now = Date.now()
    const expiresAt = now + 60_000
    await store.createSession('s', { userId: 'u1', rememberMe: false, expiresAt, workspaceId: null }, 'h0')
    const state = { userId: 'u1', rememberMe: false, expiresAt, workspaceId: null }
    t.same(await store.rotateRefreshToken('s', 'h0', 'h1', now, 10_000), { status: 'rotated', session: state }, 'the current token rotates')
    t.same(await store.rotateRefreshToken('s', 'h0', 'h1', now + 5_000, 10_000), { status: 'grace', session: state }, 'the previous token within the grace window')
    t.same(await store.rotateRefreshToken('s', 'h1', 'h2', now + 6_000, 10_000), { status: 'rotated', session: state }, 'the successor rotates on')
    t.same(await store.rotateRefreshToken('s', 'garbage', 'x', now + 6_000, 10_000), { status: 'invalid' }, 'an unknown hash is invalid and harmless')
    t.ok(await store.getSession('s'), 'the session survives an unknown hash')
    t.same(await store.rotateRefreshToken('s', 'h0', 'h1', now + 7_000, 10_000), { status: 'reused', userId: 'u1' }, 'an older token is reuse')
    t.equal(await store.getSession('s'), null, 'reuse deletes the session')
    t.same(await store.rotateRefreshToken('s', 'h2', 'h3', now + 7_000, 10_000), { status: 'invalid' }, 'even its newest token is dead')
  })

  t.test('refresh rotation: the previous token after the grace window is reuse', async t => {
    const store = await create(t)
    const now = Date.now()
    await store.createSession('s', { userId: 'u2', rememberMe: true, expiresAt: now + 60_000, workspaceId: null }, 'h0')
    await store.rotateRefreshToken('s', 'h0', 'h1', now, 10_000)
    t.same(await store.rotateRefreshToken('s', 'h0', 'h1', now + 10_001, 10_000), { status: 'reused', userId: 'u2' })
    t.equal(await store.getSession('s'), null)
  })

  t.test('refresh rotation: never past the absolute expiry', async t => {
    const store = await create(t)
    const now = Date.now()
    await store.createSession('s', { userId: 'u3', rememberMe: false, expiresAt: now + 60_000, workspaceId: null }, 'h0')
    t.same(await store.rotateRefreshToken('s', 'h0', 'h1', now + 60_000, 10_000), { status: 'invalid' })
  })

  t.test('refresh rotation: parallel presentations of one token all get the successor', async t => {
    const store = await create(t)
    const now = Date.now()
    await store.createSession('s', { userId: 'u4', rememberMe: false, expiresAt: now + 60_000, workspaceId: null }, 'h0')
    const results = await Promise.all(Array.from({ length: 20 }, () => store.rotateRefreshToken('s', 'h0', 'h1', now, 10_000)))
    t.equal(results.filter(result => result.status === 'rotated').length, 1, 'one rotation')
    t.equal(results.filter(result => result.status === 'grace').length, 19, 'the others in grace')
    t.same(await store.rotateRefreshToken('s', 'h1', 'h2', now, 10_000), { status: 'rotated', session: { userId: 'u4', rememberMe: false, expiresAt: now + 60_000, workspaceId: null } })
  })

  t.test('refresh rotation with a limit: only valid presentations spend it, atomically', async t => {
    const store = await create(t)
    const now = Date.now()
    const state = { userId: 'u5', rememberMe: false, expiresAt: now + 60_000, workspaceId: null }
    const limit = { max: 3, windowMs: 10_000 }
    await store.createSession('s', state, 'h0')
    const wrong = await Promise.all(Array.from({ length: 50 }, (_, index) => store.rotateRefreshTokenWithLimit('s', `garbage-${index}`, 'x', now, 10_000, limit)))
    t.same(new Set(wrong.map(result => result.status)), new Set(['invalid']), '50 wrong tokens naming the session are invalid…')
    t.same(await store.rotateRefreshTokenWithLimit('s', 'h0', 'h1', now, 10_000, limit), { status: 'rotated', session: state }, '…and spent nothing of the session\'s budget')
    t.same(await store.rotateRefreshTokenWithLimit('s', 'h0', 'h1', now + 1_000, 10_000, limit), { status: 'grace', session: state }, 'the grace answer is a presentation too (2 of 3)')
    t.same(await store.rotateRefreshTokenWithLimit('s', 'h1', 'h2', now + 2_000, 10_000, limit), { status: 'rotated', session: state }, '3 of 3')
    const limited = await store.rotateRefreshTokenWithLimit('s', 'h2', 'h3', now + 3_000, 10_000, limit)
    t.equal(limited.status, 'limited', 'the fourth valid presentation is refused')
    t.ok(limited.status === 'limited' && limited.retryAfterMs > 0 && limited.retryAfterMs <= 10_000, 'with the time left in the window')
    t.same(await store.rotateRefreshToken('s', 'h2', 'h3', now + 3_000, 10_000), { status: 'rotated', session: state }, 'nothing rotated while limited: h2 is still current')
    t.same(await store.rotateRefreshTokenWithLimit('s', 'h1', 'h2', now + 20_000, 10_000, limit), { status: 'reused', userId: 'u5' }, 'reuse is detected whatever the budget')

    await store.createSession('p', state, 'p0')
    const parallel = await Promise.all(Array.from({ length: 20 }, () => store.rotateRefreshTokenWithLimit('p', 'p0', 'p1', now, 10_000, limit)))
    t.same(parallel.map(result => result.status).sort(), [...Array(17).fill('limited'), 'grace', 'grace', 'rotated'].sort(), 'exactly the limit under concurrency')

    await store.createSession('w', state, 'w0')
    const brief = { max: 1, windowMs: 100 }
    t.equal((await store.rotateRefreshTokenWithLimit('w', 'w0', 'w1', now, 10_000, brief)).status, 'rotated')
    t.equal((await store.rotateRefreshTokenWithLimit('w', 'w1', 'w2', now, 10_000, brief)).status, 'limited')
    await sleep(160)
    t.equal((await store.rotateRefreshTokenWithLimit('w', 'w1', 'w2', now, 10_000, brief)).status, 'rotated', 'a new window')
  })

  t.test('revocations: listed until they lapse', async t => {
    const store = await create(t)
    const now = Date.now()
    await store.addRevocation('session', 'a', now + 60_000)
    await store.addRevocation('session', 'b', now - 1)
    await store.addRevocation('session', 'a', now + 30_000)
    await store.addRevocation('other', 'c', now + 60_000)
    t.same(await store.listRevocations('session', now), [{ id: 'a', until: now + 60_000 }], 'lapsed ones dropped, the later until kept')
    t.same(await store.listRevocations('session', now + 60_000), [])
  })

  t.test('ping answers', async t => {
    const store = await create(t)
    await t.resolves(store.ping())
  })
}

async function waitFor (condition: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await sleep(10)
  }
}
