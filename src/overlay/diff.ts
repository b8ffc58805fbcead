/**
 * What the merged view changes relative to the lower view, computed from the
 * upper alone: the walk visits only directories the upper holds (plus the
 * lower subtrees a rename or an opaque directory brings into question), so its
 * cost follows the upper, not the lower.
 */
import { bytesOf, type BytePath } from '../names.js'
import { OvrootError } from '../errors.js'
import { isGone } from '../upper/walk.js'
import type { EntryStat, EntryType, TreeReader } from '../sys/types.js'
import type { OverlayXattrs } from './xattrs.js'
import { hostPath, sameSource, sameSources, type LayerStack, type ResolvedEntry } from './stack.js'

export type ChangeKind = 'added' | 'deleted' | 'modified' | 'metadata' | 'unchanged'
export type ChangedField = 'type' | 'content' | 'target' | 'rdev' | 'mode' | 'uid' | 'gid' | 'xattrs'

export interface EntryState {
  type: EntryType
  permissions: number
  uid: number
  gid: number
  size: number
  /** Symlink target (bytes). */
  target?: BytePath
  /** Host path of a regular file's bytes, for content diffs. */
  dataPath?: BytePath
}

export interface Change {
  /**
   * Absolute path in the merged view; '/' for the root. Bytes (names.ts
   * `BytePath`), as every path of the model: output shows it with `showBytes`.
   */
  path: BytePath
  change: ChangeKind
  /** The merged state; absent for a deletion. */
  now?: EntryState
  /** The lower state; absent for an addition. */
  was?: EntryState
  fields: ChangedField[]
  /** A renamed directory: the lower path its contents come from (bytes). */
  from?: BytePath
  /** A directory that hides the lower directory it replaced (deleted and recreated). */
  replaced?: boolean
}

export interface DiffOptions {
  /** Report upper entries that equal the lower as `unchanged`. */
  all: boolean
  /** Restrict the report to these merged-view subtrees (text, as the user gave them). */
  paths: string[]
}

/** A directory whose children are still to be compared. */
export interface PendingDir {
  readonly path: string
  readonly merged: ResolvedEntry
  /** The lower directory at the same path, when the lower has one. */
  readonly lower: ResolvedEntry | undefined
}

/** Receives a walk's results in path order: each entry's change (if any), then, for a directory, the directory to expand. */
export interface DiffVisitor {
  change(change: Change): void
  descend(dir: PendingDir): void
  /** An entry the upper lost or replaced while it was compared; without this, that is an error. */
  unsettled?(path: BytePath, error: OvrootError): void
}

export class OverlayDiff {
  constructor(
    private readonly merged: LayerStack,
    private readonly lower: LayerStack,
    private readonly reader: TreeReader,
    private readonly xattrs: OverlayXattrs,
    private readonly options: DiffOptions,
  ) {}

  /**
   * The whole report, depth first, in path order. On a live device the upper changes while it is
   * read: an entry removed (or replaced by another type) between its stat and the reading of its
   * xattrs, bytes or target is passed to `unsettled`, when given, and left out with what is below it.
   */
  run(emit: (change: Change) => void, unsettled?: (path: BytePath, error: OvrootError) => void): void {
    const visitor: DiffVisitor = { change: emit, descend: (child) => this.expand(child, visitor), unsettled }
    this.start(visitor)
  }

  /** The requested paths' own entries. */
  start(visitor: DiffVisitor): void {
    for (const path of topmostPaths(this.options.paths.map(bytesOf)))
      settle(path, visitor, () => {
        let merged: ResolvedEntry | undefined = this.merged.root()
        let lower: ResolvedEntry | undefined = this.lower.root()
        for (const name of path.split('/').filter(Boolean)) {
          merged = merged?.stat.type === 'dir' ? this.merged.child(merged, name) : undefined
          lower = lower?.stat.type === 'dir' ? this.lower.child(lower, name) : undefined
        }
        this.compare(path === '/' ? '' : path, merged, lower, visitor)
      })
  }

  /** A directory's children in path order; only names the upper can have changed. */
  expand(dir: PendingDir, visitor: DiffVisitor): void {
    const { path, merged, lower } = dir
    const lowerDirsOfMerged = merged.dirs.filter((source) => source.layer.role === 'lower')
    const onlyUpperMatters = lower !== undefined && sameSources(lowerDirsOfMerged, lower.dirs)
    const names = onlyUpperMatters
      ? merged.inUpper
        ? this.reader.list(hostPath(merged.top))
        : []
      : [...new Set([...this.merged.candidateNames(merged), ...(lower ? this.lower.candidateNames(lower) : [])])]
    for (const name of sortNames(names)) {
      const child = `${path}/${name}`
      settle(child, visitor, () =>
        this.compare(
          child,
          this.merged.child(merged, name),
          lower ? this.lower.child(lower, name) : undefined,
          visitor,
        ),
      )
    }
  }

  private compare(
    path: string,
    merged: ResolvedEntry | undefined,
    lower: ResolvedEntry | undefined,
    visitor: DiffVisitor,
  ): void {
    if (!merged) {
      if (lower) visitor.change({ path: path || '/', change: 'deleted', was: this.state(lower), fields: [] })
      return
    }
    if (lower && this.fromSamePlace(merged, lower)) return
    if (!lower) {
      visitor.change({
        path: path || '/',
        change: 'added',
        now: this.state(merged),
        fields: [],
        ...this.dirNotes(merged, undefined),
      })
      if (merged.stat.type === 'dir') visitor.descend({ path, merged, lower: undefined })
      return
    }
    const fields = this.differences(merged, lower)
    const change: ChangeKind = fields.some(isContentField) ? 'modified' : fields.length > 0 ? 'metadata' : 'unchanged'
    if (change !== 'unchanged' || (this.options.all && merged.inUpper)) {
      visitor.change({
        path: path || '/',
        change,
        now: this.state(merged),
        was: this.state(lower),
        fields,
        ...this.dirNotes(merged, lower),
      })
    }
    if (merged.stat.type === 'dir')
      visitor.descend({ path, merged, lower: lower.stat.type === 'dir' ? lower : undefined })
  }

  /** Nothing of the entry comes from the upper and it resolves to the same lower places. */
  private fromSamePlace(merged: ResolvedEntry, lower: ResolvedEntry): boolean {
    return (
      !merged.inUpper &&
      sameSource(merged.top, lower.top) &&
      sameSources(merged.dirs, lower.dirs) &&
      sameSource(merged.data, lower.data)
    )
  }

  private differences(merged: ResolvedEntry, lower: ResolvedEntry): ChangedField[] {
    const fields: ChangedField[] = []
    const now = merged.stat
    const was = lower.stat
    if (now.type !== was.type) fields.push('type')
    else if (now.type === 'file' && !this.sameBytes(merged, lower)) fields.push('content')
    else if (
      now.type === 'symlink' &&
      this.reader.readLink(hostPath(merged.top)) !== this.reader.readLink(hostPath(lower.top))
    )
      fields.push('target')
    else if ((now.type === 'char' || now.type === 'block') && now.rdev !== was.rdev) fields.push('rdev')
    if (now.permissions !== was.permissions) fields.push('mode')
    if (now.uid !== was.uid) fields.push('uid')
    if (now.gid !== was.gid) fields.push('gid')
    if (!this.sameComparedXattrs(merged, lower)) fields.push('xattrs')
    return fields
  }

  private sameBytes(merged: ResolvedEntry, lower: ResolvedEntry): boolean {
    if (merged.stat.size !== lower.stat.size) return false
    const a = merged.data
    const b = lower.data
    if (!a || !b) return false
    if (sameSource(a, b)) return true
    const pathA = hostPath(a)
    const pathB = hostPath(b)
    const statA = a === merged.top ? merged.stat : this.reader.stat(pathA)
    const statB = b === lower.top ? lower.stat : this.reader.stat(pathB)
    if (statA && statB && statA.dev === statB.dev && statA.ino === statB.ino) return true
    return this.reader.sameContent(pathA, pathB, merged.stat.size)
  }

  private sameComparedXattrs(merged: ResolvedEntry, lower: ResolvedEntry): boolean {
    const names = (entry: ResolvedEntry): string[] =>
      entry
        .xattrNames()
        .filter((name) => this.xattrs.isCompared(name))
        .sort()
    const mergedNames = names(merged)
    const lowerNames = names(lower)
    if (mergedNames.length !== lowerNames.length || mergedNames.some((name, i) => name !== lowerNames[i])) return false
    return mergedNames.every((name) => {
      const a = this.reader.xattr(hostPath(merged.top), name)
      const b = this.reader.xattr(hostPath(lower.top), name)
      return a !== undefined && b !== undefined && a.equals(b)
    })
  }

  private dirNotes(merged: ResolvedEntry, lower: ResolvedEntry | undefined): Pick<Change, 'from' | 'replaced'> {
    if (merged.stat.type !== 'dir') return {}
    if (merged.redirectedFrom !== undefined) return { from: merged.redirectedFrom || '/' }
    if (merged.opaque && merged.inUpper && lower?.stat.type === 'dir') return { replaced: true }
    return {}
  }

  private state(entry: ResolvedEntry): EntryState {
    const stat: EntryStat = entry.stat
    const state: EntryState = {
      type: stat.type,
      permissions: stat.permissions,
      uid: stat.uid,
      gid: stat.gid,
      size: stat.type === 'dir' ? 0 : stat.size,
    }
    if (stat.type === 'symlink') state.target = this.reader.readLink(hostPath(entry.top))
    if (entry.data) state.dataPath = hostPath(entry.data)
    return state
  }
}

/** `compare` of the entry at `path`, which the upper may lose or replace meanwhile (visitor.unsettled). */
function settle(path: BytePath, visitor: DiffVisitor, compare: () => void): void {
  if (!visitor.unsettled) return compare()
  try {
    compare()
  } catch (error) {
    if (!changedUnderneath(error)) throw error
    visitor.unsettled(path, error)
  }
}

/** Removed (ENOENT, ENOTDIR: its name or a directory above it) or no longer a regular file (ECHANGED). */
export const changedUnderneath = (error: unknown): error is OvrootError =>
  isGone(error) || (error instanceof OvrootError && error.code === 'ECHANGED')

function isContentField(field: ChangedField): boolean {
  return field === 'type' || field === 'content' || field === 'target' || field === 'rdev'
}

/** Byte order, which is what C tools and `sort` (LC_ALL=C) use: names are byte strings, so string order is byte order. */
export function compareNames(a: BytePath, b: BytePath): number {
  return a < b ? -1 : a > b ? 1 : 0
}

function sortNames(names: BytePath[]): BytePath[] {
  return names.sort()
}

/** Normalised, sorted, without paths nested in another requested path. */
export function topmostPaths(paths: readonly string[]): string[] {
  const normalised = (paths.length > 0 ? paths : ['/']).map(normaliseMergedPath)
  const sorted = [...new Set(normalised)].sort(comparePaths)
  return sorted.filter((path, i) => !sorted.slice(0, i).some((other) => other === '/' || path.startsWith(`${other}/`)))
}

export function normaliseMergedPath(path: string): string {
  const parts: string[] = []
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue
    if (part === '..') parts.pop()
    else parts.push(part)
  }
  return `/${parts.join('/')}`
}

/** Path order component by component: a directory comes right before its contents. */
export function comparePaths(a: string, b: string): number {
  const partsA = a.split('/')
  const partsB = b.split('/')
  for (let i = 0; i < Math.min(partsA.length, partsB.length); i++) {
    const order = compareNames(partsA[i] ?? '', partsB[i] ?? '')
    if (order !== 0) return order
  }
  return partsA.length - partsB.length
}
