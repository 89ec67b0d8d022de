import { Ajv, type Options } from 'ajv'
import formats from 'ajv-formats'
import fp from 'fastify-plugin'
import { UUID_PATTERN } from '../src/schemas/common.js'

/*
 * Request validation (Fastify's documented per-part validator compiler): JSON bodies are
 * taken as sent — `"name": 123` or `"weightGrams": "40"` is a 400 naming the field, never
 * silently converted — while the query string, path parameters and headers, which are text
 * by nature, are coerced (`?limit=10`, `?days=30`). Where a seed sends an id as a string,
 * the schema says so itself (a union), not coercion.
 */

const COMMON: Options = {
  // Every bad field is named in `details`; bodies are bounded by BODY_LIMIT and the schemas' maxLength.
  allErrors: true,
  // Unknown fields are dropped before a handler sees them (no mass assignment).
  removeAdditional: true,
  useDefaults: true,
  addUsedSchema: false
}

function validator (coerceTypes: Options['coerceTypes']): Ajv {
  const ajv = new Ajv({ ...COMMON, coerceTypes })
  // The formats Fastify's own compiler adds (the routes use email, uuid and date-time).
  formats.default(ajv)
  // ajv-formats' uuid also accepts a `urn:uuid:` prefix, which PostgreSQL's uuid type refuses.
  ajv.addFormat('uuid', UUID_PATTERN)
  return ajv
}

/** Sets the validator compiler of every route registered after it: register it first. */
export default fp(async (fastify) => {
  // One pair per app: Ajv keeps every schema it compiled.
  const body = validator(false)
  const text = validator('array')
  fastify.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? body : text).compile(schema))
}, { name: 'validation', fastify: '5.x' })
