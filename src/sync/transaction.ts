/**
 * One sync: what differs between the upper (in RAM) and its copy on the
 * flash, staged on the flash, committed by the pending-change marker, then
 * applied. A power cut before the commit leaves the previous sync; after it,
 * the next boot (or the next sync) finishes this one: never a mix.
 *
 * Entries are compared by type, mode, owner, size, mtime (to the
 * microsecond), link target, device numbers, every xattr and, for a regular
 * file all of that leaves equal, its bytes: an entry is compared at all only
 * because its ctime moved (or nothing tells), and `cp -p`, `tar x` or `touch
 * -d` put size and mtime back on new bytes. A changed file is written whole.
 * Only entries changed since the last sync's scan began are compared
 * (baseline.ts): the rest of the upper costs one stat per entry, and its
 * flash copy nothing. Names are bytes (names.ts `BytePath`) from the walk to
 * the marker: a name that is not UTF-8 is synced like any other.
 */
import { applyPending } from '../pending/apply.js'
import { commitPending, dropStaging, readPending, syncStagingPath } from '../pending/marker.js'
import {
  EntryWriter,
  entryOfRead,
  sameAttributes,
  modificationTime,
  readEntry,
  readEntryIfPresent,
  statEntry,
  type StableFile,
} from '../sys/entries.js'
import { InodeFlag, inodeFlags, inodeFlagsHeld, inodeFlagsIfPresent } from '../sys/libc.js'
import { listNames, makeDirectory, removeTree, sameContent } from '../sys/fs.js'
import { OverlayXattrs } from '../overlay/xattrs.js'
import { OvrootError, SysError } from '../errors.js'
import type { EntryStat, UpperEntry } from '../sys/types.js'
import { parentOf, under } from '../upper/entry.js'
import { bytePathBuffer, bytesOf, showBytes, type BytePath } from '../names.js'
import { isGone, walkUpper } from '../upper/walk.js'
import { startScan, type Scan } from './baseline.js'
import { sharedWritableInodes } from '../sys/mappings.js'
import { upperPath, type FlashLayout } from '../state/flash.js'

export interface SyncResult {
  /** Entries that differed and were written (or linked) into the flash copy, those inside a new directory included. */
  written: number
  removed: number
  /** File bytes written. */
  bytes: number
}

export interface SyncSource {
  upper: string
  namespace: 'trusted' | 'user'
  /** The [sync] exclude patterns, and the test they make on a path of the merged view (bytes, without the leading slash). */
  exclude: readonly string[]
  excluded(path: BytePath): boolean
}

/** A change already scheduled (a reset, a restore) must not be undone by a sync: say which, or nothing. */
export function blockingChange(layout: FlashLayout): string | undefined {
  const pending = readPending(layout)
  return pending && pending.kind !== 'sync' ? pending.kind : undefined
}

export async function syncOnce(source: SyncSource, layout: FlashLayout, runDir: string): Promise<SyncResult> {
  const xattrs = new OverlayXattrs(source.namespace)
  // An interrupted sync is finished first: it was committed.
  if (readPending(layout)?.kind === 'sync') await applyPending(layout, undefined, xattrs)
  dropStaging(layout)
  const mirror = upperPath(layout)
  makeDirectory(mirror)
  const scan = startScan(layout, source, runDir)
  const staging = syncStagingPath(layout)
  // Without a baseline every entry is compared anyway.
  const mapped = scan.unchangedBefore === undefined ? new Set<bigint>() : sharedWritableInodes(source.upper)
  const plan = new FlatStaging(
    bytesOf(source.upper),
    bytesOf(mirror),
    bytesOf(staging),
    xattrs.name('metacopy'),
    scan,
    mapped,
    inodeFlagsHeld(source.upper),
    inodeFlagsHeld(mirror),
  )
  let staged: Staged
  try {
    staged = stageChanges(source, plan)
  } catch (error) {
    // Uncommitted: nothing would ever use it, and a daemon retrying must not fill the flash with them.
    removeTree(staging)
    throw error
  }
  if (staged.moves.length === 0 && staged.removals.length === 0) {
    removeTree(staging)
    return { written: 0, removed: 0, bytes: 0 }
  }
  const { entries, moves, removals, parents, flags } = staged
  commitPending(layout, {
    kind: 'sync',
    requested: new Date().toISOString(),
    entries,
    removals,
    moves,
    parents,
    ...(flags.length > 0 ? { flags } : {}),
    staging: staging.slice(staging.lastIndexOf('/') + 1),
    names: 'bytes',
  })
  // Recorded before the marker goes (a rerun of an applied sync changes nothing it describes), so that its write
  // reaches the flash with the marker's removal. What was left for the next sync must be compared by it,
  // whatever its ctime says: a scan that left anything records no baseline, and the next compares every entry.
  await applyPending(layout, undefined, xattrs, () => {
    if (!plan.leftSomething) scan.record(plan.directories)
  })
  return { written: entries, removed: removals.length, bytes: staged.bytes }
}

function sameEntry(a: UpperEntry, b: UpperEntry): boolean {
  return (
    a.type === b.type &&
    a.size === b.size &&
    a.holeSize === b.holeSize &&
    a.linkTarget === b.linkTarget &&
    a.devMajor === b.devMajor &&
    a.devMinor === b.devMinor &&
    // To the microsecond: copies an older ovroot wrote carry microseconds, and must not all look changed.
    a.mtimeNs / 1000n === b.mtimeNs / 1000n &&
    sameAttributes(a, b)
  )
}

interface Staged {
  /** Entries written, those inside a new directory included. */
  entries: number
  /** Staged entry N goes to moves[N]. */
  moves: BytePath[]
  removals: BytePath[]
  parents: [BytePath, number][]
  /** Inode flags to set once everything is in place (pending/flat.ts). */
  flags: [BytePath, number][]
  bytes: number
}

/**
 * Stage what differs, flat: each changed entry as one numbered name in the
 * staging directory, so a sync creates no directories but the changed ones (a
 * staging that mirrored the tree cost a directory per changed file). A
 * directory the flash copy lacks is staged whole, its subtree inside it, and
 * moves as one.
 */
function stageChanges(source: SyncSource, plan: FlatStaging): Staged {
  const writer = new EntryWriter()
  let bytes = 0
  const walk = walkUpper(plan.upper, {
    stubXattr: plan.stubXattr,
    flags: plan.flagMask !== 0,
    levelByLevel: true,
    include: (path) => !source.excluded(path),
    skipped: (path, why) =>
      process.stderr.write(`ovroot: sync skips /${showBytes(path)}: ${why} cannot be persisted\n`),
    unchanged: (path, stat) => plan.skipIfUnchanged(path, stat),
    vanished: (path) => {
      plan.vanished(path)
      process.stderr.write(`ovroot: sync: /${showBytes(path)}: it vanished while it was read; left for the next sync\n`)
    },
  })
  // Staged without inode flags: an immutable entry could not be moved into place (pending/flat.ts sets them).
  const copy = (full: BytePath, entry: UpperEntry & { stat?: EntryStat }, linkTargetFull?: BytePath) => {
    const source = under(plan.upper, entry.path)
    const staged = (of: UpperEntry): UpperEntry => ({ ...of, path: full, flags: undefined })
    const { stat } = entry
    return writer.copy(full, staged(entry), source, {
      linkTargetFull,
      prefixOfGrowing: true,
      // A file rewritten since the walk stat'ed it: its bytes go with their own metadata, never the walk's.
      metadataOf:
        stat === undefined
          ? undefined
          : (file) => staged(entryOfRead(source, { ...entry, stat }, file, plan.stubXattr, plan.flagMask !== 0)),
    })
  }
  for (const entry of walk) {
    let full: BytePath | undefined
    /** A second name's first name, staged again for it to link to (FlatStaging.linkTarget). */
    let restaged: { path: BytePath; full: BytePath } | undefined
    try {
      full = plan.place(entry)
      if (full === undefined) continue
      let linkTargetFull: BytePath | undefined
      if (entry.type === 'hardlink') {
        const first = entry.linkTarget ?? ''
        linkTargetFull = plan.linkTarget(first)
        if (linkTargetFull === undefined) {
          const firstEntry = readEntry(under(plan.upper, first), first, plan.stubXattr, plan.flagMask !== 0)
          if (firstEntry === 'socket') throw new SysError('ENOENT', 'stat', showBytes(first))
          restaged = { path: first, full: plan.restage(firstEntry) }
          bytes += dataBytesOf(copy(restaged.full, firstEntry))
          linkTargetFull = restaged.full
        }
      }
      const file = copy(full, entry, linkTargetFull)
      // Its size and ctime differ from the copy's now: the next sync compares it again, and takes the rest.
      if (file?.prefix !== undefined)
        process.stderr.write(
          `ovroot: sync: /${showBytes(entry.path)}: it grew while it was read; synced as its first ${file.prefix} bytes, the rest at the next sync\n`,
        )
      bytes += dataBytesOf(file)
    } catch (error) {
      // One entry being written or removed while it is read must not stop every sync. Its staged name
      // goes (applying skips a move whose staged entry is missing) and the flash keeps what it had; the
      // change moved the entry's or its directory's ctime after this scan began, so the next sync compares it.
      const why = isGone(error)
        ? 'it vanished while it was read'
        : error instanceof OvrootError && error.code === 'ECHANGED'
          ? 'it changed while it was read, twice'
          : undefined
      if (why === undefined) throw error
      writer.abandon()
      // Nothing of it is applied: neither its staged name nor the inode flags recorded for it (the flash's entry keeps its own).
      for (const [path, staged] of [[entry.path, full] as const, [restaged?.path, restaged?.full] as const]) {
        if (path === undefined || staged === undefined) continue
        plan.abandon(path)
        removeTree(bytePathBuffer(staged))
      }
      process.stderr.write(`ovroot: sync: /${showBytes(entry.path)}: ${why}; left for the next sync\n`)
    }
  }
  // A first name staged (new, changed, or restaged for a new link) is a new inode on the flash: its inode's other
  // names link to it too, those unchanged or equal there included, or they would stay the old inode's.
  for (const [path, first] of plan.otherNames()) {
    try {
      const entry = readEntry(under(plan.upper, path), path, plan.stubXattr)
      if (entry === 'socket') continue
      const second: UpperEntry = { ...entry, type: 'hardlink', linkTarget: first.path }
      copy(plan.relink(second), second, first.full)
    } catch (error) {
      // Gone since: the flash keeps its old name, the next sync sees the change.
      if (!isGone(error)) throw error
      plan.leftSomething = true
    }
  }
  writer.finish()
  const removals = plan.removals()
  return {
    entries: plan.entries,
    moves: plan.moves,
    removals,
    parents: plan.unchangedParents(),
    flags: plan.flags(removals),
    bytes,
  }
}

/** The bytes a file's copy wrote: its data regions' only. */
const dataBytesOf = (file: StableFile | undefined): number =>
  file === undefined ? 0 : file.regions ? file.regions.reduce((sum, [, length]) => sum + length, 0) : file.size

/** Where each changed entry is staged, and what the commit must record to put it in place. */
class FlatStaging {
  entries = 0
  /** Staged entry N goes to moves[N]. */
  readonly moves: string[] = []
  private readonly stagedAs = new Map<string, string>()
  private readonly wholeDirectories = new Set<string>()
  private readonly changedDirectories = new Set<string>()
  private readonly receivingParents = new Set<string>()
  /** Directories the flash copy has too and whose names were compared (where removals are looked for), with their mtime there. */
  private readonly comparedDirectories = new Map<string, number>()
  /** The entries of those directories the upper has. */
  private readonly present = new Set<string>()
  /** Directories that are not the one their path had at the baseline's scan: everything below them is compared. */
  private readonly movedDirectories = new Set<string>()
  /** The names of each of the upper's regular files with more than one, in the walk's order (the first name first), by dev:ino. */
  private readonly linkedNames = new Map<string, string[]>()
  /** Entries staged, then abandoned: nothing links to them. */
  private readonly abandoned = new Set<string>()
  /** An entry vanished or abandoned: the flash keeps its old version, for the next sync to compare. */
  leftSomething = false
  /** Every directory of the upper visited, with its inode number: what the next scan checks identities against. */
  readonly directories = new Map<string, bigint>()

  constructor(
    /** The upper, its flash copy and the staging, as bytes: every path here is. */
    readonly upper: BytePath,
    private readonly mirror: BytePath,
    private readonly staging: BytePath,
    readonly stubXattr: string,
    private readonly scan: Scan,
    /** Inode numbers of files mapped shared and writable (sys/mappings.ts): their writes move no ctime, so they are always compared. */
    private readonly mapped: ReadonlySet<bigint>,
    /** The inode flags the upper's filesystem holds (inodeFlagsHeld). */
    upperFlagsHeld: number,
    /** The inode flags the flash's filesystem holds: with none (JFFS2), its entries' are not read at all. */
    private readonly flashFlagsHeld: number,
  ) {
    this.flagMask = upperFlagsHeld & flashFlagsHeld
  }

  /**
   * The inode flags both the upper's filesystem and the flash's hold: those are synced; the flash copy
   * keeps its own of the others (all of them under a tmpfs before Linux 6.0; JFFS2 has none to keep).
   */
  readonly flagMask: number

  /** Entries staged with inode flags, or replacing a flagged one, and the flags they end with. */
  private readonly flagged: [BytePath, number][] = []

  /**
   * Every inode flag the sync's apply sets last (pending/flat.ts clears them first): the staged entries',
   * and those of unchanged directories that receive or lose entries (an immutable or append-only
   * directory lets none in or out), as the flash has them.
   */
  flags(removals: readonly BytePath[]): [BytePath, number][] {
    if (this.flashFlagsHeld === 0) return this.flagged
    const parents = new Set([...this.receivingParents, ...removals.map(parentOf)])
    const kept: [BytePath, number][] = []
    for (const path of [...parents].sort()) {
      if (this.changedDirectories.has(path) || this.wholeDirectories.has(path)) continue
      const flags = inodeFlags(bytePathBuffer(under(this.mirror, path)))
      if (flags !== 0) kept.push([path, flags])
    }
    return [...kept, ...this.flagged]
  }

  /** Whether an entry can be left alone unread: unchanged since the last scan, and not inside a directory new to the copy or moved there. */
  skipIfUnchanged(path: string, stat: EntryStat): boolean {
    const parent = parentOf(path)
    const below = path !== '.' && (this.wholeDirectories.has(parent) || this.movedDirectories.has(parent))
    const unchangedBefore = this.scan.unchangedBefore
    const skip =
      unchangedBefore !== undefined &&
      stat.ctimeNs < unchangedBefore &&
      !below &&
      !(stat.type === 'file' && this.mapped.has(stat.ino))
    if (stat.type === 'file' && stat.nlink > 1) {
      const inode = `${stat.dev}:${stat.ino}`
      const names = this.linkedNames.get(inode)
      if (names) names.push(path)
      else this.linkedNames.set(inode, [path])
    }
    if (stat.type === 'dir') {
      this.directories.set(path, stat.ino)
      if (unchangedBefore !== undefined && !skip && (below || this.scan.directoryInode(path) !== stat.ino))
        this.movedDirectories.add(path)
    }
    if (skip) this.seen(path)
    return skip
  }

  /** The staging path for an entry that differs from the flash copy; undefined when it does not. */
  place(entry: UpperEntry): string | undefined {
    this.seen(entry.path)
    const parent = parentOf(entry.path)
    const full =
      entry.path !== '.' && this.wholeDirectories.has(parent)
        ? this.insideNewDirectory(entry, parent)
        : this.flat(entry)
    if (full === undefined) return undefined
    this.stagedAs.set(entry.path, full)
    this.entries++
    return full
  }

  /**
   * A second name's staged first name, or its unchanged one on the flash; undefined when that one is
   * immutable or append-only there: link(2) refuses such an inode, so the caller stages the first name
   * again (restage) and links to that. The apply clears the flash entry's flags, moves both names in and
   * sets the flags last, as for any flagged entry it replaces.
   */
  linkTarget(path: string): string | undefined {
    const staged = this.stagedAs.get(path)
    if (staged !== undefined) return staged
    const onFlash = under(this.mirror, path)
    const flags = inodeFlagsIfPresent(bytePathBuffer(onFlash))
    return (flags & (InodeFlag.immutable | InodeFlag.append)) === 0 ? onFlash : undefined
  }

  /** Stage `entry`, a first name the flash has unchanged, again (see linkTarget): its staging path. */
  restage(entry: UpperEntry): string {
    const flashFlags = inodeFlagsIfPresent(bytePathBuffer(under(this.mirror, entry.path)))
    const full = this.stage(entry, ((entry.flags ?? 0) & this.flagMask) | (flashFlags & ~this.flagMask), flashFlags)
    this.stagedAs.set(entry.path, full)
    this.entries++
    return full
  }

  /**
   * Names of the upper's inodes whose first name was staged, not staged themselves (unchanged, or equal on the
   * flash): each with its first name and that one's staging path.
   */
  *otherNames(): Generator<[BytePath, { path: BytePath; full: BytePath }]> {
    for (const names of this.linkedNames.values()) {
      const first = names[0]
      const full = first === undefined || this.abandoned.has(first) ? undefined : this.stagedAs.get(first)
      if (first === undefined || full === undefined) continue
      for (const path of names.slice(1)) if (!this.stagedAs.has(path)) yield [path, { path: first, full }]
    }
  }

  /** Stage `entry`, a second name (otherNames), as a link: its staging path. */
  relink(entry: UpperEntry): string {
    const full = this.stage(entry, 0, 0)
    this.stagedAs.set(entry.path, full)
    this.entries++
    return full
  }

  /** An entry staged, then abandoned (it vanished or kept changing while read): no inode flags are set for it. */
  abandon(path: string): void {
    for (let i = this.flagged.length - 1; i >= 0; i--) if (this.flagged[i]?.[0] === path) this.flagged.splice(i, 1)
    this.abandoned.add(path)
    this.leftSomething = true
  }

  /** Directories that receive moved entries without changing themselves: their mtime is given back after the moves. */
  unchangedParents(): [string, number][] {
    const parents: [string, number][] = []
    for (const path of this.receivingParents) {
      if (this.changedDirectories.has(path) || this.wholeDirectories.has(path)) continue
      parents.push([path, this.comparedDirectories.get(path) ?? modificationTime(under(this.mirror, path))])
    }
    return parents
  }

  /** Topmost paths of the flash copy the upper no longer has. */
  removals(): BytePath[] {
    const removals: BytePath[] = []
    for (const directory of this.comparedDirectories.keys()) {
      for (const name of listNames(under(this.mirror, directory)).sort()) {
        const path = directory === '.' ? name : `${directory}/${name}`
        if (!this.present.has(path)) removals.push(path)
      }
    }
    return removals
  }

  /**
   * An entry gone before it was read, or a directory before it was listed:
   * the flash keeps what it has there (the next sync sees the change), so
   * nothing of a vanished directory is taken as removed.
   */
  vanished(path: string): void {
    this.seen(path)
    this.comparedDirectories.delete(path)
    this.leftSomething = true
  }

  /**
   * Whether a second name of a regular file is its first name's inode on the flash too: equal bytes under two
   * inodes are not one file. Any other kind (the whiteout inode the kernel shares among names) is one by its kind.
   */
  private linkedOnFlash(entry: UpperEntry, kind: UpperEntry['type']): boolean {
    if (entry.type !== 'hardlink' || kind !== 'file') return true
    const name = statEntry(under(this.mirror, entry.path))
    const first = statEntry(under(this.mirror, entry.linkTarget ?? ''))
    return name !== undefined && first !== undefined && name.dev === first.dev && name.ino === first.ino
  }

  /** A regular file's bytes, once everything else about it is equal. */
  private sameBytes(raw: UpperEntry, path: string): boolean {
    return (
      raw.type !== 'file' ||
      raw.holeSize !== undefined ||
      raw.size === 0 ||
      sameContent(under(this.upper, path), under(this.mirror, path), raw.size)
    )
  }

  private seen(path: string): void {
    if (this.comparedDirectories.has(parentOf(path))) this.present.add(path)
  }

  private insideNewDirectory(entry: UpperEntry, parent: string): string {
    if (entry.type === 'dir') this.wholeDirectories.add(entry.path)
    const flags = (entry.flags ?? 0) & this.flagMask
    if (flags !== 0) this.flagged.push([entry.path, flags])
    return `${this.stagedAs.get(parent) ?? ''}/${entry.path.slice(parent === '.' ? 0 : parent.length + 1)}`
  }

  private flat(entry: UpperEntry): string | undefined {
    // A second name of an inode compares as the inode itself.
    const raw =
      entry.type === 'hardlink'
        ? readEntry(under(this.upper, entry.path), entry.path, this.stubXattr, this.flagMask !== 0)
        : entry
    const onFlash = readEntryIfPresent(
      under(this.mirror, entry.path),
      entry.path,
      this.stubXattr,
      this.flashFlagsHeld !== 0,
    )
    const flashEntry = onFlash === 'socket' ? undefined : onFlash
    if (entry.type === 'dir' && flashEntry?.type === 'dir')
      this.comparedDirectories.set(entry.path, Number(flashEntry.mtimeNs / 1000n) / 1e6)
    const flashFlags = flashEntry?.flags ?? 0
    const wanted =
      raw === 'socket'
        ? undefined
        : { ...raw, flags: ((raw.flags ?? 0) & this.flagMask) | (flashFlags & ~this.flagMask) }
    if (
      wanted &&
      flashEntry &&
      sameEntry(wanted, flashEntry) &&
      this.sameBytes(wanted, entry.path) &&
      this.linkedOnFlash(entry, wanted.type)
    )
      return undefined
    if (entry.type === 'dir')
      (flashEntry?.type === 'dir' ? this.changedDirectories : this.wholeDirectories).add(entry.path)
    return this.stage(entry, wanted?.flags ?? 0, flashFlags)
  }

  /** The next staging name, for `entry`, which ends with inode flags `flags` where the flash's had `flashFlags`. */
  private stage(entry: UpperEntry, flags: number, flashFlags: number): string {
    // A second name's flags are its inode's, set through its first name (what it replaces, removal clears).
    if (entry.type !== 'hardlink' && (flags !== 0 || flashFlags !== 0)) this.flagged.push([entry.path, flags])
    if (entry.path !== '.') this.receivingParents.add(parentOf(entry.path))
    // Made for the first change only: a sync with nothing to do writes nothing.
    if (this.moves.length === 0) makeDirectory(bytePathBuffer(this.staging), 0o700)
    const full = `${this.staging}/${this.moves.length}`
    this.moves.push(entry.path)
    return full
  }
}
