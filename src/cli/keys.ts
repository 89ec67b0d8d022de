import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { ConfigError, loadConfig } from '../config.js'
import { initKeySet, KeyConfigError, pruneKeySet, readKeySetFile, rotateKeySet, type SigningAlgorithm } from '../keys/keyset.js'
import { fromRoot } from '../paths.js'

/*
 * `npm run keys -- <command>`: manages the signing key set in JWT_KEYS_DIR (default
 * DATA_DIR/keys). Running servers pick changes up within 30 seconds.
 *   init                      create the set with one active key (no-op if it exists)
 *   rotate [--alg A] [--now]  add a key: published at once, signing after one hour (or --now);
 *                             the current key is retired then and stays published until its
 *                             tokens have expired
 *   list                      show the keys and their dates
 *   prune                     delete retired keys whose tokens have all expired
 */
const USAGE = 'usage: npm run keys -- init | rotate [--alg RS256|ES256|EdDSA] [--now] | list | prune'

if (existsSync('.env')) process.loadEnvFile('.env')

try {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: { alg: { type: 'string' }, now: { type: 'boolean', default: false } }
  })
  const config = loadConfig()
  const dir = fromRoot(config.JWT_KEYS_DIR ?? join(config.DATA_DIR, 'keys'))
  const alg = (values.alg ?? config.JWT_ALG) as SigningAlgorithm
  if (!['RS256', 'ES256', 'EdDSA'].includes(alg)) throw new KeyConfigError(`--alg must be RS256, ES256 or EdDSA, not ${alg}`)
  switch (positionals[0]) {
    case 'init':
      console.log(await initKeySet(dir, alg) ? `created a key set in ${dir}` : `a key set already exists in ${dir}`)
      break
    case 'rotate': {
      await initKeySet(dir, alg)
      const entry = await rotateKeySet(dir, alg, { immediately: values.now })
      console.log(`added ${entry.alg} key ${entry.kid}; it signs from ${entry.activatesAt}`)
      break
    }
    case 'list': {
      const keyset = await readKeySetFile(dir)
      if (keyset === undefined) throw new KeyConfigError(`no key set in ${dir}; run \`npm run keys -- init\``)
      for (const entry of keyset.keys) {
        console.log(`${entry.kid}  ${entry.alg}  created ${entry.createdAt}  signs from ${entry.activatesAt}  retired ${entry.retiredAt ?? '-'}`)
      }
      break
    }
    case 'prune': {
      const removed = await pruneKeySet(dir, config.JWT_ACCESS_TTL)
      console.log(removed.length === 0 ? 'nothing to prune' : `removed ${removed.join(', ')}`)
      break
    }
    default:
      console.error(USAGE)
      process.exitCode = 2
  }
} catch (error) {
  if (!(error instanceof ConfigError || error instanceof KeyConfigError)) throw error
  console.error(error.message)
  process.exitCode = 1
}
