/**
 * One sync: what differs between the upper (in RAM) and its copy on the
 * flash, staged on the flash, committed by the pending-change marker, then
 * applied. A power cut before the commit leaves the previous sync; after it,
 * the next boot (or the next sync) finishes this one: never a mix.
 *
 * Entries are compared as rsync's quick check does, by type, mode, owner,
 * size, mtime (to the microsecond), link target, device numbers, and, beyond
 * rsync, every xattr; a changed file is written whole.
 */
import { applyPending } from '../pending/apply.js'
import { commitPending, readPending, stagedPath, upperPath, type FlashLayout } from '../pending/marker.js'
import { EntryWriter, readEntry, readStableFile } from '../sys/entries.js'
import { listDirectory, makeDirectory, pathExists, removeTree, statPath } from '../sys/fs.js'
import { OverlayXattrs } from '../overlay/xattrs.js'
import { parentOf, under, type UpperEntry } from '../upper/entry.js'
import { walkUpper } from '../upper/walk.js'

export interface SyncResult {
  /** Entries that differed and were written (or linked) into the flash copy; directories above them come along. */
  written: number
  removed: number
  /** File bytes written. */
  bytes: number
}

export interface SyncSource {
  upper: string
  namespace: 'trusted' | 'user'
  /** Paths (of the merged view, without the leading slash) never persisted. */
  excluded(path: string): boolean
}

/** A change already scheduled (a reset, a restore) must not be undone by a sync: say which, or nothing. */
export function blockingChange(layout: FlashLayout): string | undefined {
  const pending = readPending(layout)
  return pending && pending.kind !== 'sync' ? pending.kind : undefined
}

export async function syncOnce(source: SyncSource, layout: FlashLayout): Promise<SyncResult> {
  const xattrs = new OverlayXattrs(source.namespace)
  // An interrupted sync is finished first: it was committed.
  if (readPending(layout)?.kind === 'sync') await applyPending(layout, undefined, xattrs)
  removeTree(stagedPath(layout))
  const mirror = upperPath(layout)
  makeDirectory(mirror)
  const result = stageChanges(source, mirror, stagedPath(layout), xattrs.name('metacopy'))
  if (result.written === 0 && result.removals.length === 0) {
    removeTree(stagedPath(layout))
    return { written: 0, removed: 0, bytes: 0 }
  }
  commitPending(layout, { kind: 'sync', requested: new Date().toISOString(), entries: result.written, removals: result.removals })
  await applyPending(layout, undefined, xattrs)
  return { written: result.written, removed: result.removals.length, bytes: result.bytes }
}

function sameEntry(a: UpperEntry, b: UpperEntry): boolean {
  return (
    a.type === b.type &&
    a.mode === b.mode &&
    a.uid === b.uid &&
    a.gid === b.gid &&
    a.size === b.size &&
    a.holeSize === b.holeSize &&
    a.linkTarget === b.linkTarget &&
    a.devMajor === b.devMajor &&
    a.devMinor === b.devMinor &&
    a.mtime === b.mtime &&
    a.xattrs.length === b.xattrs.length &&
    a.xattrs.every(([name, value], i) => b.xattrs[i]?.[0] === name && b.xattrs[i]?.[1].equals(value))
  )
}

/** Stage what differs; answers what was staged and the mirror paths to remove. */
function stageChanges(source: SyncSource, mirror: string, staging: string, stubXattr: string): { written: number; bytes: number; removals: string[] } {
  const present = new Set<string>()
  const staged = new Set<string>()
  let changed = 0
  const writer = new EntryWriter()
  let bytes = 0
  makeDirectory(staging, 0o700)
  const stageDirectory = (path: string): void => {
    if (path === '.' || staged.has(path)) return
    stageDirectory(parentOf(path))
    const read = readEntry(under(source.upper, path), path, stubXattr)
    if (read !== 'socket') writer.begin(under(staging, path), read.entry)
    staged.add(path)
  }
  const walk = walkUpper(source.upper, { stubXattr, include: (path) => !source.excluded(path), skipped: (path, why) => process.stderr.write(`ovroot: sync skips /${path}: ${why} cannot be persisted\n`) })
  for (const entry of walk) {
    present.add(entry.path)
    // A second name of an inode compares as the inode itself.
    const raw = entry.type === 'hardlink' ? readEntry(under(source.upper, entry.path), entry.path, stubXattr) : { entry }
    const onFlash = pathExists(under(mirror, entry.path)) ? readEntry(under(mirror, entry.path), entry.path, stubXattr) : undefined
    const same = raw !== 'socket' && onFlash !== undefined && onFlash !== 'socket' && sameEntry(raw.entry, onFlash.entry)
    // The staging root becomes the copy's root when merged: it always carries the upper root's metadata.
    if (entry.path === '.') {
      writer.begin(staging, entry)
      if (!same) changed++
      continue
    }
    if (same) continue
    changed++
    stageDirectory(parentOf(entry.path))
    const target = entry.linkTarget ?? ''
    writer.begin(under(staging, entry.path), entry, entry.type === 'hardlink' ? (staged.has(target) ? under(staging, target) : under(mirror, target)) : undefined)
    if (entry.type === 'file' && entry.holeSize === undefined) {
      for (const chunk of readStableFile(under(source.upper, entry.path)).chunks()) {
        writer.data(chunk)
        bytes += chunk.length
      }
    }
    writer.end()
    staged.add(entry.path)
  }
  writer.finish()
  return { written: changed, bytes, removals: removalsFrom(mirror, present) }
}

/** Topmost mirror paths the upper no longer has. */
function removalsFrom(mirror: string, present: Set<string>): string[] {
  const removals: string[] = []
  const visit = (path: string): void => {
    for (const name of listDirectory(under(mirror, path)).sort()) {
      const child = path === '.' ? name : `${path}/${name}`
      if (!present.has(child)) removals.push(child)
      else if (statPath(under(mirror, child))?.type === 'dir') visit(child)
    }
  }
  visit('.')
  return removals
}
