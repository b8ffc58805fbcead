/**
 * File-system access for the rest of ovroot. Everything that touches the disk
 * goes through here (or libc.ts), so the overlay model stays pure and errors
 * leave as OvrootErrors naming the path.
 */
import * as fs from 'node:fs'
import { fromNodeError, OvrootError, ExitCode } from '../errors.js'
import { listXattrs, getXattr, inodeFlags, InodeFlag, lstat, setInodeFlags } from './libc.js'
import { reportProgress } from './progress.js'
import type { EntryStat, TreeReader } from './types.js'
import { bytePathBuffer as kernelPath, bytesOf, byteString, showBytes, showName, type BytePath } from '../names.js'

const absentErrnos = new Set(['ENOENT', 'ENOTDIR'])

/** lstat that answers undefined for a path that does not exist. */
export const statPath: (path: string | Buffer) => EntryStat | undefined = lstat

/** Names in a system directory (sysfs, ovroot's state), refusing names that are not UTF-8 rather than mangling them; an upper's names are listed by `listNames`. */
export function listDirectory(path: string): string[] {
  let names: string[]
  try {
    names = fs.readdirSync(path)
  } catch (error) {
    throw fromNodeError(error, 'read directory', path)
  }
  for (const name of names) requireUtf8Name(path, name)
  return names
}

/** Names in a directory as bytes (names.ts `BytePath`): what an upper holds, whatever its encoding. */
export function listNames(path: BytePath): BytePath[] {
  try {
    return fs.readdirSync(kernelPath(path), { encoding: 'buffer' }).map(byteString)
  } catch (error) {
    throw fromNodeError(error, 'read directory', showBytes(path))
  }
}

function requireUtf8Name(directory: string, name: string): string {
  if (name.includes('\uFFFD')) {
    throw new OvrootError(
      'EBADNAME',
      ExitCode.data,
      `read directory ${directory}: an entry name is not valid UTF-8; ovroot cannot represent it faithfully`,
    )
  }
  return name
}

function readLinkBytes(path: BytePath): BytePath {
  try {
    return byteString(fs.readlinkSync(kernelPath(path), { encoding: 'buffer' }))
  } catch (error) {
    throw fromNodeError(error, 'readlink', showBytes(path))
  }
}

const CHUNK = 64 * 1024
const chunkA = Buffer.alloc(CHUNK)
const chunkB = Buffer.alloc(CHUNK)

/** Byte-compare two regular files already known to have `size` bytes. */
export function sameContent(pathA: BytePath, pathB: BytePath, size: number): boolean {
  let fdA = -1
  let fdB = -1
  try {
    fdA = openRegular(pathA)
    fdB = openRegular(pathB)
    for (let offset = 0; offset < size; offset += CHUNK) {
      const want = Math.min(CHUNK, size - offset)
      const gotA = fs.readSync(fdA, chunkA, 0, want, offset)
      const gotB = fs.readSync(fdB, chunkB, 0, want, offset)
      if (gotA !== gotB) return false
      if (chunkA.compare(chunkB, 0, gotB, 0, gotA) !== 0) return false
      if (gotA < want) return true
    }
    return true
  } catch (error) {
    throw fromNodeError(error, 'compare', `${showBytes(pathA)} with ${showBytes(pathB)}`)
  } finally {
    if (fdA >= 0) fs.closeSync(fdA)
    if (fdB >= 0) fs.closeSync(fdB)
  }
}

/** The first `limit` bytes of a file (for content diffs and binary detection). */
export function readHead(path: string, limit: number): Buffer {
  return readAt(path, 0, limit)
}

export function readTextFile(path: string): string {
  try {
    return fs.readFileSync(path, 'utf8')
  } catch (error) {
    throw fromNodeError(error, 'read', path)
  }
}

export function readTextFileIfExists(path: string | Buffer): string | undefined {
  try {
    return fs.readFileSync(path, 'utf8')
  } catch (error) {
    if (absentErrnos.has((error as NodeJS.ErrnoException).code ?? '')) return undefined
    throw fromNodeError(error, 'read', typeof path === 'string' ? path : showName(path))
  }
}

export interface FilesystemInfo {
  type: number
  blockSize: number
  blocks: number
  freeBlocks: number
  availableBlocks: number
}

export function filesystemInfo(path: string): FilesystemInfo {
  try {
    const st = fs.statfsSync(path)
    return { type: st.type, blockSize: st.bsize, blocks: st.blocks, freeBlocks: st.bfree, availableBlocks: st.bavail }
  } catch (error) {
    throw fromNodeError(error, 'statfs', path)
  }
}

/** The host's view of a directory tree, as the overlay model reads it: every path a byte string. */
export const hostTreeReader: TreeReader = {
  stat: (path) => lstat(kernelPath(path)),
  list: listNames,
  xattrNames: (path) => listXattrs(kernelPath(path)),
  xattr: (path, name) => getXattr(kernelPath(path), name),
  readLink: readLinkBytes,
  sameContent,
  readHead: readRegularHead,
}

/**
 * Open a file the walk found regular, to read it: never through a symlink put at its name since,
 * never blocking on a FIFO put there (its inode, or EOF, then shows the change). Undefined for a
 * symlink now at the name.
 */
export function openNoFollow(path: BytePath): number | undefined {
  try {
    return fs.openSync(kernelPath(path), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ELOOP') return undefined
    throw error
  }
}

/** openNoFollow, refused (ECHANGED) unless it is still a regular file. */
function openRegular(path: BytePath): number {
  const fd = openNoFollow(path)
  if (fd !== undefined && fs.fstatSync(fd).isFile()) return fd
  if (fd !== undefined) fs.closeSync(fd)
  throw noLongerRegular(path)
}

const noLongerRegular = (path: BytePath): OvrootError =>
  new OvrootError(
    'ECHANGED',
    ExitCode.io,
    `${showBytes(path)} is no longer a regular file: it changed while it was read`,
  )

function readRegularHead(path: BytePath, limit: number): Buffer {
  let fd = -1
  try {
    fd = openRegular(path)
    const buffer = Buffer.alloc(limit)
    return buffer.subarray(0, fs.readSync(fd, buffer, 0, limit, 0))
  } catch (error) {
    throw fromNodeError(error, 'read', showBytes(path))
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

/**
 * Replace a small file so that a power cut leaves either the old or the new
 * content: write a temporary sibling, fsync it, rename it over, fsync the
 * directory. Not `durable`: no fsync (readers still see old or new, never a
 * mix), for a file a power cut makes worthless anyway or that the caller's
 * sync(2) flushes with more: each fsync is a journal commit on ext4.
 */
export function writeFileAtomic(path: string, content: string | Buffer, durable = true): void {
  replaceAtomic(path, durable, (temporary) => writeWhole(temporary, content, durable))
}

/** Replace a file with a copy of another (a large one: it never passes through memory whole), as writeFileAtomic does. */
export function copyFileAtomic(from: string, path: string): void {
  replaceAtomic(path, true, (temporary) => {
    fs.copyFileSync(from, temporary)
    const fd = fs.openSync(temporary, 'r+')
    try {
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
  })
}

function replaceAtomic(path: string, durable: boolean, fill: (temporary: string) => void): void {
  const temporary = `${path}.tmp`
  const directory = path.slice(0, path.lastIndexOf('/')) || '/'
  try {
    fill(temporary)
    fs.renameSync(temporary, path)
    if (durable) syncDirectory(directory)
  } catch (error) {
    throw fromNodeError(error, 'write', path)
  }
}

/** Create or truncate a file and write all of `content`, unflushed: the caller's sync(2) makes it durable. */
export function writeFileUnflushed(path: string, content: string | Buffer): void {
  try {
    writeWhole(path, content, false)
  } catch (error) {
    throw fromNodeError(error, 'write', path)
  }
}

function writeWhole(path: string, content: string | Buffer, flush: boolean): void {
  const fd = fs.openSync(path, 'w', 0o644)
  try {
    fs.writeSync(fd, typeof content === 'string' ? Buffer.from(content) : content)
    if (flush) fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** Which inode an open file is: device and inode number, as fstat(2) reports them. */
export interface FileIdentity {
  dev: bigint
  ino: bigint
}

/** Node reports a 64-bit inode number as signed: taken unsigned, as the kernel and `lstat` (EntryStat) have it. */
const identityOf = (stat: fs.BigIntStats): FileIdentity => ({ dev: stat.dev, ino: BigInt.asUintN(64, stat.ino) })

/** The identity of an open regular file, or undefined for anything else (a pipe, a terminal). */
export function openFileIdentity(fd: number): FileIdentity | undefined {
  try {
    const stat = fs.fstatSync(fd, { bigint: true })
    return stat.isFile() ? identityOf(stat) : undefined
  } catch (error) {
    throw fromNodeError(error, 'stat', `file descriptor ${fd}`)
  }
}

export interface AtomicOutput {
  stream: NodeJS.WritableStream
  /** The temporary file being written. */
  identity: FileIdentity
  /** fsync, rename over the target, fsync the directory. */
  commit(): void
  /** Remove the temporary file (after an error). */
  abort(): void
}

/** A file written under a temporary name (mode `mode` from the start) and renamed into place only when complete. */
export function openAtomicOutput(path: string, mode: number): AtomicOutput {
  const slash = path.lastIndexOf('/')
  const directory = slash < 0 ? '.' : path.slice(0, slash) || '/'
  const temporary = `${directory}/.${path.slice(slash + 1)}.${process.pid}.tmp`
  let fd: number
  try {
    fd = fs.openSync(temporary, 'wx', mode)
  } catch (error) {
    throw fromNodeError(error, 'create', temporary)
  }
  const stream = fs.createWriteStream('', { fd, autoClose: false })
  const stat = fs.fstatSync(fd, { bigint: true })
  return {
    stream,
    identity: identityOf(stat),
    commit() {
      try {
        fs.fsyncSync(fd)
        fs.closeSync(fd)
        fs.renameSync(temporary, path)
        syncDirectory(directory)
      } catch (error) {
        throw fromNodeError(error, 'write', path)
      }
    },
    abort() {
      try {
        fs.closeSync(fd)
      } catch {
        // already closed
      }
      fs.rmSync(temporary, { force: true })
    },
  }
}

export interface TemporaryFile {
  path: string
  remove(): void
}

/** A stream (standard input) saved to a private temporary file, for readers that need a file. */
export async function spoolToTemporaryFile(stream: NodeJS.ReadableStream, directory: string): Promise<TemporaryFile> {
  const home = makeTemporaryDirectory(directory, 'ovroot-input-')
  const path = `${home}/input`
  const remove = (): void => fs.rmSync(home, { recursive: true, force: true })
  const { pipeline } = await import('node:stream/promises')
  try {
    await pipeline(stream, fs.createWriteStream(path, { flags: 'wx', mode: 0o600 }))
  } catch (error) {
    remove()
    throw fromNodeError(error, 'save standard input to', path)
  }
  return { path, remove }
}

/**
 * A new directory (mode 0700) under `parent` with a name nobody could
 * predict (mkdtemp(3)): in a shared /tmp, a fixed name is one another user
 * can plant a symlink or a directory of their own at.
 */
export function makeTemporaryDirectory(parent: string, prefix: string): string {
  try {
    return fs.mkdtempSync(`${parent}/${prefix}`)
  } catch (error) {
    throw fromNodeError(error, 'create a directory in', parent)
  }
}

export function syncDirectory(path: string): void {
  const fd = fs.openSync(path, 'r')
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

export function makeDirectory(path: string | Buffer, mode = 0o755): void {
  try {
    fs.mkdirSync(path, { recursive: true, mode })
  } catch (error) {
    throw fromNodeError(error, 'mkdir', typeof path === 'string' ? path : showName(path))
  }
}

/** mkdir that answers false when the directory exists already (a lock). */
export function createDirectoryExclusive(path: string): boolean {
  try {
    fs.mkdirSync(path, { mode: 0o700 })
    return true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw fromNodeError(error, 'mkdir', path)
  }
}

/**
 * Remove a tree (no error if absent), entry by entry so that boot can report
 * progress on a large one. Names are handled as bytes: a name that is not
 * UTF-8 must not make a reset or a swap stop half way.
 */
export function removeTree(path: string | Buffer): void {
  try {
    removeEntry(typeof path === 'string' ? Buffer.from(path) : path)
  } catch (error) {
    throw fromNodeError(error, 'remove', typeof path === 'string' ? path : showName(path))
  }
}

const SLASH = Buffer.from('/')
function removeEntry(path: Buffer): void {
  const stat = fs.lstatSync(path, { throwIfNoEntry: false })
  if (!stat) return
  if (stat.isDirectory()) {
    // An immutable or append-only directory lets no child go: its flags are cleared first.
    if (inodeFlags(path) & PROTECTING) clearProtection(path)
    for (const name of fs.readdirSync(path, { encoding: 'buffer' })) removeEntry(Buffer.concat([path, SLASH, name]))
    removeProtected(path, () => fs.rmdirSync(path))
  } else removeProtected(path, () => fs.unlinkSync(path))
  reportProgress()
}

const PROTECTING = InodeFlag.immutable | InodeFlag.append

/**
 * Remove an entry; one that is immutable or append-only (`chattr +i`, `+a`:
 * a user's, or restored with an upper), or in such a directory (a reset's
 * kept path's parent, which stays), refuses with EPERM: those flags are
 * cleared and the removal made once more (an inode's other names keep its
 * flags). A reset or a swap removes what the user's upper holds, whatever
 * flags they gave it, and never wedges on one.
 */
function removeProtected(path: Buffer, remove: () => void): void {
  try {
    remove()
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') throw error
    const parent = parentPath(path)
    const own = inodeFlags(path)
    if (!(own & PROTECTING) && !(inodeFlags(parent) & PROTECTING)) throw error
    unprotect(parent)
    if (own & PROTECTING) removeKeepingFlagsOfOtherNames(path, own, remove)
    else remove()
  }
}

/**
 * Remove a protected name with its flags cleared (they are its inode's): a hard link elsewhere that
 * stays, such as the flash's other name of an immutable file a sync removes one name of, keeps them.
 */
function removeKeepingFlagsOfOtherNames(path: Buffer, flags: number, remove: () => void): void {
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK)
  try {
    setInodeFlags(fd, flags & ~PROTECTING, path)
    remove()
    if (fs.fstatSync(fd).nlink > 0) setInodeFlags(fd, flags, path)
  } finally {
    fs.closeSync(fd)
  }
}

function parentPath(path: Buffer): Buffer {
  const slash = path.lastIndexOf(SLASH)
  return slash > 0 ? path.subarray(0, slash) : SLASH
}

/** Clear `+i`/`+a` on a directory whose overlay xattrs a reset removes (they protect xattrs too). */
export function unprotect(path: Buffer): void {
  if (inodeFlags(path) & PROTECTING) clearProtection(path)
}

function clearProtection(path: Buffer): void {
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK)
  try {
    setInodeFlags(fd, inodeFlags(path) & ~PROTECTING, path)
  } finally {
    fs.closeSync(fd)
  }
}

export function renamePath(from: string | Buffer, to: string | Buffer): void {
  const shown = (path: string | Buffer): string => (typeof path === 'string' ? path : showName(path))
  try {
    fs.renameSync(from, to)
  } catch (error) {
    throw fromNodeError(error, 'rename', `${shown(from)} to ${shown(to)}`)
  }
}

/** Read `length` bytes at `offset` of a file or device. */
export function readAt(path: string | Buffer, offset: number, length: number): Buffer {
  let fd = -1
  try {
    fd = fs.openSync(path, 'r')
    const buffer = Buffer.alloc(length)
    const got = fs.readSync(fd, buffer, 0, length, offset)
    return buffer.subarray(0, got)
  } catch (error) {
    throw fromNodeError(error, 'read', typeof path === 'string' ? path : showName(path))
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

/** A file front to back from `offset`, in pieces of `size` bytes (the last may be shorter): one descriptor, closed at the end. */
export function* readPieces(path: string, offset: number, size: number): Generator<Buffer> {
  let fd = -1
  try {
    fd = fs.openSync(path, 'r')
    for (let position = offset; ;) {
      const buffer = Buffer.allocUnsafe(size)
      const got = fs.readSync(fd, buffer, 0, size, position)
      if (got === 0) return
      position += got
      yield buffer.subarray(0, got)
    }
  } catch (error) {
    throw fromNodeError(error, 'read', path)
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

const SCAN_CHUNK = 1 << 20

/** Every byte of a file or device is 0x00, or every byte is 0xFF. */
export function isUniform(path: string): boolean {
  let fd = -1
  try {
    fd = fs.openSync(path, 'r')
    const chunk = Buffer.alloc(SCAN_CHUNK)
    let fill: number | undefined
    for (let offset = 0; ;) {
      const got = fs.readSync(fd, chunk, 0, SCAN_CHUNK, offset)
      if (got === 0) return fill !== undefined
      fill ??= chunk[0]
      if ((fill !== 0 && fill !== 0xff) || !isFilledWith(chunk.subarray(0, got), fill)) return false
      offset += got
      reportProgress()
    }
  } catch (error) {
    throw fromNodeError(error, 'read', path)
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

/** Made at the first scan, not at load: 2 MiB every process loading this module (the sync daemon) would keep. */
const filled: { zeros?: Buffer; ones?: Buffer } = {}
function isFilledWith(view: Buffer, fill: number): boolean {
  const reference =
    fill === 0 ? (filled.zeros ??= Buffer.alloc(SCAN_CHUNK)) : (filled.ones ??= Buffer.alloc(SCAN_CHUNK, 0xff))
  return view.equals(reference.subarray(0, view.length))
}

/** The path with every symlink resolved, or undefined when it does not exist. */
export function realPath(path: string): string | undefined {
  try {
    return fs.realpathSync(path)
  } catch (error) {
    if (absentErrnos.has((error as NodeJS.ErrnoException).code ?? '')) return undefined
    throw fromNodeError(error, 'resolve', path)
  }
}

export function pathExists(path: string): boolean {
  return statPath(path) !== undefined
}

/** Names of a directory as bytes (names.ts `BytePath`), none when it is not one: an emptiness test must not fail on a name. */
export function listDirectoryIfExists(path: string): BytePath[] {
  const bytes = bytesOf(path)
  return statPath(kernelPath(bytes))?.type === 'dir' ? listNames(bytes) : []
}

export function removeFile(path: string): void {
  try {
    fs.rmSync(path, { force: true })
  } catch (error) {
    throw fromNodeError(error, 'remove', path)
  }
}
