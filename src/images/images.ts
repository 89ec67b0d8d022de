import { randomUUID } from 'node:crypto'
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { getSignedUrl } from '@aws-sdk/s3-request-presigner'
import type { Config } from '../config.js'

/*
 * Seed 000's images on the tenancy model: objects live in one bucket under
 * `workspaces/<workspaceId>/images/<uuid>.<ext>`, named by the server, and Gatehouse only signs
 * URLs (SigV4 query signing is local: nothing goes over the network, nothing is uploaded
 * through Gatehouse).
 */

/** The image types an upload URL is signed for, and the extension of their keys. */
export const IMAGE_TYPES = {
  'image/png': 'png',
  'image/jpeg': 'jpg',
  'image/gif': 'gif',
  'image/webp': 'webp',
  'image/avif': 'avif'
} as const
export type ImageType = keyof typeof IMAGE_TYPES
export const IMAGE_CONTENT_TYPES = Object.keys(IMAGE_TYPES) as ImageType[]

/** SigV4 allows presigned URLs of 1 second to 7 days (X-Amz-Expires). */
const MAX_EXPIRES_IN = 604_800

/**
 * The only keys there are: exactly what `newImageKey` makes. Anything else — another prefix,
 * `..`, percent-escapes (decoded or not), a leading `/`, backslashes, empty segments, control
 * characters, upper-case ids — simply does not match, so no decoding or normalizing is needed.
 */
const KEY = /^workspaces\/([1-9]\d{0,18})\/images\/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(?:png|jpg|gif|webp|avif)$/

export function newImageKey (workspaceId: number, contentType: ImageType): string {
  return `workspaces/${workspaceId}/images/${randomUUID()}.${IMAGE_TYPES[contentType]}`
}

/** True for a key that `newImageKey` could have made for this workspace. */
export function isImageKeyOf (key: string, workspaceId: number): boolean {
  const match = KEY.exec(key)
  return match !== null && match[1] === String(workspaceId)
}

export interface PresignedUpload {
  uploadUrl: string
  method: 'PUT'
  key: string
  expiresAt: string
  /** The headers the PUT must carry: both are signed, so the store refuses any other type or length. */
  headers: { 'Content-Type': ImageType, 'Content-Length': string }
}

export interface PresignedDownload { url: string, expiresAt: string }

export interface ImageStore {
  upload: (key: string, contentType: ImageType, size: number, now: number) => Promise<PresignedUpload>
  download: (key: string, now: number) => Promise<PresignedDownload>
  close: () => void
}

/** The URL lifetime in whole seconds (X-Amz-Expires); a TTL SigV4 cannot express is a start-up error. */
export function expiresInSeconds (ttlMs: number): number {
  const seconds = Math.round(ttlMs / 1000)
  if (seconds < 1 || seconds > MAX_EXPIRES_IN) {
    throw new Error(`IMAGE_URL_TTL must be between 1s and 7d (SigV4 presigned URLs), got ${ttlMs}ms`)
  }
  return seconds
}

/** The signer for a configured store; null when S3_ENDPOINT is unset (the routes then answer 503). */
export function createImageStore (config: Config): ImageStore | null {
  const { S3_ENDPOINT: endpoint, S3_BUCKET: bucket, S3_ACCESS_KEY_ID: accessKeyId, S3_SECRET_ACCESS_KEY: secretAccessKey } = config
  if (endpoint === undefined || bucket === undefined || accessKeyId === undefined || secretAccessKey === undefined) return null
  const expiresIn = expiresInSeconds(config.IMAGE_URL_TTL)
  const client = new S3Client({
    endpoint,
    region: config.S3_REGION,
    forcePathStyle: config.S3_FORCE_PATH_STYLE,
    credentials: { accessKeyId, secretAccessKey },
    // By default the SDK would put the CRC32 of an empty body (x-amz-checksum-crc32=AAAAAA==) into
    // every presigned PUT, and the store would refuse any real image; and ask GETs for checksums.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED'
  })

  /** X-Amz-Date has whole seconds: the URL is valid until that second plus expiresIn. */
  const signing = (now: number): { signingDate: Date, expiresAt: string } => {
    const signingDate = new Date(Math.floor(now / 1000) * 1000)
    return { signingDate, expiresAt: new Date(signingDate.getTime() + expiresIn * 1000).toISOString() }
  }

  return {
    async upload (key, contentType, size, now) {
      const { signingDate, expiresAt } = signing(now)
      const uploadUrl = await getSignedUrl(client, new PutObjectCommand({ Bucket: bucket, Key: key, ContentType: contentType, ContentLength: size }), {
        expiresIn,
        signingDate,
        // Content-Type is unsignable by default; signing both makes the store refuse another type or length.
        signableHeaders: new Set(['content-type', 'content-length'])
      })
      return { uploadUrl, method: 'PUT', key, expiresAt, headers: { 'Content-Type': contentType, 'Content-Length': String(size) } }
    },
    async download (key, now) {
      const { signingDate, expiresAt } = signing(now)
      const url = await getSignedUrl(client, new GetObjectCommand({ Bucket: bucket, Key: key }), { expiresIn, signingDate })
      return { url, expiresAt }
    },
    close () { client.destroy() }
  }
}
