// The "floor": a bare Fastify server doing the same work as each Gatehouse scenario and
// nothing else (no plugins, no hooks, no logging). Each scenario's req/s is printed beside
// its floor's, measured in the same run on the same machine.
import Fastify from 'fastify'

const server = Fastify({ logger: false })

server.get('/floor/health', async () => ({ ok: true }))

await server.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) })
const address = server.server.address()
process.stdout.write(`listening ${typeof address === 'object' && address !== null ? address.port : ''}\n`)
process.on('SIGTERM', () => { server.close().then(() => process.exit(0), () => process.exit(1)) })
