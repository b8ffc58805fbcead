/**
 * Reading a backup (or an OpenWrt sysupgrade archive) in one streaming pass:
 * decrypt, decompress, parse, check every entry against the path rules and
 * every file against its recorded sha256, and, when given a staging
 * directory, write the entries there and nowhere else. Any failure is one
 * error naming the first bad entry; the caller removes the staging directory.
 */
import { classifyContent } from '../upgrade/classify.js'
import { bytesOf, showBytes, type BytePath } from '../names.js'
import { createHash, type Hash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGunzip } from 'node:zlib'
import { Decrypt, ENCRYPTED_MAGIC } from '../archive/crypt.js'
import { decodeGlobal, decodeSums, type BackupHeader, type FileSums } from '../archive/manifest.js'
import { corrupt, PaxReader, type TarEntry } from '../archive/pax.js'
import { defaultConfig } from '../config/schema.js'
import { ExitCode, OvrootError } from '../errors.js'
import { flashLayout, stagedPath } from '../state/flash.js'
import { readAt } from '../sys/fs.js'
import { EntryWriter } from '../sys/entries.js'
import type { EntryKind, UpperEntry } from '../sys/types.js'
import { under } from '../upper/entry.js'
import { PathRules } from './rules.js'

/** What an entry costs on flash beyond its data (rounded up to 4 KiB blocks): a log-structured filesystem's inode and directory nodes. */
const ENTRY_BYTES = 256

/**
 * ovroot: a backup with its manifest. upper: another tar's archive of a whole
 * upper (its first entry is the root directory), restored the same way but
 * verified only as far as its compression's checksum goes. sysupgrade:
 * OpenWrt's `sysupgrade -b`, files relative to `/` that land on the upper.
 */
export type ArchiveKind = 'ovroot' | 'upper' | 'sysupgrade'

export interface ExtractOptions {
  passphrase: Buffer | undefined
  /** Where to write the entries; without it the archive is only verified (path lengths as if staged on a default device's flash). */
  staging: string | undefined
  /** The view a sysupgrade archive's files land on: what stands at a path, and a directory's metadata. */
  view(path: string): { kind: EntryKind; mode: number; uid: number; gid: number } | undefined
  /** The sha256 the running firmware's file at a path has (undefined when there is none). */
  firmwareSha256(path: string): string | undefined
  /** Whether to compare copied-up files with the firmware (the backup's firmware differs from this one). */
  checkFirmware(header: BackupHeader): boolean
}

export interface ExtractResult {
  kind: ArchiveKind
  header: BackupHeader | undefined
  entries: number
  /** Bytes of file data, and a conservative estimate of what they need on flash. */
  dataBytes: number
  neededBytes: number
  /** Files the user changed that the running firmware changed too (ovroot archives from other firmware). */
  conflicts: string[]
}

/** The first bytes tell an encrypted backup, a gzip'd one, and a bare tar apart. */
export async function extractArchive(file: string, options: ExtractOptions): Promise<ExtractResult> {
  const magic = readAt(file, 0, 8)
  const encrypted = magic.equals(ENCRYPTED_MAGIC)
  if (encrypted && !options.passphrase)
    throw new OvrootError('EPASSPHRASE', ExitCode.usage, `${file} is an encrypted backup: pass --passphrase-file`)
  // A passphrase means the user relies on authentication: a plain archive put in the encrypted one's place must not pass.
  if (!encrypted && options.passphrase)
    throw new OvrootError(
      'ENOTENCRYPTED',
      ExitCode.data,
      `${file} is not an encrypted backup, but --passphrase-file was given: refusing an archive nothing authenticates`,
    )
  const handler = new Extraction(options)
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      try {
        handler.reader.push(chunk)
        done()
      } catch (error) {
        done(error as Error)
      }
    },
    final(done) {
      try {
        handler.reader.close()
        done()
      } catch (error) {
        done(error as Error)
      }
    },
  })
  const source = createReadStream(file)
  try {
    if (encrypted && options.passphrase) await pipeline(source, new Decrypt(options.passphrase), createGunzip(), sink)
    else if (magic[0] === 0x1f && magic[1] === 0x8b) await pipeline(source, createGunzip(), sink)
    else await pipeline(source, sink)
  } catch (error) {
    handler.abandon()
    throw asArchiveError(error, file)
  }
  return handler.result()
}

function asArchiveError(error: unknown, file: string): OvrootError {
  if (error instanceof OvrootError) return error
  const code = (error as { code?: string }).code ?? ''
  if (code.startsWith('Z_') || code === 'ERR_STREAM_PREMATURE_CLOSE')
    return corrupt(`${file}: the compressed stream is damaged or truncated (${(error as Error).message})`)
  return corrupt(`${file}: ${(error as Error).message}`)
}

class Extraction {
  readonly reader: PaxReader
  private readonly writer: EntryWriter | undefined
  private rules: PathRules | undefined
  private kind: ArchiveKind | undefined
  private header: BackupHeader | undefined
  private trailerEntries: number | undefined
  private current: { entry: TarEntry; hash: Hash | undefined; sums: FileSums | undefined } | undefined
  private dataBytes = 0
  private neededBytes = 0
  private readonly conflicts: string[] = []
  /** The staging directory as bytes: entries' paths are bytes (names.ts `BytePath`). */
  private readonly staging: BytePath | undefined

  constructor(private readonly options: ExtractOptions) {
    this.staging = options.staging === undefined ? undefined : bytesOf(options.staging)
    this.writer = options.staging === undefined ? undefined : new EntryWriter()
    this.reader = new PaxReader({
      globalComment: (comment) => this.globalComment(comment),
      entry: (entry) => this.entry(entry),
      data: (chunk) => this.data(chunk),
      end: () => this.end(),
    })
  }

  private globalComment(comment: string): void {
    const record = decodeGlobal(comment)
    if (record.kind === 'header') {
      if (this.kind !== undefined) throw corrupt('a second backup header inside the archive')
      this.kind = 'ovroot'
      this.header = record.header
    } else if (record.kind === 'trailer') {
      if (this.kind !== 'ovroot' || this.trailerEntries !== undefined)
        throw corrupt('a backup trailer without its header')
      this.trailerEntries = record.trailer.entries
    }
  }

  private entry(entry: TarEntry): void {
    if (this.trailerEntries !== undefined)
      throw corrupt(`archive entry ${'${showBytes(entry.path)}'} after the backup's trailer`)
    if (!this.rules) {
      this.kind ??= entry.path === '.' ? 'upper' : 'sysupgrade'
      const sysupgrade = this.kind === 'sysupgrade'
      this.rules = new PathRules({
        implicitParents: sysupgrade,
        rootLength: Buffer.byteLength(this.options.staging ?? stagedPath(flashLayout(defaultConfig()))),
        ...(sysupgrade ? { existing: (path: string) => this.options.view(path)?.kind } : {}),
      })
    }
    for (const parent of this.rules.admit(entry)) this.writeImplicitDirectory(parent)
    const sums = decodeSums(entry.comment)
    if (this.kind === 'ovroot' && entry.type === 'file' && entry.holeSize === undefined && !sums) {
      throw corrupt(
        `archive entry ${'${showBytes(entry.path)}'}: a file without its recorded sha256; the backup is damaged`,
      )
    }
    this.current = { entry, hash: sums ? createHash('sha256') : undefined, sums }
    this.neededBytes += ENTRY_BYTES + Math.ceil(entry.size / 4096) * 4096
    // A sysupgrade archive's root entry would change the upper's own directory: its files are what it carries.
    if (this.writer && this.staging !== undefined && !(this.kind === 'sysupgrade' && entry.path === '.')) {
      const linkTarget =
        entry.type === 'hardlink' ? under(this.staging, (entry.linkTarget ?? '').replace(/^(\.\/)+/, '')) : undefined
      this.writer.begin(under(this.staging, entry.path), entry, linkTarget)
    }
  }

  private data(chunk: Buffer): void {
    this.current?.hash?.update(chunk)
    this.dataBytes += chunk.length
    if (this.current && !(this.kind === 'sysupgrade' && this.current.entry.path === '.')) this.writer?.data(chunk)
  }

  private end(): void {
    const current = this.current
    this.current = undefined
    if (!current) return
    const { entry, hash, sums } = current
    if (hash && sums && hash.digest('hex') !== sums.sha256)
      throw corrupt(
        `archive entry ${'${showBytes(entry.path)}'}: its content does not match its recorded sha256; the backup is damaged`,
      )
    // The upgrade's classifier decides: a copy-up whose bytes are its old firmware file's (chmod, touch) is no conflict.
    if (
      sums?.base &&
      this.header &&
      this.options.checkFirmware(this.header) &&
      classifyContent(sums.sha256, sums.base, this.options.firmwareSha256(entry.path)) === 'conflict'
    )
      this.conflicts.push(`/${showBytes(entry.path)}`)
    if (!(this.kind === 'sysupgrade' && entry.path === '.')) this.writer?.end()
  }

  /** A sysupgrade archive's missing directory, as the view has it (a copy-up keeps the firmware's mode and owner). */
  private writeImplicitDirectory(path: string): void {
    const existing = this.options.view(path)
    const now = BigInt(Date.now()) * 1_000_000n
    const entry: UpperEntry = {
      path,
      type: 'dir',
      mode: existing?.mode ?? 0o755,
      uid: existing?.uid ?? 0,
      gid: existing?.gid ?? 0,
      mtimeNs: now,
      atimeNs: now,
      size: 0,
      devMajor: 0,
      devMinor: 0,
      xattrs: [],
    }
    this.neededBytes += ENTRY_BYTES
    if (this.writer && this.staging !== undefined) this.writer.begin(under(this.staging, path), entry)
  }

  abandon(): void {
    this.writer?.abandon()
  }

  result(): ExtractResult {
    if (!this.rules || !this.kind) throw corrupt('the archive holds no entries')
    if (this.kind === 'ovroot' && this.trailerEntries !== this.rules.count) {
      throw corrupt(
        this.trailerEntries === undefined
          ? 'the backup ends without its trailer: truncated'
          : `the backup's trailer counts ${this.trailerEntries} entries, the archive holds ${this.rules.count}`,
      )
    }
    this.writer?.finish()
    return {
      kind: this.kind,
      header: this.header,
      entries: this.rules.count,
      dataBytes: this.dataBytes,
      neededBytes: this.neededBytes,
      conflicts: this.conflicts,
    }
  }
}
