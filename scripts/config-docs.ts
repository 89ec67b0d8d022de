// Writes .env.example and the README's configuration table from the config schema
// (src/config.ts), the one place where every setting is defined. `npm run config:docs`.
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ConfigSchema, describeVariable, type ConfigKey } from '../src/config.js'
import { projectRoot } from '../src/paths.js'

const keys = Object.keys(ConfigSchema.properties) as ConfigKey[]

const example = [
  '# Gatehouse configuration. Every setting is an environment variable; this file lists them',
  '# all with their defaults. Copy it to .env (or set the variables another way) and adjust.',
  '# Generated from src/config.ts by `npm run config:docs`.',
  ''
]
for (const key of keys) {
  const doc = describeVariable(key)
  example.push(`# ${doc.description ?? ''}`, `# Accepts ${doc.accepts ?? 'a string'}.`)
  if (doc.developmentDefault !== undefined) {
    // Left commented out: a copied .env that set it would take development's own default away.
    example.push(`# Unset: ${String(doc.default)}, in development ${String(doc.developmentDefault)}; a value set here applies in every mode.`, `# ${key}=${String(doc.default)}`, '')
    continue
  }
  example.push(doc.default === undefined ? `# ${key}=` : `${key}=${String(doc.default)}`, '')
}
writeFileSync(join(projectRoot, '.env.example'), example.join('\n'))

const escape = (text: string): string => text.replace(/\|/g, '\\|')
const table = ['| Variable | Default | Meaning |', '|---|---|---|']
for (const key of keys) {
  const doc = describeVariable(key)
  const fallback = (doc.default === undefined || doc.default === '' ? '—' : `\`${String(doc.default)}\``) +
    (doc.developmentDefault === undefined ? '' : ` (development: \`${String(doc.developmentDefault)}\`)`)
  table.push(`| \`${key}\` | ${fallback} | ${escape(doc.description ?? '')} Accepts ${escape(doc.accepts ?? 'a string')}. |`)
}
const readmePath = join(projectRoot, 'README.md')
const readme = readFileSync(readmePath, 'utf8')
const begin = '<!-- config:begin -->'
const end = '<!-- config:end -->'
const from = readme.indexOf(begin)
const to = readme.indexOf(end)
if (from === -1 || to === -1) throw new Error(`README.md needs the markers ${begin} and ${end}`)
writeFileSync(readmePath, `${readme.slice(0, from + begin.length)}\n${table.join('\n')}\n${readme.slice(to)}`)
console.log(`documented ${keys.length} variables in .env.example and README.md`)
