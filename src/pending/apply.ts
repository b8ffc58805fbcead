/**
 * Applying the committed change, at boot before the overlay mounts or at once
 * for an unmounted upper. Only the code of the pending kind is loaded.
 */
import { setXattr, syncAll } from '../sys/libc.js'
import { readEntry, replaceMetadata, setModificationTime } from '../sys/entries.js'
import { listNames, makeDirectory, pathExists, removeTree, renamePath, statPath, syncDirectory } from '../sys/fs.js'
import { bytePathBuffer, bytesOf, type BytePath } from '../names.js'
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { markerPath, replacedPath, stagedPath, stateDir, upperPath, type FlashLayout } from '../state/flash.js'
import { dropStaging, finishPending, hasStaging, readPending, syncStagingPath, type PendingChange } from './marker.js'

export type AppliedChange =
  | { kind: 'reset'; kept: string[] }
  | { kind: 'restore'; source: string; entries: number }
  | { kind: 'sync'; entries: number }

/** Anything to do at boot: a committed change, or an uncommitted staging to drop. */
export function hasPendingWork(layout: FlashLayout): boolean {
  return pathExists(markerPath(layout)) || hasStaging(layout)
}

export async function applyPending(
  layout: FlashLayout,
  workDir: string | undefined,
  xattrs: OverlayXattrs,
): Promise<AppliedChange | undefined> {
  const change = readPending(layout)
  if (!change) {
    dropStaging(layout)
    return undefined
  }
  const applied = await apply(layout, change, xattrs)
  // The work directory may index inodes of the old upper.
  if (workDir) removeTree(workDir)
  syncAll()
  finishPending(layout)
  return applied
}

async function apply(layout: FlashLayout, change: PendingChange, xattrs: OverlayXattrs): Promise<AppliedChange> {
  if (change.kind === 'reset') {
    const { applyReset } = await import('../reset/prune.js')
    return { kind: 'reset', kept: applyReset(upperPath(layout), change.keep, change.only, xattrs) }
  }
  if (change.kind === 'sync') {
    applySync(syncStagingPath(layout, change), upperPath(layout), change)
    return { kind: 'sync', entries: change.entries }
  }
  if (change.merge) mergeStaged(stagedPath(layout), upperPath(layout), xattrs)
  else swapInStaged(layout)
  return { kind: 'restore', source: change.source, entries: change.entries }
}

/**
 * A sync's flat staging, applied: removals, then each staged entry renamed to
 * its place (parents come before children in `moves`; a directory new to the
 * copy moves with its subtree), then the metadata of directories that stayed,
 * last because every rename into a directory changes its mtime. What is done
 * leaves the staging, so a rerun after a cut does only the rest. Nothing is
 * fsynced here: the marker stays until the caller's one sync of the whole
 * filesystem (an fsync per directory costs a journal commit each on ext4).
 */
function applySync(stagedText: string, upperText: string, change: Extract<PendingChange, { kind: 'sync' }>): void {
  // Every path here is bytes (names.ts `BytePath`); a marker an older ovroot wrote holds names as text.
  const fromMarker = change.names === 'bytes' ? (path: string): BytePath => path : bytesOf
  const staged = bytesOf(stagedText)
  const upper = bytesOf(upperText)
  const kernel = bytePathBuffer
  for (const path of change.removals) removeTree(kernel(`${upper}/${fromMarker(path)}`))
  const target = (path: string): BytePath => (path === '.' ? upper : `${upper}/${fromMarker(path)}`)
  const directories: [BytePath, BytePath][] = []
  change.moves.forEach((path, index) => {
    const from = `${staged}/${index}`
    const kind = statPath(kernel(from))?.type
    if (kind === undefined) return
    const to = target(path)
    const existing = statPath(kernel(to))?.type
    if (kind === 'dir' && existing === 'dir') directories.push([from, to])
    else {
      if (existing) removeTree(kernel(to))
      renamePath(kernel(from), kernel(to))
    }
  })
  for (const [path, mtime] of change.parents)
    if (statPath(kernel(target(path)))?.type === 'dir') setModificationTime(target(path), mtime)
  for (const [from, to] of directories) {
    const own = readEntry(from, '.', '')
    if (own !== 'socket') replaceMetadata(to, own)
  }
  removeTree(kernel(staged))
}

/**
 * A sysupgrade archive's staged tree, moved into the upper: each entry
 * replaces what is there, a staged directory meeting an upper directory is
 * merged into it (archive directories are only containers). A staged
 * directory that replaces anything else (a whiteout: the user deleted the
 * firmware's directory; a file the user put there) is made opaque first, as
 * overlayfs makes a directory created over a deletion: the firmware's files
 * the user deleted stay deleted, only the archive's appear. Moved entries
 * leave the staging, so a rerun after a cut moves only what is left.
 */
function mergeStaged(stagedText: string, upperText: string, xattrs: OverlayXattrs): void {
  if (!pathExists(stagedText)) return
  makeDirectory(upperText)
  mergeInto(bytesOf(stagedText), bytesOf(upperText), xattrs)
}

/** Names are bytes: an archive's name that is not UTF-8 is merged like any other. */
function mergeInto(staged: BytePath, upper: BytePath, xattrs: OverlayXattrs): void {
  for (const name of listNames(staged)) {
    const from = bytePathBuffer(`${staged}/${name}`)
    const to = bytePathBuffer(`${upper}/${name}`)
    const existing = statPath(to)
    const directory = statPath(from)?.type === 'dir'
    if (directory && existing?.type === 'dir') mergeInto(`${staged}/${name}`, `${upper}/${name}`, xattrs)
    else {
      if (directory && existing) setXattr(from, xattrs.name('opaque'), Buffer.from('y'))
      if (existing) removeTree(to)
      renamePath(from, to)
    }
  }
  removeTree(bytePathBuffer(staged))
}

/** Two renames, each atomic; a rerun after a cut between them finishes the second. */
function swapInStaged(layout: FlashLayout): void {
  if (!pathExists(stagedPath(layout))) return
  if (pathExists(upperPath(layout))) {
    removeTree(replacedPath(layout))
    renamePath(upperPath(layout), replacedPath(layout))
  }
  renamePath(stagedPath(layout), upperPath(layout))
  syncDirectory(stateDir(layout))
  syncDirectory(layout.root)
}
