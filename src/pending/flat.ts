/** The flat staging a sync and an upgrade's reconcile share (pending/marker.ts). */
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
  for (const [full] of flagged) setFlagsIfThere(full, 0)
  cleared?.()
  for (const path of change.removals) removeTree(kernel(`${upper}/${fromMarker(path)}`))
  const mtimes = new Map(change.parents)
  const giveBack = (path: string): void => {
    const mtime = mtimes.get(path)
    if (mtime !== undefined && statPath(kernel(target(path)))?.type === 'dir') setModificationTime(target(path), mtime)
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
  for (const [full, flags] of flagged) setFlagsIfThere(full, flags)
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

/** A file's or directory's inode flags, where it is one (a staged entry a change skipped is not there). */
function setFlagsIfThere(full: BytePath, flags: number): void {
  const kind = statPath(bytePathBuffer(full))?.type
  if (kind === 'file' || kind === 'dir') applyFlags(full, flags)
}
