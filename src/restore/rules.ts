/**
 * What an archive may contain, judged entry by entry before the entry is
 * written (into a fresh staging directory, never anywhere else). The rules
 * are those of bsdtar and of the fixes to every tar extractor CVE: no
 * absolute paths however many slashes, no `..`, `.` or empty components, no
 * entry below a symlink or any other non-directory (from the archive or
 * already in the view it lands on), hardlinks only to earlier entries,
 * no duplicates, bounded lengths and depth, no device nodes but whiteouts. A
 * symlink's target is data: `/etc/resolv.conf -> /tmp/resolv.conf` is normal
 * in a root filesystem, and so are backslashes in names. Paths are byte
 * strings (names.ts `BytePath`): lengths are counted, and names compared, in bytes.
 */
import type { TarEntry } from '../archive/pax.js'
import { corrupt } from '../archive/pax.js'
import type { EntryKind } from '../sys/types.js'
import { parentOf } from '../upper/entry.js'
import { showBytes } from '../names.js'
import { namespaceProvedBy } from '../overlay/xattrs.js'

const PATH_MAX = 4096
const NAME_MAX = 255
export const MAX_DEPTH = 128

export interface RuleOptions {
  /** sysupgrade archives name files only: their directories are made as needed. */
  implicitParents: boolean
  /**
   * A sysupgrade archive lands on the user's upper: files, directories and
   * links only. A whiteout, an overlay xattr (`trusted.overlay.opaque` on
   * `etc/` hides the firmware's whole /etc) or an inode flag (an immutable
   * staged file cannot be moved into the upper) would change what the
   * firmware shows or wedge the merge: refused.
   */
  plainFiles: boolean
  /** Bytes of the staging directory's own path, which every entry's path is appended to. */
  rootLength: number
  /** What already stands at a path of the view the entries land on (merge restores only). */
  existing?(path: string): EntryKind | undefined
}

const refused = (path: string, why: string): Error =>
  corrupt(`archive entry "${showBytes(path)}": ${why}; nothing was restored`)

function refuseOverlayMetadata(entry: TarEntry): void {
  const { path } = entry
  const plain = 'a sysupgrade archive holds files, directories and links'
  if (entry.type !== 'file' && entry.type !== 'dir' && entry.type !== 'symlink' && entry.type !== 'hardlink')
    throw refused(
      path,
      `a ${entry.type === 'char' && entry.devMajor === 0 && entry.devMinor === 0 ? 'whiteout' : entry.type}; ${plain}, no overlay metadata`,
    )
  const overlay = entry.xattrs.find(([name]) => namespaceProvedBy(name) !== undefined)
  if (overlay) throw refused(path, `overlay metadata (xattr ${overlay[0]}); ${plain}, no overlay metadata`)
  if (entry.flags !== undefined || entry.otherFlags !== undefined)
    throw refused(path, `inode flags (SCHILY.fflags); ${plain}, not flags a merge could not move`)
}

export class PathRules {
  private readonly kinds = new Map<string, EntryKind>([['.', 'dir']])
  private readonly implicit = new Set<string>()
  private entries = 0

  constructor(private readonly options: RuleOptions) {}

  /** Throws for a bad entry; answers the directories to create before it (implicit parents, outermost first). */
  admit(entry: TarEntry): string[] {
    const { path } = entry
    this.entries++
    if (path === '.') {
      if (entry.type !== 'dir') throw refused(path, 'the archive root is not a directory')
      if (this.entries > 1) throw refused(path, 'the archive root comes after other entries')
      return []
    }
    this.checkName(path)
    if (this.kinds.has(path))
      throw refused(
        path,
        this.implicit.has(path)
          ? 'a directory that entries before it already needed'
          : 'a second entry of the same name',
      )
    const parents = this.checkParent(path)
    if (entry.type === 'hardlink') this.checkHardlink(path, entry.linkTarget ?? '')
    if (entry.type === 'block' || (entry.type === 'char' && (entry.devMajor !== 0 || entry.devMinor !== 0))) {
      throw refused(
        path,
        `a ${entry.type} device ${entry.devMajor}:${entry.devMinor}; an upper holds no device nodes but 0/0 whiteouts`,
      )
    }
    if (this.options.plainFiles) refuseOverlayMetadata(entry)
    this.kinds.set(path, entry.type)
    return parents
  }

  get count(): number {
    return this.entries
  }

  private checkName(path: string): void {
    if (path.startsWith('/')) throw refused(path, 'an absolute path')
    const components = path.split('/')
    for (const component of components) {
      if (component === '') throw refused(path, 'an empty path component')
      if (component === '.' || component === '..') throw refused(path, `a "${component}" path component`)
      if (component.length > NAME_MAX) throw refused(path, `a name longer than ${NAME_MAX} bytes`)
    }
    if (components.length > MAX_DEPTH) throw refused(path, `deeper than ${MAX_DEPTH} directories`)
    if (path.length + this.options.rootLength + 1 >= PATH_MAX)
      throw refused(path, `a path longer than PATH_MAX (${PATH_MAX} bytes) once restored`)
  }

  private checkParent(path: string): string[] {
    const missing: string[] = []
    for (let parent = parentOf(path); parent !== '.'; parent = parentOf(parent)) {
      const kind = this.kinds.get(parent)
      if (kind === 'dir') break
      if (kind !== undefined)
        throw refused(
          path,
          `it would be written through ${kind === 'symlink' ? 'the symlink' : `the ${kind}`} ${showBytes(parent)} of the archive`,
        )
      if (!this.options.implicitParents)
        throw refused(path, `its directory ${showBytes(parent)} is not in the archive before it`)
      missing.unshift(parent)
    }
    for (const parent of [...missing, path]) {
      const existing = this.options.existing?.(parent)
      if (existing !== undefined && existing !== 'dir' && parent !== path)
        throw refused(path, `it would be written through the ${existing} ${showBytes(parent)} already on the device`)
    }
    for (const parent of missing) {
      this.kinds.set(parent, 'dir')
      this.implicit.add(parent)
    }
    return missing
  }

  private checkHardlink(path: string, target: string): void {
    const name = target.replace(/^(\.\/)+/, '')
    const kind = this.kinds.get(name)
    if (kind === undefined || this.implicit.has(name))
      throw refused(path, `a hardlink to "${showBytes(target)}", which is not an earlier entry of the archive`)
    if (kind === 'dir') throw refused(path, `a hardlink to the directory ${showBytes(target)}`)
  }
}
