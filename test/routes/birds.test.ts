import type { HTTPMethods, LightMyRequestResponse } from 'fastify'
import pg from 'pg'
import t, { type Test } from 'tap'
import { build, embedded, statementsDuring } from '../helper.js'
import { bearer, registerVerified, type SignedIn } from '../auth-helper.js'

/*
 * Seed 003's birds, weights and vet visits (issue 6): the shapes, every rule of "Common
 * Validation Rules" (a refused payload stores nothing), the `days` window, the 409s decided
 * by the database (also under races), 404 for any bird outside the active workspace on every
 * route, the roles and read-only tokens, the list with each bird's latest weight in one
 * statement, its pages, and the cascade of a deletion.
 */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
const BIRD_KEYS = ['chartColor', 'createdAt', 'dateOfBirth', 'gotchaDay', 'id', 'latestRecordedOn', 'latestWeightGrams', 'name',
  'notifyOnDob', 'notifyOnGotchaDay', 'photoDataUrl', 'species', 'tagId', 'workspaceId']
const WEIGHT_KEYS = ['birdId', 'id', 'notes', 'recordedOn', 'weightGrams']
const VISIT_KEYS = ['birdId', 'clinicName', 'id', 'notes', 'reason', 'visitedOn']
const FORBIDDEN = { error: 'You do not have permission for that action.', code: 'ROLE_NOT_ALLOWED' }
const READ_ONLY = { error: 'That integration token is read-only.', code: 'TOKEN_READ_ONLY' }
const NOT_FOUND = { error: 'Bird not found', code: 'NOT_FOUND' }
const TAG_TAKEN = { error: 'That tagId is already used in this workspace.', code: 'TAG_TAKEN' }
const WEIGHT_EXISTS = { error: 'A weight already exists for that bird on that date.', code: 'WEIGHT_EXISTS' }
/** A 1×1 transparent PNG. */
const PNG = 'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII='
const PHOTO_PREFIX = 'data:image/png;base64,'
/** The request body of seed 003's POST /api/birds example. */
const SEED_KIWI = { name: 'Kiwi', tagId: 'FP-001', species: 'Cockatiel', dateOfBirth: '2023-05-10', gotchaDay: '2023-08-21', chartColor: '#cb3a35', photoDataUrl: '', notifyOnDob: false, notifyOnGotchaDay: true }

type Headers = Record<string, string>
type Json = Record<string, unknown>
interface BirdJson { id: string, workspaceId: number, name: string, tagId: string | null, latestWeightGrams: number | null, latestRecordedOn: string | null, [key: string]: unknown }

/** The bearer header, acting in `workspaceId` when given (seed 003's X-Workspace-Id). */
const as = (user: SignedIn | string, workspaceId?: number): Headers => ({
  ...bearer(typeof user === 'string' ? user : user.accessToken),
  ...(workspaceId === undefined ? {} : { 'x-workspace-id': String(workspaceId) })
})

/** The day `offset` days from today (UTC), YYYY-MM-DD. */
const day = (offset = 0): string => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10)

// One app for the whole file (building one costs a database clone): every test has users of its own.
const app = await build(t)
const databaseName = new URL(app.config.DATABASE_URL!).pathname.slice(1)

async function personalWorkspace (user: SignedIn): Promise<number> {
  const answer = await app.inject({ url: '/api/workspace', headers: as(user) })
  if (answer.statusCode !== 200) throw new Error(`GET /api/workspace: ${answer.statusCode} ${answer.body}`)
  return answer.json().workspace.id
}

/** A verified user with their personal workspace. */
async function owner (email: string): Promise<{ user: SignedIn, userId: string, workspaceId: number, headers: Headers }> {
  const user = await registerVerified(app, email)
  if (user.status !== 201) throw new Error(`register ${email}: ${user.status}`)
  return { user, userId: user.user.id, workspaceId: await personalWorkspace(user), headers: as(user) }
}

/** Makes a verified account a member of the owner's active workspace; its headers act there. */
async function member (ownerHeaders: Headers, workspaceId: number, email: string, role: string): Promise<Headers> {
  const user = await registerVerified(app, email)
  const added = await app.inject({ method: 'POST', url: '/api/workspace/members', headers: ownerHeaders, payload: { email, role } })
  if (added.statusCode !== 201) throw new Error(`member ${email}: ${added.statusCode} ${added.body}`)
  return as(user, workspaceId)
}

async function integrationToken (headers: Headers, scope: 'read_only' | 'read_write'): Promise<Headers> {
  const minted = await app.inject({ method: 'POST', url: '/api/integration-tokens', headers, payload: { name: `${scope} sync`, scope } })
  if (minted.statusCode !== 201) throw new Error(`integration token: ${minted.statusCode} ${minted.body}`)
  return bearer(minted.json().token)
}

const postBird = async (headers: Headers, payload: unknown): Promise<LightMyRequestResponse> =>
  await app.inject({ method: 'POST', url: '/api/birds', headers, payload: payload as Json })
const putBird = async (headers: Headers, id: string, payload: unknown): Promise<LightMyRequestResponse> =>
  await app.inject({ method: 'PUT', url: `/api/birds/${id}`, headers, payload: payload as Json })
const postWeight = async (headers: Headers, id: string, payload: unknown): Promise<LightMyRequestResponse> =>
  await app.inject({ method: 'POST', url: `/api/birds/${id}/weights`, headers, payload: payload as Json })
const postVisit = async (headers: Headers, id: string, payload: unknown): Promise<LightMyRequestResponse> =>
  await app.inject({ method: 'POST', url: `/api/birds/${id}/vet-visits`, headers, payload: payload as Json })
const listBirds = async (headers: Headers, query = ''): Promise<LightMyRequestResponse> =>
  await app.inject({ url: `/api/birds${query}`, headers })

async function newBird (headers: Headers, payload: Json = {}): Promise<BirdJson> {
  const answer = await postBird(headers, { name: 'Kiwi', ...payload })
  if (answer.statusCode !== 201) throw new Error(`POST /api/birds: ${answer.statusCode} ${answer.body}`)
  return answer.json().bird
}

async function newWeight (headers: Headers, birdId: string, weightGrams: number, recordedOn: string): Promise<void> {
  const answer = await postWeight(headers, birdId, { weightGrams, recordedOn })
  if (answer.statusCode !== 201) throw new Error(`POST weights: ${answer.statusCode} ${answer.body}`)
}

const birdRow = async (id: string) => await app.db.selectFrom('birds').selectAll().where('id', '=', id).executeTakeFirst()
const countRows = async (table: 'birds' | 'bird_weights' | 'vet_visits'): Promise<number> =>
  (await app.db.selectFrom(table).select('id').execute()).length
const weightsOf = async (birdId: string) =>
  await app.db.selectFrom('bird_weights').selectAll().where('bird_id', '=', birdId).orderBy('recorded_on').execute()
const visitsOf = async (birdId: string) => await app.db.selectFrom('vet_visits').selectAll().where('bird_id', '=', birdId).execute()

/** Seed 003's 400: `{ error: 'Invalid <thing> payload', code, details }` naming `field`. */
function assertInvalid (t: Test, answer: LightMyRequestResponse, thing: string, field: string, label: string): void {
  t.equal(answer.statusCode, 400, `${label}: 400`)
  const body = answer.json()
  t.equal(body.error, `Invalid ${thing} payload`, `${label}: message`)
  t.equal(body.code, 'VALIDATION_FAILED', `${label}: code`)
  t.type(body.details?.[field], 'string', `${label}: details name ${field} (${JSON.stringify(body.details)?.slice(0, 120)})`)
  t.same(Object.keys(body).sort(), ['code', 'details', 'error'], `${label}: only error, code, details`)
}

const BAD_DATES: Array<[string, string]> = [['10/05/2023', 'not YYYY-MM-DD'], ['2023-02-30', 'no Feb 30'], ['2023-13-01', 'no month 13'], ['2021-02-29', 'not a leap year'], ['2023-5-10', 'one-digit month']]

t.test('POST /api/birds: seed 003 shape, defaults, empty strings as none, unknown fields dropped', async t => {
  const alice = await owner('alice@create.birds.test')
  const bob = await owner('bob@create.birds.test')

  const full = await postBird(alice.headers, { ...SEED_KIWI, name: '  Kiwi  ', chartColor: '#1A2b3C' })
  t.equal(full.statusCode, 201)
  const kiwi = full.json().bird
  t.same(Object.keys(full.json()), ['bird'])
  t.same(Object.keys(kiwi).sort(), BIRD_KEYS, 'exactly the seed\'s keys')
  t.match(kiwi.id, UUID)
  t.match(kiwi.createdAt, ISO)
  t.same({ ...kiwi, id: null, createdAt: null }, {
    id: null,
    workspaceId: alice.workspaceId,
    name: 'Kiwi',
    tagId: 'FP-001',
    species: 'Cockatiel',
    dateOfBirth: '2023-05-10',
    gotchaDay: '2023-08-21',
    chartColor: '#1A2b3C',
    photoDataUrl: null,
    notifyOnDob: false,
    notifyOnGotchaDay: true,
    createdAt: null,
    latestWeightGrams: null,
    latestRecordedOn: null
  })
  t.ok(Math.abs(Date.parse(kiwi.createdAt) - Date.now()) < 60_000, 'createdAt is now')
  const stored = await birdRow(kiwi.id)
  t.match(stored, { workspace_id: alice.workspaceId, name: 'Kiwi', date_of_birth: '2023-05-10', photo_data_url: null, created_by: alice.userId })

  // Omitted optional fields: none, and the default colour.
  const minimal = await newBird(alice.headers, { name: 'Mango' })
  t.match(minimal, { name: 'Mango', tagId: null, species: null, dateOfBirth: null, gotchaDay: null, chartColor: '#cb3a35', photoDataUrl: null, notifyOnDob: false, notifyOnGotchaDay: false })
  t.equal((await birdRow(minimal.id))?.chart_color, '#cb3a35', 'the default colour is stored')

  // Empty strings are none.
  const empty = await newBird(alice.headers, { name: 'Pip', dateOfBirth: '', gotchaDay: '', photoDataUrl: '', tagId: '', species: '' })
  t.match(empty, { dateOfBirth: null, gotchaDay: null, photoDataUrl: null, tagId: null, species: null })
  t.match(await birdRow(empty.id), { date_of_birth: null, gotcha_day: null, photo_data_url: null, tag_id: null })
  const nulls = await newBird(alice.headers, { name: 'Nil', dateOfBirth: null, gotchaDay: null, photoDataUrl: null })
  t.match(nulls, { dateOfBirth: null, gotchaDay: null, photoDataUrl: null })

  // A leap day of a leap year is a real date.
  const leap = await postBird(alice.headers, { name: 'Leap', dateOfBirth: '2024-02-29', gotchaDay: '2000-02-29' })
  t.equal(leap.statusCode, 201)
  t.match(leap.json().bird, { dateOfBirth: '2024-02-29', gotchaDay: '2000-02-29' })

  // A small PNG data URL is stored and returned as sent.
  const photo = await newBird(alice.headers, { name: 'Photo', photoDataUrl: PNG })
  t.equal(photo.photoDataUrl, PNG)
  t.equal((await birdRow(photo.id))?.photo_data_url, PNG)
  const listedPhoto = (await listBirds(alice.headers)).json().birds.find((bird: BirdJson) => bird.id === photo.id)
  t.equal(listedPhoto?.photoDataUrl, PNG, 'the list returns it too')
  // The bound itself (700,000 characters) is accepted.
  const largest = PHOTO_PREFIX + 'A'.repeat(700_000 - PHOTO_PREFIX.length)
  const atBound = await postBird(alice.headers, { name: 'Big photo', photoDataUrl: largest })
  t.equal(atBound.statusCode, 201, 'a photo of exactly 700,000 characters is accepted')
  t.equal((await birdRow(atBound.json().bird.id))?.photo_data_url?.length, 700_000)

  // Unknown fields are not stored: the bird lands in the caller's workspace with its own id.
  const chosenId = '00000000-0000-4000-8000-000000000001'
  const sneaky = await postBird(alice.headers, { name: 'Sneaky', workspaceId: bob.workspaceId, workspace_id: bob.workspaceId, id: chosenId, createdAt: '2000-01-01T00:00:00.000Z', latestWeightGrams: 5 })
  t.equal(sneaky.statusCode, 201)
  const sneakyBird = sneaky.json().bird
  t.equal(sneakyBird.workspaceId, alice.workspaceId, 'in the caller\'s workspace, not the body\'s')
  t.not(sneakyBird.id, chosenId, 'the id is not the client\'s')
  t.not(sneakyBird.createdAt, '2000-01-01T00:00:00.000Z')
  t.equal(sneakyBird.latestWeightGrams, null)
  t.equal((await birdRow(sneakyBird.id))?.workspace_id, alice.workspaceId)
  t.notOk(await birdRow(chosenId), 'no bird with the chosen id')
  t.same((await listBirds(bob.headers)).json(), { birds: [] }, 'nothing in bob\'s workspace')

  const list = await listBirds(alice.headers)
  t.equal(list.statusCode, 200)
  t.same(list.json().birds.map((bird: BirdJson) => bird.name), ['Kiwi', 'Mango', 'Pip', 'Nil', 'Leap', 'Photo', 'Big photo', 'Sneaky'], 'creation order')
  t.same(list.json().birds[0], kiwi, 'the list answers the same bird as the creation')
})

t.test('POST and PUT /api/birds: every validation rule answers 400 naming the field and stores nothing', async t => {
  const alice = await owner('alice@validate.birds.test')
  const kiwi = await newBird(alice.headers, { name: 'Kiwi', dateOfBirth: '2023-05-10', chartColor: '#112233', photoDataUrl: PNG })
  const before = await countRows('birds')
  const kiwiBefore = await birdRow(kiwi.id)

  const invalid: Array<[Json, string, string]> = [
    [{ name: '' }, 'name', 'empty name'],
    [{ name: '   ' }, 'name', 'blank name'],
    [{ name: 'x'.repeat(201) }, 'name', 'name of 201 characters'],
    [{ name: 'Ok', tagId: 'x'.repeat(101) }, 'tagId', 'tagId of 101 characters'],
    [{ name: 'Ok', species: 'x'.repeat(201) }, 'species', 'species of 201 characters'],
    ...BAD_DATES.flatMap(([value, why]): Array<[Json, string, string]> => [
      [{ name: 'Ok', dateOfBirth: value }, 'dateOfBirth', `dateOfBirth ${value} (${why})`],
      [{ name: 'Ok', gotchaDay: value }, 'gotchaDay', `gotchaDay ${value} (${why})`]
    ]),
    [{ name: 'Ok', chartColor: 'red' }, 'chartColor', 'chartColor red'],
    [{ name: 'Ok', chartColor: '#fff' }, 'chartColor', 'chartColor #fff'],
    [{ name: 'Ok', chartColor: '#12345g' }, 'chartColor', 'chartColor #12345g'],
    [{ name: 'Ok', chartColor: '#1234567' }, 'chartColor', 'chartColor #1234567'],
    [{ name: 'Ok', chartColor: '' }, 'chartColor', 'chartColor empty'],
    [{ name: 'Ok', photoDataUrl: 'data:text/plain;base64,aGk=' }, 'photoDataUrl', 'photo of text/plain'],
    [{ name: 'Ok', photoDataUrl: 'http://x/y.png' }, 'photoDataUrl', 'photo as http URL'],
    [{ name: 'Ok', photoDataUrl: 'data:image/png;base64,@@@' }, 'photoDataUrl', 'photo not base64'],
    [{ name: 'Ok', photoDataUrl: 'data:image/png,iVBORw0KGgo=' }, 'photoDataUrl', 'photo not base64-encoded'],
    [{ name: 'Ok', photoDataUrl: PHOTO_PREFIX + 'A'.repeat(700_001 - PHOTO_PREFIX.length) }, 'photoDataUrl', 'photo of 700,001 characters'],
    [{ name: 'Ok', notifyOnDob: 'sometimes' }, 'notifyOnDob', 'notifyOnDob not a boolean'],
    // Bodies are taken as sent: nothing is converted to the type the schema wants.
    [{ name: 123 }, 'name', 'name a number'],
    [{ name: 'Ok', tagId: 7 }, 'tagId', 'tagId a number'],
    [{ name: 'Ok', notifyOnDob: 'true' }, 'notifyOnDob', 'notifyOnDob the string "true"'],
    [{ name: 'Ok', notifyOnGotchaDay: 1 }, 'notifyOnGotchaDay', 'notifyOnGotchaDay the number 1']
  ]
  for (const [payload, field, label] of invalid) {
    assertInvalid(t, await postBird(alice.headers, payload), 'bird', field, `POST ${label}`)
    // PUT takes the same fields: the bad one with a valid new name beside it.
    const update = field === 'name' ? payload : { ...payload, name: 'Renamed' }
    assertInvalid(t, await putBird(alice.headers, kiwi.id, update), 'bird', field, `PUT ${label}`)
  }
  assertInvalid(t, await postBird(alice.headers, {}), 'bird', 'name', 'POST without name')
  const missing = (await postBird(alice.headers, { species: 'Cockatiel' })).json()
  t.equal(missing.details.name, 'is required')

  // Several bad fields are all named.
  const many = await postBird(alice.headers, { name: '', chartColor: 'red' })
  t.same(Object.keys(many.json().details).sort(), ['chartColor', 'name'])
  const calendar = await postBird(alice.headers, { name: 'Ok', dateOfBirth: '2023-02-30', gotchaDay: '2021-02-29', photoDataUrl: 'http://x/y.png' })
  t.same(Object.keys(calendar.json().details).sort(), ['dateOfBirth', 'gotchaDay', 'photoDataUrl'])

  // Over the body limit (1 MB) the answer is 413, before any validation.
  const huge = await postBird(alice.headers, { name: 'Huge', photoDataUrl: PHOTO_PREFIX + 'A'.repeat(1_100_000) })
  t.equal(huge.statusCode, 413)
  t.same(huge.json(), { error: 'Request body is too large', code: 'PAYLOAD_TOO_LARGE' })

  t.equal(await countRows('birds'), before, 'no refused POST stored a bird')
  t.same(await birdRow(kiwi.id), kiwiBefore, 'no refused PUT changed the bird')
})

t.test('PUT /api/birds/:birdId: fields left out keep their value, empty strings clear, latest weight included', async t => {
  const alice = await owner('alice@update.birds.test')
  const kiwi = await newBird(alice.headers, { ...SEED_KIWI, chartColor: '#112233', photoDataUrl: PNG, notifyOnDob: true })
  const other = await newBird(alice.headers, { name: 'Mango', tagId: 'FP-002' })
  // Inserted later but recorded earlier: the latest weight is the one with the latest recordedOn.
  await newWeight(alice.headers, kiwi.id, 92.5, '2026-01-10')
  await newWeight(alice.headers, kiwi.id, 88, '2025-12-01')

  const renamed = await putBird(alice.headers, kiwi.id, { name: '  Kiwi II ' })
  t.equal(renamed.statusCode, 200)
  t.same(Object.keys(renamed.json()), ['bird'])
  const bird = renamed.json().bird
  t.same(Object.keys(bird).sort(), BIRD_KEYS)
  t.same(bird, {
    ...kiwi,
    name: 'Kiwi II',
    latestWeightGrams: 92.5,
    latestRecordedOn: '2026-01-10'
  }, 'only the name changed; the latest weight is answered')

  const cleared = await putBird(alice.headers, kiwi.id, { dateOfBirth: '', photoDataUrl: '' })
  t.equal(cleared.statusCode, 200)
  t.match(cleared.json().bird, { name: 'Kiwi II', dateOfBirth: null, photoDataUrl: null, gotchaDay: '2023-08-21', tagId: 'FP-001', species: 'Cockatiel', chartColor: '#112233', notifyOnDob: true, notifyOnGotchaDay: true, latestWeightGrams: 92.5 })
  t.match(await birdRow(kiwi.id), { date_of_birth: null, photo_data_url: null, gotcha_day: '2023-08-21' })

  const changed = await putBird(alice.headers, kiwi.id, { gotchaDay: '2024-02-29', chartColor: '#abcdef', notifyOnDob: false, species: 'Budgie', photoDataUrl: PNG })
  t.match(changed.json().bird, { gotchaDay: '2024-02-29', chartColor: '#abcdef', notifyOnDob: false, notifyOnGotchaDay: true, species: 'Budgie', photoDataUrl: PNG, dateOfBirth: null })

  const nothing = await putBird(alice.headers, kiwi.id, {})
  t.equal(nothing.statusCode, 200)
  t.same(nothing.json().bird, changed.json().bird, 'an empty body changes nothing')

  // Unknown fields are dropped: the bird stays in its workspace and keeps its id.
  const bob = await owner('bob@update.birds.test')
  const moved = await putBird(alice.headers, kiwi.id, { workspaceId: bob.workspaceId, id: other.id, name: 'Still Kiwi' })
  t.equal(moved.statusCode, 200)
  t.match(moved.json().bird, { id: kiwi.id, workspaceId: alice.workspaceId, name: 'Still Kiwi' })
  t.equal((await birdRow(kiwi.id))?.workspace_id, alice.workspaceId)
  t.equal((await birdRow(other.id))?.name, 'Mango', 'the other bird is untouched')

  // A bird without weights answers nulls.
  const mango = await putBird(alice.headers, other.id, { species: 'Conure' })
  t.match(mango.json().bird, { latestWeightGrams: null, latestRecordedOn: null, tagId: 'FP-002' })
  // Keeping its own tag is no conflict; clearing the tag frees it.
  t.equal((await putBird(alice.headers, other.id, { tagId: 'FP-002' })).statusCode, 200)
  t.equal((await putBird(alice.headers, other.id, { tagId: '' })).json().bird.tagId, null)
  t.equal((await putBird(alice.headers, kiwi.id, { tagId: 'FP-002' })).json().bird.tagId, 'FP-002', 'a freed tag can be taken')
})

t.test('409 TAG_TAKEN: duplicate tagId in one workspace on POST and PUT, also when racing; other workspaces are free', async t => {
  const alice = await owner('alice@tags.birds.test')
  const bob = await owner('bob@tags.birds.test')
  const kiwi = await newBird(alice.headers, { name: 'Kiwi', tagId: 'FP-001' })
  const mango = await newBird(alice.headers, { name: 'Mango', tagId: 'FP-002' })
  const before = await countRows('birds')

  const duplicate = await postBird(alice.headers, { name: 'Copy', tagId: 'FP-001' })
  t.equal(duplicate.statusCode, 409)
  t.same(duplicate.json(), TAG_TAKEN)
  const trimmed = await postBird(alice.headers, { name: 'Copy', tagId: '  FP-001 ' })
  t.equal(trimmed.statusCode, 409, 'the tag is compared trimmed')
  t.equal(await countRows('birds'), before, 'nothing stored')

  const taken = await putBird(alice.headers, mango.id, { tagId: 'FP-001', name: 'Mango II' })
  t.equal(taken.statusCode, 409)
  t.same(taken.json(), TAG_TAKEN)
  t.match(await birdRow(mango.id), { tag_id: 'FP-002', name: 'Mango' }, 'the refused PUT changed nothing')

  const elsewhere = await postBird(bob.headers, { name: 'Kiwi', tagId: 'FP-001' })
  t.equal(elsewhere.statusCode, 201, 'the same tag in another workspace is fine')
  const bobMango = await newBird(bob.headers, { name: 'Mango', tagId: 'FP-009' })
  t.equal((await putBird(bob.headers, bobMango.id, { tagId: 'FP-002' })).statusCode, 200, 'and on PUT')

  // Birds without a tag never conflict.
  t.equal((await postBird(alice.headers, { name: 'No tag 1' })).statusCode, 201)
  t.equal((await postBird(alice.headers, { name: 'No tag 2', tagId: '' })).statusCode, 201)

  for (let round = 0; round < 5; round++) {
    const tagId = `RACE-${round}`
    const answers = await Promise.all([postBird(alice.headers, { name: 'A', tagId }), postBird(alice.headers, { name: 'B', tagId })])
    t.same(answers.map(answer => answer.statusCode).sort(), [201, 409], `round ${round}: one 201, one 409`)
    t.same(answers.find(answer => answer.statusCode === 409)?.json(), TAG_TAKEN)
    const rows = await app.db.selectFrom('birds').select('id').where('workspace_id', '=', alice.workspaceId).where('tag_id', '=', tagId).execute()
    t.equal(rows.length, 1, `round ${round}: one bird with the tag`)
  }
  const racingPuts = await Promise.all([putBird(alice.headers, kiwi.id, { tagId: 'PUT-RACE' }), putBird(alice.headers, mango.id, { tagId: 'PUT-RACE' })])
  t.same(racingPuts.map(answer => answer.statusCode).sort(), [200, 409], 'racing PUTs: one 200, one 409')
})

t.test('weights: validation, shape, one per bird and day (also racing), oldest first', async t => {
  const alice = await owner('alice@weights.birds.test')
  const kiwi = await newBird(alice.headers, { name: 'Kiwi' })
  const today = day()

  const invalid: Array<[Json, string, string]> = [
    [{ weightGrams: 0, recordedOn: today }, 'weightGrams', 'zero grams'],
    [{ weightGrams: -5, recordedOn: today }, 'weightGrams', 'negative grams'],
    [{ weightGrams: 10000.5, recordedOn: today }, 'weightGrams', 'over 10000 grams'],
    [{ weightGrams: 'heavy', recordedOn: today }, 'weightGrams', 'grams not a number'],
    [{ weightGrams: '40', recordedOn: today }, 'weightGrams', 'grams a numeric string (bodies are not coerced)'],
    [{ recordedOn: today }, 'weightGrams', 'grams missing'],
    [{ weightGrams: 90 }, 'recordedOn', 'recordedOn missing'],
    [{ weightGrams: 90, recordedOn: '' }, 'recordedOn', 'recordedOn empty'],
    ...BAD_DATES.map(([value, why]): [Json, string, string] => [{ weightGrams: 90, recordedOn: value }, 'recordedOn', `recordedOn ${value} (${why})`]),
    [{ weightGrams: 90, recordedOn: today, notes: 'x'.repeat(2001) }, 'notes', 'notes of 2001 characters']
  ]
  for (const [payload, field, label] of invalid) {
    assertInvalid(t, await postWeight(alice.headers, kiwi.id, payload), 'weight', field, label)
  }
  t.same(await weightsOf(kiwi.id), [], 'no refused weight stored')

  const first = await postWeight(alice.headers, kiwi.id, { weightGrams: 92, recordedOn: today, notes: 'Morning check' })
  t.equal(first.statusCode, 201)
  t.same(Object.keys(first.json()), ['weight'])
  const weight = first.json().weight
  t.same(Object.keys(weight).sort(), WEIGHT_KEYS)
  t.match(weight.id, UUID)
  t.same({ ...weight, id: null }, { id: null, birdId: kiwi.id, weightGrams: 92, recordedOn: today, notes: 'Morning check' })
  t.match(await weightsOf(kiwi.id), [{ weight_grams: 92, recorded_on: today, notes: 'Morning check', created_by: alice.userId }])

  const heaviest = await postWeight(alice.headers, kiwi.id, { weightGrams: 10000, recordedOn: day(-1) })
  t.equal(heaviest.statusCode, 201, '10000 grams is the maximum, accepted')
  t.equal(heaviest.json().weight.notes, null)
  const lightest = await postWeight(alice.headers, kiwi.id, { weightGrams: 0.5, recordedOn: day(-2), notes: 'x'.repeat(2000) })
  t.equal(lightest.statusCode, 201, '0.5 grams and 2000 characters of notes are accepted')
  t.equal(lightest.json().weight.weightGrams, 0.5)
  const emptyNotes = await postWeight(alice.headers, kiwi.id, { weightGrams: 91, recordedOn: day(-3), notes: '' })
  t.equal(emptyNotes.json().weight.notes, null, 'empty notes are none')

  // One per bird and day.
  const again = await postWeight(alice.headers, kiwi.id, { weightGrams: 95, recordedOn: today })
  t.equal(again.statusCode, 409)
  t.same(again.json(), WEIGHT_EXISTS)
  t.equal((await weightsOf(kiwi.id)).length, 4, 'the second weight of the day is not stored')
  t.equal((await weightsOf(kiwi.id)).find(row => row.recorded_on === today)?.weight_grams, 92, 'the first one stays')
  const mango = await newBird(alice.headers, { name: 'Mango' })
  t.equal((await postWeight(alice.headers, mango.id, { weightGrams: 95, recordedOn: today })).statusCode, 201, 'another bird may weigh in the same day')

  for (let round = 0; round < 5; round++) {
    const recordedOn = day(-10 - round)
    const answers = await Promise.all([postWeight(alice.headers, mango.id, { weightGrams: 80, recordedOn }), postWeight(alice.headers, mango.id, { weightGrams: 81, recordedOn })])
    t.same(answers.map(answer => answer.statusCode).sort(), [201, 409], `racing round ${round}: one 201, one 409`)
    t.same(answers.find(answer => answer.statusCode === 409)?.json(), WEIGHT_EXISTS)
    t.equal((await weightsOf(mango.id)).filter(row => row.recorded_on === recordedOn).length, 1, `racing round ${round}: one weight stored`)
  }

  const listed = await app.inject({ url: `/api/birds/${kiwi.id}/weights`, headers: alice.headers })
  t.equal(listed.statusCode, 200)
  t.same(Object.keys(listed.json()), ['weights'])
  t.same(listed.json().weights.map((entry: { recordedOn: string }) => entry.recordedOn), [day(-3), day(-2), day(-1), today], 'oldest first')
  t.same(listed.json().weights[3], weight, 'the list answers the created weight')
})

t.test('GET weights: `days` is clamped to 1..365, default 30; not a number is 400', async t => {
  const alice = await owner('alice@days.birds.test')
  const kiwi = await newBird(alice.headers, { name: 'Kiwi' })
  // Recorded out of order: the answer is sorted by date.
  const offsets = [-40, 0, -400, -10, -364, 2]
  for (const [index, offset] of offsets.entries()) await newWeight(alice.headers, kiwi.id, 80 + index, day(offset))

  const dates = async (query: string): Promise<string[]> => {
    const answer = await app.inject({ url: `/api/birds/${kiwi.id}/weights${query}`, headers: alice.headers })
    t.equal(answer.statusCode, 200, `weights${query}`)
    return answer.json().weights.map((entry: { recordedOn: string }) => entry.recordedOn)
  }
  // A weight recorded in the future (a client's clock ahead) is within any window.
  const upTo = (...past: number[]): string[] => [...past.map(offset => day(offset)), day(0), day(2)]
  t.same(await dates(''), upTo(-10), 'default: the last 30 days')
  t.same(await dates('?days=30'), upTo(-10))
  t.same(await dates('?days=1'), upTo(), 'days=1: today')
  t.same(await dates('?days=0'), upTo(), 'days=0 is clamped to 1')
  t.same(await dates('?days=-7'), upTo(), 'negative days are clamped to 1')
  t.same(await dates('?days=10'), upTo(), 'days=10: the last ten days, today included')
  t.same(await dates('?days=11'), upTo(-10))
  t.same(await dates('?days=45'), upTo(-40, -10))
  t.same(await dates('?days=365'), upTo(-364, -40, -10))
  t.same(await dates('?days=1000'), upTo(-364, -40, -10), 'days=1000 is clamped to 365')

  for (const bad of ['abc', '1.5']) {
    const answer = await app.inject({ url: `/api/birds/${kiwi.id}/weights?days=${bad}`, headers: alice.headers })
    t.equal(answer.statusCode, 400, `days=${bad}`)
    t.match(answer.json(), { error: 'Invalid query payload', code: 'VALIDATION_FAILED', details: { days: String } })
  }
})

t.test('vet visits: validation, shape, newest first', async t => {
  const alice = await owner('alice@visits.birds.test')
  const kiwi = await newBird(alice.headers, { name: 'Kiwi' })

  const invalid: Array<[Json, string, string]> = [
    [{}, 'visitedOn', 'visitedOn missing'],
    [{ clinicName: 'Avian Care Center' }, 'visitedOn', 'visitedOn missing with other fields'],
    [{ visitedOn: '' }, 'visitedOn', 'visitedOn empty'],
    ...BAD_DATES.map(([value, why]): [Json, string, string] => [{ visitedOn: value }, 'visitedOn', `visitedOn ${value} (${why})`]),
    [{ visitedOn: '2026-04-14', clinicName: 'x'.repeat(201) }, 'clinicName', 'clinicName of 201 characters'],
    [{ visitedOn: '2026-04-14', reason: 'x'.repeat(501) }, 'reason', 'reason of 501 characters'],
    [{ visitedOn: '2026-04-14', notes: 'x'.repeat(2001) }, 'notes', 'notes of 2001 characters'],
    [{ visitedOn: '2026-04-14', clinicName: 42 }, 'clinicName', 'clinicName a number']
  ]
  for (const [payload, field, label] of invalid) {
    assertInvalid(t, await postVisit(alice.headers, kiwi.id, payload), 'vet visit', field, label)
  }
  t.same(await visitsOf(kiwi.id), [], 'no refused visit stored')

  const created = await postVisit(alice.headers, kiwi.id, { visitedOn: '2026-04-14', clinicName: 'Avian Care Center', reason: 'Wellness exam', notes: 'Healthy' })
  t.equal(created.statusCode, 201)
  t.same(Object.keys(created.json()), ['vetVisit'])
  const visit = created.json().vetVisit
  t.same(Object.keys(visit).sort(), VISIT_KEYS)
  t.match(visit.id, UUID)
  t.same({ ...visit, id: null }, { id: null, birdId: kiwi.id, visitedOn: '2026-04-14', clinicName: 'Avian Care Center', reason: 'Wellness exam', notes: 'Healthy' })
  t.match(await visitsOf(kiwi.id), [{ visited_on: '2026-04-14', clinic_name: 'Avian Care Center', created_by: alice.userId }])

  const bare = await postVisit(alice.headers, kiwi.id, { visitedOn: '2024-02-29' })
  t.equal(bare.statusCode, 201, 'only visitedOn is required; a leap day is real')
  t.match(bare.json().vetVisit, { clinicName: null, reason: null, notes: null })
  t.equal((await postVisit(alice.headers, kiwi.id, { visitedOn: '2026-04-14', reason: 'Follow-up' })).statusCode, 201, 'two visits on one day are fine')
  t.equal((await postVisit(alice.headers, kiwi.id, { visitedOn: '2025-06-01', clinicName: 'x'.repeat(200), reason: 'x'.repeat(500), notes: 'x'.repeat(2000) })).statusCode, 201, 'the bounds themselves are accepted')

  const listed = await app.inject({ url: `/api/birds/${kiwi.id}/vet-visits`, headers: alice.headers })
  t.equal(listed.statusCode, 200)
  t.same(Object.keys(listed.json()), ['vetVisits'])
  const visits = listed.json().vetVisits as Array<{ visitedOn: string, id: string }>
  t.same(visits.map(entry => entry.visitedOn), ['2026-04-14', '2026-04-14', '2025-06-01', '2024-02-29'], 'newest visitedOn first')
  t.ok(visits.some(entry => entry.id === visit.id))
  const mango = await newBird(alice.headers, { name: 'Mango' })
  t.same((await app.inject({ url: `/api/birds/${mango.id}/vet-visits`, headers: alice.headers })).json(), { vetVisits: [] }, 'visits are per bird')
})

t.test('a bird outside the active workspace, or a malformed id, is 404 on every route and method', async t => {
  const alice = await owner('alice@scope.birds.test')
  const bob = await owner('bob@scope.birds.test')
  const kiwi = await newBird(alice.headers, { name: 'Kiwi', tagId: 'FP-001' })
  await newWeight(alice.headers, kiwi.id, 92, day())
  await postVisit(alice.headers, kiwi.id, { visitedOn: day() })
  const bobsToken = await integrationToken(bob.headers, 'read_write')
  const kiwiBefore = await birdRow(kiwi.id)

  const routes = (id: string): Array<[string, string, Json | undefined]> => [
    ['PUT', `/api/birds/${id}`, { name: 'Stolen' }],
    ['DELETE', `/api/birds/${id}`, undefined],
    ['GET', `/api/birds/${id}/weights`, undefined],
    ['POST', `/api/birds/${id}/weights`, { weightGrams: 50, recordedOn: day(-1) }],
    ['GET', `/api/birds/${id}/vet-visits`, undefined],
    ['POST', `/api/birds/${id}/vet-visits`, { visitedOn: day(-1) }]
  ]
  const callers: Array<[string, Headers]> = [['another workspace\'s owner', bob.headers], ['another workspace\'s integration token', bobsToken]]
  for (const [who, headers] of callers) {
    for (const [method, url, payload] of routes(kiwi.id)) {
      const answer = await app.inject({ method: method as HTTPMethods, url, headers, ...(payload === undefined ? {} : { payload }) })
      t.equal(answer.statusCode, 404, `${method} ${url.replace(kiwi.id, ':id')} from ${who}`)
      t.same(answer.json(), NOT_FOUND)
    }
    t.same((await listBirds(headers)).json().birds, [], `${who} does not list it`)
  }
  for (const id of ['not-a-uuid', '123', `${kiwi.id}x`, '00000000-0000-4000-8000-000000000000']) {
    for (const [method, url, payload] of routes(id)) {
      const answer = await app.inject({ method: method as HTTPMethods, url, headers: alice.headers, ...(payload === undefined ? {} : { payload }) })
      t.equal(answer.statusCode, 404, `${method} ${url} (no such bird)`)
      t.same(answer.json(), NOT_FOUND)
    }
  }
  t.same(await birdRow(kiwi.id), kiwiBefore, 'the bird is untouched')
  t.equal((await weightsOf(kiwi.id)).length, 1, 'no weight added')
  t.equal((await visitsOf(kiwi.id)).length, 1, 'no visit added')
  t.equal((await app.db.selectFrom('birds').select('id').where('workspace_id', '=', bob.workspaceId).execute()).length, 0, 'nothing stored in bob\'s workspace')

  // A token of bob's never acts in alice's workspace, even when it names it.
  const named = await app.inject({ url: '/api/birds', headers: { ...bobsToken, 'x-workspace-id': String(alice.workspaceId) } })
  t.equal(named.statusCode, 403)
  const bobNamed = await app.inject({ url: `/api/birds/${kiwi.id}/weights`, headers: as(bob.user, alice.workspaceId) })
  t.equal(bobNamed.statusCode, 403, 'naming a workspace one is not a member of is refused')
  t.equal((await app.inject({ url: '/api/birds' })).statusCode, 401, 'no token: 401')
})

t.test('roles: viewers read, staff and managers write, read-only tokens only read', async t => {
  const alice = await owner('alice@roles.birds.test')
  const ws = alice.workspaceId
  const viewer = await member(alice.headers, ws, 'vic@roles.birds.test', 'viewer')
  const staff = await member(alice.headers, ws, 'sam@roles.birds.test', 'staff')
  const manager = await member(alice.headers, ws, 'mia@roles.birds.test', 'manager')
  const readOnly = await integrationToken(alice.headers, 'read_only')
  const readWrite = await integrationToken(alice.headers, 'read_write')
  const kiwi = await newBird(alice.headers, { name: 'Kiwi' })
  await newWeight(alice.headers, kiwi.id, 92, day())
  await postVisit(alice.headers, kiwi.id, { visitedOn: day() })

  const writes = (id: string): Array<[string, string, Json | undefined]> => [
    ['POST', '/api/birds', { name: 'Intruder' }],
    ['PUT', `/api/birds/${id}`, { name: 'Renamed' }],
    ['POST', `/api/birds/${id}/weights`, { weightGrams: 50, recordedOn: day(-1) }],
    ['POST', `/api/birds/${id}/vet-visits`, { visitedOn: day(-1) }],
    ['DELETE', `/api/birds/${id}`, undefined]
  ]
  const reads = (id: string): string[] => ['/api/birds', `/api/birds/${id}/weights`, `/api/birds/${id}/vet-visits`]
  const counts = async () => [await countRows('birds'), await countRows('bird_weights'), await countRows('vet_visits')]
  const before = await counts()

  const refused: Array<[string, Headers, Json]> = [['viewer', viewer, FORBIDDEN], ['read-only token', readOnly, READ_ONLY]]
  for (const [who, headers, expected] of refused) {
    for (const [method, url, payload] of writes(kiwi.id)) {
      const answer = await app.inject({ method: method as HTTPMethods, url, headers, ...(payload === undefined ? {} : { payload }) })
      t.equal(answer.statusCode, 403, `${who}: ${method} ${url.replace(kiwi.id, ':id')}`)
      t.same(answer.json(), expected)
    }
    // Refused before the body is read: even an invalid body is 403, not 400.
    t.equal((await postBird(headers, { name: '' })).statusCode, 403, `${who}: an invalid body is still 403`)
    for (const url of reads(kiwi.id)) {
      const answer = await app.inject({ url, headers })
      t.equal(answer.statusCode, 200, `${who}: GET ${url.replace(kiwi.id, ':id')}`)
    }
    const listed = (await listBirds(headers)).json().birds
    t.same(listed.map((bird: BirdJson) => bird.id), [kiwi.id], `${who} sees the workspace's birds`)
    t.equal(listed[0].latestWeightGrams, 92)
  }
  t.same(await counts(), before, 'nothing stored by refused writes')
  t.equal((await birdRow(kiwi.id))?.name, 'Kiwi')

  const writers: Array<[string, Headers]> = [['staff', staff], ['manager', manager], ['read-write token', readWrite]]
  for (const [index, [who, headers]] of writers.entries()) {
    const created = await postBird(headers, { name: `By ${who}`, tagId: `W-${index}` })
    t.equal(created.statusCode, 201, `${who} creates`)
    const bird = created.json().bird as BirdJson
    t.equal(bird.workspaceId, ws, `${who}: in the workspace acted in`)
    t.equal((await putBird(headers, bird.id, { species: 'Budgie' })).statusCode, 200, `${who} updates`)
    t.equal((await postWeight(headers, bird.id, { weightGrams: 60, recordedOn: day() })).statusCode, 201, `${who} weighs`)
    t.equal((await postVisit(headers, bird.id, { visitedOn: day() })).statusCode, 201, `${who} records a visit`)
    t.equal((await putBird(headers, kiwi.id, { notifyOnDob: index % 2 === 0 })).statusCode, 200, `${who} updates another's bird`)
    const deleted = await app.inject({ method: 'DELETE', url: `/api/birds/${bird.id}`, headers })
    t.equal(deleted.statusCode, 204, `${who} deletes`)
  }
  const staffRow = await app.db.selectFrom('birds').select('id').where('workspace_id', '=', ws).execute()
  t.equal(staffRow.length, 1, 'only kiwi is left')
})

t.test('GET /api/birds: creation order, latest weight by recordedOn, pages of `limit`, no pages without it', async t => {
  const alice = await owner('alice@list.birds.test')
  const bob = await owner('bob@list.birds.test')
  const names = ['A', 'B', 'C', 'D', 'E']
  const birds: BirdJson[] = []
  for (const name of names) birds.push(await newBird(alice.headers, { name }))
  await newBird(bob.headers, { name: 'Bob\'s' })
  // Bird A: the latest recordedOn was inserted first.
  await newWeight(alice.headers, birds[0]!.id, 100, '2026-01-10')
  await newWeight(alice.headers, birds[0]!.id, 90, '2025-12-01')
  await newWeight(alice.headers, birds[0]!.id, 95, '2025-12-31')
  await newWeight(alice.headers, birds[2]!.id, 40.25, '2024-02-29')

  const all = await listBirds(alice.headers)
  t.equal(all.statusCode, 200)
  t.same(Object.keys(all.json()), ['birds'], 'without limit: no nextCursor key')
  const listed = all.json().birds as BirdJson[]
  t.same(listed.map(bird => bird.name), names, 'creation order, only this workspace')
  for (const bird of listed) t.same(Object.keys(bird).sort(), BIRD_KEYS)
  t.match(listed[0], { latestWeightGrams: 100, latestRecordedOn: '2026-01-10' }, 'the weight with the latest recordedOn, not the latest inserted')
  t.match(listed[1], { latestWeightGrams: null, latestRecordedOn: null }, 'null without weights')
  t.match(listed[2], { latestWeightGrams: 40.25, latestRecordedOn: '2024-02-29' })

  const walk = async (limit: number): Promise<{ ids: string[], pages: number[] }> => {
    const ids: string[] = []
    const pages: number[] = []
    let cursor: string | null = null
    do {
      const query: string = `?limit=${limit}` + (cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`)
      const page = await listBirds(alice.headers, query)
      t.equal(page.statusCode, 200, `page ${query}`)
      const body = page.json()
      t.same(Object.keys(body).sort(), ['birds', 'nextCursor'])
      t.ok(body.birds.length <= limit)
      ids.push(...body.birds.map((bird: BirdJson) => bird.id))
      pages.push(body.birds.length)
      cursor = body.nextCursor
      t.ok(cursor === null || typeof cursor === 'string')
      if (pages.length > 10) break
    } while (cursor !== null)
    return { ids, pages }
  }
  const expected = listed.map(bird => bird.id)
  const byTwo = await walk(2)
  t.same(byTwo.pages, [2, 2, 1], 'limit=2: pages of 2, the last one null-terminated')
  t.same(byTwo.ids, expected, 'every bird exactly once, in order')
  const byOne = await walk(1)
  t.same(byOne.ids, expected)
  t.same(byOne.pages, [1, 1, 1, 1, 1])
  const byFive = await walk(5)
  t.same(byFive.pages, [5], 'a full last page: nextCursor null, no empty page')
  t.same((await walk(500)).ids, expected)
  const firstPage = (await listBirds(alice.headers, '?limit=2')).json()
  t.same(firstPage.birds, listed.slice(0, 2), 'pages answer the same birds as the list')

  for (const cursor of ['garbage', 'W10', Buffer.from('["2026-01-01T00:00:00.000Z","nope"]').toString('base64url'), Buffer.from('{"a":1}').toString('base64url')]) {
    const answer = await listBirds(alice.headers, `?limit=2&cursor=${encodeURIComponent(cursor)}`)
    t.equal(answer.statusCode, 400, `cursor ${cursor} is refused`)
    t.match(answer.json(), { error: 'Invalid query payload', code: 'VALIDATION_FAILED', details: { cursor: String } })
  }
  for (const limit of ['0', '-1', '501', 'abc']) {
    const answer = await listBirds(alice.headers, `?limit=${limit}`)
    t.equal(answer.statusCode, 400, `limit=${limit} is refused`)
    t.match(answer.json(), { code: 'VALIDATION_FAILED', details: { limit: String } })
  }
})

t.test('GET /api/birds with 20 birds, each with weights, runs one statement', async t => {
  const alice = await owner('alice@statements.birds.test')
  for (let index = 0; index < 20; index++) {
    const bird = await newBird(alice.headers, { name: `Bird ${index}`, tagId: `S-${index}` })
    await newWeight(alice.headers, bird.id, 50 + index, day(-1))
    await newWeight(alice.headers, bird.id, 100 + index, day())
  }
  // Warm: the user and the membership are cached after a first request.
  t.equal((await listBirds(alice.headers)).statusCode, 200)
  let answer: LightMyRequestResponse | undefined
  const before = app.database.statements()
  const statements = await statementsDuring(app, async () => { answer = await listBirds(alice.headers) })
  const after = app.database.statements()
  t.equal(answer?.statusCode, 200)
  const birds = answer?.json().birds as BirdJson[]
  t.equal(birds.length, 20)
  t.same(birds.map(bird => bird.name), Array.from({ length: 20 }, (_, index) => `Bird ${index}`), 'creation order')
  t.same(birds.map(bird => bird.latestWeightGrams), Array.from({ length: 20 }, (_, index) => 100 + index), 'each bird\'s latest weight')
  t.ok(birds.every(bird => bird.latestRecordedOn === day()))
  t.equal(statements.length, 1, `one statement (${statements.join(' | ').slice(0, 300)})`)
  t.same({ reads: after.reads - before.reads, writes: after.writes - before.writes, transactions: after.transactions - before.transactions }, { reads: 1, writes: 0, transactions: 0 })
})

t.test('DELETE /api/birds/:birdId: 204 with no body, weights and visits gone, 404 afterwards', async t => {
  const alice = await owner('alice@delete.birds.test')
  const kiwi = await newBird(alice.headers, { name: 'Kiwi', tagId: 'FP-001' })
  const mango = await newBird(alice.headers, { name: 'Mango' })
  for (const bird of [kiwi, mango]) {
    await newWeight(alice.headers, bird.id, 92, day())
    await newWeight(alice.headers, bird.id, 91, day(-1))
    await postVisit(alice.headers, bird.id, { visitedOn: day() })
  }

  const deleted = await app.inject({ method: 'DELETE', url: `/api/birds/${kiwi.id}`, headers: alice.headers })
  t.equal(deleted.statusCode, 204)
  t.equal(deleted.body, '', 'no body')
  t.notOk(await birdRow(kiwi.id), 'the bird row is gone')
  t.same(await weightsOf(kiwi.id), [], 'its weights are gone')
  t.same(await visitsOf(kiwi.id), [], 'its vet visits are gone')
  t.equal((await weightsOf(mango.id)).length, 2, 'another bird keeps its weights')
  t.equal((await visitsOf(mango.id)).length, 1, 'and its visits')

  for (const [method, url] of [['DELETE', `/api/birds/${kiwi.id}`], ['PUT', `/api/birds/${kiwi.id}`], ['GET', `/api/birds/${kiwi.id}/weights`], ['GET', `/api/birds/${kiwi.id}/vet-visits`], ['POST', `/api/birds/${kiwi.id}/weights`], ['POST', `/api/birds/${kiwi.id}/vet-visits`]] as const) {
    const payload = method === 'PUT' ? { name: 'Back' } : url.endsWith('weights') ? { weightGrams: 1, recordedOn: day() } : { visitedOn: day() }
    const answer = await app.inject({ method, url, headers: alice.headers, ...(method === 'POST' || method === 'PUT' ? { payload } : {}) })
    t.equal(answer.statusCode, 404, `${method} ${url.replace(kiwi.id, ':id')} after deletion`)
    t.same(answer.json(), NOT_FOUND)
  }
  t.same((await listBirds(alice.headers)).json().birds.map((bird: BirdJson) => bird.id), [mango.id], 'the list no longer has it')
  t.equal((await postBird(alice.headers, { name: 'Kiwi again', tagId: 'FP-001' })).statusCode, 201, 'its tag is free again')
})

t.test('a bird deleted while a request for it is in flight is 404, never 500', { skip: embedded && 'needs a PostgreSQL server: the deletion runs on a second connection while the request holds the first (PGlite serves one connection, so on the embedded default this race cannot happen)' }, async t => {
  const alice = await owner('alice@inflight.birds.test')
  type Query = (...args: unknown[]) => unknown
  const prototype = pg.Client.prototype as unknown as { query: Query }
  const original = prototype.query
  t.teardown(() => { prototype.query = original })

  /** Runs `request` with the bird deleted (by another connection) right after the first statement matching `after` answers. */
  async function deletedAfter (after: RegExp, request: (birdId: string) => Promise<LightMyRequestResponse>): Promise<LightMyRequestResponse> {
    const bird = await newBird(alice.headers, { name: 'Doomed' })
    let fired = false
    prototype.query = function (this: { database?: string }, ...args: unknown[]) {
      const result = original.apply(this, args)
      const [first] = args
      if (!fired && this.database === databaseName && typeof first === 'string' && after.test(first)) {
        fired = true
        return (result as Promise<unknown>).then(async value => {
          await app.db.deleteFrom('birds').where('id', '=', bird.id).execute()
          return value
        })
      }
      return result
    }
    try {
      const answer = await request(bird.id)
      t.ok(fired, `the deletion happened during the request (${after.source})`)
      t.notOk(await birdRow(bird.id), 'the bird is gone')
      return answer
    } finally {
      prototype.query = original
    }
  }

  // Between the bird check and the insert.
  const weight = await deletedAfter(/^select "id" from "birds"/, async id => await postWeight(alice.headers, id, { weightGrams: 90, recordedOn: day() }))
  t.equal(weight.statusCode, 404, 'POST weights')
  t.same(weight.json(), NOT_FOUND)
  const visit = await deletedAfter(/^select "id" from "birds"/, async id => await postVisit(alice.headers, id, { visitedOn: day() }))
  t.equal(visit.statusCode, 404, 'POST vet-visits')
  t.same(visit.json(), NOT_FOUND)
  // Between the update and the read of the updated bird.
  const update = await deletedAfter(/^update "birds"/, async id => await putBird(alice.headers, id, { name: 'Renamed' }))
  t.equal(update.statusCode, 404, `PUT (${update.body})`)
  t.same(update.json(), NOT_FOUND)
})
