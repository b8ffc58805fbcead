/**
 * File-system access for the rest of ovroot. Everything that touches the disk
 * goes through here (or libc.ts), so the overlay model stays pure and errors
 * leave as OvrootErrors naming the path.
 */
import * as fs from 'node:fs'
import { fromNodeError, OvrootError, ExitCode } from '../errors.js'
import { listXattrs, getXattr, lstat, type RawStat } from './libc.js'
import type { EntryStat, EntryType, TreeReader } from '../overlay/types.js'

function typeOf(mode: number): EntryType {
  switch (mode & fs.constants.S_IFMT) {
    case fs.constants.S_IFREG: return 'file'
    case fs.constants.S_IFDIR: return 'dir'
    case fs.constants.S_IFLNK: return 'symlink'
    case fs.constants.S_IFIFO: return 'fifo'
    case fs.constants.S_IFSOCK: return 'socket'
    case fs.constants.S_IFCHR: return 'char'
    default: return 'block'
  }
}

export function toEntryStat(st: RawStat): EntryStat {
  return {
    type: typeOf(st.mode),
    permissions: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    size: st.size,
    rdev: st.rdev,
    dev: st.dev,
    ino: st.ino,
    nlink: st.nlink,
  }
}

const absentErrnos = new Set(['ENOENT', 'ENOTDIR'])

/** lstat that answers undefined for a path that does not exist. */
export function statPath(path: string): EntryStat | undefined {
  const st = lstat(path)
  return st && toEntryStat(st)
}

/** Names in a directory, refusing names that are not UTF-8 rather than mangling them. */
export function listDirectory(path: string): string[] {
  let names: string[]
  try {
    names = fs.readdirSync(path)
  } catch (error) {
    throw fromNodeError(error, 'read directory', path)
  }
  for (const name of names) {
    if (name.includes('\uFFFD')) {
      throw new OvrootError('EBADNAME', ExitCode.data, `read directory ${path}: an entry name is not valid UTF-8; ovroot cannot represent it faithfully`)
    }
  }
  return names
}

export function readLink(path: string): string {
  try {
    return fs.readlinkSync(path)
  } catch (error) {
    throw fromNodeError(error, 'readlink', path)
  }
}

const CHUNK = 64 * 1024
const chunkA = Buffer.alloc(CHUNK)
const chunkB = Buffer.alloc(CHUNK)

/** Byte-compare two regular files already known to have `size` bytes. */
export function sameContent(pathA: string, pathB: string, size: number): boolean {
  let fdA = -1
  let fdB = -1
  try {
    fdA = fs.openSync(pathA, 'r')
    fdB = fs.openSync(pathB, 'r')
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
    throw fromNodeError(error, 'compare', `${pathA} with ${pathB}`)
  } finally {
    if (fdA >= 0) fs.closeSync(fdA)
    if (fdB >= 0) fs.closeSync(fdB)
  }
}

/** The first `limit` bytes of a file (for content diffs and binary detection). */
export function readHead(path: string, limit: number): Buffer {
  let fd = -1
  try {
    fd = fs.openSync(path, 'r')
    const buffer = Buffer.alloc(limit)
    const got = fs.readSync(fd, buffer, 0, limit, 0)
    return buffer.subarray(0, got)
  } catch (error) {
    throw fromNodeError(error, 'read', path)
  } finally {
    if (fd >= 0) fs.closeSync(fd)
  }
}

export function readTextFile(path: string): string {
  try {
    return fs.readFileSync(path, 'utf8')
  } catch (error) {
    throw fromNodeError(error, 'read', path)
  }
}

export function readTextFileIfExists(path: string): string | undefined {
  try {
    return fs.readFileSync(path, 'utf8')
  } catch (error) {
    if (absentErrnos.has((error as NodeJS.ErrnoException).code ?? '')) return undefined
    throw fromNodeError(error, 'read', path)
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

/** The host's view of a directory tree, as the overlay model reads it. */
export const hostTreeReader: TreeReader = {
  stat: statPath,
  list: listDirectory,
  xattrNames: listXattrs,
  xattr: getXattr,
  readLink,
  sameContent,
  readHead,
}
