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
  /** Seconds since the epoch, with a fraction. */
  mtime: number
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

/** Printable ASCII as it is, every other byte (and the backslash) as \xNN: a name that is not UTF-8, on one line. */
export function escapedName(name: Buffer): string {
  return [...name].map((byte) => (byte >= 0x20 && byte < 0x7f && byte !== 0x5c ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, '0')}`)).join('')
}
