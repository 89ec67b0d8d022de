import { Type, type Static } from 'typebox'
import type { Kysely, Selectable } from 'kysely'
import type { BirdWeightsTable, BirdsTable, Database, VetVisitsTable } from '../db/types.js'
import { errors } from '../errors.js'
import { HexColor, IsoDate, Nullable, Timestamp, Uuid } from '../schemas/common.js'
import { WorkspaceId } from '../tenancy/workspaces.js'

/*
 * Seed 003's domain: birds, weights and vet visits — their shapes ("Data Shapes") and the
 * rules of "Common Validation Rules" that a JSON schema cannot say alone (real calendar dates,
 * empty strings meaning "none").
 */

export const DEFAULT_CHART_COLOR = '#cb3a35'
/** Largest photo data URL accepted (characters; about 512 KiB of image). */
export const PHOTO_MAX_LENGTH = 700_000
const PHOTO = /^data:image\/(png|jpeg|gif|webp|avif);base64,[A-Za-z0-9+/]+={0,2}$/

const OptionalDate = Type.String({ pattern: '^(\\d{4}-\\d{2}-\\d{2})?$', description: 'YYYY-MM-DD, or an empty string for none' })
const Text = (maxLength: number) => Type.Optional(Nullable(Type.String({ maxLength })))

export const BirdInput = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200, pattern: '\\S' }),
  tagId: Text(100),
  species: Text(200),
  dateOfBirth: Type.Optional(Nullable(OptionalDate)),
  gotchaDay: Type.Optional(Nullable(OptionalDate)),
  chartColor: Type.Optional(HexColor),
  photoDataUrl: Type.Optional(Nullable(Type.String({ maxLength: PHOTO_MAX_LENGTH, description: 'A base64 data:image/… URL, or an empty string for none' }))),
  notifyOnDob: Type.Optional(Type.Boolean()),
  notifyOnGotchaDay: Type.Optional(Type.Boolean())
}, { additionalProperties: false })
export type BirdInput = Static<typeof BirdInput>

/** PUT: the same fields; those left out keep their value. */
export const BirdUpdate = Type.Partial(BirdInput, { additionalProperties: false })
export type BirdUpdate = Static<typeof BirdUpdate>

export const Bird = Type.Object({
  id: Uuid,
  workspaceId: WorkspaceId,
  name: Type.String(),
  tagId: Nullable(Type.String()),
  species: Nullable(Type.String()),
  dateOfBirth: Nullable(IsoDate),
  gotchaDay: Nullable(IsoDate),
  chartColor: HexColor,
  photoDataUrl: Nullable(Type.String()),
  notifyOnDob: Type.Boolean(),
  notifyOnGotchaDay: Type.Boolean(),
  createdAt: Timestamp,
  latestWeightGrams: Nullable(Type.Number()),
  latestRecordedOn: Nullable(IsoDate)
}, { title: 'Bird' })
export type Bird = Static<typeof Bird>

export const WeightInput = Type.Object({
  weightGrams: Type.Number({ exclusiveMinimum: 0, maximum: 10000 }),
  recordedOn: IsoDate,
  notes: Text(2000)
}, { additionalProperties: false })

export const Weight = Type.Object({
  id: Uuid,
  birdId: Uuid,
  weightGrams: Type.Number(),
  recordedOn: IsoDate,
  notes: Nullable(Type.String())
}, { title: 'Weight' })

export const VetVisitInput = Type.Object({
  visitedOn: IsoDate,
  clinicName: Text(200),
  reason: Text(500),
  notes: Text(2000)
}, { additionalProperties: false })

export const VetVisit = Type.Object({
  id: Uuid,
  birdId: Uuid,
  visitedOn: IsoDate,
  clinicName: Nullable(Type.String()),
  reason: Nullable(Type.String()),
  notes: Nullable(Type.String())
}, { title: 'VetVisit' })

export type BirdRow = Selectable<BirdsTable> & { latest_weight_grams: number | null, latest_recorded_on: string | null }

export function birdJson (row: BirdRow): Bird {
  return {
    id: row.id,
    workspaceId: row.workspace_id,
    name: row.name,
    tagId: row.tag_id,
    species: row.species,
    dateOfBirth: row.date_of_birth,
    gotchaDay: row.gotcha_day,
    chartColor: row.chart_color,
    photoDataUrl: row.photo_data_url,
    notifyOnDob: row.notify_on_dob,
    notifyOnGotchaDay: row.notify_on_gotcha_day,
    createdAt: new Date(row.created_at).toISOString(),
    latestWeightGrams: row.latest_weight_grams,
    latestRecordedOn: row.latest_recorded_on
  }
}

export const weightJson = (row: Selectable<BirdWeightsTable>) =>
  ({ id: row.id, birdId: row.bird_id, weightGrams: row.weight_grams, recordedOn: row.recorded_on, notes: row.notes })

export const vetVisitJson = (row: Selectable<VetVisitsTable>) =>
  ({ id: row.id, birdId: row.bird_id, visitedOn: row.visited_on, clinicName: row.clinic_name, reason: row.reason, notes: row.notes })

/** True for a YYYY-MM-DD that is a day of the calendar (2023-02-30 is not). */
export function isRealDate (text: string): boolean {
  const [year, month, day] = text.split('-').map(Number) as [number, number, number]
  const date = new Date(Date.UTC(year, month - 1, day))
  return year >= 1 && date.getUTCFullYear() === year && date.getUTCMonth() === month - 1 && date.getUTCDate() === day
}

/**
 * The checks beyond the schema, for the fields present: real dates, a well-formed photo data
 * URL. Throws seed 003's 400 naming every bad field.
 */
export function checkFields (thing: string, fields: Record<string, unknown>, dates: string[]): void {
  const details: Record<string, string> = {}
  for (const field of dates) {
    const value = fields[field]
    if (typeof value === 'string' && value !== '' && !isRealDate(value)) details[field] = 'must be a real date (YYYY-MM-DD)'
  }
  const photo = fields.photoDataUrl
  if (typeof photo === 'string' && photo !== '' && !PHOTO.test(photo)) details.photoDataUrl = 'must be a base64 data:image/… URL'
  if (Object.keys(details).length > 0) throw errors.invalidPayload(thing, details)
}

/** Empty strings and blanks are "none". */
export const orNull = (value: string | null | undefined): string | null => {
  const trimmed = value?.trim()
  return trimmed === undefined || trimmed === '' ? null : trimmed
}

/** Birds of one workspace with their latest weight, in one statement (no query per bird). */
export function birdsQuery (db: Kysely<Database>, workspaceId: number) {
  return db.selectFrom('birds as b')
    .leftJoinLateral(eb => eb.selectFrom('bird_weights as w').select(['w.weight_grams', 'w.recorded_on'])
      .whereRef('w.bird_id', '=', 'b.id').orderBy('w.recorded_on', 'desc').limit(1).as('latest'), join => join.onTrue())
    .selectAll('b')
    .select(['latest.weight_grams as latest_weight_grams', 'latest.recorded_on as latest_recorded_on'])
    .where('b.workspace_id', '=', workspaceId)
}

/** Seed 003's 409 for a tagId used twice in a workspace (create, update, a transfer's arrival). */
export const tagTaken = () => errors.conflict('That tagId is already used in this workspace.', 'TAG_TAKEN')
