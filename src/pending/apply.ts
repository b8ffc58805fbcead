/**
 * Applying the committed change, at boot before the overlay mounts or at once
 * for an unmounted upper. Only the code of the pending kind is loaded.
 */
import { syncAll } from '../sys/libc.js'
import { readEntry, replaceMetadata } from '../sys/entries.js'
import { listDirectory, makeDirectory, pathExists, removeTree, renamePath, statPath, syncDirectory } from '../sys/fs.js'
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { finishPending, markerPath, readPending, replacedPath, stagedPath, stateDir, upperPath, type FlashLayout, type PendingChange } from './marker.js'

export type AppliedChange = { kind: 'reset'; kept: string[] } | { kind: 'restore'; source: string; entries: number } | { kind: 'sync'; entries: number }

/** Anything to do at boot: a committed change, or an uncommitted staging to drop. */
export function hasPendingWork(layout: FlashLayout): boolean {
  return pathExists(markerPath(layout)) || pathExists(stagedPath(layout))
}

export async function applyPending(layout: FlashLayout, workDir: string | undefined, xattrs: OverlayXattrs): Promise<AppliedChange | undefined> {
  const change = readPending(layout)
  if (!change) {
    removeTree(stagedPath(layout))
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
    for (const path of change.removals) removeTree(`${upperPath(layout)}/${path}`)
    mergeStaged(stagedPath(layout), upperPath(layout), true)
    return { kind: 'sync', entries: change.entries }
  }
  if (change.merge) mergeStaged(stagedPath(layout), upperPath(layout), false)
  else swapInStaged(layout)
  return { kind: 'restore', source: change.source, entries: change.entries }
}

/**
 * Move each staged entry into the upper, replacing what is there; a staged
 * directory that meets an upper directory is merged into it, and with
 * `metadata` gives it its own mode, owner, xattrs and mtime (a sync carries
 * the directory's state; a sysupgrade archive's directories are only
 * containers). Moved entries leave the staging, so a rerun after a cut moves
 * only what is left. Nothing is fsynced here: the marker stays until the
 * caller's one sync of the whole filesystem (an fsync per directory costs a
 * journal commit each on ext4: a hundred times the data of a small sync).
 */
function mergeStaged(staged: string, upper: string, metadata: boolean): void {
  if (!pathExists(staged)) return
  makeDirectory(upper)
  // Read before the children move out: that changes the staged directory's mtime.
  const own = metadata ? readEntry(staged, '.', '') : undefined
  for (const name of listDirectory(staged)) {
    const from = `${staged}/${name}`
    const to = `${upper}/${name}`
    const existing = statPath(to)
    if (statPath(from)?.type === 'dir' && existing?.type === 'dir') mergeStaged(from, to, metadata)
    else {
      if (existing) removeTree(to)
      renamePath(from, to)
    }
  }
  if (own !== undefined && own !== 'socket') replaceMetadata(upper, own.entry)
  removeTree(staged)
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
