/**
 * Applying the committed change, at boot before the overlay mounts or at once
 * for an unmounted upper. Only the code of the pending kind is loaded.
 */
import { setXattr, syncAll } from '../sys/libc.js'
import { listNames, makeDirectory, pathExists, removeTree, renamePath, statPath, syncDirectory } from '../sys/fs.js'
import { bytePathBuffer, bytesOf, type BytePath } from '../names.js'
import type { UpgradeReport } from '../upgrade/record.js'
import { applyFlat } from './flat.js'
import { clearFilesystemIdentity } from '../overlay/identity.js'
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { markerPath, replacedPath, stagedPath, stateDir, upperPath, type FlashLayout } from '../state/flash.js'
import { dropStaging, finishPending, hasStaging, readPending, syncStagingPath, type PendingChange } from './marker.js'

export type AppliedChange =
  | { kind: 'reset'; kept: string[] }
  | { kind: 'restore'; source: string; entries: number }
  | { kind: 'sync'; entries: number }
  | { kind: 'upgrade'; report: UpgradeReport | undefined }

/** Anything to do at boot: a committed change, or an uncommitted staging to drop. */
export function hasPendingWork(layout: FlashLayout): boolean {
  return pathExists(markerPath(layout)) || hasStaging(layout)
}

/**
 * `applied`, if given, runs once the change is applied and flushed, before its marker goes: what it writes
 * (a sync's scan baseline) reaches the flash with the marker's removal, one journal commit on ext4 instead
 * of a second one of its own (README, Performance).
 */
export async function applyPending(
  layout: FlashLayout,
  workDir: string | undefined,
  xattrs: OverlayXattrs,
  applied?: () => void,
): Promise<AppliedChange | undefined> {
  const change = readPending(layout)
  if (!change) {
    dropStaging(layout)
    return undefined
  }
  const result = await apply(layout, change, xattrs)
  // The work directory may index inodes of the old upper.
  if (workDir) removeTree(workDir)
  syncAll()
  applied?.()
  finishPending(layout)
  return result
}

async function apply(layout: FlashLayout, change: PendingChange, xattrs: OverlayXattrs): Promise<AppliedChange> {
  if (change.kind === 'reset') {
    const { applyReset } = await import('../reset/prune.js')
    return { kind: 'reset', kept: applyReset(upperPath(layout), change.keep, change.only, xattrs) }
  }
  if (change.kind === 'sync') {
    applyFlat(syncStagingPath(layout, change), upperPath(layout), change)
    return { kind: 'sync', entries: change.entries }
  }
  if (change.kind === 'upgrade') {
    const { applyUpgrade } = await import('../upgrade/apply.js')
    return { kind: 'upgrade', report: applyUpgrade(layout, change, xattrs) }
  }
  if (change.merge) mergeStaged(stagedPath(layout), upperPath(layout), xattrs)
  else swapInStaged(layout)
  // A restored upper's origin handles and root uuid name another filesystem: index=on would refuse it.
  clearFilesystemIdentity(bytesOf(upperPath(layout)), xattrs)
  return { kind: 'restore', source: change.source, entries: change.entries }
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
