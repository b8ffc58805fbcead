/** The flat staging a sync and an upgrade's reconcile share (pending/marker.ts), and the inode flags every pending change that moves entries clears and sets back (a sysupgrade merge's too). */
import { applyFlags, readEntry, replaceMetadata, setModificationTime } from '../sys/entries.js'
import { removeTree, renamePath, statPath } from '../sys/fs.js'
import { bytePathBuffer, bytesOf, type BytePath } from '../names.js'
import type { PendingChange } from './marker.js'
import { parentOf } from '../upper/entry.js'

export type FlatChange = Pick<
  Extract<PendingChange, { kind: 'sync' }>,
  'removals' | 'moves' | 'parents' | 'names' | 'flags'
>

/**
 * A flat staging (a sync's, an upgrade's), applied: removals, then each staged entry renamed to
 * its place (parents come before children in `moves`; a directory new to the
 * copy moves with its subtree), each directory that stayed given back its
 * mtime right after the last entry moved into it (every rename into a
 * directory changes it), then the metadata of changed directories. Inode flags
 * (chattr +i, +a) would refuse all of it (an immutable entry cannot be
 * replaced, an immutable or append-only directory loses no entry): the
 * marker's `flags` paths have theirs cleared first and set last, so a rerun
 * after a cut between the two clears and sets them again (`cleared` runs
 * in between, before the removals: an upgrade's removal of identity xattrs,
 * which the same flags refuse). What is done
 * leaves the staging, so a rerun after a cut does only the rest. Nothing is
 * fsynced here: the marker stays until the caller's one sync of the whole
 * filesystem (an fsync per directory costs a journal commit each on ext4).
 */
export function applyFlat(stagedText: string, upperText: string, change: FlatChange, cleared?: () => void): void {
  // Every path here is bytes (names.ts `BytePath`); a marker an older ovroot wrote holds names as text.
  const fromMarker = change.names === 'bytes' ? (path: string): BytePath => path : bytesOf
  const staged = bytesOf(stagedText)
  const upper = bytesOf(upperText)
  const kernel = bytePathBuffer
  const target = (path: string): BytePath => (path === '.' ? upper : `${upper}/${fromMarker(path)}`)
  const flagged = (change.flags ?? []).map(([path, flags]): [BytePath, number] => [target(path), flags])
  withFlagsCleared(flagged, () => {
    cleared?.()
    for (const path of change.removals) removeTree(kernel(`${upper}/${fromMarker(path)}`))
    const mtimes = new Map(change.parents)
    const giveBack = (path: string): void => {
      const mtime = mtimes.get(path)
      if (mtime !== undefined && statPath(kernel(target(path)))?.type === 'dir')
        setModificationTime(target(path), mtime)
    }
    // Right after its last move, not after all of them: a sync's moves outgrow one ext4 journal transaction, and a
    // directory's inode changed on both sides of a commit is written to the journal twice (README, Performance).
    const lastMoveInto = new Map<string, number>()
    change.moves.forEach((path, index) => lastMoveInto.set(parentOf(path), index))
    const directories: [BytePath, BytePath][] = []
    change.moves.forEach((path, index) => {
      moveStaged(`${staged}/${index}`, target(path), directories)
      if (lastMoveInto.get(parentOf(path)) === index) giveBack(parentOf(path))
    })
    for (const [path] of change.parents) if (!lastMoveInto.has(path)) giveBack(path)
    for (const [from, to] of directories) {
      const own = readEntry(from, '.', '')
      if (own !== 'socket') replaceMetadata(to, own)
    }
  })
  removeTree(kernel(staged))
}

/** One staged entry into its place; a staged directory meeting one only lends its metadata, afterwards. Gone: moved before a cut. */
function moveStaged(from: BytePath, to: BytePath, directories: [BytePath, BytePath][]): void {
  const kind = statPath(bytePathBuffer(from))?.type
  if (kind === undefined) return
  const existing = statPath(bytePathBuffer(to))?.type
  if (kind === 'dir' && existing === 'dir') directories.push([from, to])
  else {
    if (existing) removeTree(bytePathBuffer(to))
    renamePath(bytePathBuffer(from), bytePathBuffer(to))
  }
}

/**
 * A pending change's work on an upper whose entries may be immutable or append-only (chattr +i, +a), which
 * would refuse it with EPERM: the marker's `flagged` paths (full) have their flags cleared first and set
 * back last, on whatever is at each path then (a replaced file takes the flags of the one it replaced). A
 * rerun after a cut in between clears and sets them again: the marker, not the upper, holds them.
 */
export function withFlagsCleared(flagged: readonly [BytePath, number][], work: () => void): void {
  for (const [full] of flagged) setFlagsIfThere(full, 0)
  work()
  for (const [full, flags] of flagged) setFlagsIfThere(full, flags)
}

/**
 * What a marker lists for withFlagsCleared: the inode flags (`flagsOf`, 0 for none) of the `changed` paths
 * (what a change removes, replaces or moves entries into or out of), each listed for every name of its inode,
 * since one name's flags are all its names' and a removal clears them: `linked` gives each second name of an
 * inode with its first name (upper/walk.ts's hardlinks), asked only when a changed path has flags.
 */
export function flagsOfChanged(
  changed: Iterable<BytePath>,
  flagsOf: (path: BytePath) => number,
  linked: () => Iterable<[BytePath, BytePath]>,
): [BytePath, number][] {
  const found: [BytePath, number][] = []
  for (const path of new Set(changed)) {
    const flags = flagsOf(path)
    if (flags !== 0) found.push([path, flags])
  }
  if (found.length === 0) return []
  const firstOf = new Map<BytePath, BytePath>()
  const namesOf = new Map<BytePath, BytePath[]>()
  for (const [name, first] of linked()) {
    firstOf.set(name, first)
    namesOf.set(first, [...(namesOf.get(first) ?? []), name])
  }
  const listed = new Map<BytePath, number>()
  for (const [path, flags] of found) {
    const first = firstOf.get(path) ?? path
    for (const name of [first, ...(namesOf.get(first) ?? [])]) listed.set(name, flags)
  }
  return [...listed]
}

/** A file's or directory's inode flags, where it is one (a staged entry a change skipped is not there). */
function setFlagsIfThere(full: BytePath, flags: number): void {
  const kind = statPath(bytePathBuffer(full))?.type
  if (kind === 'file' || kind === 'dir') applyFlags(full, flags)
}
