import { execFile } from 'node:child_process'
import { createPrivateKey, createPublicKey, randomBytes } from 'node:crypto'
import { readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import {
  activeKey, generatePrivateKey, initKeySet, keyId, loadKeySet, PUBLISH_AHEAD_MS, pruneKeySet, publishedKeys,
  readKeySetFile, rotateKeySet, signingKeyFromPem, type SigningKey
} from '../../../src/keys/keyset.js'
import { projectRoot } from '../../../src/paths.js'
import { tempDir } from '../../helper.js'

const run = promisify(execFile)

const TTL = 15 * 60_000
const MARGIN = 60_000
const T0 = new Date('2030-01-01T00:00:00.000Z')
const at = (offset: number): Date => new Date(T0.getTime() + offset)

const kids = (keys: SigningKey[]): string[] => keys.map(key => key.kid)
const mode = async (path: string): Promise<number> => (await stat(path)).mode & 0o777

t.test('initKeySet creates the set once: keyset.json, one private PEM, a session secret', async t => {
  const dir = join(await tempDir(t), 'keys')
  t.equal(await initKeySet(dir, 'RS256', T0), true, 'created')
  t.equal(await mode(dir), 0o700, 'the directory is private')

  const keyset = await readKeySetFile(dir)
  t.equal(keyset?.version, 1)
  t.equal(keyset?.keys.length, 1)
  const [entry] = keyset!.keys
  t.match(entry, { alg: 'RS256', file: `${entry!.kid}.pem`, createdAt: T0.toISOString(), activatesAt: T0.toISOString(), retiredAt: null })
  t.same((await readdir(dir)).sort(), [`${entry!.kid}.pem`, 'keyset.json', 'session-secret'].sort(), 'no stray (temporary) files')

  const pem = await readFile(join(dir, entry!.file), 'utf8')
  t.match(pem, /^-----BEGIN PRIVATE KEY-----\n/, 'a PKCS#8 PEM')
  t.equal(await mode(join(dir, entry!.file)), 0o600, 'the PEM is 0600')
  t.equal(await mode(join(dir, 'session-secret')), 0o600, 'the session secret is 0600')
  t.equal(await mode(join(dir, 'keyset.json')), 0o600, 'keyset.json is 0600')
  t.equal(keyId(createPublicKey(createPrivateKey(pem))), entry!.kid, 'the kid is the PEM\'s key id')
  const secret = (await readFile(join(dir, 'session-secret'), 'utf8')).trim()
  t.equal(Buffer.from(secret, 'base64url').length, 32, 'a 32-byte secret')

  t.equal(await initKeySet(dir, 'RS256'), false, 'a second init is a no-op')
  t.same(await readKeySetFile(dir), keyset, 'and changes nothing')
  t.equal((await readFile(join(dir, 'session-secret'), 'utf8')).trim(), secret, 'the secret is kept')

  const loaded = await loadKeySet(dir)
  t.same(kids(loaded.keys), [entry!.kid])
  t.equal(loaded.sessionSecret.toString('base64url'), secret)
})

t.test('rotate without immediately: published now, signing after an hour, the old key retired then', async t => {
  const dir = await tempDir(t)
  await initKeySet(dir, 'RS256', T0)
  const [first] = (await readKeySetFile(dir))!.keys
  const rotatedAt = at(86_400_000)
  const switchAt = new Date(rotatedAt.getTime() + PUBLISH_AHEAD_MS)
  t.equal(PUBLISH_AHEAD_MS, 3_600_000, 'one hour, the JWKS max-age')

  const added = await rotateKeySet(dir, 'RS256', { now: rotatedAt })
  t.not(added.kid, first!.kid)
  t.equal(added.createdAt, rotatedAt.toISOString())
  t.equal(added.activatesAt, switchAt.toISOString(), 'signs one hour later')
  t.equal(added.retiredAt, null)

  const { keys } = await loadKeySet(dir)
  t.same(kids(keys), [first!.kid, added.kid])
  const [old, fresh] = keys as [SigningKey, SigningKey]
  t.same(old.retiredAt, switchAt, 'the old key retires when the new one activates')
  t.same(fresh.activatesAt, switchAt)

  t.equal(activeKey(keys, rotatedAt.getTime())?.kid, old.kid, 'at the rotation the old key still signs')
  t.equal(activeKey(keys, switchAt.getTime() - 1)?.kid, old.kid, 'until the very last millisecond')
  t.equal(activeKey(keys, switchAt.getTime())?.kid, fresh.kid, 'the new key signs from the switch on')
  t.equal(activeKey(keys, switchAt.getTime() + 86_400_000)?.kid, fresh.kid)
  t.equal(activeKey(keys, T0.getTime() - 1), undefined, 'nothing signs before the first key activates')

  t.same(kids(publishedKeys(keys, rotatedAt.getTime(), TTL)), [old.kid, fresh.kid], 'both published at the rotation')
  const dropAt = switchAt.getTime() + TTL + MARGIN
  t.same(kids(publishedKeys(keys, dropAt - 1, TTL)), [old.kid, fresh.kid], 'the old key stays until its last token expired (+60 s)')
  t.same(kids(publishedKeys(keys, dropAt, TTL)), [fresh.kid], 'then it is dropped')
  t.same(kids(publishedKeys(keys, dropAt + 86_400_000, TTL)), [fresh.kid])

  // A second rotation before the first switched: the pending key retires at the new switch.
  const again = await rotateKeySet(dir, 'RS256', { now: new Date(rotatedAt.getTime() + 60_000) })
  const after = (await loadKeySet(dir)).keys
  t.same(after[0]!.retiredAt, switchAt, 'an already retired key keeps its date')
  t.same(after[1]!.retiredAt, new Date(again.activatesAt))
})

t.test('rotate immediately: the new key signs at once', async t => {
  const dir = await tempDir(t)
  await initKeySet(dir, 'RS256', T0)
  const rotatedAt = at(1_000)
  const added = await rotateKeySet(dir, 'ES256', { immediately: true, now: rotatedAt })
  t.equal(added.activatesAt, rotatedAt.toISOString())
  const { keys } = await loadKeySet(dir)
  t.same(keys[0]!.retiredAt, rotatedAt)
  t.equal(activeKey(keys, rotatedAt.getTime() - 1)?.kid, keys[0]!.kid)
  t.equal(activeKey(keys, rotatedAt.getTime())?.kid, added.kid)
  t.same(kids(publishedKeys(keys, rotatedAt.getTime() + TTL, TTL)), [keys[0]!.kid, added.kid])
})

t.test('pruneKeySet removes only retired keys whose tokens have all expired, and their files', async t => {
  const dir = await tempDir(t)
  await initKeySet(dir, 'RS256', T0)
  const [first] = (await readKeySetFile(dir))!.keys
  const second = await rotateKeySet(dir, 'RS256', { immediately: true, now: at(1_000) })
  const third = await rotateKeySet(dir, 'RS256', { now: at(2_000) })
  // first retired at +1 s, second retires at +2 s + 1 h, third is pending.
  const firstGone = 1_000 + TTL + MARGIN
  const secondGone = 2_000 + PUBLISH_AHEAD_MS + TTL + MARGIN

  t.same(await pruneKeySet(dir, TTL, at(firstGone - 1)), [], 'nothing expired yet')
  t.equal((await readKeySetFile(dir))!.keys.length, 3)

  t.same(await pruneKeySet(dir, TTL, at(firstGone)), [first!.kid], 'the first key goes')
  t.same((await readKeySetFile(dir))!.keys.map(entry => entry.kid), [second.kid, third.kid])
  t.same((await readdir(dir)).filter(name => name.endsWith('.pem')).sort(), [`${second.kid}.pem`, `${third.kid}.pem`].sort(), 'its PEM is deleted')

  t.same(await pruneKeySet(dir, TTL, at(secondGone - 1)), [], 'the second key is still published')
  t.same(await pruneKeySet(dir, TTL, at(secondGone + 365 * 86_400_000)), [second.kid], 'then it goes')
  const left = await loadKeySet(dir)
  t.same(kids(left.keys), [third.kid], 'the current key is never pruned')
  t.same(await readdir(dir).then(names => names.sort()), ['keyset.json', 'session-secret', `${third.kid}.pem`].sort())

  t.same(await pruneKeySet(await tempDir(t), TTL), [], 'no key set: nothing to prune')
})

t.test('loadKeySet round-trips kids, algorithms and dates', async t => {
  const dir = await tempDir(t)
  await initKeySet(dir, 'EdDSA', T0)
  await rotateKeySet(dir, 'ES256', { now: at(1_000) })
  await rotateKeySet(dir, 'RS256', { immediately: true, now: at(2_000) })
  const file = (await readKeySetFile(dir))!
  const { keys } = await loadKeySet(dir)
  t.same(keys.map(key => [key.kid, key.alg]), file.keys.map(entry => [entry.kid, entry.alg]))
  t.same(keys.map(key => key.alg), ['EdDSA', 'ES256', 'RS256'])
  t.same(keys.map(key => key.activatesAt.toISOString()), file.keys.map(entry => entry.activatesAt))
  t.same(keys.map(key => key.retiredAt?.toISOString() ?? null), file.keys.map(entry => entry.retiredAt))
  for (const key of keys) {
    t.equal(keyId(key.publicKey), key.kid, `${key.alg}: the kid matches the key`)
    t.equal(key.privateKey.type, 'private')
    t.equal(key.publicKey.type, 'public')
  }
  await t.rejects(loadKeySet(await tempDir(t)), { name: 'KeyConfigError' }, 'an empty directory is not a key set')
})

t.test('keyId is stable for a key and differs between keys', async t => {
  for (const alg of ['RS256', 'ES256', 'EdDSA'] as const) {
    const privateKey = generatePrivateKey(alg)
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
    const kid = keyId(createPublicKey(privateKey))
    t.match(kid, /^[A-Za-z0-9_-]{22}$/, `${alg}: 22 base64url characters`)
    t.equal(keyId(createPublicKey(privateKey)), kid, `${alg}: same key, same kid`)
    t.equal(keyId(createPublicKey(pem)), kid, `${alg}: from the PEM too`)
    t.equal(signingKeyFromPem(pem).kid, kid, `${alg}: signingKeyFromPem agrees`)
    t.equal(signingKeyFromPem(pem).alg, alg)
    t.not(keyId(createPublicKey(generatePrivateKey(alg))), kid, `${alg}: another key, another kid`)
  }
})

t.test('the keys CLI: rotate --now, list, and an unknown command', async t => {
  const dir = await tempDir(t)
  const env: NodeJS.ProcessEnv = { ...process.env, DATA_DIR: dir, NODE_ENV: 'test' }
  delete env.JWT_KEYS_DIR
  delete env.JWT_PRIVATE_KEY
  delete env.JWT_PRIVATE_KEY_FILE
  const cli = async (...args: string[]): Promise<{ stdout: string, stderr: string }> =>
    await run(process.execPath, ['--import', 'tsx', 'src/cli/keys.ts', ...args], { env, cwd: projectRoot })

  const rotated = await cli('rotate', '--now')
  const keyset = (await readKeySetFile(join(dir, 'keys')))!
  t.equal(keyset.keys.length, 2, 'rotate created the set, then added a key')
  const [first, second] = keyset.keys as [typeof keyset.keys[0], typeof keyset.keys[0]]
  t.match(rotated.stdout, `added RS256 key ${second.kid}`)
  t.equal(first.retiredAt, second.activatesAt, 'the first key retired when the new one activated')
  t.ok(Date.parse(second.activatesAt) <= Date.now(), '--now: it signs already')

  const listed = await cli('list')
  t.match(listed.stdout, first.kid, 'list names the first kid')
  t.match(listed.stdout, second.kid, 'list names the second kid')
  t.equal(listed.stdout.trim().split('\n').length, 2, 'one line per key')

  const failed = await cli('frobnicate').then(() => undefined, (error: { code: number, stderr: string }) => error)
  t.ok(failed !== undefined, 'an unknown command fails')
  t.equal(failed?.code, 2, 'with exit code 2')
  t.match(failed?.stderr, /usage: npm run keys/)
})

t.test('instances starting together on one directory share one key set', async t => {
  const dir = join(await tempDir(t), 'keys')
  const results = await Promise.all([1, 2, 3, 4].map(async () => {
    const created = await initKeySet(dir, 'EdDSA')
    return { created, loaded: await loadKeySet(dir) }
  }))
  t.equal(results.filter(result => result.created).length, 1, 'one of them created it')
  const kids = new Set(results.map(result => result.loaded.keys.map(key => key.kid).join(',')))
  t.equal(kids.size, 1, 'all of them use the same key')
  t.equal(new Set(results.map(result => result.loaded.sessionSecret.toString('hex'))).size, 1, 'and the same secret')
})

t.test('an init interrupted after the secret is completed by the next one', async t => {
  const dir = await tempDir(t)
  const secret = randomBytes(32).toString('base64url')
  await writeFile(join(dir, 'session-secret'), `${secret}\n`, { mode: 0o600 })
  t.equal(await initKeySet(dir, 'RS256'), true)
  const loaded = await loadKeySet(dir)
  t.equal(loaded.keys.length, 1)
  t.equal(loaded.sessionSecret.toString('base64url'), secret, 'the existing secret is kept')
})
