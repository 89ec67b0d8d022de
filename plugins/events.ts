import fp from 'fastify-plugin'

/** A change in a workspace, as live clients receive it: small, ids only (seed 001's WebSocket). */
export interface WorkspaceEvent {
  type: 'bird.created' | 'bird.updated' | 'bird.deleted' | 'bird.transferred' |
    'weight.created' | 'vet_visit.created' |
    'member.added' | 'member.updated' | 'member.removed' |
    'transfer.created' | 'transfer.accepted' | 'workspace.updated'
  workspaceId: number
  /** The changed thing's id. */
  id: string
  birdId?: string
  at: string
}

export type EventListener = (event: WorkspaceEvent) => void

export interface Events {
  /** Tells every instance (Redis pub/sub) about a change in a workspace; never fails the request. */
  publish: (workspaceId: number, event: Omit<WorkspaceEvent, 'workspaceId' | 'at'>) => Promise<void>
  /** Listens to one workspace's changes on this instance; returns the function that stops. */
  listen: (workspaceId: number, listener: EventListener) => () => void
}

declare module 'fastify' {
  interface FastifyInstance {
    events: Events
  }
}

const CHANNEL = 'events'

/**
 * Workspace events for live updates: one store channel for all workspaces; each instance
 * hands a message to its own listeners of that workspace (the WebSocket route's sockets).
 */
export default fp(async (fastify) => {
  const { store } = fastify
  const listeners = new Map<number, Set<EventListener>>()

  const deliver = (message: string): void => {
    let event: WorkspaceEvent
    try {
      event = JSON.parse(message) as WorkspaceEvent
    } catch {
      return
    }
    for (const listener of listeners.get(event.workspaceId) ?? []) {
      try {
        listener(event)
      } catch (error) {
        fastify.log.warn({ err: error }, 'an event listener failed')
      }
    }
  }

  let unsubscribe: (() => Promise<void>) | undefined
  const listen = async (): Promise<void> => { unsubscribe ??= await store.subscribe(CHANNEL, deliver) }
  await listen().catch(error => { fastify.log.warn({ err: error }, 'store unavailable: live updates start when it answers') })
  store.onReconnect(() => { listen().catch(error => fastify.log.warn({ err: error }, 'could not subscribe to workspace events')) })
  fastify.addHook('onClose', async () => { await unsubscribe?.().catch(() => {}) })

  fastify.decorate('events', {
    async publish (workspaceId, event) {
      const message = JSON.stringify({ ...event, workspaceId, at: new Date(fastify.now()).toISOString() })
      // The change is committed; a lost live update must not turn it into an error.
      await store.publish(CHANNEL, message).catch(error => fastify.log.warn({ err: error }, 'could not publish a workspace event'))
    },
    listen (workspaceId, listener) {
      let set = listeners.get(workspaceId)
      if (set === undefined) listeners.set(workspaceId, set = new Set())
      set.add(listener)
      return () => {
        set.delete(listener)
        if (set.size === 0) listeners.delete(workspaceId)
      }
    }
  } satisfies Events)
}, { name: 'events', dependencies: ['store'], fastify: '5.x' })
