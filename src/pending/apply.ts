/**
 * Applying the committed change, at boot before the overlay mounts or at once
 * for an unmounted upper. Only the code of the pending kind is loaded.
 */
import { getXattr, inodeFlagsHeld, inodeFlagsIfPresent, setXattr, syncAll } from '../sys/libc.js'
import { listNames, makeDirectory, pathExists, removeTree, renamePath, statPath, syncDirectory } from '../sys/fs.js'
import { bytePathBuffer, bytesOf, type BytePath } from '../names.js'
import type { UpgradeReport } from '../upgrade/record.js'
import { OvrootError } from '../errors.js'
import { applyFlat, flagsOfChanged, withFlagsCleared } from './flat.js'
import { parentOf, under } from '../upper/entry.js'
import { walkUpper } from '../upper/walk.js'
import { clearFilesystemIdentity } from '../overlay/identity.js'
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { markerPath, replacedPath, stagedPath, stateDir, upperPath, type FlashLayout } from '../state/flash.js'
import {
  commitPending,
  dropStaging,
  finishPending,
  hasStaging,
  readPending,
  syncStagingPath,
  type PendingChange,
} from './marker.js'

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
    const upper = bytesOf(upperPath(layout))
    const kept = applyReset(upperPath(layout), change.keep, change.only, xattrs, (removed, remove) => {
      const flags = change.flags ?? recordResetFlags(layout, change, upper, removed)
      withFlagsCleared(
        flags.map(([path, value]): [BytePath, number] => [under(upper, path), value]),
        remove,
      )
    })
    return { kind: 'reset', kept }
  }
  if (change.kind === 'sync') {
    applyFlat(syncStagingPath(layout, change), upperPath(layout), change)
    return { kind: 'sync', entries: change.entries }
  }
  if (change.kind === 'upgrade') {
    const { applyUpgrade } = await import('../upgrade/apply.js')
    return { kind: 'upgrade', report: applyUpgrade(layout, change, xattrs) }
  }
  if (change.merge) mergeStaged(layout, change, xattrs)
  else {
    swapInStaged(layout)
    // A restored upper's origin handles and root uuid name another filesystem: index=on would refuse it. Staged
    // without them (restore/command.ts); a staging an older ovroot made has them.
    clearFilesystemIdentity(bytesOf(upperPath(layout)), xattrs)
  }
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
 * leave the staging, so a rerun after a cut moves only what is left. The
 * upper keeps its filesystem identity: it stays over the same firmware, and
 * an archive of files brings none.
 *
 * Inode flags (chattr +i, +a) on what it replaces or on a directory it moves
 * entries into would refuse the merge (EPERM) at every boot: as for a sync,
 * they are listed in the marker, cleared first and set back last (pending/flat.ts),
 * a replaced file taking the flags of the user's (the archive has none). They are
 * read here, not when the restore was scheduled: the upper was live until this boot.
 */
function mergeStaged(
  layout: FlashLayout,
  change: Extract<PendingChange, { kind: 'restore' }>,
  xattrs: OverlayXattrs,
): void {
  const staged = bytesOf(stagedPath(layout))
  const upper = bytesOf(upperPath(layout))
  // Gone: merged whole before a cut, with perhaps the flags still to set back.
  const left = pathExists(stagedPath(layout))
  if (left) makeDirectory(upperPath(layout))
  const flags = change.flags ?? (left ? recordFlags(layout, change, staged, upper) : [])
  withFlagsCleared(
    flags.map(([path, value]): [BytePath, number] => [under(upper, path), value]),
    () => {
      if (left)
        for (const step of mergeSteps(staged, upper, '.'))
          if (step.kind === 'merged') removeTree(bytePathBuffer(under(staged, step.path)))
          else moveInto(staged, upper, step, xattrs)
    },
  )
}

type MergeStep =
  /** The staged entry at `path` takes the place of what the upper has there (`existing`), if anything. */
  | { kind: 'move'; path: BytePath; existing: boolean; directory: boolean }
  /** Everything staged below the directory `path` is merged. */
  | { kind: 'merged'; path: BytePath }

/** The merge, depth first: a staged directory meeting an upper directory is merged into it; anything else moves. Names are bytes. */
function* mergeSteps(staged: BytePath, upper: BytePath, path: BytePath): Generator<MergeStep> {
  for (const name of listNames(under(staged, path))) {
    const child = path === '.' ? name : `${path}/${name}`
    const existing = statPath(bytePathBuffer(under(upper, child)))
    const directory = statPath(bytePathBuffer(`${staged}/${child}`))?.type === 'dir'
    if (directory && existing?.type === 'dir') yield* mergeSteps(staged, upper, child)
    else yield { kind: 'move', path: child, existing: existing !== undefined, directory }
  }
  yield { kind: 'merged', path }
}

function moveInto(
  staged: BytePath,
  upper: BytePath,
  step: Extract<MergeStep, { kind: 'move' }>,
  xattrs: OverlayXattrs,
): void {
  const from = bytePathBuffer(`${staged}/${step.path}`)
  const to = bytePathBuffer(under(upper, step.path))
  if (step.directory && step.existing) setXattr(from, xattrs.name('opaque'), Buffer.from('y'))
  // Since Linux 5.15 a chattr +i or +a through the overlay is this xattr, not an inode flag: the user's, kept as flags
  // are, by what chattr can flag. A symlink or a node refuses a user.* xattr (userxattr): every boot's apply would fail.
  const protection = step.existing ? getXattr(to, xattrs.name('protattr')) : undefined
  if (protection && (step.directory || statPath(from)?.type === 'file'))
    setXattr(from, xattrs.name('protattr'), protection)
  if (step.existing) removeTree(to)
  renamePath(from, to)
}

/**
 * The flags of what the merge replaces and of the directories it moves entries into, committed
 * in the marker before any is cleared, so that a rerun after a cut sets them back (it finds them cleared).
 */
function recordFlags(
  layout: FlashLayout,
  change: Extract<PendingChange, { kind: 'restore' }>,
  staged: BytePath,
  upper: BytePath,
): [BytePath, number][] {
  const changed: BytePath[] = []
  for (const step of mergeSteps(staged, upper, '.'))
    if (step.kind === 'move') changed.push(...(step.existing ? [step.path] : []), parentOf(step.path))
  // On a filesystem without inode flags (JFFS2) nothing is read.
  const flags =
    inodeFlagsHeld(bytePathBuffer(upper)) === 0
      ? []
      : flagsOfChanged(
          changed,
          (path) => inodeFlagsIfPresent(bytePathBuffer(under(upper, path))),
          () => hardLinks(upper),
        )
  if (flags.length > 0) commitPending(layout, { ...change, flags })
  return flags
}

/**
 * A removed name of a flagged file whose other name the reset keeps takes the inode's flags off for its removal
 * (sys/fs.ts): the kept names' flags, committed in the marker before any is cleared, so that a rerun after a cut in
 * between sets them back (it finds them cleared). Only inodes with several names are read (one walk of the upper).
 */
function recordResetFlags(
  layout: FlashLayout,
  change: Extract<PendingChange, { kind: 'reset' }>,
  upper: BytePath,
  removed: readonly BytePath[],
): [BytePath, number][] {
  // On a filesystem without inode flags (JFFS2) nothing is read.
  if (inodeFlagsHeld(bytePathBuffer(upper)) === 0) return []
  const roots = removed.map((path) => path.slice(1))
  const goes = (path: BytePath): boolean => roots.some((root) => path === root || path.startsWith(`${root}/`))
  const names = new Map<BytePath, BytePath[]>()
  for (const [name, first] of hardLinks(upper)) names.set(first, [...(names.get(first) ?? [first]), name])
  const flags: [BytePath, number][] = []
  for (const [first, all] of names) {
    const stays = all.filter((name) => !goes(name))
    const value = stays.length < all.length ? inodeFlagsIfPresent(bytePathBuffer(under(upper, first))) : 0
    if (value !== 0) flags.push(...stays.map((name): [BytePath, number] => [name, value]))
  }
  if (flags.length === 0) return []
  try {
    commitPending(layout, { ...change, flags })
  } catch (error) {
    // A flash full to the last byte (its reserve spent on scheduling this reset) is still reset: the removal then
    // sets a kept name's flags back right after each unlink (sys/fs.ts), leaving a power cut only that instant.
    if (error instanceof OvrootError && error.code === 'ENOSPC') return []
    throw error
  }
  return flags
}

/** Every second name of an inode in the upper, with its first name: only names of inodes with several are read. */
function* hardLinks(upper: BytePath): Generator<[BytePath, BytePath]> {
  const walk = walkUpper(upper, {
    stubXattr: '',
    include: () => true,
    skipped: () => undefined,
    unchanged: (_path, stat) => stat.type === 'dir' || stat.nlink < 2,
  })
  for (const entry of walk) if (entry.type === 'hardlink') yield [entry.path, entry.linkTarget ?? entry.path]
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
