/**
 * POSIX pax tar, written and read as bytes. Values are length-framed records
 * (`"<len> <key>=<value>\n"`), so binary xattrs (`SCHILY.xattr.NAME`, as GNU
 * tar and star write them), names of any length, sizes past 8 GiB and 0/0
 * devices all round-trip. Names and link targets are bytes (names.ts
 * `BytePath`): a path record that is not UTF-8 comes with
 * `hdrcharset=BINARY`, as GNU tar writes it, and is read back byte for byte
 * (a path record is the name's bytes either way). The reader is a push parser: it never holds more
 * than one header block and one extended header, whatever the archive's size.
 */
import { createHash } from 'node:crypto'
import { ExitCode, OvrootError } from '../errors.js'
import type { EntryKind, UpperEntry } from '../sys/types.js'
import { bytePathBuffer, byteString, showBytes, textOf } from '../names.js'

export type TarType = EntryKind

/** An upper entry as an archive carries it, plus ovroot's per-entry comment. */
export interface TarEntry extends UpperEntry {
  /** pax `comment`: ignored by every tar, carries ovroot's checksums. */
  comment?: string
  /** Inode flags the archive names that ovroot does not keep (`SCHILY.fflags` from another system): reported, not set. */
  otherFlags?: string[]
}

export const BLOCK = 512
const EMPTY: Buffer = Buffer.alloc(0)

/**
 * The largest extended header (pax `x`/`g`, GNU `L`/`K`) read: far above what
 * a backup writes (names up to 4 KiB, xattrs up to 64 KiB each), far below a
 * 128 MiB device's memory.
 */
export const EXTENDED_HEADER_LIMIT = 1 << 20

const TYPE_FLAG: Record<TarType, string> = {
  file: '0',
  hardlink: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
}
const TYPE_OF_FLAG = new Map<string, TarType>([
  ...Object.entries(TYPE_FLAG).map(([type, flag]) => [flag, type as TarType] as const),
  ['\0', 'file'],
  ['7', 'file'],
])

interface Field {
  readonly offset: number
  readonly width: number
}

/** Where each field of a ustar header block lies, for the writer and the reader alike. */
const FIELD = {
  name: { offset: 0, width: 100 },
  mode: { offset: 100, width: 8 },
  uid: { offset: 108, width: 8 },
  gid: { offset: 116, width: 8 },
  size: { offset: 124, width: 12 },
  mtime: { offset: 136, width: 12 },
  checksum: { offset: 148, width: 8 },
  typeFlag: { offset: 156, width: 1 },
  linkName: { offset: 157, width: 100 },
  /** `ustar\0`, then the version `00`. */
  magic: { offset: 257, width: 6 },
  version: { offset: 263, width: 2 },
  devMajor: { offset: 329, width: 8 },
  devMinor: { offset: 337, width: 8 },
  prefix: { offset: 345, width: 155 },
} as const satisfies Record<string, Field>

const fieldText = (block: Buffer, field: Field): string =>
  block.toString('latin1', field.offset, field.offset + field.width)

/** The largest value an octal field of `width` bytes holds (one byte is the terminator). */
const octalLimit = (width: number): number => OCTAL_LIMITS[width] ?? 8 ** (width - 1) - 1
const OCTAL_LIMITS: Record<number, number> = { 7: 8 ** 6 - 1, 8: 8 ** 7 - 1, 12: 8 ** 11 - 1 }

/** A pax record before it is written: `"<len> <key>=<value>\n"`. */
type PaxRecord = readonly [key: string, value: Buffer | string]

/** A record's length, which counts its own digits. */
function recordLength([key, value]: PaxRecord): number {
  // " key=value\n", then the length in front.
  const body = Buffer.byteLength(key) + (typeof value === 'string' ? Buffer.byteLength(value) : value.length) + 3
  let digits = 1
  while (body + digits >= 10 ** digits) digits++
  return body + digits
}

/** Writes a record of `length` bytes at `at` of `out`; answers where the next one goes. */
function writeRecord(out: Buffer, at: number, [key, value]: PaxRecord, length: number): number {
  let position = at + out.write(`${length} ${key}=`, at)
  position += typeof value === 'string' ? out.write(value, position) : value.copy(out, position)
  out[position] = 0x0a
  return position + 1
}

/** Zeros that paddings are views of: nothing writes to them, every consumer copies or hashes. */
const ZEROS = Buffer.alloc(BLOCK)

function padding(size: number): Buffer {
  return ZEROS.subarray(0, (BLOCK - (size % BLOCK)) % BLOCK)
}

/** `size` rounded up to whole blocks. */
const blocksOf = (size: number): number => Math.ceil(size / BLOCK) * BLOCK

interface HeaderFields {
  name: Buffer
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  flag: string
  linkName: Buffer
  devMajor: number
  devMinor: number
}

/** An octal field: width - 1 digits (the value capped at what they hold), then NUL. */
function writeOctal(out: Buffer, at: number, value: number, { offset, width }: Field): void {
  let rest = Math.min(value, octalLimit(width))
  for (let i = at + offset + width - 2; i >= at + offset; i--) {
    out[i] = 0x30 + (rest % 8)
    rest = Math.floor(rest / 8)
  }
  out[at + offset + width - 1] = 0
}

/** A ustar header block at `at` of `out`, whose 512 bytes there are zeros. */
function writeUstarHeader(out: Buffer, at: number, fields: HeaderFields): void {
  fields.name.copy(out, at + FIELD.name.offset, 0, Math.min(fields.name.length, FIELD.name.width))
  writeOctal(out, at, fields.mode, FIELD.mode)
  writeOctal(out, at, fields.uid, FIELD.uid)
  writeOctal(out, at, fields.gid, FIELD.gid)
  writeOctal(out, at, fields.size, FIELD.size)
  writeOctal(out, at, Math.max(0, Math.floor(fields.mtime)), FIELD.mtime)
  out[at + FIELD.typeFlag.offset] = fields.flag.charCodeAt(0)
  fields.linkName.copy(out, at + FIELD.linkName.offset, 0, Math.min(fields.linkName.length, FIELD.linkName.width))
  USTAR_MAGIC.copy(out, at + FIELD.magic.offset)
  writeOctal(out, at, fields.devMajor, FIELD.devMajor)
  writeOctal(out, at, fields.devMinor, FIELD.devMinor)
  out.fill(0x20, at + FIELD.checksum.offset, at + FIELD.checksum.offset + FIELD.checksum.width)
  let sum = 0
  for (let i = at; i < at + BLOCK; i++) sum += out[i] ?? 0
  // Six digits, NUL, space (the last byte stays the space it was summed as).
  writeOctal(out, at, sum, CHECKSUM_DIGITS)
}

/** `ustar\0`, then the version `00`. */
const USTAR_MAGIC = Buffer.from('ustar\x0000', 'latin1')
const CHECKSUM_DIGITS: Field = { offset: FIELD.checksum.offset, width: 7 }

const NO_NAME = Buffer.alloc(0)

/** The records of an extended header, each one's length, and the bytes the header takes (whole blocks). */
interface ExtendedLayout {
  records: PaxRecord[]
  lengths: number[]
  bytes: number
}

function extendedLayout(records: PaxRecord[]): ExtendedLayout {
  const lengths = records.map(recordLength)
  const body = lengths.reduce((sum, length) => sum + length, 0)
  return { records, lengths, bytes: records.length === 0 ? 0 : BLOCK + blocksOf(body) }
}

/** An extended header (`x` or `g`) at `at` of `out`, whose bytes there are zeros. */
function writeExtendedHeader(out: Buffer, at: number, flag: 'x' | 'g', name: Buffer, layout: ExtendedLayout): void {
  let size = 0
  for (const length of layout.lengths) size += length
  const fields = {
    name,
    mode: 0o644,
    uid: 0,
    gid: 0,
    size,
    mtime: 0,
    flag,
    linkName: NO_NAME,
    devMajor: 0,
    devMinor: 0,
  }
  writeUstarHeader(out, at, fields)
  let position = at + BLOCK
  for (let i = 0; i < layout.records.length; i++)
    position = writeRecord(out, position, layout.records[i] ?? ['', ''], layout.lengths[i] ?? 0)
}

/** A global header holding only a comment: how ovroot's manifest travels, invisible to tar. */
export function globalComment(comment: string): Buffer {
  const layout = extendedLayout([['comment', comment]])
  const out = Buffer.alloc(layout.bytes)
  writeExtendedHeader(out, 0, 'g', Buffer.from('pax_global_header'), layout)
  return out
}

/**
 * A file with holes as GNU sparse 1.0 stores it: the map (the number of
 * regions, then each one's offset and length, decimal, one per line, padded
 * to a block), then the regions' data one after the other. A file ending in
 * a hole gets a last region of length 0 at its end, as GNU tar writes it
 * (GNU tar truncates there). A metacopy stub is all hole.
 */
interface SparseLayout {
  realSize: number
  map: Buffer
  dataBytes: number
}

function sparseLayout(entry: TarEntry): SparseLayout | undefined {
  if (entry.holeSize === undefined && entry.regions === undefined) return undefined
  const realSize = entry.holeSize ?? entry.size
  const regions = entry.regions ?? []
  const last = regions[regions.length - 1]
  const all = last === undefined || last[0] + last[1] < realSize ? [...regions, [realSize, 0] as const] : regions
  const map = Buffer.from(`${all.length}\n${all.map(([offset, length]) => `${offset}\n${length}\n`).join('')}`)
  return { realSize, map, dataBytes: regions.reduce((sum, [, length]) => sum + length, 0) }
}

/**
 * The name of every entry's extended header (star's): readers ignore it, and
 * one name for all of them costs nothing compressed, where the entry's path
 * repeated in each (GNU tar's PaxHeaders/NAME) measured 6% of a backup.
 */
const EXTENDED_NAME = Buffer.from('././@PaxHeader')

/** The headers of one entry, in one buffer; its data (if any) follows, then `dataPadding(entry)`. */
export function entryHeader(entry: TarEntry): Buffer {
  const name = bytePathBuffer(entry.path === '.' ? './' : entry.type === 'dir' ? `${entry.path}/` : entry.path)
  const linkName = entry.linkTarget === undefined ? NO_NAME : bytePathBuffer(entry.linkTarget)
  const records: PaxRecord[] = []
  const sparse = sparseLayout(entry)
  const asciiName = isAscii(name)
  const asciiLink = isAscii(linkName)
  // pax says its path records are UTF-8 unless hdrcharset says otherwise: GNU tar then takes the bytes as they are.
  if ((!asciiName && textOf(entry.path) === undefined) || (!asciiLink && textOf(entry.linkTarget ?? '') === undefined))
    records.push(['hdrcharset', 'BINARY'])
  if (sparse) {
    records.push(
      ['GNU.sparse.major', '1'],
      ['GNU.sparse.minor', '0'],
      ['GNU.sparse.name', name],
      ['GNU.sparse.realsize', String(sparse.realSize)],
    )
  } else if (name.length > FIELD.name.width || !asciiName) records.push(['path', name])
  if (linkName.length > FIELD.linkName.width || !asciiLink) records.push(['linkpath', linkName])
  const mapBytes = sparse ? blocksOf(sparse.map.length) : 0
  const size = sparse ? mapBytes + sparse.dataBytes : entry.size
  if (size > octalLimit(FIELD.size.width)) records.push(['size', String(size)])
  if (entry.uid > octalLimit(FIELD.uid.width)) records.push(['uid', String(entry.uid)])
  if (entry.gid > octalLimit(FIELD.gid.width)) records.push(['gid', String(entry.gid)])
  // ustar holds whole, non-negative seconds and no atime: anything else travels in pax, to the nanosecond.
  if (
    entry.mtimeNs % NANOSECONDS !== 0n ||
    entry.mtimeNs < 0n ||
    entry.mtimeNs / NANOSECONDS > octalLimit(FIELD.mtime.width)
  )
    records.push(['mtime', formatTime(entry.mtimeNs)])
  // A reader takes a missing atime for the mtime: most files were never read after their last write.
  if (entry.atimeNs !== entry.mtimeNs) records.push(['atime', formatTime(entry.atimeNs)])
  if (entry.comment !== undefined) records.push(['comment', entry.comment])
  if (entry.flags) records.push(['SCHILY.fflags', flagNames(entry.flags)])
  for (const [xattr, value] of entry.xattrs) records.push([`SCHILY.xattr.${xattr}`, value])
  const extended = extendedLayout(records)
  // One allocation from Node's pool (allocUnsafe), zeroed: what is not written is padding.
  const out = Buffer.allocUnsafe(extended.bytes + BLOCK + mapBytes).fill(0)
  if (records.length > 0) writeExtendedHeader(out, 0, 'x', EXTENDED_NAME, extended)
  writeUstarHeader(out, extended.bytes, {
    name: sparse ? bytePathBuffer(`GNUSparseFile.0/${entry.path.slice(entry.path.lastIndexOf('/') + 1)}`) : name,
    mode: entry.mode,
    uid: entry.uid,
    gid: entry.gid,
    size,
    mtime: Number(entry.mtimeNs / NANOSECONDS),
    flag: TYPE_FLAG[entry.type],
    linkName,
    devMajor: entry.devMajor,
    devMinor: entry.devMinor,
  })
  sparse?.map.copy(out, extended.bytes + BLOCK)
  return out
}

/**
 * Inode flags as star and libarchive (bsdtar) name them in `SCHILY.fflags`:
 * `sappnd` is chattr's a, `schg` its i, `nodump` its d. libarchive's longer
 * synonyms are read too.
 */
const FLAG_NAMES: [name: string, flag: number][] = [
  ['sappnd', 0x20],
  ['schg', 0x10],
  ['nodump', 0x40],
  ['sappend', 0x20],
  ['schange', 0x10],
  ['simmutable', 0x10],
]

function flagNames(flags: number): string {
  return FLAG_NAMES.slice(0, 3)
    .filter(([, flag]) => flags & flag)
    .map(([name]) => name)
    .join(',')
}

/** The flags `SCHILY.fflags` names, and the names ovroot does not keep (another system's flags). */
function parseFlags(text: string): { flags: number; others: string[] } {
  let flags = 0
  const others: string[] = []
  for (const name of text.split(/[,\s]+/).filter(Boolean)) {
    const flag = FLAG_NAMES.find(([known]) => known === name)?.[1]
    if (flag === undefined) others.push(name)
    else flags |= flag
  }
  return { flags, others }
}

/** What follows an entry's data: zeros to the next block (a view of shared zeros: never written to). */
export function dataPadding(entry: TarEntry): Buffer {
  return padding(sparseLayout(entry)?.dataBytes ?? entry.size)
}

export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK)

const NANOSECONDS = 1_000_000_000n

/**
 * A pax time: a signed decimal number of seconds, with nine fraction digits
 * when there is a fraction (as GNU tar writes them). The sign covers the
 * fraction too: -1.5 is 1.5 s before the epoch.
 */
function formatTime(ns: bigint): string {
  const magnitude = ns < 0n ? -ns : ns
  const whole = `${ns < 0n ? '-' : ''}${magnitude / NANOSECONDS}`
  const fraction = magnitude % NANOSECONDS
  return fraction === 0n ? whole : `${whole}.${String(fraction).padStart(9, '0')}`
}

/** A pax time (see formatTime) in nanoseconds; digits past the ninth are dropped, as the kernel keeps no more. */
function parseTime(value: string): bigint | undefined {
  const match = /^(-?)(\d+)(?:\.(\d*))?$/.exec(value)
  if (!match) return undefined
  const magnitude = BigInt(match[2] ?? '0') * NANOSECONDS + BigInt((match[3] ?? '').slice(0, 9).padEnd(9, '0'))
  return match[1] === '-' ? -magnitude : magnitude
}

function isAscii(bytes: Buffer): boolean {
  for (const byte of bytes) if (byte >= 0x80) return false
  return true
}

export function corrupt(message: string): OvrootError {
  return new OvrootError('EARCHIVE', ExitCode.data, message)
}

/** What a reader hands over for each entry; data arrives through `data`, then `end`. */
export interface ArchiveHandler {
  /** A global record's comment, and the sha256 of the archive's bytes since the previous global record ended (or its start). */
  globalComment(comment: string, digestBefore: string): void
  entry(entry: TarEntry): void
  data(chunk: Buffer): void
  end(): void
}

type State =
  | { kind: 'header' }
  | { kind: 'extended'; flag: 'x' | 'g' | 'L' | 'K'; remaining: number; parts: Buffer[] }
  | { kind: 'sparse-map'; entry: TarEntry; stored: number; parts: Buffer[] }
  | { kind: 'data'; remaining: number; padding: number }
  | { kind: 'done' }

/** Names and values an extended header may set for the next entry. */
interface Overrides {
  records: Map<string, Buffer>
  longName?: Buffer
  longLink?: Buffer
}

/**
 * Push parser: feed it the decompressed stream in chunks of any size. It
 * refuses what it cannot read faithfully: a bad checksum, a type it does not
 * know, an extended header that applies to no entry, a truncated stream.
 */
export class PaxReader {
  private state: State = { kind: 'header' }
  private pending = EMPTY
  private overrides: Overrides = { records: new Map() }
  private offset = 0
  private zeroBlocks = 0
  /** Every byte read since the last global record (ovroot's manifest digest covers the entries between two). */
  private digest = createHash('sha256')
  private digestBeforeGlobal = ''
  private restartDigest = false
  /** The chunk being parsed, and how much of it the digest holds. */
  private input = EMPTY
  private hashed = 0

  constructor(private readonly handler: ArchiveHandler) {}

  get finished(): boolean {
    return this.state.kind === 'done'
  }

  push(chunk: Buffer): void {
    const input = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk
    this.pending = EMPTY
    this.input = input
    this.hashed = 0
    let at = 0
    while (at < input.length && this.state.kind !== 'done') {
      const state = this.state
      if (state.kind === 'data') {
        const take = Math.min(input.length - at, state.remaining + state.padding)
        const dataBytes = Math.min(take, state.remaining)
        if (dataBytes > 0) this.handler.data(input.subarray(at, at + dataBytes))
        state.padding -= take - dataBytes
        state.remaining -= dataBytes
        at += take
        this.offset += take
        if (state.remaining === 0 && state.padding === 0) this.finishEntry()
        continue
      }
      if (input.length - at < BLOCK) break
      const block = input.subarray(at, at + BLOCK)
      this.offset += BLOCK
      this.block(block, at)
      at += BLOCK
      if (this.restartDigest) {
        this.hashTo(at)
        this.digest = createHash('sha256')
        this.restartDigest = false
      }
    }
    // What was read is hashed in one call per chunk, not one per block: the digest is the same.
    this.hashTo(at)
    this.input = EMPTY
    if (at < input.length && this.state.kind !== 'done') this.pending = Buffer.from(input.subarray(at))
  }

  /** Adds the current chunk's bytes up to `at` to the digest. */
  private hashTo(at: number): void {
    if (at > this.hashed) this.digest.update(this.input.subarray(this.hashed, at))
    this.hashed = at
  }

  /** The stream ended: anything but a complete archive is truncated. */
  close(): void {
    if (this.state.kind !== 'done')
      throw corrupt(
        `truncated archive: it ends at byte ${this.offset + this.pending.length} inside ${this.state.kind === 'header' ? 'the entries (no end-of-archive marker)' : 'an entry'}`,
      )
  }

  /** `at`: where the block starts in the chunk being parsed. */
  private block(block: Buffer, at: number): void {
    const state = this.state
    if (state.kind === 'extended') {
      const take = Math.min(BLOCK, state.remaining)
      state.parts.push(Buffer.from(block.subarray(0, take)))
      state.remaining -= take
      if (state.remaining === 0) this.finishExtended(state.flag, Buffer.concat(state.parts))
      return
    }
    if (state.kind === 'sparse-map') {
      state.parts.push(Buffer.from(block))
      this.sparseMap(state)
      return
    }
    this.header(block, at)
  }

  private header(block: Buffer, at: number): void {
    // A header's name starts with a byte other than NUL: the zero test is one compare, and rarely made.
    if (block[0] === 0 && block.equals(ZEROS)) {
      if (this.overrides.records.size > 0 || this.overrides.longName || this.overrides.longLink)
        throw corrupt(
          `an extended header at byte ${this.offset - BLOCK} is followed by the end of the archive, not by an entry: the archive is damaged`,
        )
      if (++this.zeroBlocks === 2) this.state = { kind: 'done' }
      return
    }
    if (this.zeroBlocks > 0)
      throw corrupt(`a lone zero block at byte ${this.offset - 2 * BLOCK}: the archive is damaged`)
    checkChecksum(block, this.offset - BLOCK)
    const flag = fieldText(block, FIELD.typeFlag)
    const size = parseNumber(block, FIELD.size, this.offset)
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      // Held whole until parsed: its size is the archive's to choose, the memory the device's.
      if (size > EXTENDED_HEADER_LIMIT)
        throw corrupt(
          `an extended header of ${size} bytes at byte ${this.offset - BLOCK}, more than the ${EXTENDED_HEADER_LIMIT >> 20} MiB ovroot reads: the archive is damaged or hostile`,
        )
      if (flag === 'g' && (this.overrides.records.size > 0 || this.overrides.longName))
        throw corrupt(
          `a global header at byte ${this.offset - BLOCK} follows an extended header meant for an entry: the archive is damaged`,
        )
      // The digest so far ends where the global record starts.
      if (flag === 'g') {
        this.hashTo(at)
        this.digestBeforeGlobal = this.digest.copy().digest('hex')
      }
      this.state = size === 0 ? { kind: 'header' } : { kind: 'extended', flag, remaining: size, parts: [] }
      if (size === 0) this.finishExtended(flag, Buffer.alloc(0))
      return
    }
    const type = TYPE_OF_FLAG.get(flag)
    if (!type)
      throw corrupt(
        `entry at byte ${this.offset - BLOCK} has tar type '${flag}', which ovroot does not restore (or the archive is damaged)`,
      )
    // GNU tar skips the data blocks a non-file header claims, ovroot would read a header there: two readers, two archives. Refused.
    if (type !== 'file' && size !== 0)
      throw corrupt(
        `a ${type} entry at byte ${this.offset - BLOCK} claims ${size} bytes of data, which no ${type} has: the archive is damaged or hostile`,
      )
    const entry = this.decode(block, type)
    const major = this.overrides.records.get('GNU.sparse.major')?.toString('latin1')
    const minor = this.overrides.records.get('GNU.sparse.minor')?.toString('latin1')
    this.overrides = { records: new Map() }
    if (major !== undefined || minor !== undefined) {
      // 0.x keeps its map in pax records GNU tar 1.14 wrote; nothing writes it today.
      if (major !== '1' || minor !== '0' || type !== 'file')
        throw corrupt(
          `${showBytes(entry.path)}: GNU sparse format ${major ?? '?'}.${minor ?? '?'}; ovroot reads sparse files in format 1.0 (GNU tar's default)`,
        )
      this.state = { kind: 'sparse-map', entry, stored: entry.size, parts: [] }
      return
    }
    this.startEntry(entry)
  }

  private decode(block: Buffer, type: TarType): TarEntry {
    const records = this.overrides.records
    const prefix =
      block.compare(USTAR_MAGIC, 0, 6, FIELD.magic.offset, FIELD.magic.offset + 6) === 0
        ? cString(block, FIELD.prefix)
        : EMPTY
    const ustarName =
      prefix.length > 0 ? Buffer.concat([prefix, SLASH, cString(block, FIELD.name)]) : cString(block, FIELD.name)
    const rawName = records.get('GNU.sparse.name') ?? records.get('path') ?? this.overrides.longName ?? ustarName
    const mtimeNs = this.time('mtime') ?? BigInt(parseNumber(block, FIELD.mtime, this.offset)) * NANOSECONDS
    const xattrs: [string, Buffer][] = []
    for (const [key, value] of records) {
      if (key.startsWith('SCHILY.xattr.')) xattrs.push([key.slice('SCHILY.xattr.'.length), value])
      else if (key.startsWith('LIBARCHIVE.xattr.'))
        xattrs.push([
          decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length)),
          Buffer.from(value.toString('latin1'), 'base64'),
        ])
    }
    const link = records.get('linkpath') ?? this.overrides.longLink ?? cString(block, FIELD.linkName)
    const fflags = records.has('SCHILY.fflags') ? parseFlags(this.text('SCHILY.fflags') ?? '') : undefined
    const device = type === 'char' || type === 'block'
    // One shape for every entry, its optional fields added only when present (object spreads measured slow here).
    const entry: TarEntry = {
      // The bytes as they are, whether the archive says UTF-8 or hdrcharset=BINARY: a Linux name is its bytes.
      path: normaliseName(byteString(rawName)),
      type,
      mode: parseNumber(block, FIELD.mode, this.offset) & 0o7777,
      uid: this.number(block, 'uid', FIELD.uid),
      gid: this.number(block, 'gid', FIELD.gid),
      mtimeNs,
      // An archive without atime (ustar, sysupgrade) says nothing better than the mtime.
      atimeNs: this.time('atime') ?? mtimeNs,
      size: type === 'file' ? this.number(block, 'size', FIELD.size) : 0,
      devMajor: device ? parseNumber(block, FIELD.devMajor, this.offset) : 0,
      devMinor: device ? parseNumber(block, FIELD.devMinor, this.offset) : 0,
      xattrs,
    }
    if (type === 'symlink' || type === 'hardlink') entry.linkTarget = byteString(link)
    if (records.has('comment')) entry.comment = this.text('comment')
    if (fflags && fflags.flags !== 0) entry.flags = fflags.flags
    if (fflags && fflags.others.length > 0) entry.otherFlags = fflags.others
    if (records.has('GNU.sparse.realsize')) entry.holeSize = this.number(block, 'GNU.sparse.realsize', FIELD.size)
    return entry
  }

  /** A pax record of the next entry, as text. */
  private text(key: string): string | undefined {
    return this.overrides.records.get(key)?.toString('utf8')
  }

  /** A pax record holding a whole number, or else the header's field. */
  private number(block: Buffer, key: string, at: Field): number {
    const value = this.text(key)
    if (value === undefined) return parseNumber(block, at, this.offset)
    if (!/^\d+$/.test(value))
      throw corrupt(`pax ${key}=${value} at byte ${this.offset - BLOCK} is not a whole number: the archive is damaged`)
    return Number(value)
  }

  /** A pax time record, if there is one. */
  private time(key: string): bigint | undefined {
    const value = this.text(key)
    if (value === undefined) return undefined
    const ns = parseTime(value)
    if (ns === undefined)
      throw corrupt(`pax ${key}=${value} at byte ${this.offset - BLOCK} is not a time: the archive is damaged`)
    return ns
  }

  private finishExtended(flag: 'x' | 'g' | 'L' | 'K', body: Buffer): void {
    this.state = { kind: 'header' }
    if (flag === 'L') this.overrides.longName = body.subarray(0, body.indexOf(0) < 0 ? body.length : body.indexOf(0))
    else if (flag === 'K')
      this.overrides.longLink = body.subarray(0, body.indexOf(0) < 0 ? body.length : body.indexOf(0))
    else {
      const records = parseRecords(body, this.offset)
      if (flag === 'g') {
        // What follows the record's last block starts a new digest.
        this.restartDigest = true
        const comment = records.get('comment')
        if (comment !== undefined) this.handler.globalComment(comment.toString('utf8'), this.digestBeforeGlobal)
      } else for (const [key, value] of records) this.overrides.records.set(key, value)
    }
  }

  /**
   * GNU sparse 1.0's map, block by block until it is whole: checked to lie
   * inside the file, in order, without overlaps, and to account for every
   * data byte the header declares (a map that says otherwise would make two
   * readers write two files). A map that needs more than an extended header's
   * worth of blocks is refused like one.
   */
  private sparseMap(state: { entry: TarEntry; stored: number; parts: Buffer[] }): void {
    const { entry } = state
    const bytes = state.parts.length * BLOCK
    const refuse = (why: string): OvrootError =>
      corrupt(`${showBytes(entry.path)}: its sparse map ${why}: the archive is damaged or hostile`)
    const text = Buffer.concat(state.parts).toString('latin1')
    const lines = text.split('\n')
    const count = lines[0] !== undefined && lines.length > 1 ? wholeNumber(lines[0]) : undefined
    if (count === undefined && lines.length > 1) throw refuse('does not start with a region count')
    // Complete once the count and 2 numbers per region are each followed by a newline.
    if (count === undefined || lines.length < 2 + 2 * count) {
      if (bytes >= state.stored || bytes >= EXTENDED_HEADER_LIMIT) throw refuse('does not end')
      return
    }
    const numbers = lines.slice(1, 1 + 2 * count).map(wholeNumber)
    const realSize = entry.holeSize ?? 0
    const regions: [number, number][] = []
    let end = 0
    for (let i = 0; i < count; i++) {
      const offset = numbers[2 * i]
      const length = numbers[2 * i + 1]
      if (offset === undefined || length === undefined) throw refuse('holds something other than numbers')
      if (offset < end || offset + length > realSize) throw refuse('has regions out of order or past the end')
      end = offset + length
      if (length > 0) regions.push([offset, length])
    }
    const dataBytes = regions.reduce((sum, [, length]) => sum + length, 0)
    if (bytes + dataBytes !== state.stored)
      throw refuse(`accounts for ${dataBytes} bytes of data, the header for ${state.stored - bytes}`)
    // All hole (a metacopy stub, a truncated-up file): a length, and no data.
    if (regions.length === 0) this.startEntry({ ...entry, size: 0 }, 0)
    else this.startEntry({ ...entry, holeSize: undefined, size: realSize, regions }, dataBytes)
  }

  /** `dataBytes`: what follows the header (the regions' bytes, for a file with holes). */
  private startEntry(entry: TarEntry, dataBytes = entry.size): void {
    this.handler.entry(entry)
    if (dataBytes > 0)
      this.state = { kind: 'data', remaining: dataBytes, padding: (BLOCK - (dataBytes % BLOCK)) % BLOCK }
    else this.finishEntry()
  }

  private finishEntry(): void {
    this.state = { kind: 'header' }
    this.handler.end()
  }
}

/** A NUL-terminated field's bytes (all of it when it has no NUL). */
function cString(block: Buffer, { offset, width }: Field): Buffer {
  const end = block.indexOf(0, offset)
  return block.subarray(offset, end < 0 || end > offset + width ? offset + width : end)
}

const SLASH = Buffer.from('/')

/** `./etc/x` and `etc/x/` are `etc/x`; `./` is `.`. Anything else is left for the path rules to judge. */
function normaliseName(name: string): string {
  if (name !== '' && name !== '.' && !name.startsWith('./') && !name.endsWith('/')) return name
  const trimmed = name.replace(/^(\.\/)+/, '').replace(/(.)\/+$/, '$1')
  return trimmed === '' || trimmed === '.' || trimmed === './' ? '.' : trimmed
}

/** A decimal number as GNU sparse maps write them, or undefined. */
function wholeNumber(text: string): number | undefined {
  return /^\d{1,16}$/.test(text) ? Number(text) : undefined
}

function checkChecksum(block: Buffer, offset: number): void {
  const { offset: from, width } = FIELD.checksum
  // The checksum field counts as spaces.
  let sum = width * 0x20
  for (let i = 0; i < from; i++) sum += block[i] ?? 0
  for (let i = from + width; i < BLOCK; i++) sum += block[i] ?? 0
  const plain = plainOctal(block, FIELD.checksum)
  const stored =
    plain ??
    parseInt(
      fieldText(block, FIELD.checksum)
        .replace(/[\0 ]+$/, '')
        .trim(),
      8,
    )
  if (stored !== sum) throw corrupt(`header checksum mismatch at byte ${offset}: the archive is damaged`)
}

/**
 * An octal field as every tar writes it, read without making a string: digits, then only NULs and
 * spaces. Anything else (leading spaces, no digits) is undefined: left to the full reading.
 */
function plainOctal(block: Buffer, { offset, width }: Field): number | undefined {
  const end = offset + width
  let value = 0
  let at = offset
  for (let byte = block[at] ?? 0; at < end && byte >= 0x30 && byte <= 0x37; byte = block[++at] ?? 0)
    value = value * 8 + byte - 0x30
  if (at === offset) return undefined
  for (; at < end; at++) if (block[at] !== 0 && block[at] !== 0x20) return undefined
  return value
}

function parseNumber(block: Buffer, field: Field, at: number): number {
  const { offset, width } = field
  const first = block[offset] ?? 0
  // GNU base-256 for values past the octal range.
  if (first & 0x80) {
    let value = first & 0x7f
    for (let i = 1; i < width; i++) value = value * 256 + (block[offset + i] ?? 0)
    return value
  }
  const plain = plainOctal(block, field)
  if (plain !== undefined) return plain
  const text = fieldText(block, field)
    .replace(/[\0 ]+$/, '')
    .trim()
  if (text === '') return 0
  if (!/^[0-7]+$/.test(text))
    throw corrupt(
      `header at byte ${at - BLOCK} has a field that is not octal (${JSON.stringify(text)}): the archive is damaged`,
    )
  return parseInt(text, 8)
}

function parseRecords(body: Buffer, at: number): Map<string, Buffer> {
  const records = new Map<string, Buffer>()
  for (let position = 0; position < body.length;) {
    if (body[position] === 0) break
    const space = body.indexOf(0x20, position)
    const length = Number(body.toString('latin1', position, space))
    if (
      space < 0 ||
      !Number.isInteger(length) ||
      length <= 0 ||
      position + length > body.length ||
      body[position + length - 1] !== 0x0a
    ) {
      throw corrupt(`malformed pax record in the extended header ending at byte ${at}: the archive is damaged`)
    }
    const record = body.subarray(space + 1, position + length - 1)
    const equals = record.indexOf(0x3d)
    if (equals < 0)
      throw corrupt(`malformed pax record in the extended header ending at byte ${at}: the archive is damaged`)
    records.set(record.toString('utf8', 0, equals), Buffer.from(record.subarray(equals + 1)))
    position += length
  }
  return records
}
