/** Paths of an upper's entries (sys/types.ts `UpperEntry`): relative to the upper, `.` being its root. */

/** The upper-relative path of an entry joined to a directory. */
export function under(root: string, path: string): string {
  return path === '.' ? root : `${root}/${path}`
}

export function parentOf(path: string): string {
  const slash = path.lastIndexOf('/')
  return slash < 0 ? '.' : path.slice(0, slash)
}

/** Whether a directory above `path` is in `directories` (by its ancestors, not by scanning the set). */
export function hasAncestorIn(directories: ReadonlySet<string>, path: string): boolean {
  for (let slash = path.lastIndexOf('/'); slash > 0; slash = path.lastIndexOf('/', slash - 1))
    if (directories.has(path.slice(0, slash))) return true
  return false
}
