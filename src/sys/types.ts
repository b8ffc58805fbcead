/**
 * What the system calls report about an entry and what they create: the two
 * entry vocabularies, here at the bottom so that no layer above has to be
 * imported by sys/. Two, because they answer different questions:
 * `EntryType` is what lstat(2) says an inode is (sockets included: the diff
 * reports them); `EntryKind` is what a faithful copy carries (backup, restore,
 * sync: a hardlink is a kind of its own, naming an earlier entry, and a socket
 * is never copied).
 */
import type { BytePath } from '../names.js'

export type EntryType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'char' | 'block'

/** An entry's lstat, from one statx(2) (sys/libc.ts `lstat`): every walk and stat of an entry gives this. */
export interface EntryStat {
  type: EntryType
  /** mode & 07777: permission, setuid, setgid and sticky bits. */
  permissions: number
  uid: number
  gid: number
  size: number
  rdev: number
  dev: bigint
  ino: bigint
  nlink: number
  /** 512-byte blocks allocated: fewer than the size needs means holes. */
  blocks: number
  /** Nanoseconds since the epoch (negative before 1970), as the kernel keeps them. */
  atimeNs: bigint
  mtimeNs: bigint
  ctimeNs: bigint
  /** The kept inode flags (`chattr` a, i, d: sys/libc.ts InodeFlag) that its filesystem reports: statx gives them at no cost. */
  flags: number
}

/**
 * Read-only access to a directory tree. The overlay model depends on this
 * alone, so it never performs I/O of its own (sys/fs.ts supplies the host
 * implementation). Paths, names and link targets are byte strings.
 */
export interface TreeReader {
  stat(path: BytePath): EntryStat | undefined
  list(dir: BytePath): BytePath[]
  xattrNames(path: BytePath): string[]
  xattr(path: BytePath, name: string): Buffer | undefined
  readLink(path: BytePath): BytePath
  sameContent(pathA: BytePath, pathB: BytePath, size: number): boolean
  readHead(path: BytePath, limit: number): Buffer
}

export type EntryKind = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo'

/**
 * One entry of an upper, with everything a faithful copy needs: what backup
 * archives, restore recreates and sync mirrors. Paths are relative to the
 * upper, `.` being its root.
 */
export interface UpperEntry {
  path: string
  type: EntryKind
  /** mode & 07777 */
  mode: number
  uid: number
  gid: number
  /** Nanoseconds since the epoch (negative before 1970), as the kernel keeps them. */
  mtimeNs: bigint
  atimeNs: bigint
  /** Bytes of data (regular files; 0 for a metacopy stub). */
  size: number
  /** A symlink's target, or the earlier entry a hardlink names. */
  linkTarget?: BytePath
  devMajor: number
  devMinor: number
  xattrs: [name: string, value: Buffer][]
  /** A metacopy stub: a file that is all hole, this long; its data is in the lower. */
  holeSize?: number
  /**
   * A file with holes (a backup reads them with SEEK_DATA/SEEK_HOLE): where
   * its data lies, offset and length in order. `size` is then the file's
   * length, and its data is these regions' bytes, one after the other.
   */
  regions?: [offset: number, length: number][]
  /** Inode flags (`chattr` a, i, d: sys/libc.ts InodeFlag) of a file or directory, when it has some and they were read. */
  flags?: number
}

/** An entry as a walk of an upper read it (upper/walk.ts), with the lstat it was read from. */
export interface WalkedEntry extends UpperEntry {
  stat: EntryStat
}
