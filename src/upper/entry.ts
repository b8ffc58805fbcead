/**
 * One entry of an upper, with everything a faithful copy needs: what backup
 * archives, restore recreates and sync mirrors. Paths are relative to the
 * upper, `.` being its root.
 */
export type EntryKind = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo'

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
  linkTarget?: string
  devMajor: number
  devMinor: number
  xattrs: [name: string, value: Buffer][]
  /** A metacopy stub: a file that is all hole, this long; its data is in the lower. */
  holeSize?: number
}

/** The upper-relative path of an entry joined to a directory. */
export function under(root: string, path: string): string {
  return path === '.' ? root : `${root}/${path}`
}

export function parentOf(path: string): string {
  const slash = path.lastIndexOf('/')
  return slash < 0 ? '.' : path.slice(0, slash)
}
