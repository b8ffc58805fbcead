/** Paths of an upper's entries (sys/types.ts `UpperEntry`): relative to the upper, `.` being its root. */

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
  return [...name]
    .map((byte) =>
      byte >= 0x20 && byte < 0x7f && byte !== 0x5c
        ? String.fromCharCode(byte)
        : `\\x${byte.toString(16).padStart(2, '0')}`,
    )
    .join('')
}
