/**
 * The entries of an upper in archive order: parents before children, names in
 * byte order, a second name of an inode as a hardlink to the first (the
 * kernel shares one whiteout inode among many names since Linux 5.8). Names
 * are bytes (names.ts `BytePath`), whatever their encoding: every command
 * that walks an upper carries a name that is not UTF-8 like any other.
 */
import { listNames } from '../sys/fs.js'
import { SysError } from '../errors.js'
import { readEntryWithStat, statEntry } from '../sys/entries.js'
import type { EntryStat, WalkedEntry } from '../sys/types.js'
import { under } from './entry.js'
import type { BytePath } from '../names.js'

export interface WalkOptions {
  /** The xattr that marks a metacopy stub in this upper's namespace. */
  stubXattr: string
  /** Whether to visit a path (and, for a directory, what is below it). */
  include(path: BytePath): boolean
  /** Give entries their inode flags (chattr a, i, d), which the entry's one statx reports. */
  flags?: boolean
  /** An entry to leave out, and below it, by its lstat (a backup's own output, written into the upper). */
  skip?(path: BytePath, stat: EntryStat): boolean
  /** Sockets cannot be recreated from an archive: they are skipped and named. */
  skipped(path: BytePath, why: string): void
  /**
   * Entries the caller already has, from their lstat (its ctimeNs): neither
   * read nor yielded, though a directory's children are still visited.
   */
  unchanged?(path: BytePath, stat: EntryStat): boolean
  /**
   * An entry gone between its directory's listing and its reading (a
   * temporary file renamed into place, a directory removed): passed here and
   * skipped. Without it, that is an error.
   */
  vanished?(path: BytePath): void
  /**
   * A directory's entries all before anything below them (each level's directories made one after
   * another), not each subdirectory's subtree right after it: a copy onto ext4 then gets sibling
   * directories' inodes side by side, as rsync's do, and a sync that changes many of them dirties
   * fewer inode-table blocks. Parents still come before children.
   */
  levelByLevel?: boolean
}

/** A name that no longer leads to the entry listed: it, or a directory above it, was removed or renamed. */
export const isGone = (error: unknown): boolean =>
  error instanceof SysError && (error.errno === 'ENOENT' || error.errno === 'ENOTDIR')

/** `root` is a byte string (names.ts `bytesOf` for a path the user gave). */
export function* walkUpper(root: BytePath, options: WalkOptions): Generator<WalkedEntry> {
  const firstName = new Map<string, string>()
  /** `below`, with levelByLevel: where a directory's path is left for its children to be visited after its siblings. */
  function* visit(path: string, below?: string[]): Generator<WalkedEntry> {
    const full = under(root, path)
    const stat = statEntry(full)
    if (stat === undefined) {
      if (options.vanished) return options.vanished(path)
      throw new SysError('ENOENT', 'stat', full)
    }
    if (options.skip?.(path, stat)) return
    // An unchanged first name still counts: a later name (in a renamed directory) links to it.
    const inode = stat.type !== 'dir' && stat.nlink > 1 ? `${stat.dev}:${stat.ino}` : undefined
    const first = inode === undefined ? undefined : firstName.get(inode)
    if (inode !== undefined && first === undefined) firstName.set(inode, path)
    if (options.unchanged?.(path, stat)) {
      if (stat.type === 'dir') yield* descend(path, below)
      return
    }
    const read = gone(path, () => readEntryWithStat(full, path, options.stubXattr, stat, options.flags))
    if (read === undefined) return
    if (read === 'socket') {
      options.skipped(path, 'a socket')
      return
    }
    // With its stat: what a read of its data is checked against (backup: sys/entries.ts entryOfRead).
    const entry = { ...read, stat }
    if (first !== undefined) {
      yield {
        ...entry,
        type: 'hardlink',
        linkTarget: first,
        size: 0,
        xattrs: [],
        devMajor: 0,
        devMinor: 0,
        holeSize: undefined,
        flags: undefined,
      }
      return
    }
    yield entry
    if (entry.type === 'dir') yield* descend(path, below)
  }
  function* descend(path: string, below: string[] | undefined): Generator<WalkedEntry> {
    if (below) below.push(path)
    else yield* visitChildren(path)
  }
  function* visitChildren(path: string): Generator<WalkedEntry> {
    // Byte strings sort in byte order with the default comparison.
    const names = gone(path, () => listNames(under(root, path)))?.sort() ?? []
    const below = options.levelByLevel ? [] : undefined
    for (const name of names) {
      const child = path === '.' ? name : `${path}/${name}`
      if (options.include(child)) yield* visit(child, below)
    }
    for (const directory of below ?? []) yield* visitChildren(directory)
  }
  /** What `read` returns; undefined, once `vanished` is told, when the entry at `path` is gone. */
  function gone<T>(path: string, read: () => T): T | undefined {
    try {
      return read()
    } catch (error) {
      if (!options.vanished || !isGone(error)) throw error
      options.vanished(path)
      return undefined
    }
  }
  yield* visit('.')
}
