/**
 * Reading and creating upper entries faithfully: type, mode, owner, mtime,
 * every xattr with its exact bytes, device numbers, link targets; file data
 * read so that a file changing under the reader is caught, and written so
 * that nothing is ever created through a symlink. Every path here is a
 * byte string (names.ts `BytePath`): an upper's names are bytes.
 */
import { createHash } from 'node:crypto'
import * as fs from 'node:fs'
import { ExitCode, fromNodeError, OvrootError, SysError } from '../errors.js'
import type { EntryStat, UpperEntry, WalkedEntry } from './types.js'
import {
  dataRegions,
  getXattr,
  setInodeFlags,
  listXattrs,
  lstat,
  makeNode,
  removeXattr,
  setTimes,
  setTimesOf,
  setXattr,
  setXattrOf,
} from './libc.js'
import { openNoFollow } from './fs.js'
import { reportProgress } from './progress.js'
import { bytePathBuffer as kernelPath, byteString, showBytes, type BytePath } from '../names.js'

const microseconds = (nanoseconds: bigint): number => Number(nanoseconds / 1000n) / 1e6

/** An entry's mtime in whole microseconds (seconds with six decimals), from one stat: what a sync records for a directory. */
export function modificationTime(full: BytePath): number {
  const stat = statEntry(full)
  if (stat === undefined) throw new SysError('ENOENT', 'stat', showBytes(full))
  return microseconds(stat.mtimeNs)
}

/** glibc's gnu_dev_major/minor, on a number that fits a double. */
export const majorOf = (rdev: number): number =>
  Number(((BigInt(rdev) >> 8n) & 0xfffn) | ((BigInt(rdev) >> 32n) & ~0xfffn))
export const minorOf = (rdev: number): number => Number((BigInt(rdev) & 0xffn) | ((BigInt(rdev) >> 12n) & ~0xffn))

/** The entry at `full`; `stubXattr` marks a metacopy stub, whose data is not read. Sockets cannot be archived. */
export function readEntry(full: BytePath, path: BytePath, stubXattr: string, withFlags = false): UpperEntry | 'socket' {
  const read = readEntryIfPresent(full, path, stubXattr, withFlags)
  if (read === undefined) throw new SysError('ENOENT', 'stat', showBytes(full))
  return read
}

/** readEntry, or undefined when nothing is at `full` (one stat instead of a test and a stat). */
export function readEntryIfPresent(
  full: BytePath,
  path: BytePath,
  stubXattr: string,
  withFlags = false,
): UpperEntry | 'socket' | undefined {
  const stat = statEntry(full)
  return stat && readEntryWithStat(full, path, stubXattr, stat, withFlags)
}

/** The lstat of an entry, or undefined when nothing is at `full`: for a caller that decides from it whether to read the rest. */
export const statEntry = (full: BytePath): EntryStat | undefined => lstat(kernelPath(full))

/** readEntry, given the entry's lstat (statEntry), whose inode flags it takes when asked `withFlags`. */
export function readEntryWithStat(
  full: BytePath,
  path: BytePath,
  stubXattr: string,
  stat: EntryStat,
  withFlags = false,
): UpperEntry | 'socket' {
  const type = stat.type
  if (type === 'socket') return 'socket'
  const xattrs: [string, Buffer][] = []
  const kernelFull = kernelPath(full)
  for (const name of listXattrs(kernelFull).sort()) {
    const value = getXattr(kernelFull, name)
    if (value) xattrs.push([name, value])
  }
  const stub = type === 'file' && stat.size > 0 && xattrs.some(([name]) => name === stubXattr)
  // Files and directories only: what chattr sets, and what can be opened to set them back.
  const flags = withFlags && (type === 'file' || type === 'dir') ? stat.flags : 0
  const entry: UpperEntry = {
    path,
    type,
    mode: stat.permissions,
    uid: stat.uid,
    gid: stat.gid,
    mtimeNs: stat.mtimeNs,
    atimeNs: stat.atimeNs,
    size: type === 'file' && !stub ? stat.size : 0,
    devMajor: type === 'char' || type === 'block' ? majorOf(stat.rdev) : 0,
    devMinor: type === 'char' || type === 'block' ? minorOf(stat.rdev) : 0,
    xattrs,
    ...(stub ? { holeSize: stat.size } : {}),
    ...(type === 'symlink' ? { linkTarget: readLinkText(full) } : {}),
    ...(flags !== 0 ? { flags } : {}),
  }
  return entry
}

/** A link target is bytes too: a target that is not UTF-8 is kept as it is, never rewritten to U+FFFD. */
function readLinkText(full: BytePath): BytePath {
  try {
    return byteString(fs.readlinkSync(kernelPath(full), { encoding: 'buffer' }))
  } catch (error) {
    throw fromNodeError(error, 'readlink', showBytes(full))
  }
}

/**
 * A walked file's entry for the bytes `file` holds: the walked entry when they are of the version
 * the walk stat'ed; else (the file changed in between, and its read was retried) the entry read
 * again, mode, owner, times, xattrs and flags, and checked to still be the version read (its
 * ctime covers them all). A file written again since its read (a log appended all the time) keeps
 * the walk's mode, owner, xattrs and flags when it has them still, at both ends of the read, with the
 * read version's mtime; so does a grown prefix (a log appended through both reads of it), whose
 * first bytes were read. Never the new bytes with the old metadata: a restore would give them the
 * old mtime, and a later comparison by mtime would miss the change.
 */
export function entryOfRead(
  full: BytePath,
  walked: WalkedEntry,
  file: StableFile,
  stubXattr: string,
  withFlags: boolean,
): UpperEntry {
  if (sameFileVersion(walked.stat, file.version)) return walked
  const stat = statEntry(full)
  const again =
    stat?.type === 'file' && stat.ino === file.version.ino
      ? readEntryWithStat(full, walked.path, stubXattr, stat, withFlags)
      : undefined
  // A grown prefix's size and times move all the time: only its attributes can still be the walk's.
  const keepsAttributes = typeof again === 'object' && sameAttributes(again, walked)
  if (file.prefix !== undefined) {
    if (keepsAttributes) return { ...walked, mtimeNs: file.version.mtimeNs }
    throw changedWhileRead(full)
  }
  const after = statEntry(full)
  const consistent =
    stat !== undefined &&
    typeof again === 'object' &&
    again.holeSize === undefined &&
    after !== undefined &&
    sameFileVersion(after, stat)
  if (consistent && sameFileVersion(stat, file.version)) return again
  if (consistent && keepsAttributes) return { ...walked, mtimeNs: file.version.mtimeNs }
  throw changedWhileRead(full)
}

/** Equal mode, owner, inode flags and xattrs: what a write of data does not change. */
export function sameAttributes(a: UpperEntry, b: UpperEntry): boolean {
  return (
    a.mode === b.mode &&
    a.uid === b.uid &&
    a.gid === b.gid &&
    (a.flags ?? 0) === (b.flags ?? 0) &&
    a.xattrs.length === b.xattrs.length &&
    a.xattrs.every(([name, value], i) => {
      const other = b.xattrs[i]
      return other !== undefined && other[0] === name && other[1].equals(value)
    })
  )
}

/** Files up to this size are read once, into memory; larger ones (and files with holes) are hashed first, then streamed. */
const WHOLE_FILE_BYTES = 4 << 20
const CHUNK = 1 << 20

export interface StableFile {
  /** Over the bytes chunks() yields: for a file read with its holes, over its data regions only. */
  sha256: string
  /** The file's length when it was read (it may differ from an earlier stat's). */
  size: number
  /** The data, checked against sha256 as it is read; throws if the file changed since it was hashed. */
  chunks(): Iterable<Buffer>
  /** Set when the data is a prefix of a file that kept growing (`readStableFile`'s `prefixOfGrowing`): its length. */
  prefix?: number
  /** Read with its holes (`holes`), a file that has some: its data regions, which are all chunks() yields. */
  regions?: Region[]
  /** The version of the file whose bytes these are (the same stat before and after the read). */
  version: FileVersion
}

/** Part of a file that holds data: offset and length in bytes. */
export type Region = [offset: number, length: number]

/**
 * A regular file's data, read so that a file written while it is read is
 * never taken torn: its size, mtime and ctime must be the same before and
 * after; a change means one more read, a second change an error naming it.
 * With `prefixOfGrowing`, a file that only grew (a log appended all the time)
 * is then taken as the bytes it had at a moment: its first N bytes, N being
 * its size then, read twice and equal both times.
 */
export function readStableFile(
  full: BytePath,
  options: { holes?: boolean; prefixOfGrowing?: boolean; stat?: EntryStat | undefined } = {},
): StableFile {
  for (let attempt = 0; attempt < 2; attempt++) {
    // A walk's lstat of the file stands for the stat before the first read (a rename since then is a new inode).
    const small = readSmallFile(full, options.holes === true, attempt === 0 ? options.stat : undefined)
    if (small === 'changed') continue
    if (small !== 'large') return small
    const before = versionAt(full)
    if (before === undefined) continue
    // Fewer blocks than bytes: a file with holes (or a filesystem that compresses); only then is the map asked for.
    const regions = options.holes === true && before.blocks * 512 < before.size ? holeMap(full, before.size) : undefined
    const read = regions ? readRegions(full, regions) : hashFile(full)
    const after = versionAt(full)
    if (after !== undefined && sameFileVersion(before, after)) return { ...read, size: before.size, version: before }
  }
  const prefix = options.prefixOfGrowing ? grownPrefix(full) : undefined
  if (prefix === undefined) throw changedWhileRead(full)
  return prefix
}

/**
 * A file of up to WHOLE_FILE_BYTES without holes (most of an upper), read
 * whole through one descriptor: its fstat before (or `known`, the walk's
 * lstat of it) and after the read stand for two stats of its path (the
 * descriptor is the inode read, renamed or not).
 * 'large' for any other file, 'changed' when it changed while read.
 */
function readSmallFile(full: BytePath, holes: boolean, known: EntryStat | undefined): StableFile | 'large' | 'changed' {
  let fd = -1
  try {
    const opened = openNoFollow(full)
    if (opened === undefined) return 'changed'
    fd = opened
    const before = known ?? regularVersionOf(fs.fstatSync(fd, { bigint: true }))
    if (before === undefined) return 'changed'
    if (before.size > WHOLE_FILE_BYTES || (holes && before.blocks * 512 < before.size)) return 'large'
    const content = Buffer.allocUnsafe(before.size)
    for (let got = 0; got < content.length;) {
      const count = fs.readSync(fd, content, got, content.length - got, got)
      if (count === 0) return 'changed'
      got += count
    }
    if (!sameFileVersion(before, versionOf(fs.fstatSync(fd, { bigint: true })))) return 'changed'
    // Hashed when asked: a backup archives the bytes, only a copy-up's firmware twin needs its sha256.
    let sha256: string | undefined
    return {
      get sha256() {
        return (sha256 ??= createHash('sha256').update(content).digest('hex'))
      },
      size: content.length,
      chunks: () => [content],
      version: before,
    }
  } catch (error) {
    // pread(2) of a FIFO put at the name since the walk.
    if ((error as NodeJS.ErrnoException).code === 'ESPIPE') return 'changed'
    throw fromNodeError(error, 'read', showBytes(full))
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

/** One buffer for every firmware file hashed (sha256OfFirmwareFile): reads never overlap. */
let firmwareChunk: Buffer | undefined

/**
 * The sha256 of a firmware file: open, read to its end, close. No stat before
 * and after as readStableFile takes (two of its five calls): a firmware
 * layer is read-only, and overlayfs leaves a lower changed under a mount
 * undefined anyway.
 */
export function sha256OfFirmwareFile(full: BytePath): string {
  let fd = -1
  try {
    fd = fs.openSync(kernelPath(full), 'r')
    const hash = createHash('sha256')
    const chunk = (firmwareChunk ??= Buffer.allocUnsafe(CHUNK))
    for (let got = fs.readSync(fd, chunk, 0, CHUNK, null); got > 0; got = fs.readSync(fd, chunk, 0, CHUNK, null))
      hash.update(chunk.subarray(0, got))
    return hash.digest('hex')
  } catch (error) {
    throw fromNodeError(error, 'read', showBytes(full))
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

/**
 * The first `size` bytes of a file that had that size, hashed, then streamed and checked against the hash:
 * unchanged across two reads while only bytes past them were added. Undefined unless it grew (a file rewritten in place is no log).
 */
function grownPrefix(full: BytePath): StableFile | undefined {
  const before = versionAt(full)
  if (before === undefined) return undefined
  const hash = createHash('sha256')
  for (const chunk of fileChunks(full, [[0, before.size]])) hash.update(chunk)
  const sha256 = hash.digest('hex')
  const after = versionAt(full)
  if (after === undefined || after.ino !== before.ino || after.size <= before.size) return undefined
  return {
    sha256,
    size: before.size,
    prefix: before.size,
    version: before,
    *chunks() {
      const again = createHash('sha256')
      for (const chunk of fileChunks(full, [[0, before.size]])) {
        again.update(chunk)
        yield chunk
      }
      if (again.digest('hex') !== sha256) throw changedWhileRead(full)
    },
  }
}

/** The data regions of a file, or undefined when it has no hole. */
function holeMap(full: BytePath, size: number): Region[] | undefined {
  let fd = -1
  try {
    fd = openNoFollow(full) ?? -1
    if (fd < 0) throw changedWhileRead(full)
    const regions = dataRegions(fd, size, kernelPath(full))
    return regions.length === 1 && regions[0]?.[0] === 0 && regions[0][1] === size ? undefined : regions
  } catch (error) {
    throw fromNodeError(error, 'read', showBytes(full))
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

/** The data regions of a file: hashed in one pass, then read again as they are handed over (as hashFile). */
function readRegions(full: BytePath, regions: Region[]): Omit<StableFile, 'size' | 'version'> {
  const hash = createHash('sha256')
  for (const chunk of fileChunks(full, regions)) hash.update(chunk)
  const sha256 = hash.digest('hex')
  return {
    sha256,
    regions,
    *chunks() {
      const again = createHash('sha256')
      for (const chunk of fileChunks(full, regions)) {
        again.update(chunk)
        yield chunk
      }
      if (again.digest('hex') !== sha256) throw changedWhileRead(full)
    },
  }
}

function hashFile(full: BytePath): Omit<StableFile, 'size' | 'version'> {
  const hash = createHash('sha256')
  for (const chunk of fileChunks(full)) hash.update(chunk)
  const sha256 = hash.digest('hex')
  return {
    sha256,
    *chunks() {
      const again = createHash('sha256')
      for (const chunk of fileChunks(full)) {
        again.update(chunk)
        yield chunk
      }
      if (again.digest('hex') !== sha256) throw changedWhileRead(full)
    },
  }
}

/** A file's bytes to its end, or only those of `regions`; a region cut short (the file shrank) is a change. */
function* fileChunks(full: BytePath, regions?: Region[]): Generator<Buffer> {
  let fd = -1
  try {
    fd = openNoFollow(full) ?? -1
    if (fd < 0) throw changedWhileRead(full)
    if (regions === undefined) {
      for (;;) {
        const chunk = Buffer.allocUnsafe(CHUNK)
        const got = fs.readSync(fd, chunk, 0, CHUNK, null)
        if (got === 0) return
        // A large file copied at boot (the RAM fill) is work the shim's timer must see.
        reportProgress()
        yield chunk.subarray(0, got)
      }
    }
    for (const [offset, length] of regions)
      for (let done = 0; done < length;) {
        const chunk = Buffer.allocUnsafe(Math.min(CHUNK, length - done))
        const got = fs.readSync(fd, chunk, 0, chunk.length, offset + done)
        if (got === 0) throw changedWhileRead(full)
        done += got
        yield chunk.subarray(0, got)
      }
  } catch (error) {
    throw fromNodeError(error, 'read', showBytes(full))
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

/** What tells two versions of a file apart, from an fstat or from a walk's lstat (EntryStat). */
export type FileVersion = Pick<EntryStat, 'size' | 'blocks' | 'mtimeNs' | 'ctimeNs' | 'ino'>

/** The version of the regular file at `full`, or undefined when another entry (a symlink, a FIFO) was put at its name. */
function versionAt(full: BytePath): FileVersion | undefined {
  const stat = statEntry(full)
  if (stat === undefined) throw new SysError('ENOENT', 'stat', showBytes(full))
  return stat.type === 'file' ? stat : undefined
}

/** versionOf a file's fstat, or undefined when it is not a regular file (another entry put at its name). */
function regularVersionOf(stat: fs.BigIntStats): FileVersion | undefined {
  return stat.isFile() ? versionOf(stat) : undefined
}

/** Node's inode number is signed, statx's (EntryStat's) unsigned: both read unsigned. */
function versionOf(stat: fs.BigIntStats): FileVersion {
  const { mtimeNs, ctimeNs } = stat
  return { size: Number(stat.size), blocks: Number(stat.blocks), mtimeNs, ctimeNs, ino: BigInt.asUintN(64, stat.ino) }
}

function sameFileVersion(a: FileVersion, b: FileVersion): boolean {
  return a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs && a.ino === b.ino
}

function changedWhileRead(full: BytePath): OvrootError {
  return new OvrootError(
    'ECHANGED',
    ExitCode.io,
    `${showBytes(full)} changed while it was read, twice; back up when it is not being written (or stop the service writing it)`,
  )
}

/**
 * Creates entries under a directory that the caller made and that nothing
 * else writes: every file is created with O_EXCL|O_NOFOLLOW, so an existing
 * name, or a symlink in its place, is an error, never a path followed.
 * Directory metadata is applied last (adding children changes a directory's
 * mtime), deepest first.
 */
export class EntryWriter {
  /**
   * With `flags`, inode flags are set once everything else is written (see finish). With `zeroPagesAsHoles`,
   * copy() leaves a page of zeros in a file whose source showed no holes a hole: JFFS2 and UBIFS store
   * holes but report none (st_blocks is the length, SEEK_DATA finds data everywhere), and the RAM fill
   * must not turn a sparse file on the flash into that many bytes of RAM. A hole reads as the same zeros.
   */
  constructor(private readonly options: { flags: boolean; zeroPagesAsHoles?: boolean } = { flags: false }) {}

  /** Set by copy() for a file whose zero pages stay holes. */
  private skipZeroPages = false

  private readonly flagged: { full: BytePath; entry: UpperEntry }[] = []
  /** Entries whose inode flags the filesystem could not hold. */
  readonly flagsNotKept: BytePath[] = []
  private fd = -1
  private current: { full: BytePath; entry: UpperEntry } | undefined
  /** Where the next data byte goes: a file with holes is written region by region, its holes never. */
  private place = { region: 0, within: 0 }
  private readonly dirs: { full: BytePath; entry: UpperEntry }[] = []

  begin(full: BytePath, entry: UpperEntry, linkTargetFull?: BytePath): void {
    const at = kernelPath(full)
    try {
      switch (entry.type) {
        case 'dir':
          if (entry.path !== '.') fs.mkdirSync(at, { mode: 0o700 })
          this.dirs.push({ full, entry })
          this.noteFlags(full, entry)
          return
        case 'file':
          this.fd = fs.openSync(
            at,
            fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW,
            0o600,
          )
          if (entry.holeSize !== undefined) fs.ftruncateSync(this.fd, entry.holeSize)
          // Its length first: what is not written stays a hole.
          if (entry.regions !== undefined) fs.ftruncateSync(this.fd, entry.size)
          this.place = { region: 0, within: 0 }
          break
        case 'symlink':
          fs.symlinkSync(kernelPath(entry.linkTarget ?? ''), at)
          break
        case 'hardlink':
          fs.linkSync(kernelPath(linkTargetFull ?? ''), at)
          return
        case 'char':
        case 'block':
        case 'fifo':
          makeNode(at, entry.type, 0o600, entry.devMajor, entry.devMinor)
          break
      }
    } catch (error) {
      throw fromNodeError(error, 'create', showBytes(full))
    }
    this.current = { full, entry }
  }

  /**
   * Create `full` as a copy of `entry`, a file's data read from `source` (readStableFile, and only its data
   * regions: holes stay holes). The one copy of an upper entry that the RAM fill, a sync's staging and an
   * upgrade's saved copies share; answers the file as read. `metadataOf` gives the entry whose mode, owner,
   * times and xattrs go with the bytes read (entryOfRead), where the source may have changed since `entry`
   * was read.
   */
  copy(
    full: BytePath,
    entry: UpperEntry,
    source: BytePath,
    options: {
      linkTargetFull?: BytePath
      prefixOfGrowing?: boolean
      metadataOf?: (file: StableFile) => UpperEntry
    } = {},
  ): StableFile | undefined {
    const file =
      entry.type === 'file' && entry.holeSize === undefined
        ? readStableFile(source, { holes: true, prefixOfGrowing: options.prefixOfGrowing === true })
        : undefined
    // Written as one region (its length set first, then each page at its place): what is skipped stays a hole.
    this.skipZeroPages = file !== undefined && file.regions === undefined && this.options.zeroPagesAsHoles === true
    const regions = this.skipZeroPages ? [[0, file?.size ?? 0] as Region] : file?.regions
    const written = file !== undefined && options.metadataOf ? options.metadataOf(file) : entry
    this.begin(full, file ? { ...written, size: file.size, regions } : written, options.linkTargetFull)
    if (file) for (const chunk of file.chunks()) this.data(chunk)
    this.end()
    this.skipZeroPages = false
    return file
  }

  /** All of chunk: write(2) may take part of it (a filesystem nearly full), and the next write then says why. */
  data(chunk: Buffer): void {
    try {
      for (let written = 0; written < chunk.length;) {
        const [length, position] = this.nextWrite(chunk.length - written)
        const [zeros, run] =
          this.skipZeroPages && position !== null ? pageRun(chunk, written, position, length) : [false, length]
        if (zeros) {
          this.place.within += run
          written += run
          continue
        }
        const count = fs.writeSync(this.fd, chunk, written, run, position)
        // A write of nothing would repeat forever (boot's RAM fill is in this loop): as good as a full filesystem.
        if (count === 0) throw new SysError('ENOSPC', 'write', this.current?.full ?? '')
        this.place.within += count
        written += count
      }
    } catch (error) {
      throw fromNodeError(error, 'write', showBytes(this.current?.full ?? ''))
    }
  }

  /** How much of `length` bytes to write, and where: all at the current position, or what the current region of a file with holes still takes, at its place. */
  private nextWrite(length: number): [length: number, position: number | null] {
    const regions = this.current?.entry.regions
    if (regions === undefined) return [length, null]
    const { place } = this
    for (let region = regions[place.region]; region !== undefined; region = regions[place.region]) {
      const [offset, size] = region
      if (place.within < size) return [Math.min(length, size - place.within), offset + place.within]
      place.region++
      place.within = 0
    }
    // The reader hands over exactly the regions' bytes: more is a caller's error.
    throw new SysError('EFBIG', 'write', this.current?.full ?? '')
  }

  end(): void {
    const current = this.current
    this.current = undefined
    if (this.fd >= 0) {
      // A file's metadata through the descriptor it was written by: no path looked up three more times.
      try {
        if (current) applyMetadataOf(this.fd, current.full, current.entry)
      } finally {
        fs.closeSync(this.fd)
        this.fd = -1
      }
    } else if (current) applyMetadata(current.full, current.entry)
    if (current) this.noteFlags(current.full, current.entry)
  }

  private noteFlags(full: BytePath, entry: UpperEntry): void {
    if (this.options.flags && entry.flags !== undefined && entry.flags !== 0) this.flagged.push({ full, entry })
  }

  /** Directory metadata, once everything is in place. */
  finish(): void {
    for (const { full, entry } of this.dirs.reverse()) applyMetadata(full, entry)
    this.dirs.length = 0
    // Last: an immutable directory takes no more children, an append-only file no rewrite.
    for (const { full, entry } of this.flagged)
      if (!applyFlags(full, entry.flags ?? 0)) this.flagsNotKept.push(entry.path)
    this.flagged.length = 0
  }

  /** Close what is open after an error (the caller removes what was written). */
  abandon(): void {
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = -1
  }
}

const PAGE = 4096
const ZERO_PAGE = Buffer.alloc(PAGE)

/**
 * The pages from `offset` of `chunk` (at file position `position`, at most `length` bytes) that are
 * all zeros, or all hold data: whether they are zeros, and their length.
 */
function pageRun(chunk: Buffer, offset: number, position: number, length: number): [zeros: boolean, length: number] {
  let run = 0
  let zeros: boolean | undefined
  while (run < length) {
    const size = Math.min(length - run, PAGE - ((position + run) % PAGE))
    const zero = chunk.compare(ZERO_PAGE, 0, size, offset + run, offset + run + size) === 0
    if (zeros !== undefined && zero !== zeros) break
    zeros = zero
    run += size
  }
  return [zeros === true, run]
}

/** Give `full` the metadata of `entry`: owner, mode, exactly its xattrs, mtime; what is already so is not written again. */
export function replaceMetadata(full: BytePath, entry: UpperEntry): void {
  const current = readEntry(full, entry.path, '')
  if (current === 'socket') return
  const wanted = new Map(entry.xattrs.map(([name, value]) => [name, value]))
  const present = new Map(current.xattrs.map(([name, value]) => [name, value]))
  const at = kernelPath(full)
  try {
    for (const name of present.keys()) if (!wanted.has(name)) removeXattr(at, name)
    // A new owner clears set-id bits and capabilities: then everything is set again.
    if (current.uid !== entry.uid || current.gid !== entry.gid) {
      applyMetadata(full, entry)
      return
    }
    if (current.mode !== entry.mode) fs.chmodSync(at, entry.mode)
    for (const [name, value] of wanted) if (!present.get(name)?.equals(value)) setXattr(at, name, value)
    if (current.mtimeNs !== entry.mtimeNs || current.atimeNs !== entry.atimeNs)
      setTimes(at, entry.atimeNs, entry.mtimeNs)
  } catch (error) {
    throw fromNodeError(error, 'set metadata of', showBytes(full))
  }
}

/**
 * mtime (and atime) from a sync's record, to the microsecond, not following a symlink. Set half a
 * microsecond high: the double it travels in is off by a few hundred
 * nanoseconds either way, and the kernel truncates, so the microsecond comes
 * out exact.
 */
export function setModificationTime(full: BytePath, mtime: number): void {
  const seconds = Math.round(mtime * 1e6) / 1e6 + 5e-7
  fs.lutimesSync(kernelPath(full), seconds, seconds)
}

/** Set a file's or directory's inode flags; false when its filesystem has none. */
export function applyFlags(full: BytePath, flags: number): boolean {
  let fd = -1
  try {
    fd = fs.openSync(kernelPath(full), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK)
    return setInodeFlags(fd, flags, kernelPath(full))
  } catch (error) {
    throw fromNodeError(error, 'set inode flags of', showBytes(full))
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

/** applyMetadata for a file open as `fd`, in the same order. */
function applyMetadataOf(fd: number, full: BytePath, entry: UpperEntry): void {
  try {
    fs.fchownSync(fd, entry.uid, entry.gid)
    fs.fchmodSync(fd, entry.mode)
    const target = kernelPath(full)
    for (const [name, value] of entry.xattrs) setXattrOf(fd, name, value, target)
    setTimesOf(fd, entry.atimeNs, entry.mtimeNs, target)
  } catch (error) {
    throw fromNodeError(error, 'set metadata of', showBytes(full))
  }
}

/** Owner before mode (chown clears set-id bits), capabilities after chown (it clears them too), times last. */
function applyMetadata(full: BytePath, entry: UpperEntry): void {
  const at = kernelPath(full)
  try {
    fs.lchownSync(at, entry.uid, entry.gid)
    if (entry.type !== 'symlink') fs.chmodSync(at, entry.mode)
    for (const [name, value] of entry.xattrs) setXattr(at, name, value)
    setTimes(at, entry.atimeNs, entry.mtimeNs)
  } catch (error) {
    throw fromNodeError(error, 'set metadata of', showBytes(full))
  }
}
