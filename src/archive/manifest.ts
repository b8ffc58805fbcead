/**
 * ovroot's manifest, carried in pax `comment` records that every tar ignores:
 * a global header first (what was backed up, from which firmware), on a
 * copy-up a comment with the first 8 bytes of the sha256 its lower twin had,
 * and a global trailer: how many entries, and one sha256 over every byte of
 * the entries between the two global records (names, metadata, xattrs, link
 * targets, sparse maps and contents), so that a restore verifies all of it
 * and notices a truncated archive. Version 1 archives carried a sha256 per
 * regular file instead (contents only), and full 32-byte bases: still read.
 */
import { corrupt } from './pax.js'

export const FORMAT_VERSION = 2

export interface Firmware {
  /** Fields of the firmware's release files (DISTRIB_* of openwrt_release, ID/VERSION_ID/BUILD_ID of os-release). */
  release: Record<string, string>
  /** sha256 over the release files' names and contents. */
  digest: string
}

export interface BackupHeader {
  format: 'ovroot-backup'
  version: number
  ovroot: string
  created: string
  host: string
  firmware: Firmware
  namespace: 'trusted' | 'user'
  changesOnly: boolean
}

export interface BackupTrailer {
  entries: number
  /** Version 2: sha256 of the entries' bytes (see above). */
  sha256?: string
}

const HEADER_TAG = 'ovroot-backup '
const TRAILER_TAG = 'ovroot-end '

export const encodeHeader = (header: BackupHeader): string => HEADER_TAG + JSON.stringify(header)
export const encodeTrailer = (trailer: BackupTrailer): string => TRAILER_TAG + JSON.stringify(trailer)

export type GlobalRecord =
  { kind: 'header'; header: BackupHeader } | { kind: 'trailer'; trailer: BackupTrailer } | { kind: 'other' }

/** What a header must have before the rest of it is read as written. */
function isBackupHeader(value: unknown): value is BackupHeader {
  const header = value as { format?: unknown; firmware?: { digest?: unknown } } | null
  return header?.format === 'ovroot-backup' && typeof header.firmware?.digest === 'string'
}

export function decodeGlobal(comment: string): GlobalRecord {
  try {
    if (comment.startsWith(HEADER_TAG)) {
      const header: unknown = JSON.parse(comment.slice(HEADER_TAG.length))
      if (!isBackupHeader(header)) throw new Error('fields')
      if (header.version > FORMAT_VERSION)
        throw corrupt(
          `backup format version ${header.version} is newer than this ovroot reads (${FORMAT_VERSION}); update ovroot`,
        )
      return { kind: 'header', header }
    }
    if (comment.startsWith(TRAILER_TAG)) {
      const trailer = JSON.parse(comment.slice(TRAILER_TAG.length)) as BackupTrailer
      if (!Number.isInteger(trailer.entries)) throw new Error('fields')
      if (trailer.sha256 !== undefined && !/^[0-9a-f]{64}$/.test(trailer.sha256)) throw new Error('fields')
      return { kind: 'trailer', trailer }
    }
  } catch (error) {
    if (error instanceof Error && error.name === 'OvrootError') throw error
    throw corrupt(`the backup's manifest is unreadable (${comment.slice(0, 40)}...)`)
  }
  return { kind: 'other' }
}

export interface FileSums {
  /** Version 1: of the file's data as archived (for a file with holes, of its data regions' bytes, in order). */
  sha256?: string
  /**
   * The lower twin's sha256 at backup time: its first 8 bytes (16 hex
   * digits) since version 2. It tells a firmware change from none, not an
   * attacker's choice from chance: 2^-64 per file.
   */
  base?: string
}

/** Hex digits of a firmware base that a backup records. */
export const BASE_DIGITS = 16

export const encodeSums = (sums: FileSums): string =>
  ['ovroot', ...(sums.sha256 ? [`sha256=${sums.sha256}`] : []), ...(sums.base ? [`base=${sums.base}`] : [])].join(' ')

export function decodeSums(comment: string | undefined): FileSums | undefined {
  const match =
    comment === undefined
      ? null
      : /^ovroot(?: sha256=([0-9a-f]{64}))?(?: base=([0-9a-f]{64}|[0-9a-f]{16}))?$/.exec(comment)
  if (!match || (!match[1] && !match[2])) return undefined
  return { ...(match[1] ? { sha256: match[1] } : {}), ...(match[2] ? { base: match[2] } : {}) }
}
