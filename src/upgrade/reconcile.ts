/**
 * The reconcile of an upper written against one firmware (O) with another
 * (N): every upper entry classified (classify.ts), then what must change
 * staged on the flash and committed as ONE pending change (kind `upgrade`,
 * applied by upgrade/apply.ts through the sync's removals/moves mechanism).
 * `upgrade-check` runs the same plan without staging it.
 */
import { randomBytes } from 'node:crypto'
import { ExitCode, OvrootError } from '../errors.js'
import { bytePathBuffer, bytesOf, showBytes, type BytePath } from '../names.js'
import { identityNames, isIdentityXattr } from '../overlay/identity.js'
import type { OverlayXattrs } from '../overlay/xattrs.js'
import { flagsOfChanged } from '../pending/flat.js'
import { commitPending, type PendingChange } from '../pending/marker.js'
import { stateDir, upperPath, type FlashLayout } from '../state/flash.js'
import { EntryWriter, modificationTime, readEntry, readStableFile } from '../sys/entries.js'
import { makeDirectory, statPath, writeFileAtomic } from '../sys/fs.js'
import type { UpperEntry, WalkedEntry } from '../sys/types.js'
import { hasAncestorIn, parentOf, under } from '../upper/entry.js'
import { isGone, walkUpper } from '../upper/walk.js'
import {
  classify,
  UPGRADE_CLASSES,
  type Metadata,
  type OldSide,
  type UpgradeClass,
  type UpperSide,
  type Verdict,
} from './classify.js'
import { IDENTITY_LIST } from './apply.js'
import { recordOf, sameRecord, type ManifestRecord } from './manifest.js'
import { savedPath, writeBaseFiles, type BaseFiles, type ReportedEntry, type UpgradeReport } from './record.js'
import type { RecordSource } from './sources.js'

/** An upper entry with what overlayfs makes of it: which lower path it shadows, and what kind of entry it is. */
export interface ShadowEntry {
  /** With the lstat it was read from: a copy-up's read is checked against it (no stat of its own). */
  entry: WalkedEntry
  /** The lower path it shadows; undefined below an opaque directory (nothing shows through). */
  lowerPath: BytePath | undefined
  kind: 'entry' | 'whiteout' | 'opaque'
  /** A metacopy stub: the lower path its data comes from. */
  dataPath?: BytePath
  /** A renamed directory (redirect): it shows the lower directory at lowerPath. */
  redirected: boolean
  /** A renamed file (redirect): lowerPath is where it was renamed from. */
  renamed: boolean
}

const join = (dir: BytePath, name: BytePath): BytePath => (dir === '.' ? name : `${dir}/${name}`)
const nameOf = (path: BytePath): BytePath => path.slice(path.lastIndexOf('/') + 1)

/**
 * The upper's entries, parents first, with the lower path each shadows
 * (redirects followed, opaque directories stopping). `live`: the upper of
 * the running system (`upgrade-check`), where an entry listed may be gone
 * when it is read: it is left out, as if removed a moment earlier.
 */
export function* shadowEntries(upper: BytePath, xattrs: OverlayXattrs, live = false): Generator<ShadowEntry> {
  const lowerOf = new Map<BytePath, BytePath | undefined>([['.', '.']])
  const whiteouts = new Set<BytePath>()
  const attribute = (entry: UpperEntry, key: 'opaque' | 'redirect'): string | undefined =>
    entry.xattrs.find(([name]) => name === xattrs.name(key))?.[1].toString('latin1')
  const walk = walkUpper(upper, {
    stubXattr: xattrs.name('metacopy'),
    // The stage lists the flags of what the apply changes: read here, in the statx each entry gets anyway.
    flags: true,
    include: () => true,
    skipped: () => undefined,
    ...(live ? { vanished: () => undefined } : {}),
  })
  for (const entry of walk) {
    if (entry.path === '.') {
      yield { entry, lowerPath: '.', kind: 'entry', redirected: false, renamed: false }
      continue
    }
    const parentLower = lowerOf.get(parentOf(entry.path))
    let lowerPath = parentLower === undefined ? undefined : join(parentLower, nameOf(entry.path))
    const redirect = attribute(entry, 'redirect')
    if (redirect !== undefined && parentLower !== undefined)
      lowerPath = redirect.startsWith('/') ? redirect.slice(1) || '.' : join(parentOf(lowerPath ?? '.'), redirect)
    const whiteout =
      (entry.type === 'char' && entry.devMajor === 0 && entry.devMinor === 0) ||
      (entry.type === 'hardlink' && whiteouts.has(entry.linkTarget ?? ''))
    if (whiteout) whiteouts.add(entry.path)
    const opaque = entry.type === 'dir' && attribute(entry, 'opaque') === 'y'
    if (entry.type === 'dir') lowerOf.set(entry.path, opaque ? undefined : lowerPath)
    yield {
      entry,
      lowerPath,
      kind: whiteout ? 'whiteout' : opaque ? 'opaque' : 'entry',
      ...(entry.holeSize !== undefined
        ? { dataPath: entry.type === 'file' && redirect?.startsWith('/') ? redirect.slice(1) : lowerPath }
        : {}),
      redirected: entry.type === 'dir' && redirect !== undefined,
      renamed: entry.type !== 'dir' && redirect !== undefined && lowerPath !== undefined,
    }
  }
}

export interface PlannedEntry {
  path: BytePath
  lowerPath: BytePath | undefined
  verdict: Verdict
  /**
   * The upper entry (a hardlink's: its own name's entry): whole for one the
   * stage may refresh (a directory, a refresh verdict), else only its kind,
   * so that the plan of a large upper holds little per entry.
   */
  entry: UpperEntry | KindOf
  /**
   * Its three records, held only where something after the classification reads them (keepsSides): most
   * entries of a large upper need only their verdict, and 60,000 records held to the end were the plan's
   * garbage-collection cost (README, Performance).
   */
  sides?: PlannedSides
  /** Its filesystem-identity xattrs, cleared by the apply if it stays (a second name of an inode has none of its own). */
  identity?: string[]
}

export interface PlannedSides {
  old: OldSide
  next: ManifestRecord | undefined
  /** U's record (undefined for a whiteout, or when its data's old side is unknown). */
  record: ManifestRecord | undefined
}

/**
 * Whether the plan holds an entry's records: a directory's (keepDirectoriesWithContent), a metacopy stub's
 * (its second names take its record), and O's of each entry the report names (its base digest; upgrade-check
 * saves the base of each conflict).
 */
const keepsSides = (type: UpperEntry['type'], verdict: Verdict, stub: boolean): boolean =>
  type === 'dir' || stub || verdict.class === 'conflict' || verdict.class === 'hidden' || verdict.class === 'unknown'

/** What the stage and the report need of an entry they do not rewrite. */
export type KindOf = Pick<UpperEntry, 'path' | 'type' | 'holeSize' | 'linkTarget'>

/** A second name comes from the walk without its inode's xattrs (its first name has them): a refresh keeps the user's. */
function withInodeXattrs(upper: BytePath, entry: UpperEntry, xattrs: OverlayXattrs): UpperEntry {
  if (entry.type !== 'hardlink') return entry
  try {
    const inode = readEntry(under(upper, entry.path), entry.path, xattrs.name('metacopy'))
    return inode === 'socket' ? entry : { ...entry, xattrs: inode.xattrs }
  } catch (error) {
    // Removed since the walk (upgrade-check reads the running upper): nothing is staged from that plan.
    if (isGone(error)) return entry
    throw error
  }
}

/** An entry as the plan holds it: whole when the stage may write it again from its metadata. */
function held(entry: UpperEntry, verdict: Verdict): UpperEntry | KindOf {
  if (entry.type === 'dir' || verdict.action === 'refresh') return entry
  const { path, type, holeSize, linkTarget } = entry
  return {
    path,
    type,
    ...(holeSize !== undefined ? { holeSize } : {}),
    ...(linkTarget !== undefined ? { linkTarget } : {}),
  }
}

export interface UpgradePlan {
  entries: PlannedEntry[]
  /** The upper root's identity xattrs (its uuid, origin). */
  rootIdentity: string[]
  /** The inode flags (chattr +i, +a) the walk read, by path: the entries with some (a second name's are its first name's). */
  flags: Map<BytePath, number>
  counts: Record<UpgradeClass, number>
}

export interface PlanOptions {
  preferFirmware: boolean
  /** The running system's upper (`upgrade-check`): entries may vanish while it is read (shadowEntries). */
  live?: boolean
}

/** Classify every upper entry against O and N. */
export function planUpgrade(
  upper: BytePath,
  xattrs: OverlayXattrs,
  old: RecordSource,
  next: RecordSource,
  options: PlanOptions,
): UpgradePlan {
  const own = (name: string): boolean => !xattrs.isOverlay(name)
  const records = new Map<BytePath, ManifestRecord | undefined>()
  const planned: PlannedEntry[] = []
  let rootIdentity: string[] = []
  const flags = new Map<BytePath, number>()
  // Metacopy stubs by their first name: a second name is the same inode, whose data the lower holds.
  const stubs = new Map<BytePath, PlannedEntry>()
  const lookup = (source: RecordSource, path: BytePath | undefined): OldSide =>
    path === undefined ? 'absent' : source.lookup(path)
  for (const shadow of shadowEntries(upper, xattrs, options.live)) {
    const { entry, lowerPath } = shadow
    if (entry.flags) flags.set(entry.path, entry.flags)
    if (entry.path === '.') {
      rootIdentity = identityNames(xattrs, entry.xattrs)
      continue
    }
    const o = lookup(old, lowerPath)
    const nSide = lookup(next, lowerPath)
    const n = nSide === 'absent' || nSide === 'unknown' ? undefined : nSide
    let u: ManifestRecord | undefined
    try {
      u = upperRecord(upper, shadow, o, n, old, own, records)
    } catch (error) {
      // Removed between the walk and the read of its data.
      if (options.live && isGone(error)) continue
      throw error
    }
    const sides = {
      upper: (shadow.kind === 'whiteout' ? { kind: 'whiteout' } : { kind: shadow.kind, record: u }) as UpperSide,
      old: shadow.kind !== 'whiteout' && u === undefined ? ('unknown' as const) : o,
      new: n,
      preferFirmware: options.preferFirmware,
      belowChanged:
        shadow.kind !== 'entry' &&
        lowerPath !== undefined &&
        o !== 'absent' &&
        o !== 'unknown' &&
        o.type === 'd' &&
        n?.type === 'd'
          ? belowDiffers(old, next, lowerPath)
          : false,
      redirected: shadow.redirected,
      redirectLost: shadow.redirected && o !== 'absent' && o !== 'unknown' && o.type === 'd' && n?.type !== 'd',
      renamed: shadow.renamed,
      stub: shadow.dataPath !== undefined,
    }
    const identity = identityNames(xattrs, entry.xattrs)
    const stub = entry.type === 'hardlink' ? stubs.get(entry.linkTarget ?? '') : undefined
    if (stub) {
      planned.push(secondNameOfStub(entry, stub, o, n))
      continue
    }
    const verdict = classify(sides)
    const item: PlannedEntry = {
      path: entry.path,
      lowerPath,
      verdict,
      entry: held(verdict.action === 'refresh' ? withInodeXattrs(upper, entry, xattrs) : entry, verdict),
      ...(keepsSides(entry.type, verdict, shadow.dataPath !== undefined)
        ? { sides: { old: o, next: n, record: u } }
        : {}),
      ...(identity.length ? { identity } : {}),
    }
    if (shadow.dataPath !== undefined) stubs.set(entry.path, item)
    planned.push(item)
  }
  keepDirectoriesWithContent(planned)
  const counts = Object.fromEntries(UPGRADE_CLASSES.map((name) => [name, 0])) as Record<UpgradeClass, number>
  for (const { verdict } of planned) if (counted(verdict)) counts[verdict.class]++
  return { entries: planned, rootIdentity, flags, counts }
}

/**
 * A second name of a metacopy stub (a hard link the user made of a firmware
 * file: the kernel gives the stub an absolute redirect to its data): the
 * names are one inode whose data is O's at the first name's data path, so
 * each goes the way of its first name (classified as a renamed file): stays
 * a stub while N has the same data, becomes a name of the same plain copy of
 * N's data when N changed it (the stage links it), goes when N no longer has
 * that file (reading it would fail with EIO). Kept as it was, it would show
 * N's bytes at O's size, or EIO.
 */
function secondNameOfStub(
  entry: UpperEntry,
  first: PlannedEntry,
  o: OldSide,
  n: ManifestRecord | undefined,
): PlannedEntry {
  const { path, type, linkTarget } = entry
  const { holeSize } = first.entry
  return {
    path,
    lowerPath: first.lowerPath,
    verdict: first.verdict,
    entry: { path, type, linkTarget, ...(holeSize !== undefined ? { holeSize } : {}) },
    ...(keepsSides(type, first.verdict, false) ? { sides: { old: o, next: n, record: first.sides?.record } } : {}),
  }
}

/** A directory kept only as the container of what stays below it is no outcome of its own. */
const counted = (verdict: Verdict): boolean => !('reason' in verdict && verdict.reason === CONTAINER)
const CONTAINER = 'container'
const REPLACED = 'the new firmware has no directory here: the user’s entries below it are kept over its entry'

/** U's record: a stub's data is O's at its data path; a file's content is read only when it can decide its class. */
function upperRecord(
  upper: BytePath,
  shadow: ShadowEntry,
  o: OldSide,
  n: ManifestRecord | undefined,
  old: RecordSource,
  own: (name: string) => boolean,
  records: Map<BytePath, ManifestRecord | undefined>,
): ManifestRecord | undefined {
  const { entry } = shadow
  if (shadow.kind === 'whiteout') return undefined
  if (entry.type === 'hardlink') {
    // The inode's record, made for its first name: read now if this name's sides need the content.
    const first = records.get(entry.linkTarget ?? '')
    if (first?.data !== UNREAD || !contentDecides(first, o, n)) return first
    const read = { ...first, data: readStableFile(under(upper, entry.path)).sha256 }
    records.set(entry.linkTarget ?? '', read)
    return read
  }
  let record: ManifestRecord | undefined
  if (shadow.dataPath !== undefined) {
    const data = old.lookup(shadow.dataPath)
    record =
      data !== 'absent' && data !== 'unknown' && data.type === 'f'
        ? { ...recordOf(entry, undefined, own), size: data.size, data: data.data }
        : undefined
  } else {
    record = recordOf(entry, entry.type === 'file' ? UNREAD : undefined, own)
    if (record.type === 'f' && contentDecides(record, o, n))
      record.data = readStableFile(under(upper, entry.path), { stat: entry.stat }).sha256
  }
  // Only a first name's, which a later name asks for: the walk makes a hardlink of a name only after one with nlink > 1.
  if (entry.type !== 'dir' && entry.stat.nlink > 1) records.set(entry.path, record)
  return record
}

/** The digest of a file whose content was not read: it equals no record's. */
const UNREAD = '~'

/**
 * Whether a file's content can change its class (classify.ts): not when its
 * size is neither O's nor N's (it equals neither), nor when the firmware did
 * not change it (N=O) and its mode, owner or xattrs differ from N's: it is
 * `kept` whatever it holds. Only then is it read and hashed.
 */
function contentDecides(u: ManifestRecord, o: OldSide, n: ManifestRecord | undefined): boolean {
  if (o === 'unknown') return false
  const known = o === 'absent' ? undefined : o
  if (u.size !== known?.size && u.size !== n?.size) return false
  const metadataDiffers = (record: ManifestRecord): boolean =>
    u.mode !== record.mode || u.uid !== record.uid || u.gid !== record.gid || u.xattrs !== record.xattrs
  return !(known && n && sameRecord(known, n) && metadataDiffers(n))
}

function belowDiffers(old: RecordSource, next: RecordSource, path: BytePath): boolean {
  const before = old.below(path)
  const after = next.below(path)
  if (before === 'unknown' || after === 'unknown' || before.size !== after.size) return true
  for (const [name, record] of after) {
    const was = before.get(name)
    if (!was || !sameRecord(was, record)) return true
  }
  return false
}

/**
 * A directory the verdict drops goes only when nothing below it stays;
 * otherwise it stays as a container (a stale one with the merged metadata).
 * One that only ever held copies (its own metadata the old firmware's) is
 * bookkeeping, not counted.
 * Children come after their parent in the plan: walked backwards, each
 * entry that stays marks its parent.
 */
function keepDirectoriesWithContent(planned: PlannedEntry[]): void {
  const holding = new Set<BytePath>()
  for (let i = planned.length - 1; i >= 0; i--) {
    const item = planned[i] as PlannedEntry
    if (item.entry.type === 'dir' && item.sides && item.verdict.action === 'drop')
      item.verdict = containerVerdict(item.verdict, item.sides, holding.has(item.path))
    if (item.verdict.action !== 'drop') holding.add(parentOf(item.path))
  }
}

/** A dropped directory's verdict: a container of what stays below it (`holding`), or bookkeeping. */
function containerVerdict(verdict: Verdict, sides: PlannedSides, holding: boolean): Verdict {
  const { old: o, next: n, record } = sides
  if (!holding) {
    const container = record !== undefined && o !== 'absent' && o !== 'unknown' && sameRecord(record, o)
    return container ? { class: verdict.class, action: 'drop', reason: CONTAINER } : verdict
  }
  // Refreshing it would put N's file in its place, and the user's entries below it with it would go.
  if (n !== undefined && n.type !== 'd') return { class: 'conflict', action: 'keep', reason: REPLACED }
  return verdict.class === 'stale' && o !== 'absent' && o !== 'unknown' && n
    ? { class: 'stale', action: 'refresh', metadata: { mode: n.mode, uid: n.uid, gid: n.gid, xattrs: 'firmware' } }
    : { class: verdict.class, action: 'keep', reason: CONTAINER }
}

/** The report of a plan: counts, and every conflict, hidden and unknown entry by name. */
export function reportOf(
  plan: UpgradePlan,
  sides: Omit<UpgradeReport, 'counts' | 'entries'>,
  layout?: FlashLayout,
): UpgradeReport {
  const entries: ReportedEntry[] = []
  // Without upgrade-check's saved bases (most upgrades) nothing is looked for, path by path.
  const bases = layout && statPath(bytePathBuffer(savedPath(layout, 'base', '.'))) !== undefined ? layout : undefined
  for (const item of plan.entries) {
    const { verdict } = item
    const o = item.sides?.old
    if (verdict.class !== 'conflict' && verdict.class !== 'hidden' && verdict.class !== 'unknown') continue
    if (!counted(verdict)) continue
    const base = o !== undefined && o !== 'absent' && o !== 'unknown' && o.type === 'f' ? o.data : undefined
    const saved = bases && base && savedBase(bases, item.path, base)
    entries.push({
      path: `/${showBytes(item.path)}`,
      bytes: item.path,
      class: verdict.class,
      ...('reason' in verdict && verdict.reason ? { reason: verdict.reason } : {}),
      ...(base ? { base } : {}),
      ...(saved ? { savedBase: `base/${item.path}` } : {}),
      ...(savesUserCopy(item) ? { savedUser: `user/${item.path}` } : {}),
      ...(verdict.class === 'conflict' && verdict.action !== 'keep' ? { firmwareWon: true as const } : {}),
    })
  }
  return { ...sides, counts: plan.counts, entries }
}

/**
 * A conflict the firmware's side wins: the user's entry is saved (a file's
 * data, a symlink's target, a device's numbers), unless its data is not in
 * the upper (a stub). A directory is never dropped for a conflict.
 */
const savesUserCopy = (item: PlannedEntry): boolean =>
  item.verdict.class === 'conflict' &&
  item.verdict.action === 'drop' &&
  item.entry.type !== 'dir' &&
  item.entry.holeSize === undefined

/** Whether upgrade-check saved the old firmware's bytes of a path, checked against O's digest. */
function savedBase(layout: FlashLayout, path: BytePath, sha256: string): boolean {
  const saved = savedPath(layout, 'base', path)
  try {
    return statPath(bytePathBuffer(saved)) !== undefined && readStableFile(saved).sha256 === sha256
  } catch {
    return false
  }
}

export interface StageOptions {
  layout: FlashLayout
  /** The new firmware's lower root, as bytes ('' for /): refreshed entries take their data from it. */
  newRoot: BytePath
  xattrs: OverlayXattrs
  report: UpgradeReport
  /** The firmware record to write last, and the base files to put in place before. */
  firmware: Extract<PendingChange, { kind: 'upgrade' }>['firmware']
  base: BaseFiles
}

/**
 * Stage what the plan changes and commit it: each refreshed entry a numbered
 * name in the staging (N's data, the merged metadata), the report and the
 * new base files beside them, the user's copies a `firmware` conflict
 * replaces under upgrade/user/. Nothing in the upper changes until the
 * marker is applied.
 */
export function stageUpgrade(plan: UpgradePlan, options: StageOptions): Extract<PendingChange, { kind: 'upgrade' }> {
  const { layout } = options
  const upper = bytesOf(upperPath(layout))
  const stagingName = `staged-${randomBytes(6).toString('hex')}`
  const stagingText = `${stateDir(layout)}/${stagingName}`
  const staging = bytesOf(stagingText)
  makeDirectory(stagingText)
  const writer = new EntryWriter()
  const moves: BytePath[] = []
  const removals: BytePath[] = []
  const touched = new Set<BytePath>()
  const dropped = new Set<BytePath>()
  const refreshed = new Map<BytePath, BytePath>()
  // What stays, with the old lower's identity on it: cleared by the apply from this list, not by another walk.
  const identity = plan.rootIdentity.length ? [identityLine('.', plan.rootIdentity)] : []
  // A first name that goes leaves its inode's identity to a second name that stays.
  const goneIdentity = new Map<BytePath, string[]>()
  // What the apply changes (removes, replaces, clears identity xattrs of), for its inode flags.
  const changed: PlannedEntry[] = []
  for (const item of plan.entries) {
    const { verdict } = item
    const gone = verdict.action === 'drop' || hasAncestorIn(dropped, item.path)
    const names = item.entry.type === 'hardlink' ? goneIdentity.get(item.entry.linkTarget ?? '') : item.identity
    if (gone && item.identity) goneIdentity.set(item.path, item.identity)
    else if (!gone && names) identity.push(identityLine(item.path, names))
    if (gone || verdict.action === 'refresh' || names) changed.push(item)
    if (hasAncestorIn(dropped, item.path)) continue
    if (verdict.action === 'drop') {
      if (savesUserCopy(item)) saveUserCopy(writer, upper, staging, item.path)
      removals.push(item.path)
      dropped.add(item.path)
      touched.add(parentOf(item.path))
    } else if (verdict.action === 'refresh') {
      const staged = `${staging}/${moves.length}`
      // A second name of a refreshed stub: a name of its first name's new copy (secondNameOfStub).
      const stub = item.entry.type === 'hardlink' && item.entry.holeSize !== undefined
      const first = stub ? refreshed.get(item.entry.linkTarget ?? '') : undefined
      if (first) writer.begin(staged, secondName(staged), first)
      else if (stub) continue
      else writeRefreshed(writer, staged, options.newRoot, item, verdict.metadata, options.xattrs)
      refreshed.set(item.path, staged)
      moves.push(item.path)
      touched.add(parentOf(item.path))
    }
  }
  writer.finish()
  writeFileAtomic(`${stagingText}/${IDENTITY_LIST}`, identity.join(''))
  makeDirectory(`${stagingText}/upgrade`)
  writeFileAtomic(`${stagingText}/upgrade/report.json`, `${JSON.stringify(options.report, null, 2)}\n`)
  writeBaseFiles(options.base, `${stagingText}/base.manifest`, `${stagingText}/base.absent`)
  const parents: [BytePath, number][] = [...touched]
    .filter((dir) => !dropped.has(dir) && !hasAncestorIn(dropped, dir))
    .sort()
    .map((dir) => [dir, modificationTime(under(upper, dir))])
  const flags = flagsOfPlan(plan, [...changed.map(({ path }) => path), ...parents.map(([path]) => path)])
  const change: Extract<PendingChange, { kind: 'upgrade' }> = {
    kind: 'upgrade',
    requested: new Date().toISOString(),
    from: options.report.from,
    to: options.report.to,
    entries: removals.length + moves.length,
    removals,
    moves,
    parents,
    staging: stagingName,
    names: 'bytes',
    ...(flags.length > 0 ? { flags } : {}),
    firmware: options.firmware,
  }
  commitPending(layout, change)
  return change
}

/**
 * What the apply changes would refuse (EPERM) where immutable or append-only: the flags of the `changed`
 * paths, listed for the marker (cleared first, set back last). The plan's walk read them, for each inode's
 * first name: nothing is read again.
 */
function flagsOfPlan(plan: UpgradePlan, changed: BytePath[]): [BytePath, number][] {
  if (plan.flags.size === 0) return []
  const firstNames = new Map(
    plan.entries.flatMap(({ path, entry }): [BytePath, BytePath][] =>
      entry.type === 'hardlink' ? [[path, entry.linkTarget ?? '']] : [],
    ),
  )
  return flagsOfChanged(
    changed,
    (path) => plan.flags.get(firstNames.get(path) ?? path) ?? 0,
    () => firstNames,
  )
}

/** A second name to stage: EntryWriter makes it a link to the staged first name, and reads nothing else of it. */
const secondName = (path: BytePath): UpperEntry => ({
  path,
  type: 'hardlink',
  mode: 0,
  uid: 0,
  gid: 0,
  mtimeNs: 0n,
  atimeNs: 0n,
  size: 0,
  devMajor: 0,
  devMinor: 0,
  xattrs: [],
})

const identityLine = (path: BytePath, names: readonly string[]): string => `${[showBytes(path), ...names].join('\t')}\n`

/** N's entry with the merged metadata; a directory only lends its metadata (its overlay xattrs but identity ones kept). */
function writeRefreshed(
  writer: EntryWriter,
  staged: BytePath,
  newRoot: BytePath,
  item: PlannedEntry,
  metadata: Metadata,
  xattrs: OverlayXattrs,
): void {
  const source = under(newRoot, item.lowerPath ?? item.path)
  const firmware = readEntry(source, item.path, '')
  if (firmware === 'socket') return
  const user = item.entry
  if (!('xattrs' in user))
    throw new OvrootError(
      'EINTERNAL',
      ExitCode.internal,
      `upgrade: the plan did not keep /${showBytes(item.path)} whole, which its refresh needs`,
    )
  const userOwn = user.xattrs.filter(([name]) => !xattrs.isOverlay(name))
  const overlayKept = user.xattrs.filter(([name]) => xattrs.isOverlay(name) && !isIdentityXattr(xattrs, name))
  const entry: UpperEntry = {
    ...firmware,
    path: staged,
    mode: metadata.mode,
    uid: metadata.uid,
    gid: metadata.gid,
    xattrs: [
      ...(metadata.xattrs === 'user' ? userOwn : firmware.xattrs),
      ...(firmware.type === 'dir' ? overlayKept : []),
    ],
    ...(firmware.type === 'dir' ? { mtimeNs: user.mtimeNs, atimeNs: user.atimeNs } : {}),
  }
  writer.copy(staged, entry, source)
}

/** The user's entry that a `firmware` conflict replaces, kept under upgrade/user/ (its directories made as needed); a second name of a file is saved as a file. */
function saveUserCopy(writer: EntryWriter, upper: BytePath, staging: BytePath, path: BytePath): void {
  const to = `${staging}/upgrade/user/${path}`
  makeDirectory(bytePathBuffer(parentOf(to)))
  const entry = readEntry(under(upper, path), path, '')
  if (entry === 'socket') return
  writer.copy(to, { ...entry, xattrs: [] }, under(upper, path))
}
