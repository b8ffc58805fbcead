/** The vocabulary of the overlay model: what a tree reader reports about an entry. */
export type EntryType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'char' | 'block'

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
}

/**
 * Read-only access to a directory tree. The model depends on this alone, so it
 * never performs I/O of its own (sys/fs.ts supplies the host implementation).
 */
export interface TreeReader {
  stat(path: string): EntryStat | undefined
  list(dir: string): string[]
  xattrNames(path: string): string[]
  xattr(path: string, name: string): Buffer | undefined
  readLink(path: string): string
  sameContent(pathA: string, pathB: string, size: number): boolean
  readHead(path: string, limit: number): Buffer
}
