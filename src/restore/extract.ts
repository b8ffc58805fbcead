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
import { type Transform, Writable } from 'node:stream'
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
import { isIdentityXattr } from '../overlay/identity.js'
import { OverlayXattrs, type XattrNamespace } from '../overlay/xattrs.js'
import { PathRules } from './rules.js'
import { counted } from '../plural.js'

/** What an entry costs on flash beyond its data (rounded up to 4 KiB blocks): a log-structured filesystem's inode and directory nodes. */
const ENTRY_BYTES = 256
/** Per xattr beyond its name and value: the node header a log-structured filesystem writes for it. */
const XATTR_BYTES = 64

/**
 * What an entry needs on flash: its metadata, its xattrs (names and values:
 * a capability, an ACL, a 64 KiB user xattr are written too), a long symlink
 * target, and its data in 4 KiB blocks (a file with holes, its data regions').
 */
function neededBytes(entry: TarEntry): number {
  const xattrs = entry.xattrs.reduce((sum, [name, value]) => sum + XATTR_BYTES + name.length + value.length, 0)
  return ENTRY_BYTES + xattrs + (entry.linkTarget?.length ?? 0) + allocatedBytes(entry)
}

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
  /**
   * Leave the filesystem identity xattrs (overlay/identity.ts) out of the
   * staged entries, in this namespace unless the backup's header names one:
   * the archive's belong to the filesystem it was taken from. Left out as
   * they are written, not removed in a second walk of the staged upper.
   */
  dropIdentity?: XattrNamespace
}

export interface ExtractResult {
  kind: ArchiveKind
  header: BackupHeader | undefined
  entries: number
  /** Bytes of file data, and a conservative estimate of what the entries need on flash (before any headroom). */
  dataBytes: number
  neededBytes: number
  /** Files the user changed that the running firmware changed too (ovroot archives from other firmware). */
  conflicts: string[]
  /** Entries whose inode flags (chattr) were not kept: the staging filesystem has none, or the archive names flags ovroot does not keep. */
  flagsNotKept: string[]
}

/** One line on stderr for inode flags that did not come back: never dropped without a word. */
export function reportFlagsNotKept(result: ExtractResult): void {
  const paths = result.flagsNotKept
  if (paths.length === 0) return
  const more = paths.length > 5 ? ` and ${paths.length - 5} more` : ''
  process.stderr.write(
    `ovroot: inode flags (chattr) not kept on ${counted(paths.length, 'entry', 'entries')} (the flash's filesystem has none, or they are not append-only, immutable or no-dump): ${paths.slice(0, 5).join(' ')}${more}\n`,
  )
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
    if (encrypted && options.passphrase) await pipeline(source, new Decrypt(options.passphrase), gunzip(), sink)
    else if (magic[0] === 0x1f && magic[1] === 0x8b) await pipeline(source, gunzip(), sink)
    else await pipeline(source, sink)
  } catch (error) {
    handler.abandon()
    throw asArchiveError(error, file)
  }
  return handler.result()
}

/**
 * An archive of small files inflates about 50 times: with zlib's default 16
 * KiB of output per call, each 64 KiB read took some 200 round trips to
 * zlib's thread. 256 KiB: the whole inflation measured a quarter of the CPU
 * time (0.035 s against 0.14-0.18 s on the benchmark's 47 MiB).
 */
const gunzip = (): Transform => createGunzip({ chunkSize: 1 << 18 })

function asArchiveError(error: unknown, file: string): OvrootError {
  if (error instanceof OvrootError) return error
  const code = (error as { code?: string }).code ?? ''
  if (code.startsWith('Z_') || code === 'ERR_STREAM_PREMATURE_CLOSE')
    return corrupt(`${file}: the compressed stream is damaged or truncated (${(error as Error).message})`)
  return corrupt(`${file}: ${(error as Error).message}`)
}

/** What a file's data takes on flash, in 4 KiB blocks: a file with holes only its data regions' blocks. */
function allocatedBytes(entry: TarEntry): number {
  const blocks = (from: number, to: number): number => Math.ceil(to / 4096) - Math.floor(from / 4096)
  const regions = entry.regions ?? [[0, entry.size]]
  return regions.reduce((sum, [offset, length]) => sum + (length > 0 ? blocks(offset, offset + length) : 0), 0) * 4096
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
  private readonly flagsNotKept: string[] = []
  /** The staging directory as bytes: entries' paths are bytes (names.ts `BytePath`). */
  private readonly staging: BytePath | undefined

  constructor(private readonly options: ExtractOptions) {
    this.staging = options.staging === undefined ? undefined : bytesOf(options.staging)
    this.writer = options.staging === undefined ? undefined : new EntryWriter({ flags: true })
    this.reader = new PaxReader({
      globalComment: (comment, digest) => this.globalComment(comment, digest),
      entry: (entry) => this.entry(entry),
      data: (chunk) => this.data(chunk),
      end: () => this.end(),
    })
  }

  private globalComment(comment: string, digestBefore: string): void {
    const record = decodeGlobal(comment)
    if (record.kind === 'header') {
      if (this.kind !== undefined) throw corrupt('a second backup header inside the archive')
      this.kind = 'ovroot'
      this.header = record.header
    } else if (record.kind === 'trailer') {
      if (this.kind !== 'ovroot' || this.trailerEntries !== undefined)
        throw corrupt('a backup trailer without its header')
      // Version 2: one digest over every entry's bytes, checked before anything is committed.
      if ((this.header?.version ?? 1) >= 2 && record.trailer.sha256 !== digestBefore)
        throw corrupt(
          record.trailer.sha256 === undefined
            ? "the backup's trailer has no digest of its entries: the backup is damaged"
            : "the backup's entries do not match their recorded sha256 (names, metadata or contents): the backup is damaged",
        )
      this.trailerEntries = record.trailer.entries
    }
  }

  private entry(entry: TarEntry): void {
    if (this.trailerEntries !== undefined)
      throw corrupt(`archive entry ${showBytes(entry.path)} after the backup's trailer`)
    if (!this.rules) {
      this.kind ??= entry.path === '.' ? 'upper' : 'sysupgrade'
      const sysupgrade = this.kind === 'sysupgrade'
      this.rules = new PathRules({
        implicitParents: sysupgrade,
        plainFiles: sysupgrade,
        rootLength: Buffer.byteLength(this.options.staging ?? stagedPath(flashLayout(defaultConfig()))),
        ...(sysupgrade ? { existing: (path: string) => this.options.view(path)?.kind } : {}),
      })
    }
    for (const parent of this.rules.admit(entry)) this.writeImplicitDirectory(parent)
    const sums = decodeSums(entry.comment)
    // Version 1 carried a sha256 per file instead of the one over all entries.
    const perFile = this.kind === 'ovroot' && (this.header?.version ?? 1) < 2
    if (perFile && entry.type === 'file' && entry.holeSize === undefined && !sums?.sha256) {
      throw corrupt(`archive entry ${showBytes(entry.path)}: a file without its recorded sha256; the backup is damaged`)
    }
    if (entry.otherFlags) this.flagsNotKept.push(`/${showBytes(entry.path)}`)
    // The upper's own directory immutable would stop the overlay from working: reported, not set.
    if (entry.flags !== undefined && entry.path === '.') {
      this.flagsNotKept.push('/')
      entry = { ...entry, flags: undefined }
    }
    const checked = (perFile && sums?.sha256 !== undefined) || this.comparesWithFirmware(sums)
    this.current = { entry, hash: checked ? createHash('sha256') : undefined, sums }
    this.neededBytes += neededBytes(entry)
    // A sysupgrade archive's root entry would change the upper's own directory: its files are what it carries.
    if (this.writer && this.staging !== undefined && !(this.kind === 'sysupgrade' && entry.path === '.')) {
      const linkTarget =
        entry.type === 'hardlink' ? under(this.staging, (entry.linkTarget ?? '').replace(/^(\.\/)+/, '')) : undefined
      this.writer.begin(under(this.staging, entry.path), this.withoutIdentity(entry), linkTarget)
    }
  }

  private identity: OverlayXattrs | undefined

  /** The entry as staged: without the filesystem identity xattrs, when they are dropped. */
  private withoutIdentity(entry: TarEntry): TarEntry {
    const namespace = this.header?.namespace ?? this.options.dropIdentity
    if (namespace === undefined || this.options.dropIdentity === undefined || entry.xattrs.length === 0) return entry
    if (this.identity?.namespace !== namespace) this.identity = new OverlayXattrs(namespace)
    const identity = this.identity
    const xattrs = entry.xattrs.filter(([name]) => !isIdentityXattr(identity, name))
    return xattrs.length === entry.xattrs.length ? entry : { ...entry, xattrs }
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
    const digest = hash?.digest('hex')
    if (sums?.sha256 !== undefined && digest !== undefined && digest !== sums.sha256)
      throw corrupt(
        `archive entry ${showBytes(entry.path)}: its content does not match its recorded sha256; the backup is damaged`,
      )
    // The upgrade's classifier decides: a copy-up whose bytes are its old firmware file's (chmod, touch) is no
    // conflict. A version 2 base is the sha256's first 8 bytes (version 1: all of it): all three are compared so cut.
    const cut = (sha256: string): string => sha256.slice(0, sums?.base?.length)
    if (
      digest !== undefined &&
      sums?.base !== undefined &&
      this.comparesWithFirmware(sums) &&
      classifyContent(cut(digest), sums.base, this.firmwareDigest(entry.path, cut)) === 'conflict'
    )
      this.conflicts.push(`/${showBytes(entry.path)}`)
    if (!(this.kind === 'sysupgrade' && entry.path === '.')) this.writer?.end()
  }

  private firmwareDigest(path: string, cut: (sha256: string) => string): string | undefined {
    const sha256 = this.options.firmwareSha256(path)
    return sha256 === undefined ? undefined : cut(sha256)
  }

  /** A copy-up of other firmware, with its base recorded: its content is classified against this firmware's. */
  private comparesWithFirmware(sums: FileSums | undefined): boolean {
    return sums?.base !== undefined && this.header !== undefined && this.options.checkFirmware(this.header)
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
      flagsNotKept: [...this.flagsNotKept, ...(this.writer?.flagsNotKept ?? []).map((path) => `/${showBytes(path)}`)],
    }
  }
}
