/**
 * `ovroot backup`: the upper as a gzip'd pax archive (optionally encrypted),
 * streamed: memory does not grow with the upper.
 */
import { bytesOf, showBytes } from '../names.js'
import { createHash } from 'node:crypto'
import { hostname } from 'node:os'
import { Readable, type Transform, type TransformOptions } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGzip } from 'node:zlib'
import { Encrypt, readPassphrase } from '../archive/crypt.js'
import {
  BASE_DIGITS,
  encodeHeader,
  encodeSums,
  encodeTrailer,
  FORMAT_VERSION,
  type BackupHeader,
} from '../archive/manifest.js'
import { dataPadding, END_OF_ARCHIVE, entryHeader, globalComment, type TarEntry } from '../archive/pax.js'
import { loadConfig } from '../config/load.js'
import { checkDiffRequest, openDiff, type CheckedDiffRequest } from '../diff/open.js'
import { LeftOut } from '../diff/report.js'
import { ExitCode, usageError, type ExitStatus } from '../errors.js'
import { globToRegExp } from '../glob.js'
import { namespaceForMount, OverlayXattrs } from '../overlay/xattrs.js'
import { openAtomicOutput, openFileIdentity, type FileIdentity } from '../sys/fs.js'
import { entryOfRead, readStableFile, statEntry } from '../sys/entries.js'
import type { EntryStat } from '../sys/types.js'
import { under } from '../upper/entry.js'
import { walkUpper, type WalkOptions } from '../upper/walk.js'
import { VERSION } from '../version.js'
import { firmwareIdentity, firmwareView } from './firmware.js'
import { upperDir } from '../state/flash.js'
import { counted } from '../plural.js'

export interface BackupOptions {
  configFile: string | undefined
  /** A file, or '-' for standard output. */
  output: string
  upper: string | undefined
  lowers: string[] | undefined
  changesOnly: boolean
  exclude: string[]
  passphraseFile: string | undefined
}

export async function runBackup(options: BackupOptions): Promise<ExitStatus> {
  const config = loadConfig(options.configFile)
  if (options.exclude.some((pattern) => !pattern.startsWith('/')))
    throw usageError('--exclude takes absolute paths or globs of the merged view, such as /etc/ssl/*.pem')
  if (options.output === '-' && process.stdout.isTTY)
    throw usageError('a backup is binary: redirect standard output to a file, or use -o FILE')
  const request = checkDiffRequest({
    upper: options.upper ?? upperDir(config),
    lowers: options.lowers ?? config.overlay.lower,
    namespace: options.upper === undefined ? namespaceForMount(config.overlay.options) : undefined,
    all: false,
    paths: [],
  })
  const passphrase = options.passphraseFile === undefined ? undefined : readPassphrase(options.passphraseFile)
  const header: BackupHeader = {
    format: 'ovroot-backup',
    version: FORMAT_VERSION,
    ovroot: VERSION,
    created: new Date().toISOString(),
    host: hostname(),
    firmware: firmwareIdentity(request.lowers),
    namespace: request.namespace,
    changesOnly: options.changesOnly,
  }
  // With --changes-only: an entry the live upper lost or replaced while it was compared is named and left out.
  const leftOut = new LeftOut('the backup', 'backup --changes-only')
  const include = inclusion(request, options, leftOut)
  const output = options.output === '-' ? undefined : openAtomicOutput(options.output, 0o600)
  const own = ownOutput(request.upper, options.upper === undefined, output?.identity ?? openFileIdentity(1))
  const progress = new Progress()
  const source = Readable.from(archive(request, header, { include, skip: own }, progress), { objectMode: false })
  const write = (destination: NodeJS.WritableStream): Promise<void> =>
    passphrase
      ? pipeline(source, compressor(), new Encrypt(passphrase), destination)
      : pipeline(source, compressor(), destination)
  if (output === undefined) {
    await write(process.stdout)
  } else {
    try {
      await write(output.stream)
      output.commit()
    } catch (error) {
      output.abort()
      throw error
    }
  }
  progress.done()
  return leftOut.status(ExitCode.ok)
}

/**
 * The archive being written, when it is written into the upper it backs up
 * (`-o /root/b.tgz`, or standard output redirected there): it must not archive
 * itself. Its inode number is the upper's: written into the upper directory
 * the devices match too; written through the mounted overlay (the live
 * device), fstat reports the overlay's device and the upper file's inode
 * number, so there the merged root's device stands for the upper's.
 */
function ownOutput(
  upper: string,
  live: boolean,
  output: FileIdentity | undefined,
): ((path: string, stat: EntryStat) => boolean) | undefined {
  if (output === undefined) return undefined
  const devices = [statEntry(bytesOf(upper))?.dev, live ? statEntry('/')?.dev : undefined]
  if (!devices.includes(output.dev)) return undefined
  return (_path, stat) => stat.type === 'file' && stat.ino === output.ino
}

/** The archive: the global header, the entries, then the trailer with their count and the sha256 of their bytes. */
function* archive(
  request: CheckedDiffRequest,
  header: BackupHeader,
  select: Pick<WalkOptions, 'include' | 'skip'>,
  progress: Progress,
): Generator<Buffer> {
  yield globalComment(encodeHeader(header))
  const digest = createHash('sha256')
  let entries = 0
  // Hashed as gzip gets them: a few updates per 64 KiB, not three per entry.
  for (const bytes of coalesce(entryStream(request, select, progress, () => entries++))) {
    digest.update(bytes)
    yield bytes
  }
  yield globalComment(encodeTrailer({ entries, sha256: digest.digest('hex') }))
  yield END_OF_ARCHIVE
}

function* entryStream(
  request: CheckedDiffRequest,
  select: Pick<WalkOptions, 'include' | 'skip'>,
  progress: Progress,
  counted: () => void,
): Generator<Buffer> {
  const xattrs = new OverlayXattrs(request.namespace)
  const firmware = firmwareView(request.lowers, request.namespace)
  const upper = bytesOf(request.upper)
  const stubXattr = xattrs.name('metacopy')
  const walk = walkUpper(upper, {
    stubXattr,
    flags: true,
    ...select,
    skipped: (path, why) => process.stderr.write(`ovroot: skipped /${showBytes(path)}: ${why} cannot be archived\n`),
  })
  for (const entry of walk) {
    counted()
    if (entry.type === 'file' && entry.holeSize === undefined) {
      // Holes stay holes: only a file's data regions are read and archived (GNU sparse 1.0).
      const full = under(upper, entry.path)
      const file = readStableFile(full, { holes: true, stat: entry.stat })
      const base = firmware.sha256(entry.path)?.slice(0, BASE_DIGITS)
      const archived: TarEntry = { ...entryOfRead(full, entry, file, stubXattr, true), size: file.size }
      if (file.regions) archived.regions = file.regions
      if (base) archived.comment = encodeSums({ base })
      yield entryHeader(archived)
      for (const chunk of file.chunks()) {
        progress.add(chunk.length)
        yield chunk
      }
      yield dataPadding(archived)
    } else yield entryHeader(entry)
    progress.entry()
  }
}

/**
 * gzip runs on a thread of its own: with room for a few chunks in hand, the
 * entries are read while the last ones are compressed (with the default 16
 * KiB, each 64 KiB chunk waited for its compression). memLevel 9: zlib's
 * largest hash table, measured faster and smaller on an upper's headers.
 */
const compressor = (): Transform => createGzip({ memLevel: 9, ...inHand })
// Node hands a zlib stream's options to its Transform; the zlib option types leave them out.
const inHand: Pick<TransformOptions, 'writableHighWaterMark'> = { writableHighWaterMark: 1 << 20 }

/**
 * Headers, paddings and small files are tiny buffers; handed to gzip one by
 * one, each is a round trip to zlib's thread (measured: half the backup's
 * time idle or in per-chunk overhead). They travel in chunks of 64 KiB.
 */
function* coalesce(buffers: Iterable<Buffer>, size = 64 * 1024): Generator<Buffer> {
  let pending: Buffer[] = []
  let length = 0
  for (const buffer of buffers) {
    pending.push(buffer)
    length += buffer.length
    if (length >= size) {
      yield Buffer.concat(pending, length)
      pending = []
      length = 0
    }
  }
  if (length > 0) yield Buffer.concat(pending, length)
}

/** --exclude, and with --changes-only what ovroot diff reports plus the directories above it. */
function inclusion(request: CheckedDiffRequest, options: BackupOptions, leftOut: LeftOut): (path: string) => boolean {
  // Patterns are text, paths are bytes: a pattern is matched as the bytes of its UTF-8.
  const excluded = options.exclude.map((pattern) => globToRegExp(bytesOf(pattern.replace(/(.)\/+$/, '$1'))))
  const isExcluded = (path: string): boolean => excluded.some((pattern) => pattern.test(`/${path}`))
  if (!options.changesOnly) return (path) => !isExcluded(path)
  const wanted = new Set<string>()
  openDiff(request).run((change) => {
    for (let path = change.path.slice(1); path !== ''; path = path.slice(0, Math.max(0, path.lastIndexOf('/')))) {
      if (wanted.has(path)) break
      wanted.add(path)
    }
  }, leftOut.note)
  return (path) => wanted.has(path) && !isExcluded(path)
}

/** One line on a terminal, rewritten at most five times a second; nothing when stderr is not one. */
class Progress {
  private entries = 0
  private bytes = 0
  private last = 0
  private readonly shown = process.stderr.isTTY === true

  add(bytes: number): void {
    this.bytes += bytes
  }

  entry(): void {
    this.entries++
    const now = Date.now()
    if (!this.shown || now - this.last < 200) return
    this.last = now
    process.stderr.write(`\rovroot: ${this.summary()} read`)
  }

  done(): void {
    if (this.shown && this.last > 0) process.stderr.write(`\rovroot: ${this.summary()} read, done\n`)
  }

  private summary(): string {
    return `${counted(this.entries, 'entry', 'entries')}, ${(this.bytes / 1048576).toFixed(1)} MiB`
  }
}
