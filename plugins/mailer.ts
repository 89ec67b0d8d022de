import fp from 'fastify-plugin'
import nodemailer, { type Transporter } from 'nodemailer'

export interface Mail {
  to: string
  subject: string
  text: string
  html: string
}

export interface Mailer {
  /** False when no SMTP_URL is set (development): mail is not sent, links are previewed instead. */
  readonly delivers: boolean
  /**
   * Queues a message and returns at once: it is sent off the request path, retried with
   * backoff (4 attempts over about 15 s), and a final failure is logged, never thrown.
   */
  enqueue: (mail: Mail) => void
  /** Resolves when every queued message has been sent or given up (tests, shutdown). */
  idle: () => Promise<void>
}

declare module 'fastify' {
  interface FastifyInstance {
    mailer: Mailer
  }
}

const RETRY_DELAYS = [1_000, 4_000, 10_000]

/** Outgoing mail through nodemailer to SMTP_URL, with a text and an HTML part. */
export default fp(async (fastify) => {
  const { config } = fastify
  const transport: Transporter | undefined = config.SMTP_URL === undefined
    ? undefined
    : nodemailer.createTransport(config.SMTP_URL, { from: config.SMTP_FROM })
  const inFlight = new Set<Promise<void>>()
  let closing = false

  const deliver = async (mail: Mail): Promise<void> => {
    for (let attempt = 0; ; attempt++) {
      try {
        await transport!.sendMail({ from: config.SMTP_FROM, ...mail })
        return
      } catch (error) {
        if (attempt >= RETRY_DELAYS.length || closing) {
          fastify.log.error({ err: error, attempts: attempt + 1 }, 'could not send mail')
          return
        }
        fastify.log.warn({ err: error, attempt: attempt + 1 }, 'sending mail failed; retrying')
        await new Promise(resolve => setTimeout(resolve, RETRY_DELAYS[attempt]).unref())
      }
    }
  }

  fastify.decorate('mailer', {
    delivers: transport !== undefined,
    enqueue (mail) {
      if (transport === undefined) return
      const sending = deliver(mail).finally(() => { inFlight.delete(sending) })
      inFlight.add(sending)
    },
    async idle () {
      while (inFlight.size > 0) await Promise.all([...inFlight])
    }
  } satisfies Mailer)

  fastify.addHook('onClose', async () => {
    closing = true
    await fastify.mailer.idle()
    transport?.close()
  })
}, { name: 'mailer', dependencies: ['config'], fastify: '5.x' })
