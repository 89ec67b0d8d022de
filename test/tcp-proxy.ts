import { createServer, connect, type Socket } from 'node:net'
import type { TestContext } from './helper.js'

/**
 * A TCP proxy in front of a real server (PostgreSQL, Redis) that a test can cut and restore:
 * `cut()` drops every open connection and refuses new ones, as a crashed or unreachable
 * server does; `restore()` lets connections through again. The app under test is pointed at
 * the proxy's port, so an outage is real to its drivers, without stopping a server that other
 * test files share.
 */
export interface TcpProxy { port: number, cut: () => void, restore: () => void, connections: () => number }

export async function startTcpProxy (t: TestContext, target: { host: string, port: number }): Promise<TcpProxy> {
  const open = new Set<Socket>()
  let down = false
  const server = createServer(client => {
    if (down) {
      client.destroy()
      return
    }
    const upstream = connect(target.port, target.host)
    open.add(client)
    open.add(upstream)
    const drop = (): void => {
      client.destroy()
      upstream.destroy()
      open.delete(client)
      open.delete(upstream)
    }
    client.on('error', drop).on('close', drop)
    upstream.on('error', drop).on('close', drop)
    client.pipe(upstream)
    upstream.pipe(client)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of open) socket.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  return {
    port: (server.address() as { port: number }).port,
    cut () {
      down = true
      for (const socket of open) socket.destroy()
      open.clear()
    },
    restore () { down = false },
    connections: () => open.size / 2
  }
}
