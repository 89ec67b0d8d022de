import { existsSync } from 'node:fs'
import closeWithGrace from 'close-with-grace'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import app, { serverOptions } from './app.js'
import { ConfigError, loadConfig, publicUrl, type Config } from './config.js'
import { fileSystemProblem, StartupError } from './lib/startup-error.js'

// A .env file in the working directory is read when present; the environment wins over it.
if (existsSync('.env')) process.loadEnvFile('.env')

let config: Config
try {
  config = loadConfig(process.env)
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  console.error(error.message)
  process.exit(1)
}

const server = Fastify(serverOptions(config))
server.register(fp(app), { config })

// SIGTERM/SIGINT: first drain — readiness answers 503 while the server still accepts for
// SHUTDOWN_DRAIN, so a load balancer stops sending and nothing queued at the socket is reset —
// then stop accepting, let in-flight requests finish and close the pools; give up after 10 s more.
closeWithGrace({ delay: config.SHUTDOWN_DRAIN + 10_000 }, async ({ signal, err }) => {
  if (err !== undefined) {
    server.log.error({ err }, 'shutting down after an error')
  } else {
    server.log.info({ signal, drainMs: config.SHUTDOWN_DRAIN }, 'shutting down')
    if ('lifecycle' in server) server.lifecycle.draining = true
    await new Promise(resolve => setTimeout(resolve, config.SHUTDOWN_DRAIN))
  }
  await server.close()
})

try {
  await server.listen({ host: config.HOST, port: config.PORT })
} catch (error) {
  const reason = startupProblem(error, config)
  if (reason === undefined) server.log.fatal({ err: error }, 'Gatehouse failed to start')
  else console.error(`Gatehouse cannot start: ${reason}`)
  // The exit handlers remove what the start made (the embedded database's socket folder).
  process.exit(1)
}
// Fastify's lines name the sockets; this one names the URL to open (cookies and origin checks go by it).
const base = publicUrl(config)
server.log.info(`Gatehouse is ready at ${base} — ${config.DOCS === 'enabled' ? `API docs ${base}/docs, ` : ''}demo ${base}/demo`)

/** A reason the operator can act on, said in one line; undefined for a failure that needs its stack. */
function startupProblem (error: unknown, config: Config): string | undefined {
  if (error instanceof StartupError) return error.message
  if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') {
    return `port ${config.PORT} on ${config.HOST} is already in use (another Gatehouse?). Stop that process or set PORT.`
  }
  // A folder of the configuration (DATA_DIR, JWT_KEYS_DIR …) that this user cannot write.
  return fileSystemProblem(error, 'change the setting that names that path')
}
