import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * The project root (where package.json and sql/ live), found from this file so that it is
 * the same whether the code runs from src/ through tsx or from dist/src/ after a build.
 */
function findRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('cannot find the Gatehouse project root (package.json)')
    dir = parent
  }
  return dir
}

export const projectRoot = findRoot()
export const migrationsDir = join(projectRoot, 'sql')

/** A path from configuration, relative paths taken from the project root. */
export const fromRoot = (path: string): string => resolve(projectRoot, path)
