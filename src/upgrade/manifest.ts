/**
 * The firmware manifest: what a lower holds, path by path, so that an upgrade
 * can tell a copy-up the user never changed from a user's edit, and which
 * firmware a lower is (its header digest is the firmware's identity).
 *
 * Text, `\n`-separated, one entry per line, sorted by path bytes:
 *
 *   ovroot-manifest 1 <sha256 hex of every following line, each with its \n>
 *   <path>\t<type>\t<mode>\t<uid>\t<gid>\t<size>\t<data>\t<xattrs>
 *
 * - path: relative to the root, no leading slash, the root itself `.`; in the
 *   escaped form every output uses (names.ts `showName`: valid UTF-8 as it
 *   is, `\\` for a backslash, `\xNN` for any other byte, so tabs and newlines
 *   never appear raw).
 * - type: `f` file, `d` directory, `l` symlink, `c`/`b` device, `p` fifo, `s` socket.
 * - mode: mode & 07777 in octal. uid, gid: decimal. size: bytes of a file's
 *   data, 0 for anything else.
 * - data: a file's sha256 (hex), a symlink's target (escaped as the path),
 *   a device's `major:minor`, `-` for anything else.
 * - xattrs: `x=<sha256 of name\0value\0 for every xattr, names sorted>`,
 *   or `-` when the entry has none.
 *
 * Hardlinked names are listed each with the inode's record. The manifest
 * never lists itself (`MANIFEST_PATH` in the firmware).
 */
import { createHash } from 'node:crypto'
import { ExitCode, OvrootError } from '../errors.js'
import { parseShownName, showBytes, type BytePath } from '../names.js'
import { readStableFile } from '../sys/entries.js'
import { hostTreeReader } from '../sys/fs.js'
import type { UpperEntry } from '../sys/types.js'
import { under } from '../upper/entry.js'
import { walkUpper } from '../upper/walk.js'

/** Where a firmware image carries its manifest, relative to the lower's root. */
export const MANIFEST_PATH = 'usr/lib/ovroot/firmware.manifest'

const MAGIC = 'ovroot-manifest 1'

export type RecordType = 'f' | 'd' | 'l' | 'c' | 'b' | 'p' | 's'

/** One entry as the manifest records it: what "the same entry" means to an upgrade. */
export interface ManifestRecord {
  type: RecordType
  /** mode & 07777 */
  mode: number
  uid: number
  gid: number
  /** A file's bytes of data; 0 for anything else. */
  size: number
  /** A file's sha256, a symlink's target (bytes), a device's `major:minor`, `-` otherwise. */
  data: string
  /** `x=<sha256>` over the xattrs, or `-` when there are none. */
  xattrs: string
}

export interface Manifest {
  /** The header's digest: which firmware this is (upgrade/identity.ts). */
  identity: string
  lookup(path: BytePath): ManifestRecord | undefined
  /** Every path, in manifest order. */
  paths(): Iterable<BytePath>
}

const TYPE_OF: Record<UpperEntry['type'], RecordType | undefined> = {
  file: 'f',
  dir: 'd',
  symlink: 'l',
  char: 'c',
  block: 'b',
  fifo: 'p',
  hardlink: undefined,
}

/** The digest of an entry's xattrs, `-` for none; `keep` leaves out names that are not the entry's own (overlay's). */
export function xattrDigest(xattrs: readonly [string, Buffer][], keep: (name: string) => boolean = () => true): string {
  const own = xattrs.filter(([name]) => keep(name)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  if (own.length === 0) return '-'
  const hash = createHash('sha256')
  for (const [name, value] of own) hash.update(`${name}\0`).update(value).update('\0')
  return `x=${hash.digest('hex')}`
}

/**
 * The record of an entry read by the walk (not a hardlink: that is its first
 * name's record). `sha256` is the file's content digest, read by the caller.
 */
export function recordOf(
  entry: UpperEntry,
  sha256: string | undefined,
  keepXattr?: (name: string) => boolean,
): ManifestRecord {
  const type = TYPE_OF[entry.type]
  if (type === undefined) throw new Error(`recordOf: ${entry.type} has no record of its own`)
  const data =
    type === 'f'
      ? (sha256 ?? '-')
      : type === 'l'
        ? (entry.linkTarget ?? '')
        : type === 'c' || type === 'b'
          ? `${entry.devMajor}:${entry.devMinor}`
          : '-'
  return {
    type,
    mode: entry.mode,
    uid: entry.uid,
    gid: entry.gid,
    size: type === 'f' ? entry.size : 0,
    data,
    xattrs: xattrDigest(entry.xattrs, keepXattr),
  }
}

export function formatRecord(path: BytePath, record: ManifestRecord): string {
  const data = record.type === 'l' ? showBytes(record.data) : record.data
  return [
    showBytes(path),
    record.type,
    record.mode.toString(8),
    record.uid,
    record.gid,
    record.size,
    data,
    record.xattrs,
  ].join('\t')
}

/**
 * The manifest of the tree at `root` (a rootfs directory, a mounted
 * squashfs), as text. `exclude` names paths (relative to root) left out: the
 * manifest file being written, wherever it is.
 */
export function writeManifest(root: BytePath, exclude: readonly BytePath[] = []): string {
  const skip = new Set([MANIFEST_PATH, ...exclude])
  const records = new Map<BytePath, ManifestRecord>()
  const walk = walkUpper(root, {
    // A lower has no metacopy stubs: every file's data is read.
    stubXattr: '',
    include: (path) => !skip.has(path),
    skipped: (path) => {
      const stat = hostTreeReader.stat(under(root, path))
      if (stat?.type === 'socket')
        records.set(path, {
          type: 's',
          mode: stat.permissions,
          uid: stat.uid,
          gid: stat.gid,
          size: 0,
          data: '-',
          xattrs: '-',
        })
    },
  })
  for (const entry of walk) {
    const first = entry.type === 'hardlink' ? records.get(entry.linkTarget ?? '') : undefined
    if (first) records.set(entry.path, first)
    else
      records.set(
        entry.path,
        recordOf(entry, entry.type === 'file' ? readStableFile(under(root, entry.path)).sha256 : undefined),
      )
  }
  return manifestText(records)
}

/** The manifest text of records, sorted by path bytes. */
export function manifestText(records: ReadonlyMap<BytePath, ManifestRecord>): string {
  const body = [...records.keys()]
    .sort()
    .map((path) => `${formatRecord(path, records.get(path) as ManifestRecord)}\n`)
    .join('')
  return `${MAGIC} ${createHash('sha256').update(body).digest('hex')}\n${body}`
}

const invalid = (what: string): OvrootError => new OvrootError('EMANIFEST', ExitCode.data, `firmware manifest: ${what}`)

/** Parses and checks a manifest: a wrong digest, or any malformed line, is refused (exit 5). */
export function readManifest(text: string, source = 'firmware manifest'): Manifest {
  const newline = text.indexOf('\n')
  const header = /^ovroot-manifest 1 ([0-9a-f]{64})$/.exec(newline < 0 ? text : text.slice(0, newline))
  if (!header?.[1]) throw invalid(`${source} does not start with "${MAGIC} <sha256>"`)
  const body = text.slice(newline + 1)
  if (createHash('sha256').update(body).digest('hex') !== header[1])
    throw invalid(`${source} does not match its digest (damaged or edited)`)
  const records = new Map<BytePath, ManifestRecord>()
  const lines = body.split('\n')
  lines.pop()
  for (const [index, line] of lines.entries()) {
    const parsed = parseLine(line)
    if (!parsed) throw invalid(`${source} line ${index + 2} is malformed`)
    records.set(parsed[0], parsed[1])
  }
  return { identity: header[1], lookup: (path) => records.get(path), paths: () => records.keys() }
}

const LINE = /^([^\t]+)\t([fdlcbps])\t([0-7]{1,4})\t(\d+)\t(\d+)\t(\d+)\t([^\t]+)\t(-|x=[0-9a-f]{64})$/

function parseLine(line: string): [BytePath, ManifestRecord] | undefined {
  const match = LINE.exec(line)
  if (!match) return undefined
  const [, shownPath, type, mode, uid, gid, size, shownData, xattrs] = match as unknown as string[]
  const path = parseShownName(shownPath ?? '')
  const data = type === 'l' ? parseShownName(shownData ?? '') : shownData
  if (path === undefined || data === undefined) return undefined
  return [
    path,
    {
      type: type as RecordType,
      mode: parseInt(mode ?? '', 8),
      uid: Number(uid),
      gid: Number(gid),
      size: Number(size),
      data,
      xattrs: xattrs ?? '-',
    },
  ]
}

/** Two records say the same entry: what "unchanged" means across firmware. */
export function sameRecord(a: ManifestRecord, b: ManifestRecord): boolean {
  return sameContent(a, b) && a.mode === b.mode && a.uid === b.uid && a.gid === b.gid && a.xattrs === b.xattrs
}

/** Same type and the same bytes (data, target, device numbers): what a copy-up without a content change keeps. */
export function sameContent(a: ManifestRecord, b: ManifestRecord): boolean {
  return a.type === b.type && a.size === b.size && a.data === b.data
}
