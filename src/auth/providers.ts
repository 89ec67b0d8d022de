import { Type, type Static } from 'typebox'
import { Value } from 'typebox/value'
import type { Config } from '../config.js'

/*
 * The identity providers a deployment offers: Google, Microsoft Entra ID and Apple from their
 * own settings, and any number of generic OpenID Connect providers (Authentik, Keycloak …)
 * from OIDC_PROVIDERS. Every one is used through discovery and the same code flow.
 */

export const KNOWN_PROVIDERS = ['google', 'microsoft', 'apple'] as const

const GenericProvider = Type.Object({
  key: Type.String({ pattern: '^[a-z0-9][a-z0-9_-]{0,39}$' }),
  displayName: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })),
  issuer: Type.String({ pattern: '^https?://' }),
  clientId: Type.String({ minLength: 1 }),
  clientSecret: Type.Optional(Type.String({ minLength: 1 })),
  scopes: Type.Optional(Type.String({ minLength: 1 }))
}, { additionalProperties: false })
const GenericProviders = Type.Array(GenericProvider, { maxItems: 50 })

export interface Provider {
  key: string
  displayName: string
  issuer: string
  clientId: string
  /** Absent for Apple, whose secret is a JWT made per request. */
  clientSecret?: string
  scopes: string
  /** Apple posts its answer (response_mode=form_post) and needs a signed client secret. */
  apple?: { teamId: string, keyId: string, privateKey: string }
}

export interface ProviderRegistry {
  /** Configured providers by key. */
  configured: Map<string, Provider>
  /** Keys that exist but may not be configured here (google, microsoft, apple). */
  known: Set<string>
  defaultKey: string | undefined
}

function parseGeneric (text: string | undefined): Array<Static<typeof GenericProvider>> {
  if (text === undefined) return []
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw new Error('OIDC_PROVIDERS must be a JSON array of providers')
  }
  if (!Value.Check(GenericProviders, value)) {
    const first = [...Value.Errors(GenericProviders, value)][0]
    throw new Error(`OIDC_PROVIDERS is not valid: ${first?.instancePath ?? ''} ${first?.message ?? ''}`.trim())
  }
  return value
}

/** Problems with the provider settings, for the configuration check at start. */
export function providerProblems (config: Config): string[] {
  const problems: string[] = []
  try {
    parseGeneric(config.OIDC_PROVIDERS)
  } catch (error) {
    problems.push((error as Error).message)
  }
  const pairs: Array<[string, unknown[]]> = [
    ['GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET', [config.GOOGLE_CLIENT_ID, config.GOOGLE_CLIENT_SECRET]],
    ['MICROSOFT_CLIENT_ID, MICROSOFT_CLIENT_SECRET and MICROSOFT_TENANT', [config.MICROSOFT_CLIENT_ID, config.MICROSOFT_CLIENT_SECRET, config.MICROSOFT_TENANT]],
    ['APPLE_CLIENT_ID, APPLE_TEAM_ID, APPLE_KEY_ID and APPLE_PRIVATE_KEY', [config.APPLE_CLIENT_ID, config.APPLE_TEAM_ID, config.APPLE_KEY_ID, config.APPLE_PRIVATE_KEY]]
  ]
  for (const [names, values] of pairs) {
    const set = values.filter(value => value !== undefined).length
    if (set > 0 && set < values.length) problems.push(`set all of ${names}, or none`)
  }
  return problems
}

export function providerRegistry (config: Config): ProviderRegistry {
  const configured = new Map<string, Provider>()
  if (config.GOOGLE_CLIENT_ID !== undefined && config.GOOGLE_CLIENT_SECRET !== undefined) {
    configured.set('google', { key: 'google', displayName: 'Google', issuer: 'https://accounts.google.com', clientId: config.GOOGLE_CLIENT_ID, clientSecret: config.GOOGLE_CLIENT_SECRET, scopes: 'openid email profile' })
  }
  if (config.MICROSOFT_CLIENT_ID !== undefined && config.MICROSOFT_CLIENT_SECRET !== undefined && config.MICROSOFT_TENANT !== undefined) {
    configured.set('microsoft', {
      key: 'microsoft',
      displayName: 'Microsoft',
      issuer: `https://login.microsoftonline.com/${encodeURIComponent(config.MICROSOFT_TENANT)}/v2.0`,
      clientId: config.MICROSOFT_CLIENT_ID,
      clientSecret: config.MICROSOFT_CLIENT_SECRET,
      scopes: 'openid email profile'
    })
  }
  if (config.APPLE_CLIENT_ID !== undefined && config.APPLE_TEAM_ID !== undefined && config.APPLE_KEY_ID !== undefined && config.APPLE_PRIVATE_KEY !== undefined) {
    configured.set('apple', {
      key: 'apple',
      displayName: 'Apple',
      issuer: config.APPLE_ISSUER ?? 'https://appleid.apple.com',
      clientId: config.APPLE_CLIENT_ID,
      scopes: 'openid email name',
      apple: { teamId: config.APPLE_TEAM_ID, keyId: config.APPLE_KEY_ID, privateKey: config.APPLE_PRIVATE_KEY }
    })
  }
  const generic = parseGeneric(config.OIDC_PROVIDERS)
  for (const entry of generic) {
    configured.set(entry.key, {
      key: entry.key,
      displayName: entry.displayName ?? entry.key,
      issuer: entry.issuer,
      clientId: entry.clientId,
      ...(entry.clientSecret === undefined ? {} : { clientSecret: entry.clientSecret }),
      scopes: entry.scopes ?? 'openid email profile'
    })
  }
  return {
    configured,
    known: new Set<string>(KNOWN_PROVIDERS),
    defaultKey: config.OIDC_DEFAULT_PROVIDER ?? generic[0]?.key
  }
}
