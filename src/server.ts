import { existsSync } from 'node:fs'
import closeWithGrace from 'close-with-grace'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import app, { serverOptions } from './app.js'
import { ConfigError, loadConfig, type Config } from './config.js'

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
  server.log.fatal({ err: error }, 'Gatehouse failed to start')
  process.exit(1)
}
