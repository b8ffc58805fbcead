/**
 * One mechanism for every change to an upper that cannot be made under a
 * mounted overlay (a factory reset, a restore, a sync's commit): whatever the change needs is
 * staged on the flash first, then one marker file, replaced atomically,
 * commits it; the next boot applies it before the overlay mounts (an
 * unmounted upper: at once). Applying is idempotent, so a power cut at any
 * instant leaves the marker and a rerun finishes the same change. Staging
 * without a marker is an uncommitted change and is dropped.
 */
import { randomBytes } from 'node:crypto'
import { ExitCode, OvrootError } from '../errors.js'
import { syncAll } from '../sys/libc.js'
import {
  markerPath,
  replacedPath,
  reservePath,
  scanBaselinePath,
  stagedPath,
  stateDir,
  type FlashLayout,
} from '../state/flash.js'
import {
  filesystemInfo,
  listDirectoryIfExists,
  makeDirectory,
  pathExists,
  readTextFileIfExists,
  removeFile,
  removeTree,
  renamePath,
  syncDirectory,
  writeFileAtomic,
  writeFileUnflushed,
} from '../sys/fs.js'
import { counted } from '../plural.js'

export type PendingChange =
  | {
      kind: 'reset'
      requested: string
      keep: string[]
      only?: string[]
      /**
       * The inode flags (chattr) of kept names whose inode loses other names to the reset, names as bytes (names.ts
       * `BytePath`): recorded by the apply before it clears them, set back last (pending/flat.ts). Absent: not read yet.
       */
      flags?: [string, number][]
    }
  | {
      kind: 'restore'
      requested: string
      source: string
      entries: number
      merge: boolean
      /**
       * A merge's inode flags (chattr) of what it replaces or moves entries into, names as bytes (names.ts
       * `BytePath`): recorded by the apply before it clears them, set back last (pending/flat.ts). Absent: not read yet.
       */
      flags?: [string, number][]
    }
  /**
   * A sync of a RAM upper: `removals` go; staged entry N (named N, flat) takes
   * the place of `moves[N]`, a staged directory only lends its metadata;
   * `parents` are directories that receive entries but did not change
   * themselves, with the mtime to give back to them afterwards. `staging`
   * names the sync's own staging directory in the state directory (absent:
   * `staged`), so that a marker whose removal a power cut lost never applies
   * a later sync's staging.
   */
  | {
      kind: 'sync'
      requested: string
      entries: number
      removals: string[]
      moves: string[]
      parents: [string, number][]
      staging?: string
      /**
       * 'bytes': `removals`, `moves` and `parents` are byte strings (names.ts
       * `BytePath`; JSON carries every char below 256 losslessly). Absent (an
       * older ovroot's marker): they are UTF-8 text.
       */
      names?: 'bytes'
      /** Inode flags (chattr) each path ends with: cleared before the moves, set after them (pending/flat.ts). */
      flags?: [string, number][]
    }
  /**
   * A firmware upgrade's reconcile (upgrade/reconcile.ts): the sync's
   * removals, moves and parents (names as bytes) in the named staging, which
   * also holds the report and the new base files; `firmware` is the new
   * firmware's record, written last.
   */
  | {
      kind: 'upgrade'
      requested: string
      from: string
      to: string
      entries: number
      removals: string[]
      moves: string[]
      parents: [string, number][]
      staging: string
      names: 'bytes'
      /** Inode flags (chattr) each path ends with, as a sync's (pending/flat.ts); absent: none (an older ovroot's marker). */
      flags?: [string, number][]
      firmware: { identity: string; description: string; base: 'shipped' | 'recorded'; since: string }
    }

/** Where a sync stages: a name of its own, recorded in its marker. */
export const syncStagingPath = (
  layout: FlashLayout,
  change?: Extract<PendingChange, { kind: 'sync' | 'upgrade' }>,
): string =>
  change === undefined
    ? `${stateDir(layout)}/${SYNC_STAGING}${randomBytes(6).toString('hex')}`
    : change.staging === undefined
      ? stagedPath(layout)
      : `${stateDir(layout)}/${change.staging}`
const SYNC_STAGING = 'staged-'

/**
 * Held back so that a change can still be scheduled on a full flash. JFFS2
 * refuses ordinary writes until free plus reclaimable space exceeds its own
 * reserve (2% of the partition and two erase blocks), so freeing a little is
 * not enough: 3% of the filesystem, at least 192 KiB, at most 1 MiB. Random
 * bytes, because JFFS2 and UBIFS compress.
 */
function reserveBytes(root: string): number {
  const info = filesystemInfo(root)
  return Math.min(1 << 20, Math.max(192 << 10, Math.round((info.blocks * info.blockSize * 0.03) / 4096) * 4096))
}

export function readPending(layout: FlashLayout): PendingChange | undefined {
  const text = readTextFileIfExists(markerPath(layout))
  if (text === undefined) return undefined
  try {
    const marker = JSON.parse(text) as PendingChange
    if (marker.kind === 'reset' && Array.isArray(marker.keep)) return marker
    if (marker.kind === 'restore' && typeof marker.source === 'string') return marker
    if (
      (marker.kind === 'sync' || marker.kind === 'upgrade') &&
      Array.isArray(marker.removals) &&
      Array.isArray(marker.moves) &&
      Array.isArray(marker.parents)
    )
      return marker
  } catch {
    // reported below
  }
  throw new OvrootError(
    'EMARKER',
    ExitCode.data,
    `${markerPath(layout)}: unreadable pending-change marker; expected the JSON ovroot writes (ovroot reset --cancel removes it)`,
  )
}

/**
 * Commit a change whose staging is complete: from now on the next boot
 * applies it. Everything staged reaches the flash before the marker does, and
 * the marker before anything is applied. sync(2), not fsync or syncfs: JFFS2
 * on block2mtd (the lab's NOR, and devices that emulate NOR on a block
 * device) writes into the block device's page cache, which neither flushes.
 * The marker's content is written beside the staging and flushed with it,
 * then renamed into place and flushed: two journal commits on ext4, where an
 * fsync of each step made four (README, Performance).
 */
export function commitPending(layout: FlashLayout, change: PendingChange): void {
  removeFile(scanBaselinePath(layout))
  makeDirectory(stateDir(layout))
  const text = `${JSON.stringify(change)}\n`
  const temporary = unrenamedMarkerPath(layout)
  try {
    writeFileUnflushed(temporary, text)
  } catch (error) {
    if (!(error instanceof OvrootError && error.code === 'ENOSPC') || !pathExists(reservePath(layout))) throw error
    removeFile(temporary)
    removeFile(reservePath(layout))
    syncDirectory(stateDir(layout))
    writeFileUnflushed(temporary, text)
  }
  syncAll()
  renamePath(temporary, markerPath(layout))
  syncAll()
}

/**
 * Drop a pending change and anything staged for it. The removal reaches the
 * flash before anything can be staged again: sync(2), as for the commit,
 * since on block2mtd an fsync leaves it in the page cache, and a cut would
 * then bring back a marker that applies to the next change's staging.
 */
export function cancelPending(layout: FlashLayout): void {
  if (!pathExists(stateDir(layout))) return
  removeFile(markerPath(layout))
  syncAll()
  dropStaging(layout)
}

/** The marker's content, written beside the staging before its rename commits it: a cut in between leaves it. */
const unrenamedMarkerPath = (layout: FlashLayout): string => `${markerPath(layout)}.tmp`

/** Every staging no marker names, and a marker never renamed into place: a cut before its commit left them. */
export function dropStaging(layout: FlashLayout): void {
  removeFile(unrenamedMarkerPath(layout))
  removeTree(stagedPath(layout))
  for (const name of listDirectoryIfExists(stateDir(layout)))
    if (name.startsWith(SYNC_STAGING)) removeTree(`${stateDir(layout)}/${name}`)
}

/** Whether a staging directory no marker names, or a marker never renamed into place, is there. */
export function hasStaging(layout: FlashLayout): boolean {
  const unrenamed = unrenamedMarkerPath(layout).slice(stateDir(layout).length + 1)
  return (
    pathExists(stagedPath(layout)) ||
    listDirectoryIfExists(stateDir(layout)).some((name) => name.startsWith(SYNC_STAGING) || name === unrenamed)
  )
}

/** The change is applied: forget it. */
export function finishPending(layout: FlashLayout): void {
  removeTree(replacedPath(layout))
  cancelPending(layout)
}

/** Put the reserve back once there is room again; a full flash simply goes without. */
export function ensureReserve(layout: FlashLayout): void {
  if (pathExists(reservePath(layout))) return
  try {
    writeFileAtomic(reservePath(layout), randomBytes(reserveBytes(layout.root)))
  } catch (error) {
    if (!(error instanceof OvrootError && error.code === 'ENOSPC')) throw error
    removeFile(`${reservePath(layout)}.tmp`)
  }
}

/** What is pending, in words; an unreadable marker is described, not thrown (status and --cancel must work on it). */
export function describePendingAt(layout: FlashLayout): string | undefined {
  try {
    const pending = readPending(layout)
    return pending && describePending(pending)
  } catch (error) {
    if (error instanceof OvrootError && error.code === 'EMARKER')
      return 'an unreadable pending change (ovroot reset --cancel removes it)'
    throw error
  }
}

/** The change as scheduled: `factory reset at next boot, keeping /etc/config`. */
export function describePending(change: PendingChange): string {
  const { what, detail } = describeParts(change)
  return `${what} at next boot${detail}`
}

/** The change itself, for the moment it is applied: `factory reset, keeping /etc/config`. */
export function describeChange(change: PendingChange): string {
  const { what, detail } = describeParts(change)
  return `${what}${detail}`
}

function describeParts(change: PendingChange): { what: string; detail: string } {
  if (change.kind === 'reset')
    return {
      what: change.only ? `reset of ${change.only.join(' ')}` : 'factory reset',
      detail: `, keeping ${change.keep.length ? change.keep.join(' ') : 'nothing'}`,
    }
  if (change.kind === 'sync')
    return { what: `the end of an interrupted sync (${counted(change.entries, 'entry', 'entries')})`, detail: '' }
  if (change.kind === 'upgrade')
    return {
      what: `the firmware upgrade's reconcile (${counted(change.entries, 'entry', 'entries')})`,
      detail: `, to ${change.firmware.description}`,
    }
  return {
    what: `${change.merge ? 'sysupgrade archive' : 'restore'} of ${change.source} (${counted(change.entries, 'entry', 'entries')})`,
    detail: '',
  }
}
