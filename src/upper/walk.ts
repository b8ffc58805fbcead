/**
 * The entries of an upper in archive order: parents before children, names in
 * byte order, a second name of an inode as a hardlink to the first (the
 * kernel shares one whiteout inode among many names since Linux 5.8).
 */
import { listDirectory } from '../sys/fs.js'
import { readEntry } from '../sys/entries.js'
import { under, type UpperEntry } from './entry.js'

export interface WalkOptions {
  /** The xattr that marks a metacopy stub in this upper's namespace. */
  stubXattr: string
  /** Whether to visit a path (and, for a directory, what is below it). */
  include(path: string): boolean
  /** Sockets cannot be recreated from an archive: they are skipped and named. */
  skipped(path: string, why: string): void
}

export function* walkUpper(root: string, options: WalkOptions): Generator<UpperEntry> {
  const firstName = new Map<string, string>()
  function* visit(path: string): Generator<UpperEntry> {
    const full = under(root, path)
    const read = readEntry(full, path, options.stubXattr)
    if (read === 'socket') {
      options.skipped(path, 'a socket')
      return
    }
    const { entry } = read
    if (entry.type !== 'dir' && read.nlink > 1) {
      const first = firstName.get(read.inode)
      if (first !== undefined) {
        yield { ...entry, type: 'hardlink', linkTarget: first, size: 0, xattrs: [], devMajor: 0, devMinor: 0, holeSize: undefined }
        return
      }
      firstName.set(read.inode, path)
    }
    yield entry
    if (entry.type !== 'dir') return
    const names = listDirectory(full).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
    for (const name of names) {
      const child = path === '.' ? name : `${path}/${name}`
      if (options.include(child)) yield* visit(child)
    }
  }
  yield* visit('.')
}
