import { Ajv, type ErrorObject, type Options, type ValidateFunction } from 'ajv'
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

/** The JSON pointer of the first string holding a NUL character, or undefined. */
function nulAt (value: unknown, path: string): string | undefined {
  if (typeof value === 'string') return value.includes('\0') ? path : undefined
  if (typeof value !== 'object' || value === null) return undefined
  for (const [key, item] of Object.entries(value)) {
    const found = nulAt(item, `${path}/${key}`)
    if (found !== undefined) return found
  }
  return undefined
}

type Context = Parameters<ValidateFunction>[1]
type Validator = ((data: unknown, context?: Context) => boolean) & Pick<ValidateFunction, 'errors' | 'schemaEnv'>

/**
 * A schema's validator that also refuses NUL characters in any string: PostgreSQL cannot
 * store them in text (22021), so they are a 400 naming the field, never a 500 later.
 */
function refusingNul (validate: ValidateFunction): Validator {
  const check: Validator = Object.assign((data: unknown, context?: Context): boolean => {
    if (!validate(data, context)) {
      check.errors = validate.errors
      return false
    }
    const path = nulAt(data, '')
    if (path === undefined) return true
    const error: ErrorObject = { instancePath: path, schemaPath: '#', keyword: 'nul', params: {}, message: 'must not contain NUL characters' }
    check.errors = [error]
    return false
  }, { errors: null, schemaEnv: validate.schemaEnv })
  return check
}

/** Sets the validator compiler of every route registered after it: register it first. */
export default fp(async (fastify) => {
  // One pair per app: Ajv keeps every schema it compiled.
  const body = validator(false)
  const text = validator('array')
  fastify.setValidatorCompiler(({ schema, httpPart }) => {
    const validate = (httpPart === 'body' ? body : text).compile(schema)
    // Path parameters are left alone: a malformed id answers as an unknown one (404).
    return httpPart === 'body' || httpPart === 'querystring' ? refusingNul(validate) : validate
  })
}, { name: 'validation', fastify: '5.x' })
