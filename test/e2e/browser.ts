import { existsSync } from 'node:fs'
import { chromium, type Browser } from 'playwright-core'
import type { TestContext } from '../helper.js'

/*
 * Debian's Chromium (.ci/run installs it), headless and driven by playwright-core, for the
 * browser tests. It fails loudly where Chromium is missing (npm test leaves test/e2e out there).
 */

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
// Without the networking flags Chromium keeps trying to reach Google's hosts, which this
// machine's closed network refuses.
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']

/** A headless Chromium, closed at teardown. */
export async function browser (t: TestContext): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`Chromium is not installed at ${CHROMIUM} (apt-get install -y chromium; .ci/run does it)`)
  const launched = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS })
  t.teardown(async () => { await launched.close() })
  return launched
}
