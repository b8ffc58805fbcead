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
import { hostTreeReader, readAt, readPieces } from '../sys/fs.js'
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
  /** The records below a directory (`.`: every one but the root's), in path order. */
  below(path: BytePath): Iterable<[BytePath, ManifestRecord]>
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

/** Bytes of the manifest per entry of its index: one block read and parsed per lookup that misses the cache. */
const BLOCK_BYTES = 8192
const READ_AHEAD = 8
const CACHED_BLOCKS = 2 * READ_AHEAD
const PIECE_BYTES = 1 << 16

/** Where a block starts, and its first line's path. */
interface BlockStart {
  offset: number
  path: BytePath
}

/**
 * Opens a manifest file without holding it: one pass checks the digest and
 * keeps the path of the first line in each 8 KiB block (about 2,300 for a
 * 200,000-entry firmware); a lookup reads one block, found by binary search,
 * and the last few blocks are kept (a walk asks in nearly manifest order).
 * What is read is checked: the blocks' order, each block's lines in path
 * order, each record used well formed; a wrong digest or a bad line is
 * refused (exit 5). The digest vouches for the rest, which nothing reads.
 * The file must not change while it is open.
 */
export function openManifest(file: string, source = file): Manifest {
  const head = readAt(file, 0, HEADER_BYTES).toString('latin1')
  const header = /^ovroot-manifest 1 ([0-9a-f]{64})\n/.exec(head)
  if (!header?.[1]) throw invalid(`${source} does not start with "${MAGIC} <sha256>"`)
  const { starts, size, digest, ended } = indexBlocks(file)
  if (digest !== header[1]) throw invalid(`${source} does not match its digest (damaged or edited)`)
  if (!ended) throw invalid(`${source} does not end with a newline`)
  const misordered = (): OvrootError => invalid(`${source} is not in path order`)
  if (starts.some((start, index) => index > 0 && start.path <= (starts[index - 1] as BlockStart).path))
    throw misordered()
  // Blocks read, by index: their text until first used, then with where each line starts. Only
  // the text and one array per block stay cached: a path or line is cut when a lookup needs it.
  const cache = new Map<number, string | ParsedBlock>()
  const offset = (index: number): number => starts[index]?.offset ?? size
  /** The blocks from `index` on, READ_AHEAD of them in one read: a walk asks for the next ones next. */
  const readAhead = (index: number): void => {
    const last = Math.min(index + READ_AHEAD, starts.length)
    const text = readAt(file, offset(index), offset(last) - offset(index)).toString('latin1')
    for (let at = index; at < last; at++) {
      if (cache.size >= CACHED_BLOCKS) cache.delete(cache.keys().next().value as number)
      cache.set(at, text.slice(offset(at) - offset(index), offset(at + 1) - offset(index)))
    }
  }
  const block = (index: number): ParsedBlock => {
    if (!cache.has(index)) readAhead(index)
    const found = cache.get(index) ?? ''
    if (typeof found === 'object') return found
    const parsed = parseBlock(found)
    const next = starts[index + 1]?.path
    for (let at = 0, previous = ''; at < parsed.count; at++) {
      const path = pathAt(parsed, at)
      if ((at > 0 && path <= previous) || (next !== undefined && path >= next)) throw misordered()
      previous = path
    }
    cache.set(index, parsed)
    return parsed
  }
  // A record's strings are cut from a copy of its line: cut from the block's text they would keep all 8 KiB alive.
  const record = (parsed: ParsedBlock, at: number): ManifestRecord => {
    const line = parsed.text.slice(parsed.lines[at], (parsed.lines[at + 1] as number) - 1)
    const fields = parseLine(Buffer.from(line, 'latin1').toString('latin1'))
    if (!fields) throw invalid(`${source} has a malformed line: ${JSON.stringify(line.slice(0, 200))}`)
    return fields[1]
  }
  return {
    identity: header[1],
    lookup(path) {
      const index = lastAtOrBefore(starts, path)
      if (index < 0) return undefined
      const parsed = block(index)
      const at = lowerBound(parsed, path)
      return at < parsed.count && pathAt(parsed, at) === path ? record(parsed, at) : undefined
    },
    *below(path) {
      const prefix = path === '.' ? '' : `${path}/`
      for (let index = Math.max(0, lastAtOrBefore(starts, prefix)); index < starts.length; index++) {
        const parsed = block(index)
        for (let at = lowerBound(parsed, prefix); at < parsed.count; at++) {
          const name = pathAt(parsed, at)
          if (!name.startsWith(prefix)) return
          if (name !== '.') yield [Buffer.from(name, 'latin1').toString('latin1'), record(parsed, at)]
        }
      }
    },
  }
}

const HEADER_BYTES = MAGIC.length + 66
const NEWLINE = 0x0a
const TAB = 0x09

/**
 * The pass over the body: its digest, its size, and each block's first line
 * (the first to start at least BLOCK_BYTES after the previous block's), found
 * with one search per block, not per line.
 */
function indexBlocks(file: string): { starts: BlockStart[]; size: number; digest: string; ended: boolean } {
  const hash = createHash('sha256')
  const starts: BlockStart[] = []
  let wanted = HEADER_BYTES // the next block's first line starts here or after
  /** The block starts among the complete lines of `text`, which begins a line at `at` in the file. */
  const scan = (text: Buffer, at: number): void => {
    const complete = text.lastIndexOf(NEWLINE) + 1
    for (;;) {
      const from = wanted - at
      const start = from <= 0 ? 0 : text.indexOf(NEWLINE, from - 1) + 1
      if ((start === 0 && from > 0) || start >= complete) return
      const end = text.indexOf(NEWLINE, start)
      const tab = text.indexOf(TAB, start)
      const path = pathField(text.toString('latin1', start, tab >= 0 && tab < end ? tab : end))
      starts.push({ offset: at + start, path: path ?? '' })
      wanted = at + start + BLOCK_BYTES
    }
  }
  let carry: Buffer = Buffer.alloc(0) // the line the last piece ended in, begun at `offset`
  let offset = HEADER_BYTES
  for (const piece of readPieces(file, HEADER_BYTES, PIECE_BYTES)) {
    hash.update(piece)
    const first = piece.indexOf(NEWLINE) + 1
    if (first === 0) {
      carry = Buffer.concat([carry, piece])
      continue
    }
    // Only the line across the pieces' boundary is joined; the rest is scanned where it was read.
    scan(Buffer.concat([carry, piece.subarray(0, first)]), offset)
    const rest = piece.subarray(first)
    const restAt = offset + carry.length + first
    scan(rest, restAt)
    const complete = rest.lastIndexOf(NEWLINE) + 1
    carry = rest.subarray(complete)
    offset = restAt + complete
  }
  return { starts, size: offset + carry.length, digest: hash.digest('hex'), ended: carry.length === 0 }
}

/**
 * A path (or link target) field's bytes, the field being the file's bytes one
 * char each: as they are unless escaped (the writer escapes every byte that
 * is not part of valid UTF-8, so the rest are the name's own bytes).
 */
function pathField(field: string): BytePath | undefined {
  if (!field.includes('\\')) return field
  return parseShownName(Buffer.from(field, 'latin1').toString('utf8'))
}

/** The last block whose first path is at or before `path` (-1: none). */
function lastAtOrBefore(starts: readonly BlockStart[], path: BytePath): number {
  let low = 0
  let high = starts.length
  while (low < high) {
    const middle = (low + high) >> 1
    if ((starts[middle] as BlockStart).path <= path) low = middle + 1
    else high = middle
  }
  return low - 1
}

/** A block's text and where each of its lines starts (and, last, its end). */
interface ParsedBlock {
  text: string
  lines: Uint32Array
  count: number
}

function parseBlock(text: string): ParsedBlock {
  let count = 0
  for (let at = text.indexOf('\n'); at >= 0; at = text.indexOf('\n', at + 1)) count++
  const lines = new Uint32Array(count + 1)
  for (let line = 1, at = text.indexOf('\n'); at >= 0; at = text.indexOf('\n', at + 1)) lines[line++] = at + 1
  return { text, lines, count }
}

/** The path of a block's line `at` (a line without a tab: the whole line, refused when its record is read). */
function pathAt({ text, lines }: ParsedBlock, at: number): BytePath {
  const start = lines[at] as number
  const end = (lines[at + 1] as number) - 1
  const tab = text.indexOf('\t', start)
  return pathField(text.slice(start, tab >= 0 && tab < end ? tab : end)) ?? ''
}

/** The first line of a block whose path is not before `key`. */
function lowerBound(parsed: ParsedBlock, key: string): number {
  let low = 0
  let high = parsed.count
  while (low < high) {
    const middle = (low + high) >> 1
    if (pathAt(parsed, middle) < key) low = middle + 1
    else high = middle
  }
  return low
}

const LINE = /^([^\t]+)\t([fdlcbps])\t([0-7]{1,4})\t(\d+)\t(\d+)\t(\d+)\t([^\t]+)\t(-|x=[0-9a-f]{64})$/

function parseLine(line: string): [BytePath, ManifestRecord] | undefined {
  const match = LINE.exec(line)
  if (!match) return undefined
  const [, shownPath, type, mode, uid, gid, size, shownData, xattrs] = match as unknown as string[]
  const path = pathField(shownPath ?? '')
  const data = type === 'l' ? pathField(shownData ?? '') : shownData
  if (!path || data === undefined) return undefined
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
